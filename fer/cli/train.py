"""Flags of train_vggface2_resnet50.py, their checks, and the path checks before any work (preflight).

Torch-free, like every module of fer.cli: a mistyped flag or a missing index is said in a second.

Flags compose: get_args() keeps apart the flags the user GAVE (the --config file's, then the command
line's, which win) and the values the run uses, resolved from them. <stem>_config.yaml holds the given
flags only, so `--config X_config.yaml --flag x` is the original command plus `--flag x`; defaults that
depend on other flags (--best_on on --ema, --freeze_epochs / --unfreeze_all_at on --no_pretrained,
--save_path on --arch) are
decided afterwards, in one place, resolve(), for fresh runs and resumes alike. Every on/off flag has its
negation (--no_<flag>; --pretrained for --no_pretrained), so a `true` in a config can be undone.
"""
import argparse
import os
import shlex
import sys
from contextlib import contextmanager
from pathlib import Path

from fer.cli import (
    QUIET_HELP,
    ArgumentParser,
    add_outside_root_argument,
    float_in,
    int_at_least,
    nonneg_float,
    nonneg_int,
    positive_int,
)
from fer.cli.config import NOT_CONFIG, read_config, read_recipe, recipe_names
from fer.constants import LABEL_SMOOTHING, SAMPLING_POWERS
from fer.model.backbones import ARCHS, LAYER_DECAY_ARCHS, RESNETS, check_img_size
from fer.trust import FERError, check_input, check_not_inputs, check_output, check_outputs, one_line, run_lock, set_quiet

SCRIPT = "train_vggface2_resnet50.py"
DEFAULT_VGGFACE2 = "weight/resnet50_vggface2.pth"
AMP_DTYPES = {"fp16": "float16", "bf16": "bfloat16"}  # names in torch
# Flags a resumed run may change: they change speed or where files go, not what is computed.
# Every other flag defines the run, so a resume with another value is refused.
RESUMABLE_CHANGES = ("num_workers", "prefetch_factor", "device", "amp_dtype", "compile", "deterministic",
                     "resume", "overwrite", "save_path", "config", "tensorboard", "root", "quiet",
                     "allow_outside_root")


class TrainError(FERError):
    """A problem that ends the run with a one-line message."""


class Switch(argparse.BooleanOptionalAction):
    """An on/off flag: argparse's BooleanOptionalAction, with the negation spelt like the kit's other flags:
    --X turns it on, --no_X off (off="--pretrained" for --no_pretrained, itself a negation). The last one
    given wins, and either overrides a --config value."""

    def __init__(self, option_strings, dest, default=False, help=None, off=None):
        (on,) = option_strings
        self.off = off or f"--no_{on[2:]}"
        argparse.Action.__init__(self, [on, self.off], dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, option_string != self.off)


class Flags(argparse.Namespace):
    """A run's flags. vars(): every flag, resolved (what the run record and the checkpoint store as args).
    .given, kept out of vars(): the flags the user gave (the --config file's, then the command line's),
    without those equal to their default or about how this invocation runs (NOT_CONFIG): what
    <stem>_config.yaml and the run record's `given` hold."""
    __slots__ = ("given", "from_config")


