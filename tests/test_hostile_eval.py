"""Hostile pass over evaluation, the report page and the export: each bug found, closed.

Every test fails on the code before its fix and passes after. They reuse the session fixtures
(`demo`, `trained`) and run the scripts in-process (`run_here`); none trains a model.
"""
import json
import os
import shutil
import signal
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import run_here
from test_trust import one_error_line
from test_trust_second import with_index

import fer.trust
from fer.evaluation import metrics as M
from fer.evaluation.report import render

EVAL = "eval_resnet50.py"

NAMES = ["Neutral", "Happy", "Sad"]


def partly_labelled(n=400, seed=0):
    """A set where valence is missing on half the rows and arousal on a few, and arousal is badly
    predicted exactly where valence is missing."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3)) + np.eye(3)[y]
    va_true = rng.uniform(-1, 1, (n, 2))
    va_pred = va_true + rng.normal(0, 0.1, (n, 2))
    va_pred[: n // 2, 1] = va_true[: n // 2, 1] + rng.normal(0, 0.8, n // 2)
    va_true[: n // 2, 0] = np.nan
    va_true[-10:, 1] = np.nan
    return logits, va_pred, y, va_true


# --- bootstrap intervals ------------------------------------------------------------------------
def test_interval_belongs_to_its_point_estimate_when_a_dimension_is_partly_missing():
    """Each dimension's interval was resampled over the rows with *both* labels while its point estimate
    uses the rows with that label: arousal 0.47 came with the interval [0.09, 0.10]."""
    logits, va_pred, y, va_true = partly_labelled()
    point = M.flatten(M.evaluate(logits, va_pred, y, va_true, NAMES))
    same = M.bootstrap_metrics(np.arange(len(y))[None], logits, y, va_pred, va_true, NAMES)  # the set itself
    for key, values in same.items():
        if point.get(key) is not None:
            assert values[0] == pytest.approx(point[key]), key
    ci = M.bootstrap_report(M.bootstrap_metrics(M.bootstrap_indices(len(y), 300, 0), logits, y, va_pred, va_true,
                                                NAMES), 300, 0)["ci95"]
    for dim in ("valence", "arousal"):
        lo, hi = ci[dim]["rmse"]
        assert lo <= point[f"{dim}.rmse"] <= hi, dim


def test_a_dimension_without_labels_has_no_interval_and_the_other_keeps_its_own():
    """No valence at all: arousal had no interval (and 'valence.rmse 0' resamples was reported)."""
    logits, va_pred, y, va_true = partly_labelled()
    va_true[:, 0] = np.nan
    samples = M.bootstrap_metrics(M.bootstrap_indices(len(y), 100, 0), logits, y, va_pred, va_true, NAMES)
    assert not any(k.startswith("valence.") for k in samples) and "rmse_combined" not in samples
    report = M.bootstrap_report(samples, 100, 0)
    assert report["bootstrap"]["used"]["arousal.rmse"] == 100 and report["ci95"]["arousal"]["ccc"] is not None


# --- eval_resnet50.py: flags --------------------------------------------------------------------
@pytest.mark.parametrize("flags,needle", [
    (["--bootstrap", "99999999999999999999999"], "--bootstrap"),  # was a traceback after the evaluation
    (["--bootstrap", "1"], "--bootstrap 1: too few resamples"),  # was a "95 % interval" of one value
    (["--recrop", "detect", "--detector", "haar", "--face_threshold", "0.5"], "--face_threshold"),  # traceback
    (["--detector", "haar", "--min_face", "30"], "--detector, --min_face: only with --recrop detect"),  # ignored
])
def test_eval_flags_fail_in_one_line_before_any_work(tmp_path, flags, needle):
    r = run_here(EVAL, "--checkpoint", tmp_path / "missing.pth", "--out_dir", tmp_path / "out", *flags)
    assert r.returncode == 2 and needle in one_error_line(r)
    assert not (tmp_path / "out").exists()


# --- eval_resnet50.py: two checkpoints ----------------------------------------------------------
def test_a_checkpoint_compared_with_itself_is_refused(trained, demo, tmp_path):
    """The same file twice, or through a link, gave a comparison of zeros with exit 0."""
    link = tmp_path / "link.pth"
    link.symlink_to(trained)
    for b in (trained, link):
        r = run_here(EVAL, "--checkpoint", trained, b, "--meta", demo["val"], "--out_dir", tmp_path / "out",
                     "--num_workers", 0, "--bootstrap", 0)
        assert "is the same file as" in one_error_line(r, b)
    assert not (tmp_path / "out").exists()


def test_comparison_checks_root_like_one_evaluation(trained, tmp_path):
    """Two checkpoints and a missing --root: the error named an image (after loading the first model)."""
    r = run_here(EVAL, "--checkpoint", trained, tmp_path / "b.pth", "--meta", tmp_path / "m.parquet",
                 "--root", tmp_path / "gone", "--out_dir", tmp_path / "out")
    assert "--root" in one_error_line(r, tmp_path / "gone")


def test_comparison_keeps_each_models_notes(trained, demo, tmp_path):
    """A copy of A as B: said to hold the same weights. The notes of each model's own evaluation (here
    the copy's untrained valence/arousal head) were dropped from the comparison."""
    import torch
    ckpt = torch.load(trained, weights_only=True)
    ckpt["heads_trained"] = {"expression": True, "valence_arousal": False}
    torch.save(ckpt, tmp_path / "b.pth")
    r = run_here(EVAL, "--checkpoint", trained, tmp_path / "b.pth", "--meta", demo["val"], "--out_dir", tmp_path,
                 "--num_workers", 0, "--bootstrap", 0)
    assert r.returncode == 0, r.stderr
    comp = json.loads((tmp_path / "comparison_resnet50.json").read_text())
    assert any(n.startswith("A and B hold the same weights") for n in comp["notes"])
    assert any(n.startswith("B: ") and "never trained" in n for n in comp["notes"])
    assert "note: B: " in r.stdout and "A: " not in "".join(comp["notes"])


