"""Face detection and five-point alignment: find the faces in a picture and crop them the way the
model's training images were cropped.

A FER model only works on crops framed like its training data. So a checkpoint records where five
points (eye centres, nose tip, mouth corners) sit on average in its training crops: `crop_template`,
5 x 2 numbers in the unit square. Prediction then finds each face with its five points and warps it
onto that template with a similarity transform (rotation, scale, shift: no shearing of the face),
at the model's input size.

Detectors, one interface (detector(rgb) -> [Face], largest first):
    mtcnn  MTCNN as packaged by facenet-pytorch: box, score and five points per face; finds turned
           (about +-45 degrees) and small faces. Its weights ship inside the wheel: nothing is downloaded.
    haar   OpenCV's frontal-face Haar cascade (inside opencv-python-headless): boxes only, upright faces.

Coordinates: points are in pixels of the picture (x right, y down). The unit square covers a crop's
area: pixel centre x of a W-wide crop is at (x + 0.5) / W, as cv2.resize maps pixels.
"""
import math
from dataclasses import dataclass

import numpy as np

from fer.constants import FACE_MARGIN, FACE_THRESHOLD, MIN_FACE, POINT_COLUMNS
from fer.trust import FERError


@dataclass
class Face:
    box: tuple  # detector box x, y, w, h in pixels
    points: np.ndarray = None  # (5, 2) in pixels, POINTS order; None for the Haar cascade
    score: float = None  # MTCNN's face probability; None for the Haar cascade


# --- detectors ----------------------------------------------------------------------------------
class MTCNNDetector:
    """facenet-pytorch's MTCNN. It runs on threads=1 torch threads: measured on 2 cores, more threads
    make it no faster alone and slow the model beside it (see BENCHMARKS.md). torch's thread count is
    per calling thread (OpenMP), so this does not change the model's threads in another thread."""

    name = "mtcnn"

    def __init__(self, min_face=MIN_FACE, threshold=FACE_THRESHOLD, threads=1, device="cpu"):
        from facenet_pytorch import MTCNN

        self.min_face, self.threshold, self.threads = min_face, threshold, threads
        # The first two stages keep MTCNN's defaults (they only propose); the last decides.
        self.mtcnn = MTCNN(min_face_size=min_face, thresholds=[0.6, 0.7, threshold], keep_all=True,
                           select_largest=True, post_process=False, device=device)

    def __call__(self, rgb):
        import torch

        if min(rgb.shape[:2]) < self.min_face:  # no face of min_face px fits (MTCNN would fail on it)
            return []
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            boxes, scores, points = self.mtcnn.detect(np.ascontiguousarray(rgb[..., :3]), landmarks=True)
        finally:
            torch.set_num_threads(before)
        if boxes is None:
            return []
        # facenet-pytorch 2.5.3 returns object arrays under numpy 2: cast them.
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        points = np.asarray(points, np.float64).reshape(-1, 5, 2)
        scores = np.asarray(scores, np.float64).reshape(-1)
        return [Face((b[0], b[1], b[2] - b[0], b[3] - b[1]), p, float(s))
                for b, p, s in zip(boxes, points, scores)]  # largest first (select_largest)


class HaarDetector:
    """OpenCV's frontal-face cascade (the detector predict.py used before MTCNN): boxes only."""

    name = "haar"

    def __init__(self, min_face=MIN_FACE):
        from pathlib import Path

        import cv2
        path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
        self.cascade = cv2.CascadeClassifier(str(path))
        if self.cascade.empty():
            raise FERError(f"cannot load the face detector from {path}")
        self.min_face = min_face

    def __call__(self, rgb):
        import cv2
        gray = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
        faces = self.cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5,
                                              minSize=(self.min_face, self.min_face))
        boxes = [tuple(int(v) for v in f) for f in sorted(faces, key=lambda f: -f[2] * f[3])]
        return [Face(box) for box in drop_nested(boxes)]


NESTED_SHARE = 0.5  # a box with more than this share of its area inside a larger detection is part of that face


