"""Metrics against hand-worked values and reference libraries; the evaluation script end to end."""
import json

import cv2
import krippendorff
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_script
from sklearn import metrics as skm

from fer.evaluation import metrics as M
from fer.model.forward import predict_batches
from fer.model.net import FERNet

NAMES = ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt"]


def test_ccc_hand_values():
    t = np.array([-1.0, 0.0, 1.0, 2.0])  # mean 0.5, population variance 1.25
    assert M.ccc(t, t) == pytest.approx(1.0)
    assert M.ccc(t, t + 0.5) == pytest.approx(2 * 1.25 / (1.25 + 1.25 + 0.25))
    assert M.ccc(t, 2 * t) == pytest.approx(2 * 2.5 / (1.25 + 5.0 + 0.25))
    assert M.ccc(t, -t) < 0
    assert M.ccc(np.ones(3), np.ones(3)) is None
    assert M.ccc(t, np.zeros(4)) == 0.0  # constant prediction: defined, and 0


def test_sagr_with_zeros():
    assert M.sagr(np.array([0, 1, -1, 0.5]), np.array([0, 0.2, 0.3, -0.1])) == 0.5
    assert M.sagr(np.array([0.0]), np.array([0.1])) == 0.0


def test_regression_metrics_hand_values():
    t, p = np.array([0.0, 0.5, -0.5, 1.0]), np.array([0.1, 0.5, -0.3, 0.6])
    r = M.regression_metrics(t, p)
    assert r["rmse"] == pytest.approx(np.sqrt((0.01 + 0 + 0.04 + 0.16) / 4))
    assert r["mae"] == pytest.approx((0.1 + 0 + 0.2 + 0.4) / 4)
    assert r["corr"] == pytest.approx(np.corrcoef(t, p)[0, 1])
    assert M.regression_metrics(t, np.full(4, 0.2))["corr"] is None


def test_rmse_clips_predictions():
    r = M.rmse(np.array([[1.0, -1.0]]), np.array([[3.0, -0.5]]))
    assert r["valence"] == 0 and r["arousal"] == pytest.approx(0.5)
    assert r["combined"] == pytest.approx(np.sqrt(0.25 / 2))


def random_case(seed=0, n=200, classes=8):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, 8)) + 2 * np.eye(8)[y] * rng.random((n, 1))
    return y, logits


def test_classification_against_libraries():
    y, logits = random_case()
    probs = M.softmax(logits)
    m, notes = M.classification_metrics(y, probs, NAMES)
    pred = probs.argmax(1)
    assert m["accuracy"] == pytest.approx(np.mean(pred == y))
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["kappa"] == pytest.approx(skm.cohen_kappa_score(y, pred))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    ap = np.mean([skm.average_precision_score(y == c, probs[:, c]) for c in range(8)])
    assert m["pr_auc"] == pytest.approx(ap)
    assert m["krippendorff_alpha"] == pytest.approx(krippendorff.alpha(np.vstack([y, pred]),
                                                                       level_of_measurement="nominal"))
    assert np.array(m["confusion_matrix"]).sum() == len(y) and notes == []


def test_classification_hand_values():
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]])
    m, _ = M.classification_metrics(y, probs, ["a", "b"])
    assert m["accuracy"] == 0.75
    # kappa: po = 0.75, pe = 0.5*0.25 + 0.5*0.75 = 0.5 -> 0.5
    assert m["kappa"] == pytest.approx(0.5)
    assert m["roc_auc"] == pytest.approx(1.0)  # every positive outranks every negative, both ways
    # nominal alpha, two coders, 4 units: Do = 1/4 mismatching pairs..., value from the definition:
    # pairable values 8, n_a=3 ('a' twice in truth, once in prediction), n_b=5; D_o = 2*1/8, D_e = 2*3*5/(8*7)
    assert m["krippendorff_alpha"] == pytest.approx(1 - (2 / 8) / (30 / 56))
    assert m["per_class"]["b"] == {"precision": pytest.approx(2 / 3), "recall": 1.0, "f1": pytest.approx(0.8),
                                   "support": 2}


def test_missing_class_is_reported_not_fatal():
    y, logits = random_case(classes=5)  # classes 5-7 never occur
    m = M.evaluate(logits, np.zeros((len(y), 2)), y, np.zeros((len(y), 2)) + 0.1, NAMES)
    probs = M.softmax(logits)
    onehot = np.eye(8)[y][:, :5]
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(onehot, probs[:, :5], average="macro"))
    assert any("Disgust, Anger, Contempt" in n for n in m["notes"])
    assert m["per_class"]["Contempt"]["support"] == 0


def test_constant_predictions_are_null_with_note():
    y, logits = random_case()
    va_true = np.random.default_rng(1).uniform(-1, 1, (len(y), 2))
    m = M.evaluate(logits, np.full((len(y), 2), 0.3), y, va_true, NAMES)
    assert m["valence"]["corr"] is None and m["arousal"]["corr"] is None
    assert any("valence CORR undefined" in n for n in m["notes"])
    json.dumps(m)  # null, not NaN


