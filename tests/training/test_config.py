"""fer/cli/train.py and fer/cli/config.py: training's flags and their checks before any work.
<stem>_config.yaml holds the flags a run was given, so --config FILE --flag x is the original command plus
--flag x, with the defaults that depend on other flags decided afterwards (fer.cli.train.resolve); every
on/off flag can be switched off again.

The hostile cases (from the trust passes) each failed on the code before their fix: they check the exit
code, the one line that names the file or flag (no traceback), and that earlier outputs are unchanged.
"""
import argparse
import json
import os
import shutil

import pytest
import torch
import yaml
from builders import TRAIN, one_error_line, run_here, tiny_args, unfinished_copy

import fer.cli.train as TF
from fer.cli.config import NOT_CONFIG, write_config

ORIGINAL = ["--train_meta", "t.parquet", "--val_meta", "v.parquet", "--arch", "resnet18", "--img_size", "32",
            "--lr", "0.01", "--epochs", "4"]
# (flags of the original run, a flag added on top of its config): one case (or more) per dependent default.
DEPENDENT = [
    ([], ["--ema", "0.9"]),  # --best_on: ema with --ema (the old config kept the stored raw)
    (["--ema", "0.9"], ["--best_on", "raw"]),
    (["--ema", "0.9"], ["--ema", "0"]),  # averaging undone: best_on back to raw (a stored --ema could not be undone)
    ([], ["--no_pretrained"]),  # --freeze_epochs 0 / --unfreeze_all_at 1 from random weights (the stored 3 stayed)
    (["--no_pretrained"], ["--pretrained"]),  # back to staged freezing (a stored true could not be undone)
    (["--no_pretrained"], ["--unfreeze_all_at", "3"]),  # a schedule given: nothing derived from --no_pretrained is left
    (["--no_pretrained"], ["--freeze_epochs", "2"]),
    ([], ["--arch", "resnet34"]),  # --save_path FER_<arch>.pth (issue 26: names from the architecture)
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
    config = config_of(ORIGINAL + ["--ema", "0.9"], tmp_path / "e_config.yaml")
    off = TF.get_args(["--config", config, "--ema", "0"])
    assert (off.ema, off.best_on) == (None, "raw")
    scratch = TF.get_args(["--config", config, "--no_pretrained"])
    assert (scratch.freeze_epochs, scratch.unfreeze_all_at) == (0, 1)
    config = config_of(ORIGINAL + ["--no_pretrained"], tmp_path / "s_config.yaml")
    again = TF.get_args(["--config", config, "--pretrained"])
    assert (again.no_pretrained, again.freeze_epochs, again.unfreeze_all_at) == (False, 3, None)


def test_default_names_come_from_the_architecture(tmp_path):
    """Issue 26: the default checkpoint is FER_<arch>.pth, decided after the config (not given, not stored)."""
    assert TF.get_args([]).save_path == "FER_resnet50.pth"
    args = TF.get_args(["--arch", "convnext_tiny"])
    assert args.save_path == "FER_convnext_tiny.pth" and "save_path" not in args.given
    config = config_of(["--arch", "convnext_tiny"], tmp_path / "c_config.yaml")
    assert TF.get_args(["--config", config, "--arch", "resnet18"]).save_path == "FER_resnet18.pth"
    assert TF.get_args(["--arch", "resnet18", "--save_path", "x.pth"]).save_path == "x.pth"


def test_a_runs_config_without_save_path_says_to_give_one(trained, tmp_path):
    """Issue 26: --config X_config.yaml alone names X's own files: the message asks for a new --save_path."""
    config = trained.with_name(trained.stem + "_config.yaml")
    r = run_here("train_vggface2_resnet50.py", "--config", config)
    one_error_line(r, f"--config {config}", "give a new --save_path", "--resume", code=1)


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
                                          "deterministic", "overwrite", "asam", "quiet", "allow_outside_root"}
    help_text = TF.parser().format_help()
    needs = {"asam": ["--sam", "0.5"]}  # a switch that means something only with another flag
    for action in switches:
        assert isinstance(action, argparse.BooleanOptionalAction) and action.default is False
        on, off = action.option_strings
        assert off == ("--pretrained" if on == "--no_pretrained" else f"--no_{on[2:]}") and off in help_text
        more = needs.get(action.dest, [])
        assert getattr(TF.get_args([*more, on]), action.dest) is True
        assert getattr(TF.get_args([*more, on, off]), action.dest) is False
        assert getattr(TF.get_args([*more, off, on]), action.dest) is True  # the last one wins
        if action.dest == "overwrite":  # never read from a file (trust rule 3; test_rule3_... below)
            continue
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


