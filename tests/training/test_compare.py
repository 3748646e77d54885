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


# --- the plot (issue 26, item 4): read from the figure objects and the files -------------------------
def fake_runs(root, specs):
    """Run records with history CSVs, no training: specs = [(folder, args, {metric: per-epoch values})]."""
    for k, (folder, args, curves) in enumerate(specs):
        (root / folder).mkdir(parents=True)
        epochs = len(next(iter(curves.values())))
        pd.DataFrame({"epoch": range(1, epochs + 1), **curves}).to_csv(root / folder / "m_history.csv", index=False)
        record = {"started": f"t{k}", "args": args, "best": {"val_acc": max(curves.get("val_acc", [0]))},
                  "outputs": {"history": "m_history.csv"}}
        (root / folder / "m_run.json").write_text(json.dumps(record))
    return root


LONG = "/data/experiments/affectnet/a_very_long_folder_name_for_one_run/config_variant_with_a_long_name.yaml"


@pytest.fixture
def seeds_and_lrs(tmp_path):
    """Three seeds of lr 1e-3 (one stopped early), one run of lr 1e-2, all with a long differing path flag."""
    def args(lr, seed, init):
        return {"lr": lr, "seed": seed, "init_from": init, "epochs": 5}
    acc = {1: [0.2, 0.4, 0.5, 0.55, 0.6], 2: [0.3, 0.5, 0.6, 0.62, 0.64], 3: [0.1, 0.3, 0.4]}
    specs = [(f"s{s}", args(1e-3, s, LONG), {"val_acc": a, "val_loss": [1 - v for v in a]}) for s, a in acc.items()]
    specs.append(("other", args(1e-2, 1, LONG + "2"), {"val_acc": [0.25, 0.35, 0.45, 0.5, 0.52],
                                                        "val_loss": [0.9, 0.8, 0.7, 0.6, 0.5]}))
    return fake_runs(tmp_path / "runs", specs)


def test_plot_groups_seeds_as_a_mean_with_a_band_and_keeps_the_legend_outside(seeds_and_lrs):
    rows, differing, _, _ = C.build_table(C.load_runs([seeds_and_lrs])[0])
    assert sorted(r["n"] for r in rows) == [1, 3] and set(differing) == {"lr", "init_from"}
    labels = C.short_labels(rows, differing)
    assert all(len(label) <= C.LABEL_CHARS for label in labels) and len(set(labels)) == 2
    assert all("lr=" in label for label in labels) and {"lr=0.001", "lr=0.01"} <= {lab.split(",")[0] for lab in labels}
    assert any(label.endswith("yaml2") for label in labels)  # the part of the long path that differs
    histories, notes = C.read_histories(rows)
    assert not notes
    fig, notes = C.curve_figure(rows, labels, histories, "val_acc")
    assert not notes
    ax = fig.axes[0]
    # One line per row, not per run; a band only for the row of three seeds.
    assert len(ax.lines) == 2
    assert len(ax.collections) == 1
    grouped = rows.index(next(r for r in rows if r["n"] == 3))
    line = ax.lines[grouped]
    np.testing.assert_allclose(line.get_ydata(), [0.2, 0.4, 0.5, (0.55 + 0.62) / 2, (0.6 + 0.64) / 2])
    band = ax.collections[0].get_paths()[0].vertices
    assert band[:, 1].min() == pytest.approx(0.1) and band[:, 1].max() == pytest.approx(0.64)
    assert band[:, 0].max() == 5  # two runs reached epoch 5: still a band there
    legend = ax.get_legend()
    texts = [t.get_text() for t in legend.get_texts()]
    assert any(t.endswith("(n=3)") for t in texts) and "min\u2013max" in legend.get_title().get_text()
    # The legend outside the axes, on the right.
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert legend.get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1
    # Integer epoch ticks only.
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)


def test_plot_writes_one_figure_per_metric(seeds_and_lrs, tmp_path):
    import matplotlib.image

    r = run_here("compare_runs.py", seeds_and_lrs, "--plot", tmp_path / "curves.png", "--metric", "val_acc", "val_loss")
    assert r.returncode == 0, r.stderr
    files = [tmp_path / "curves_val_acc.png", tmp_path / "curves_val_loss.png"]
    assert f"wrote {files[0]}, {files[1]}" in r.stdout and not (tmp_path / "curves.png").exists()
    for f in files:
        h, w = matplotlib.image.imread(f).shape[:2]
        assert w > 9 * 110 * 0.9 and h > 200  # the saved figure holds the axes and the legend beside them
    r = run_here("compare_runs.py", seeds_and_lrs, "--plot", tmp_path / "one.png", "--metric", "val_f1")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "one.png").is_file() and "no val_f1_macro in the history" in r.stdout
    r = run_here("compare_runs.py", seeds_and_lrs, "--plot", tmp_path / "x.png", "--metric", "accuracy")
    assert r.returncode == 2 and "--metric accuracy" in one_error_line(r)
    r = run_here("compare_runs.py", seeds_and_lrs, "--metric", "val_loss")
    assert r.returncode == 2 and "--plot" in one_error_line(r)


