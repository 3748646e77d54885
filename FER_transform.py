"""FERDataset and the albumentations transforms shared by training, evaluation and prediction.

Run it to look at what the model will see:

    python FER_transform.py --meta metadata_train.parquet --out augmented_samples.png
"""
import FER_io  # noqa: F401  (first: a Ctrl-C during the slow imports below ends in one line)
import os
import random
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check on import
import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from albucore import clipped, float32_io  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402

cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # our errors name the file; no [ WARN ] lines

import FER_face  # noqa: E402
from FER_io import (ArgumentParser, FERError, check_input, check_not_inputs, check_output, int_at_least,  # noqa: E402
                   nonneg_int, run_main, staged_outputs)

CLASS_NAMES = ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Face crops (AffectNet's CSV release, predict.py's detector): the box widened by this share of its
# larger side on every edge, since detector/annotation boxes are tight and AffectNet's own crops
# include forehead and chin.
FACE_MARGIN = 0.2


class FERDataError(FERError):
    """Bad input data (unreadable image, malformed metadata); the message names the file."""


def poisson(rng, lam, shape, tail=1e-12):
    """Poisson(lam) samples as float32 by inversion of the CDF (exact but for a tail mass of 1e-12).

    ISONoise's rates are small (std of the lightness x intensity, below 0.5), where a few comparisons
    against the CDF are about twice as fast as Generator.poisson.
    """
    if lam > 10:
        return rng.poisson(lam, shape).astype(np.float32)
    cdf = [np.exp(-lam)]
    pmf = cdf[0]
    while 1 - cdf[-1] > tail and len(cdf) < 100:  # lam <= 10: the tail is below 1e-12 by k = 40
        pmf *= lam / len(cdf)
        cdf.append(cdf[-1] + pmf)
    u = rng.random(shape)
    if len(cdf) > 12:
        return np.searchsorted(cdf[:-1], u, side="right").astype(np.float32)
    k = np.zeros(shape, np.float32)
    for c in cdf[:-1]:
        k += u >= c
    return k


@float32_io
@clipped
def iso_noise(image, color_shift, intensity, rng):
    """albumentations' iso_noise (2.x): Poisson lightness noise and Gaussian hue noise in HLS space,
    with the noise drawn in float32 (the precision of the image it is added to) by the sampler above."""
    hls = cv2.cvtColor(image, cv2.COLOR_RGB2HLS)
    lightness_std = cv2.meanStdDev(hls)[1][1, 0]
    lum = poisson(rng, lightness_std * intensity, hls.shape[:2])
    hls[..., 0] += rng.standard_normal(hls.shape[:2], dtype=np.float32) * np.float32(color_shift * intensity)
    lightness = hls[..., 1]
    lightness += lum * np.float32(intensity) * (1 - lightness)
    np.clip(lightness, 0, 1, out=lightness)
    return cv2.cvtColor(hls, cv2.COLOR_HLS2RGB)  # @clipped clips to [0, 1]


class FastISONoise(A.ISONoise):
    """A.ISONoise with the same parameters and noise distribution, about 1.6x faster (see bench.py)."""

    def apply(self, img, color_shift, intensity, random_seed, **params):
        return iso_noise(img, color_shift, intensity, np.random.default_rng(random_seed))


def build_transforms(train=True, size=224):
    """Train: the spec's augmentation chain. Eval: resize only. Both end ImageNet-normalised CHW float."""
    tail = [A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD), ToTensorV2()]
    if not train:
        return A.Compose([A.Resize(size, size)] + tail)
    return A.Compose([
        A.RandomResizedCrop(size=(size, size), scale=(0.9, 1.0), ratio=(0.97, 1.03)),
        A.HorizontalFlip(p=0.5),
        A.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.05, hue=0.02, p=0.5),
        A.Affine(translate_percent=(-0.05, 0.05), scale=(0.95, 1.05), rotate=(-10, 10),
                 border_mode=cv2.BORDER_REFLECT_101, p=0.4),
        A.CoarseDropout(num_holes_range=(1, 2), hole_height_range=(0.1, 0.2), hole_width_range=(0.1, 0.2), p=0.4),
        FastISONoise(color_shift=(0.01, 0.05), intensity=(0.1, 0.3), p=0.4),
        A.MedianBlur(blur_limit=3, p=0.15),
        A.GaussianBlur(blur_limit=(3, 5), p=0.4),
        A.CLAHE(clip_limit=2.0, tile_grid_size=(8, 8), p=0.3),
    ] + tail)


