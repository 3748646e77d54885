"""fer/trust.py and the rules of fer/cli that every script follows: outputs are staged and replaced
together or not at all, an output never replaces an input, special files and bad paths are one clear
line, flags are checked before the heavy imports, a Ctrl-C is one line, --help shows the defaults.

The hostile cases (from the trust passes) each failed on the code before their fix: they check the exit
code, the one line that names the file or flag (no traceback), and that earlier outputs are unchanged.
"""
import errno
import os
import shutil
import signal
import subprocess
import sys

import pytest
from builders import ROOT, TRAIN, one_error_line, run_here, snapshot, tiny_args

import fer.cli.train as TF
import fer.trust
from fer.trust import FERError, check_not_inputs, check_output, staged_outputs


# --- 1. nothing that exists is destroyed by a run that fails ------------------------------------
def test_staged_outputs_keep_the_old_file_on_any_failure(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old")
    for exc in (ValueError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with staged_outputs() as stage:
                stage(target).write_text("half")
                stage(tmp_path / "other.json").write_text("{}")
                raise exc
        assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]
    with staged_outputs() as stage:
        stage(target).write_text("new")
    assert target.read_text() == "new" and len(list(tmp_path.iterdir())) == 1


def test_a_target_that_became_a_folder_stops_the_commit_before_any_rename(tmp_path):
    """The files of a run are replaced together: a rename that would fail (a folder made at one target
    while the run wrote) is found before the first rename, not after it."""
    first, second = tmp_path / "a.pth", tmp_path / "b.csv"
    first.write_text("old")
    with pytest.raises(FERError, match="b.csv: is a folder now"):
        with staged_outputs() as stage:
            stage(first).write_text("new")
            stage(second).write_text("new")
            second.mkdir()
    assert first.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.pth", "b.csv"]


# --- 5. bad paths and flags fail in the first second --------------------------------------------
@pytest.mark.parametrize("script,args,needle", [
    ("eval_resnet50.py", ["--batch_size", 0], "--batch_size"),
    ("eval_resnet50.py", ["--num_workers", -2], "--num_workers"),
    ("eval_resnet50.py", ["--device", "gpu0"], "--device gpu0"),
    ("eval_resnet50.py", ["--out_dir", "{file}"], "--out_dir"),
    ("eval_resnet50.py", ["--save_predictions", "{dir}"], "--save_predictions"),
    ("export_onnx.py", ["--opset", 7], "--opset"),
    ("export_onnx.py", ["--out", "{dir}"], "--out"),
    ("export_onnx.py", ["--tolerance", -1], "--tolerance"),
    ("FER_transform.py", ["--n", 0], "--n"),
    ("FER_transform.py", ["--size", 8], "--size"),
    ("FER_transform.py", ["--out", "{file}/x.png"], "--out"),
])
def test_other_scripts_check_flags_and_paths(trained, demo, tmp_path, script, args, needle):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    args = [str(a).format(file=tmp_path / "file", dir=tmp_path / "dir") for a in args]
    base = {"eval_resnet50.py": ["--checkpoint", trained, "--meta", demo["val"], "--out_dir", tmp_path / "out"],
            "export_onnx.py": ["--checkpoint", trained, "--out", tmp_path / "m.onnx"],
            "FER_transform.py": ["--meta", demo["train"], "--out", tmp_path / "g.png"]}[script]
    before = snapshot(tmp_path)
    one_error_line(run_here(script, *base, *args), needle)
    assert snapshot(tmp_path) == before


# --- found by trying the scripts as a hostile user ----------------------------------------------
@pytest.mark.parametrize("case", ["export_onto_checkpoint", "predictions_onto_checkpoint", "checkpoint_onto_index",
                                  "grid_onto_index"])
def test_an_output_never_replaces_an_input(trained, demo, tmp_path, case):
    ckpt = tmp_path / "m.pth"
    ckpt.write_bytes(trained.read_bytes())
    meta = tmp_path / "metadata_val.parquet"
    meta.write_bytes(demo["val"].read_bytes())
    script, args, needle = {
        "export_onto_checkpoint": ("export_onnx.py", ["--checkpoint", ckpt, "--out", ckpt], "is the input --checkpoint"),
        "predictions_onto_checkpoint": ("eval_resnet50.py", ["--checkpoint", ckpt, "--meta", meta, "--out_dir",
                                                             tmp_path / "ev", "--save_predictions", ckpt],
                                        "is the input --checkpoint"),
        "checkpoint_onto_index": (TRAIN, tiny_args(demo, tmp_path, "--val_meta", meta, "--save_path", meta,
                                                   "--overwrite"), "is the input --val_meta"),
        "grid_onto_index": ("FER_transform.py", ["--meta", meta, "--out", tmp_path / "x.png"], None)}[case]
    if case == "grid_onto_index":
        (tmp_path / "x.png").symlink_to(meta)
        needle = "symbolic link"
    before = snapshot(tmp_path)
    one_error_line(run_here(script, *args), needle)
    assert snapshot(tmp_path) == before


def test_special_inputs_are_one_line(demo, trained, tmp_path):
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2.parquet")
    (tmp_path / "loop2.parquet").symlink_to(tmp_path / "loop1")
    r = run_here(TRAIN, *tiny_args(demo, tmp_path / "run", "--train_meta", tmp_path / "loop2.parquet"))
    one_error_line(r, "--train_meta", "loop2.parquet")
    import os
    os.mkfifo(tmp_path / "fifo.pth")
    r = run_here("export_onnx.py", "--checkpoint", tmp_path / "fifo.pth", "--out", tmp_path / "m.onnx")
    one_error_line(r, "fifo.pth", "not a regular file")


# --- data loss ----------------------------------------------------------------------------------
def test_a_commit_is_not_cut_in_half_by_ctrl_c(tmp_path, monkeypatch):
    """Ctrl-C while the files of a run are renamed into place: all of them are replaced, then the
    interrupt arrives (an index never points at images of another run)."""
    targets = [tmp_path / f"f{i}.txt" for i in range(3)]
    for t in targets:
        t.write_text("old")
    real = os.replace

    def replace_then_ctrl_c(src, dst):
        real(src, dst)
        os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.setattr(fer.trust.os, "replace", replace_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        with staged_outputs() as stage:
            for t in targets:
                stage(t).write_text("new")
    assert [t.read_text() for t in targets] == ["new"] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f0.txt", "f1.txt", "f2.txt"]


def test_no_two_outputs_of_a_run_are_one_file(trained, demo, tmp_path):
    metrics = tmp_path / "metrics_resnet50.json"
    metrics.write_text("{}")
    r = run_here("eval_resnet50.py", "--checkpoint", trained, "--meta", demo["val"], "--out_dir", tmp_path,
                 "--save_predictions", metrics, "--num_workers", 0)
    one_error_line(r, "--save_predictions", "metrics_resnet50.json", "same file")
    assert metrics.read_text() == "{}"
    ckpt = shutil.copy(trained, tmp_path / "m.pth")  # predict's CSV onto its own checkpoint
    one_error_line(run_here("predict.py", "--checkpoint", ckpt, demo["root"] / "images" / "0.jpg", "--out", ckpt),
                   "--out", "m.pth", "is the input --checkpoint")
    assert ckpt.read_bytes() == trained.read_bytes()
    (tmp_path / "link.csv").symlink_to(tmp_path / "a.csv")  # another spelling of a file not yet written
    with pytest.raises(FERError, match="--b .*link.csv: is also the output --a"):
        check_not_inputs([("--a", tmp_path / "a.csv"), ("--b", tmp_path / "link.csv")], [])


# --- tracebacks and unclear errors --------------------------------------------------------------
def test_a_full_disk_is_blamed_on_the_file_that_failed(tmp_path, monkeypatch):
    monkeypatch.setattr(fer.trust, "_disk_full", lambda path: True)
    with pytest.raises(FERError, match=r"no space left on device writing .*second\.pth$"):
        with staged_outputs() as stage:
            stage(tmp_path / "first.json").write_text("{}")
            stage(tmp_path / "second.pth")
            raise RuntimeError("PytorchStreamWriter failed writing file data/0")  # torch.save names no file
    with pytest.raises(FERError, match=r"writing .*first\.json$"):
        with staged_outputs() as stage:
            tmp = stage(tmp_path / "first.json")
            stage(tmp_path / "second.pth").write_text("x")
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_of_a_killed_run_are_removed(demo, tmp_path, capsys):
    dead = 2**22 + 12345  # above the usual pid_max: no such process
    stale = [tmp_path / f".m_last.{dead}.0.tmp.pth", tmp_path / f".m_history.{dead}.2.tmp.csv"]
    alive = tmp_path / f".m_last.{os.getpid()}.0.tmp.pth"  # a run still writing
    mine = tmp_path / ".notes.txt"
    for p in stale + [alive, mine]:
        p.write_bytes(b"x" * 1000)
    for path in ("m_last.pth", "m_history.csv"):
        check_output(tmp_path / path, "--save_path")
    assert not any(p.exists() for p in stale) and alive.exists() and mine.exists()
    assert "removed 1 temporary file(s)" in capsys.readouterr().out


@pytest.mark.parametrize("script,flag", [("eval_resnet50.py", ["--batch_size", "0"]),
                                         ("export_onnx.py", ["--opset", "3"]),
                                         ("train_vggface2_resnet50.py", ["--img_size", "100", "--arch", "vit_b_16"]),
                                         ("train_vggface2_resnet50.py", ["--arch", "resnet51"])])
def test_flag_errors_come_before_the_heavy_imports(script, flag):
    import subprocess
    import sys

    from builders import ROOT
    r = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / script), *flag], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and f"argument {flag[0]}" in r.stderr
    imported = [ln.rsplit("|", 1)[-1].strip() for ln in r.stderr.splitlines() if ln.startswith("import time:")]
    assert imported and not [m for m in imported if m.split(".")[0] in ("torch", "cv2", "albumentations", "pandas")]


