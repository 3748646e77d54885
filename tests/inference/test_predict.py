"""fer/inference/predict.py (predict.py) and its flags (fer/cli/predict.py): images, folders and videos,
agreement with evaluation, faces detected and aligned onto the checkpoint's template, and predict.py as
a hostile user runs it (bad flags and paths, special files, damaged videos, full disks, Ctrl-C, failing
threads).

The hostile cases (from the trust passes) each failed on the code before their fix: they check the exit
code, the one line that names the file or flag (no traceback), and that earlier outputs are unchanged.
"""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from builders import (
    ROOT,
    assert_one_line_error,
    astronaut,
    face_video,
    interruptible,
    one_error_line,
    predict_csv,
    run_here,
    run_script,
)
from PIL import Image
from skimage import data

import fer.inference.predict
import predict
from fer.cli import run_main
from fer.constants import FACE_MARGIN, POINT_COLUMNS
from fer.data.faces import MTCNNDetector
from fer.data.transforms import build_transforms

PROBS = [f"prob_{n}" for n in ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt"]]


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_predict_bad_checkpoint_one_line(tmp_path):
    bad = tmp_path / "x.pth"
    bad.write_text("nope")
    r = run_script("predict.py", "--checkpoint", bad, tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr and r.stderr.startswith("error: ")


# --- predict.py ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_predict_aligns_every_face_and_reports_landmarks(trained, group, tmp_path):
    r, df = predict_csv("--checkpoint", trained, group["path"], "--detect_faces", "--out", tmp_path / "p.csv",
                        "--annotate", tmp_path / "ann")
    assert len(df) == 4 and df["expression"].notna().all() and "note:" not in r.stdout
    assert df["face_index"].tolist() == [0, 1, 2, 3]
    points = df[POINT_COLUMNS].to_numpy(float).reshape(-1, 5, 2)
    for t, angle in zip(group["truth"], group["angles"]):
        k = np.argmin([np.abs(p - t).max() for p in points])
        assert np.abs(points[k] - t).max() < 8 and abs(df["rotation"][k] - angle) < 6
        # The box drawn and reported is the detector's box with the margin: it holds the face.
        x, y, w, h = df.loc[k, ["face_x", "face_y", "face_w", "face_h"]]
        assert (t >= (x, y)).all() and (t <= (x + w, y + h)).all()
    assert cv2.imread(str(tmp_path / "ann" / "group.png")).shape == (400, 640, 3)


def old_haar_crops(rgb):
    """predict.py's crops before this change, verbatim: Haar boxes with minSize a tenth of the shorter
    side, widened by FACE_MARGIN of the larger side, largest first."""
    from pathlib import Path
    cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"))
    gray = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    faces = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(max(24, min(gray.shape) // 10),) * 2)
    boxes = []
    for x, y, w, h in sorted(faces, key=lambda f: -f[2] * f[3]):
        m = int(round(FACE_MARGIN * max(w, h)))
        x0, y0 = max(0, x - m), max(0, y - m)
        x1, y1 = min(rgb.shape[1], x + w + m), min(rgb.shape[0], y + h + m)
        boxes.append((int(x0), int(y0), int(x1 - x0), int(y1 - y0)))
    return boxes


@pytest.mark.slow
def test_align_box_with_haar_reproduces_the_old_crops(trained, tmp_path):
    from fer.evaluation.metrics import softmax
    from fer.model.checkpoint import model_from_checkpoint
    from fer.model.forward import infer

    path = tmp_path / "astronaut.png"
    rgb = astronaut()
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    boxes = old_haar_crops(rgb)
    assert boxes
    _, df = predict_csv("--checkpoint", trained, path, "--detect_faces", "--detector", "haar", "--align", "box",
                        "--min_face", min(rgb.shape[:2]) // 10, "--out", tmp_path / "p.csv")
    assert [tuple(b) for b in df[["face_x", "face_y", "face_w", "face_h"]].to_numpy()] == boxes
    assert df[POINT_COLUMNS + ["rotation"]].isna().all().all()  # the cascade gives no landmarks
    model, meta = model_from_checkpoint(trained)
    t = build_transforms(False, meta["img_size"])
    logits, _ = infer(model, torch.stack([t(image=rgb[y:y + h, x:x + w])["image"] for x, y, w, h in boxes]), "cpu")
    np.testing.assert_allclose(df[[f"prob_{c}" for c in meta["class_names"]]].to_numpy(), softmax(logits.numpy()),
                               atol=0.5e-4 + 1e-6)  # predict.py's CSV holds 4 decimals


@pytest.mark.slow
def test_without_a_template_prediction_falls_back_to_the_box_with_a_note(trained, group, tmp_path):
    ckpt = torch.load(trained, weights_only=True)
    _, boxed = predict_csv("--checkpoint", trained, group["path"], "--detect_faces", "--align", "box", "--out",
                           tmp_path / "box.csv")
    for name, change in (("null.pth", {"crop_template": None}), ("old.pth", None)):
        c = dict(ckpt, **change) if change else {k: v for k, v in ckpt.items() if k != "crop_template"}
        torch.save(c, tmp_path / name)
        r, df = predict_csv("--checkpoint", tmp_path / name, group["path"], "--detect_faces", "--out",
                            tmp_path / f"{name}.csv")
        assert "note: --align template: the checkpoint records no crop_template" in r.stdout
        pd.testing.assert_frame_equal(df, boxed)
    r = run_here("predict.py", "--checkpoint", trained, group["path"], "--detect_faces", "--detector", "haar",
                 "--out", tmp_path / "h.csv")
    assert r.returncode == 0 and "note: --align template: the haar detector gives no landmarks" in r.stdout


@pytest.mark.parametrize("flags, message", [
    (["--detector", "haar", "--face_threshold", "0.5"], "--face_threshold is for --detector mtcnn"),
    (["--min_face", "5"], "argument --min_face: 5 must be >= 12"),
    (["--face_threshold", "1"], "argument --face_threshold: 1 must be < 1"),
    (["--align", "eyes"], "argument --align: invalid choice"),
])
def test_bad_detector_flags_one_line(trained, group, tmp_path, flags, message):
    r = run_here("predict.py", "--checkpoint", trained, group["path"], "--detect_faces", *flags, "--out",
                 tmp_path / "p.csv")
    assert r.returncode in (1, 2) and message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.slow
def test_a_malformed_template_is_named(trained, group, tmp_path):
    torch.save(dict(torch.load(trained, weights_only=True), crop_template=[[0.1, 0.2]] * 3), tmp_path / "bad.pth")
    r = run_here("predict.py", "--checkpoint", tmp_path / "bad.pth", group["path"], "--detect_faces", "--out",
                 tmp_path / "p.csv")
    assert r.returncode == 1 and f"{tmp_path / 'bad.pth'}: field crop_template" in r.stderr
    assert "is not 5 points" in r.stderr


# --- untrained heads -------------------------------------------------------------------------------
@pytest.mark.slow
def test_predict_marks_an_untrained_head_and_speaks_per_image(trained, no_va, demo, tmp_path):
    images = sorted((demo["root"] / "images").glob("*.jpg"), key=lambda p: int(p.stem))
    r = run_here("predict.py", "--checkpoint", trained, *images[:2], "--out", tmp_path / "a.csv")
    assert r.returncode == 0, r.stderr
    assert "predicting 2 file(s) (2 image(s), 0 video(s))" in r.stdout
    a = pd.read_csv(tmp_path / "a.csv")
    lines = {ln.split(": ")[0]: ln.split(": ")[1].split() for ln in r.stdout.splitlines() if ln.endswith(")")}
    for _, row in a.iterrows():  # one line per image: its label, confidence and valence/arousal
        label, confidence, v = lines[row["filename"]][:3]
        assert label == row["expression"] and abs(float(confidence) - row["confidence"]) <= 0.0051 and v == "(V"
    text = (tmp_path / "a.csv").read_text().splitlines()[1].split(",")
    assert max(len(v.split(".")[1]) for v in text if "." in v and v.replace(".", "").lstrip("-").isdigit()) <= 4
    # An untrained valence/arousal head: empty columns and a note; many images: a summary table.
    many = tmp_path / "many"
    many.mkdir()
    for image in images[:21]:  # one more than gets a line each
        shutil.copy(image, many)
    r = run_here("predict.py", "--checkpoint", no_va, many, "--out", tmp_path / "b.csv")
    assert r.returncode == 0, r.stderr
    b = pd.read_csv(tmp_path / "b.csv")
    assert b["valence"].isna().all() and b["arousal"].isna().all() and b["expression"].notna().all()
    assert "valence/arousal head never trained" in r.stdout and "columns are left empty" in r.stdout
    assert len(b) == 21 and "21 images, 21 faces predicted:" in r.stdout
    table = {ln.split()[0]: int(ln.split()[1]) for ln in r.stdout.splitlines() if ln.startswith("  ")
             and ln.split()[0] in set(b["expression"])}
    assert table == b["expression"].value_counts().to_dict()
    # The same model in evaluation: the regression figures carry a note.
    r = run_here("eval_resnet50.py", "--checkpoint", no_va, "--meta", demo["val"], "--out_dir", tmp_path / "e",
                 "--num_workers", 0)
    assert r.returncode == 0 and "valence/arousal head never trained" in r.stdout


# --- predict.py as a hostile user runs it ---------------------------------------------------------
OLD = b"earlier results, not to be lost\n"


def stray_temporaries(folder):
    return [p for p in Path(folder).rglob(".*") if ".tmp" in p.name]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return face_video(tmp_path_factory.mktemp("clip") / "clip.mp4", n=12)


@pytest.fixture
def old_out(tmp_path):
    out = tmp_path / "old.csv"
    out.write_bytes(OLD)
    return out


# --- 5. bad paths and flags: one line, before anything is loaded ----------------------------------
BAD_FLAGS = [("--batch_size", "0"), ("--batch_size", "many"), ("--batch_size", "100000"), ("--frame_step", "0"),
             ("--smooth", "0"), ("--smooth", "1.5"), ("--smooth", "nan"), ("--track_iou", "0"), ("--track_iou", "2"),
             ("--track_gap", "-1"), ("--track_gap", "1.5"), ("--prefetch", "0")]


@pytest.mark.parametrize("flag,value", BAD_FLAGS)
def test_bad_numbers_one_line(flag, value, tmp_path, old_out):
    r = run_script("predict.py", tmp_path, "--checkpoint", tmp_path / "missing.pth", "--out", old_out, flag, value)
    assert_one_line_error(r, flag, code=2)
    assert old_out.read_bytes() == OLD


@pytest.mark.slow
def test_bad_output_locations_fail_before_the_checkpoint_is_read(tmp_path, old_out, mount_tmpfs):
    """The checkpoint does not even exist: each message names the output flag, so it came first."""
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_folder").mkdir()
    read_only = mount_tmpfs("ro", "ro,size=64k")
    image = tmp_path / "x.jpg"
    image.write_bytes(OLD)
    os.mkfifo(tmp_path / "fifo.csv")
    (tmp_path / "link.csv").symlink_to(old_out)  # renaming onto it would replace the link (as with /dev/stdout)
    (tmp_path / "ann" / "x.jpg").mkdir(parents=True)  # where the annotated copy would go
    cases = [(["--out", tmp_path / "a_folder"], ["--out", "is a folder"]),
             (["--out", tmp_path / "a_file" / "p.csv"], ["--out", "is a file, not a folder"]),
             (["--out", read_only / "p.csv"], ["--out", "not writable"]),
             (["--annotate", tmp_path / "a_file"], ["--annotate", "is a file"]),
             (["--annotate", read_only / "ann"], ["--annotate", "not writable"]),
             (["--out", image], ["--out", "is the input"]),
             (["--annotate", tmp_path], ["--annotate", "would overwrite the input", "x.jpg"]),
             (["--checkpoint", tmp_path / "a_folder"], ["--checkpoint", "not a regular file"]),
             (["--out", tmp_path / "fifo.csv"], ["--out", "fifo.csv", "exists and is a FIFO"]),
             (["--out", tmp_path / "link.csv"], ["--out", "link.csv", "is a symbolic link"]),
             (["--annotate", tmp_path / "ann"], ["--annotate", "x.jpg", "exists and is a folder"]),
             (["--device", "tpu"], ["--device tpu", "unknown device"])]
    for extra, words in cases:
        r = run_script("predict.py", image, "--checkpoint", tmp_path / "missing.pth", "--out", old_out, *extra,
                       timeout=60)
        assert_one_line_error(r, *words)
        assert old_out.read_bytes() == OLD and image.read_bytes() == OLD
    assert not stray_temporaries(tmp_path)


@pytest.mark.slow
def test_cuda_where_there_is_none(trained, tmp_path, old_out):
    if __import__("torch").cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = run_script("predict.py", tmp_path, "--checkpoint", trained, "--out", old_out, "--device", "cuda")
    assert_one_line_error(r, "--device cuda", "CUDA is not available")
    assert old_out.read_bytes() == OLD


# --- 4. only regular files: nothing hangs, each special file is named, the rest goes on ----------
@pytest.mark.slow
def test_special_files_are_skipped_and_named(trained, demo, tmp_path):
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    good = inputs / "sub" / "good.jpg"
    good.write_bytes((demo["root"] / "images" / "0.jpg").read_bytes())
    os.mkfifo(inputs / "fifo.jpg")  # cv2.imread would block on it forever
    os.mkfifo(inputs / "sub" / "pipe.mp4")
    (inputs / "to_fifo.jpg").symlink_to(inputs / "fifo.jpg")
    (inputs / "loop_a.jpg").symlink_to(inputs / "loop_b.jpg")
    (inputs / "loop_b.jpg").symlink_to(inputs / "loop_a.jpg")
    (inputs / "dangling.png").symlink_to(inputs / "gone.png")
    (inputs / "device.jpg").symlink_to("/dev/zero")
    (inputs / "empty.jpg").write_bytes(b"")
    bad_name = os.fsencode(str(inputs)) + b"/caf\xe9.jpg"  # Latin-1, not UTF-8
    with open(bad_name, "wb") as fh:
        fh.write(good.read_bytes())
    out = tmp_path / "p.csv"
    r = run_script("predict.py", "--checkpoint", trained, inputs, "/dev/null", "--out", out, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "skipped 10 unreadable input(s)" in r.stdout, r.stdout
    for name, why in [("fifo.jpg", "a FIFO"), ("pipe.mp4", "a FIFO"), ("to_fifo.jpg", "a FIFO"),
                      ("loop_a.jpg", "symbolic link loop"), ("loop_b.jpg", "symbolic link loop"),
                      ("dangling.png", "broken symbolic link"), ("device.jpg", "a device file"),
                      ("/dev/null", "a device file"), ("empty.jpg", "empty file"),
                      ("caf\\xe9.jpg", "not valid UTF-8")]:
        assert any(name in line and why in line for line in r.stdout.splitlines()), (name, r.stdout)
    assert pd.read_csv(out)["filename"].tolist() == [str(good)]


# --- 6 (and bad input). damaged videos: the frames that were read are kept -----------------------
@pytest.mark.slow
def test_truncated_and_damaged_videos(trained, tmp_path, clip):
    full = face_video(tmp_path / "full.avi", n=20, fourcc="MJPG")  # frames stored one after another
    cut = tmp_path / "cut.avi"
    cut.write_bytes(full.read_bytes()[:full.stat().st_size // 2])
    no_index = tmp_path / "no_index.mp4"  # an mp4 cut short loses its index: nothing is readable
    no_index.write_bytes(clip.read_bytes()[:5000])
    garbage = tmp_path / "garbage.mkv"
    garbage.write_bytes(bytes(range(256)) * 12)
    out = tmp_path / "p.csv"
    r = run_script("predict.py", "--checkpoint", trained, cut, no_index, garbage, "--out", out, timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr and not r.stderr.strip(), r.stderr
    df = pd.read_csv(out)
    read = df.loc[df["filename"] == str(cut), "frame"].tolist()
    assert 3 <= len(read) < 20 and read == list(range(len(read)))
    assert f"cut.avi: decoding stopped after {len(read)} of 20 frames" in r.stdout
    assert "no_index.mp4: cannot be opened as a video" in r.stdout and "garbage.mkv: cannot be opened" in r.stdout


@pytest.mark.slow
def test_a_video_without_faces_keeps_its_rows(trained, tmp_path):
    empty = face_video(tmp_path / "wall.mp4", n=5, faces=0)
    r = run_script("predict.py", "--checkpoint", trained, empty, "--detect_faces", "--out", tmp_path / "p.csv")
    assert r.returncode == 0, r.stderr
    assert "wall.mp4: 0 track(s), faces in 0 of 5 analysed frames" in r.stdout and "no face" in r.stdout
    assert pd.read_csv(tmp_path / "p.csv")["frame"].tolist() == list(range(5))


# --- 1. nothing that exists is destroyed by a failed run ------------------------------------------
@pytest.mark.slow
def test_nothing_readable_leaves_outputs_alone(trained, tmp_path, old_out):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really")
    r = run_script("predict.py", "--checkpoint", trained, bad, "--out", old_out)
    assert_one_line_error(r, "nothing could be predicted")
    assert "bad.jpg: cannot be decoded" in r.stdout and old_out.read_bytes() == OLD
    r = run_script("predict.py", "--checkpoint", trained, tmp_path / "nope.jpg", "--out", old_out)
    assert_one_line_error(r, "nothing to predict", "nope.jpg: file not found")  # before the model is loaded
    assert old_out.read_bytes() == OLD


@pytest.mark.slow
def test_full_disk_one_line_and_old_outputs_intact(trained, clip, mount_tmpfs):
    disk = mount_tmpfs("small", "size=300k")
    out, tracks = disk / "p.csv", disk / "p_clip_tracks.csv"
    out.write_bytes(OLD)
    tracks.write_bytes(OLD)
    (disk / "ballast").write_bytes(b"\0" * 250_000)  # what is left is too small for the annotated video
    r = run_script("predict.py", "--checkpoint", trained, clip, "--detect_faces", "--out", out,
                   "--annotate", disk / "ann")
    assert_one_line_error(r, "no space left on device writing", str(disk))
    assert out.read_bytes() == OLD and tracks.read_bytes() == OLD
    assert not stray_temporaries(disk) and sorted(p.name for p in disk.iterdir() if p.is_file()) == \
        ["ballast", "p.csv", "p_clip_tracks.csv"]


@pytest.mark.slow
def test_ctrl_c_mid_video(trained, tmp_path, old_out):
    long_clip = face_video(tmp_path / "long.mp4", n=300)
    proc = subprocess.Popen([sys.executable, str(ROOT / "predict.py"), "--checkpoint", str(trained), str(long_clip),
                             "--detect_faces", "--out", str(old_out), "--annotate", str(tmp_path / "ann")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)
    assert proc.stdout.readline().startswith("predicting")  # the model is loaded, the video is being read
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    assert old_out.read_bytes() == OLD and not stray_temporaries(tmp_path) and not (tmp_path / "ann").exists()


# --- 2. --annotate: no name collisions ----------------------------------------------------------
@pytest.mark.slow
def test_same_names_give_separate_outputs(trained, demo, tmp_path):
    image = (demo["root"] / "images" / "0.jpg").read_bytes()
    for name in ("a/face.jpg", "b/face.jpg", "x.jpg", "b/FACE.jpg"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(image)
    import cv2
    cv2.imwrite(str(tmp_path / "x.png"), cv2.imread(str(tmp_path / "x.jpg")))
    (tmp_path / "v1").mkdir()
    (tmp_path / "v2").mkdir()
    videos = [face_video(tmp_path / d / "clip.mp4", n=3, size=(32, 32), faces=0) for d in ("v1", "v2")]
    names = ["a/face.jpg", "b/face.jpg", "b/FACE.jpg", "x.jpg", "x.png"]
    r = run_script("predict.py", "--checkpoint", trained, *[tmp_path / n for n in names], *videos,
                   "--out", tmp_path / "p.csv", "--annotate", tmp_path / "ann")
    assert r.returncode == 0, r.stderr
    ann = tmp_path / "ann"
    assert sorted(p.name for p in ann.iterdir()) == ["FACE_3.jpg", "clip_2_annotated.mp4", "clip_annotated.mp4",
                                                     "face.jpg", "face_2.jpg", "x.jpg", "x.png"]
    assert (tmp_path / "p_clip_tracks.csv").exists() and (tmp_path / "p_clip_2_tracks.csv").exists()
    assert (tmp_path / "p_clip_timeline.png").exists() and (tmp_path / "p_clip_2_timeline.png").exists()


# --- 6. a failing thread or model: one line -----------------------------------------------------
def run_in_process(argv, capsys):
    with pytest.raises(SystemExit) as e:
        run_main(predict.main, [str(a) for a in argv])
    err = capsys.readouterr().err
    return e.value.code, err


def test_failing_detection_thread_one_line(trained, clip, old_out, monkeypatch, capsys):
    def boom(self, rgb):
        raise RuntimeError("detector exploded")
    monkeypatch.setattr(MTCNNDetector, "__call__", boom)
    code, err = run_in_process(["--checkpoint", trained, clip, "--detect_faces", "--out", old_out], capsys)
    assert code == 1 and err.strip().count("\n") == 0 and "Traceback" not in err
    assert "error: the decode/detect thread failed reading" in err and "clip.mp4: RuntimeError: detector exploded" in err
    assert old_out.read_bytes() == OLD


def test_failing_model_one_line(trained, clip, old_out, monkeypatch, capsys):
    def oom(*a, **k):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore details")
    monkeypatch.setattr(fer.inference.predict, "infer", oom)
    code, err = run_in_process(["--checkpoint", trained, clip, "--out", old_out], capsys)
    assert code == 1 and err.strip().count("\n") == 0
    assert "the model failed on a batch" in err and "out of memory" in err and "--batch_size" in err
    assert old_out.read_bytes() == OLD


def test_progress_lines_outside_a_terminal(trained, clip, tmp_path, capsys, monkeypatch):
    """Issue 26.3: a video's prediction was silent under nohup or a scheduler. Outside a terminal the
    progress is plain lines (frames done of the video's frame count, rate, ETA) that a log can hold;
    --quiet keeps only the results."""
    def run(*flags):
        with pytest.raises(SystemExit) as e:
            run_main(predict.main, [f"--checkpoint={trained}", str(clip), f"--out={tmp_path / 'p.csv'}", *flags])
        assert e.value.code == 0
        return capsys.readouterr().out

    lines = [ln for ln in run("--frame_step=2").splitlines() if ln.startswith("predict: ")]
    assert lines and lines[-1].startswith("predict: 6/6 frame (100%)") and "left" in lines[-1]
    assert all("\r" not in ln for ln in lines)
    out = run("--quiet")
    assert "predict: " not in out and "wrote 12 rows" in out
    for header in (1000, 2):  # a video whose header over- or under-counts its frames: the end is what was read
        monkeypatch.setattr(fer.inference.predict, "expected_units", lambda inputs, step, n=header: n)
        lines = [ln for ln in run().splitlines() if ln.startswith("predict: ")]
        assert lines[-1].startswith("predict: 12/12 frame (100%)"), lines


# --- found by the hostile pass over prediction ----------------------------------------------------
@pytest.fixture(scope="module")
def astronaut_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("astronaut") / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


# --- reruns into the same folders -----------------------------------------------------------------
def test_rerun_with_out_beside_the_videos(trained, tmp_path):
    """--out inside the searched folder: the second run read the first one's timeline PNG as an image,
    then refused to overwrite it, naming '--annotate None'."""
    folder = tmp_path / "clips"
    folder.mkdir()
    face_video(folder / "clip.mp4", n=4)
    for _ in range(2):
        r = run_here("predict.py", "--checkpoint", trained, folder, "--out", folder / "p.csv")
        assert r.returncode == 0, r.stderr
    assert len(pd.read_csv(folder / "p.csv")) == 4  # the four frames, no row for the timeline


def test_rerun_with_annotate_inside_the_input_folder(trained, tmp_path, astronaut_png):
    """--annotate inside the searched folder: the second run read the annotated copies as inputs (and
    refused to overwrite them)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(astronaut_png, folder)
    for _ in range(2):
        r = run_here("predict.py", "--checkpoint", trained, folder, "--out", tmp_path / "p.csv",
                     "--annotate", folder / "ann")
        assert r.returncode == 0, r.stderr
    assert list(pd.read_csv(tmp_path / "p.csv")["filename"]) == [str(folder / "astronaut.png")]


def test_a_timeline_given_as_input_names_out_not_annotate(trained, tmp_path, astronaut_png):
    clip = face_video(tmp_path / "clip.mp4", n=2)
    timeline = tmp_path / "p_clip_timeline.png"
    shutil.copy(astronaut_png, timeline)
    r = run_here("predict.py", "--checkpoint", trained, clip, timeline, "--out", tmp_path / "p.csv")
    line = one_error_line(r, f"--out {tmp_path / 'p.csv'}", "would overwrite the input", str(timeline))
    assert "--annotate" not in line


# --- flags that did nothing -----------------------------------------------------------------------
@pytest.mark.parametrize("flags", [["--detector", "haar"], ["--min_face", "20"], ["--face_threshold", "0.5"],
                                   ["--align", "box"]])
def test_detection_flags_without_detect_faces_are_refused(trained, tmp_path, astronaut_png, flags):
    """They were ignored: the whole picture was predicted, exit 0, as if a face had been detected."""
    r = run_here("predict.py", "--checkpoint", trained, astronaut_png, *flags, "--out", tmp_path / "p.csv")
    assert r.returncode == 2
    one_error_line(r, flags[0], "--detect_faces")
    assert not (tmp_path / "p.csv").exists()


# --- a full disk ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_full_disk_on_an_annotated_image_is_one_line(trained, astronaut_png, mount_tmpfs):
    """libpng printed 'libpng error: Write Error' above the error line."""
    disk = mount_tmpfs("small", "size=100k")  # the CSV fits, the annotated PNG (~500 kB) does not
    r = run_script("predict.py", "--checkpoint", trained, astronaut_png, "--out", disk / "p.csv",
                   "--annotate", disk / "ann")
    one_error_line(r, "no space left on device writing", str(disk / "ann" / "astronaut.png"))
    assert not (disk / "p.csv").exists()


# --- empty things -------------------------------------------------------------------------------
def test_a_folder_without_images_is_named(trained, tmp_path):
    """The message was 'nothing to predict:' and nothing after it."""
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.txt").write_text("no image here")
    r = run_here("predict.py", "--checkpoint", trained, folder, "--out", tmp_path / "p.csv")
    one_error_line(r, "nothing to predict: no image or video", str(folder))


def test_an_empty_annotate_path_is_refused(trained, tmp_path, astronaut_png):
    """--annotate "" (an unset shell variable) was taken as no --annotate: exit 0 without the copies."""
    r = run_here("predict.py", "--checkpoint", trained, astronaut_png, "--out", tmp_path / "p.csv", "--annotate", "")
    one_error_line(r, "--annotate", "empty path")
    assert not (tmp_path / "p.csv").exists()


# --- videos the annotation encoder cannot take as they are ------------------------------------------
def test_annotating_8192_wide_and_1_px_videos(trained, tmp_path):
    """mp4v opens neither 8192-px-wide nor 1x1 frames: the whole run failed at the end with 'the
    annotated video could not be written' (and OpenCV's lines). Now the copy is scaled to fit."""
    import cv2
    import numpy as np

    sizes = {"wide": (8192, 64), "dot": (1, 1)}
    for name, (w, h) in sizes.items():
        writer = cv2.VideoWriter(str(tmp_path / f"{name}.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
        for k in range(2):
            writer.write(np.full((h, w, 3), 60 * k, np.uint8))
        writer.release()
    r = run_here("predict.py", "--checkpoint", trained, *[tmp_path / f"{n}.avi" for n in sizes], "--out",
                 tmp_path / "p.csv", "--annotate", tmp_path / "ann")
    assert r.returncode == 0, r.stderr
    for name, size in (("wide", (7680, 60)), ("dot", (2, 2))):
        cap = cv2.VideoCapture(str(tmp_path / "ann" / f"{name}_annotated.mp4"))
        got = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        assert got == size and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 2, (name, got)
        cap.release()


def test_a_video_named_like_mathtext(trained, tmp_path):
    """The timeline's title is the file name: 'a$^$b.mp4' made matplotlib fail to parse it, a
    traceback after the whole run."""
    clip = face_video(tmp_path / "a$^$b.mp4", n=2)
    r = run_here("predict.py", "--checkpoint", trained, clip, "--out", tmp_path / "p.csv")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "p_a$^$b_timeline.png").stat().st_size > 0


# --- calibrated probabilities by default, raw on request -------------------------------------------
@pytest.mark.slow
def test_predict_reports_calibrated_probabilities_unless_raw(trained, demo, tmp_path):
    from fer.model.checkpoint import write_calibration

    ckpt = tmp_path / "cal.pth"
    shutil.copy(trained, ckpt)
    write_calibration(ckpt, {"temperature": 2.0, "fitted_on": [{"path": "metadata_val.parquet"}]})
    images = [demo["root"] / "images" / f"{k}.jpg" for k in range(3)]
    _, raw = predict_csv("--checkpoint", ckpt, *images, "--out", tmp_path / "raw.csv", "--raw")
    r, cal = predict_csv("--checkpoint", ckpt, *images, "--out", tmp_path / "cal.csv")
    _, plain = predict_csv("--checkpoint", trained, *images, "--out", tmp_path / "plain.csv")
    assert (raw["probabilities"] == "raw").all() and (plain["probabilities"] == "raw").all()
    assert (cal["probabilities"] == "calibrated (T=2.0000)").all() and "calibrated (T=2.0000)" in r.stdout
    np.testing.assert_allclose(raw[PROBS].to_numpy(), plain[PROBS].to_numpy(), atol=1e-4)
    expected = np.sqrt(raw[PROBS].to_numpy())  # softmax(z / 2) = sqrt(softmax(z)), renormalised
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(cal[PROBS].to_numpy(), expected, atol=5e-3)
    assert (cal["expression"] == raw["expression"]).all() and (cal["confidence"] <= raw["confidence"] + 1e-4).all()


def test_a_temperature_is_applied_only_to_the_outputs_it_was_fitted_on():
    """A temperature fitted on plain logits mis-scales the flip average's (less confident) log-probabilities,
    and the reverse: predict reports raw probabilities then, and says why; the ONNX graph (no TTA) likewise."""
    from types import SimpleNamespace

    from fer.inference.export import export_temperature
    from fer.inference.predict import probability_kind

    plain = {"calibration": {"temperature": 1.5, "tta": False}}
    flipped = {"calibration": {"temperature": 1.5, "tta": True}}

    def kind(meta, tta, raw=False):
        return probability_kind(meta, SimpleNamespace(checkpoint="m.pth", raw=raw, tta=tta))
    assert kind(plain, None) == (1.5, "calibrated (T=1.5000)") and kind(flipped, "flip") == (1.5, "calibrated (T=1.5000)")
    assert kind(plain, "flip") == (1.0, "raw (the temperature was fitted without --tta)")
    assert kind(flipped, None) == (1.0, "raw (the temperature was fitted with --tta)")
    assert kind(plain, None, raw=True) == (1.0, "raw") and kind({}, "flip") == (1.0, "raw")
    assert export_temperature(plain) == 1.5 and export_temperature(flipped) is None
