"""fer/data/demo.py (make_demo_data.py): the synthetic datasets, their determinism and labels, and a
rerun that replaces only folders it wrote itself.

The hostile cases (from the trust passes) each failed on the code before their fix: they check the exit
code, the one line that names the file or flag (no traceback), and that earlier outputs are unchanged.
"""
import os

import numpy as np
import pytest
from builders import one_error_line, run_here, run_script, snapshot

import make_demo_data as demo_script
from fer.cli import run_main
from fer.data import demo as make_demo_data
from fer.data.dataset import load_image
from fer.trust import FERError


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


# --- make_demo_data.py over an earlier folder -----------------------------------------------------
@pytest.mark.slow
def test_demo_rerun_replaces_only_its_own_folders(tmp_path, capsys):
    out = tmp_path / "data"
    r = run_script("make_demo_data.py", "--format", "fer2013", "--out", out, "--n", 8)
    assert r.returncode == 0, r.stderr
    r = run_script("make_demo_data.py", "--format", "rafdb", "--out", out, "--n", 8, "--size", 32)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == [".make_demo_data", "EmoLabel", "Image"]  # no mix
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    r = run_script("make_demo_data.py", "--out", mine, "--n", 8)
    assert r.returncode == 1 and "not written by make_demo_data.py" in r.stderr
    assert (mine / "notes.txt").read_text() == "keep me" and len(list(mine.iterdir())) == 1
    for args, code, needle in ((["--n", "0"], 2, "--n"), (["--size", "8"], 2, "--size"),
                               (["--size", "abc"], 2, "--size"), (["--format", "fer2013", "--size", "64"], 1, "48x48"),
                               (["--format", "voc"], 2, "--format")):
        with pytest.raises(SystemExit) as e:
            run_main(demo_script.main, ["--out", str(tmp_path / "x"), *args])
        err = capsys.readouterr().err
        assert e.value.code == code and needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit) as e:
        run_main(demo_script.main, ["--out", str(mine / "notes.txt")])
    assert e.value.code == 1 and "--out" in capsys.readouterr().err
    # Through a link the linked folder is replaced, and the link stays.
    (tmp_path / "link").symlink_to(out)
    make_demo_data.make_dataset(tmp_path / "link", n=8, size=32, fmt="folders", progress=False)
    assert (tmp_path / "link").is_symlink() and (out / "train").is_dir() and not (out / "Image").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# --- every format end to end through the command lines ------------------------------------------
@pytest.mark.slow
def test_demo_interrupted_or_disk_full_keeps_the_old_folder(tmp_path, monkeypatch):
    import subprocess

    out = make_demo_data.make_dataset(tmp_path / "d", n=8, size=32, progress=False)
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    def interrupted(folder, *args):
        make_demo_data.write_affectnet(folder, *args)
        raise KeyboardInterrupt
    monkeypatch.setitem(make_demo_data.WRITERS, "affectnet", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make_demo_data.make_dataset(out, n=16, size=32, seed=3, progress=False)
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temporary folder left

    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(small)]).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        r = run_script("make_demo_data.py", "--out", small / "d", "--n", 8, "--size", 32)
        assert r.returncode == 0, r.stderr
        before = {p: p.read_bytes() for p in sorted(small.rglob("*")) if p.is_file()}
        r = run_script("make_demo_data.py", "--out", small / "d", "--n", 400, "--size", 32)
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert r.stderr.strip().splitlines()[-1] == f"error: no space left on device writing {small / 'd'}"
        assert {p: p.read_bytes() for p in sorted(small.rglob("*")) if p.is_file()} == before
    finally:
        subprocess.run(["umount", str(small)])


# --- data loss ----------------------------------------------------------------------------------
def test_make_demo_data_keeps_files_the_user_added(tmp_path):
    out = make_demo_data.make_dataset(tmp_path / "d", n=8, size=16, progress=False)
    (out / "images" / "my_face.jpg").write_bytes(b"mine")
    (out / "annotations" / "0_exp.npy").write_bytes(b"edited")
    before = snapshot(out)
    one_error_line(run_here("make_demo_data.py", "--out", out, "--n", 8, "--size", 16),
                   "2 file(s)", "not written by make_demo_data.py", "my_face.jpg")
    assert snapshot(out) == before
    (out / "images" / "my_face.jpg").unlink()
    (out / "annotations" / "0_exp.npy").unlink()
    killed = tmp_path / f".d.{2**22 + 12345}.tmp"  # the temporary folder of a run that was killed
    (killed / "images").mkdir(parents=True)
    (killed / make_demo_data.TMP_MARKER).write_text("")  # what a killed run's folder holds (a name proves nothing)
    r = run_here("make_demo_data.py", "--out", out, "--n", 8, "--size", 16)
    assert r.returncode == 0 and not killed.exists() and "left by an interrupted run" in r.stdout


# --- found by the hostile pass over indexing and datasets -----------------------------------------
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


def test_rule2_files_added_during_generation_and_lookalike_temporaries_are_never_deleted(tmp_path, monkeypatch):
    """Trust rule 2 (issue 25): a file the user adds to --out while the data is generated stops the
    swap (nothing replaced, nothing deleted); a folder that merely has a temporary's name is left alone."""
    out = tmp_path / "demo"
    make_demo_data.make_dataset(out, n=8, size=32, progress=False)
    lookalike = tmp_path / ".demo.999999.tmp"
    lookalike.mkdir()
    (lookalike / "notes.txt").write_text("mine")
    writer = make_demo_data.WRITERS["affectnet"]

    def write_and_meanwhile_add(tmp, *a):
        writer(tmp, *a)
        (out / "added.txt").write_text("user's, added meanwhile")
    monkeypatch.setitem(make_demo_data.WRITERS, "affectnet", write_and_meanwhile_add)
    with pytest.raises(FERError, match="added or changed while the data was generated"):
        make_demo_data.make_dataset(out, n=8, size=32, seed=3, progress=False)
    assert (out / "added.txt").read_text() == "user's, added meanwhile"
    assert (lookalike / "notes.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".demo.") and p != lookalike]
