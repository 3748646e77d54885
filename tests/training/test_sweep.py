"""fer/cli/sweep.py and fer/training/sweep.py (sweep.py): the search-space file and its one-line mistakes,
the storage URL, the flags a trial runs with, a real sweep (trials as run folders, pruned trials recorded,
a rerun continuing the study), a dead worker's trial marked failed, and two workers on one PostgreSQL study.
"""
import getpass
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import yaml
from builders import ROOT, one_error_line, run_here

import fer.cli.sweep as CS
import fer.training.sweep as S
from fer.cli.sweep import SweepError, read_space, redacted, storage_url

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def write_yaml(path, data):
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def base_config(demo, path, **extra):
    """A training config for seconds-long trials on the demo fixture."""
    flags = {"train_meta": [str(demo["train"])], "val_meta": [str(demo["val"])]}
    flags.update({"arch": "resnet18", "img_size": 32, "batch_size": 8, "no_pretrained": True, "num_workers": 0,
                  "epochs": 2, "steps_per_epoch": 2, **extra})
    return write_yaml(path, flags)


SPACE = {"lr": {"low": 1e-4, "high": 1e-2, "log": True},
         "epochs": {"low": 2, "high": 4},
         "mixup": {"choices": [None, 0.2]},
         "cutmix": {"choices": [0.5, 1.0], "when": {"mixup": 0.2}},
         "ema": {"choices": [None, 0.9]},
         "best_on": {"choices": ["raw", "ema"], "when": {"ema": [0.9]}},
         "compile": {"choices": [False]}}


# --- the search space (fast) ------------------------------------------------------------------------
def test_search_space_is_read_in_order_with_types_and_conditions(tmp_path):
    params = read_space(write_yaml(tmp_path / "space.yaml", SPACE))
    assert [p.name for p in params] == list(SPACE)
    lr, epochs, mixup, cutmix, ema, best_on, _ = params
    assert (lr.low, lr.high, lr.log, lr.integer) == (1e-4, 1e-2, True, False)
    assert (epochs.low, epochs.high, epochs.integer) == (2, 4, True)  # --epochs takes integers
    assert mixup.choices == [None, 0.2] and cutmix.when == {"mixup": [0.2]} and best_on.when == {"ema": [0.9]}
    assert cutmix.active({"mixup": 0.2}) and not cutmix.active({"mixup": None}) and not cutmix.active({})
    # 1e-4 without a dot is text to PyYAML: still a number here
    (tmp_path / "text.yaml").write_text("lr: {low: 1e-4, high: 1e-2, log: true}\n")
    assert read_space(tmp_path / "text.yaml")[0].low == 1e-4
    (tmp_path / "broken.yaml").write_text("lr: {low: 1\n")
    with pytest.raises(SweepError, match=f"--space {tmp_path / 'broken.yaml'}: not valid YAML"):
        read_space(tmp_path / "broken.yaml")


