"""fer/data/index.py (metadata_parallel.py) and its flags (fer/cli/index.py): columns and dtypes, the
stratified split, parallel indexing, --val_root, --verify_images, --detect_landmarks, the summary, and
the indexer as a hostile user meets it (failed runs, full disks, Ctrl-C, leakage between splits).

The hostile cases (from the trust passes) each failed on the code before their fix: they check the exit
code, the one line that names the file or flag (no traceback), and that earlier outputs are unchanged.
"""
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from builders import (
    ROOT,
    index_here,
    index_script,
    interruptible,
    make_tree,
    one_error_line,
    one_line_error,
    run_here,
    run_script,
    snapshot,
    tmpfs,
    tree,
    write_fer2013,
)

import metadata_parallel
from fer.cli import run_main
from fer.data import demo as make_demo_data
from fer.data import formats
from fer.data import index as mp
from fer.data.dataset import crop_template


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


@pytest.mark.slow
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


@pytest.mark.slow
def test_cli_val_root(tmp_path):
    root, _ = make_tree(tmp_path, n=16)
    val_root = make_demo_data.make_dataset(tmp_path / "val", n=8, size=32, seed=9, progress=False)
    r = run_script("metadata_parallel.py", "--root", root, "--val_root", val_root, "--out_dir", tmp_path, "--quiet")
    assert r.returncode == 0, r.stderr
    val = pd.read_parquet(tmp_path / "metadata_val.parquet")
    assert len(val) == 8 and val.attrs["images_dir"] == str((val_root / "images").resolve())
    assert len(pd.read_parquet(tmp_path / "metadata_train.parquet")) == 16


@pytest.mark.slow
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


# --- the index and evaluation --------------------------------------------------------------------
@pytest.mark.slow
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


# --- the summary ----------------------------------------------------------------------------------
def test_index_summary_shows_rows_per_class_and_split():
    from fer.data import index as mp
    parts = {"train": pd.DataFrame({"expression": [0, 0, 1, 1, 1, 3]}), "val": pd.DataFrame({"expression": [0, 1, 3]})}
    rows = {ln.split()[0]: ln.split()[1:] for ln in mp.class_table(parts).splitlines()[1:]}
    assert rows == {"Neutral": ["2", "1", "3"], "Happy": ["3", "1", "4"], "Surprise": ["1", "1", "2"],
                    "total": ["6", "3", "9"]}
    assert mp.class_table(parts).splitlines()[0].split() == ["rows", "per", "class", "train", "val", "all", "splits"]
    assert np.all([c not in rows for c in ("Sad", "Contempt")])  # classes the dataset lacks are left out


# --- the indexer as a hostile user meets it -------------------------------------------------------
def indexed(tmp_path, root, *args):
    """Index root into tmp_path/out and return (out, snapshot of it)."""
    out = tmp_path / "out"
    r = index_script("--root", root, "--out_dir", out, "--val_fraction", "0.3", *args)
    assert r.returncode == 0, r.stderr
    return out, snapshot(out)


# --- 1. nothing that exists is destroyed by a run that fails ------------------------------------
@pytest.mark.slow
def test_failed_run_keeps_earlier_index(tmp_path):
    root, _, _ = tree(tmp_path)
    out, before = indexed(tmp_path, root)
    r = index_script("--root", root, "--out_dir", out, "--val_fraction", "0.01")  # fails after reading everything
    one_line_error(r, 1, "--val_fraction 0.01")
    assert snapshot(out) == before


@pytest.mark.slow
def test_failed_run_keeps_earlier_pngs(tmp_path):
    """fer2013 writes PNGs from the CSV's pixels: a run that fails leaves the old ones and no temporaries."""
    (tmp_path / "fer").mkdir()
    write_fer2013(tmp_path / "fer" / "fer2013.csv", 21, seed=0)
    out, before = indexed(tmp_path, tmp_path / "fer")
    assert len([p for p in before if p.suffix == ".png"]) == 21
    write_fer2013(tmp_path / "fer" / "fer2013.csv", 21, seed=1, usages=("Training", "PrivateTest"))  # no val rows
    r = index_script("--root", tmp_path / "fer", "--out_dir", out)
    one_line_error(r, 1, "0 validation rows")
    assert snapshot(out) == before


