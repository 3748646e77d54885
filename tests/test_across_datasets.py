"""Classes by name, end to end: 7- and 8-class heads, evaluation across class sets, joint training,
fine-tuning from another dataset's checkpoint, and face-box crops."""
import json
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_here, tiny_args

from fer.constants import CLASS_NAMES, FACE_MARGIN
from fer.data.dataset import FERDataset, load_image
from fer.data.transforms import build_transforms

SEVEN = [c for c in CLASS_NAMES if c != "Contempt"]  # RAF-DB, FER2013


@pytest.fixture(scope="module")
def seven(demo, tmp_path_factory):
    """The demo split without Contempt and without valence/arousal: shaped like a RAF-DB index."""
    out = tmp_path_factory.mktemp("seven")
    paths = {}
    for split in ("train", "val"):
        df = pd.read_parquet(demo[split])
        df = df[df["expression"] != CLASS_NAMES.index("Contempt")].reset_index(drop=True)
        df["valence"] = df["arousal"] = np.nan
        paths[split] = out / f"metadata_{split}.parquet"
        df.to_parquet(paths[split])
    return paths


def evaluate(ckpt, meta, out_dir, *extra):
    r = run_here("eval_resnet50.py", "--checkpoint", ckpt, "--meta", meta, "--out_dir", out_dir,
                 "--num_workers", 0, "--save_predictions", out_dir / "pred.csv", *extra)
    assert r.returncode == 0, r.stderr
    return json.loads((out_dir / "metrics_resnet50.json").read_text()), pd.read_csv(out_dir / "pred.csv"), r.stdout


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


@pytest.fixture(scope="module")
def seven_model(seven, demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("seven_model")
    r = run_here("train_vggface2_resnet50.py", *tiny_args(demo, out, "--epochs", 1, "--train_meta", seven["train"],
                                                          "--val_meta", seven["val"]))
    assert r.returncode == 0, r.stderr
    assert "rmse n/a" in r.stdout  # no valence/arousal anywhere: classification only
    assert torch.load(out / "m.pth", weights_only=True)["heads_trained"] == {"expression": True,
                                                                            "valence_arousal": False}
    return out / "m.pth"


def test_seven_class_training_has_a_seven_way_head(seven_model, demo, tmp_path):
    ckpt = torch.load(seven_model, weights_only=True)
    assert ckpt["class_names"] == SEVEN and ckpt["model"]["fc_cls.weight"].shape[0] == 7
    # ... and evaluated on the 8-class set, the Contempt rows are left out, by name.
    m, pred, out = evaluate(seven_model, demo["val"], tmp_path)
    assert m["classes_scored"] == SEVEN and m["classes_left_out"]["evaluation_set"] == ["Contempt"]
    assert m["n"] == 14 and m["rows_not_scored"] == {"classes not in " + "+".join(SEVEN): 2}
    assert "valence" in m  # the model's V/A head is scored wherever the set has labels, with a note:
    assert any("valence/arousal head never trained" in n for n in m["notes"])


def test_init_from_another_dataset_reinitialises_the_head(trained, seven, demo, tmp_path):
    args = tiny_args(demo, tmp_path, "--epochs", 1, "--lr", 0, "--weight_decay", 0, "--train_meta", seven["train"],
                     "--val_meta", seven["val"], "--init_from", trained)
    r = run_here("train_vggface2_resnet50.py", *args)  # TINY has --no_pretrained: two sources of weights
    assert r.returncode == 2 and "--init_from gives the starting weights" in r.stderr
    r = run_here("train_vggface2_resnet50.py", *[a for a in args if a != "--no_pretrained"])
    assert r.returncode == 0, r.stderr
    assert "expression head re-initialised" in r.stdout and "Contempt" in r.stdout
    before, after = (torch.load(p, weights_only=True)["model"] for p in (trained, tmp_path / "m_last.pth"))
    assert after["fc_cls.weight"].shape == (7, 512)
    for k in ("backbone.conv1.weight", "backbone.layer4.1.conv2.weight", "fc_reg.weight"):
        assert torch.equal(before[k], after[k]), k  # lr 0: the copied weights are still the checkpoint's


def test_joint_training_on_two_indexes(demo, seven, tmp_path):
    other = pd.read_parquet(seven["train"])  # another dataset: its own copy of the images (the same image in
    shutil.copytree(demo["root"] / "images", tmp_path / "images")  # both indexes would be counted twice)
    other.attrs["images_dir"] = str(tmp_path / "images")
    other.to_parquet(tmp_path / "other.parquet")
    r = run_here("train_vggface2_resnet50.py", *tiny_args(demo, tmp_path, "--epochs", 1, "--steps_per_epoch", 1,
                                                          "--train_meta", demo["train"], tmp_path / "other.parquet"))
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("train classes:"))
    counts = dict(part.rsplit(" ", 1) for part in line.split(": ", 1)[1].split(", "))
    assert sum(map(int, counts.values())) == 48 + 42 and counts["Contempt"] == "6"


