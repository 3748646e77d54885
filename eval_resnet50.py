"""Evaluate a checkpoint on an indexed split: the metrics FER papers report, and pictures.

    python eval_resnet50.py --checkpoint FER_resnet50.pth --meta metadata_val.parquet --out_dir .

Writes <out_dir>/metrics_<arch>.json, ConfusionMatrix_<arch>.png, ValenceArousal_<arch>.png,
report_<arch>.html (<arch>: the architecture the checkpoint records; one self-contained page: metrics, per-class table, confusion matrix linked to
galleries of its images, confident mistakes, calibration; see FER_report.py), and with
--save_predictions FILE.csv one row per image with every value that was scored.
Every metric has a 95 % bootstrap interval over the images (--bootstrap). Two checkpoints compare on
the same images: --checkpoint A.pth B.pth writes comparison_<arch>.json (each metric of both, B - A
with its paired interval, McNemar's test for accuracy). Metric definitions are in the README.

An out_dir holds one evaluation: if it holds an earlier one, evaluation refuses to start unless
--overwrite, which replaces the whole set (earlier files this run does not write are removed), so
a folder never mixes two evaluations.
"""
from fer.cli import run_main
from fer.cli.evaluate import get_args


def main(argv=None):
    args = get_args(argv, __doc__)
    from fer.evaluation.evaluate import run_evaluation  # the heavy imports, once the flags and paths are checked

    run_evaluation(args)


if __name__ == "__main__":
    run_main(main)
