"""Command lines: argparse with one-line errors, checked number types, the shared flags
(--bootstrap, the face detector's) and run_main, which turns every expected failure into one line.

The rule for delaying heavy imports, the only one in the kit: the `fer.cli` modules import nothing
heavy (no torch, OpenCV, pandas; a test checks), so a script parses and checks its flags and paths
with them first, and imports the library (`fer.data`, `fer.model`, ...) only afterwards. Library
modules import what they need at their top.
"""
import argparse
import errno
import io
import pickle
import sys
import zipfile
from pathlib import Path

from fer.constants import ALIGNS, DETECTORS, FACE_MARGIN, FACE_THRESHOLD, MIN_FACE
from fer.model.backbones import ARCHS
from fer.trust import CompleteInterrupt, FERError, one_line, open_regular, set_quiet


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

    def parse_args(self, args=None, namespace=None):
        """argparse's, and --quiet (add_quiet_argument) applied to the whole process (fer.trust.set_quiet)."""
        parsed = super().parse_args(args, namespace)
        if isinstance(getattr(parsed, "quiet", None), bool):
            set_quiet(parsed.quiet)
        return parsed


QUIET_HELP = ("no progress reports (a bar on a terminal, lines with rate and time left in a log) and no set-up lines: "
              "results, warnings and errors only")


def add_quiet_argument(p):
    """--quiet, the same in every script."""
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)


# Trust rule 1: reading outside the dataset root is said on the command line each time.
OUTSIDE_ROOT_HELP = ("read images whose real path (links followed) lies outside the dataset root (absolute or ../ names "
                     "in the index, links out of the dataset); without it such a row is an error naming it")


def add_outside_root_argument(p, action="store_true"):
    """--allow_outside_root, the same in every script that reads an index (training passes its on/off Switch)."""
    p.add_argument("--allow_outside_root", action=action, help=OUTSIDE_ROOT_HELP)


def add_tta_argument(p, what="image"):
    """--tta in evaluation and prediction: the flip average, recorded as tta: flip."""
    p.add_argument("--tta", action="store_const", const="flip", default=None,
                   help=f"test-time augmentation: average the class probabilities (and valence/arousal) of each "
                        f"{what} and its horizontal mirror (recorded as tta: flip)")


def run_main(main, argv=None):
    """Run a script's main(argv): expected failures end in one line on stderr, never a traceback."""
    try:
        code = main(argv)
    except CompleteInterrupt as e:
        shown = ", ".join(str(p) for p in e.committed[:3]) + (" ..." if len(e.committed) > 3 else "")
        print(f"\ninterrupted after the outputs were written: {shown} {'is' if len(e.committed) == 1 else 'are'} "
              f"complete", file=sys.stderr)
        code = 130
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


# --- checkpoints, named by what they hold -------------------------------------------------------------
LEGACY_CHECKPOINT = "FER_resnet50.pth"  # the name every checkpoint had before names came from --arch


class _Anything:
    """Stands in for every class a checkpoint's pickle names, so its plain fields can be read without
    torch and without running anything from the file."""

    def __init__(self, *a, **k):
        pass

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass


def recorded_field(path, field="arch"):
    """A plain (str, int, float) top-level field of a FER checkpoint, read in a fraction of a second without
    torch: its pickle only, tensors and classes replaced by placeholders (nothing in the file runs). None
    when the file is not a torch checkpoint or has no such field."""
    class Peek(pickle.Unpickler):
        def find_class(self, module, name):
            return _Anything

        def persistent_load(self, pid):
            return None

    fh = open_regular(path)  # a FIFO or device named *.pth: None, never a hang (trust rule 6)
    if fh is None:
        return None
    try:
        with fh, zipfile.ZipFile(fh) as z:
            name = next(n for n in z.namelist() if n == "data.pkl" or n.endswith("/data.pkl"))
            obj = Peek(io.BytesIO(z.read(name))).load()
    except Exception:  # not a zip, no pickle, a pickle of something else: the library says what it is
        return None
    value = obj.get(field) if isinstance(obj, dict) else None
    return value if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None


def model_name(checkpoint):
    """The name of the model a checkpoint holds, for default output names and titles: its recorded
    architecture, else its file name without FER_ (FER_resnet50.pth -> resnet50). A recorded arch that is not one
    of ARCHS (a damaged or hostile file: "../x") never becomes part of an output's name."""
    arch = recorded_field(checkpoint, "arch")
    return arch if arch in ARCHS else Path(checkpoint).stem.removeprefix("FER_")


def default_checkpoint(p, folder="."):
    """--checkpoint not given: the one FER_<arch>.pth in this folder (training's default name; not a
    *_last.pth), else a flag error saying what is there."""
    found = sorted(str(f) for f in Path(folder).glob("FER_*.pth") if not f.stem.endswith("_last"))
    if len(found) == 1:
        return found[0]
    if not found:
        return LEGACY_CHECKPOINT  # said as a missing file, by its old default name
    p.error(f"--checkpoint not given and {len(found)} checkpoints here ({', '.join(found)}): give one")


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