@pytest.mark.slow
def test_disk_full_is_one_line_and_keeps_outputs(tmp_path):
    root, _, _ = tree(tmp_path)
    with tmpfs(tmp_path / "small", "size=200k") as out:
        r = index_script("--root", root, "--out_dir", out, "--val_fraction", "0.3")
        assert r.returncode == 0, r.stderr
        before = snapshot(out)
        with open(out / "filler", "wb") as f:  # fill the disk up
            try:
                f.write(b"\0" * (1 << 20))
            except OSError:
                pass
        before = snapshot(out)
        r = index_script("--root", root, "--out_dir", out, "--val_fraction", "0.3", "--seed", "7")
        one_line_error(r, 1, "no space left on device writing", out)
        assert snapshot(out) == before


@pytest.mark.slow
def test_ctrl_c_leaves_no_half_written_files(tmp_path):
    (tmp_path / "fer").mkdir()
    write_fer2013(tmp_path / "fer" / "fer2013.csv", 30, seed=0)
    out, _ = indexed(tmp_path, tmp_path / "fer")
    write_fer2013(tmp_path / "fer" / "fer2013.csv", 3000, seed=1)  # new pixels: every PNG would change
    before = snapshot(out)
    proc = subprocess.Popen([sys.executable, str(ROOT / "metadata_parallel.py"), "--root", tmp_path / "fer",
                             "--out_dir", out], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=interruptible)
    seen, deadline = b"", time.time() + 60
    while b"pixels -> PNG" not in seen and time.time() < deadline and proc.poll() is None:
        seen += os.read(proc.stdout.fileno(), 4096)  # progress lines: stdout when not a terminal
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=60)
    stderr = rest.decode()
    assert proc.returncode == 130 and "interrupted" in stderr and "Traceback" not in stderr, stderr
    assert snapshot(out) == before


# --- 3. no non-finite or out-of-range value -------------------------------------------------------
@pytest.mark.slow
def test_impossible_values_are_skipped_and_named(tmp_path):
    root, images, ann = tree(tmp_path)
    cases = {"invalid_label": {"0": np.float64(3.5), "1": np.complex128(3 + 1j), "2": np.array("abc"),
                               "3": np.array("1e30"), "4": np.array("nan")},
             "bad_value": {"5": ("val", np.array("inf")), "6": ("val", np.float32(5)), "7": ("aro", np.array("-1.5")),
                           "8": ("aro", np.float64(-np.inf))}}
    for stem, value in cases["invalid_label"].items():
        np.save(ann / f"{stem}_exp.npy", value)
    for stem, (key, value) in cases["bad_value"].items():
        np.save(ann / f"{stem}_{key}.npy", value)
    np.save(ann / "9_val.npy", np.array("-2"))  # AffectNet's "none": kept as it is
    df, problems = mp.build_index(images, ann, workers=1, progress=False)
    assert {name for name, _ in problems["invalid_label"]} == {f"{s}_exp.npy" for s in cases["invalid_label"]}
    assert {name for name, _ in problems["bad_value"]} == {f"{s}.jpg" for s in cases["bad_value"]}
    assert len(df) == 32 - 9 and df.set_index("filename").loc["9.jpg", "valence"] == -2
    assert np.isfinite(df[["valence", "arousal"]].to_numpy()).all()
    r = index_script("--root", root, "--out_dir", tmp_path / "out", "--val_fraction", "0.5")
    assert r.returncode == 0, r.stderr
    assert "5 labels that are not class codes" in r.stdout and "4 valence/arousal not finite" in r.stdout