@pytest.mark.parametrize("space, needles", [
    ({"lrr": {"low": 0.1, "high": 1}}, ["lrr: not a training flag", "did you mean lr?"]),
    ({"save_path": {"choices": ["a.pth"]}}, ["save_path: set by the sweep itself"]),
    ({"lr": {"low": 1e-3, "high": 1e-2, "choices": [1e-3]}}, ["either choices or low/high"]),
    ({"weight_decay": {"low": 0, "high": 1e-2, "log": True}}, ["log-scale range needs low > 0"]),
    ({"lr": {"low": 1e-3, "high": 20}}, ["lr: 20.0 must be <= 10"]),  # the flag's own range
    ({"lr": {"low": 1e-2, "high": 1e-3}}, ["low 0.01 must be below high 0.001"]),
    ({"epochs": {"low": 1.5, "high": 3}}, ["takes integers"]),
    ({"arch": {"choices": ["resnet18", "resnet999"]}}, ["arch: 'resnet999' is not one of"]),
    ({"arch": {"low": 1, "high": 2}}, ["arch: not a numeric flag: give choices"]),
    ({"ema": {"choices": [None, 0.9]}, "mixup": {"choices": [0.2], "when": {"lr": 0.1}}},
     ["mixup: when names lr, which must be a flag with choices earlier"]),
    ({"ema": {"choices": [None, 0.9]}, "best_on": {"choices": ["ema"], "when": {"ema": 0.5}}},
     ["best_on: when ema: 0.5 is not one of its choices"]),
    ({"compile": {"choices": [None, True]}}, ["on/off flag's choices are true and false"]),
    ({"lr": {"low": 1e-3, "high": 1e-2, "scale": "log"}}, ["unknown key 'scale'"]),
    ({"lr": [1e-3, 1e-2]}, ["expected {low: A, high: B} or {choices: [...]}"]),
    ({}, ["no flag to search"]),
])
def test_search_space_mistakes_are_one_line(tmp_path, space, needles):
    path = write_yaml(tmp_path / "space.yaml", space)
    with pytest.raises(SweepError) as e:
        read_space(path)
    assert f"--space {path}" in str(e.value) and "\n" not in str(e.value)
    for needle in needles:
        assert needle in str(e.value)


def test_storage_is_sqlite_in_the_sweep_folder_unless_a_url_is_given(tmp_path):
    assert storage_url(None, tmp_path / "sw") == f"sqlite:///{(tmp_path / 'sw').resolve() / 'study.db'}"
    assert storage_url("postgresql://fer@db.lab/sweeps", None) == "postgresql+psycopg://fer@db.lab/sweeps"
    assert storage_url("sqlite:////data/s.db", None) == "sqlite:////data/s.db"
    with pytest.raises(SweepError, match="expected a database URL"):
        storage_url("/data/s.db", None)
    assert redacted("postgresql://fer:secret@db:5432/s") == "postgresql://fer:***@db:5432/s"
    assert redacted("postgresql://fer@/s?host=/tmp/x") == "postgresql://fer@/s?host=/tmp/x"


def test_sweep_flag_mistakes_are_one_line_before_any_work(demo, tmp_path):
    base = base_config(demo, tmp_path / "base.yaml")
    space = write_yaml(tmp_path / "space.yaml", {"lr": {"low": 1e-4, "high": 1e-2, "log": True}})
    cases = [(["--space", space, "--out", tmp_path / "o"], "--config"),  # required
             (["--config", tmp_path / "none.yaml", "--space", space, "--out", tmp_path / "o"], "none.yaml: file not found"),
             (["--config", base, "--space", space, "--out", tmp_path / "o", "--metric", "acc"], "--metric"),
             (["--config", base, "--space", space, "--out", tmp_path / "o", "--storage", "db.sqlite"], "database URL"),
             (["--config", write_yaml(tmp_path / "bad.yaml", {"lr": 99}), "--space", space, "--out", tmp_path / "o"],
              "lr: 99 must be <= 10")]
    for argv, needle in cases:
        one_error_line(run_here("sweep.py", *argv), needle, code=2)
    assert not (tmp_path / "o").exists()


def test_a_trial_runs_the_base_config_with_the_drawn_flags(demo, tmp_path):
    base = CS.base_run(CS.parser(), str(base_config(demo, tmp_path / "base.yaml", ema=0.5, tensorboard="")))
    params = read_space(write_yaml(tmp_path / "space.yaml", SPACE))
    drawn = S.suggest(optuna.trial.FixedTrial({"lr": 0.003, "epochs": 3, "mixup": None, "ema": None, "compile": False}),
                      params)
    assert drawn == {"lr": 0.003, "epochs": 3, "mixup": None, "ema": None, "compile": False}  # no cutmix, no best_on
    flags = S.trial_flags(base, drawn)
    assert "ema" not in flags and "mixup" not in flags and flags["lr"] == 0.003 and flags["tensorboard"] == ""
    args, argv = S.trial_run(tmp_path / "trial_0000", flags, base)
    assert argv[:2] == ["--config", str(tmp_path / "trial_0000" / "trial.yaml")]
    assert args.lr == 0.003 and args.epochs == 3 and args.ema is None and args.best_on == "raw"
    assert args.save_path == str(tmp_path / "trial_0000" / "FER_resnet18.pth") and args.img_size == 32
    assert S.flag_text({"lr": 0.0031234, "mixup": None, "compile": False, "arch": "resnet18"}) == \
        "--lr 0.003123 --mixup (default) --no_compile --arch resnet18"
    # a combination training refuses: one line, and the trial fails, not the sweep
    with pytest.raises(SweepError, match="the drawn flags are refused: .*warmup_epochs 5"):
        S.trial_run(tmp_path / "trial_0001", {**flags, "warmup_epochs": 5}, base)


