"""Run records, --config, TensorBoard, compare_runs.py, bootstrap intervals and paired comparisons."""
import json
import shutil

import krippendorff
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import run_here, tiny_args
from scipy.stats import binomtest
from sklearn import metrics as skm

import fer.training.compare as C
from fer.data.dataset import FERDataset, data_record
from fer.evaluation import metrics as M
from fer.model.checkpoint import weights_fingerprint
from fer.training.record import RunRecord
from fer.trust import FERError

QUICK = ["--epochs", 1, "--steps_per_epoch", 1]
NAMES = ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt"]


# --- five tiny runs: two that differ in --lr, three that differ only in --seed -------------------------
@pytest.fixture(scope="session")
def runs(demo, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    flags = {"lr_a": ["--lr", 1e-3, "--tensorboard"], "lr_b": ["--lr", 1e-2],
             "seed_1": ["--seed", 1], "seed_2": ["--seed", 2], "seed_3": ["--seed", 3]}
    for name, extra in flags.items():
        r = run_here("train_vggface2_resnet50.py", *tiny_args(demo, root / name, *QUICK, *extra))
        assert r.returncode == 0, r.stderr
    return root


def test_run_record(runs, demo):
    record = json.loads((runs / "lr_a" / "m_run.json").read_text())
    last = torch.load(runs / "lr_a" / "m_last.pth", weights_only=True)
    best = torch.load(runs / "lr_a" / "m.pth", weights_only=True)
    assert last["run"] == record == best["run"]  # one epoch: the best checkpoint holds the final record
    assert record["command"].startswith("train_vggface2_resnet50.py --train_meta") and "--lr 0.001" in record["command"]
    assert record["args"]["lr"] == 1e-3 and record["epochs"] == 1 and record["best_epoch"] == 1
    assert record["best"]["val_acc"] == best["metrics"]["val_acc"]
    assert {"val_f1_macro", "val_ccc_valence", "val_ccc_arousal"} <= set(record["best"])
    assert record["wall_time_s"] > 0 and record["img_per_s"] > 0 and record["started"] <= record["ended"]
    assert record["git"] == "not a git checkout" or len(record["git"]["commit"]) == 40
    assert set(record["versions"]) == {"python", "torch", "torchvision", "albumentations", "numpy"}
    assert record["device"]["type"] == "cpu" and record["world_size"] == 1 and record["precision"] == "float32"
    (train,) = record["data"]["train"]
    ds = FERDataset(demo["train"], size=32, verbose=False)
    assert train["rows"] == len(ds) == sum(train["rows_per_class"].values())
    assert train["fingerprint"] == data_record(ds)[0]["fingerprint"]
    assert record["checkpoint_fingerprint"] == weights_fingerprint(best["model"])
    assert record["outputs"]["history"] == "m_history.csv" and record["outputs"]["tensorboard"] == "m_tensorboard"


def test_fingerprint_follows_rows_not_bytes(demo, tmp_path):
    df = pd.read_parquet(demo["val"])
    same = tmp_path / "same.parquet"
    df[df.columns[::-1]].assign(unused=1).to_parquet(same)  # other bytes, the same rows
    changed = tmp_path / "changed.parquet"
    df.assign(valence=df["valence"].where(df.index != df.index[0], 0.123)).to_parquet(changed)
    fp = [data_record(FERDataset(p, train=False, size=32, verbose=False))[0]["fingerprint"]
          for p in (demo["val"], same, changed)]
    assert fp[0] == fp[1] != fp[2]
    two = data_record(FERDataset([demo["train"], demo["val"]], size=32, verbose=False))
    assert [d["fingerprint"] for d in two] == [data_record(FERDataset(p, size=32, verbose=False))[0]["fingerprint"]
                                               for p in (demo["train"], demo["val"])]


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


def test_a_flag_over_a_runs_config_acts_as_if_added_to_its_command(runs, tmp_path):
    """--config <stem>_config.yaml --ema 0.9 kept the config's resolved best_on: raw (the config held every
    resolved value); it is now the original command plus --ema 0.9: the averaged weights pick the best."""
    config = runs / "lr_b" / "m_config.yaml"
    values = yaml.safe_load(config.read_text())
    assert "best_on" not in values and "freeze_epochs" not in values  # the flags given, nothing resolved
    r = run_here("train_vggface2_resnet50.py", "--config", config, "--ema", 0.9, "--save_path", tmp_path / "ema.pth")
    assert r.returncode == 0, r.stderr
    assert "best validation accuracy (EMA weights)" in r.stdout
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


def test_tensorboard_events(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(runs / "lr_a" / "m_tensorboard")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"step/train_loss", "step/lr", "loss/train", "loss/val", "accuracy/val", "rmse/val", "ccc/val_valence",
            "speed/img_per_s", "speed/data_wait_share"} <= tags
    assert [e.value for e in events.Scalars("step/lr")] == pytest.approx([1e-3])
    assert events.Scalars("accuracy/val")[0].value == pytest.approx(
        json.loads((runs / "lr_a" / "m_run.json").read_text())["best"]["val_acc"])
    assert not (runs / "lr_b" / "m_tensorboard").exists()


def test_tensorboard_folder_of_an_earlier_run_is_not_mixed_in(demo, runs, tmp_path):
    (tmp_path / "tb").mkdir()
    for f in (runs / "lr_a" / "m_tensorboard").glob("events.out.tfevents.*"):
        (tmp_path / "tb" / f.name).write_bytes(f.read_bytes())
    r = run_here("train_vggface2_resnet50.py", *tiny_args(demo, tmp_path, "--tensorboard", tmp_path / "tb"))
    assert r.returncode == 1 and "events.out.tfevents" in r.stderr and "--overwrite" in r.stderr
    assert not (tmp_path / "m.pth").exists()


# --- compare_runs.py ----------------------------------------------------------------------------
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


def test_compare_runs_says_when_data_differ(runs, tmp_path):
    record = json.loads((runs / "lr_a" / "m_run.json").read_text())
    record["data"]["val"][0]["fingerprint"], record["started"] = "0" * 64, "another run"
    (tmp_path / "other_run.json").write_text(json.dumps(record))
    rows, differing, _, notes = C.build_table(C.load_runs([runs / "lr_a", tmp_path])[0])
    assert differing == ["val data"] and "different val data" in notes[0]


# --- bootstrap intervals -------------------------------------------------------------------------
def random_case(seed, n, classes=8):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, 8)) + 2.5 * np.eye(8)[y] * rng.random((n, 1))
    va_true = rng.uniform(-1, 1, (n, 2))
    va_pred = 0.6 * va_true + rng.normal(0, 0.3, (n, 2))
    va_true[:3] = np.nan  # rows without labels
    va_true[3:6, 0] = np.nan  # rows with arousal only: each dimension is scored over the rows that have it
    return y, logits, va_pred, va_true


