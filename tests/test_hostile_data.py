"""Hostile pass over indexing and datasets: each test fails on the code before its fix.

metadata_parallel.py (the six layouts), make_demo_data.py, FER_transform.py as a script and
FERDataset's handling of damaged rows. Quick: demo data of a few dozen images, scripts run in-process.
"""
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, run_here
from test_trust import one_error_line

from fer.data import demo as make_demo_data


def index(root, out, *flags):
    return run_here("metadata_parallel.py", "--root", root, "--out_dir", out, "--quiet", "--workers", 1, *flags)


@pytest.mark.parametrize("script", ["metadata_parallel.py", "make_demo_data.py"])
def test_ctrl_c_during_the_imports_is_one_line(script, tmp_path):
    """A Ctrl-C while pandas loads (the first second of every run) ended in a traceback: these
    scripts imported pandas before FER_io, whose hook makes an interrupt one line. Now the scripts
    import the library inside run_main, once the flags are checked: flags that get that far."""
    argv = {"metadata_parallel.py": ["--root", str(tmp_path), "--out_dir", str(tmp_path / "o")],
            "make_demo_data.py": ["--out", str(tmp_path / "d"), "--n", "1"]}[script]
    code = ("import builtins, runpy, sys\n"
            "real = builtins.__import__\n"
            "def hook(name, *a, **k):\n"
            "    if name == 'pandas':\n"
            "        raise KeyboardInterrupt\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = hook\n"
            f"sys.argv = [{script!r}, *{argv!r}]\n"
            f"runpy.run_path({str(ROOT / script)!r}, run_name='__main__')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in r.stderr and r.stderr.strip() == ("interrupted: nothing was half-written (outputs are "
                                                                "replaced only when complete)"), r.stderr
    assert r.returncode == 130 and not (tmp_path / "o").exists() and not (tmp_path / "d").exists()


def test_affectnet_nan_values_and_landmarks_are_named(tmp_path):
    """AffectNet marks "none" with -2; a 'nan' valence or landmarks with NaN/inf points in a .npy file
    are damage, and were kept silently (landmarks that every later step then ignored) instead of being
    named like every other damaged annotation."""
    data = make_demo_data.make_dataset(tmp_path / "an", n=40, size=32, progress=False)
    ann = data / "annotations"
    np.save(ann / "0_val.npy", np.array("nan"))
    np.save(ann / "1_lnd.npy", np.full(136, np.nan))
    lnd = np.load(ann / "2_lnd.npy").astype(str)
    lnd[5] = "inf"
    np.save(ann / "2_lnd.npy", lnd)
    np.save(ann / "3_aro.npy", np.array("-2"))  # AffectNet's "none": kept as it is, not named
    r = index(data, tmp_path / "out")
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if "corrupt .npy" in ln)
    assert line.lstrip().startswith("3 ") and "0_val.npy" in line and "1_lnd.npy" in line and "2_lnd.npy" in line
    assert "3_aro" not in r.stdout
    df = pd.read_parquet(tmp_path / "out" / "metadata_all.parquet").set_index("filename")
    assert np.isnan(df.loc["0.jpg", "valence"]) and df.loc["3.jpg", "arousal"] == -2
    assert df.loc["1.jpg", "landmarks"] is None and df.loc["2.jpg", "landmarks"] is None
    assert np.isfinite(df.loc["4.jpg", "landmarks"]).all()


def test_folders_with_one_split_folder_or_two_names_for_one_split(tmp_path):
    """A lone train/ was reported as an unknown class folder 'train', and val/ beside validation/ as
    'split folders beside other folders (validation)': both now say what is wrong with the splits."""
    data = make_demo_data.make_dataset(tmp_path / "f", n=40, size=32, fmt="folders", progress=False)
    (data / "val").rename(tmp_path / "val")
    one_error_line(index(data, tmp_path / "out"), "split folder train without a validation folder")
    (tmp_path / "val").rename(data / "validation")
    (data / "Val").mkdir()
    one_error_line(index(data, tmp_path / "out"), "folders Val and validation are both the val split")
    (data / "Val").rmdir()
    assert index(data, tmp_path / "out").returncode == 0


