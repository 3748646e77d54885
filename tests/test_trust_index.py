"""The indexer as a hostile user meets it: failed runs, full disks, Ctrl-C, impossible values, special
files, bad paths and flags, leakage between splits, truncated images. Each case checks the exit code,
the one-line message that names the file or flag, that no traceback is printed, and that outputs
from an earlier run are byte-identical afterwards."""
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, interruptible, run_script

import metadata_parallel
from fer.cli import run_main
from fer.data import demo as make_demo_data
from fer.data import formats
from fer.data import index as mp


def index(*args, quiet=True):
    return run_script("metadata_parallel.py", *args, *(["--quiet"] if quiet else []), timeout=120)


def one_line_error(r, code, *needles):
    """The run failed with exit code `code` and one line on stderr holding every needle."""
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    for needle in needles:
        assert str(needle) in r.stderr, (needle, r.stderr)


def snapshot(folder):
    """Every file under folder (hidden temporaries included) with its bytes."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def tree(tmp_path, n=32):
    root = make_demo_data.make_dataset(tmp_path / "ds", n=n, size=32, seed=4, progress=False)
    return root, root / "images", root / "annotations"


def indexed(tmp_path, root, *args):
    """Index root into tmp_path/out and return (out, snapshot of it)."""
    out = tmp_path / "out"
    r = index("--root", root, "--out_dir", out, "--val_fraction", "0.3", *args)
    assert r.returncode == 0, r.stderr
    return out, snapshot(out)


@contextmanager
def tmpfs(path, options):
    path.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], capture_output=True)


def write_fer2013(path, n, seed, usages=("Training", "PublicTest", "PrivateTest")):
    rng = np.random.default_rng(seed)
    pd.DataFrame({"emotion": np.arange(n) % 7,
                  "pixels": [" ".join(map(str, rng.integers(0, 256, 2304))) for _ in range(n)],
                  "Usage": [usages[i % len(usages)] for i in range(n)]}).to_csv(path, index=False)


# --- 1. nothing that exists is destroyed by a run that fails ------------------------------------
def test_failed_run_keeps_earlier_index(tmp_path):
    root, _, _ = tree(tmp_path)
    out, before = indexed(tmp_path, root)
    r = index("--root", root, "--out_dir", out, "--val_fraction", "0.01")  # fails after reading everything
    one_line_error(r, 1, "--val_fraction 0.01")
    assert snapshot(out) == before


def test_failed_run_keeps_earlier_pngs(tmp_path):
    """fer2013 writes PNGs from the CSV's pixels: a run that fails leaves the old ones and no temporaries."""
    (tmp_path / "fer").mkdir()
    write_fer2013(tmp_path / "fer" / "fer2013.csv", 21, seed=0)
    out, before = indexed(tmp_path, tmp_path / "fer")
    assert len([p for p in before if p.suffix == ".png"]) == 21
    write_fer2013(tmp_path / "fer" / "fer2013.csv", 21, seed=1, usages=("Training", "PrivateTest"))  # no val rows
    r = index("--root", tmp_path / "fer", "--out_dir", out)
    one_line_error(r, 1, "0 validation rows")
    assert snapshot(out) == before


def test_disk_full_is_one_line_and_keeps_outputs(tmp_path):
    root, _, _ = tree(tmp_path)
    with tmpfs(tmp_path / "small", "size=200k") as out:
        r = index("--root", root, "--out_dir", out, "--val_fraction", "0.3")
        assert r.returncode == 0, r.stderr
        before = snapshot(out)
        with open(out / "filler", "wb") as f:  # fill the disk up
            try:
                f.write(b"\0" * (1 << 20))
            except OSError:
                pass
        before = snapshot(out)
        r = index("--root", root, "--out_dir", out, "--val_fraction", "0.3", "--seed", "7")
        one_line_error(r, 1, "no space left on device writing", out)
        assert snapshot(out) == before


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
        seen += os.read(proc.stderr.fileno(), 4096)
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=60)
    stderr = (seen + rest).decode()
    assert proc.returncode == 130 and "interrupted" in stderr and "Traceback" not in stderr, stderr
    assert snapshot(out) == before


# --- 3. no non-finite or out-of-range value -------------------------------------------------------
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
    r = index("--root", root, "--out_dir", tmp_path / "out", "--val_fraction", "0.5")
    assert r.returncode == 0, r.stderr
    assert "5 labels that are not class codes" in r.stdout and "4 valence/arousal not finite" in r.stdout