def reference_metrics(y, probs, va_pred, va_true, names, full_classes):
    """The slow, plain way: scikit-learn and krippendorff on one resample, None where undefined."""
    pred = probs.argmax(1)
    complete = set(full_classes) <= set(y)
    present = np.unique(y)
    onehot = (y[:, None] == present[None, :]).astype(int)
    out = {"accuracy": skm.accuracy_score(y, pred),
           "f1_macro": skm.f1_score(y, pred, average="macro", zero_division=0) if complete else None,
           "kappa": skm.cohen_kappa_score(y, pred),
           "roc_auc": skm.roc_auc_score(onehot, probs[:, present], average="macro") if complete else None,
           "pr_auc": skm.average_precision_score(onehot, probs[:, present], average="macro") if complete else None,
           "krippendorff_alpha": krippendorff.alpha(reliability_data=np.vstack([y, pred]), level_of_measurement="nominal")}
    labels = np.arange(len(names))
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    predicted = np.bincount(pred, minlength=len(names))
    for i, name in enumerate(names):
        out[f"per_class.{name}.precision"] = p[i] if predicted[i] else None
        out[f"per_class.{name}.recall"] = r[i] if s[i] else None
        out[f"per_class.{name}.f1"] = f[i] if s[i] else None
    for j, name in enumerate(("valence", "arousal")):
        ok = ~np.isnan(va_true[:, j])
        t, q = va_true[ok, j], np.clip(va_pred[ok, j], -1, 1)
        out[f"{name}.rmse"] = np.sqrt(skm.mean_squared_error(t, q))
        out[f"{name}.mae"] = skm.mean_absolute_error(t, q)
        out[f"{name}.corr"] = np.corrcoef(t, q)[0, 1]
        out[f"{name}.sagr"] = np.mean(np.sign(t) == np.sign(q))
        out[f"{name}.ccc"] = 2 * np.cov(t, q, bias=True)[0, 1] / (t.var() + q.var() + (t.mean() - q.mean()) ** 2)
    ok = ~np.isnan(va_true).any(1)
    out["rmse_combined"] = np.sqrt(skm.mean_squared_error(va_true[ok], np.clip(va_pred[ok], -1, 1)))
    return out


