"""fer/evaluation/evaluate.py (eval_resnet50.py) and its flags (fer/cli/evaluate.py): the evaluation end
to end, intervals and fingerprints, class sets, --recrop detect, two checkpoints compared, and the
outputs of an evaluation as one set.

The hostile cases (from the trust passes) each failed on the code before their fix: they check the exit
code, the one line that names the file or flag (no traceback), and that earlier outputs are unchanged.
"""
import json
import os
import shutil
import signal

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from builders import NAMES, SEVEN, evaluate, fill_disk, one_error_line, predict_csv, run_here, run_script, snapshot, with_index
from scipy.stats import binomtest

import fer.cli.evaluate as E
import fer.trust
from fer.constants import CLASS_NAMES
from fer.data.dataset import FERDataset


# --- the script ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_eval_end_to_end(trained, demo, tmp_path):
    r = run_script("eval_resnet50.py", "--checkpoint", trained, "--meta", demo["val"], "--out_dir", tmp_path,
                   "--save_predictions", tmp_path / "pred.csv", "--num_workers", 0)
    assert r.returncode == 0, r.stderr
    assert "Krippendorff's alpha" in r.stdout and "CCC" in r.stdout and "clipped to [-1, 1]" in r.stdout
    m = json.loads((tmp_path / "metrics_resnet18.json").read_text())
    for key in ("accuracy", "f1_macro", "kappa", "roc_auc", "pr_auc", "krippendorff_alpha", "n", "per_class",
                "confusion_matrix"):
        assert key in m
    assert set(m["valence"]) == {"rmse", "mae", "corr", "sagr", "ccc"} and m["n"] == 16
    for png in ("ConfusionMatrix_resnet18.png", "ValenceArousal_resnet18.png"):
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


@pytest.mark.slow
def test_eval_without_va_columns(trained, demo, tmp_path):
    df = pd.read_parquet(demo["val"]).drop(columns=["valence", "arousal"])
    df.to_parquet(tmp_path / "cls.parquet")
    r = run_script("eval_resnet50.py", "--checkpoint", trained, "--meta", tmp_path / "cls.parquet",
                   "--out_dir", tmp_path, "--num_workers", 0, "--root", demo["root"])
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "metrics_resnet18.json").read_text())
    assert "valence" not in m and m["n"] == 16 and "classification-only" in r.stdout


@pytest.mark.slow
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


# --- the index and evaluation --------------------------------------------------------------------
@pytest.mark.slow
def test_eval_recrop_detect_scores_the_crops_predict_makes(trained, faces_folder, tmp_path):
    r = run_here("metadata_parallel.py", "--root", faces_folder["root"], "--out_dir", tmp_path / "idx", "--quiet",
                 "--val_fraction", 0.4)
    assert r.returncode == 0, r.stderr
    meta = tmp_path / "idx" / "metadata_all.parquet"
    r = run_here("eval_resnet50.py", "--checkpoint", trained, "--meta", meta, "--out_dir", tmp_path, "--recrop",
                 "detect", "--num_workers", 0, "--all_classes", "--save_predictions", tmp_path / "pred.csv")
    assert r.returncode == 0, r.stderr
    recrop = json.loads((tmp_path / "metrics_resnet18.json").read_text())["recrop"]
    assert recrop["faces_found"] == 6 and recrop["no_face_examples"] == ["neutral/wall.png"]
    assert recrop["aligned_to_template"] and "--recrop detect: faces detected" in r.stdout
    # The probabilities are predict.py's for the same pictures (the face it finds is the only one).
    images = [faces_folder["root"] / name for name in faces_folder["truth"]]
    _, pred = predict_csv("--checkpoint", trained, *images, "--detect_faces", "--min_face", 20, "--out",
                          tmp_path / "p.csv")
    evaluated = pd.read_csv(tmp_path / "pred.csv").set_index("filename")
    probs = [c for c in evaluated.columns if c.startswith("prob_")]
    names = [str(p.relative_to(faces_folder["root"])) for p in images]
    np.testing.assert_allclose(evaluated.loc[names, probs].to_numpy(), pred[probs].to_numpy(),
                               atol=0.5e-4 + 1e-5)  # predict.py's CSV holds 4 decimals


