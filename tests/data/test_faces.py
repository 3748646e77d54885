"""fer/data/faces.py: MTCNN finds turned and small faces offline, --min_face is in pixels, crops are
warped onto the template, and broken landmarks never stop a run. (The scripts that use it: in
data/test_index.py, evaluation/test_evaluate.py and inference/test_predict.py.)
"""
import cv2
import numpy as np
from builders import background, paste

from fer.data.faces import Cropper, Face, from_unit, make_detector, mean_template, rotation, to_unit, warp


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


def test_haar_second_box_on_one_face_is_dropped(monkeypatch):
    """Issue 26: Haar's double box on one face (a smaller box inside the face's) started a spurious track."""
    from fer.data import faces

    assert faces.drop_nested([(0, 0, 100, 100), (20, 20, 50, 50), (150, 0, 60, 60)]) == \
        [(0, 0, 100, 100), (150, 0, 60, 60)]
    assert faces.drop_nested([(0, 0, 100, 100), (90, 90, 40, 40)]) == [(0, 0, 100, 100), (90, 90, 40, 40)]
    detector = faces.make_detector("haar")
    monkeypatch.setattr(detector, "cascade", type("C", (), {"detectMultiScale": lambda self, *a, **k:
                                                            [(30, 30, 40, 40), (10, 10, 90, 90)]})())
    assert [f.box for f in detector(np.zeros((120, 120, 3), np.uint8))] == [(10, 10, 90, 90)]