@pytest.mark.parametrize("seed,n", [(0, 40), (1, 120)])
def test_bootstrap_matches_a_plain_loop(seed, n):
    y, logits, va_pred, va_true = random_case(seed, n)
    idx = M.bootstrap_indices(n, 60, seed)
    fast = M.bootstrap_metrics(idx, logits, y, va_pred, va_true, NAMES)
    probs = M.softmax(logits)
    ref = [reference_metrics(y[i], probs[i], va_pred[i], va_true[i], NAMES, np.unique(y)) for i in idx]
    assert set(fast) == set(ref[0])
    undefined = 0
    for key, values in fast.items():
        expected = np.array([np.nan if r[key] is None else r[key] for r in ref], np.float64)
        undefined += int(np.isnan(expected).sum())
        np.testing.assert_allclose(values, expected, rtol=1e-9, atol=1e-12, err_msg=key)
        lo_hi, used = M.interval(values)
        ok = expected[np.isfinite(expected)]
        assert used == len(ok)
        if used:
            assert lo_hi == pytest.approx(list(np.percentile(ok, [2.5, 97.5])), abs=1e-12)
    assert undefined > 0 or n > 100  # the small case does miss classes on some resamples
    blocks = M.bootstrap_metrics(idx, logits, y, va_pred, va_true, NAMES, block=7 * n)  # 9 blocks, the last short
    for key, values in fast.items():
        np.testing.assert_allclose(blocks[key], values, rtol=1e-12, atol=1e-15, err_msg=key)


def test_intervals_contain_their_point_estimates():
    y, logits, va_pred, va_true = random_case(3, 300)
    point = M.flatten(M.evaluate(logits, va_pred, y, va_true, NAMES))
    report = M.bootstrap_report(M.bootstrap_metrics(M.bootstrap_indices(300, 400, 0), logits, y, va_pred, va_true,
                                                    NAMES), 400, 0)
    checked = 0
    for key, value in point.items():
        if key not in report["bootstrap"]["used"]:  # calibration (ECE, NLL, ...) has no interval yet
            continue
        node = report["ci95"]
        for part in key.split("."):
            node = node[part]
        if value is not None and node is not None:
            assert node[0] <= value <= node[1], key
            checked += 1
    assert checked > 40 and report["bootstrap"]["used"]["accuracy"] == 400


def test_mcnemar_is_the_binomial_test_on_discordant_pairs():
    rng = np.random.default_rng(5)
    a, b = rng.random(300) < 0.6, rng.random(300) < 0.7
    m = M.mcnemar(a, b)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    assert (m["a_only_correct"], m["b_only_correct"]) == (only_a, only_b)
    assert m["p_value"] == binomtest(only_b, only_a + only_b, 0.5, alternative="two-sided").pvalue
    assert M.mcnemar(a, a)["p_value"] == 1.0


def test_paired_difference_uses_the_same_resamples():
    y, logits, va_pred, va_true = random_case(4, 150)
    better = logits + 1.5 * np.eye(8)[y]
    idx = M.bootstrap_indices(150, 200, 1)
    sa = M.bootstrap_metrics(idx, logits, y, va_pred, va_true, NAMES)
    sb = M.bootstrap_metrics(idx, better, y, va_pred, va_true, NAMES)
    comp = M.paired_comparison(M.evaluate(logits, va_pred, y, va_true, NAMES), M.evaluate(better, va_pred, y, va_true, NAMES),
                               sa, sb, logits.argmax(1) == y, better.argmax(1) == y, 200, 1)
    acc = comp["metrics"]["accuracy"]
    assert acc["diff"] == pytest.approx(acc["b"] - acc["a"]) and acc["ci95_diff"][0] <= acc["diff"] <= acc["ci95_diff"][1]
    assert acc["ci95_diff"] == pytest.approx(list(np.percentile(sb["accuracy"] - sa["accuracy"], [2.5, 97.5])))
    assert comp["metrics"]["valence.rmse"]["ci95_diff"] == [0.0, 0.0]  # the same regression outputs
    assert comp["mcnemar"]["p_value"] < 0.05 and "McNemar" in M.format_comparison(comp)