def parser(description=None):
    p = ArgumentParser(description=description)
    g = p.add_argument_group("data")
    g.add_argument("--train_meta", nargs="+", default=["metadata_train.parquet"],
                   help="training index file(s) from metadata_parallel.py; several files train jointly")
    g.add_argument("--val_meta", nargs="+", default=["metadata_val.parquet"], help="validation index file(s)")
    g.add_argument("--root", help="dataset folder, if the images are no longer where the index(es) recorded them "
                                  "(the dataset moved); applies to every index file")
    add_outside_root_argument(g, Switch)
    g.add_argument("--img_size", type=int_at_least(32, 4096), default=224,
                   help="input side in pixels (32-4096: the backbones downsample 32x; vit_b_16: a multiple of 16)")
    g.add_argument("--batch_size", type=positive_int, default=8, help="batch size per process")
    g.add_argument("--num_workers", type=nonneg_int, default=None,
                   help="loader processes per training process; 0 loads in the training process itself "
                        "(default: 0 on Windows, else the CPU cores per GPU, at most 16)")
    g.add_argument("--prefetch_factor", type=positive_int, default=4,
                   help="batches each loader worker prepares ahead (ignored with --num_workers 0)")
    g.add_argument("--balanced_sampling", action=Switch,
                   help="draw training samples with inverse class-frequency weights (class weights in the "
                        "loss are then off unless --keep_class_weights)")
    g.add_argument("--keep_class_weights", action=Switch,
                   help="keep the loss's inverse-frequency class weights with --balanced_sampling")
    g.add_argument("--sampling_weights", choices=SAMPLING_POWERS, default=None,
                   help="with --balanced_sampling: inverse (default; every class drawn equally often) or sqrt "
                        "(each class in proportion to the square root of its size)")
    g.add_argument("--align", choices=("none", "template"), default="none",
                   help="template: warp every training and validation image onto the crop template (the mean "
                        "position of five landmarks in the training crops) before augmentation, as predict.py "
                        "--detect_faces crops faces; needs landmarks in the index (AffectNet's, or "
                        "metadata_parallel.py --detect_landmarks). Default none: the dataset's crops")
    g = p.add_argument_group("model")
    g.add_argument("--arch", default="resnet50", choices=ARCHS, metavar="ARCH",
                   help=f"backbone, with torchvision's ImageNet weights: {', '.join(ARCHS)} (README: their stages)")
    g.add_argument("--vggface2_ckpt", default=None,
                   help=f"VGGFace2 backbone weights (.pth/.pt state dict or the VGGFace2-pytorch .pkl); default "
                        f"{DEFAULT_VGGFACE2}, and ImageNet weights when that file is absent")
    g.add_argument("--vggface2_layout", default="caffe", choices=("caffe", "torchvision"),
                   help="caffe: weights converted from the VGGFace2 authors' Caffe ResNet-50 (BGR mean-subtracted "
                        "input, stride on the 1x1 conv), as in resnet50_ft_weight.pkl; torchvision: weights "
                        "trained in torchvision's layout on ImageNet-normalised RGB")
    g.add_argument("--weights", metavar="FILE", default=None,
                   help="backbone weights for any --arch (a state dict in torchvision's layout, e.g. from a face "
                        "or self-supervised model), instead of the ImageNet ones")
    g.add_argument("--no_pretrained", action=Switch, off="--pretrained",
                   help="start from random weights (nothing is loaded); --pretrained: from pretrained ones, the "
                        "default (undoes a --config's no_pretrained: true)")
    g.add_argument("--init_from", metavar="CKPT", default=None,
                   help="start from a trained FER checkpoint's weights (fine-tuning, e.g. AffectNet -> RAF-DB); "
                        "its expression head is re-initialised if its classes differ from this run's")
    g = p.add_argument_group("schedule")
    g.add_argument("--epochs", type=positive_int, default=100,
                   help="number of epochs; the cosine learning-rate schedule ends at the last step of the last one. "
                        "With --resume, a larger value extends the run, a finished one too (the schedule re-planned)")
    g.add_argument("--freeze_epochs", type=nonneg_int, default=None,
                   help="epochs 1..N (numbered from 1, as printed) train only the backbone's last stage (ResNet: "
                        "layer4; README: each family's); later epochs the last two (0: from the start). Default 3; "
                        "with --no_pretrained nothing is frozen unless this or --unfreeze_all_at is given")
    g.add_argument("--unfreeze_all_at", type=positive_int, default=None,
                   help="from this epoch on (numbered from 1, as printed) the whole backbone trains; 1: from the "
                        "start. Default: never")
    g.add_argument("--patience", type=positive_int, default=15,
                   help="stop when neither validation accuracy nor RMSE improved for this many epochs")
    g.add_argument("--lr", type=float_in(0, 10, lo_open=True), default=1e-4,
                   help="AdamW learning rate, in (0, 10] (0 would train nothing)")
    g.add_argument("--weight_decay", type=nonneg_float, default=1e-3, help="AdamW weight decay (>= 0)")
    g.add_argument("--warmup_epochs", type=nonneg_int, default=0,
                   help="epochs of linear learning-rate warm-up (from lr/(N+1)) before the cosine schedule (both "
                        "set the rate at every step)")
    g.add_argument("--layer_decay", type=float_in(0, 1, lo_open=True), default=None,
                   help=f"layer-wise learning-rate decay R in (0, 1] ({', '.join(LAYER_DECAY_ARCHS)}): a block "
                        f"k blocks below the heads learns at lr x R^k")
    g.add_argument("--ema", metavar="DECAY", type=float_in(0, 1, hi_open=True), default=None,
                   help="keep an exponential moving average of the weights (e.g. 0.9998), updated every step "
                        "and validated each epoch beside the trained weights; 0: none (undoes a --config's or "
                        "--recipe's --ema)")
    g.add_argument("--best_on", choices=("raw", "ema"), default=None,
                   help="which weights' validation picks (and become) the best checkpoint and drive early "
                        "stopping (default: ema with --ema, else raw)")
    g.add_argument("--label_smoothing", metavar="EPS", type=float_in(0, 1, hi_open=True), default=LABEL_SMOOTHING,
                   help="label smoothing of the expression cross-entropy, in [0, 1); 0 turns it off")
    g.add_argument("--sam", metavar="RHO", type=float_in(0, 10), default=0.0,
                   help="sharpness-aware minimisation around AdamW: each step takes the gradient at the worst point "
                        "of a RHO-ball around the weights (two forward/backward passes per step), e.g. 0.05; 0: off "
                        "(the default; undoes a --recipe's or --config's)")
    g.add_argument("--asam", action=Switch,
                   help="with --sam: adaptive SAM, the ball scaled by each weight's magnitude (RHO about 10x "
                        "SAM's, e.g. 0.5)")
    g.add_argument("--mixup", metavar="ALPHA", type=float_in(0, 100, lo_open=True), default=None,
                   help="MixUp with Beta(ALPHA, ALPHA) weights, e.g. 0.8 (expression and valence/arousal targets "
                        "mixed alike); with --cutmix, one of the two per batch")
    g.add_argument("--cutmix", metavar="ALPHA", type=float_in(0, 100, lo_open=True), default=None,
                   help="CutMix with Beta(ALPHA, ALPHA) box areas, e.g. 1.0")
    g.add_argument("--steps_per_epoch", type=positive_int, default=None,
                   help="cut each epoch after this many steps (quick runs)")
    g = p.add_argument_group("speed")
    g.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    g.add_argument("--amp_dtype", default="fp16", choices=AMP_DTYPES,
                   help="mixed-precision type on CUDA (fp16 uses a GradScaler); the CPU trains in float32, or "
                        "with bf16 in bfloat16 autocast (CPUs with bfloat16 instructions: AVX512-BF16, AMX)")
    g.add_argument("--compile", action=Switch, help="torch.compile the model (slow start, faster steps)")
    g.add_argument("--deterministic", action=Switch, help="deterministic cuDNN kernels (slower)")
    g = p.add_argument_group("output")
    g.add_argument("--save_path", default=None,
                   help="best checkpoint; other outputs are named after it (default: FER_<arch>.pth, e.g. "
                        "FER_resnet50.pth)")
    g.add_argument("--resume", metavar="LAST_PTH", default=None,
                   help="continue from a *_last.pth training state; with a larger --epochs, train a finished run "
                        "further")
    g.add_argument("--overwrite", action=Switch,
                   help="replace the outputs of an earlier run at --save_path (otherwise training refuses to start)")
    g.add_argument("--seed", type=int_at_least(0, 2**32 - 1), default=42,
                   help="seed of initialisation, sampling and augmentation (0 to 2^32 - 1)")
    g.add_argument("--recipe", choices=recipe_names(), default=None,
                   help="a preset: the flag values in recipes/NAME.yaml (README: Recipes), over the defaults; "
                        "--config and the command line override them")
    g.add_argument("--config", metavar="FILE", default=None,
                   help="YAML or JSON file of flag values (flag name: value), e.g. an earlier run's "
                        "<stem>_config.yaml (the flags that run was given); flags on the command line override "
                        "it, as if added to that run's command (an on/off flag goes off with --no_<flag>, "
                        "--no_pretrained with --pretrained)")
    g.add_argument("--quiet", action=Switch, help=QUIET_HELP)
    g.add_argument("--tensorboard", metavar="DIR", nargs="?", const="", default=None,
                   help="write TensorBoard curves to DIR (default without DIR: <stem>_tensorboard beside the "
                        "checkpoint); view with: tensorboard --logdir <folder of your runs>")
    return p


