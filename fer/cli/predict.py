"""Flags of predict.py, and the checks of --out, --annotate and --device that come before anything is
loaded (the inputs and the plan of the outputs are fer.inference.predict's)."""
import re

from fer.cli import (
    ArgumentParser,
    add_face_arguments,
    add_quiet_argument,
    add_tta_argument,
    check_face_arguments,
    default_checkpoint,
    float_in,
    int_at_least,
    positive_int,
)
from fer.trust import FERError, check_output, check_outputs


def get_args(argv=None, description=None):
    """The flags, checked, then --out, --annotate and --device (check_paths)."""
    args = parse_args(argv, description)
    check_paths(args)
    return args


def parse_args(argv=None, description=None):
    """The flags alone, checked as flags (no path is looked at)."""
    p = ArgumentParser(description=description)
    p.add_argument("paths", nargs="+", help="images, folders (searched recursively for images and videos) and videos")
    p.add_argument("--checkpoint", default=None,
                   help="checkpoint written by training (default: the one FER_<arch>.pth in this folder)")
    p.add_argument("--out", default="predictions.csv",
                   help="CSV with one row per face (per image or frame without --detect_faces); the per-video "
                        "track summaries and timelines are written beside it as <out>_<video>_tracks.csv and "
                        "<out>_<video>_timeline.png")
    p.add_argument("--batch_size", type=int_at_least(1, 4096), default=32, metavar="N",
                   help="faces per forward pass (default 32)")
    add_tta_argument(p, "face")
    p.add_argument("--raw", action="store_true",
                   help="raw softmax probabilities; default: calibrated ones, softmax(logits / T) with the temperature "
                        "the checkpoint records (eval_resnet50.py --calibrate), raw when it records none. The "
                        "column `probabilities` says which")
    p.add_argument("--detect_faces", action="store_true",
                   help="predict every face found by --detector, cropped as --align says, instead of the whole "
                        "picture")
    p.add_argument("--largest_face", action="store_true", help="with face detection, keep only the largest face "
                                                               "(implies --detect_faces)")
    add_face_arguments(p.add_argument_group("face detection (with --detect_faces)"))
    p.add_argument("--annotate", metavar="DIR",
                   help="write copies of the images (same name and format) and <video>_annotated.mp4 with every "
                        "face's box, track id, expression and valence/arousal (a folder searched for inputs "
                        "skips this folder and the timelines beside --out: a rerun does not read its own outputs)")
    p.add_argument("--frame_step", type=positive_int, default=1, metavar="N",
                   help="use every N-th video frame (default 1)")
    p.add_argument("--smooth", type=float_in(0, 1, lo_open=True), metavar="ALPHA",
                   help="add smooth_* columns: exponential moving average along each video track, "
                        "s = ALPHA * new + (1 - ALPHA) * s (smaller: smoother; 1: none). Default: off")
    p.add_argument("--track_iou", type=float_in(0, 1, lo_open=True), default=0.3,
                   help="a face continues a track when its box overlaps the track's last box by at least this "
                        "IoU (default 0.3)")
    p.add_argument("--track_gap", type=int_at_least(0, 10**6), default=10,
                   help="a track missed for up to this many analysed frames in a row keeps its id (default 10)")
    p.add_argument("--prefetch", type=int_at_least(1, 4096), default=64,
                   help="images or frames decoded and detected ahead of the model (bounded queue; default 64)")
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda if available)")
    add_quiet_argument(p)
    args = p.parse_args(argv)
    args.checkpoint = args.checkpoint or default_checkpoint(p)
    args.detect_faces = args.detect_faces or args.largest_face
    check_face_arguments(p, args, args.detect_faces, "--detect_faces")
    return args


def check_paths(args):
    """--out and --annotate writable, --device spelled as torch knows it: before anything is loaded."""
    check_output(args.out, "--out")
    if args.annotate == "":  # an unset shell variable: not "no annotation", nor the current folder
        raise FERError("--annotate: an empty path (give the folder for the annotated copies)")
    if args.annotate:
        check_output(args.annotate, "--annotate", folder=True)
    # trust rule 2: the CSV onto no input or other tool's file (a .pth), the annotated copies never among a
    # dataset's images
    inputs = [("PATH", p) for p in args.paths] + [("--checkpoint", args.checkpoint)]
    check_outputs([("--out", args.out), ("--annotate", args.annotate)], inputs)  # never one file, nor an input
    check_outputs([("--annotate", args.annotate)], inputs, images=True)  # pictures: never into a dataset
    if args.device and not re.fullmatch(r"cpu|cuda(:\d+)?", args.device):  # without waiting for torch
        raise FERError(f"--device {args.device}: unknown device (use cpu, cuda or cuda:N)")
