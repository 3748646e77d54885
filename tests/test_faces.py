"""Faces in the wild (FER_face.py): MTCNN finds turned and small faces, crops are aligned onto the
checkpoint's crop_template, the template comes from the training index, and every script that
detects faces (predict.py, eval --recrop detect, metadata_parallel.py --detect_landmarks) uses them."""
import json

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_here

from fer.constants import FACE_MARGIN, POINT_COLUMNS
from fer.data import demo as make_demo_data
from fer.data import index
from fer.data.dataset import FERDataset, crop_template
from fer.data.faces import Cropper, Face, five_from_68, from_unit, make_detector, mean_template, rotation, to_unit, warp
from fer.data.transforms import build_transforms

# The astronaut's five points in scikit-image's 512x512 picture (eye centres, nose tip, mouth corners).
ASTRONAUT_POINTS = np.array([[205.4, 101.5], [246.9, 103.1], [225.1, 129.2], [201.2, 139.6], [245.1, 141.1]])
FACE_CROP = (120, 20, 180, 210)  # x, y, w, h of the head in that picture


def astronaut():
    from skimage import data
    return data.astronaut()


def paste(scene, centre, side, angle):
    """Paste the astronaut's head into scene (in place), side px wide, turned angle degrees
    counter-clockwise, its crop centred at centre. Returns the five points where they land."""
    x, y, w, h = FACE_CROP
    m = cv2.getRotationMatrix2D((x + w / 2, y + h / 2), angle, side / w)
    m[:, 2] += np.asarray(centre) - (x + w / 2, y + h / 2)
    head = np.zeros_like(astronaut())
    head[y:y + h, x:x + w] = astronaut()[y:y + h, x:x + w]
    mask = np.zeros(head.shape[:2], np.uint8)
    mask[y:y + h, x:x + w] = 255
    size = scene.shape[1], scene.shape[0]
    warped, inside = cv2.warpAffine(head, m, size), cv2.warpAffine(mask, m, size) > 127
    scene[inside] = warped[inside]
    return ASTRONAUT_POINTS @ m[:, :2].T + m[:, 2]


def background(h, w):
    return np.tile(np.linspace(60, 190, w).astype(np.uint8)[None, :, None], (h, 1, 3))


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    """A 640x400 group picture: four heads of 95-130 px, one turned 30 degrees; their true points."""
    scene = background(400, 640)
    truth = [paste(scene, c, s, a) for c, s, a in (((110, 120), 100, 0), ((330, 110), 95, 30),
                                                   ((540, 130), 110, -10), ((300, 300), 130, 0))]
    path = tmp_path_factory.mktemp("group") / "group.png"
    cv2.imwrite(str(path), cv2.cvtColor(scene, cv2.COLOR_RGB2BGR))
    return {"path": path, "rgb": scene, "truth": truth, "angles": [0, 30, -10, 0]}


def matched(faces, truth):
    """For each true face, the detected face whose eyes are nearest (None if none is within a fifth of
    the eye distance)."""
    out = []
    for t in truth:
        tol = 0.2 * np.linalg.norm(t[1] - t[0])
        near = [f for f in faces if f.points is not None and np.abs(f.points[:2] - t[:2]).max() < max(tol, 3)]
        out.append(near[0] if near else None)
    return out


def test_mtcnn_finds_every_face_of_a_group_including_a_turned_one(group):
    faces = make_detector("mtcnn")(group["rgb"])
    found = matched(faces, group["truth"])
    assert all(f is not None for f in found) and len(faces) == 4, [f.box for f in faces]
    for f, t, angle in zip(found, group["truth"], group["angles"]):
        assert np.abs(f.points - t).max() < 0.25 * np.linalg.norm(t[1] - t[0])  # every point on its feature
        assert abs(rotation(f.points) - angle) < 6 and 0.9 <= f.score <= 1
    assert [f.box[2] * f.box[3] for f in faces] == sorted((f.box[2] * f.box[3] for f in faces), reverse=True)
    # The old detector does not see the turned face.
    haar = make_detector("haar")(group["rgb"])
    centre = group["truth"][1].mean(0)
    assert not any(x <= centre[0] <= x + w and y <= centre[1] <= y + h for x, y, w, h in (f.box for f in haar))