def test_objective_follows_best_on_and_the_direction():
    row = {"val_acc": 0.5, "ema_val_acc": 0.6, "val_ccc_valence": 0.2, "val_ccc_arousal": 0.4, "val_rmse": 0.3}
    assert S.epoch_value(row, "val_acc", "raw") == 0.5 and S.epoch_value(row, "val_acc", "ema") == 0.6
    assert S.epoch_value(row, "val_ccc", "raw") == pytest.approx(0.3)
    assert S.epoch_value(row, "val_f1_macro", "raw") != S.epoch_value(row, "val_f1_macro", "raw")  # NaN: absent
    assert S.better(None, 0.3, "minimize") == 0.3 and S.better(0.2, 0.3, "minimize") == 0.2
    assert S.better(0.2, 0.3, "maximize") == 0.3


def test_a_trials_value_is_the_objective_of_the_epoch_its_checkpoint_keeps():
    """With --metric val_f1_macro the value was the best F1 over the epochs, while the checkpoint in the trial's
    folder keeps the epoch of the best validation accuracy (of the --best_on weights): a number no file has."""
    rows = [{"val_acc": 0.6, "ema_val_acc": 0.5, "val_f1_macro": 0.40, "ema_val_f1_macro": 0.30},
            {"val_acc": 0.5, "ema_val_acc": 0.7, "val_f1_macro": 0.55, "ema_val_f1_macro": 0.35},
            {"val_acc": 0.6, "ema_val_acc": 0.7, "val_f1_macro": 0.50, "ema_val_f1_macro": 0.45}]
    for best_on, want in (("raw", 0.40), ("ema", 0.35)):  # the first of equal accuracies, as training keeps it
        kept = None
        for row in rows:
            kept = S.kept_epoch(kept, row, S.epoch_value(row, "val_f1_macro", best_on), best_on)
        assert kept[1] == want


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # study.ask() outside optimize(): the dead worker
def test_a_dead_workers_trial_is_marked_failed_with_its_run_record(demo, tmp_path, monkeypatch):
    """A worker killed mid-trial leaves it RUNNING; once its heartbeat is older than the grace period the
    next worker marks it failed (and its run record says so): the study goes on without it."""
    monkeypatch.setattr(S, "GRACE_S", 1)
    monkeypatch.setattr(S, "HEARTBEAT_S", 1)
    space = write_yaml(tmp_path / "space.yaml", {"lr": {"low": 1e-4, "high": 1e-2, "log": True}})
    argv = ["--config", str(base_config(demo, tmp_path / "base.yaml")), "--space", str(space), "--out",
            str(tmp_path / "sw")]
    args = CS.get_args(argv)
    study = S.open_study(args)
    trial = study.ask()
    folder = tmp_path / "sw" / "trial_0000"
    folder.mkdir(parents=True)
    trial.set_user_attr("folder", str(folder))
    (folder / "m_run.json").write_text(json.dumps({"args": {}, "best": {}}))
    study._storage.record_heartbeat(trial._trial_id)
    time.sleep(2.5)
    study = S.open_study(CS.get_args(argv))
    assert study.trials[0].state == optuna.trial.TrialState.FAIL
    record = json.loads((folder / "m_run.json").read_text())
    assert record["sweep"]["state"] == "failed" and "no heartbeat" in record["sweep"]["error"]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # study.ask() below stands for a worker's optimize