# --- evaluation: intervals, fingerprints, two models ----------------------------------------------
@pytest.mark.slow
def test_eval_records_intervals_and_fingerprints(trained, demo, tmp_path):
    r = run_here("eval_resnet50.py", "--checkpoint", trained, "--meta", demo["val"], "--out_dir", tmp_path,
                 "--num_workers", 0, "--bootstrap", 200, "--save_predictions", tmp_path / "a.csv")
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "metrics_resnet18.json").read_text())
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
    off = json.loads((tmp_path / "off" / "metrics_resnet18.json").read_text())
    assert "ci95" not in off and "bootstrap" not in off and off["accuracy"] == m["accuracy"]

    # Two models on the same images, from the checkpoints and from saved predictions. A copy holds the same
    # weights: every difference is 0 (the same file twice is refused, see test_a_checkpoint_compared_with_itself_is_refused).
    shutil.copyfile(trained, tmp_path / "copy.pth")
    r = run_here("eval_resnet50.py", "--checkpoint", trained, tmp_path / "copy.pth", "--meta", demo["val"],
                 "--out_dir", tmp_path / "pair", "--num_workers", 0, "--bootstrap", 100)
    assert r.returncode == 0, r.stderr
    comp = json.loads((tmp_path / "pair" / "comparison_resnet18.json").read_text())
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


# --- classes by name: 7- and 8-class heads, joint training, face boxes ----------------------------
@pytest.mark.slow
def test_eight_class_model_on_a_seven_class_set(trained, seven, tmp_path):
    m, pred, out = evaluate(trained, seven["val"], tmp_path)
    assert m["classes_scored"] == SEVEN and m["classes_left_out"] == {"evaluation_set": [], "checkpoint": ["Contempt"]}
    assert "left out of the argmax: Contempt" in out and "valence" not in m
    assert "prob_Contempt" not in pred and set(pred["expression_pred"]) <= set(SEVEN)
    assert m["n"] == 14 and len(m["confusion_matrix"]) == 7
    # The argmax over the 7 scored columns of the 8-way logits, recomputed by hand.
    model_logits = _logits(trained, pred["filename"], seven["val"])
    expected = model_logits[:, [CLASS_NAMES.index(c) for c in SEVEN]].argmax(1)
    assert (pred["y_pred"].to_numpy() == expected).all()
    assert m["accuracy"] == pytest.approx((pred["y_true"] == pred["y_pred"]).mean())
    m_all, pred_all, _ = evaluate(trained, seven["val"], tmp_path, "--all_classes", "--overwrite")
    assert m_all["classes_scored"] == CLASS_NAMES and "prob_Contempt" in pred_all
    assert (pred_all["y_pred"].to_numpy() == model_logits.argmax(1)).all()


def _logits(ckpt, filenames, meta):
    from fer.model.checkpoint import model_from_checkpoint
    model, info = model_from_checkpoint(ckpt)
    ds = FERDataset(meta, train=False, size=info["img_size"], classes=SEVEN, verbose=False)
    order = [ds.filenames.index(f) for f in filenames]
    with torch.inference_mode():
        return model(torch.stack([ds[i]["image"] for i in order]))[0].numpy()