def test_mtcnn_needs_no_network(group, monkeypatch):
    """Its weights are files of the installed package: building and running it opens no socket."""
    import socket

    def refuse(*a, **k):
        raise OSError("no network in this test")
    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    assert len(make_detector("mtcnn")(group["rgb"])) == 4


def test_min_face_is_in_pixels_whatever_the_picture_size():
    """Faces of 60 px in a 1600x1000 picture: found with the default --min_face 40 (the old rule, a
    tenth of the shorter side, looked for nothing under 100 px), not with --min_face 90."""
    scene = background(1000, 1600)
    truth = [paste(scene, (200 + 400 * k, 500), 60, 0) for k in range(4)]
    assert all(matched(make_detector("mtcnn")(scene), truth))
    assert not any(matched(make_detector("mtcnn", min_face=90)(scene), truth))
    assert make_detector("mtcnn")(scene[:30, :30]) == []  # smaller than --min_face: nothing, no error


def test_warp_puts_the_landmarks_on_the_template():
    """Five coloured dots at known points, the picture turned 30 degrees, scaled and shifted: warped
    onto a template with the transformed points, each dot's centre lands within a pixel of the template."""
    size, template = 112, np.array([[0.35, 0.42], [0.65, 0.42], [0.5, 0.58], [0.38, 0.75], [0.62, 0.75]])
    picture = np.zeros((400, 500, 3), np.uint8)
    m = cv2.getRotationMatrix2D((50, 50), 30, 1.7)
    points = from_unit(template, 100) @ m[:, :2].T + m[:, 2] + (230, 170)  # a 100 px face, moved
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    for (x, y), c in zip(points, colours):
        cv2.circle(picture, (int(round(x * 16)), int(round(y * 16))), 5 * 16, c, -1, cv2.LINE_AA, 4)
    crop = warp(picture, points, template, size)
    assert crop.shape == (size, size, 3)
    for (tx, ty), c in zip(from_unit(template, size), colours):
        weight = np.clip(1 - np.abs(crop.astype(float) - c).max(2) / 255, 0, 1) ** 8
        ys, xs = np.mgrid[:size, :size]
        centre = (weight * xs).sum() / weight.sum(), (weight * ys).sum() / weight.sum()
        assert np.hypot(centre[0] - tx, centre[1] - ty) < 1, (centre, (tx, ty))
    assert abs(rotation(points) - 30) < 1e-6


def test_broken_landmarks_never_stop_a_run():
    """Landmarks all in one place (AffectNet has rows of zeros) cannot be aligned: the box crop is used,
    and the template leaves them out."""
    rgb = background(100, 120)

    class Fake:
        name = "mtcnn"

        def __call__(self, rgb):
            return [Face((30, 20, 40, 50), np.zeros((5, 2)), 0.99)]
    template = np.array([[0.35, 0.42], [0.65, 0.42], [0.5, 0.58], [0.38, 0.75], [0.62, 0.75]])
    assert warp(rgb, np.zeros((5, 2)), template, 32) is None
    (row, crop), = Cropper(Fake(), template, "template", 32)(rgb)
    assert crop.shape == (70, 60, 3) and (row["face_x"], row["face_y"], row["face_w"], row["face_h"]) == (20, 10, 60, 70)
    good = to_unit(from_unit(template, 50), (0, 0, 50, 50))
    np.testing.assert_allclose(mean_template([good, np.zeros((5, 2)), good + 5, np.full((5, 2), np.nan)]),
                               template, atol=1e-6)