# --- knobs --------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags,message", [
    (["--arch", "resnet18", "--layer_decay", "0.7"], "--layer_decay is for"),
    (["--arch", "vit_b_16", "--img_size", "40"], "multiple of 16"),
    (["--best_on", "ema"], "--best_on ema needs --ema"),
    (["--arch", "convnext_tiny", "--vggface2_ckpt", "x.pth"], "--vggface2_ckpt is for the ResNets"),
    (["--weights", "x.pth", "--no_pretrained"], "--weights gives the backbone weights"),
    (["--ema", "1"], "--ema"),
    (["--warmup_epochs", "3", "--epochs", "3"], "leaves no epoch"),
    (["--arch", "vgg16"], "--arch"),
    (["--lr", "0"], "--lr: 0 must be > 0"),  # issue 26: a rate that trains nothing
])
def test_bad_knobs_one_line(demo, tmp_path, flags, message):
    r = run_here("train_vggface2_resnet50.py", *tiny_args(demo, tmp_path, *flags))
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


# --- a run's config, run again --------------------------------------------------------------------
@pytest.mark.slow
def test_config_rerun_is_bit_identical(runs, tmp_path):
    config = runs / "lr_b" / "m_config.yaml"
    values = yaml.safe_load(config.read_text())
    assert values["lr"] == 1e-2 and "resume" not in values and "overwrite" not in values
    r = run_here("train_vggface2_resnet50.py", "--config", config, "--save_path", tmp_path / "again.pth")
    assert r.returncode == 0, r.stderr
    a = torch.load(runs / "lr_b" / "m_last.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "again_last.pth", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    again = yaml.safe_load((tmp_path / "again_config.yaml").read_text())
    assert again == {**values, "save_path": str(tmp_path / "again.pth")}
    assert json.loads((tmp_path / "again_run.json").read_text())["args"]["config"] == str(config)


# --- five tiny runs: two that differ in --lr, three that differ only in --seed -------------------------
@pytest.mark.slow
def test_a_flag_over_a_runs_config_acts_as_if_added_to_its_command(runs, tmp_path):
    """--config <stem>_config.yaml --ema 0.9 kept the config's resolved best_on: raw (the config held every
    resolved value); it is now the original command plus --ema 0.9: the averaged weights pick the best."""
    config = runs / "lr_b" / "m_config.yaml"
    values = yaml.safe_load(config.read_text())
    assert "best_on" not in values and "freeze_epochs" not in values  # the flags given, nothing resolved
    r = run_here("train_vggface2_resnet50.py", "--config", config, "--ema", 0.9, "--save_path", tmp_path / "ema.pth")
    assert r.returncode == 0, r.stderr
    assert "best validation accuracy (EMA weights, --best_on ema)" in r.stdout
    record = json.loads((tmp_path / "ema_run.json").read_text())
    assert record["args"]["best_on"] == "ema" and record["args"]["freeze_epochs"] == 0  # resolved, for reading
    assert record["given"] == yaml.safe_load((tmp_path / "ema_config.yaml").read_text()) == \
        {**values, "ema": 0.9, "save_path": str(tmp_path / "ema.pth")}
    assert torch.load(tmp_path / "ema.pth", weights_only=True)["args"]["best_on"] == "ema"


@pytest.mark.parametrize("text,message", [
    ("lrr: 0.1", "unknown key 'lrr' (did you mean lr?)"),
    ("lr: 20", "lr: 20 must be <= 10"),
    ("epochs: 2.5", "epochs: '2.5' is not an integer"),
    ("epochs: [1, 2]", "epochs: expected int, got [1, 2]"),
    ("arch: vgg", "arch: 'vgg' is not one of"),
    ("no_pretrained: 1", "no_pretrained: expected true or false"),
    ("batch_size: null", "batch_size: must have a value"),
    ("- lr", "expected flag name -> value pairs"),
    ("lr: [1", "not valid YAML"),
])
def test_config_errors_name_the_key(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    r = run_here("train_vggface2_resnet50.py", "--config", path)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_config_json_and_command_line_override(tmp_path):
    import fer.cli.train as T

    path = tmp_path / "c.json"
    path.write_text(json.dumps({"lr": 0.5, "epochs": 7, "train_meta": ["x.parquet"], "compile": True}))
    args = T.get_args(["--config", str(path), "--lr", "0.25"])
    assert (args.lr, args.epochs, args.compile) == (0.25, 7, True) and args.train_meta[0].endswith("x.parquet")
    path.write_text("{")
    assert "not valid JSON" in run_here("train_vggface2_resnet50.py", "--config", path).stderr
    upper = tmp_path / "C.JSON"  # read as JSON, and so named in the message
    upper.write_text("{")
    assert "not valid JSON" in run_here("train_vggface2_resnet50.py", "--config", upper).stderr
    path.write_bytes(b"\xff\xfe\x00binary")
    assert "not a readable text file" in run_here("train_vggface2_resnet50.py", "--config", path).stderr
    assert "not a regular file" in run_here("train_vggface2_resnet50.py", "--config", tmp_path).stderr


# --- 5. bad paths and flags fail in the first second --------------------------------------------
@pytest.mark.parametrize("flag,value,needle", [
    ("--batch_size", 0, "--batch_size: 0 must be >= 1"), ("--lr", -1, "--lr"), ("--lr", "nan", "not finite"),
    ("--weight_decay", -0.1, "--weight_decay"), ("--img_size", 16, "--img_size"), ("--epochs", "2.5", "--epochs"),
    ("--num_workers", -1, "--num_workers"), ("--prefetch_factor", 0, "--prefetch_factor"),
    ("--device", "tpu", "--device tpu"), ("--device", "cuda:7", "--device cuda:7"),
])
def test_training_flags_are_checked_first(demo, tmp_path, flag, value, needle):
    if flag == "--device" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = run_here(TRAIN, *tiny_args(demo, tmp_path, flag, value))
    one_error_line(r, needle)
    assert list(tmp_path.iterdir()) == [] and "epoch" not in r.stdout


# --- tracebacks and unclear errors --------------------------------------------------------------
def test_training_checks_its_paths_before_the_heavy_imports(tmp_path):
    """A missing index or an earlier run at --save_path is said in the first second, not after torch loads."""
    import subprocess
    import sys

    from builders import ROOT
    r = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "train_vggface2_resnet50.py"), "--train_meta",
                        str(tmp_path / "missing.parquet")], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    errors = [ln for ln in r.stderr.splitlines() if not ln.startswith("import time:")]
    assert r.returncode == 1 and errors == [f"error: --train_meta {tmp_path / 'missing.parquet'}: file not found"]
    imported = [ln.rsplit("|", 1)[-1].strip() for ln in r.stderr.splitlines() if ln.startswith("import time:")]
    assert imported and not [m for m in imported if m.split(".")[0] in ("torch", "cv2", "albumentations", "pandas")]