# --- evaluation: one evaluation per folder, titled ---------------------------------------------------
@pytest.mark.slow
def test_evaluation_refuses_a_used_folder_and_overwrite_replaces_the_whole_set(trained, demo, tmp_path,
                                                                                saved_figures):
    out = tmp_path / "ev"
    base = ["--checkpoint", trained, "--out_dir", out, "--num_workers", 0]
    r = run_here("eval_resnet50.py", *base, "--meta", demo["val"])
    assert r.returncode == 0, r.stderr
    assert f"checkpoint: {trained}\nevaluated: {demo['val']}\n" in r.stdout
    name = f"{trained.parent.name}/{trained.name} on {demo['val'].parent.name}/{demo['val'].name}"
    cm, va = saved_figures[:2]  # the pictures come first, then the report page's charts
    assert name in cm["titles"][0] and name in va["suptitle"]
    m = json.loads((out / "metrics_resnet18.json").read_text())
    assert m["checkpoint"] == str(trained) and m["meta"] == [str(demo["val"])]
    assert va["titles"] == [f"{k}: CCC {m[k]['ccc']:.3f}, RMSE {m[k]['rmse']:.3f}" for k in ("valence", "arousal")]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) - {".evaluation.fer-outputs.json"} == \
        set(E.outputs("resnet18")) - {E.outputs("resnet18")[4], E.outputs("resnet18")[5]}  # and the set's manifest
    # A classification-only index into the same folder: refused, nothing touched ...
    df = pd.read_parquet(demo["val"]).drop(columns=["valence", "arousal"])
    df.attrs = pd.read_parquet(demo["val"]).attrs
    df.to_parquet(tmp_path / "cls.parquet")
    r = run_here("eval_resnet50.py", *base, "--meta", tmp_path / "cls.parquet")
    assert r.returncode == 1 and "holds an earlier evaluation" in r.stderr and "--overwrite" in r.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # ... and with --overwrite the whole set is this evaluation's: no stale valence/arousal picture.
    first = len(saved_figures)
    r = run_here("eval_resnet50.py", *base, "--meta", tmp_path / "cls.parquet", "--overwrite")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir() if p.name != ".evaluation.fer-outputs.json") == sorted(E.outputs("resnet18")[:2] + E.outputs("resnet18")[3:4])
    assert "removed ValenceArousal" in r.stdout and "cls.parquet" in saved_figures[first]["titles"][0]
    # The rule covers --save_predictions too.
    (tmp_path / "p.csv").write_text("earlier")
    r = run_here("eval_resnet50.py", *base, "--meta", demo["val"], "--out_dir", tmp_path / "ev2",
                 "--save_predictions", tmp_path / "p.csv")
    assert r.returncode == 1 and "--save_predictions" in r.stderr and (tmp_path / "p.csv").read_text() == "earlier"


# --- 1. nothing that exists is destroyed by a run that fails ------------------------------------
def test_eval_on_a_full_disk_keeps_the_old_report(trained, demo, mount):
    def old_report(d):
        for name in ("metrics_resnet18.json", "ConfusionMatrix_resnet18.png", "ValenceArousal_resnet18.png"):
            (d / name).write_bytes(b"last month's " + name.encode())
        fill_disk(d, leave=16 * 1024)  # the JSON fits, the PNGs do not
    disk = mount("512k", fill=old_report)
    before = snapshot(disk)
    r = run_here("eval_resnet50.py", "--checkpoint", trained, "--meta", demo["val"], "--out_dir", disk,
                   "--num_workers", 0, "--overwrite")  # without it: refused, the folder holds an evaluation
    one_error_line(r, "no space left on device writing", disk)
    assert snapshot(disk) == before


# --- 6. one line everywhere ---------------------------------------------------------------------
def test_eval_with_loader_workers_is_one_line(trained, demo, tmp_path):
    df = pd.read_parquet(demo["val"])
    df.loc[2, "filename"] = "gone.jpg"
    df.to_parquet(tmp_path / "m.parquet")
    r = run_here("eval_resnet50.py", "--checkpoint", trained, "--meta", tmp_path / "m.parquet",
                   "--out_dir", tmp_path / "out", "--num_workers", 2)
    one_error_line(r, "gone.jpg: file not found")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# --- silent wrong results -----------------------------------------------------------------------
