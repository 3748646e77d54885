"""Command lines: argparse with one-line errors, checked number types, the shared flags
(--bootstrap, the face detector's) and run_main, which turns every expected failure into one line.

The rule for delaying heavy imports, the only one in the kit: the `fer.cli` modules import nothing
heavy (no torch, OpenCV, pandas; a test checks), so a script parses and checks its flags and paths
with them first, and imports the library (`fer.data`, `fer.model`, ...) only afterwards. Library
modules import what they need at their top.
"""
import argparse
import errno
import sys

from fer.constants import ALIGNS, DETECTORS, FACE_MARGIN, FACE_THRESHOLD, MIN_FACE
from fer.trust import FERError, one_line


# --- flags --------------------------------------------------------------------------------------
def _number(kind, lo=None, hi=None, lo_open=False, hi_open=False):
    """An argparse type: a finite number within [lo, hi] (or open ends), with a one-line error."""
    def parse(text):
        try:
            x = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}")
        if x != x or x in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"{text!r} is not finite")
        if lo is not None and (x <= lo if lo_open else x < lo):
            raise argparse.ArgumentTypeError(f"{text} must be {'>' if lo_open else '>='} {lo}")
        if hi is not None and (x >= hi if hi_open else x > hi):
            raise argparse.ArgumentTypeError(f"{text} must be {'<' if hi_open else '<='} {hi}")
        return x
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def int_at_least(lo, hi=None):
    return _number(int, lo, hi)


# --bootstrap N, in every script that has it: fewer resamples give no 95 % interval (its ends are the
# 2.5th and 97.5th percentiles of the resampled values); more do not fit in memory (resamples x images).
MIN_RESAMPLES, MAX_RESAMPLES = 100, 100_000


def add_bootstrap_argument(p):
    p.add_argument("--bootstrap", type=int_at_least(0, MAX_RESAMPLES), default=1000, metavar="N",
                   help=f"resamples of the images for the 95%% intervals: 0 (no intervals) or {MIN_RESAMPLES}-"
                        f"{MAX_RESAMPLES}")


def check_bootstrap(p, args):
    if 0 < args.bootstrap < MIN_RESAMPLES:  # a 2.5th percentile of a few values is no 95 % interval
        p.error(f"--bootstrap {args.bootstrap}: too few resamples for a 95% interval; give at least "
                f"{MIN_RESAMPLES}, or 0 for none")


def float_in(lo=None, hi=None, lo_open=False, hi_open=False):
    return _number(float, lo, hi, lo_open, hi_open)


positive_int = int_at_least(1)
nonneg_int = int_at_least(0)
positive_float = float_in(0, lo_open=True)
nonneg_float = float_in(0)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help shows each flag's default, unless it has none (None, off) or its help already names it."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (not action.option_strings or default is None or default is False or default == argparse.SUPPRESS
                or "default" in text.lower()):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block) and the defaults in --help."""

    def __init__(self, *a, **k):
        k.setdefault("formatter_class", HelpFormatter)
        super().__init__(*a, **k)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def run_main(main, argv=None):
    """Run a script's main(argv): expected failures end in one line on stderr, never a traceback."""
    try:
        code = main(argv)
    except KeyboardInterrupt:
        print("\ninterrupted: nothing was half-written (outputs are replaced only when complete)", file=sys.stderr)
        code = 130
    except FERError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        code = 1
    except OSError as e:
        if e.errno == errno.ENOSPC:
            print(f"error: no space left on device writing {e.filename or 'output'}", file=sys.stderr)
        else:
            print(f"error: {e.filename + ': ' if e.filename else ''}{e.strerror or e}", file=sys.stderr)
        code = 1
    sys.exit(code or 0)


def add_face_arguments(p, min_face=MIN_FACE, detector=True, align=True):
    """The detector flags, the same in every script that detects faces. They stay None until
    check_arguments() fills in the defaults, so that one given where no face is detected is an error."""
    if detector:
        p.add_argument("--detector", choices=DETECTORS, default=None,
                       help="mtcnn (default): box and five landmarks, finds turned and small faces; haar: OpenCV's "
                            "frontal-face cascade, boxes only")
    p.add_argument("--min_face", type=int_at_least(12, 100000), default=None, metavar="PX",
                   help=f"smallest face looked for, in pixels of the picture (default {min_face}); smaller is "
                        f"slower")
    p.add_argument("--face_threshold", type=float_in(0, 1, lo_open=True, hi_open=True), default=None, metavar="P",
                   help=f"mtcnn: face probability a detection needs, in (0, 1) (default {FACE_THRESHOLD}); lower "
                        f"finds more faces and more false ones")
    if align:
        p.add_argument("--align", choices=ALIGNS, default=None,
                       help="template (default): warp each face onto the checkpoint's crop_template by its five "
                            "landmarks, at the model's input size; box: the detector's box widened by "
                            f"{FACE_MARGIN:.0%}% of its larger side (the crop before alignment existed). Falls back "
                            "to box, with a note, without landmarks (haar) or without a template in the checkpoint")
    p.set_defaults(face_defaults=dict(detector="mtcnn", min_face=min_face, face_threshold=FACE_THRESHOLD,
                                      align="template"))


def check_face_arguments(p, args, detecting, needs):
    """A flag error (parser p) for detector flags that would do nothing (given without `needs`, the flag that
    makes the script detect faces: `detecting` says whether it was given) or mean nothing; then the
    defaults of the flags not given are filled in."""
    defaults = vars(args).pop("face_defaults")
    given = [name for name in defaults if getattr(args, name, None) is not None]
    if given and not detecting:
        p.error(f"{', '.join('--' + n for n in given)}: only with {needs} (without it no face is detected)")
    if args.face_threshold is not None and getattr(args, "detector", None) not in (None, "mtcnn"):
        p.error(f"--face_threshold is for --detector mtcnn (the {args.detector} detector gives no score)")
    for name, value in defaults.items():
        if hasattr(args, name) and getattr(args, name) is None:
            setattr(args, name, value)