def drop_nested(boxes, share=NESTED_SHARE):
    """Boxes (x y w h, largest first) without those lying mostly inside a larger one kept before them: the
    Haar cascade's second box on one face (a part of it), which would start a spurious track in a video."""
    kept = []
    for box in boxes:
        x, y, w, h = box
        inside = [max(0, min(x + w, a + c) - max(x, a)) * max(0, min(y + h, b + d) - max(y, b))
                  for a, b, c, d in kept]
        if not any(area > share * w * h for area in inside):
            kept.append(box)
    return kept


def make_detector(name="mtcnn", min_face=MIN_FACE, threshold=FACE_THRESHOLD):
    return MTCNNDetector(min_face, threshold) if name == "mtcnn" else HaarDetector(min_face)


# --- geometry -----------------------------------------------------------------------------------
def five_from_68(landmarks):
    """The five points of 68-point (iBUG) landmarks, (..., 136) or (..., 68, 2) -> (..., 5, 2): eye
    centres (mean of 36-41 and of 42-47), nose tip (30), mouth corners (48, 54)."""
    lm = np.asarray(landmarks, np.float64)
    lm = lm.reshape(*lm.shape[:-1], 68, 2) if lm.shape[-1] == 136 else lm
    return np.stack([lm[..., 36:42, :].mean(-2), lm[..., 42:48, :].mean(-2), lm[..., 30, :], lm[..., 48, :],
                     lm[..., 54, :]], -2)


def to_unit(points, rect):
    """Pixel points of a picture -> unit-square coordinates of the crop rect (x0, y0, x1, y1) of it."""
    rect = np.asarray(rect, np.float64)
    size = rect[..., 2:] - rect[..., :2]
    return (np.asarray(points, np.float64) - rect[..., None, :2] + 0.5) / size[..., None, :]


def from_unit(unit, size):
    """Unit-square coordinates -> pixels of a size x size crop."""
    return np.asarray(unit, np.float64) * size - 0.5


def rotation(points):
    """The in-plane rotation of a face in degrees, counter-clockwise as seen (cv2.getRotationMatrix2D's
    sense): the angle of the line from the left to the right eye."""
    (x0, y0), (x1, y1) = np.asarray(points, np.float64)[:2]
    return -math.degrees(math.atan2(y1 - y0, x1 - x0))


def similarity(points, template, size):
    """The 2 x 3 similarity transform taking the five points onto the template at size x size: least
    squares over all five (every point an inlier), by cv2.estimateAffinePartial2D."""
    src = np.asarray(points, np.float32).reshape(-1, 2)
    dst = from_unit(template, size).astype(np.float32)
    if not np.isfinite(src).all() or np.ptp(src, 0).max() < 1e-3:  # all in one place: no face to align
        return None
    import cv2
    m, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=1e6, refineIters=50)
    return m if m is not None and np.isfinite(m).all() and abs(np.linalg.det(m[:, :2])) > 1e-9 else None


def warp(rgb, points, template, size):
    """The face with these five points warped onto the template: a size x size crop (outside the
    picture: black, as face-alignment toolkits pad); None when the points determine no face."""
    m = similarity(points, template, size)
    if m is None:
        return None
    import cv2
    return cv2.warpAffine(rgb, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=0)


def crop_rect(shape, box, margin=FACE_MARGIN):
    """(x0, y0, x1, y1) of the face box widened by margin x its larger side on every edge, clipped to
    an image of this shape (height, width, ...)."""
    x, y, w, h = box
    m = margin * max(w, h)
    x0, y0 = int(max(0, round(x - m))), int(max(0, round(y - m)))
    x1, y1 = int(min(shape[1], round(x + w + m))), int(min(shape[0], round(y + h + m)))
    return x0, y0, x1, y1


def margin_box(box, shape, margin=FACE_MARGIN):
    """The detector box widened by margin x its larger side on every edge, clipped to the picture:
    whole pixels x, y, w, h (predict.py's crop before alignment existed, to the pixel)."""
    x, y, w, h = (int(round(v)) for v in box)
    m = int(round(margin * max(w, h)))
    x0, y0 = max(0, x - m), max(0, y - m)
    x1, y1 = min(shape[1], x + w + m), min(shape[0], y + h + m)
    return x0, y0, max(0, x1 - x0), max(0, y1 - y0)