def test_face_box_is_cropped_with_the_margin(demo, tmp_path):
    df = pd.read_parquet(demo["val"]).iloc[:2].copy()
    photo = np.zeros((120, 160, 3), np.uint8)
    face = load_image(demo["root"] / "images" / df["filename"].iloc[0])
    photo[40:72, 70:102] = face  # a 32 px face inside a larger picture
    cv2.imwrite(str(tmp_path / "photo.png"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    df["filename"] = ["photo.png", "photo.png"]
    df["face_x"], df["face_y"], df["face_w"], df["face_h"] = [70.0, np.nan], [40.0, np.nan], [32.0, 32], [32.0, 32]
    df.to_parquet(tmp_path / "m.parquet")
    ds = FERDataset(tmp_path / "m.parquet", train=False, size=32, root=tmp_path, verbose=False)
    m = round(FACE_MARGIN * 32)
    expected = build_transforms(False, 32)(image=photo[40 - m:72 + m, 70 - m:102 + m])["image"]
    assert torch.equal(ds[0]["image"], expected)
    whole = build_transforms(False, 32)(image=photo)["image"]
    assert torch.equal(ds[1]["image"], whole)  # no box: the whole image


# --- every dataset format: index -> one tiny epoch -> evaluation ---------------------------------
FORMATS = {"affectnet": 48, "affectnet_csv": 48, "rafdb": 42, "fer2013": 42, "ferplus": 60, "folders": 48}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_format_trains_and_evaluates(fmt, trained, tmp_path):
    from fer.data import demo as make_demo_data
    make_demo_data.make_dataset(tmp_path / "data", FORMATS[fmt], size=None if fmt.startswith("fer") else 32,
                                seed=3, progress=False, fmt=fmt)
    r = run_here("metadata_parallel.py", "--format", fmt, "--root", tmp_path / "data", "--out_dir", tmp_path / "idx",
                 "--quiet")
    assert r.returncode == 0, r.stderr
    idx = tmp_path / "idx"
    r = run_here("train_vggface2_resnet50.py", *tiny_args({"train": idx / "metadata_train.parquet",
                                                           "val": idx / "metadata_val.parquet"},
                                                          tmp_path, "--epochs", 1, "--steps_per_epoch", 2))
    assert r.returncode == 0, r.stderr
    classes = sorted(set(pd.read_parquet(idx / "metadata_train.parquet")["expression"]))
    ckpt = torch.load(tmp_path / "m.pth", weights_only=True)
    assert ckpt["class_names"] == [CLASS_NAMES[c] for c in classes]
    split = "test" if (idx / "metadata_test.parquet").exists() else "val"
    m, pred, _ = evaluate(tmp_path / "m.pth", idx / f"metadata_{split}.parquet", tmp_path / "own")
    assert m["n"] == len(pred) > 0 and m["classes_scored"] == [c for c in ckpt["class_names"]
                                                                if c in set(pred["expression_true"])]
    # The AffectNet-8 demo model on this dataset: classes matched by name.
    m8, pred8, _ = evaluate(trained, idx / f"metadata_{split}.parquet", tmp_path / "cross")
    present = set(pd.read_parquet(idx / f"metadata_{split}.parquet")["expression"].map(CLASS_NAMES.__getitem__))
    assert m8["classes_scored"] == [c for c in CLASS_NAMES if c in present]
    assert set(pred8["expression_pred"]) <= present


def test_predict_and_onnx_carry_the_checkpoints_classes(seven_model, demo, tmp_path):
    import onnxruntime as ort
    r = run_here("predict.py", "--checkpoint", seven_model, demo["root"] / "images" / "0.jpg", "--out",
                 tmp_path / "p.csv")
    assert r.returncode == 0, r.stderr
    pred = pd.read_csv(tmp_path / "p.csv")
    assert [c for c in pred.columns if c.startswith("prob_")] == [f"prob_{c}" for c in SEVEN]
    r = run_here("export_onnx.py", "--checkpoint", seven_model, "--out", tmp_path / "m.onnx")
    assert r.returncode == 0, r.stderr
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert json.loads(session.get_modelmeta().custom_metadata_map["class_names"]) == SEVEN
    logits, _ = session.run(None, {"image": np.zeros((2, 3, 32, 32), np.float32)})
    assert logits.shape == (2, 7)