# --- 4. nothing hangs: regular files only ---------------------------------------------------------
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
    r = index("--root", root, "--out_dir", tmp_path / "out", "--val_fraction", "0.4", "--workers", "2")
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


@pytest.mark.parametrize("fmt,special", [("fer2013", "fer2013.csv"), ("affectnet_csv", "training.csv"),
                                         ("rafdb", "EmoLabel/list_patition_label.txt")])
def test_label_file_that_is_a_fifo(tmp_path, fmt, special):
    (tmp_path / "Manually_Annotated_Images").mkdir()
    (tmp_path / special).parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(tmp_path / special)
    r = index("--format", fmt, "--root", tmp_path, "--out_dir", tmp_path / "out")
    one_line_error(r, 1, special, "not a regular file")


def test_folders_skip_special_files(tmp_path):
    for i in range(4):
        make_demo_data.write(tmp_path / "ds" / "happy" / f"{i}.jpg", make_demo_data.jpeg(np.zeros((8, 8, 3), np.uint8)))
        make_demo_data.write(tmp_path / "ds" / "sad" / f"{i}.jpg", make_demo_data.jpeg(np.zeros((8, 8, 3), np.uint8)))
    os.mkfifo(tmp_path / "ds" / "sad" / "pipe.jpg")
    os.symlink("/dev/zero", tmp_path / "ds" / "happy" / "zero.png")
    r = index("--root", tmp_path / "ds", "--out_dir", tmp_path / "out", "--val_fraction", "0.5")
    assert r.returncode == 0, r.stderr
    assert "2 not regular files" in r.stdout and "sad/pipe.jpg: a FIFO" in r.stdout and "happy/zero.png: a device" in r.stdout


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
    r = index("--root", tmp_path, "--out_dir", tmp_path / "out", "--workers", "-2", quiet=False)
    one_line_error(r, 2, "--workers")


def test_read_only_out_dir(tmp_path):
    root, _, _ = tree(tmp_path, n=8)
    with tmpfs(tmp_path / "ro", "size=1m,ro") as ro:
        r = index("--root", root, "--out_dir", ro / "out", quiet=False)
        one_line_error(r, 1, "--out_dir", "not writable", "Read-only")


@pytest.mark.parametrize("content,needle", [(b"emotion,Usage\n0,Training\n", "no column pixels"),
                                            (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe" * 50, "not a text file"),
                                            (b"", "No columns to parse")])
def test_wrong_file_is_one_line(tmp_path, content, needle):
    (tmp_path / "fer2013.csv").write_bytes(content)
    r = index("--root", tmp_path, "--out_dir", tmp_path / "out")
    one_line_error(r, 1, "fer2013.csv", needle)


def test_ferplus_names_cannot_leave_the_images_folder(tmp_path):
    write_fer2013(tmp_path / "fer2013.csv", 4, seed=0)  # Training, PublicTest, PrivateTest, Training
    header = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF\n"
    (tmp_path / "fer2013new.csv").write_text(header + "Training,../../evil.png,10,0,0,0,0,0,0,0,0,0\n"
                                             "PublicTest,fer0000001.png,10,0,0,0,0,0,0,0,0,0\n"
                                             "PrivateTest,,0,0,0,0,0,0,0,0,0,10\n"
                                             "Training,fer0000003.png,0,10,0,0,0,0,0,0,0,0\n")
    r = index("--root", tmp_path, "--out_dir", tmp_path / "out" / "x")
    assert r.returncode == 0, r.stderr
    assert "'../../evil.png' is not a plain .png name" in r.stdout
    assert sorted(p.name[:10] for p in tmp_path.rglob("*.png")) == ["fer0000001", "fer0000003"]  # + _<hash>.png


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
    r = index("--root", root, "--val_root", root if where == "same" else root / "images", "--out_dir", tmp_path / "o")
    one_line_error(r, 1, "--val_root", "overlaps --root")


def test_official_split_leak_is_reported(tmp_path):
    data = make_demo_data.make_dataset(tmp_path / "an", n=20, size=32, fmt="affectnet_csv", progress=False)
    train = pd.read_csv(data / "training.csv")
    val = pd.read_csv(data / "validation.csv")
    pd.concat([val, train.iloc[:2]]).to_csv(data / "validation.csv", index=False)  # two images in both files
    r = index("--root", data, "--out_dir", tmp_path / "out")
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
