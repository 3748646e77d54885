"""A hyperparameter search over training runs, with Optuna (TPE, a pruner fed by each epoch's validation).

    python sweep.py --config runs/a/FER_resnet50_config.yaml --space space.yaml --out runs/sweep --trials 40
    python sweep.py ... --storage postgresql://fer@dbhost/fer     # on every machine: workers share one study

--config: the base run (any training config, e.g. the <stem>_config.yaml a run writes); every trial is that
run with the flags of --space drawn anew:

    lr: {low: 1.0e-4, high: 1.0e-2, log: true}         # a range (an integer one for integer flags)
    arch: {choices: [resnet18, resnet34]}              # choices (null: the flag at its default)
    freeze_epochs: {choices: [0, 1], when: {arch: resnet34}}   # only drawn when arch is resnet34

Each trial is an ordinary run in SWEEP_DIR/trial_NNNN/ (checkpoint, history, run record with the sweep's
verdict: complete / pruned / failed): compare_runs.py SWEEP_DIR tabulates them. The study is kept in
SWEEP_DIR/study.db (SQLite) or in the --storage database: the same command again continues it up to
--trials; a trial whose worker died is marked failed and replaced. At the end (and on Ctrl-C): the best
trial, SWEEP_DIR/sweep.html with sweep.png (optimisation history, parameter importance) and runs_table.md.

The flags: fer/cli/sweep.py; the work: fer/training/sweep.py.
"""
from fer.cli import run_main
from fer.cli.sweep import get_args


def main(argv=None):
    args = get_args(argv, __doc__)
    from fer.training.sweep import sweep  # Optuna and torch, once the flags, space and paths are checked

    return sweep(args)


if __name__ == "__main__":
    run_main(main)
