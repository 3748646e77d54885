"""FERDataset: the rows of one or more index files as model inputs, and what is read from an index
(labels, valence/arousal, face boxes, landmarks, the crop template, fingerprints of the rows used).
"""
import hashlib
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from fer.constants import CLASS_NAMES, FACE_MARGIN
from fer.data.faces import Cropper, best_face, crop_rect, five_from_68, make_detector, mean_template, to_unit, warp
from fer.data.transforms import build_transforms, seed_augmentation
from fer.trust import FERError, quiet, recorded_root_fits, resolve_rows
from fer.trust import progress as progress_of

cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # our errors name the file; no [ WARN ] lines


class FERDataError(FERError):
    """Bad input data (unreadable image, malformed metadata); the message names the file."""


def load_image(path):
    """Read an image file as RGB uint8 (grayscale and alpha images become 3-channel)."""
    path = str(path)
    if not os.path.isfile(path):  # also keeps FIFOs and devices (which would block) away from imread
        raise FERDataError(f"{path}: {'not a regular file' if os.path.exists(path) else 'file not found'}")
    img = cv2.imread(path, cv2.IMREAD_COLOR)  # None, not an exception, on a broken file
    if img is None or img.size == 0:
        raise FERDataError(f"{path}: {'empty file' if os.path.getsize(path) == 0 else 'cannot be decoded as an image'}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_metadata(path, columns=("filename", "expression")):
    """Read an index parquet, checking that it exists and has the required columns."""
    path = Path(path)
    if not path.is_file():
        raise FERDataError(f"{path}: metadata file {'not found' if not path.exists() else 'is not a regular file'}")
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for non-parquet input
        raise FERDataError(f"{path}: not a readable parquet file ({type(e).__name__})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise FERDataError(f"{path}: missing column(s) {', '.join(missing)}")
    return df


def images_dir_of(df, metadata_path, root=None):
    """Where the images of an index live: under --root (given after a dataset moved), else the folder
    recorded by the indexer. A recorded folder that no longer exists is an error that says what to do."""
    recorded = Path(df.attrs["images_dir"]) if "images_dir" in df.attrs else None
    if root is not None:
        root = Path(root)
        # The images folder may sit below the dataset folder (AffectNet images/, RAF-DB Image/aligned/):
        # try root itself and the last parts of the recorded path under it, with the first images as probes.
        parts = recorded.parts if recorded else ()
        tails = [root / "images"] + [root.joinpath(*parts[-k:]) for k in range(1, min(4, len(parts)))]
        probes = [f for f in df["filename"].iloc[:20] if isinstance(f, str) and f]
        for folder in [root, *tails]:
            if any((folder / f).is_file() for f in probes):
                return folder
        if probes:  # else the first sample would fail, after the model is built, naming no flag
            raise FERDataError(f"--root {root}: not the images of {metadata_path} (none of its first images, e.g. "
                               f"{probes[0]}, is in {', '.join(str(f) for f in dict.fromkeys([root, *tails]))})")
        return root / "images" if (root / "images").is_dir() else root
    if recorded is not None:
        if not recorded.is_dir():
            raise FERDataError(f"{metadata_path}: the index records the images folder {recorded}, which no longer "
                               f"exists; if the dataset moved, pass --root with its new folder (or index it again)")
        return recorded
    # An index written by another tool: assume the usual layout next to the parquet file.
    here = Path(metadata_path).resolve().parent
    return here / "images" if (here / "images").is_dir() else here


def dataset_root(df, images_dir, root=None):
    """The folder an index's images must lie in (trust rule 1): --root when given (the dataset moved),
    else the dataset root the indexer recorded if the images folder is in it, else the images folder."""
    if root is not None:
        return Path(root)
    recorded = df.attrs.get("dataset_root")
    return Path(recorded) if recorded and recorded_root_fits(images_dir, recorded) else Path(images_dir)


def integer_labels(values):
    """(int64 labels, mask of values that are whole real numbers). Strings, 3.5, complex, NaN are not."""
    values = pd.Series(values)
    if values.dtype.kind in "iu" and not values.isna().any():  # a nullable Int64 column may hold <NA>
        return values.to_numpy(np.int64), np.ones(len(values), bool)
    if values.dtype.kind != "f":  # object (strings from another tool), complex, bool, ...
        numeric = np.array([float(v) if isinstance(v, (int, float, np.integer, np.floating))
                            and not isinstance(v, (bool, np.bool_)) else np.nan for v in values], np.float64)
    else:
        numeric = values.to_numpy(np.float64)
    ok = np.isfinite(numeric) & (numeric == np.round(numeric)) & (np.abs(numeric) < 2**31)
    return np.where(ok, numeric, -1).astype(np.int64), ok


def valence_arousal(df):
    """(float32 (N, 2) values with NaN for "none", mask of rows with a value that is not allowed).

    Allowed: finite numbers in [-1, 1]; NaN or AffectNet's -2 mean "none". Anything else (inf, 1.7,
    strings) would put a wrong target into the loss.
    """
    raw = np.stack([pd.to_numeric(df[c], errors="coerce").to_numpy(np.float64) if c in df.columns
                    else np.full(len(df), np.nan) for c in ("valence", "arousal")], 1)
    unparsable = np.zeros(len(df), bool)
    for k, c in enumerate(("valence", "arousal")):
        if c in df.columns:
            unparsable |= df[c].notna().to_numpy() & np.isnan(raw[:, k])
    none = np.isnan(raw) | (raw == -2)
    bad = (~none & ~((raw >= -1) & (raw <= 1))).any(1) | unparsable
    return np.where(none, np.nan, raw).astype(np.float32), bad


def face_boxes(df):
    """(N, 4) float face boxes (x, y, w, h) where the index has them (AffectNet's CSV release), else NaN."""
    cols = ("face_x", "face_y", "face_w", "face_h")
    if not set(cols) <= set(df.columns):
        return None
    boxes = np.stack([pd.to_numeric(df[c], errors="coerce").to_numpy(np.float64) for c in cols], 1)
    boxes[~(np.isfinite(boxes).all(1) & (boxes[:, 2] > 0) & (boxes[:, 3] > 0))] = np.nan
    return boxes


def crop_face(image, box, margin=FACE_MARGIN):
    """The face box widened by margin x its larger side on every edge, clipped to the image."""
    x0, y0, x1, y1 = crop_rect(image.shape, box, margin)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return image[y0:y1, x0:x1]


def five_points(df):
    """(N, 5, 2) five landmarks per row in pixels of the image file (fer.constants.POINTS order), NaN where
    the index has none: from the 68 landmarks (AffectNet) where present, else from the landmarks5
    column that metadata_parallel.py --detect_landmarks writes."""
    points = np.full((len(df), 5, 2), np.nan)
    for column, convert, n in (("landmarks5", lambda a: a.reshape(5, 2), 10), ("landmarks", five_from_68, 136)):
        if column not in df.columns:
            continue
        for i, value in enumerate(df[column]):
            if value is not None and np.size(value) == n:
                a = np.asarray(value, np.float64)
                if np.isfinite(a).all():
                    points[i] = convert(a)
    return points


def image_size(path):
    """(width, height) of an image file from its header (Pillow reads no pixels)."""
    from PIL import Image

    if not os.path.isfile(path):  # the words load_image uses; also keeps FIFOs away
        raise FERDataError(f"{path}: {'not a regular file' if os.path.exists(path) else 'file not found'}")
    try:
        with Image.open(path) as im:
            return im.size
    except Exception as e:  # Pillow raises many types for damaged files
        raise FERDataError(f"{path}: cannot be read as an image ({type(e).__name__})") from None


def crop_template(metadata_paths, root=None, limit=20000, seed=0, progress=False):
    """(crop_template, rows used): where the five landmarks sit on average in the crops training
    makes of an index (the face box with FACE_MARGIN where the index has one, else the whole image),
    in the unit square; None when no row has landmarks. Over at most `limit` rows with landmarks (a
    fixed random sample beyond that: a mean of 20,000 faces is within ~0.1 % of the side of the full
    mean), reading only image headers."""

    unit, rows = [], []
    for meta in ([metadata_paths] if isinstance(metadata_paths, (str, os.PathLike)) else metadata_paths):
        df = read_metadata(meta)
        points, boxes = five_points(df), face_boxes(df)
        images_dir = images_dir_of(df, meta, root)
        rows += [(images_dir, df["filename"].iat[i], points[i], None if boxes is None else boxes[i])
                 for i in np.flatnonzero(np.isfinite(points).all((1, 2)))]
    if len(rows) > limit:
        rows = [rows[i] for i in sorted(np.random.default_rng(seed).choice(len(rows), limit, replace=False))]
    for images_dir, name, pts, box in progress_of(rows, desc="crop template", unit="img", disable=not progress):
        w, h = image_size(os.path.join(images_dir, name))
        rect = crop_rect((h, w), box) if box is not None and np.isfinite(box).all() else (0, 0, w, h)
        unit.append(to_unit(pts, rect))
    return mean_template(unit), len(unit)


def present_classes(labels):
    """The canonical class names that occur among integer labels, in canonical order."""
    found = set(np.asarray(labels).tolist())
    return [name for k, name in enumerate(CLASS_NAMES) if k in found]


def classes_in(metas):
    """The canonical classes present in index file(s), in canonical order (a model's head, or the
    classes an evaluation set can score). A file none of whose labels is a whole number is an error."""
    found = []
    for meta in metas:
        column = read_metadata(meta)["expression"]
        labels, ok = integer_labels(column)
        if len(ok) and not ok.any():
            raise FERDataError(f"{meta}: no label in the expression column is a whole number (e.g. "
                               f"{column.iloc[0]!r}); labels are class codes 0-7")
        found.append(labels[ok])
    return present_classes(np.concatenate(found) if found else [])


def counted_twice(metas, image_paths, other=None, what="listed more than once"):
    """Refuse rows that would count an image twice: an index file given twice, an image listed twice
    (in one or several index files), or, with other (a second set's image paths), in both sets."""
    metas = list(map(str, metas))
    for i, a in enumerate(metas):
        for b in metas[:i]:
            if os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b):
                raise FERDataError(f"{a}: given twice{f' (as {b})' if a != b else ''}; its rows would be "
                                   f"{'counted twice' if other is None else what}")
    paths = pd.Series([os.path.normpath(p) for p in image_paths], dtype=object)
    twice = paths[paths.isin([os.path.normpath(p) for p in other])] if other is not None else \
        paths[paths.duplicated()]
    if len(twice):
        twice = twice.drop_duplicates()
        raise FERDataError(f"{', '.join(metas)}: {len(twice)} image(s) {what}, e.g. "
                           f"{', '.join(twice.iloc[:3])}; " + ("they would be counted twice (re-index, or remove them)" if other is None
                                                   else "validation would measure training images"))


class FERDataset(Dataset):
    """Samples of one or more index parquets: {"image": 3xHxW float, "y_cls": long, "y_reg": float32
    [v, a] (NaN where the dataset has none), "index"}.

    Labels are canonical (0 Neutral ... 7 Contempt); y_cls is the position of the label in `classes`
    (default: all eight), so a model with a 7-way head gets 0-6. Rows are dropped, counted and named
    when the label is not a whole number, lies outside 0-7 or outside `classes`, or when valence or
    arousal is set but not a finite number in [-1, 1]; with require_va, rows without valence/arousal
    (NaN, or AffectNet's -2) are dropped too. Where the index has a face box (face_x, face_y, face_w,
    face_h) the image is cropped to it with FACE_MARGIN before the transforms.
    template (a crop_template, 5 x 2 in the unit square): each row with five landmarks (five_points)
    is then warped onto it at size x size before the transforms (training's --align template); rows
    without landmarks keep the plain crop, and are counted in `unaligned`.
    recrop (a dict of fer.data.faces.make_detector's arguments and `template`, `align`): every image is
    detected again and cropped as predict.py crops (evaluation's --recrop detect); the face that
    overlaps the index's face box most, else the largest. An image without a face keeps the
    dataset's crop; samples then carry "recrop_found".
    Indexing with (i, seed) instead of i seeds the augmentation, which makes a training run
    reproducible regardless of the number of loader workers.
    """

    def __init__(self, metadata_paths, train=True, size=224, root=None, require_va=False, classes=CLASS_NAMES,
                 verbose=True, template=None, recrop=None, allow_outside_root=False):
        self.allow_outside_root = allow_outside_root
        paths = [metadata_paths] if isinstance(metadata_paths, (str, os.PathLike)) else list(metadata_paths)
        self.classes = list(classes)
        self.paths, self.filenames, self.labels, self.va, self.boxes, self.dropped = [], [], [], [], [], {}
        self.sources = []  # (index file, rows kept from it), in order: the run record fingerprints each
        self.points = []
        self.template = None if template is None else np.asarray(template, np.float64)
        for meta in paths:
            self._add(meta, root, require_va, verbose)
        self.labels = np.concatenate(self.labels) if self.labels else np.zeros(0, np.int64)
        self.va = np.concatenate(self.va) if self.va else np.zeros((0, 2), np.float32)
        self.boxes = np.concatenate(self.boxes) if self.boxes else np.zeros((0, 4))
        counted_twice(paths, self.faces())
        self.points = np.concatenate(self.points) if self.points else np.zeros((0, 5, 2))
        self.has_boxes = bool(np.isfinite(self.boxes).any())
        self.unaligned = int((~np.isfinite(self.points).all((1, 2))).sum()) if template is not None else 0
        self.recrop, self._cropper = recrop, None  # the detector is built in the process that uses it
        self.transform = build_transforms(train, size)
        self.size = size

    def _add(self, meta, root, require_va, verbose):
        df = read_metadata(meta)
        labels, integral = integer_labels(df["expression"])
        va, bad_va = valence_arousal(df)
        names = df["filename"]
        bad_name = ~names.map(lambda f: isinstance(f, str) and f != "").to_numpy(bool)
        in_range = integral & (labels >= 0) & (labels < len(CLASS_NAMES))
        wanted = np.isin(labels, [CLASS_NAMES.index(c) for c in self.classes]) & in_range
        reasons = {"labels that are not whole numbers": ~integral,
                   "labels outside 0-7": integral & ~in_range,
                   f"classes not in {'+'.join(self.classes)}": in_range & ~wanted,
                   "valence/arousal not a finite number in [-1, 1]": bad_va,
                   "file names that are not text": bad_name}
        if require_va:
            reasons["rows without valence/arousal"] = np.isnan(va).any(1)
        keep = np.ones(len(df), bool)
        notes = []
        for why, mask in reasons.items():
            mask = mask & keep
            keep &= ~mask
            if mask.any():
                self.dropped[why] = self.dropped.get(why, 0) + int(mask.sum())
                shown = ["valence", "arousal"] if "valence" in why else ["expression"]
                examples = ", ".join(f"{names.iloc[i]} ({', '.join(str(df[c].iloc[i]) for c in shown if c in df)})"
                                     for i in np.flatnonzero(mask)[:3])
                notes.append(f"{int(mask.sum())} {why}, e.g. {examples}")
        images_dir = images_dir_of(df, meta, root)
        kept = names[keep].tolist()
        self.sources.append((str(meta), len(kept)))
        self.filenames += kept
        # trust rule 1 at loading: the real path of every image, inside the dataset root
        self.paths += resolve_rows(images_dir, kept, dataset_root(df, images_dir, root), str(meta),
                                   self.allow_outside_root)
        head = {CLASS_NAMES.index(c): k for k, c in enumerate(self.classes)}
        self.labels.append(np.array([head[c] for c in labels[keep]], np.int64))
        self.va.append(va[keep])
        boxes = face_boxes(df)
        self.boxes.append(boxes[keep] if boxes is not None else np.full((int(keep.sum()), 4), np.nan))
        self.points.append(five_points(df)[keep] if self.template is not None else  # only the warp needs them
                           np.full((int(keep.sum()), 5, 2), np.nan))
        if verbose and (notes or not quiet()):  # with --quiet, only when rows were dropped
            print(f"{Path(meta).name}: kept {int(keep.sum())}/{len(df)} rows" + "".join(f"; dropped {n}" for n in notes))

    def faces(self):
        """Each row's image path, with its face box where it has one (two faces of one photo are two rows)."""
        return [p if not np.isfinite(b).all() else f"{p} (face box {', '.join(f'{v:g}' for v in b)})"
                for p, b in zip(self.paths, self.boxes)]

    def __len__(self):
        return len(self.paths)

    def path(self, i):
        return self.paths[i]

    def __getitem__(self, item):
        i, seed = item if isinstance(item, tuple) else (item, None)
        if seed is not None:
            seed_augmentation(self.transform, seed)
        image = load_image(self.paths[i])
        found = self.recrop is not None and self._recrop(i, image)
        if found is not False:
            image = found
        else:
            image = self._dataset_crop(i, image)
        image = self.transform(image=image)["image"]
        sample = {"image": image, "y_cls": torch.tensor(self.labels[i]),
                  "y_reg": torch.tensor(self.va[i]), "index": torch.tensor(i)}
        if self.recrop is not None:
            sample["recrop_found"] = torch.tensor(found is not False)
        return sample

    def _dataset_crop(self, i, image):
        """The crop the dataset defines: the face box with FACE_MARGIN (where the index has one), then
        the warp onto the template (with one, for rows with landmarks)."""
        points = self.points[i]
        if self.has_boxes and np.isfinite(self.boxes[i]).all():
            x0, y0, x1, y1 = crop_rect(image.shape, self.boxes[i])
            if x1 - x0 < 2 or y1 - y0 < 2:
                raise FERDataError(f"{self.paths[i]}: face box {self.boxes[i].tolist()} lies outside the "
                                   f"{image.shape[1]}x{image.shape[0]} image")
            image, points = image[y0:y1, x0:x1], points - (x0, y0)
        if self.template is not None and np.isfinite(points).all():
            aligned = warp(image, points, self.template, self.size)
            image = image if aligned is None else aligned  # landmarks all in one place: the plain crop
        return image

    def _recrop(self, i, image):
        """The face detected again and cropped as predict.py crops it, or False without a face."""
        if self._cropper is None:
            r = self.recrop
            self._cropper = Cropper(make_detector(r["detector"], r["min_face"], r["threshold"]),
                                             r["template"], r["align"], self.size)
        box = self.boxes[i] if np.isfinite(self.boxes[i]).all() else None
        face = best_face(self._cropper.detector(image), box)
        crop = None if face is None else self._cropper.crop(image, face)
        return False if crop is None else crop


# --- fingerprints -------------------------------------------------------------------------------
def rows_fingerprint(filenames, labels, va):
    """SHA-256 of the rows a run used (file names, class names, valence/arousal), not of the file bytes:
    the same rows written in another format or order of columns give the same fingerprint."""
    h = hashlib.sha256()
    h.update("\n".join(map(str, filenames)).encode() + b"\0")
    h.update("\n".join(map(str, labels)).encode() + b"\0")
    va = np.asarray(va, "<f4")
    h.update(np.where(np.isnan(va), np.float32(np.nan), va).astype("<f4").tobytes())  # one NaN bit pattern
    return h.hexdigest()


def data_record(ds):
    """Per index file of a FERDataset: path, fingerprint of the rows used, row count, rows per class."""
    out, start = [], 0
    for path, count in ds.sources:
        rows = slice(start, start + count)
        start += count
        names = [ds.classes[k] for k in ds.labels[rows]]
        per_class = np.bincount(ds.labels[rows], minlength=len(ds.classes))
        out.append({"path": str(path), "fingerprint": rows_fingerprint(ds.filenames[rows], names, ds.va[rows]),
                    "rows": int(count), "rows_per_class": dict(zip(ds.classes, map(int, per_class)))})
    return out