def test_template_of_an_affectnet_index_is_the_mean_of_its_landmarks(tmp_path):
    """Both AffectNet layouts: the .npy crops (landmarks in the crop's pixels) and the CSV release
    (landmarks in the full photo, the crop is the face box with FACE_MARGIN)."""
    npy = make_demo_data.make_dataset(tmp_path / "npy", n=24, size=48, seed=3, progress=False)
    df, _ = index.build_index(npy / "images", npy / "annotations", workers=1, progress=False)
    index.write_parquet(df, tmp_path / "npy.parquet")
    expected = []
    for name in df["filename"]:
        lm = np.load(npy / "annotations" / name.replace(".jpg", "_lnd.npy")).astype(float).reshape(68, 2)
        five = [lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]]
        expected.append((np.array(five) + 0.5) / 48)
    template, n = crop_template(tmp_path / "npy.parquet")
    assert n == 24
    np.testing.assert_allclose(template, np.mean(expected, 0), atol=1e-6)

    csv = make_demo_data.make_dataset(tmp_path / "csv", n=24, size=48, seed=3, fmt="affectnet_csv", progress=False)
    assert run_here("metadata_parallel.py", "--root", csv, "--out_dir", tmp_path / "csv_index", "--quiet").returncode == 0
    table = pd.read_csv(csv / "training.csv")
    table = table[table["expression"] <= 7]
    expected = []
    for _, r in table.iterrows():
        lm = np.array(r["facial_landmarks"].split(";"), float).reshape(68, 2)
        h, w = cv2.imread(str(csv / "Manually_Annotated_Images" / r["subDirectory_filePath"])).shape[:2]
        m = FACE_MARGIN * max(r["face_width"], r["face_height"])
        x0, y0 = max(0, round(r["face_x"] - m)), max(0, round(r["face_y"] - m))
        x1, y1 = min(w, round(r["face_x"] + r["face_width"] + m)), min(h, round(r["face_y"] + r["face_height"] + m))
        five = np.array([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])
        expected.append((five - (x0, y0) + 0.5) / (x1 - x0, y1 - y0))
    template, n = crop_template(tmp_path / "csv_index" / "metadata_train.parquet")
    assert n == len(table)
    np.testing.assert_allclose(template, np.mean(expected, 0), atol=1e-6)
    # The training crop of the demo faces puts them where the template says: the same framing in both layouts.
    np.testing.assert_allclose(template, crop_template(tmp_path / "npy.parquet")[0], atol=0.08)


def test_dataset_warps_onto_the_template(demo):
    """Training's --align template: FERDataset warps each image by its landmarks before the transforms."""
    template = np.array(crop_template(demo["train"])[0])
    ds = FERDataset(demo["train"], train=False, size=48, template=template, verbose=False)
    plain = FERDataset(demo["train"], train=False, size=48, verbose=False)
    assert ds.unaligned == 0
    rgb = cv2.cvtColor(cv2.imread(ds.paths[0]), cv2.COLOR_BGR2RGB)
    lm = np.stack(pd.read_parquet(demo["train"])["landmarks"])[0]
    expected = build_transforms(False, 48)(image=warp(rgb, five_from_68(lm), template, 48))["image"]
    torch.testing.assert_close(ds[0]["image"], expected)
    assert not torch.equal(ds[0]["image"], plain[0]["image"])


def test_training_records_the_template_and_refuses_align_without_landmarks(trained, demo, tmp_path):
    ckpt = torch.load(trained, weights_only=True)
    np.testing.assert_allclose(ckpt["crop_template"], crop_template(demo["train"])[0])
    df = pd.read_parquet(demo["train"]).assign(landmarks=None)
    df.attrs = pd.read_parquet(demo["train"]).attrs
    df.to_parquet(tmp_path / "bare.parquet")
    r = run_here("train_vggface2_resnet50.py", "--train_meta", tmp_path / "bare.parquet", "--val_meta", demo["val"],
                 "--align", "template", "--no_pretrained", "--arch", "resnet18", "--save_path", tmp_path / "m.pth")
    assert r.returncode == 1 and "--align template: no landmarks in" in r.stderr and "--detect_landmarks" in r.stderr
    assert not (tmp_path / "m.pth").exists()