def check_template(template, where="crop_template"):
    """A checkpoint's crop_template as a (5, 2) array, None when absent; one line when malformed."""
    if template is None:
        return None
    try:
        t = np.asarray(template, np.float64)
    except (TypeError, ValueError):
        t = None
    if t is None or t.shape != (5, 2) or not np.isfinite(t).all() or (np.abs(t - 0.5) > 1).any():
        raise FERError(f"{where} = {template!r} is not 5 points (x, y) in the unit square")
    if np.linalg.norm(t[1] - t[0]) < 1e-3:
        raise FERError(f"{where}: the two eyes are in one place")
    return t


def mean_template(unit_points):
    """The template of (N, 5, 2) unit-square points (NaN and impossible rows skipped): their mean, as a
    5 x 2 list of floats (what a checkpoint stores), or None without any."""
    pts = np.asarray(unit_points, np.float64).reshape(-1, 5, 2)
    # Landmarks far outside their crop, or with both eyes in one place, are annotation errors.
    ok = (np.abs(pts - 0.5) <= 1).all((1, 2)) & (np.linalg.norm(pts[:, 1] - pts[:, 0], axis=1) > 1e-3)
    return pts[ok].mean(0).round(6).tolist() if ok.any() else None


# --- a picture's faces as crops -----------------------------------------------------------------
def fallback(detector, template, align):
    """Why --align template cannot align (the box crop is used instead), or None when it can."""
    if align != "template":
        return None
    if template is None:
        return "the checkpoint records no crop_template (its training index had no landmarks)"
    return "the haar detector gives no landmarks" if detector == "haar" else None


class Cropper:
    """Faces of a picture, each with its crop for the model and the values predict.py reports.

    align "template" needs a template and a detector with landmarks; otherwise the box crop is used
    and `fallback` says why (None when aligned).
    """

    def __init__(self, detector, template=None, align="template", size=224):
        self.detector, self.size = detector, size
        self.fallback = fallback(detector.name, template, align)
        self.template = template if align == "template" and not self.fallback else None

    def crop(self, rgb, face):
        if self.template is not None and face.points is not None:
            aligned = warp(rgb, face.points, self.template, self.size)
            if aligned is not None:
                return aligned
        x, y, w, h = margin_box(face.box, rgb.shape)
        return rgb[y:y + h, x:x + w] if w > 1 and h > 1 else None

    def __call__(self, rgb, largest_only=False):
        """[(row values, crop)] for each face, largest first."""
        out = []
        for face in self.detector(rgb)[:1 if largest_only else None]:
            crop = self.crop(rgb, face)
            if crop is None:
                continue
            row = dict(zip(("face_x", "face_y", "face_w", "face_h"), margin_box(face.box, rgb.shape)))
            if face.points is not None:
                row.update(zip(POINT_COLUMNS, np.round(face.points.reshape(-1), 2).tolist()),
                           rotation=round(rotation(face.points), 2), face_score=round(face.score, 5))
            out.append((row, crop))
        return out


def best_face(faces, box=None):
    """The face to keep when one is wanted: the one overlapping the given box most (a dataset's
    annotated face), else the largest. None when there is none (or none overlaps the box)."""
    if not faces:
        return None
    if box is None:
        return faces[0]
    overlap = iou([f.box for f in faces], [box])[:, 0]
    return faces[int(overlap.argmax())] if overlap.max() > 0 else None


def iou(a, b):
    """IoU of every box in a (N x 4, x y w h) with every box in b (M x 4): an N x M array."""
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, :2] + a[:, None, 2:], b[None, :, :2] + b[None, :, 2:])
    inter = np.clip(hi - lo, 0, None).prod(axis=2)
    union = a[:, 2:].prod(axis=1)[:, None] + b[:, 2:].prod(axis=1)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
