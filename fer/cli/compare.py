"""Flags of compare_runs.py (training runs side by side; two prediction files compared), their checks,
and the checks of its output paths. Torch-free, like every module of fer.cli."""
import os
from pathlib import Path

from fer.cli import ArgumentParser, add_bootstrap_argument, add_quiet_argument, check_bootstrap, nonneg_int
from fer.trust import check_output, check_outputs

# The table's metrics (--sort keys): where each is in a run record's "best" (None: at the record's top level).
METRICS = {"val_acc": "val_acc", "f1_macro": "val_f1_macro", "ccc_valence": "val_ccc_valence",
           "ccc_arousal": "val_ccc_arousal", "epochs_run": None, "wall_time_s": None, "img_per_s": None}
RECORD_NAMES = {"epochs_run": "epochs"}  # a top-level metric's name in the run record, where it differs (the
# table's column is not called epochs: that is the --epochs flag's column when runs differ in it)
OUTPUTS = ("out", "plot", "json")

# What --plot can draw (--metric): columns of a run's history CSV, with short aliases. One figure per metric.
# val_*: the weights the run's --best_on counts (the EMA ones under --best_on ema); ema_val_*, raw_val_*: one set.
_VAL = ("val_acc", "val_loss", "val_f1_macro", "val_rmse", "val_rmse_valence", "val_rmse_arousal",
        "val_ccc_valence", "val_ccc_arousal")
CURVES = (*_VAL, *(f"ema_{k}" for k in _VAL), *(f"raw_{k}" for k in _VAL), "train_loss", "train_acc", "lr",
          "img_per_s", "time_s")
CURVE_ALIASES = {"val_f1": "val_f1_macro", "ema_val_f1": "ema_val_f1_macro", "raw_val_f1": "raw_val_f1_macro"}


def get_args(argv=None, description=None):
    p = ArgumentParser(description=description)
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="run records (*_run.json), checkpoints (.pth), or folders searched for *_run.json")
    p.add_argument("--sort", default="val_acc", choices=["name", *METRICS],
                   help="order of the rows (metrics best first; wall time shortest first)")
    p.add_argument("--out", metavar="FILE", help="also write the table as .csv or .md")
    p.add_argument("--plot", metavar="FILE.png",
                   help="the curves of --metric per epoch: one line per row of the table (replicate seeds as "
                        "their mean with a min-max band), labelled by the flags that differ; with several "
                        "metrics one figure each, FILE_<metric>.png")
    p.add_argument("--metric", nargs="+", default=["val_acc"], metavar="NAME",
                   help=f"what --plot draws, one figure each: {', '.join(CURVES)} (val_f1: val_f1_macro). val_*: the "
                        f"weights each run's --best_on counts; ema_val_*, raw_val_*: those weights only")
    g = p.add_argument_group("paired comparison of two prediction files (eval_resnet50.py --save_predictions)")
    g.add_argument("--predictions", nargs=2, metavar=("A.csv", "B.csv"),
                   help="compare two models on the same images: each metric, B - A with its bootstrap interval, "
                        "McNemar's test for accuracy")
    add_bootstrap_argument(g)
    g.add_argument("--seed", type=nonneg_int, default=0, help="seed of the bootstrap resamples")
    g.add_argument("--json", metavar="FILE", help="also write the paired comparison as JSON")
    add_quiet_argument(p)
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
    args.metric = list(dict.fromkeys(CURVE_ALIASES.get(m, m) for m in args.metric))
    unknown = [m for m in args.metric if m not in CURVES]
    if unknown:
        p.error(f"--metric {unknown[0]}: not a curve of the history; one of {', '.join(CURVES)}")
    if args.metric != ["val_acc"] and not args.plot:
        p.error("--metric chooses what --plot draws: give --plot FILE.png too")
    if args.json and not args.predictions:
        p.error("--json belongs to --predictions; the run table is written with --out")
    if args.predictions and all(Path(q).exists() for q in args.predictions) and \
            os.path.samefile(*args.predictions):  # trust rule 5: a model compared with itself differs by 0
        p.error(f"--predictions: {args.predictions[0]} and {args.predictions[1]} are the same file; give two models' "
                f"predictions")
    check_paths(args)
    return args


def plot_paths(plot, metrics):
    """{metric: file} of --plot: the file itself for one metric, FILE_<metric>.png beside it for several."""
    if len(metrics) == 1:
        return {metrics[0]: plot}
    p = Path(plot)
    return {m: str(p.with_name(f"{p.stem}_{m}{p.suffix}")) for m in metrics}


def outputs(args):
    """(flag, path) of every output asked for (--plot once per figure)."""
    out = []
    for f in OUTPUTS:
        if f == "plot" and args.plot:
            out += [("--plot", path) for path in plot_paths(args.plot, args.metric).values()]
        elif getattr(args, f):
            out.append((f"--{f}", getattr(args, f)))
    return out


def check_paths(args):
    """Outputs can be written, are none of the inputs and are three different files."""
    inputs = [("PATH", p) for p in args.paths] + [("--predictions", p) for p in args.predictions or []]
    for flag, path in outputs(args):
        check_output(path, flag)
    # trust rule 2 (with check_not_inputs: three different files, none an input): never onto a run record,
    # checkpoint or index
    check_outputs(outputs(args), inputs)