# --- evaluation: intervals, fingerprints, two models ----------------------------------------------
def test_eval_records_intervals_and_fingerprints(trained, demo, tmp_path):
    r = run_here("eval_resnet50.py", "--checkpoint", trained, "--meta", demo["val"], "--out_dir", tmp_path,
                 "--num_workers", 0, "--bootstrap", 200, "--save_predictions", tmp_path / "a.csv")
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "metrics_resnet50.json").read_text())
    assert m["bootstrap"]["resamples"] == 200 and m["bootstrap"]["seed"] == 0
    lo, hi = m["ci95"]["accuracy"]
    assert lo <= m["accuracy"] <= hi and len(m["ci95"]["valence"]["ccc"]) == 2
    assert f"Accuracy              {m['accuracy']:.4f} [{lo:.4f}, {hi:.4f}]" in r.stdout
    assert "bootstrap resamples" in r.stdout and f"f1_macro {m['bootstrap']['used']['f1_macro']}" in r.stdout
    record = json.loads(trained.with_name(trained.stem + "_run.json").read_text())
    assert m["run"]["started"] == record["started"] and m["checkpoint_fingerprint"] == record["checkpoint_fingerprint"]
    assert m["data"][0]["fingerprint"] == record["data"]["val"][0]["fingerprint"]
    r = run_here("eval_resnet50.py", "--checkpoint", trained, "--meta", demo["val"], "--out_dir", tmp_path / "off",
                 "--num_workers", 0, "--bootstrap", 0)
    off = json.loads((tmp_path / "off" / "metrics_resnet50.json").read_text())
    assert "ci95" not in off and "bootstrap" not in off and off["accuracy"] == m["accuracy"]

    # Two models on the same images, from the checkpoints and from saved predictions. A copy holds the same
    # weights: every difference is 0 (the same file twice is refused, see test_hostile_eval.py).
    shutil.copyfile(trained, tmp_path / "copy.pth")
    r = run_here("eval_resnet50.py", "--checkpoint", trained, tmp_path / "copy.pth", "--meta", demo["val"],
                 "--out_dir", tmp_path / "pair", "--num_workers", 0, "--bootstrap", 100)
    assert r.returncode == 0, r.stderr
    comp = json.loads((tmp_path / "pair" / "comparison_resnet50.json").read_text())
    assert comp["metrics"]["accuracy"]["diff"] == 0 and comp["mcnemar"]["p_value"] == 1.0
    assert "A and B hold the same weights" in comp["notes"][0]
    assert comp["metrics"]["accuracy"]["ci95_diff"] == [0.0, 0.0] and "McNemar" in r.stdout

    df = pd.read_csv(tmp_path / "a.csv")
    probs = [c for c in df.columns if c.startswith("prob_")]
    wrong = df.index[df["y_pred"] != df["y_true"]][:3]
    df.loc[wrong, probs] = 0.0
    for i in wrong:  # B gets these right
        df.loc[i, f"prob_{df.loc[i, 'expression_true']}"] = 1.0
    df.loc[wrong, "y_pred"] = df.loc[wrong, "y_true"]
    df.sample(frac=1, random_state=0).to_csv(tmp_path / "b.csv", index=False)  # matched by file name
    r = run_here("compare_runs.py", "--predictions", tmp_path / "a.csv", tmp_path / "b.csv", "--bootstrap", 100,
                 "--json", tmp_path / "p.json")
    assert r.returncode == 0, r.stderr
    comp = json.loads((tmp_path / "p.json").read_text())
    assert (comp["mcnemar"]["a_only_correct"], comp["mcnemar"]["b_only_correct"]) == (0, len(wrong))
    assert comp["mcnemar"]["p_value"] == binomtest(len(wrong), len(wrong)).pvalue
    assert comp["metrics"]["accuracy"]["diff"] == pytest.approx(len(wrong) / len(df))
    df.iloc[:-2].to_csv(tmp_path / "c.csv", index=False)
    r = run_here("compare_runs.py", "--predictions", tmp_path / "a.csv", tmp_path / "c.csv")
    assert r.returncode == 1 and "2 only in" in r.stderr and "0 only in" in r.stderr
    r = run_here("eval_resnet50.py", "--checkpoint", trained, trained, "--save_predictions", tmp_path / "x.csv")
    assert r.returncode == 2 and "--save_predictions" in r.stderr


def test_resume_refuses_changed_data(runs):
    record = json.loads((runs / "lr_a" / "m_run.json").read_text())
    data = json.loads(json.dumps(record["data"]))
    data["train"][0]["fingerprint"] = "f" * 64
    args = type("Args", (), {})()
    with pytest.raises(FERError, match="rows changed since the run started"):
        RunRecord(args, "x", torch.device("cpu"), 1, "float32", data, {}, previous=record)