def flags_of(p):
    """The parser's flags (dest names), in the order of --help."""
    return [a for a in p._actions if a.option_strings and a.dest != "help"]


def defaults():
    """Every flag at its default, dependent ones unresolved (None)."""
    return {a.dest: a.default for a in flags_of(parser())}


def resolve(args):
    """Decide the defaults that depend on other flags, in place (returns args): the one place they are
    decided, after --config and the command line are merged, for fresh runs and resumes alike. Only a
    flag still None is filled in, so resolving resolved flags changes nothing. A flag added here later
    is resolved the same way for older runs (check_resume, compare_runs.py: with_defaults)."""
    args.ema = args.ema or None  # --ema 0: no averaging
    if args.best_on is None:  # the weights that pick the best checkpoint: the averaged ones when there are
        args.best_on = "ema" if args.ema else "raw"
    # Flags that only mean something with another one: inert (resolved off) when a later layer turned that one
    # off, e.g. --recipe affectnet8 --no_balanced_sampling; given on the command line alone, get_args refuses them.
    args.sampling_weights = (args.sampling_weights or "inverse") if args.balanced_sampling else None
    args.asam = bool(args.asam and args.sam)
    if args.save_path is None:  # the file says what trained
        args.save_path = f"FER_{args.arch}.pth"
    if args.freeze_epochs is None:  # staged freezing keeps pretrained layers; random ones must train
        scratch = args.no_pretrained and args.unfreeze_all_at is None
        args.freeze_epochs, args.unfreeze_all_at = (0, 1) if scratch else (3, args.unfreeze_all_at)
    return args


