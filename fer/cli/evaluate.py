"""Flags of eval_resnet50.py, and the checks of its paths (the outputs, the inputs, an earlier evaluation
in --out_dir) that come before the model is loaded."""
import os
import shlex
import sys
from pathlib import Path

from fer.cli import (
    ArgumentParser,
    add_bootstrap_argument,
    add_face_arguments,
    add_outside_root_argument,
    add_quiet_argument,
    add_tta_argument,
    check_bootstrap,
    check_face_arguments,
    default_checkpoint,
    int_at_least,
    model_name,
    nonneg_int,
    positive_int,
)
from fer.model.backbones import ARCHS
from fer.trust import FERError, check_input, check_not_inputs, check_output, check_outputs

# Every file evaluation may write in --out_dir, named after the model (its recorded --arch: metrics_resnet18.json):
# together they are one evaluation (see the --overwrite rule), whichever model wrote them.
OUTPUT_NAMES = ("metrics_{}.json", "ConfusionMatrix_{}.png", "ValenceArousal_{}.png", "report_{}.html",
                "comparison_{}.json", "label_issues_{}.csv")


def outputs(name):
    """The file names an evaluation of model `name` writes (fer.cli.model_name)."""
    return tuple(n.format(name) for n in OUTPUT_NAMES)


def evaluation_files(out_dir, name=None):
    """The files of an evaluation in out_dir, of any model the kit builds (and of model `name`): never a user's
    file that merely looks alike (metrics_summary.json)."""
    names = {*ARCHS, *([name] if name else [])}
    return sorted(f for f in (Path(out_dir) / n.format(m) for n in OUTPUT_NAMES for m in names) if f.is_file())


def get_args(argv=None, description=None):
    """The flags, checked, then the paths (see check_paths). args.command is the command line, for the report."""
    p = ArgumentParser(description=description)
    p.add_argument("--checkpoint", nargs="+", metavar="CKPT", default=None,
                   help="checkpoint written by training; two (A B) compare the models on the same images "
                        "(default: the one FER_<arch>.pth in this folder)")
    p.add_argument("--meta", nargs="+", default=["metadata_val.parquet"],
                   help="index parquet(s) of the split to evaluate (any dataset: classes are matched by name)")
    p.add_argument("--root", help="dataset folder, if not the one recorded in the index")
    add_outside_root_argument(p)
    p.add_argument("--all_classes", action="store_true",
                   help="predict with the argmax over every class of the checkpoint (default: over the classes "
                        "present in both the evaluation set and the checkpoint, as papers report an 8-class "
                        "model on a 7-class set)")
    p.add_argument("--batch_size", type=positive_int, default=32, help="images per batch")
    p.add_argument("--img_size", type=int_at_least(32, 4096), default=None,
                   help="input side (default: the checkpoint's)")
    p.add_argument("--out_dir", default=".", help="where the report files go")
    p.add_argument("--save_predictions", metavar="FILE.csv", help="also write per-image predictions here")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier evaluation in --out_dir (and --save_predictions) as a whole: its files "
                        "this run does not write are removed; without it, evaluation refuses to start")
    add_tta_argument(p, "image")
    p.add_argument("--audit_labels", action="store_true",
                   help="rank the rows whose given label is most likely wrong (confident learning, cleanlab) from this "
                        "evaluation's probabilities, on a split the model did not train on; writes "
                        "label_issues_<arch>.csv for review (metadata_parallel.py --exclude takes it back) and "
                        "shows the top ones on the page")
    p.add_argument("--calibrate", action="store_true",
                   help="fit a temperature on the evaluated split (temperature scaling: the T minimising the NLL of "
                        "softmax(logits / T)) and record it in --checkpoint's metadata, with the index files it was "
                        "fitted on (the file is rewritten atomically, its weights unchanged); predict.py and the "
                        "ONNX export then report calibrated probabilities. Give the validation split here, then "
                        "evaluate the test split: its page shows ECE and NLL before and after")
    p.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if available)")
    p.add_argument("--num_workers", type=nonneg_int, default=min(4, os.cpu_count() or 1),
                   help="loader processes (0: load in this process)")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast on CUDA (faster; tiny differences)")
    p.add_argument("--report", choices=("on", "off"), default="on",
                   help="write report_<arch>.html, the evaluation as one self-contained page (default: on)")
    p.add_argument("--report_images", type=nonneg_int, default=24,
                   help="thumbnails per confusion-matrix cell (and of mistakes, largest errors) in the report")
    g = p.add_argument_group("crops as predict.py makes them")
    g.add_argument("--recrop", choices=("none", "detect"), default="none",
                   help="detect: detect the face in every image again and crop it as predict.py --detect_faces "
                        "does (--detector, --align) before predicting; none (default): the dataset's crops")
    add_face_arguments(g, min_face=20)
    add_bootstrap_argument(p)
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of the bootstrap resamples")
    add_quiet_argument(p)
    args = p.parse_args(argv)
    args.checkpoint = args.checkpoint or [default_checkpoint(p)]
    if len(args.checkpoint) > 2:
        p.error(f"--checkpoint: one checkpoint, or two to compare (got {len(args.checkpoint)})")
    if len(args.checkpoint) == 2 and args.audit_labels:
        p.error("--audit_labels: give one --checkpoint")
    if len(args.checkpoint) == 2 and args.calibrate:
        p.error("--calibrate: give one --checkpoint (the one whose temperature is fitted)")
    if len(args.checkpoint) == 2 and args.save_predictions:
        p.error("--save_predictions: give one --checkpoint (evaluate each model alone to save its predictions)")
    check_bootstrap(p, args)
    args.checkpoint, args.checkpoint_b = args.checkpoint[0], (args.checkpoint[1:] or [None])[0]
    args.model = model_name(args.checkpoint)  # read from the checkpoint without torch
    args.outputs = outputs(args.model)
    args.comparison = args.outputs[4]
    check_face_arguments(p, args, args.recrop == "detect", "--recrop detect")
    args.command = shlex.join(["python", sys.argv[0] if argv is None else "eval_resnet50.py",
                               *(sys.argv[1:] if argv is None else argv)])
    check_paths(args)
    return args