# --- 4. nothing hangs: regular files only ---------------------------------------------------------
@pytest.mark.slow
def test_special_files_are_skipped_never_opened(tmp_path):
    root, images, ann = tree(tmp_path)
    (images / "0.jpg").unlink()
    os.mkfifo(images / "0.jpg")                                  # a FIFO image
    (ann / "1_exp.npy").unlink()
    os.mkfifo(ann / "1_exp.npy")                                 # a FIFO label
    (ann / "2_exp.npy").unlink()
    os.symlink("/dev/zero", ann / "2_exp.npy")                   # an endless device behind a link
    (ann / "3_exp.npy").unlink()
    os.symlink("3_exp.npy", ann / "3_exp.npy")                   # a link loop
    (images / "4.jpg").unlink()
    os.symlink("4.jpg", images / "4.jpg")                        # an image link loop
    os.rename(images / "5.jpg", os.fsencode(images) + b"/\xff5.jpg")  # a name that is not UTF-8
    np.save(ann / "6_exp.npy", np.datetime64("2020-01-01"))      # unexpected dtypes
    np.save(ann / "7_exp.npy", np.zeros((), [("a", "i4"), ("b", "f4")]))
    np.save(ann / "8_aro.npy", np.datetime64("2020-01-01"))
    with open(ann / "10_exp.npy", "r+b") as f:  # 4 GiB (sparse): would be read whole into memory
        f.truncate(1 << 32)
    (ann / "9_lnd.npy").unlink()
    os.symlink("/dev/zero", ann / "9_lnd.npy")
    # --allow_outside_root: the links to /dev/zero lie outside the dataset, which is an error by itself (trust
    # rule 1, test_rule1_a_found_folder_or_annotation_linked_out_of_the_root_...); here they must be skipped unread
    r = index_script("--root", root, "--out_dir", tmp_path / "out", "--val_fraction", "0.4", "--workers", "2",
                     "--allow_outside_root")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "1 file names that are not valid UTF-8" in r.stdout
    _, problems = mp.build_index(images, ann, workers=1, progress=False)
    named = [f"{formats.printable(name)}: {why}" for items in problems.values() for name, why in items]
    for name in ("0.jpg: a FIFO", "1_exp.npy: not a regular file", "2_exp.npy: not a regular file",
                 "3_exp.npy: Too many levels of symbolic links", "4.jpg: broken or looping link",
                 "\\xff5.jpg: name is not valid UTF-8", "6_exp.npy: unexpected dtype datetime64",
                 "7_exp.npy: unexpected dtype", "10_exp.npy: 4294967296 bytes: too large"):
        assert any(line.startswith(name) for line in named), name
    df = pd.read_parquet(tmp_path / "out" / "metadata_all.parquet").set_index("filename")
    assert len(df) == 32 - 9 and np.isnan(df.loc["8.jpg", "arousal"]) and df.loc["9.jpg", "landmarks"] is None


# --- 5. bad paths and flags fail at once, in one line ------------------------------------------------
@pytest.mark.parametrize("args,code,needles", [
    (["--out_dir", "{file}"], 1, ["--out_dir", "is a file"]),
    (["--out_dir", "{file}/sub"], 1, ["--out_dir", "is a file, not a folder"]),
    (["--root", "{tmp}/nowhere"], 1, ["--root", "folder not found"]),
    (["--root", "{file}"], 1, ["--root", "not a folder"]),
    (["--workers", "-1"], 2, ["--workers", ">= 0"]),
    (["--workers", "two"], 2, ["--workers", "not an integer"]),
    (["--val_fraction", "0"], 2, ["--val_fraction", "> 0"]),
    (["--val_fraction", "1"], 2, ["--val_fraction", "< 1"]),
    (["--val_fraction", "nan"], 2, ["--val_fraction", "not finite"]),
    (["--seed", "-1"], 2, ["--seed", ">= 0"]),
    (["--format", "voc"], 2, ["--format", "invalid choice"]),
    (["--format", "rafdb", "--val_root", "{tmp}"], 1, ["--val_root is for --format affectnet"]),
    (["--class_map", "0=happy"], 1, ["--class_map is for --format folders"]),
    (["--format", "folders", "--class_map", "0"], 2, ["--class_map", "FOLDER=CLASS"]),
])
def test_bad_flags_and_paths(tmp_path, capsys, args, code, needles):
    """In-process (the same run_main as the script, without an interpreter start per case)."""
    root, _, _ = tree(tmp_path, n=8)
    (tmp_path / "afile").write_text("x")
    args = [a.format(file=tmp_path / "afile", tmp=tmp_path) for a in args]
    with pytest.raises(SystemExit) as e:
        run_main(metadata_parallel.main,  # with progress bars
                 ["--root", str(root), "--out_dir", str(tmp_path / "out"), *args])
    r = subprocess.CompletedProcess(args, e.value.code, *capsys.readouterr())
    one_line_error(r, code, *needles)
    assert not (tmp_path / "out").exists()