def with_defaults(recorded):
    """A recorded run's flags (a checkpoint's or run record's args) with every flag newer than the run at
    its default, resolved as the run's own flags make it; the recorded values are kept as they are."""
    filled = vars(resolve(argparse.Namespace(**{**defaults(), **recorded})))
    return {**filled, **recorded}


_UNSET = object()


def _typed(p, argv):
    """The flags the command line gives (parsed once, with their types and choices), and nothing else."""
    namespace = argparse.Namespace(**{a.dest: _UNSET for a in flags_of(p)})  # argparse fills no default in
    return {k: v for k, v in vars(p.parse_args(argv, namespace)).items() if v is not _UNSET}


def get_args(argv=None, description=None):
    """The run's flags (a Flags): the --config file's, overridden by the command line's, checked, then the
    dependent defaults resolved. Flag mistakes end the program in one line (exit 2); paths: preflight()."""
    p = parser(description)
    given = read_config(p, argv)  # checked like typed flags; {} without --config
    typed = _typed(p, argv)
    from_config = set(given) - set(typed)
    given.update(typed)
    start = defaults()
    base = {**start, **(read_recipe(p, given["recipe"]) if given.get("recipe") else {})}  # defaults < recipe
    args = Flags(**{**base, **given})
    if args.init_from and (args.no_pretrained or args.vggface2_ckpt or args.weights):
        p.error("--init_from gives the starting weights: leave out --no_pretrained / --vggface2_ckpt / --weights")
    if args.weights and (args.no_pretrained or args.vggface2_ckpt):
        p.error("--weights gives the backbone weights: leave out --no_pretrained / --vggface2_ckpt")
    if args.vggface2_ckpt and args.arch not in RESNETS:
        p.error(f"--vggface2_ckpt is for the ResNets; give a {args.arch} backbone's weights with --weights")
    if check_img_size(args.arch, args.img_size):
        p.error(f"argument --img_size: {check_img_size(args.arch, args.img_size)}")
    if args.layer_decay is not None and args.arch not in LAYER_DECAY_ARCHS:
        p.error(f"--layer_decay is for {', '.join(LAYER_DECAY_ARCHS)}, not {args.arch}")
    if args.warmup_epochs >= args.epochs:
        p.error(f"--warmup_epochs {args.warmup_epochs} leaves no epoch of the --epochs {args.epochs} for the schedule")
    if args.save_path is not None and (not args.save_path or Path(args.save_path).name in ("", ".", "..")
                                       or args.save_path.endswith(("/", os.sep))):  # None: FER_<arch>.pth (resolve)
        p.error(f"--save_path {args.save_path!r}: give a checkpoint file name, e.g. runs/mine/FER_{args.arch}.pth")
    if args.best_on == "ema" and not args.ema:
        p.error("--best_on ema needs --ema DECAY")
    if typed.get("asam") and not args.sam:
        p.error("--asam needs --sam RHO (the radius of its ball)")
    if "sampling_weights" in typed and not args.balanced_sampling:
        p.error(f"--sampling_weights {args.sampling_weights} needs --balanced_sampling")
    # Absolute paths: a resume (or a --config) from another working directory is still the same run.
    args.train_meta = [os.path.abspath(m) for m in args.train_meta]  # abspath: no link resolution (loops)
    args.val_meta = [os.path.abspath(m) for m in args.val_meta]
    args.given = {k: getattr(args, k) for k in start
                  if k in given and k not in NOT_CONFIG and getattr(args, k) != base[k]}
    args.from_config = from_config  # the flags only the --config file gave (its save_path: preflight's message)
    set_quiet(args.quiet)
    return resolve(args)


