"""FERDataset and the albumentations transforms shared by training, evaluation and prediction.

Run it to look at what the model will see:

    python FER_transform.py --meta metadata_train.parquet --out augmented_samples.png
"""
import argparse
import os
import random
import sys
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

from FER_io import FERError  # noqa: E402

CLASS_NAMES = ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    img = cv2.imread(path, cv2.IMREAD_COLOR)  # None, not an exception, on a missing or broken file
    if img is None or img.size == 0:
        why = "file not found" if not os.path.exists(path) else \
            "empty file" if os.path.getsize(path) == 0 else "cannot be decoded as an image"
        raise FERDataError(f"{path}: {why}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_metadata(path, columns=("filename", "expression")):
    """Read an index parquet, checking that it exists and has the required columns."""
    path = Path(path)
    if not path.is_file():
        raise FERDataError(f"{path}: metadata file not found")
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for non-parquet input
        raise FERDataError(f"{path}: not a readable parquet file ({type(e).__name__})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise FERDataError(f"{path}: missing column(s) {', '.join(missing)}")
    return df


def images_dir_of(df, metadata_path, root=None):
    """Where the images of an index live: the given root, else the folder recorded by the indexer."""
    if root is not None:
        root = Path(root)
        return root / "images" if (root / "images").is_dir() else root
    if "images_dir" in df.attrs:
        return Path(df.attrs["images_dir"])
    # An index written by another tool: assume the usual layout next to the parquet file.
    here = Path(metadata_path).resolve().parent
    return here / "images" if (here / "images").is_dir() else here


class FERDataset(Dataset):
    """Samples of an index parquet: {"image": 3xHxW float, "y_cls": long, "y_reg": float32 [v, a], "index"}.

    Rows with labels outside 0-7 are dropped; with require_va (the default) so are rows whose
    valence or arousal is missing or marked invalid (AffectNet uses -2). An index without
    valence/arousal columns can be read with require_va=False; y_reg is then NaN.
    Indexing with (i, seed) instead of i seeds the augmentation, which makes a training run
    reproducible regardless of the number of loader workers.
    """

    def __init__(self, metadata_path, train=True, size=224, root=None, require_va=True, verbose=True):
        df = read_metadata(metadata_path)
        for col in ("valence", "arousal"):
            if col not in df.columns:
                if require_va:
                    raise FERDataError(f"{metadata_path}: missing column {col}")
                df[col] = np.nan
        n_all = len(df)
        keep = df["expression"].between(0, len(CLASS_NAMES) - 1)
        n_bad_label = int((~keep).sum())
        if require_va:
            keep &= df["valence"].gt(-2) & df["arousal"].gt(-2)  # NaN compares False: dropped too
        df = df[keep].reset_index(drop=True)
        if verbose:
            print(f"{Path(metadata_path).name}: kept {len(df)}/{n_all} rows "
                  f"({n_bad_label} with labels outside 0-7, "
                  f"{n_all - len(df) - n_bad_label} without valid valence/arousal)")
        self.images_dir = images_dir_of(df, metadata_path, root)
        self.filenames = df["filename"].astype(str).tolist()
        self.labels = df["expression"].to_numpy(np.int64)
        self.va = df[["valence", "arousal"]].to_numpy(np.float32)
        self.size = size
        self.transform = build_transforms(train, size)

    def __len__(self):
        return len(self.filenames)

    def path(self, i):
        return os.path.join(self.images_dir, self.filenames[i])

    def __getitem__(self, item):
        i, seed = item if isinstance(item, tuple) else (item, None)
        if seed is not None:
            seed_augmentation(self.transform, seed)
        image = self.transform(image=load_image(self.path(i)))["image"]
        return {"image": image, "y_cls": torch.tensor(self.labels[i]),
                "y_reg": torch.tensor(self.va[i]), "index": torch.tensor(i)}


def denormalize(images):
    """Normalised NCHW tensor -> NHWC uint8, for looking at samples."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((images * std + mean).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--meta", required=True, help="index parquet (e.g. metadata_train.parquet)")
    p.add_argument("--root", help="dataset folder, if not the one recorded in the index")
    p.add_argument("--size", type=int, default=224, help="image side after the transforms")
    p.add_argument("--n", type=int, default=16, help="number of samples in the grid")
    p.add_argument("--val", action="store_true", help="show the validation transform instead of augmentation")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample choice and the augmentation")
    p.add_argument("--out", default="augmented_samples.png", help="where to save the PNG grid")
    args = p.parse_args()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        ds = FERDataset(args.meta, train=not args.val, size=args.size, root=args.root)
        if len(ds) == 0:
            raise FERDataError(f"{args.meta}: no usable rows")
        rng = np.random.default_rng(args.seed)
        picks = rng.choice(len(ds), size=min(args.n, len(ds)), replace=False)
        batch = torch.utils.data.default_collate([ds[(int(i), args.seed + k)] for k, i in enumerate(picks)])
    except FERDataError as e:
        sys.exit(f"error: {e}")
    print(f"batch: image {tuple(batch['image'].shape)} {batch['image'].dtype}, "
          f"y_cls {tuple(batch['y_cls'].shape)} {batch['y_cls'].dtype}, "
          f"y_reg {tuple(batch['y_reg'].shape)} {batch['y_reg'].dtype}; "
          f"pixel mean {batch['image'].mean():.3f}, std {batch['image'].std():.3f}")
    cols = int(np.ceil(np.sqrt(len(picks))))
    rows = int(np.ceil(len(picks) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.5 * rows), squeeze=False)
    for ax, img, y, (v, a) in zip(axes.flat, denormalize(batch["image"]), batch["y_cls"], batch["y_reg"].tolist()):
        ax.imshow(img)
        ax.set_title(f"{CLASS_NAMES[y]}\nV {v:+.2f}  A {a:+.2f}", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"saved {len(picks)} samples to {args.out}")


if __name__ == "__main__":
    main()