def test_bad_flag_from_the_command_line(tmp_path):
    r = index_script("--root", tmp_path, "--out_dir", tmp_path / "out", "--workers", "-2", quiet=False)
    one_line_error(r, 2, "--workers")


def test_read_only_out_dir(tmp_path):
    root, _, _ = tree(tmp_path, n=8)
    with tmpfs(tmp_path / "ro", "size=1m,ro") as ro:
        r = index_script("--root", root, "--out_dir", ro / "out", quiet=False)
        one_line_error(r, 1, "--out_dir", "not writable", "Read-only")


# --- 7. no leakage between train and validation ------------------------------------------------------
def test_names_differing_in_case_stay_together(tmp_path):
    root, images, ann = tree(tmp_path, n=40)
    copies = range(0, 40, 3)
    for i in copies:  # the same face saved again under another case
        os.link(images / f"{i}.jpg", images / f"{i}.JPG")
    df, problems = mp.build_index(images, ann, workers=1, progress=False)
    assert len(problems["duplicate_name"]) == len(copies) and "0.JPG, 0.jpg" in [n for n, _ in problems["duplicate_name"]]
    for seed in range(10):
        train, val = mp.stratified_split(df, 0.25, seed)
        key = lambda part: set(part["filename"].str.lower())  # noqa: E731
        assert not key(train) & key(val), seed
        assert len(train) + len(val) == len(df)


@pytest.mark.parametrize("where", ["same", "inside"])
def test_val_root_overlapping_root(tmp_path, where):
    root, _, _ = tree(tmp_path, n=8)
    r = index_script("--root", root, "--val_root", root if where == "same" else root / "images", "--out_dir", tmp_path / "o")
    one_line_error(r, 1, "--val_root", "overlaps --root")


