"""The data layer: demo generator, indexer, dataset and transforms."""
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_script

from fer.constants import IMAGENET_MEAN, IMAGENET_STD
from fer.data import demo as make_demo_data
from fer.data import formats
from fer.data import index as mp
from fer.data.dataset import FERDataError, FERDataset, load_image
from fer.data.transforms import FastISONoise, build_transforms, poisson


# --- demo generator -----------------------------------------------------------------------------
def test_demo_layout_and_string_arrays(demo):
    root = demo["root"]
    images = sorted(os.listdir(root / "images"))
    assert len(images) == 64 and all(f.endswith(".jpg") for f in images)
    exp = np.load(root / "annotations" / "0_exp.npy")
    val = np.load(root / "annotations" / "0_val.npy")
    assert exp.dtype.kind == "U" and exp.shape == () and 0 <= int(exp) <= 7
    assert val.dtype.kind == "U" and -1 <= float(val) <= 1
    lnd = np.load(root / "annotations" / "0_lnd.npy")
    assert lnd.shape == (136,) and lnd.dtype == np.float64
    img = load_image(root / "images" / "0.jpg")
    assert img.shape == (32, 32, 3)
    # Landmarks lie on the image.
    assert (lnd >= -2).all() and (lnd <= 34).all()


def test_demo_deterministic_and_balanced(tmp_path):
    a = make_demo_data.make_dataset(tmp_path / "a", n=24, size=32, seed=5, progress=False)
    b = make_demo_data.make_dataset(tmp_path / "b", n=24, size=32, seed=5, progress=False)
    c = make_demo_data.make_dataset(tmp_path / "c", n=24, size=32, seed=6, progress=False)
    for name in ("3.jpg",):
        assert (a / "images" / name).read_bytes() == (b / "images" / name).read_bytes()
        assert (a / "images" / name).read_bytes() != (c / "images" / name).read_bytes()
    labels = [int(np.load(a / "annotations" / f"{i}_exp.npy")) for i in range(24)]
    assert np.bincount(labels, minlength=8).tolist() == [3] * 8


def test_demo_valence_follows_class(tmp_path):
    root = make_demo_data.make_dataset(tmp_path, n=160, size=32, seed=0, progress=False)
    rows = [(int(np.load(root / "annotations" / f"{i}_exp.npy")), float(np.load(root / "annotations" / f"{i}_val.npy")))
            for i in range(160)]
    happy = np.mean([v for c, v in rows if c == 1])
    sad = np.mean([v for c, v in rows if c == 2])
    assert happy > 0.4 and sad < -0.4


# --- index --------------------------------------------------------------------------------------
def test_index_columns_and_dtypes(demo):
    df = pd.read_parquet(demo["all"])
    assert list(df.columns) == ["filename", "expression", "valence", "arousal", "landmarks", "source_label"]
    assert df["expression"].dtype == np.int64
    # source_label is the label text exactly as the _exp.npy file holds it.
    assert (df["source_label"] == [str(np.load(demo["root"] / "annotations" / f.replace(".jpg", "_exp.npy")))
                                   for f in df["filename"]]).all()
    assert df["valence"].dtype == np.float64 and df["arousal"].dtype == np.float64
    assert len(df) == 64 and len(df["landmarks"].iloc[0]) == 136
    assert df["filename"].tolist() == sorted(df["filename"])
    assert os.path.isabs(df.attrs["images_dir"])
    # String-typed annotations parse to the same numbers np.load gives.
    row = df[df["filename"] == "7.jpg"].iloc[0]
    assert row["valence"] == float(np.load(demo["root"] / "annotations" / "7_val.npy"))


def test_split_is_stratified_and_reproducible(demo):
    df = pd.read_parquet(demo["all"])
    train, val = mp.stratified_split(df, 0.25, 42)
    assert len(train) == 48 and len(val) == 16
    assert set(train["filename"]).isdisjoint(val["filename"])
    assert val["expression"].value_counts().tolist() == [2] * 8  # 8 per class -> 2 in val
    again, _ = mp.stratified_split(df.sample(frac=1, random_state=3), 0.25, 42)  # any input order
    assert again["filename"].tolist() == train["filename"].tolist()
    other, _ = mp.stratified_split(df, 0.25, 7)
    assert other["filename"].tolist() != train["filename"].tolist()