# --- predict.py, export_onnx.py and every script's --help -----------------------------------------
@pytest.mark.parametrize("script", ["metadata_parallel.py", "FER_transform.py", "train_vggface2_resnet50.py",
                                    "eval_resnet50.py", "predict.py", "export_onnx.py", "make_demo_data.py",
                                    "bench.py"])
def test_help(script):
    r = run_here(script, "--help")
    assert r.returncode == 0 and "usage:" in r.stdout and "--" in r.stdout


# --- moving data --------------------------------------------------------------------------------
def test_training_and_evaluation_take_root(demo, moved, tmp_path):
    args = tiny_args(demo, tmp_path, "--train_meta", moved["train"], "--val_meta", moved["val"], "--epochs", 1)
    r = run_here("train_vggface2_resnet50.py", *args)
    assert r.returncode == 1 and "no longer exists" in r.stderr and "--root" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run_here("train_vggface2_resnet50.py", *args, "--root", tmp_path / "nowhere")
    assert r.returncode == 1 and "--root" in r.stderr and "folder not found" in r.stderr
    r = run_here("eval_resnet50.py", "--checkpoint", "x.pth", "--meta", moved["val"], "--out_dir", tmp_path / "e",
                 "--root", tmp_path / "nowhere")
    assert r.returncode == 1 and "--root" in r.stderr and "folder not found" in r.stderr
    r = run_here("FER_transform.py", "--meta", moved["val"], "--out", tmp_path / "g.png",
                 "--root", tmp_path / "nowhere")
    assert r.returncode == 1 and "--root" in r.stderr and "folder not found" in r.stderr
    assert "root" in TF.RESUMABLE_CHANGES  # a moved dataset can be resumed: --root changes where, not what


# --- help and names ---------------------------------------------------------------------------------
@pytest.mark.parametrize("script,shown", [("train_vggface2_resnet50.py", "(default: 100)"),
                                          ("eval_resnet50.py", "(default: 32)"),
                                          ("FER_transform.py", "(default: 224)"),
                                          ("export_onnx.py", "(default: 18)")])
def test_help_shows_defaults(script, shown):
    r = run_here(script, "--help")
    assert r.returncode == 0 and shown in " ".join(r.stdout.split())
    assert "(default: None)" not in r.stdout and "(default: False)" not in r.stdout


# --- found by the hostile pass over indexing and datasets -----------------------------------------
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