@pytest.mark.slow
def test_official_split_leak_is_reported(tmp_path):
    data = make_demo_data.make_dataset(tmp_path / "an", n=20, size=32, fmt="affectnet_csv", progress=False)
    train = pd.read_csv(data / "training.csv")
    val = pd.read_csv(data / "validation.csv")
    pd.concat([val, train.iloc[:2]]).to_csv(data / "validation.csv", index=False)  # two images in both files
    r = index_script("--root", data, "--out_dir", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert "2 images listed more than once with the same label" in r.stdout  # kept in training only
    first = train.iloc[0]  # named with its face box: two faces of one photo are not duplicates
    assert (f"{first['subDirectory_filePath']} (face box {first['face_x']}, {first['face_y']}, {first['face_width']}, "
            f"{first['face_height']}): listed 2 times with the same label in train and val: kept in train only") in r.stdout
    val = pd.read_parquet(tmp_path / "out" / "metadata_val.parquet")
    assert not set(val["filename"]) & set(train["subDirectory_filePath"])


# --- 9. --verify_images names truncated and foreign images -------------------------------------------
def test_verify_images_catches_truncated_jpeg(tmp_path):
    from PIL import Image

    root, images, ann = tree(tmp_path, n=16)
    data = (images / "3.jpg").read_bytes()
    (images / "3.jpg").write_bytes(data[: int(len(data) * 0.6)])  # OpenCV decodes it with a grey band
    Image.new("RGB", (32, 32)).save(images / "4.jpg", format="GIF")  # OpenCV cannot read GIFs at all
    df, problems = mp.build_index(images, ann, workers=1, verify_images=True, progress=False)
    bad = dict(problems["unreadable_image"])
    assert set(bad) == {"3.jpg", "4.jpg"} and "truncated" in bad["3.jpg"] and "GIF" in bad["4.jpg"]
    assert not {"3.jpg", "4.jpg"} & set(df["filename"])


# --- found by the hostile pass over indexing and datasets -----------------------------------------
def test_val_root_reads_its_own_folders_not_images_dir(tmp_path):
    """--images_dir/--annotations_dir (for --root) were used for --val_root too: the validation split
    then held the training images (or the training labels), exit 0. --val_root now reads its own
    images/ and annotations/, and an --images_dir inside --val_root is refused."""
    train = make_demo_data.make_dataset(tmp_path / "train_set", n=40, size=32, progress=False)
    val = make_demo_data.make_dataset(tmp_path / "val_set", n=24, size=32, seed=5, progress=False)
    for flag, folder in (("--images_dir", "images"), ("--annotations_dir", "annotations")):
        out = tmp_path / f"out{flag}"
        r = index_here(train, out, "--val_root", val, flag, train / folder)
        assert r.returncode == 0, r.stderr
        got = pd.read_parquet(out / "metadata_val.parquet")
        assert got.attrs["images_dir"] == str((val / "images").resolve())
        labels = {f: int(np.load(val / "annotations" / f"{f[:-4]}_exp.npy")) for f in got["filename"]}
        assert got["expression"].tolist() == [labels[f] for f in got["filename"]]
    one_error_line(index_here(train, tmp_path / "o", "--val_root", val, "--images_dir", val / "images"),
                   "--val_root", "--images_dir")


def test_a_folder_where_an_index_file_goes_is_named_before_the_run(tmp_path):
    """A folder named metadata_all.parquet in --out_dir failed at the very end, naming the hidden
    temporary ('.metadata_all.123.0.tmp.parquet: Is a directory'); now the start names the target."""
    data = make_demo_data.make_dataset(tmp_path / "r", n=24, size=32, fmt="rafdb", progress=False)
    (tmp_path / "out" / "metadata_val.parquet").mkdir(parents=True)
    line = one_error_line(index_here(data, tmp_path / "out"), "--out_dir", "metadata_val.parquet", "folder")
    assert ".tmp" not in line


def test_too_few_rows_says_what_was_skipped(tmp_path):
    """RAF-DB with an empty Image/aligned/ (the images only in original/) ended in 'the official split
    leaves 0 training and 0 validation rows' and nothing else: the summary that says why is never
    printed on an error. The line now names the largest kinds of skipped rows."""
    data = make_demo_data.make_dataset(tmp_path / "r", n=24, size=32, fmt="rafdb", progress=False)
    (data / "Image" / "aligned").rename(data / "Image" / "original")
    (data / "Image" / "aligned").mkdir()
    one_error_line(index_here(data, tmp_path / "out"), "0 training", "24 rows whose image file is missing",
                   "no image train_00001_aligned.jpg")


def test_out_dir_in_a_class_folder_does_not_drop_the_class(tmp_path):
    """--out_dir root/train/happy: the folder was left out as 'the index's folder', so training had no
    Happy images, exit 0. A class or split folder as --out_dir is now refused; a new folder still works."""
    data = make_demo_data.make_dataset(tmp_path / "f", n=40, size=32, fmt="folders", progress=False)
    one_error_line(index_here(data, data / "train" / "happy"), "--out_dir", "happy")
    assert not list((data / "train" / "happy").glob("*.parquet"))
    assert index_here(data, data / "index").returncode == 0
    assert len(pd.read_parquet(data / "index" / "metadata_all.parquet")) == 40


@pytest.mark.parametrize("fmt,flags,needle", [
    ("rafdb", ["--ferplus_label", "plurality"], "--ferplus_label is for --format ferplus"),
    ("fer2013", ["--ext", "png"], "--ext is for --format affectnet"),
])
def test_flags_of_another_format_are_errors(tmp_path, fmt, flags, needle):
    """--ferplus_label and --ext on another format were silently ignored, while the other formats'
    flags (--class_map, --images_dir...) were already errors."""
    data = make_demo_data.make_dataset(tmp_path / "d", n=24, size=48, fmt=fmt, progress=False)
    one_error_line(index_here(data, tmp_path / "out", *flags), needle)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.parquet"))


@pytest.mark.parametrize("fmt,flags,note", [
    ("rafdb", ["--val_fraction", 0.5, "--seed", 3], "--val_fraction 0.5 and --seed 3 not used"),
    ("folders", ["--val_fraction", 0.5], "--val_fraction 0.5 not used"),
])
def test_split_flags_an_official_split_does_not_use_are_named(tmp_path, fmt, flags, note):
    """--val_fraction 0.5 on RAF-DB (or a folders dataset with split folders) was silently ignored: the
    official 80/20 split came out, exit 0, and nothing said the flag was not used."""
    data = make_demo_data.make_dataset(tmp_path / "d", n=24, size=32, fmt=fmt, progress=False)
    r = index_here(data, tmp_path / "out", *flags)
    assert r.returncode == 0 and r.stdout.count(note) == 1, r.stdout


@pytest.mark.parametrize("flag,value", [("--min_face", 30), ("--face_threshold", 0.5)])
def test_detector_flags_without_detect_landmarks(tmp_path, flag, value):
    """--min_face / --face_threshold without --detect_landmarks were silently ignored."""
    data = make_demo_data.make_dataset(tmp_path / "d", n=24, size=32, fmt="rafdb", progress=False)
    one_error_line(index_here(data, tmp_path / "out", flag, value), flag, "--detect_landmarks")


# --- trust rule 1 (issue 25): nothing indexed outside the root; the same image twice is named --------
def test_rule1_a_link_out_of_the_dataset_is_an_error_naming_the_row_unless_allowed(tmp_path):
    root, images, _ = tree(tmp_path, n=48)
    secret = tmp_path / "private.jpg"
    first = sorted(images.iterdir())[0]
    shutil.copyfile(first, secret)
    first.unlink()
    first.symlink_to(secret)
    r = index_here(root, tmp_path / "out")
    one_error_line(r, first.name, "outside the dataset root", "--allow_outside_root")
    assert not (tmp_path / "out" / "metadata_all.parquet").exists()
    r = index_here(root, tmp_path / "out", "--allow_outside_root")
    assert r.returncode == 0, r.stderr


def test_rule1_the_same_image_under_two_names_is_named_in_the_summary(tmp_path):
    root, images, ann = tree(tmp_path, n=48)
    a, b = sorted(images.iterdir())[:2]
    shutil.copyfile(a, b)  # byte-identical files under two names
    r = index_here(root, tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert "images reachable under two names" in r.stdout and a.name in r.stdout and b.name in r.stdout


@pytest.mark.parametrize("link", ["images", "annotations", "one_annotation"])
def test_rule1_a_found_folder_or_annotation_linked_out_of_the_root_is_an_error_unless_allowed(tmp_path, link):
    """Hostile pass 2026-12-03: an images/ or annotations/ folder that is a link out of --root, or one
    _exp.npy linked to a file elsewhere, was read (exit 0): the label came from outside the dataset."""
    root, images, annotations = tree(tmp_path, n=48)
    elsewhere = tmp_path / "elsewhere"
    if link == "one_annotation":
        elsewhere.mkdir()
        target = annotations / "0_exp.npy"
        shutil.move(target, elsewhere / "label.npy")
        target.symlink_to(elsewhere / "label.npy")
    else:
        shutil.move(root / link, elsewhere)
        (root / link).symlink_to(elsewhere)
    r = index_here(root, tmp_path / "out")
    one_error_line(r, "outside the dataset root", "--allow_outside_root")
    assert not (tmp_path / "out" / "metadata_all.parquet").exists()
    r = index_here(root, tmp_path / "out", "--allow_outside_root")
    assert r.returncode == 0, r.stderr


def test_rule1_the_same_image_is_found_among_the_pngs_this_run_converts(tmp_path):
    """FER2013's PNGs are still staged when the check ran: it read the folder's earlier files (or none on a
    first run) and named no duplicate."""
    (tmp_path / "fer").mkdir()
    csv = tmp_path / "fer" / "fer2013.csv"
    write_fer2013(csv, 30, seed=0)
    df = pd.read_csv(csv)
    df.loc[1, "pixels"] = df.loc[0, "pixels"]  # rows 0 and 1: one image
    df.to_csv(csv, index=False)
    r = index_here(tmp_path / "fer", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert "images reachable under two names" in r.stdout, r.stdout