def test_split_matches_sklearn_recipe(demo):
    from sklearn.model_selection import StratifiedShuffleSplit

    df = pd.read_parquet(demo["all"]).sort_values("filename").reset_index(drop=True)
    _, val_idx = next(StratifiedShuffleSplit(1, test_size=0.2, random_state=42).split(df, df["expression"]))
    _, val = mp.stratified_split(df, 0.2, 42)
    assert sorted(val["filename"]) == sorted(df["filename"].iloc[val_idx])


def make_tree(tmp_path, n=16):
    root = make_demo_data.make_dataset(tmp_path / "ds", n=n, size=32, seed=2, progress=False)
    return root, root / "annotations"


def test_numeric_npy_and_bad_files_are_counted(tmp_path):
    root, ann = make_tree(tmp_path, n=24)
    np.save(ann / "0_exp.npy", np.int64(3))                    # numeric label
    np.save(ann / "0_val.npy", np.float32(0.25))               # numeric valence
    np.save(ann / "1_exp.npy", np.array("9"))                  # outside 0-7
    os.remove(ann / "2_exp.npy")                               # no label
    (ann / "3_exp.npy").write_bytes(b"garbage")                # corrupt label
    (ann / "4_aro.npy").write_bytes(b"\x93NUMPY\x01\x00")      # corrupt optional value
    np.save(ann / "5_lnd.npy", np.zeros(10))                   # wrong landmark count
    np.save(ann / "6_exp.npy", np.array([1, 2], dtype=object), allow_pickle=True)  # pickled objects
    df, problems = mp.build_index(root / "images", ann, workers=1, progress=False)
    assert len(df) == 21  # 24 - missing - corrupt - pickled
    row = df.set_index("filename").loc["0.jpg"]
    assert row["expression"] == 3 and row["valence"] == 0.25
    assert df.set_index("filename").loc["1.jpg", "expression"] == 9
    assert np.isnan(df.set_index("filename").loc["4.jpg", "arousal"])
    assert df.set_index("filename").loc["5.jpg", "landmarks"] is None
    assert [n for n, _ in problems["missing_exp"]] == ["2.jpg"]
    assert {n for n, _ in problems["corrupt_npy"]} == {"3_exp.npy", "4_aro.npy", "5_lnd.npy", "6_exp.npy"}
    assert [n for n, _ in problems["bad_label"]] == ["1.jpg"]
    train, val = mp.stratified_split(df, 0.5, 0)
    assert 9 not in set(train["expression"]) | set(val["expression"])


def test_parallel_index_equals_serial(tmp_path, monkeypatch):
    root, ann = make_tree(tmp_path, n=40)
    monkeypatch.setattr(formats, "CHUNK", 7)  # several worker tasks
    serial, _ = mp.build_index(root / "images", ann, workers=1, progress=False)
    parallel, _ = mp.build_index(root / "images", ann, workers=2, progress=False)
    pd.testing.assert_frame_equal(serial.drop(columns="landmarks"), parallel.drop(columns="landmarks"))
    assert all(np.array_equal(a, b) for a, b in zip(serial["landmarks"], parallel["landmarks"]))


def test_cli_writes_three_files_and_summary(tmp_path):
    root, ann = make_tree(tmp_path, n=24)
    os.remove(ann / "2_exp.npy")
    r = run_script("metadata_parallel.py", "--root", root, "--out_dir", tmp_path / "out", "--val_fraction", "0.34",
                   "--quiet")
    assert r.returncode == 0, r.stderr
    assert "train 15, val 8" in r.stdout and "1 images without _exp.npy" in r.stdout and "2.jpg" in r.stdout
    assert "rows per class" in r.stdout
    assert [ln.split()[1:] for ln in r.stdout.splitlines() if ln.split()[:1] == ["total"]] == [["15", "8", "23"]]
    for name in ("all", "train", "val"):
        assert (tmp_path / "out" / f"metadata_{name}.parquet").is_file()


def test_cli_val_root(tmp_path):
    root, _ = make_tree(tmp_path, n=16)
    val_root = make_demo_data.make_dataset(tmp_path / "val", n=8, size=32, seed=9, progress=False)
    r = run_script("metadata_parallel.py", "--root", root, "--val_root", val_root, "--out_dir", tmp_path, "--quiet")
    assert r.returncode == 0, r.stderr
    val = pd.read_parquet(tmp_path / "metadata_val.parquet")
    assert len(val) == 8 and val.attrs["images_dir"] == str((val_root / "images").resolve())
    assert len(pd.read_parquet(tmp_path / "metadata_train.parquet")) == 16


