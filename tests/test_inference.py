"""predict.py on images, folders and videos; face detection; ONNX export."""
import json
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_here, run_script

from fer.model.checkpoint import model_from_checkpoint

PROBS = [f"prob_{n}" for n in ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt"]]


def test_predict_agrees_with_eval(trained, demo, tmp_path):
    r = run_script("eval_resnet50.py", "--checkpoint", trained, "--meta", demo["val"], "--out_dir", tmp_path,
                   "--save_predictions", tmp_path / "eval.csv", "--num_workers", 0)
    assert r.returncode == 0, r.stderr
    ev = pd.read_csv(tmp_path / "eval.csv").set_index("filename")
    folder = tmp_path / "faces"
    (folder / "sub").mkdir(parents=True)
    names = list(ev.index[:6])
    for k, name in enumerate(names):  # a nested folder: searched recursively
        shutil.copy(demo["root"] / "images" / name, folder / ("sub" if k % 2 else "") / name)
    (folder / "notes.txt").write_text("not an image")  # ignored: not an image extension
    r = run_script("predict.py", "--checkpoint", trained, folder, "--out", tmp_path / "pred.csv", "--batch_size", 4)
    assert r.returncode == 0, r.stderr
    pred = pd.read_csv(tmp_path / "pred.csv")
    assert len(pred) == 6 and pred["filename"].str.contains("sub").sum() == 3
    pred.index = [f.split("/")[-1] for f in pred["filename"]]
    np.testing.assert_allclose(pred.loc[names, PROBS].to_numpy(), ev.loc[names, PROBS].to_numpy(), atol=1e-3)
    np.testing.assert_allclose(pred.loc[names, "valence"], ev.loc[names, "valence_pred"], atol=1e-3)
    np.testing.assert_allclose(pred[PROBS].sum(axis=1), 1, atol=len(PROBS) * 0.5e-4)  # each rounded to 4 decimals
    assert (pred["confidence"] == pred[PROBS].max(axis=1)).all()
    assert pred["arousal"].between(-1, 1).all()


def test_predict_video_and_unreadable(trained, demo, tmp_path):
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (32, 32))
    for i in range(7):
        writer.write(cv2.imread(str(demo["root"] / "images" / f"{i}.jpg")))
    writer.release()
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    image = demo["root"] / "images" / "3.jpg"
    r = run_script("predict.py", "--checkpoint", trained, video, broken, image, "--out", tmp_path / "p.csv",
                   "--frame_step", 2, "--annotate", tmp_path / "ann")
    assert r.returncode == 0, r.stderr
    assert "skipped 1 unreadable" in r.stdout and "broken.jpg" in r.stdout
    df = pd.read_csv(tmp_path / "p.csv")
    frames = df[df["filename"] == str(video)]
    assert frames["frame"].tolist() == [0, 2, 4, 6]
    np.testing.assert_allclose(frames["time_s"], [0, 0.2, 0.4, 0.6], atol=1e-6)
    assert len(df) == 5
    annotated = cv2.imread(str(tmp_path / "ann" / "3.jpg"))
    assert annotated is not None and annotated.shape == (32, 32, 3)
    cap = cv2.VideoCapture(str(tmp_path / "ann" / "clip_annotated.mp4"))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 4


def test_face_detection(trained, tmp_path):
    from skimage import data

    face = tmp_path / "astronaut.png"  # a real photograph with one face, shipped with scikit-image
    cv2.imwrite(str(face), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    blank = tmp_path / "wall.png"
    cv2.imwrite(str(blank), np.full((200, 200, 3), 127, np.uint8))
    r = run_script("predict.py", "--checkpoint", trained, face, blank, "--detect_faces", "--out", tmp_path / "p.csv",
                   "--annotate", tmp_path / "ann")
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(tmp_path / "p.csv").set_index("filename")
    x, y, w, h = df.loc[str(face), ["face_x", "face_y", "face_w", "face_h"]]
    # The astronaut's face is around x 170-250, y 60-170 of the 512x512 picture.
    assert x < 200 < x + w and y < 110 < y + h and 60 < w < 250
    assert isinstance(df.loc[str(face), "expression"], str)
    assert pd.isna(df.loc[str(blank), "expression"]) and "no face found in 1 image(s): " + str(blank) in r.stdout
    assert df.loc[str(face), "face_index"] == 0 and "track_id" not in df.columns  # images only: no tracks
    assert cv2.imread(str(tmp_path / "ann" / "astronaut.png")).shape == (512, 512, 3)  # same name and format


def test_onnx_export_dynamic_batch_and_parity(trained, tmp_path):
    import onnxruntime as ort

    out = tmp_path / "m.onnx"
    r = run_script("export_onnx.py", "--checkpoint", trained, "--out", out)
    assert r.returncode == 0, r.stderr
    assert "max |diff|" in r.stdout
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["img_size"] == "32" and "Contempt" in meta["class_names"] and "mean" in meta["normalization"]
    assert json.loads(meta["heads_trained"]) == {"expression": True, "valence_arousal": True}
    model, _ = model_from_checkpoint(trained)
    for n in (1, 5):
        x = torch.randn(n, 3, 32, 32)
        logits, va = session.run(["logits", "valence_arousal"], {"image": x.numpy()})
        with torch.inference_mode():
            ref_logits, ref_va = model(x)
        assert logits.shape == (n, 8) and va.shape == (n, 2)
        np.testing.assert_allclose(logits, ref_logits.numpy(), atol=1e-4)
        np.testing.assert_allclose(va, ref_va.numpy(), atol=1e-4)


def test_predict_bad_checkpoint_one_line(tmp_path):
    bad = tmp_path / "x.pth"
    bad.write_text("nope")
    r = run_script("predict.py", "--checkpoint", bad, tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr and r.stderr.startswith("error: ")


@pytest.mark.parametrize("script", ["metadata_parallel.py", "FER_transform.py", "train_vggface2_resnet50.py",
                                    "eval_resnet50.py", "predict.py", "export_onnx.py", "make_demo_data.py",
                                    "bench.py"])
def test_help(script):
    r = run_here(script, "--help")
    assert r.returncode == 0 and "usage:" in r.stdout and "--" in r.stdout
