"""fer/training/compare.py (compare_runs.py): the table of runs, what it skips and says, seeds counted
once, and two prediction files compared.

The hostile cases (from the trust passes) each failed on the code before their fix: they check the exit
code, the one line that names the file or flag (no traceback), and that earlier outputs are unchanged.
"""
import json

import numpy as np
import pandas as pd
import pytest
from builders import one_error_line, run_here

import fer.training.compare as C


# --- compare_runs.py ----------------------------------------------------------------------------
@pytest.mark.slow
def test_compare_runs_table(runs):
    loaded, skipped = C.load_runs([runs])
    assert len(loaded) == 5 and not skipped
    rows, differing, same, notes = C.build_table(loaded)
    assert differing == ["lr"] and not notes
    assert same["train data"] != "not recorded" and "seed" not in same and "lr" not in same
    by_n = sorted(rows, key=lambda r: r["n"])
    assert [r["n"] for r in by_n] == [1, 1, 3] and sorted(by_n[2]["seeds"]) == [1, 2, 3]
    accs = [json.loads((runs / f"seed_{s}" / "m_run.json").read_text())["best"]["val_acc"] for s in (1, 2, 3)]
    assert by_n[2]["val_acc"] == pytest.approx(np.mean(accs)) and by_n[2]["val_acc_std"] == pytest.approx(np.std(accs, ddof=1))
    assert {r["lr"] for r in rows} == {1e-3, 1e-2, 1e-4}

    r = run_here("compare_runs.py", runs, "--sort", "name", "--out", runs.parent / "table.csv",
                 "--plot", runs.parent / "curves.png")
    assert r.returncode == 0, r.stderr
    header = r.stdout.splitlines()[0].split()
    assert header[:3] == ["name", "lr", "n"] and "±" in r.stdout and "same in all runs: " in r.stdout
    table = pd.read_csv(runs.parent / "table.csv")
    assert list(table.columns[:4]) == ["name", "lr", "n", "seeds"] and sorted(table["n"]) == [1, 1, 3]
    assert (runs.parent / "curves.png").stat().st_size > 0


@pytest.mark.slow
def test_compare_runs_skips_what_it_cannot_read(runs, tmp_path):
    (tmp_path / "bad_run.json").write_text("{not json")
    (tmp_path / "old_run.json").write_text(json.dumps({"args": {}}))
    r = run_here("compare_runs.py", runs / "lr_a" / "m.pth", runs / "lr_b" / "m_run.json", tmp_path / "bad_run.json",
                 tmp_path / "old_run.json", tmp_path / "missing", "--out", tmp_path / "t.md")
    assert r.returncode == 0, r.stderr
    assert f"skipped {tmp_path / 'bad_run.json'}: not a readable run record" in r.stderr
    assert f"skipped {tmp_path / 'old_run.json'}: not a run record" in r.stderr
    assert f"skipped {tmp_path / 'missing'}: not found" in r.stderr
    assert "| name | lr | n |" in (tmp_path / "t.md").read_text()
    r = run_here("compare_runs.py", tmp_path / "bad_run.json")
    assert r.returncode == 1 and "error: no readable run record" in r.stderr
    r = run_here("compare_runs.py", runs, "--out", tmp_path / "t.txt")
    assert r.returncode == 2 and "--out" in r.stderr


@pytest.mark.slow
def test_compare_runs_says_when_data_differ(runs, tmp_path):
    record = json.loads((runs / "lr_a" / "m_run.json").read_text())
    record["data"]["val"][0]["fingerprint"], record["started"] = "0" * 64, "another run"
    (tmp_path / "other_run.json").write_text(json.dumps(record))
    rows, differing, _, notes = C.build_table(C.load_runs([runs / "lr_a", tmp_path])[0])
    assert differing == ["val data"] and "different val data" in notes[0]


# --- found by the hostile pass over training ------------------------------------------------------
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


def test_compare_predictions_refuses_too_few_resamples(tmp_path):
    """--bootstrap 5 gave a "95 % interval" of five values, exit 0; the rule is eval's (FER_io.check_bootstrap)."""
    r = run_here("compare_runs.py", "--predictions", tmp_path / "a.csv", tmp_path / "b.csv", "--bootstrap", 5)
    assert r.returncode == 2 and "--bootstrap 5: too few resamples" in one_error_line(r)