# --- found by the hostile pass over training ------------------------------------------------------
def test_tensorboard_folder_onto_an_output_is_refused_up_front(demo, tmp_path):
    """--tensorboard onto the checkpoint's own name: the event folder took that name at the first epoch,
    then renaming the checkpoint onto it ended in a traceback, leaving the run record and config alone."""
    for tb in (tmp_path / "m.pth", tmp_path / "m_run.json" / "x"):
        r = run_here(TRAIN, *tiny_args(demo, tmp_path, "--epochs", 1, "--tensorboard", tb))
        one_error_line(r, "--tensorboard", tb, "is the output")
        assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_resume_with_the_runs_own_config(demo, trained, tmp_path):
    """--config <stem>_config.yaml --resume <stem>_last.pth (the natural way to give a resume the run's
    flags) was refused: the config is one of the outputs. A fresh run onto its config still is."""
    last = unfinished_copy(trained, tmp_path / "src")
    config = tmp_path / "src" / "FER_resnet18_config.yaml"
    shutil.copy(trained.with_name(config.name), config)
    args = tiny_args(demo, tmp_path, "--epochs", 2, "--save_path", tmp_path / "src" / trained.name, "--config", config)
    r = run_here(TRAIN, *args, "--resume", last)
    assert r.returncode == 0 and "epoch 2/2" in r.stdout, r.stderr
    one_error_line(run_here(TRAIN, *args, "--overwrite"), "is the input --config")


