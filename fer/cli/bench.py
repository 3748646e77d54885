"""Flags of bench.py."""
import re

from fer.cli import ArgumentParser, add_quiet_argument, int_at_least, positive_int
from fer.model.backbones import ARCHS, check_img_size
from fer.trust import check_input, check_output, check_outputs

SECTIONS = ("index", "transforms", "train_step", "recipes", "end_to_end", "eval", "video", "report", "experiments", "faces")
DEVICE = re.compile(r"(cpu|cuda(:\d+)?)")


def get_args(argv=None, description=None):
    p = ArgumentParser(description=description)
    p.add_argument("--device", default=None, help="device of the model rows: cpu, cuda or cuda:N (default: cuda if "
                                                  "available)")
    p.add_argument("--arch", default=None, choices=ARCHS, metavar="ARCH",
                   help=f"model of the training/evaluation rows: {', '.join(ARCHS)} (default resnet50; --quick: "
                        f"resnet18)")
    p.add_argument("--img_size", type=int_at_least(32, 4096), default=None,
                   help="model input side (default: 224 on CUDA, 112 on the CPU)")
    p.add_argument("--batch_size", type=positive_int, default=None,
                   help="batch of the model rows (default: 256 on CUDA, 16 on the CPU)")
    p.add_argument("--index_images", type=positive_int, default=20000, help="size of the generated tree for the index rows")
    p.add_argument("--workers", type=int_at_least(0), nargs="+", default=None,
                   help="DataLoader worker counts to try (default: 0 1 2 ... up to the CPU count, at most 8)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="timed steps per training/end-to-end repetition (default: 10 on CUDA, 3 on the CPU)")
    p.add_argument("--reps", type=positive_int, default=3, help="timed repetitions (the median is reported)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (minutes of compilation on a CPU)")
    p.add_argument("--only", nargs="+", choices=SECTIONS, metavar="SECTION",
                   help=f"run only these sections: {', '.join(SECTIONS)} (default: all but faces, which needs "
                        f"--checkpoint)")
    p.add_argument("--checkpoint", default=None,
                   help="faces section: a model trained on the demo data (make demo); with it, faces runs too")
    p.add_argument("--scenes", type=positive_int, default=80, help="faces section: scenes of two faces each")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks every row runs, in seconds")
    p.add_argument("--json", help="write the results here as JSON")
    add_quiet_argument(p)
    args = p.parse_args(argv)
    if args.device is not None and not DEVICE.fullmatch(args.device):
        p.error(f"argument --device: {args.device!r} is not cpu, cuda or cuda:N")
    if args.quick:
        args.arch, args.img_size, args.batch_size, args.index_images, args.reps = args.arch or "resnet18", 32, 4, 300, 1
        args.workers = args.workers or [0, 1]
    args.arch = args.arch or "resnet50"
    if args.img_size is not None and check_img_size(args.arch, args.img_size):
        p.error(f"argument --img_size: {check_img_size(args.arch, args.img_size)}")
    args.only = args.only or [s for s in SECTIONS if s != "faces" or args.checkpoint]
    if "faces" in args.only and not args.checkpoint:
        p.error("--only faces needs --checkpoint (a model trained on the demo data, e.g. runs/demo/FER_resnet18.pth)")
    # Before the minutes of benchmarking: the table is not lost, nor written onto an input.
    if args.checkpoint:
        check_input(args.checkpoint, "--checkpoint")
    if args.json:
        check_output(args.json, "--json")
        # trust rule 2: never onto the checkpoint, nor onto any file of the kit (a checkpoint, index, run record)
        check_outputs([("--json", args.json)], [("--checkpoint", args.checkpoint)])
    return args