def test_a_worker_waits_for_the_last_running_trial_and_replaces_a_dead_ones(demo, tmp_path, monkeypatch, capsys):
    """The study's last trial RUNNING in a worker that was killed: a worker reaching the target counted it as
    running and ended, the study one trial short. It now waits; the dead trial is failed after the grace
    period and this worker runs one in its place."""
    monkeypatch.setattr(S, "GRACE_S", 1)
    monkeypatch.setattr(S, "HEARTBEAT_S", 1)
    monkeypatch.setattr(S, "WAIT_S", 0.2)
    space = write_yaml(tmp_path / "space.yaml", {"lr": {"low": 1e-4, "high": 1e-2, "log": True}})
    argv = ["--config", str(base_config(demo, tmp_path / "base.yaml", epochs=1)), "--space", str(space), "--out",
            str(tmp_path / "sw"), "--trials", "1"]
    study = S.open_study(CS.get_args(argv))
    dead = study.ask()  # a worker's trial, then the worker killed: its heartbeat stops
    study._storage.record_heartbeat(dead._trial_id)
    assert S.sweep(CS.get_args(argv)) == 0
    assert "sweep: waiting for 1 running trial(s)" in capsys.readouterr().out
    states = [t.state for t in S.open_study(CS.get_args(argv)).trials]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]


def test_a_failed_trial_leaves_no_resume_state(demo, tmp_path, monkeypatch):
    """A failed trial is replaced, never resumed: its <stem>_last.pth (three times the checkpoint) was kept."""
    from fer.cli.train import output_paths
    from fer.trust import FERError

    def train(run, command=None, on_epoch=None):
        output_paths(run.save_path)["last"].write_bytes(b"resume state")
        raise FERError("the loss is not finite")
    monkeypatch.setattr(S, "train", train)
    space = write_yaml(tmp_path / "space.yaml", {"lr": {"low": 1e-4, "high": 1e-2, "log": True}})
    argv = ["--config", str(base_config(demo, tmp_path / "base.yaml")), "--space", str(space), "--out",
            str(tmp_path / "sw"), "--trials", "1"]
    with pytest.raises(SweepError, match="3 trials in a row failed"):
        S.sweep(CS.get_args(argv))
    assert len(list((tmp_path / "sw").glob("trial_*"))) == 3 and not list((tmp_path / "sw").glob("trial_*/*_last.pth"))