def test_huge_seed_is_a_flag_error(demo, tmp_path):
    """--seed 2e13: seed x 1000003 overflowed torch.manual_seed, a ValueError traceback after the data loaded."""
    r = run_here(TRAIN, *tiny_args(demo, tmp_path, "--epochs", 1, "--seed", 2 * 10**13))
    assert r.returncode == 2 and "--seed" in one_error_line(r, "4294967295")


# --- recipe options and presets (issue 28) -------------------------------------------------------
RECIPE_FLAGS = {"balanced_sampling": False, "sampling_weights": None, "label_smoothing": 0.1, "sam": 0.0,
                "asam": False, "recipe": None}


def test_the_recipe_options_are_off_by_default_and_checked_first():
    args = TF.get_args(ORIGINAL)
    assert {k: getattr(args, k) for k in RECIPE_FLAGS} == RECIPE_FLAGS  # label smoothing: the kit's 0.1, as always
    sqrt = TF.get_args(ORIGINAL + ["--balanced_sampling", "--sampling_weights", "sqrt", "--sam", "0.5", "--asam",
                                   "--label_smoothing", "0"])
    assert (sqrt.sampling_weights, sqrt.sam, sqrt.asam, sqrt.label_smoothing) == ("sqrt", 0.5, True, 0.0)
    assert TF.get_args(ORIGINAL + ["--balanced_sampling"]).sampling_weights == "inverse"  # resolved
    help_text = TF.parser().format_help()
    for flag in ("--sampling_weights", "--label_smoothing", "--sam", "--asam", "--no_asam", "--recipe"):
        assert flag in help_text


@pytest.mark.parametrize("flags,message", [
    (["--asam"], "--asam needs --sam"),
    (["--sampling_weights", "sqrt"], "--sampling_weights sqrt needs --balanced_sampling"),
    (["--label_smoothing", "1"], "--label_smoothing: 1 must be < 1"),
    (["--sam", "-0.1"], "--sam: -0.1 must be >= 0"),
    (["--recipe", "nope"], "--recipe: invalid choice: 'nope'"),
])
def test_recipe_option_mistakes_are_one_line_before_torch(tmp_path, flags, message):
    r = run_here("train_vggface2_resnet50.py", "--train_meta", tmp_path / "none.parquet", *flags)
    one_error_line(r, message, code=2)