# --- before any work ----------------------------------------------------------------------------
def output_paths(save_path):
    save_path = Path(save_path)
    stem = save_path.with_suffix("")
    return {"best": save_path, "last": Path(f"{stem}_last.pth"), "history": Path(f"{stem}_history.csv"),
            "curves": Path(f"{stem}_curves.png"), "run": Path(f"{stem}_run.json"), "config": Path(f"{stem}_config.yaml")}


def tensorboard_dir(args):
    """Where --tensorboard writes: DIR, or <stem>_tensorboard beside the checkpoint; None without the flag."""
    if args.tensorboard is None:
        return None
    return Path(args.tensorboard or f"{Path(args.save_path).with_suffix('')}_tensorboard")


def preflight(args):
    """Everything that can be checked in the first second: inputs exist, outputs can be written, and
    no earlier run is silently replaced."""
    for flag in ("train_meta", "val_meta"):
        for path in getattr(args, flag):
            check_input(path, f"--{flag}")
    for flag in ("resume", "init_from", "vggface2_ckpt", "config", "weights"):
        if getattr(args, flag):
            check_input(getattr(args, flag), f"--{flag}")
    if args.root:
        check_input(args.root, "--root", folder=True)
    paths = output_paths(args.save_path)
    if (args.config and not args.resume and "save_path" in (getattr(args, "from_config", None) or ())
            and any(p.exists() for p in paths.values())):  # the config's own run, not a new one
        raise TrainError(f"--config {args.config} names the run at save_path {args.save_path}, which exists: for "
                         f"a new run from this config give a new --save_path (to continue that run: --resume "
                         f"{paths['last']})")
    for path in paths.values():
        check_output(path, "--save_path")
    own = bool(args.resume) and any(p.exists() and os.path.samefile(args.resume, p) for p in paths.values())
    # --resume's file is meant to be replaced, and so is the run's own config when it resumes that run
    # (read in full before anything is written; a resume may not change what it says)
    own_config = own and paths["config"].exists() and os.path.samefile(args.config or os.devnull, paths["config"])
    check_not_inputs([("--save_path", p) for p in paths.values()],
                     [(f"--{k}", m) for k in ("train_meta", "val_meta") for m in getattr(args, k)]
                     + [(f"--{k}", getattr(args, k)) for k in ("init_from", "vggface2_ckpt", "config", "weights")
                        if not (k == "config" and own_config)])
    kinds = {"best": "checkpoint", "last": "checkpoint", "run": "run record", "config": "run config"}
    for key, path in paths.items():  # trust rule 2, --overwrite or not: never onto another tool's file, no
        check_outputs([("--save_path", path)], [], kind=kinds.get(key), images=key == "curves")  # plot in a dataset
    # Whatever starts the run (fresh, --init_from, --resume of another run's state): outputs of an
    # earlier run are replaced only with --overwrite, except by the continuation of that same run.
    existing = [p for p in paths.values() if p.exists()]
    tb = tensorboard_dir(args)
    if tb is not None:
        check_output(tb, "--tensorboard", folder=True)
        clash = next((p for p in paths.values() if p.resolve() == tb.resolve() or p.resolve() in tb.resolve().parents),
                     None)  # the event folder would take the name an output file is renamed onto
        if clash is not None:
            raise TrainError(f"--tensorboard {tb}: is the output {clash} of --save_path {args.save_path}; "
                             f"choose another folder")
        existing += list(tb.glob("events.out.tfevents.*"))[:1]
    if own and args.overwrite:
        raise TrainError(f"--resume {args.resume} continues the run at --save_path {args.save_path}, --overwrite "
                         f"would replace it: give one of them")
    if existing and not (own or args.overwrite):
        if args.resume:
            raise TrainError(f"{existing[0]} exists and belongs to another run than --resume {args.resume}; "
                             f"continue that run at its own --save_path, or replace {args.save_path}'s run with "
                             f"--overwrite")
        raise TrainError(f"{existing[0]} exists (an earlier run's output); continue that run with --resume "
                         f"{paths['last']}, or replace it with --overwrite")