# --- real sweeps (slow) -----------------------------------------------------------------------------
@pytest.mark.slow
def test_sweep_runs_trials_as_runs_prunes_and_continues(demo, tmp_path, monkeypatch):
    base = base_config(demo, tmp_path / "base.yaml")
    space = write_yaml(tmp_path / "space.yaml", {"lr": {"low": 1e-4, "high": 1e-2, "log": True},
                                                 "batch_size": {"choices": [4, 8]}})
    out = tmp_path / "sw"
    real = optuna.trial.Trial.should_prune
    monkeypatch.setattr(optuna.trial.Trial, "should_prune",  # trial 1 is pruned after its first epoch
                        lambda self: self.number == 1 or real(self))
    argv = ["--config", base, "--space", space, "--out", out, "--trials", 3]
    r = run_here("sweep.py", *argv)
    assert r.returncode == 0, r.stderr
    assert "sweep: trial 1 pruned at epoch 1" in r.stdout
    assert "sweep: 3/3 trials done (2 complete, 1 pruned), 0 running, 0 failed | best val_acc" in r.stdout
    for n, state in enumerate(["complete", "pruned", "complete"]):
        folder = out / f"trial_{n:04d}"
        record = json.loads((folder / "FER_resnet18_run.json").read_text())
        assert record["sweep"]["state"] == state and record["sweep"]["trial"] == n
        assert record["args"]["lr"] == record["sweep"]["params"]["lr"] and record["epochs"] == (1 if n == 1 else 2)
        assert (folder / "FER_resnet18.pth").is_file() and not (folder / "FER_resnet18_last.pth").exists()
        assert yaml.safe_load((folder / "FER_resnet18_config.yaml").read_text())["lr"] == record["args"]["lr"]
    assert json.loads((out / "trial_0001" / "FER_resnet18_run.json").read_text())["sweep"]["pruned_at_epoch"] == 1
    for name in ("sweep.html", "sweep.png", "runs_table.md", "study.db"):
        assert (out / name).stat().st_size > 0, name
    assert "trial_0001" in (out / "sweep.html").read_text() and "pruned" in (out / "sweep.html").read_text()
    table = run_here("compare_runs.py", out)
    assert table.returncode == 0 and table.stdout.count("trial_000") == 3 and "lr" in table.stdout.splitlines()[0]

    # the same command continues the study: nothing run again; a higher --trials adds trials
    before = {p: p.stat().st_mtime_ns for p in out.glob("trial_*/*.pth")}
    r = run_here("sweep.py", *argv)
    assert r.returncode == 0 and "3 trials so far, target 3" in r.stdout and "sweep: trial" not in r.stdout.replace(
        "sweep: trials", "")
    r = run_here("sweep.py", *argv[:-1], 4)
    assert r.returncode == 0, r.stderr
    assert "sweep: trial 3:" in r.stdout and "4/4 trials done" in r.stdout
    assert {p: p.stat().st_mtime_ns for p in before} == before
    # another objective on the same study is refused in one line
    one_error_line(run_here("sweep.py", *argv, "--metric", "val_rmse"), "--metric val_rmse is to minimize", code=1)
    # another study into the same folder: refused before any trial, the first study's page kept
    page = (out / "sweep.html").read_bytes()
    one_error_line(run_here("sweep.py", *argv, "--study", "other"), "holds the trials of study 'sw'", code=1)
    assert (out / "sweep.html").read_bytes() == page and not (out / "trial_0004").exists()
    # the study's database deleted: a new, empty study would start at trial 0 among the old folders
    (out / "study.db").unlink()
    one_error_line(run_here("sweep.py", *argv), "holds trial folders, but", "study.db", "missing or empty", code=1)
    assert (out / "sweep.html").read_bytes() == page and not (out / "study.db").exists()


def test_a_sweep_folder_holds_one_study(tmp_path):
    """A second study into a sweep folder failed three trials on the first one's trial_NNNN folders (training
    refused them, advising --resume/--overwrite, flags sweep.py lacks), then replaced its page and table."""
    from argparse import Namespace

    out = tmp_path / "sw"

    def record(trial, sweep):
        (out / f"trial_{trial:04d}").mkdir(parents=True, exist_ok=True)
        (out / f"trial_{trial:04d}" / "FER_resnet18_run.json").write_text(json.dumps({"sweep": sweep}))

    def args(study=None, storage=None, folder=out):
        return Namespace(out=str(folder), study=study or "sw", study_given=study is not None,
                         storage_url=storage_url(storage, folder))
    record(0, {"study": "sw", "storage": S.DEFAULT_HOME, "trial": 0})
    record(1, {"study": "sw", "storage": "sqlite:////gone/away/sw/study.db"})  # written before DEFAULT_HOME, moved since
    record(2, {"study": "sw"})  # damaged: no storage, passed over (it named "None" as the storage to give)
    record(3, {"study": "sw", "storage": ["x"]})
    S.check_one_study(args())  # the same study continues
    S.check_one_study(args("sw", f"sqlite:///{out / 'study.db'}"))  # its own database, named
    elsewhere = tmp_path / "elsewhere" / "study.db"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"")  # another sweep's database, also called study.db
    for a in [args("other"), args("sw", "postgresql://fer@db/sweeps"), args("sw", f"sqlite:///{elsewhere}")]:
        with pytest.raises(SweepError, match=r"holds the trials of study 'sw' in SWEEP_DIR/study.db \(e.g. "
                                             r"trial_0000\); a sweep folder holds one study.*\(--study sw\)"):
            S.check_one_study(a)
    renamed = tmp_path / "sw_renamed"
    out.rename(renamed)  # the same command again, in the renamed folder: its study, not the new name
    a = args(folder=renamed)
    S.check_one_study(a)
    assert a.study == "sw"
    with pytest.raises(SweepError, match="holds the trials of study 'sw'"):
        S.check_one_study(args("sw_renamed", folder=renamed))  # a new study named so: refused