def test_grid_size_has_training_bound(demo, tmp_path):
    """FER_transform.py --size 1000000 tried to allocate terabytes and ended in an OpenCV traceback;
    the side is bounded as training's --img_size is (32-4096)."""
    r = run_here("FER_transform.py", "--meta", demo["train"], "--out", tmp_path / "g.png", "--size", 10**6)
    assert r.returncode == 2
    one_error_line(r, "--size", "4096")


def test_a_root_without_the_indexs_images_is_named(demo, tmp_path):
    """--root at a folder that is not the dataset (a typo, the parent folder) was taken as is: training
    and the grid then stopped at the first image with 'file not found', naming no flag, after the model
    was built. Now the start says --root does not hold the index's images; a right --root still works."""
    (tmp_path / "elsewhere" / "images").mkdir(parents=True)
    r = run_here("FER_transform.py", "--meta", demo["val"], "--out", tmp_path / "g.png", "--size", 32, "--n", 2,
                 "--root", tmp_path / "elsewhere")
    one_error_line(r, "--root", "elsewhere", "not the images of")
    assert not (tmp_path / "g.png").exists()
    r = run_here("FER_transform.py", "--meta", demo["val"], "--out", tmp_path / "g.png", "--size", 32, "--n", 2,
                 "--root", demo["root"])
    assert r.returncode == 0 and (tmp_path / "g.png").is_file(), r.stderr


def test_demo_n_is_bounded(tmp_path):
    """make_demo_data.py --n 10000000000 ended in numpy's MemoryError traceback."""
    r = run_here("make_demo_data.py", "--out", tmp_path / "d", "--n", 10**10)
    assert r.returncode == 2
    one_error_line(r, "--n", "1000000")
    assert not (tmp_path / "d").exists()


