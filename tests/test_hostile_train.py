"""Hostile pass over training and its run records: each test fails on the code before its fix.

They reuse the session fixtures (`demo`, `trained`) and run scripts in-process (`run_here`).
"""
import shutil

import torch
from conftest import run_here, tiny_args
from test_trust import one_error_line

TRAIN = "train_vggface2_resnet50.py"


def unfinished_copy(trained, folder, best_acc=2.0):
    """A copy of the trained run (best and last) whose last state is one epoch short of --epochs 2 and
    whose best epoch no later epoch can beat (best_acc 2.0)."""
    folder.mkdir()
    shutil.copy(trained, folder / trained.name)
    last = folder / trained.name.replace(".pth", "_last.pth")
    ckpt = torch.load(trained.with_name(last.name), weights_only=False)
    ckpt["args"]["epochs"] = 2
    ckpt["train_state"]["best_acc"] = best_acc
    torch.save(ckpt, last)
    return last


def test_resume_into_another_save_path_keeps_the_best_checkpoint(demo, trained, tmp_path):
    """A resume into a new --save_path whose later epochs did not beat the earlier best ended with
    exit 0 naming a best checkpoint that was never written there."""
    last = unfinished_copy(trained, tmp_path / "src")
    new = tmp_path / "new" / "m.pth"
    r = run_here(TRAIN, *tiny_args(demo, tmp_path, "--epochs", 2, "--resume", last, "--save_path", new))
    assert r.returncode == 0, r.stderr
    assert new.read_bytes() == (tmp_path / "src" / trained.name).read_bytes()
    (tmp_path / "src" / trained.name).unlink()  # the best checkpoint is not beside the state: refused
    other = tmp_path / "other" / "m.pth"
    r = run_here(TRAIN, *tiny_args(demo, tmp_path, "--epochs", 2, "--resume", last, "--save_path", other))
    one_error_line(r, "--resume", trained.name, "not found")
    assert not other.parent.exists()


def test_tensorboard_folder_onto_an_output_is_refused_up_front(demo, tmp_path):
    """--tensorboard onto the checkpoint's own name: the event folder took that name at the first epoch,
    then renaming the checkpoint onto it ended in a traceback, leaving the run record and config alone."""
    for tb in (tmp_path / "m.pth", tmp_path / "m_run.json" / "x"):
        r = run_here(TRAIN, *tiny_args(demo, tmp_path, "--epochs", 1, "--tensorboard", tb))
        one_error_line(r, "--tensorboard", tb, "is the output")
        assert list(tmp_path.iterdir()) == []


def test_compare_runs_out_onto_a_runs_history_is_refused(trained, tmp_path):
    """--out onto a compared run's history CSV replaced that run's history with the table (exit 0)."""
    history = trained.with_name("FER_resnet18_history.csv")
    before = history.read_bytes()
    r = run_here("compare_runs.py", trained.parent, "--out", history)
    one_error_line(r, "--out", history.name, "is the input")
    r = run_here("compare_runs.py", trained.parent, "--plot", trained.with_name("FER_resnet18_curves.png"))
    one_error_line(r, "--plot", "FER_resnet18_curves.png", "is the input")
    assert history.read_bytes() == before


def test_compare_runs_counts_a_rerun_of_the_same_seed_once(trained, tmp_path):
    """Two runs with the same settings and the same --seed (a rerun from its config) became one row
    "n = 2, std 0", as if two seeds had agreed exactly."""
    import json

    import fer.training.compare as C

    record = json.loads(trained.with_name("FER_resnet18_run.json").read_text())
    for name, seed, started in (("a", 1, "t1"), ("b", 1, "t2"), ("c", 2, "t3")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "m_run.json").write_text(json.dumps({**record, "started": started,
                                                                 "args": {**record["args"], "seed": seed}}))
    rows, _, _, notes = C.build_table(C.load_runs([tmp_path / "a", tmp_path / "b"])[0])
    assert [r["n"] for r in rows] == [1] and rows[0]["val_acc_std"] is None
    assert any("b/m" in n and "rerun" in n for n in notes), notes
    rows, _, _, notes = C.build_table(C.load_runs([tmp_path])[0])
    assert [r["n"] for r in rows] == [2] and sorted(rows[0]["seeds"]) == [1, 2]