# --- predict.py ----------------------------------------------------------------------------------
def predict_csv(*args):
    r = run_here("predict.py", *args)
    assert r.returncode == 0, r.stderr
    return r, pd.read_csv(args[args.index("--out") + 1])


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


def test_a_malformed_template_is_named(trained, group, tmp_path):
    torch.save(dict(torch.load(trained, weights_only=True), crop_template=[[0.1, 0.2]] * 3), tmp_path / "bad.pth")
    r = run_here("predict.py", "--checkpoint", tmp_path / "bad.pth", group["path"], "--detect_faces", "--out",
                 tmp_path / "p.csv")
    assert r.returncode == 1 and f"{tmp_path / 'bad.pth'}: field crop_template" in r.stderr
    assert "is not 5 points" in r.stderr


# --- the index and evaluation --------------------------------------------------------------------
@pytest.fixture(scope="module")
def faces_folder(tmp_path_factory):
    """A 'folders' dataset of astronaut pictures (heads of 90-140 px, turned -20..25 degrees) and one
    picture without a face: what --detect_landmarks and --recrop detect work on."""
    root = tmp_path_factory.mktemp("faces_folder")
    truth = {}
    for k, (cls, side, angle) in enumerate([("happy", 120, 0), ("happy", 100, 25), ("sad", 140, -20),
                                            ("sad", 90, 10), ("neutral", 110, 5), ("neutral", 130, -5)]):
        scene = background(240, 260)
        truth[f"{cls}/{k}.png"] = paste(scene, (130, 125), side, angle)
        (root / cls).mkdir(exist_ok=True)
        cv2.imwrite(str(root / cls / f"{k}.png"), cv2.cvtColor(scene, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(root / "neutral" / "wall.png"), background(240, 260))
    return {"root": root, "truth": truth}


def test_detect_landmarks_writes_five_points_and_names_images_without_a_face(faces_folder, tmp_path):
    r = run_here("metadata_parallel.py", "--root", faces_folder["root"], "--out_dir", tmp_path, "--detect_landmarks",
                 "--workers", 1, "--quiet", "--val_fraction", 0.4)
    assert r.returncode == 0, r.stderr
    assert "1 images where --detect_landmarks found no face" in r.stdout and "neutral/wall.png: no face found" in r.stdout
    df = pd.read_parquet(tmp_path / "metadata_all.parquet").set_index("filename")
    assert df.loc["neutral/wall.png", "landmarks5"] is None
    for name, t in faces_folder["truth"].items():
        got = np.asarray(df.loc[name, "landmarks5"], float).reshape(5, 2)
        assert np.abs(got - t).max() < 0.15 * np.linalg.norm(t[1] - t[0]), name
    # Training takes its template from them.
    template, n = crop_template(tmp_path / "metadata_all.parquet")
    assert n == 6 and 0 < template[0][0] < template[1][0] < 1 and template[0][1] < template[2][1] < template[3][1]


def test_eval_recrop_detect_scores_the_crops_predict_makes(trained, faces_folder, tmp_path):
    r = run_here("metadata_parallel.py", "--root", faces_folder["root"], "--out_dir", tmp_path / "idx", "--quiet",
                 "--val_fraction", 0.4)
    assert r.returncode == 0, r.stderr
    meta = tmp_path / "idx" / "metadata_all.parquet"
    r = run_here("eval_resnet50.py", "--checkpoint", trained, "--meta", meta, "--out_dir", tmp_path, "--recrop",
                 "detect", "--num_workers", 0, "--all_classes", "--save_predictions", tmp_path / "pred.csv")
    assert r.returncode == 0, r.stderr
    recrop = json.loads((tmp_path / "metrics_resnet50.json").read_text())["recrop"]
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
