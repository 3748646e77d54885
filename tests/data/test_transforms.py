"""fer/data/transforms.py: the pipelines' outputs, independent per-sample seeding, the fast ISONoise
and its Poisson sampler, MixUp/CutMix.
"""
import numpy as np
import pytest
import torch

from fer.constants import IMAGENET_MEAN, IMAGENET_STD
from fer.data.dataset import FERDataset, load_image
from fer.data.transforms import BatchMix, FastISONoise, build_transforms, poisson


# --- dataset and transforms ---------------------------------------------------------------------
def test_seeded_augmentations_are_independent(demo):
    """Per-sample seeding must not tie the transforms together: each p-check is its own draw."""
    import albumentations as A

    calls = []

    class Record(A.ImageOnlyTransform):
        def __init__(self, name, p):
            super().__init__(p=p)
            self.name = name

        def apply(self, img, **params):
            calls[-1].add(self.name)
            return img
    ds = FERDataset(demo["train"], train=True, size=32, verbose=False)
    ds.transform = A.Compose([Record("a", 0.5), Record("b", 0.5), Record("c", 0.4), A.ToFloat()])
    for seed in range(1000):
        calls.append(set())
        ds[(seed % len(ds), seed)]
    def share(*names):
        return np.mean([set(names) <= c for c in calls])
    assert 0.45 < share("a") < 0.55 and 0.35 < share("c") < 0.45
    assert 0.2 < share("a", "b") < 0.3 and 0.15 < share("a", "c") < 0.25  # 0.25 and 0.2 when independent


def test_grayscale_and_odd_sizes(tmp_path):
    import cv2

    path = tmp_path / "g.png"
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 255, (50, 37), dtype=np.uint8))
    img = load_image(path)
    assert img.shape == (50, 37, 3)
    for train in (True, False):
        assert build_transforms(train, 48)(image=img)["image"].shape == (3, 48, 48)


@pytest.mark.parametrize("size", [32, 64, 224])
def test_transform_output_normalised(size):
    img = np.full((80, 60, 3), (124, 116, 104), np.uint8)  # ~ the ImageNet mean colour
    out = build_transforms(False, size)(image=img)["image"]
    assert out.shape == (3, size, size)
    expected = [(c / 255 - m) / s for c, m, s in zip((124, 116, 104), IMAGENET_MEAN, IMAGENET_STD)]
    assert torch.allclose(out.mean((1, 2)), torch.tensor(expected, dtype=torch.float32), atol=1e-4)


# --- the faster ISONoise --------------------------------------------------------------------------
@pytest.mark.parametrize("lam", [0.02, 0.4, 3.0, 25.0])
def test_poisson_sampler_matches_pmf(lam):
    from scipy.stats import poisson as exact

    n = 400_000
    k = poisson(np.random.default_rng(0), lam, n)
    assert k.dtype == np.float32 and k.shape == (n,)
    counts = np.bincount(k.astype(np.int64))
    expected = n * exact.pmf(np.arange(len(counts)), lam)
    big = expected > 50  # each bin within 5 binomial standard deviations
    assert (np.abs(counts[big] - expected[big]) < 5 * np.sqrt(expected[big])).all()
    assert abs(k.mean() - lam) < 5 * np.sqrt(lam / n) and abs(k.var() / lam - 1) < 0.02


def test_fast_isonoise_matches_albumentations(demo):
    """Same parameters, same noise model: the changes it makes to images have the same statistics."""
    import albumentations as A

    images = [load_image(demo["root"] / "images" / f"{i}.jpg") for i in range(8)]
    kw = dict(color_shift=(0.01, 0.05), intensity=(0.1, 0.3), p=1.0)

    def noise(t):
        out = []
        for s in range(300):
            t.set_random_seed(s)
            out.append(t(image=images[s % 8])["image"].astype(np.int16) - images[s % 8])
        return np.stack(out)
    ref, fast = noise(A.ISONoise(**kw)), noise(FastISONoise(**kw))
    assert fast.dtype == ref.dtype and fast.shape == ref.shape
    assert (ref != 0).mean() > 0.005  # the noise is visible at all on these images
    np.testing.assert_allclose(fast.mean(axis=(0, 1, 2)), ref.mean(axis=(0, 1, 2)), rtol=0.05)
    np.testing.assert_allclose(fast.std(), ref.std(), rtol=0.03)
    np.testing.assert_allclose((fast != 0).mean(), (ref != 0).mean(), rtol=0.03)
    np.testing.assert_allclose(np.percentile(np.abs(fast[fast != 0]), [25, 50, 75, 99]),
                               np.percentile(np.abs(ref[ref != 0]), [25, 50, 75, 99]), rtol=0.1, atol=1)


# --- knobs --------------------------------------------------------------------------------------
@pytest.mark.parametrize("mixup,cutmix", [(0.8, None), (None, 1.0), (0.8, 1.0)])
def test_mixed_targets_sum_to_one_and_mix_valence_alike(mixup, cutmix):
    torch.manual_seed(0)
    mix = BatchMix(8, mixup, cutmix)
    y = torch.randint(0, 8, (16,))
    va = torch.stack([y.float(), torch.rand(16)], 1)  # valence = the class index: mixed alike or not
    va[5, 1] = float("nan")  # no arousal for sample 5
    for _ in range(5):
        x, soft, mixed = mix(torch.randn(16, 3, 32, 32), y, va)
        assert x.shape == (16, 3, 32, 32) and soft.shape == (16, 8) and (soft >= 0).all()
        torch.testing.assert_close(soft.sum(1), torch.ones(16))
        torch.testing.assert_close(mixed[:, 0], soft @ torch.arange(8.0))
        assert mixed[:, 1].isnan().sum() in (1, 2) and mixed[5, 1].isnan()  # itself and whoever mixes it in
    assert not torch.equal(soft, torch.nn.functional.one_hot(y, 8).float())