def test_classification_only_report():
    y, logits = random_case()
    m = M.evaluate(logits, np.zeros((len(y), 2)), y, None, NAMES)
    assert "valence" not in m and any("classification-only" in n for n in m["notes"])


def test_tta_changes_nothing_for_symmetric_input():
    torch.manual_seed(0)
    model = FERNet("resnet18").eval()
    x = torch.randn(4, 3, 32, 32)
    x = (x + x.flip(3)) / 2
    batch = {"image": x, "y_cls": torch.zeros(4, dtype=torch.long), "y_reg": torch.zeros(4, 2),
             "index": torch.arange(4)}
    plain = predict_batches(model, [batch], "cpu")
    tta = predict_batches(model, [batch], "cpu", tta=True)
    np.testing.assert_allclose(plain["logits"], tta["logits"], atol=1e-5)
    np.testing.assert_allclose(plain["va"], tta["va"], atol=1e-5)
    y = torch.randn(4, 3, 32, 32)  # and it does change an asymmetric one
    batch["image"] = y
    assert not np.allclose(predict_batches(model, [batch], "cpu")["logits"],
                           predict_batches(model, [batch], "cpu", tta=True)["logits"])


# --- the script ---------------------------------------------------------------------------------
def test_eval_end_to_end(trained, demo, tmp_path):
    r = run_script("eval_resnet50.py", "--checkpoint", trained, "--meta", demo["val"], "--out_dir", tmp_path,
                   "--save_predictions", tmp_path / "pred.csv", "--num_workers", 0)
    assert r.returncode == 0, r.stderr
    assert "Krippendorff's alpha" in r.stdout and "CCC" in r.stdout and "clipped to [-1, 1]" in r.stdout
    m = json.loads((tmp_path / "metrics_resnet50.json").read_text())
    for key in ("accuracy", "f1_macro", "kappa", "roc_auc", "pr_auc", "krippendorff_alpha", "n", "per_class",
                "confusion_matrix"):
        assert key in m
    assert set(m["valence"]) == {"rmse", "mae", "corr", "sagr", "ccc"} and m["n"] == 16
    for png in ("ConfusionMatrix_resnet50.png", "ValenceArousal_resnet50.png"):
        img = cv2.imread(str(tmp_path / png))
        assert img is not None and min(img.shape[:2]) >= 300
    # Everything can be recomputed from the predictions file.
    df = pd.read_csv(tmp_path / "pred.csv")
    probs = df[[f"prob_{n}" for n in NAMES]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-9)
    assert (df["y_pred"] == probs.argmax(1)).all()
    assert m["accuracy"] == pytest.approx((df["y_true"] == df["y_pred"]).mean())
    rmse_v = np.sqrt(((df["valence_true"] - df["valence_pred"]) ** 2).mean())
    assert m["valence"]["rmse"] == pytest.approx(rmse_v)
    assert df["arousal_pred"].between(-1, 1).all()
    # Training's validation accuracy of that checkpoint is the same number, by the same code.
    ckpt = torch.load(trained, weights_only=True)
    assert ckpt["metrics"]["val_acc"] == pytest.approx(m["accuracy"])
    assert ckpt["metrics"]["val_rmse_valence"] == pytest.approx(m["valence"]["rmse"])


def test_eval_without_va_columns(trained, demo, tmp_path):
    df = pd.read_parquet(demo["val"]).drop(columns=["valence", "arousal"])
    df.to_parquet(tmp_path / "cls.parquet")
    r = run_script("eval_resnet50.py", "--checkpoint", trained, "--meta", tmp_path / "cls.parquet",
                   "--out_dir", tmp_path, "--num_workers", 0, "--root", demo["root"])
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "metrics_resnet50.json").read_text())
    assert "valence" not in m and m["n"] == 16 and "classification-only" in r.stdout


@pytest.mark.parametrize("case", ["text", "torchvision", "wrong_arch", "no_columns"])
def test_eval_bad_inputs_one_line(trained, demo, tmp_path, case):
    ckpt, meta = trained, demo["val"]
    if case == "text":
        ckpt = tmp_path / "notes.pth"
        ckpt.write_text("hello")
    elif case == "torchvision":
        import torchvision
        ckpt = tmp_path / "resnet.pth"
        torch.save(torchvision.models.resnet18().state_dict(), ckpt)
    elif case == "wrong_arch":
        c = torch.load(trained, weights_only=True)
        c["arch"] = "resnet34"
        ckpt = tmp_path / "wrong.pth"
        torch.save(c, ckpt)
    else:
        meta = tmp_path / "m.parquet"
        pd.read_parquet(demo["val"]).drop(columns=["expression"]).to_parquet(meta)
    r = run_script("eval_resnet50.py", "--checkpoint", ckpt, "--meta", meta, "--out_dir", tmp_path,
                   "--num_workers", 0)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    line = r.stderr.strip().splitlines()
    assert len(line) == 1 and line[0].startswith("error: ")
    assert {"text": "notes.pth", "torchvision": "not a FER checkpoint", "wrong_arch": "do not fit a resnet34",
            "no_columns": "missing column(s) expression"}[case] in line[0]