@pytest.mark.slow
def test_one_scored_class_is_not_a_score(trained, demo, tmp_path):
    one = with_index(demo["val"], tmp_path / "one.parquet", lambda df: df[df["expression"] == 1])
    one_error_line(run_here("eval_resnet50.py", "--checkpoint", trained, "--meta", one, "--out_dir", tmp_path,
                            "--num_workers", 0), "one.parquet", "only one class", "Happy", "--all_classes")
    assert not (tmp_path / "metrics_resnet18.json").exists()
    r = run_here("eval_resnet50.py", "--checkpoint", trained, "--meta", one, "--out_dir", tmp_path,
                 "--num_workers", 0, "--all_classes")
    assert r.returncode == 0 and "WARNING: the evaluation set holds one class only (Happy)" in r.stderr, r.stderr
    assert "one class only" in pd.read_json(tmp_path / "metrics_resnet18.json", typ="series")["notes"][0]


# --- found by the hostile pass over evaluation, the report page and the export --------------------
EVAL = "eval_resnet50.py"


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
    comp = json.loads((tmp_path / "comparison_resnet18.json").read_text())
    assert any(n.startswith("A and B hold the same weights") for n in comp["notes"])
    assert any(n.startswith("B: ") and "never trained" in n for n in comp["notes"])
    assert "note: B: " in r.stdout and "A: " not in "".join(comp["notes"])


def test_comparison_overwrite_never_removes_a_folder_named_like_an_output(trained, demo, tmp_path):
    """A folder metrics_resnet18.json/ in --out_dir was removed with everything in it by a comparison
    with --overwrite (one evaluation refuses such a folder)."""
    import torch
    ckpt = torch.load(trained, weights_only=True)
    ckpt["model"] = {k: v + 1e-3 if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    torch.save(ckpt, tmp_path / "b.pth")
    folder = tmp_path / "out" / "metrics_resnet18.json"
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
    line = one_error_line(r, image)
    assert "image of --meta" in line or "is a dataset image" in line  # trust rule 2 (fer.trust.check_outputs)
    assert image.read_bytes() == before and not (tmp_path / "out").exists()


def test_ctrl_c_during_the_commit_does_not_leave_two_evaluations_in_one_folder(trained, demo, tmp_path, monkeypatch):
    """--overwrite with a classification-only set over a valence/arousal evaluation: a Ctrl-C held back
    through the renames arrived before the earlier ValenceArousal picture was removed, so the folder
    held the new metrics beside the old picture."""
    out = tmp_path / "out"
    flags = ["--checkpoint", trained, "--out_dir", out, "--num_workers", 0, "--bootstrap", 0, "--report", "off"]
    assert run_here(EVAL, *flags, "--meta", demo["val"]).returncode == 0
    assert (out / "ValenceArousal_resnet18.png").exists()
    no_va = with_index(demo["val"], tmp_path / "no_va.parquet", lambda df: df.drop(columns=["valence", "arousal"]))
    real = os.replace

    def replace_then_ctrl_c(src, dst):
        real(src, dst)
        os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.setattr(fer.trust.os, "replace", replace_then_ctrl_c)
    r = run_here(EVAL, *flags, "--meta", no_va, "--overwrite")
    assert r.returncode == 130, r.stderr
    monkeypatch.undo()
    assert sorted(p.name for p in out.iterdir() if p.name != ".evaluation.fer-outputs.json") == \
        ["ConfusionMatrix_resnet18.png", "metrics_resnet18.json"]
    assert "valence" not in json.loads((out / "metrics_resnet18.json").read_text())


def test_names_come_from_the_checkpoints_architecture(trained, demo, tmp_path, monkeypatch):
    """Issue 26: every evaluation was metrics_resnet50.json whatever trained. The names come from the arch the
    checkpoint records (read without torch), a checkpoint under the old name FER_resnet50.pth still loads, and
    without --checkpoint the one FER_<arch>.pth of the folder is used."""
    import subprocess
    import sys

    from fer.cli import model_name

    old = tmp_path / "FER_resnet50.pth"
    shutil.copy(trained, old)
    assert model_name(old) == "resnet18" and model_name(tmp_path / "FER_convnext_tiny.pth") == "convnext_tiny"
    code = f"import sys; from fer.cli import model_name; print(model_name({str(old)!r}), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=E.__file__.rsplit("/fer/", 1)[0])
    assert out.stdout.split() == ["resnet18", "False"], out.stderr
    monkeypatch.chdir(tmp_path)
    args = E.get_args(["--meta", str(demo["val"]), "--out_dir", "out"])
    assert args.checkpoint == "FER_resnet50.pth" and args.outputs[0] == "metrics_resnet18.json"
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "metrics_resnet50.json").write_text("{}")  # an earlier evaluation of another model
    with pytest.raises(fer.trust.FERError, match="holds an earlier evaluation"):
        E.get_args(["--meta", str(demo["val"]), "--out_dir", "out"])