@contextmanager
def lock_run(args):
    """Trust rule 3: a lock on the run at --save_path for the run's life (taken by the first process of a
    torchrun job only), so that a second training into the same --save_path stops in one line naming the
    first one's pid instead of both exiting 0 with one run lost. A run that wrote nothing (refused, failed
    early) leaves no empty folder it made for the lock."""
    if os.environ.get("RANK", "0") != "0":
        yield
        return
    folder = Path(args.save_path).parent
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)  # preflight() checked it can be
    try:
        with run_lock(Path(args.save_path).resolve(), "--save_path"):
            yield
    finally:
        if made:
            try:
                folder.rmdir()  # only when empty
            except OSError:
                pass


def interrupted_message(args, argv, last_before, script=SCRIPT):
    """What Ctrl-C leaves: the epochs saved and how to resume, or that nothing was saved and the command
    that starts again (a --resume of a file this run never wrote would fail or continue an older run).
    last_before: the mtime (ns) of <stem>_last.pth before the run started, None if there was none."""
    last = output_paths(args.save_path)["last"]
    saved = last.exists() and (last_before is None or last.stat().st_mtime_ns != last_before)
    if saved or args.resume:
        return (f"interrupted: every epoch reported above is saved; resume with: "
                f"--resume {last if saved else args.resume}")
    command = shlex.join([Path(script).name, *(sys.argv[1:] if argv is None else argv)])
    earlier = f" (the earlier run's files at {args.save_path} are unchanged)" if last_before is not None else ""
    return (f"interrupted before the first epoch finished: nothing was saved{earlier}; start again with: "
            f"python {command}")


def stopped_before_training(e, args, argv=None, script=SCRIPT):
    """One line on stderr, and the exit code, for a run stopped before training began: a path preflight()
    refused (1), or Ctrl-C during the checks or the imports (130; nothing of this run was written)."""
    if isinstance(e, KeyboardInterrupt):
        last = output_paths(args.save_path)["last"]
        print("\n" + interrupted_message(args, argv, last.stat().st_mtime_ns if last.is_file() else None, script),
              file=sys.stderr)
        return 130
    print(f"error: {one_line(e)}", file=sys.stderr)
    return 1