def test_ctrl_c_between_the_demo_folder_swaps_keeps_a_folder(tmp_path, monkeypatch):
    """The new demo folder replaced the old one with two renames (old away, new in): a Ctrl-C between
    them left no --out at all. The interrupt now waits for the second rename."""
    import os
    import signal

    out = make_demo_data.make_dataset(tmp_path / "d", n=8, size=16, progress=False)
    real = os.replace

    def replace_then_ctrl_c(src, dst):
        real(src, dst)
        if str(src) == str(out):  # the old folder has just moved away
            os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.setattr(make_demo_data.os, "replace", replace_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        make_demo_data.make_dataset(out, n=8, size=16, seed=1, progress=False, fmt="rafdb")
    assert (out / "EmoLabel" / "list_patition_label.txt").is_file()  # the new, complete dataset


def test_val_root_reads_its_own_folders_not_images_dir(tmp_path):
    """--images_dir/--annotations_dir (for --root) were used for --val_root too: the validation split
    then held the training images (or the training labels), exit 0. --val_root now reads its own
    images/ and annotations/, and an --images_dir inside --val_root is refused."""
    train = make_demo_data.make_dataset(tmp_path / "train_set", n=40, size=32, progress=False)
    val = make_demo_data.make_dataset(tmp_path / "val_set", n=24, size=32, seed=5, progress=False)
    for flag, folder in (("--images_dir", "images"), ("--annotations_dir", "annotations")):
        out = tmp_path / f"out{flag}"
        r = index(train, out, "--val_root", val, flag, train / folder)
        assert r.returncode == 0, r.stderr
        got = pd.read_parquet(out / "metadata_val.parquet")
        assert got.attrs["images_dir"] == str((val / "images").resolve())
        labels = {f: int(np.load(val / "annotations" / f"{f[:-4]}_exp.npy")) for f in got["filename"]}
        assert got["expression"].tolist() == [labels[f] for f in got["filename"]]
    one_error_line(index(train, tmp_path / "o", "--val_root", val, "--images_dir", val / "images"),
                   "--val_root", "--images_dir")


def test_a_folder_where_an_index_file_goes_is_named_before_the_run(tmp_path):
    """A folder named metadata_all.parquet in --out_dir failed at the very end, naming the hidden
    temporary ('.metadata_all.123.0.tmp.parquet: Is a directory'); now the start names the target."""
    data = make_demo_data.make_dataset(tmp_path / "r", n=24, size=32, fmt="rafdb", progress=False)
    (tmp_path / "out" / "metadata_val.parquet").mkdir(parents=True)
    line = one_error_line(index(data, tmp_path / "out"), "--out_dir", "metadata_val.parquet", "folder")
    assert ".tmp" not in line


def test_the_grid_does_not_replace_a_dataset_image(tmp_path):
    """FER_transform.py --out images/0.jpg replaced that image of the dataset with the grid, exit 0."""
    data = make_demo_data.make_dataset(tmp_path / "d", n=40, size=32, progress=False)
    assert index(data, tmp_path / "idx").returncode == 0
    image = data / "images" / "0.jpg"
    before = image.read_bytes()
    r = run_here("FER_transform.py", "--meta", tmp_path / "idx" / "metadata_all.parquet", "--out", image,
                 "--size", 32, "--n", 2)
    one_error_line(r, "--out", "0.jpg", "images of --meta")
    assert image.read_bytes() == before


def test_fer2013_whose_rows_all_lack_a_usage_is_one_line(tmp_path):
    """A fer2013.csv cut short after its first row (no Usage) ended in a TypeError traceback: the
    stripped labels assigned to the empty table of kept rows brought the dropped rows back, pixels NaN."""
    data = make_demo_data.make_dataset(tmp_path / "f", n=10, fmt="fer2013", progress=False)
    text = (data / "fer2013.csv").read_text()
    (data / "fer2013.csv").write_text(text[:5000])  # the header and most of the first row's pixels
    one_error_line(index(data, tmp_path / "out"), "0 training")


def test_too_few_rows_says_what_was_skipped(tmp_path):
    """RAF-DB with an empty Image/aligned/ (the images only in original/) ended in 'the official split
    leaves 0 training and 0 validation rows' and nothing else: the summary that says why is never
    printed on an error. The line now names the largest kinds of skipped rows."""
    data = make_demo_data.make_dataset(tmp_path / "r", n=24, size=32, fmt="rafdb", progress=False)
    (data / "Image" / "aligned").rename(data / "Image" / "original")
    (data / "Image" / "aligned").mkdir()
    one_error_line(index(data, tmp_path / "out"), "0 training", "24 rows whose image file is missing",
                   "no image train_00001_aligned.jpg")


def test_macos_resource_forks_are_not_images(tmp_path):
    """A folders dataset copied from a Mac holds ._x.jpg files (resource forks, not images): they were
    indexed with their folder's label, and training then stopped at the first one."""
    data = make_demo_data.make_dataset(tmp_path / "f", n=40, size=32, fmt="folders", progress=False)
    (data / "train" / "happy" / "._0.jpg").write_bytes(b"\x00\x05\x16\x07 resource fork")
    assert index(data, tmp_path / "out").returncode == 0
    names = pd.read_parquet(tmp_path / "out" / "metadata_all.parquet")["filename"]
    assert not names.str.contains("/._").any() and len(names) == 40


def test_out_dir_in_a_class_folder_does_not_drop_the_class(tmp_path):
    """--out_dir root/train/happy: the folder was left out as 'the index's folder', so training had no
    Happy images, exit 0. A class or split folder as --out_dir is now refused; a new folder still works."""
    data = make_demo_data.make_dataset(tmp_path / "f", n=40, size=32, fmt="folders", progress=False)
    one_error_line(index(data, data / "train" / "happy"), "--out_dir", "happy")
    assert not list((data / "train" / "happy").glob("*.parquet"))
    assert index(data, data / "index").returncode == 0
    assert len(pd.read_parquet(data / "index" / "metadata_all.parquet")) == 40


def test_the_real_affectnet_layout_is_not_taken_for_a_demo_folder(tmp_path):
    """A folder with only images/<n>.jpg and annotations/<n>_exp.npy (the names of the real AffectNet's
    train_set/) was taken for an old demo folder and replaced: make_demo_data.py --out on a dataset
    deleted it. Only the marker file now proves a folder was written by this script."""
    real = tmp_path / "train_set"
    (real / "images").mkdir(parents=True)
    (real / "annotations").mkdir()
    (real / "images" / "0.jpg").write_bytes(b"a real face")
    np.save(real / "annotations" / "0_exp.npy", np.array("3"))
    one_error_line(run_here("make_demo_data.py", "--out", real, "--n", 8, "--size", 16), "--out", "not written by")
    assert (real / "images" / "0.jpg").read_bytes() == b"a real face"
    assert sorted(p.name for p in real.rglob("*")) == ["0.jpg", "0_exp.npy", "annotations", "images"]


def test_a_folder_name_with_a_line_break_stays_on_the_error_line(tmp_path):
    """An unknown class folder named 'sa\\nd' made the error two lines, of which only the last ('d;
    expected expression names') was printed: the root and the folder were lost."""
    data = make_demo_data.make_dataset(tmp_path / "f", n=40, size=32, fmt="folders", progress=False)
    (data / "train" / "sa\nd").mkdir()
    one_error_line(index(data, tmp_path / "out"), "--root", "class folders not recognised", "'sa\\nd'")


def test_a_csv_header_with_a_line_break_stays_on_the_error_line(tmp_path):
    """The same for a CSV whose header holds a quoted line break: only 'tion, pixels, Usage)' was left."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "fer2013.csv").write_text('"emo\ntion",pixels,Usage\n1,2 3,Training\n')
    one_error_line(index(tmp_path / "d", tmp_path / "out", "--format", "fer2013"), "fer2013.csv", "no column emotion")


def test_a_missing_label_in_a_nullable_int_column_is_a_dropped_row(demo, tmp_path):
    """An index written by pandas with a nullable Int64 expression column holding <NA> ended in a
    ValueError traceback (to_numpy(int64) of a missing value) in training, evaluation and the grid."""
    from fer.data.dataset import FERDataset

    df = pd.read_parquet(demo["val"])
    attrs = dict(df.attrs)
    df["expression"] = df["expression"].astype("Int64")
    df.loc[0, "expression"] = pd.NA
    df.attrs = attrs
    df.to_parquet(tmp_path / "m.parquet")
    ds = FERDataset(tmp_path / "m.parquet", train=False, size=32, verbose=False)
    assert len(ds) == len(df) - 1 and ds.dropped == {"labels that are not whole numbers": 1}
    assert df["filename"].iloc[0] not in ds.filenames


@pytest.mark.parametrize("fmt,flags,needle", [
    ("rafdb", ["--ferplus_label", "plurality"], "--ferplus_label is for --format ferplus"),
    ("fer2013", ["--ext", "png"], "--ext is for --format affectnet"),
])
def test_flags_of_another_format_are_errors(tmp_path, fmt, flags, needle):
    """--ferplus_label and --ext on another format were silently ignored, while the other formats'
    flags (--class_map, --images_dir...) were already errors."""
    data = make_demo_data.make_dataset(tmp_path / "d", n=24, size=48, fmt=fmt, progress=False)
    one_error_line(index(data, tmp_path / "out", *flags), needle)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.parquet"))


@pytest.mark.parametrize("fmt,flags,note", [
    ("rafdb", ["--val_fraction", 0.5, "--seed", 3], "--val_fraction 0.5 and --seed 3 not used"),
    ("folders", ["--val_fraction", 0.5], "--val_fraction 0.5 not used"),
])
def test_split_flags_an_official_split_does_not_use_are_named(tmp_path, fmt, flags, note):
    """--val_fraction 0.5 on RAF-DB (or a folders dataset with split folders) was silently ignored: the
    official 80/20 split came out, exit 0, and nothing said the flag was not used."""
    data = make_demo_data.make_dataset(tmp_path / "d", n=24, size=32, fmt=fmt, progress=False)
    r = index(data, tmp_path / "out", *flags)
    assert r.returncode == 0 and r.stdout.count(note) == 1, r.stdout


@pytest.mark.parametrize("flag,value", [("--min_face", 30), ("--face_threshold", 0.5)])
def test_detector_flags_without_detect_landmarks(tmp_path, flag, value):
    """--min_face / --face_threshold without --detect_landmarks were silently ignored."""
    data = make_demo_data.make_dataset(tmp_path / "d", n=24, size=32, fmt="rafdb", progress=False)
    one_error_line(index(data, tmp_path / "out", flag, value), flag, "--detect_landmarks")