def test_trial_folders_without_their_study_are_refused_before_a_database_is_made(demo, tmp_path):
    """study.db deleted (or emptied) beside trial folders: the new study would number its trials from 0
    among them. The refusal made a new study.db; now nothing is written."""
    space = write_yaml(tmp_path / "space.yaml", {"lr": {"low": 1e-4, "high": 1e-2, "log": True}})
    out = tmp_path / "sw"
    (out / "trial_0000").mkdir(parents=True)
    (out / "trial_0000" / "FER_resnet18_run.json").write_text("{}")
    argv = ["--config", str(base_config(demo, tmp_path / "base.yaml")), "--space", str(space), "--out", str(out)]
    for content in (None, b""):
        if content is not None:
            (out / "study.db").write_bytes(content)
        with pytest.raises(SweepError, match="holds trial folders, but .*study.db .*missing or empty"):
            S.sweep(CS.get_args(argv))
        assert (out / "study.db").read_bytes() == b"" if content is not None else not (out / "study.db").exists()
    (out / "study.db").unlink()
    S.open_study(CS.get_args(argv + ["--study", "first"]))  # a database that holds another study only
    with pytest.raises(SweepError, match="holds trial folders, but study 'sw' in .* does not exist"):
        S.sweep(CS.get_args(argv))
    assert optuna.get_all_study_names(storage=f"sqlite:///{out / 'study.db'}") == ["first"]


@pytest.mark.slow
def test_trials_that_fail_are_recorded_and_replaced(demo, tmp_path):
    """A drawn combination training refuses fails that trial, not the sweep; three in a row stop it."""
    base = base_config(demo, tmp_path / "base.yaml")
    space = write_yaml(tmp_path / "space.yaml", {"warmup_epochs": {"choices": [5]}})
    r = run_here("sweep.py", "--config", base, "--space", space, "--out", tmp_path / "sw", "--trials", 2)
    assert r.returncode == 1 and "sweep: trial 0 failed: the drawn flags are refused" in r.stdout
    one_error_line(r, "3 trials in a row failed", "check --config and --space")
    assert (tmp_path / "sw" / "sweep.html").is_file()