def seed_augmentation(transform, seed):
    """Make the next call of an albumentations chain depend on seed only.

    One random stream for the whole chain: Compose.set_random_seed would give every transform its
    own generator with the same seed, so each p-check would draw the same number, and flips, colour
    jitter, dropout, noise... would always come together.
    """
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))


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


def crop_rect(shape, box, margin=FACE_MARGIN):
    """(x0, y0, x1, y1) of the face box widened by margin x its larger side on every edge, clipped to
    an image of this shape (height, width, ...)."""
    x, y, w, h = box
    m = margin * max(w, h)
    x0, y0 = int(max(0, round(x - m))), int(max(0, round(y - m)))
    x1, y1 = int(min(shape[1], round(x + w + m))), int(min(shape[0], round(y + h + m)))
    return x0, y0, x1, y1


def crop_face(image, box, margin=FACE_MARGIN):
    """The face box widened by margin x its larger side on every edge, clipped to the image."""
    x0, y0, x1, y1 = crop_rect(image.shape, box, margin)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return image[y0:y1, x0:x1]


def five_points(df):
    """(N, 5, 2) five landmarks per row in pixels of the image file (FER_face.POINTS order), NaN where
    the index has none: from the 68 landmarks (AffectNet) where present, else from the landmarks5
    column that metadata_parallel.py --detect_landmarks writes."""
    points = np.full((len(df), 5, 2), np.nan)
    for column, convert, n in (("landmarks5", lambda a: a.reshape(5, 2), 10), ("landmarks", FER_face.five_from_68, 136)):
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
    from tqdm import tqdm

    unit, rows = [], []
    for meta in ([metadata_paths] if isinstance(metadata_paths, (str, os.PathLike)) else metadata_paths):
        df = read_metadata(meta)
        points, boxes = five_points(df), face_boxes(df)
        images_dir = images_dir_of(df, meta, root)
        rows += [(images_dir, df["filename"].iat[i], points[i], None if boxes is None else boxes[i])
                 for i in np.flatnonzero(np.isfinite(points).all((1, 2)))]
    if len(rows) > limit:
        rows = [rows[i] for i in sorted(np.random.default_rng(seed).choice(len(rows), limit, replace=False))]
    for images_dir, name, pts, box in tqdm(rows, desc="crop template", unit="img", disable=not progress, leave=False):
        w, h = image_size(os.path.join(images_dir, name))
        rect = crop_rect((h, w), box) if box is not None and np.isfinite(box).all() else (0, 0, w, h)
        unit.append(FER_face.to_unit(pts, rect))
    return FER_face.mean_template(unit), len(unit)


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
    recrop (a dict of FER_face.make_detector's arguments and `template`, `align`): every image is
    detected again and cropped as predict.py crops (evaluation's --recrop detect); the face that
    overlaps the index's face box most, else the largest. An image without a face keeps the
    dataset's crop; samples then carry "recrop_found".
    Indexing with (i, seed) instead of i seeds the augmentation, which makes a training run
    reproducible regardless of the number of loader workers.
    """

    def __init__(self, metadata_paths, train=True, size=224, root=None, require_va=False, classes=CLASS_NAMES,
                 verbose=True, template=None, recrop=None):
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
        self.paths += [os.path.join(images_dir, f) for f in kept]
        head = {CLASS_NAMES.index(c): k for k, c in enumerate(self.classes)}
        self.labels.append(np.array([head[c] for c in labels[keep]], np.int64))
        self.va.append(va[keep])
        boxes = face_boxes(df)
        self.boxes.append(boxes[keep] if boxes is not None else np.full((int(keep.sum()), 4), np.nan))
        self.points.append(five_points(df)[keep] if self.template is not None else  # only the warp needs them
                           np.full((int(keep.sum()), 5, 2), np.nan))
        if verbose:
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
            aligned = FER_face.warp(image, points, self.template, self.size)
            image = image if aligned is None else aligned  # landmarks all in one place: the plain crop
        return image

    def _recrop(self, i, image):
        """The face detected again and cropped as predict.py crops it, or False without a face."""
        if self._cropper is None:
            r = self.recrop
            self._cropper = FER_face.Cropper(FER_face.make_detector(r["detector"], r["min_face"], r["threshold"]),
                                             r["template"], r["align"], self.size)
        box = self.boxes[i] if np.isfinite(self.boxes[i]).all() else None
        face = FER_face.best_face(self._cropper.detector(image), box)
        crop = None if face is None else self._cropper.crop(image, face)
        return False if crop is None else crop


class BatchMix:
    """MixUp and/or CutMix (torchvision.transforms.v2, one of them per batch when both are on) of a
    training batch: the expression target becomes a distribution over classes, valence/arousal are mixed
    with the same weights (NaN where a mixed-in sample has none). Draws from torch's global RNG."""

    def __init__(self, num_classes, mixup=None, cutmix=None):
        from torchvision.transforms import v2
        self.num_classes = num_classes
        self.choices = [(cls, alpha) for cls, alpha in ((v2.MixUp, mixup), (v2.CutMix, cutmix)) if alpha]

    def __call__(self, x, y_cls, y_reg):
        from torchvision.transforms import v2
        n = len(y_cls)
        # Mixing sample indices (labels 0..n-1) gives the weight of every source sample in every mixed one.
        mixes = [cls(alpha=alpha, num_classes=n) for cls, alpha in self.choices]
        mix = mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)
        x, weights = mix(x, torch.arange(n, device=x.device))
        weights = weights.to(torch.float32)
        y_soft = weights @ torch.nn.functional.one_hot(y_cls, self.num_classes).float()
        has = ~torch.isnan(y_reg)
        va = weights @ torch.nan_to_num(y_reg)
        va = torch.where(weights @ (~has).float() > 0, torch.full_like(va, float("nan")), va)
        return x, y_soft, va


def denormalize(images):
    """Normalised NCHW tensor -> NHWC uint8, for looking at samples."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((images * std + mean).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()


def main(argv=None):
    p = ArgumentParser(description=__doc__)
    p.add_argument("--meta", required=True, nargs="+", help="index parquet(s) (e.g. metadata_train.parquet)")
    p.add_argument("--root", help="dataset folder, if not the one recorded in the index")
    p.add_argument("--size", type=int_at_least(32, 4096), default=224,
                   help="image side after the transforms (32-4096, as training's --img_size)")
    p.add_argument("--n", type=int_at_least(1, 400), default=16, help="number of samples in the grid (1-400)")
    p.add_argument("--val", action="store_true", help="show the validation transform instead of augmentation")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of the sample choice and the augmentation")
    p.add_argument("--out", default="augmented_samples.png", help="where to save the PNG grid")
    args = p.parse_args(argv)
    if Path(args.out).suffix.lower() not in (".png", ".jpg", ".jpeg", ".pdf", ".svg"):
        p.error(f"argument --out: {args.out} must end in .png, .jpg, .pdf or .svg (the picture's format)")
    check_output(args.out, "--out")
    check_not_inputs([("--out", args.out)], [("--meta", m) for m in args.meta])
    if args.root:
        check_input(args.root, "--root", folder=True)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = FERDataset(args.meta, train=not args.val, size=args.size, root=args.root)
    if len(ds) == 0:
        raise FERDataError(f"{', '.join(args.meta)}: no usable rows")
    if os.path.exists(args.out):  # the grid must not replace one of the dataset's own images
        out = os.path.realpath(args.out)
        for p in ds.paths:
            if os.path.basename(p) == os.path.basename(out) and os.path.realpath(p) == out:
                raise FERError(f"--out {args.out}: is one of the images of --meta ({p}); choose another name")
    rng = np.random.default_rng(args.seed)
    picks = rng.choice(len(ds), size=min(args.n, len(ds)), replace=False)
    batch = torch.utils.data.default_collate([ds[(int(i), args.seed + k)] for k, i in enumerate(picks)])
    print(f"batch: image {tuple(batch['image'].shape)} {batch['image'].dtype}, "
          f"y_cls {tuple(batch['y_cls'].shape)} {batch['y_cls'].dtype}, "
          f"y_reg {tuple(batch['y_reg'].shape)} {batch['y_reg'].dtype}; "
          f"pixel mean {batch['image'].mean():.3f}, std {batch['image'].std():.3f}")
    cols = int(np.ceil(np.sqrt(len(picks))))
    rows = int(np.ceil(len(picks) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.5 * rows), squeeze=False)
    for ax, img, y, (v, a) in zip(axes.flat, denormalize(batch["image"]), batch["y_cls"], batch["y_reg"].tolist()):
        ax.imshow(img)
        ax.set_title(f"{ds.classes[y]}\nV {v:+.2f}  A {a:+.2f}", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    with staged_outputs() as stage:
        fig.savefig(stage(args.out), dpi=100)
    print(f"saved {len(picks)} samples to {args.out}")


if __name__ == "__main__":
    run_main(main)
