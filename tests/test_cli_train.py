"""Training's flags compose: <stem>_config.yaml holds the flags a run was given, so --config FILE --flag x
is the original command plus --flag x, with the defaults that depend on other flags decided afterwards
(fer.cli.train.resolve); every on/off flag can be switched off again. Torch-free and fast."""
import argparse
import os

import pytest
import yaml

import fer.cli.train as TF
from fer.cli.config import NOT_CONFIG, write_config

ORIGINAL = ["--train_meta", "t.parquet", "--val_meta", "v.parquet", "--arch", "resnet18", "--img_size", "32",
            "--lr", "0.01", "--epochs", "4"]
# (flags of the original run, a flag added on top of its config): one case (or more) per dependent default.
DEPENDENT = [
    ([], ["--ema", "0.9"]),  # --best_on: ema with --ema (the old config kept the stored raw)
    (["--ema", "0.9"], ["--best_on", "raw"]),
    ([], ["--no_pretrained"]),  # --freeze_epochs 0 / --unfreeze_all_at 1 from random weights (the stored 3 stayed)
    (["--no_pretrained"], ["--pretrained"]),  # back to staged freezing (a stored true could not be undone)
    (["--no_pretrained"], ["--unfreeze_all_at", "3"]),  # a schedule given: nothing derived from --no_pretrained is left
    (["--no_pretrained"], ["--freeze_epochs", "2"]),
]


def resolved(args):
    return {k: v for k, v in vars(args).items() if k != "config"}


def config_of(argv, path):
    """The <stem>_config.yaml the run of argv writes (save_epoch writes it the same way)."""
    write_config(TF.get_args(argv), path)
    return str(path)


@pytest.mark.parametrize("first,added", DEPENDENT, ids=lambda x: " ".join(x) or "-")
def test_config_plus_a_flag_is_the_original_command_plus_the_flag(tmp_path, first, added):
    config = config_of(ORIGINAL + first, tmp_path / "m_config.yaml")
    composed = TF.get_args(["--config", config, *added])
    direct = TF.get_args(ORIGINAL + first + added)
    assert resolved(composed) == resolved(direct)
    assert composed.given == direct.given


def test_the_dependent_defaults(tmp_path):
    """What the cases above compare, spelled out once."""
    config = config_of(ORIGINAL, tmp_path / "m_config.yaml")
    assert TF.get_args(["--config", config]).best_on == "raw"
    assert TF.get_args(["--config", config, "--ema", "0.9"]).best_on == "ema"
    scratch = TF.get_args(["--config", config, "--no_pretrained"])
    assert (scratch.freeze_epochs, scratch.unfreeze_all_at) == (0, 1)
    config = config_of(ORIGINAL + ["--no_pretrained"], tmp_path / "s_config.yaml")
    again = TF.get_args(["--config", config, "--pretrained"])
    assert (again.no_pretrained, again.freeze_epochs, again.unfreeze_all_at) == (False, 3, None)


def test_the_config_holds_the_given_flags_only(tmp_path):
    argv = ORIGINAL + ["--batch_size", "8", "--overwrite", "--resume", "x_last.pth", "--compile", "--no_compile"]
    args = TF.get_args(argv)
    values = yaml.safe_load(open(config_of(argv, tmp_path / "m_config.yaml")))
    # --batch_size 8 is the default, --compile was switched off again, --overwrite / --resume say how it runs
    assert values == args.given == {"train_meta": [os.path.abspath("t.parquet")],
                                    "val_meta": [os.path.abspath("v.parquet")], "img_size": 32,
                                    "arch": "resnet18", "epochs": 4, "lr": 0.01}
    assert "given" not in vars(args)  # the resolved flags (run record, checkpoint) stay as they were
    assert args.best_on == "raw" and args.freeze_epochs == 3 and args.overwrite and args.resume == "x_last.pth"
    assert not set(values) & set(NOT_CONFIG)


def test_the_command_line_wins_over_the_config(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"lr": 0.5, "ema": 0.9, "no_pretrained": True, "balanced_sampling": True}))
    args = TF.get_args(["--config", str(config), "--lr", "0.25", "--no_balanced_sampling", "--pretrained"])
    assert (args.lr, args.balanced_sampling, args.no_pretrained, args.best_on) == (0.25, False, False, "ema")
    assert args.given == {"lr": 0.25, "ema": 0.9}  # switched back to the defaults: nothing to keep


def test_every_on_off_flag_can_be_switched_off(tmp_path):
    switches = [a for a in TF.flags_of(TF.parser()) if a.nargs == 0]
    assert {a.dest for a in switches} == {"balanced_sampling", "keep_class_weights", "no_pretrained", "compile",
                                          "deterministic", "overwrite"}
    help_text = TF.parser().format_help()
    for action in switches:
        assert isinstance(action, argparse.BooleanOptionalAction) and action.default is False
        on, off = action.option_strings
        assert off == ("--pretrained" if on == "--no_pretrained" else f"--no_{on[2:]}") and off in help_text
        assert getattr(TF.get_args([on]), action.dest) is True
        assert getattr(TF.get_args([on, off]), action.dest) is False
        assert getattr(TF.get_args([off, on]), action.dest) is True  # the last one wins
        config = tmp_path / f"{action.dest}.yaml"
        config.write_text(f"{action.dest}: true\n")
        undone = TF.get_args(["--config", str(config), off])
        assert getattr(undone, action.dest) is False and action.dest not in undone.given


def test_an_older_config_of_resolved_values_still_loads(tmp_path):
    """Configs written before the flags composed hold every resolved value: they load, as given values."""
    args = TF.get_args(ORIGINAL)
    old = tmp_path / "old_config.yaml"
    old.write_text(yaml.safe_dump({k: v for k, v in vars(args).items() if k not in NOT_CONFIG}, sort_keys=False))
    again = TF.get_args(["--config", str(old)])
    assert resolved(again) == resolved(args)
    assert again.given["best_on"] == "raw" and again.given["freeze_epochs"] == 3  # given, as the file says
    assert TF.get_args(["--config", str(old), "--lr", "0.5"]).lr == 0.5


def test_resolve_is_the_one_place_and_changes_nothing_resolved():
    args = TF.get_args(ORIGINAL + ["--no_pretrained", "--ema", "0.5"])
    before = dict(vars(args))
    assert vars(TF.resolve(args)) == before
    # A run recorded before a flag existed: the flag at its default, resolved as the run's flags make it
    # (what a resume compares with and compare_runs.py shows).
    recorded = {k: v for k, v in before.items() if k not in ("best_on", "freeze_epochs", "unfreeze_all_at")}
    assert {k: TF.with_defaults(recorded)[k] for k in ("best_on", "freeze_epochs", "unfreeze_all_at")} == \
        {"best_on": "ema", "freeze_epochs": 0, "unfreeze_all_at": 1}
    assert TF.with_defaults({**recorded, "freeze_epochs": 5})["freeze_epochs"] == 5  # recorded values stay
