"""Training runs side by side, and two models' predictions compared image by image.

    python compare_runs.py runs/                            # every *_run.json under runs/
    python compare_runs.py runs/a runs/b/FER_resnet50.pth --sort f1_macro --out runs/table.md --plot runs/val.png
    python compare_runs.py runs/ --plot runs/curves.png --metric val_acc val_f1   # curves_val_acc.png, curves_val_f1_macro.png
    python compare_runs.py --predictions runs/a/pred.csv runs/b/pred.csv   # paired test from eval's CSVs

One row per run (best validation accuracy, macro F1, valence/arousal CCC at the best epoch, epochs,
wall time, images/s); as columns only the flags and data fingerprints that differ between runs, the
rest in one "same in all runs" line. Runs that differ only in --seed become one row: mean ± std over n.
A record that cannot be read is named and skipped. --plot draws each --metric per epoch, one figure
each: a line per row (replicate seeds as their mean with a min-max band), labelled by what differs.

The flags: fer/cli/compare.py; the work: fer/training/compare.py.
"""
from fer.cli import run_main
from fer.cli.compare import get_args


def main(argv=None):
    args = get_args(argv, __doc__)
    from fer.training.compare import compare  # the heavy imports, once the flags and paths are checked

    compare(args)


if __name__ == "__main__":
    run_main(main)