def check_paths(args):
    """Every output writable, the inputs there, no output onto an input, no earlier evaluation in the
    way: said before the model is loaded."""
    out_dir = check_output(args.out_dir, "--out_dir", folder=True)
    # both modes: --overwrite removes those this run does not write, so each must be a file
    for path in dict.fromkeys([out_dir / name for name in args.outputs] + evaluation_files(out_dir, args.model)):
        check_output(path, "--out_dir")
    if args.root:  # both modes: not as a missing image once a model is loaded
        check_input(args.root, "--root", folder=True)
    if args.checkpoint_b:
        for flag, path in [("--checkpoint", args.checkpoint), ("--checkpoint", args.checkpoint_b)] + \
                [("--meta", m) for m in args.meta]:
            check_input(path, flag)  # both models and the data before the first is evaluated
        if os.path.samefile(args.checkpoint, args.checkpoint_b):  # links and other spellings too
            raise FERError(f"--checkpoint {args.checkpoint_b}: is the same file as {args.checkpoint}; a model "
                           f"compared with itself differs by 0 everywhere: give two different checkpoints")
        check_not_inputs([("--out_dir", out_dir / args.comparison)], [("--checkpoint", c) for c in
                                                                   (args.checkpoint, args.checkpoint_b)])
    else:
        if args.save_predictions:
            check_output(args.save_predictions, "--save_predictions")
        if getattr(args, "calibrate", False):  # the checkpoint is rewritten: its folder must take a new file
            check_input(args.checkpoint, "--checkpoint")
            check_output(args.checkpoint, "--calibrate: --checkpoint")
        check_not_inputs([("--out_dir", out_dir / n) for n in args.outputs] +
                         [("--save_predictions", args.save_predictions)],
                         [("--checkpoint", args.checkpoint)] + [("--meta", m) for m in args.meta])
        check_outputs([("--save_predictions", args.save_predictions)],  # trust rule 2: not onto a .pth, a run record
                      [("--checkpoint", args.checkpoint)] + [("--meta", m) for m in args.meta])
    # trust rule 2: the plots and report page are pictures, never written among a dataset's images
    check_outputs([("--out_dir", out_dir)], [], images=True)
    check_earlier_evaluation(args, out_dir)


def check_earlier_evaluation(args, out_dir):
    """Training's rule: outputs of an earlier run are replaced only when asked (--overwrite), and then
    as a whole set, so a folder never mixes two evaluations."""
    earlier = [("--out_dir", path) for path in evaluation_files(out_dir, args.model)]
    if args.save_predictions and Path(args.save_predictions).exists():
        earlier.append(("--save_predictions", Path(args.save_predictions)))
    if earlier and not args.overwrite:
        flag, path = earlier[0]
        more = f" and {len(earlier) - 1} more file(s)" if len(earlier) > 1 else ""
        raise FERError(f"{flag} {path if flag == '--save_predictions' else out_dir}: holds an earlier evaluation "
                       f"({path.name}{more}); replace it as a whole with --overwrite, or choose another "
                       f"{'file' if flag == '--save_predictions' else 'folder'}")