def test_comparison_overwrite_never_removes_a_folder_named_like_an_output(trained, demo, tmp_path):
    """A folder metrics_resnet50.json/ in --out_dir was removed with everything in it by a comparison
    with --overwrite (one evaluation refuses such a folder)."""
    import torch
    ckpt = torch.load(trained, weights_only=True)
    ckpt["model"] = {k: v + 1e-3 if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    torch.save(ckpt, tmp_path / "b.pth")
    folder = tmp_path / "out" / "metrics_resnet50.json"
    folder.mkdir(parents=True)
    (folder / "precious.txt").write_text("mine")
    r = run_here(EVAL, "--checkpoint", trained, tmp_path / "b.pth", "--meta", demo["val"], "--out_dir", tmp_path / "out",
                 "--num_workers", 0, "--bootstrap", 0, "--overwrite")
    assert "is a folder" in one_error_line(r, folder)
    assert (folder / "precious.txt").read_text() == "mine"


# --- eval_resnet50.py: outputs onto inputs ------------------------------------------------------
def test_save_predictions_never_replaces_an_evaluated_image(trained, demo, tmp_path):
    """--save_predictions onto an image of the evaluated set, with --overwrite: the image became a CSV."""
    data = tmp_path / "data"
    shutil.copytree(demo["root"], data)
    image = data / "images" / pd.read_parquet(demo["val"])["filename"].iloc[0]
    before = image.read_bytes()
    r = run_here(EVAL, "--checkpoint", trained, "--meta", demo["val"], "--root", data, "--out_dir", tmp_path / "out",
                 "--save_predictions", image, "--overwrite", "--num_workers", 0, "--bootstrap", 0, "--report", "off")
    assert "image of --meta" in one_error_line(r, image)
    assert image.read_bytes() == before and not (tmp_path / "out").exists()


def test_ctrl_c_during_the_commit_does_not_leave_two_evaluations_in_one_folder(trained, demo, tmp_path, monkeypatch):
    """--overwrite with a classification-only set over a valence/arousal evaluation: a Ctrl-C held back
    through the renames arrived before the earlier ValenceArousal picture was removed, so the folder
    held the new metrics beside the old picture."""
    out = tmp_path / "out"
    flags = ["--checkpoint", trained, "--out_dir", out, "--num_workers", 0, "--bootstrap", 0, "--report", "off"]
    assert run_here(EVAL, *flags, "--meta", demo["val"]).returncode == 0
    assert (out / "ValenceArousal_resnet50.png").exists()
    no_va = with_index(demo["val"], tmp_path / "no_va.parquet", lambda df: df.drop(columns=["valence", "arousal"]))
    real = os.replace

    def replace_then_ctrl_c(src, dst):
        real(src, dst)
        os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.setattr(fer.trust.os, "replace", replace_then_ctrl_c)
    r = run_here(EVAL, *flags, "--meta", no_va, "--overwrite")
    assert r.returncode == 130, r.stderr
    monkeypatch.undo()
    assert sorted(p.name for p in out.iterdir()) == ["ConfusionMatrix_resnet50.png", "metrics_resnet50.json"]
    assert "valence" not in json.loads((out / "metrics_resnet50.json").read_text())


# --- export_onnx.py -----------------------------------------------------------------------------
def test_export_without_onnxruntime_says_so_before_exporting(trained, tmp_path, monkeypatch):
    """onnxruntime missing: a traceback after the (slow) export, from the parity check."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails, find_spec finds nothing: not installed
    r = run_here("export_onnx.py", "--checkpoint", trained, "--out", tmp_path / "m.onnx")
    assert r.returncode == 1 and "onnxruntime not installed" in one_error_line(r)
    assert list(tmp_path.iterdir()) == []


# --- FER_report.py ------------------------------------------------------------------------------
def test_page_shows_a_name_with_a_bidi_override_as_it_is_spelled(tmp_path):
    """'a\\u202eevil.jpg' was shown as 'agpj.live': the override reversed the rest of the caption."""
    pass
    rng = np.random.default_rng(0)
    y = np.arange(12) % 3
    logits = rng.normal(size=(12, 3)) + np.eye(3)[y]
    m = M.evaluate(logits, np.zeros((12, 2)), y, None, NAMES)
    names = ["a\u202eevil.jpg"] + [f"{i}.jpg" for i in range(1, 12)]
    page = render(m, {"logits": logits, "y_cls": y, "va": np.zeros((12, 2)), "y_reg": None},
                             [str(tmp_path / n) for n in names], names)
    assert "\u202e" not in page and "a[U+202E]evil.jpg" in page
