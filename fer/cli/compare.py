"""Flags of compare_runs.py (training runs side by side; two prediction files compared), their checks,
and the checks of its output paths. Torch-free, like every module of fer.cli."""
from pathlib import Path

from fer.cli import ArgumentParser, add_bootstrap_argument, check_bootstrap, nonneg_int
from fer.trust import FERError, check_not_inputs, check_output

# The table's metrics (--sort keys): where each is in a run record's "best" (None: at the record's top level).
METRICS = {"val_acc": "val_acc", "f1_macro": "val_f1_macro", "ccc_valence": "val_ccc_valence",
           "ccc_arousal": "val_ccc_arousal", "epochs": None, "wall_time_s": None, "img_per_s": None}
OUTPUTS = ("out", "plot", "json")


def get_args(argv=None, description=None):
    p = ArgumentParser(description=description)
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="run records (*_run.json), checkpoints (.pth), or folders searched for *_run.json")
    p.add_argument("--sort", default="val_acc", choices=["name", *METRICS],
                   help="order of the rows (metrics best first; wall time shortest first)")
    p.add_argument("--out", metavar="FILE", help="also write the table as .csv or .md")
    p.add_argument("--plot", metavar="FILE.png", help="validation curves of every run, labelled by what differs")
    g = p.add_argument_group("paired comparison of two prediction files (eval_resnet50.py --save_predictions)")
    g.add_argument("--predictions", nargs=2, metavar=("A.csv", "B.csv"),
                   help="compare two models on the same images: each metric, B - A with its bootstrap interval, "
                        "McNemar's test for accuracy")
    add_bootstrap_argument(g)
    g.add_argument("--seed", type=nonneg_int, default=0, help="seed of the bootstrap resamples")
    g.add_argument("--json", metavar="FILE", help="also write the paired comparison as JSON")
    args = p.parse_args(argv)
    check_bootstrap(p, args)
    if bool(args.paths) == bool(args.predictions):
        p.error("give run records / folders to tabulate, or --predictions A.csv B.csv (one of the two)")
    if args.out and Path(args.out).suffix.lower() not in (".csv", ".md"):
        p.error(f"--out {args.out}: the table is written as .csv or .md")
    if args.plot and Path(args.plot).suffix.lower() != ".png":
        p.error(f"--plot {args.plot}: the plot is written as .png")
    if args.predictions and (args.out or args.plot):
        p.error("--out / --plot belong to the run table; with --predictions use --json")
    if args.json and not args.predictions:
        p.error("--json belongs to --predictions; the run table is written with --out")
    check_paths(args)
    return args


def outputs(args):
    """(flag, path) of every output asked for."""
    return [(f"--{f}", getattr(args, f)) for f in OUTPUTS if getattr(args, f)]


def check_paths(args):
    """Outputs can be written, are none of the inputs and are three different files."""
    inputs = [("PATH", p) for p in args.paths] + [("--predictions", p) for p in args.predictions or []]
    for flag, path in outputs(args):
        check_output(path, flag)
    check_not_inputs(outputs(args), inputs)
    if len({str(Path(p).resolve()) for _, p in outputs(args)}) < len(outputs(args)):
        raise FERError("--out, --plot and --json must be different files")