# --- calibration: --calibrate fits a temperature on one split and records it in the checkpoint -----
@pytest.mark.slow
def test_a_checkpoint_calibrated_in_an_evaluation_folder_survives_the_next_evaluation_there(trained, demo, tmp_path):
    """make demo's layout: the checkpoint beside its evaluation. --calibrate rewrote it in the evaluation's
    commit, so the output set's manifest listed it, and the next `--overwrite` evaluation of another
    checkpoint into that folder removed it as a stale output."""
    folder = tmp_path / "run"
    folder.mkdir()
    ckpt, other = folder / "m.pth", tmp_path / "other.pth"
    shutil.copy(trained, ckpt)
    shutil.copy(trained, other)
    for argv in ([ckpt, "--calibrate"], [other, "--overwrite"]):
        r = run_here("eval_resnet50.py", "--checkpoint", argv[0], "--meta", demo["val"], "--out_dir", folder,
                     "--num_workers", 0, "--bootstrap", 0, *argv[1:])
        assert r.returncode == 0, r.stderr
    assert ckpt.is_file() and "m.pth" not in r.stdout


@pytest.mark.slow
def test_calibrate_records_the_temperature_and_the_page_names_the_split(trained, demo, tmp_path):
    from fer.evaluation.metrics import fit_temperature
    from fer.model.checkpoint import read_checkpoint, weights_fingerprint

    ckpt = tmp_path / "m.pth"
    shutil.copy(trained, ckpt)
    meta0, state0 = read_checkpoint(ckpt)
    r = run_here("eval_resnet50.py", "--checkpoint", ckpt, "--meta", demo["val"], "--out_dir", tmp_path / "val",
                 "--num_workers", 0, "--save_predictions", tmp_path / "val.csv", "--calibrate", "--bootstrap", 200)
    assert r.returncode == 0, r.stderr
    meta, state = read_checkpoint(ckpt)
    cal = meta["calibration"]
    assert weights_fingerprint(state) == weights_fingerprint(state0)  # weights and other fields as they were
    assert set(meta) - {"calibration"} == set(meta0) and all(meta[k] == meta0[k] for k in ("arch", "img_size", "class_names",
                                                                                          "metrics", "run"))
    assert cal["fitted_on"][0]["path"] == str(demo["val"]) and cal["n"] == 16
    pred = pd.read_csv(tmp_path / "val.csv")
    logits = np.log(pred[[f"prob_{n}" for n in NAMES]].to_numpy())  # log-probabilities: logits up to a row constant
    assert cal["temperature"] == pytest.approx(fit_temperature(logits, pred["y_true"].to_numpy()), rel=1e-4)
    assert (pred["probabilities"] == "raw").all()
    m = json.loads((tmp_path / "val" / "metrics_resnet18.json").read_text())
    assert m["calibrated"]["same_split"] and m["calibrated"]["fitted_here"]
    assert m["calibrated"]["after"]["nll"] <= m["calibrated"]["before"]["nll"] + 1e-12
    assert len(m["calibrated"]["before"]["ece_ci95"]) == 2 and len(m["ci95"]["ece"]) == 2
    page = (tmp_path / "val" / "report_resnet18.html").read_text()
    assert "Calibrated confidence" in page and "WARNING: the temperature" in page and "fitted on the evaluated split" in r.stdout
    # Another split: the checkpoint's temperature is applied, and the page says where it was fitted, without a warning.
    r = run_here("eval_resnet50.py", "--checkpoint", ckpt, "--meta", demo["train"], "--out_dir", tmp_path / "train",
                 "--num_workers", 0, "--bootstrap", 0)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "train" / "metrics_resnet18.json").read_text())
    assert m["calibrated"]["temperature"] == cal["temperature"] and not m["calibrated"]["same_split"]
    assert not m["calibrated"]["fitted_here"] and "ece_ci95" not in m["calibrated"]["before"]
    page = (tmp_path / "train" / "report_resnet18.html").read_text()
    assert "WARNING: the temperature" not in page and str(demo["val"]) in page.split('id="calibrated"')[1]
    assert read_checkpoint(ckpt)[0]["calibration"] == cal  # evaluating without --calibrate writes nothing into it