@pytest.mark.parametrize("case", ["no_root", "no_images", "too_few"])
def test_cli_bad_input_is_one_line(tmp_path, case):
    root = tmp_path / "ds"
    if case == "no_images":
        root.mkdir()
    elif case == "too_few":
        root, ann = make_tree(tmp_path, n=9)  # class 0 has 2 rows, class 1..7 one each
    r = run_script("metadata_parallel.py", "--root", root, "--out_dir", tmp_path, "--quiet")
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    expected = {"no_root": "folder not found",  # FER_io.check_input: "--root DIR: folder not found"
                "no_images": "images folder not found",
                "too_few": "too few rows to stratify"}[case]
    assert expected in r.stderr and ("ds" in r.stderr or case == "too_few")


def test_verify_images_skips_broken(tmp_path):
    root, ann = make_tree(tmp_path, n=16)
    (root / "images" / "3.jpg").write_bytes(b"not a jpeg")
    df, problems = mp.build_index(root / "images", ann, workers=1, verify_images=True, progress=False)
    assert "3.jpg" not in set(df["filename"]) and [n for n, _ in problems["unreadable_image"]] == ["3.jpg"]


# --- dataset and transforms ---------------------------------------------------------------------
def test_dataset_sample(demo):
    ds = FERDataset(demo["train"], train=True, size=32, verbose=False)
    s = ds[0]
    assert s["image"].shape == (3, 32, 32) and s["image"].dtype == torch.float32
    assert s["y_cls"].dtype == torch.int64 and 0 <= int(s["y_cls"]) <= 7
    assert s["y_reg"].dtype == torch.float32 and s["y_reg"].shape == (2,)
    # Seeded augmentation is reproducible, and differs between seeds.
    assert torch.equal(ds[(0, 11)]["image"], ds[(0, 11)]["image"])
    assert not torch.equal(ds[(0, 11)]["image"], ds[(0, 12)]["image"])


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


def test_dataset_filters_and_reports(tmp_path, demo, capsys):
    df = pd.read_parquet(demo["all"])
    df.loc[0, "valence"] = -2.0
    df.loc[1, "arousal"] = np.nan
    df.loc[2, "expression"] = 10
    path = tmp_path / "m.parquet"
    mp.write_parquet(df, path)
    ds = FERDataset(path, train=False, size=32)  # rows without valence/arousal stay: no regression target
    assert len(ds) == 63 and np.isnan(ds.va[ds.filenames.index(df.loc[0, "filename"])][0])
    name = df.loc[2, "filename"]
    assert f"kept 63/64 rows; dropped 1 labels outside 0-7, e.g. {name} (10)" in capsys.readouterr().out
    ds = FERDataset(path, train=False, size=32, require_va=True)
    assert len(ds) == 61
    assert f"kept 61/64 rows; dropped 1 labels outside 0-7, e.g. {name} (10); dropped 2 rows without " \
           f"valence/arousal, e.g. {df.loc[0, 'filename']}" in capsys.readouterr().out


def test_dataset_from_any_working_directory(demo, tmp_path, monkeypatch):
    moved = tmp_path / "elsewhere" / "val.parquet"
    moved.parent.mkdir()
    shutil.copy(demo["val"], moved)
    monkeypatch.chdir(tmp_path)
    ds = FERDataset(moved, train=False, size=32, verbose=False)
    assert ds[0]["image"].shape == (3, 32, 32)


def test_dataset_explicit_root(demo, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(demo["root"], copy)
    ds = FERDataset(demo["val"], train=False, size=32, root=copy, verbose=False)
    assert str(ds.path(0)).startswith(str(copy / "images"))
    assert ds[0]["image"].shape == (3, 32, 32)


@pytest.mark.parametrize("content,why", [(None, "file not found"), (b"", "empty file"),
                                         (b"abc", "cannot be decoded")])
def test_bad_image_names_file(tmp_path, content, why):
    path = tmp_path / "face.jpg"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(FERDataError, match=why) as e:
        load_image(path)
    assert "face.jpg" in str(e.value)


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


def test_missing_metadata_columns(tmp_path):
    path = tmp_path / "bad.parquet"
    pd.DataFrame({"filename": ["a.jpg"]}).to_parquet(path)
    with pytest.raises(FERDataError, match="missing column.*expression"):
        FERDataset(path)


def test_transform_cli_grid(demo, tmp_path):
    r = run_script("FER_transform.py", "--meta", demo["train"], "--size", 32, "--n", 4, "--out", tmp_path / "g.png")
    assert r.returncode == 0, r.stderr
    assert "image (4, 3, 32, 32)" in r.stdout and (tmp_path / "g.png").stat().st_size > 1000


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