def test_the_table_and_plot_count_the_best_on_weights(tmp_path):
    """Issue 26: compare_runs.py read the raw weights' curve of a --best_on ema run; its table and plot now show
    the weights the record counts (best_on), and an older record is named as counting the raw ones."""
    history = pd.DataFrame({"epoch": [1, 2], "val_acc": [0.1, 0.2], "val_loss": [3.0, 2.0],
                            "ema_val_acc": [0.5, 0.6], "ema_val_loss": [1.5, 1.0]})
    for name, best_on in (("a", "ema"), ("b", None)):
        history.to_csv(tmp_path / f"{name}_history.csv", index=False)
        record = {"args": {"lr": 0.1 if name == "a" else 0.2, "best_on": "ema", "seed": 0}, "started": name,
                  "best": {"val_acc": 0.6 if best_on else 0.2}, "outputs": {"history": f"{name}_history.csv"}}
        if best_on:
            record["best_on"] = best_on
        (tmp_path / f"{name}_run.json").write_text(json.dumps(record))
    rows, differing, _, notes = C.build_table(C.load_runs([tmp_path])[0])
    assert any("recorded before --best_on ema was counted" in n and "b" in n for n in notes)
    histories, _ = C.read_histories(rows)
    labels = C.short_labels(rows, differing)
    fig, _ = C.curve_figure(rows, labels, histories, "val_acc")  # val_acc: the weights each record counts
    assert [list(line.get_ydata()) for line in fig.axes[0].lines] == [[0.5, 0.6], [0.5, 0.6]]
    fig, _ = C.curve_figure(rows, labels, histories, "raw_val_acc")  # one set of weights, named
    assert [list(line.get_ydata()) for line in fig.axes[0].lines] == [[0.1, 0.2], [0.1, 0.2]]


# --- trust rule 5 (issue 25): each column one meaning; --init_from by its weights -----------------------
def record(folder, args, **top):
    folder.mkdir(parents=True)
    (folder / "m_run.json").write_text(json.dumps({"started": folder.name, "args": args, "best": {"val_acc": 0.5},
                                                   **top}))


def test_the_epochs_flag_and_the_epochs_run_are_two_columns(tmp_path):
    """The --epochs flag's column showed the epochs run when runs differed in --epochs (one row key for both)."""
    record(tmp_path / "a", {"epochs": 10, "seed": 0}, epochs=4)  # stopped early after 4 of 10
    record(tmp_path / "b", {"epochs": 20, "seed": 0}, epochs=20)
    rows, differing, _, _ = C.build_table(C.load_runs([tmp_path])[0])
    assert differing == ["epochs"]
    assert sorted((r["epochs"], r["epochs_run"]) for r in rows) == [(10, 4.0), (20, 20.0)]
    header, body = C.table_cells(rows, differing)
    assert header.count("epochs") == 1 and "epochs run" in header


def test_runs_from_the_same_starting_weights_are_replicates_whatever_the_path(tmp_path):
    """--init_from was compared as a path: the same weights under two paths were two settings, and other
    weights under one path (a file replaced between runs) were one."""
    same = {"path": "/x", "fingerprint": "ab" * 32}
    record(tmp_path / "s1", {"init_from": "a/start.pth", "seed": 1}, init_from=same)
    record(tmp_path / "s2", {"init_from": "copy/of/start.pth", "seed": 2}, init_from=same)
    record(tmp_path / "s3", {"init_from": "a/start.pth", "seed": 3}, init_from={"path": "/x", "fingerprint": "cd" * 32})
    rows, differing, _, _ = C.build_table(C.load_runs([tmp_path])[0])
    assert differing == ["init_from"] and sorted(r["n"] for r in rows) == [1, 2]
    assert {r["init_from"] for r in rows} == {"weights " + "ab" * 6, "weights " + "cd" * 6}


def test_a_run_record_nested_too_deeply_is_one_line(tmp_path):
    """Hostile pass 2026-12-03: 100,000 nested brackets in a *_run.json were a RecursionError traceback."""
    bomb = tmp_path / "x_run.json"
    bomb.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(C.FERError, match="not a readable run record"):
        C.read_record(bomb)


@pytest.mark.parametrize("change,needle", [("string", "not valid numbers"), ("sum", "sum to")])
def test_predictions_that_are_not_class_probabilities_are_one_line(tmp_path, change, needle):
    """Hostile pass 2026-12-03: a probability 'x' was a ValueError traceback; rows summing to 3 (each value in
    [0, 1]) were compared, exit 0."""
    names = ["a.jpg", "b.jpg", "c.jpg"]
    probs = np.full((3, 8), 1 / 8)
    df = pd.DataFrame({"filename": names, "y_true": [0, 1, 2], **{f"prob_{i}": probs[:, i] for i in range(8)}})
    if change == "string":
        df["prob_0"] = df["prob_0"].astype(object)
        df.loc[1, "prob_0"] = "x"
    else:
        df[[f"prob_{i}" for i in range(8)]] *= 3
    df.to_csv(tmp_path / "p.csv", index=False)
    with pytest.raises(C.FERError, match=needle):
        C.read_predictions(tmp_path / "p.csv")


def test_an_old_and_a_new_record_of_one_setting_are_not_averaged_across_weights(tmp_path):
    """A record from before best_on was counted holds the raw weights' numbers under --best_on ema; a newer
    replicate (another --seed) holds the EMA weights': one row averaged the two."""
    args = {"best_on": "ema", "ema": 0.99, "lr": 0.1}
    record(tmp_path / "old", {**args, "seed": 1})  # no best_on at the top: `best` is the raw weights'
    record(tmp_path / "new", {**args, "seed": 2}, best_on="ema")
    rows, _, _, notes = C.build_table(C.load_runs([tmp_path])[0])
    assert sorted(r["n"] for r in rows) == [1, 1]
    assert any("recorded before --best_on ema was counted" in n for n in notes)