def test_a_recipe_is_a_layer_between_the_defaults_and_the_config(tmp_path):
    """defaults < recipe < --config < command line; the recipe's values are resolved values, not given ones."""
    preset = yaml.safe_load((TF.Path(__file__).resolve().parents[2] / "recipes" / "affectnet8.yaml").read_text())
    args = TF.get_args(ORIGINAL + ["--recipe", "affectnet8"])
    assert {k: getattr(args, k) for k in preset} == preset and args.given["recipe"] == "affectnet8"
    assert not set(preset) & set(args.given)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"recipe": "affectnet8", "sam": 0.1, "lr": 0.5}))
    layered = TF.get_args(["--config", str(config), "--lr", "0.25", "--no_balanced_sampling"])
    assert (layered.sam, layered.lr, layered.balanced_sampling, layered.sampling_weights) == (0.1, 0.25, False, None)
    assert layered.given == {"recipe": "affectnet8", "sam": 0.1, "lr": 0.25, "balanced_sampling": False}
    # a value equal to the default still counts as given when it undoes the recipe's
    assert TF.get_args(["--recipe", "affectnet8", "--sam", "0"]).given == {"recipe": "affectnet8", "sam": 0.0}


@pytest.mark.parametrize("added", [[], ["--sam", "0"], ["--no_balanced_sampling"], ["--label_smoothing", "0.2"],
                                   ["--recipe", "affectnet8"]], ids=lambda x: " ".join(x) or "-")
def test_a_recipe_runs_config_plus_a_flag_is_the_original_command_plus_the_flag(tmp_path, added):
    first = ORIGINAL + ["--recipe", "affectnet8", "--lr", "0.001"]
    config = config_of(first, tmp_path / "m_config.yaml")
    composed = TF.get_args(["--config", config, *added])
    direct = TF.get_args(first + added)
    assert resolved(composed) == resolved(direct) and composed.given == direct.given


def test_a_recipe_that_sets_what_a_recipe_cannot_is_refused(tmp_path, monkeypatch):
    import fer.cli.config as C

    monkeypatch.setattr(C, "RECIPES", tmp_path)
    (tmp_path / "bad.yaml").write_text("resume: x_last.pth\n")
    (tmp_path / "typo.yaml").write_text("sam: lots\n")
    for name, needle in (("bad", "sets 'resume', which is not a flag a recipe can set"), ("typo", "sam")):
        with pytest.raises(SystemExit) as e:
            TF.get_args(["--recipe", name])
        assert e.value.code == 2, needle
# --- trust rules 3 and 6 (issue 25) for --config ------------------------------------------------------
def test_rule3_overwrite_is_never_read_from_a_config_and_tensorboard_dir_is_not_inherited(tmp_path, capsys):
    from fer.cli.train import get_args

    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 2\noverwrite: true\n")
    with pytest.raises(SystemExit):
        get_args(["--config", str(cfg)])
    assert "overwrite is not read from a file" in capsys.readouterr().err
    cfg.write_text(f"epochs: 2\ntensorboard: {tmp_path / 'first_tb'}\n")
    args = get_args(["--config", str(cfg), "--save_path", str(tmp_path / "b.pth")])
    assert args.tensorboard == "" and "beside its own checkpoint" in capsys.readouterr().err
    assert get_args(["--config", str(cfg), "--tensorboard", str(tmp_path / "tb")]).tensorboard == str(tmp_path / "tb")


@pytest.mark.parametrize("text,needle", [
    ("lr: 0.1\nlr: 0.2\n", "given twice"),
    ('{"lr": 0.1, "lr": 0.2}', "given twice"),
    ("a: &a [1,1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
     "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n",
     "expands to more than"),
    ("fifo", "not a regular file"),
])
def test_rule6_hostile_config_files_are_one_line_quickly(tmp_path, capsys, text, needle):
    import time

    from fer.cli.train import get_args

    cfg = tmp_path / ("c.json" if text.startswith("{") else "c.yaml")
    if text == "fifo":
        os.mkfifo(cfg)
    else:
        cfg.write_text(text)
    t0 = time.time()
    with pytest.raises(SystemExit):
        get_args(["--config", str(cfg)])
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1 and time.time() - t0 < 5