@pytest.mark.slow
def test_a_malformed_temperature_is_one_line_and_calibrate_needs_one_checkpoint(trained, demo, tmp_path):
    ckpt = tmp_path / "m.pth"
    obj = torch.load(trained, weights_only=True)
    torch.save({**obj, "calibration": {"temperature": -1.0}}, ckpt)
    before = ckpt.read_bytes()
    r = run_here("eval_resnet50.py", "--checkpoint", ckpt, "--meta", demo["val"], "--out_dir", tmp_path / "o",
                 "--num_workers", 0, "--bootstrap", 0)
    one_error_line(r, "calibration.temperature", str(ckpt))
    assert ckpt.read_bytes() == before and not (tmp_path / "o" / "metrics_resnet18.json").exists()
    r = run_here("eval_resnet50.py", "--checkpoint", trained, ckpt, "--meta", demo["val"], "--out_dir", tmp_path / "o",
                 "--calibrate")
    one_error_line(r, "--calibrate")


def test_rule2_eval_never_writes_its_plots_into_a_dataset(tmp_path):
    """Hostile pass 2026-12-03: --out_dir <dataset>/images put the confusion-matrix and valence/arousal PNGs
    and the report page among the dataset's images; refused before the model is loaded."""
    from builders import tree

    from fer.trust import FERError

    root, images, _ = tree(tmp_path, n=16)
    (tmp_path / "m.parquet").write_bytes(b"")
    for out in (images, root / "eval"):
        with pytest.raises(FERError, match="lies in the dataset"):
            E.get_args(["--checkpoint", str(tmp_path / "FER_resnet18.pth"), "--meta", str(tmp_path / "m.parquet"),
                        "--out_dir", str(out), "--bootstrap", "0"])
    assert sorted(p.name for p in images.iterdir() if not p.name.endswith(".jpg")) == []


def test_a_recorded_arch_never_names_files_outside_the_folder_nor_a_users_file_an_evaluation(tmp_path):
    """The arch a checkpoint records became part of the output names (metrics_../../x.json: written outside
    --out_dir); and metrics_summary.json, a user's file, counted as an earlier evaluation, which --overwrite
    deleted."""
    from fer.cli import model_name

    hostile = tmp_path / "FER_mine.pth"
    torch.save({"arch": "../../x", "model": {}}, hostile)
    assert model_name(hostile) == "mine"
    torch.save({"arch": "resnet18", "model": {}}, hostile)
    assert model_name(hostile) == "resnet18"
    (tmp_path / "metrics_summary.json").write_text("{}")
    (tmp_path / "metrics_resnet18.json").write_text("{}")
    (tmp_path / "report_mine.html").write_text("")
    assert [p.name for p in E.evaluation_files(tmp_path)] == ["metrics_resnet18.json"]
    assert [p.name for p in E.evaluation_files(tmp_path, "mine")] == ["metrics_resnet18.json", "report_mine.html"]