def test_compare_predictions_of_a_header_only_csv_is_one_line(tmp_path):
    """A --save_predictions CSV with its header and no rows ended in scikit-learn's traceback."""
    header = "filename,y_true,y_pred,prob_Neutral,prob_Happy\n"
    for name in ("a.csv", "b.csv"):
        (tmp_path / name).write_text(header)
    r = run_here("compare_runs.py", "--predictions", tmp_path / "a.csv", tmp_path / "b.csv")
    one_error_line(r, "a.csv", "no rows")


def test_compare_runs_groups_a_run_recorded_before_a_flag_existed(trained, tmp_path):
    """A record written before --warmup_epochs/--best_on existed showed them as None against the newer
    run's defaults (a differing column), so two seeds of one experiment were never one row."""
    import json

    import fer.training.compare as C

    record = json.loads(trained.with_name("FER_resnet18_run.json").read_text())
    old = {k: v for k, v in record["args"].items() if k not in ("warmup_epochs", "best_on")}
    (tmp_path / "old_run.json").write_text(json.dumps({**record, "started": "t0", "args": {**old, "seed": 7}}))
    rows, differing, _, _ = C.build_table(C.load_runs([tmp_path, trained.with_name("FER_resnet18_run.json")])[0])
    assert [r["n"] for r in rows] == [2] and differing == [], differing


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


def test_resume_into_another_save_path_records_its_own_file_names(demo, trained, tmp_path):
    """The run record of a resume into another --save_path kept the first session's file names, so
    compare_runs.py --plot read (or missed) the history of whatever run had those names there."""
    import json

    last = unfinished_copy(trained, tmp_path / "src", best_acc=-1.0)
    new = tmp_path / "new" / "x.pth"
    r = run_here(TRAIN, *tiny_args(demo, tmp_path, "--epochs", 2, "--resume", last, "--save_path", new))
    assert r.returncode == 0, r.stderr
    outputs = json.loads((tmp_path / "new" / "x_run.json").read_text())["outputs"]
    assert outputs["history"] == "x_history.csv" and outputs["best"] == "x.pth", outputs


def test_huge_seed_is_a_flag_error(demo, tmp_path):
    """--seed 2e13: seed x 1000003 overflowed torch.manual_seed, a ValueError traceback after the data loaded."""
    r = run_here(TRAIN, *tiny_args(demo, tmp_path, "--epochs", 1, "--seed", 2 * 10**13))
    assert r.returncode == 2 and "--seed" in one_error_line(r, "4294967295")


def test_huge_epochs_do_not_hang_before_the_first_epoch(monkeypatch):
    """--epochs 10**9: the schedule line looped over every epoch (minutes) before training started; it
    looks at the epochs where the stage changes only."""
    import fer.training.schedule as T

    calls = []
    blocks = T.trainable_blocks
    monkeypatch.setattr(T, "trainable_blocks", lambda *a, **k: calls.append(a) or blocks(*a, **k))
    assert T.schedule_text(10**5, 3, None) == "epochs 1-3 layer4, 4-100000 layer3+layer4" and len(calls) <= 3
    assert T.schedule_text(6, 3, 1) == "epochs 1-6 all" and T.schedule_text(10**9, 0, 5).endswith("5-1000000000 all")


def test_compare_predictions_refuses_too_few_resamples(tmp_path):
    """--bootstrap 5 gave a "95 % interval" of five values, exit 0; the rule is eval's (FER_io.check_bootstrap)."""
    r = run_here("compare_runs.py", "--predictions", tmp_path / "a.csv", tmp_path / "b.csv", "--bootstrap", 5)
    assert r.returncode == 2 and "--bootstrap 5: too few resamples" in one_error_line(r)