def postgres_server(tmp_path_factory):
    """(url, stop) of a throw-away PostgreSQL 15 on a unix socket, or pytest.skip with the reason."""
    if not (PG_BIN / "initdb").is_file():
        pytest.skip(f"PostgreSQL 15 is not installed ({PG_BIN}/initdb absent; apt-get install postgresql-15)")
    run_as = []
    if os.geteuid() == 0:  # initdb refuses to run as root: as the postgres user, where there is one
        if not shutil.which("runuser"):
            pytest.skip("running as root and runuser is absent: initdb refuses root")
        try:
            import pwd
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root without a postgres user: initdb refuses root")
        run_as = ["runuser", "-u", "postgres", "--"]
    folder = Path(tempfile.mkdtemp(prefix="fer-pg-"))  # short (unix socket paths are limited), reachable
    if run_as:
        shutil.chown(folder, "postgres")
    user = "fer"

    def pg(*cmd):
        return subprocess.run([*run_as, *map(str, cmd)], capture_output=True, text=True, timeout=120)
    r = pg(PG_BIN / "initdb", "-D", folder / "data", "-A", "trust", "-U", user, "--no-sync")
    if r.returncode:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"initdb failed as {'postgres' if run_as else getpass.getuser()}: {r.stderr.strip()[:200]}")
    r = pg(PG_BIN / "pg_ctl", "-D", folder / "data", "-l", folder / "log", "-w", "-o",
           f"-k {folder} -c listen_addresses='' -F", "start")
    assert r.returncode == 0, r.stderr + (folder / "log").read_text()
    assert pg(PG_BIN / "createdb", "-h", folder, "-U", user, "sweeps").returncode == 0

    def stop():
        pg(PG_BIN / "pg_ctl", "-D", folder / "data", "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)
    return f"postgresql://{user}@/sweeps?host={folder}", stop


@pytest.mark.slow
def test_two_workers_share_one_postgresql_study(demo, tmp_path, tmp_path_factory):
    url, stop = postgres_server(tmp_path_factory)
    try:
        base = base_config(demo, tmp_path / "base.yaml", epochs=1)
        space = write_yaml(tmp_path / "space.yaml", {"lr": {"low": 1e-4, "high": 1e-2, "log": True}})
        workers = [subprocess.Popen([sys.executable, str(ROOT / "sweep.py"), "--config", str(base), "--space",
                                     str(space), "--out", str(tmp_path / name), "--study", "shared", "--storage", url,
                                     "--trials", "4", "--seed", str(seed), "--pruner", "none"],  # 1 epoch: nothing to prune
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for seed, name in enumerate(("worker_a", "worker_b"))]
        results = [w.communicate(timeout=600) for w in workers]
        for w, (stdout, stderr) in zip(workers, results):
            assert w.returncode == 0, stderr
        study = optuna.load_study(study_name="shared", storage=storage_url(url, None))
        trials = study.get_trials()
        assert 4 <= len(trials) <= 5  # two workers may both start the 4th (Optuna's n_trials race)
        assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials), \
            [(t.number, t.state.name, t.user_attrs) for t in trials]
        folders = {name: {int(p.name.split("_")[1]) for p in (tmp_path / name).glob("trial_*")}
                   for name in ("worker_a", "worker_b")}
        assert folders["worker_a"] and folders["worker_b"], folders  # both worked
        assert not folders["worker_a"] & folders["worker_b"]  # no trial run twice
        assert folders["worker_a"] | folders["worker_b"] == {t.number for t in trials}
        for name, numbers in folders.items():
            for n in numbers:
                record = json.loads((tmp_path / name / f"trial_{n:04d}" / "FER_resnet18_run.json").read_text())
                assert record["sweep"]["trial"] == n and record["sweep"]["state"] == "complete"
                assert record["sweep"]["storage"].startswith("postgresql+psycopg://fer@/sweeps")
    finally:
        stop()


def test_the_study_database_is_never_another_tools_file_nor_a_traceback(demo, tmp_path):
    """Hostile pass 2026-12-03: --storage sqlite:///<a checkpoint or index> ended in an SQLAlchemy traceback
    (the file was about to become a study database); any file that is not a database is one line."""
    from fer.training.sweep import open_storage

    base = base_config(demo, tmp_path / "base.yaml")
    space = write_yaml(tmp_path / "space.yaml", {"lr": {"low": 1e-4, "high": 1e-2, "log": True}})
    ckpt = tmp_path / "m.pth"
    ckpt.write_bytes(b"weights")
    r = run_here("sweep.py", "--config", base, "--space", space, "--out", tmp_path / "o", "--storage", f"sqlite:///{ckpt}")
    one_error_line(r, "--storage", "is a checkpoint")
    assert ckpt.read_bytes() == b"weights"
    notes = tmp_path / "notes.db"
    notes.write_bytes(b"not a database, just text" * 100)
    with pytest.raises(SweepError, match="cannot open the database"):
        open_storage(f"sqlite:///{notes}")
