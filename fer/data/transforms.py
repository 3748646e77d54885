"""The albumentations pipelines of training and validation, their per-sample seeding, and MixUp/CutMix.
"""
import random

import albumentations as A
import cv2
import numpy as np
import torch
from albucore import clipped, float32_io
from albumentations.pytorch import ToTensorV2

from fer.constants import IMAGENET_MEAN, IMAGENET_STD


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
