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
from pathlib import Path

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
    metrics = tmp_path / "metrics_resnet18.json"
    metrics.write_text("{}")
    r = run_here("eval_resnet50.py", "--checkpoint", trained, "--meta", demo["val"], "--out_dir", tmp_path,
                 "--save_predictions", metrics, "--num_workers", 0)
    one_error_line(r, "--save_predictions", "metrics_resnet18.json", "same file")
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


# --- progress (issue 26): a bar on a terminal, lines in a log, nothing with --quiet -----------------------
def test_progress_is_a_bar_on_a_terminal_and_lines_in_a_log():
    import io
    import time

    from fer.trust import progress, set_quiet

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    tty = Terminal()
    for _ in progress(range(3), desc="evaluate", unit="batch", stream=tty):
        pass
    assert "\r" in tty.getvalue() and "evaluate" in tty.getvalue()  # tqdm's bar, redrawn in place
    log = io.StringIO()
    for _ in progress(range(4), desc="evaluate", unit="batch", stream=log, interval=0):
        time.sleep(0.01)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) >= 4  # one plain line per report, a log file can hold them
    assert lines[-1].startswith("evaluate: 4/4 batch (100%)") and "batch/s" in lines[-1] and "left" in lines[-1]
    assert "elapsed" in lines[1] and "left 00:00" in lines[-1]
    slow = io.StringIO()
    for _ in progress(range(50), desc="x", stream=slow):  # the default interval: a start and an end line
        pass
    assert len(slow.getvalue().splitlines()) == 2
    import contextlib
    out, err = io.StringIO(), io.StringIO()  # not a terminal: the lines go to stdout, stderr keeps errors only
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        for _ in progress(range(2), desc="index", unit="img"):
            pass
    assert err.getvalue() == "" and out.getvalue().splitlines()[-1].startswith("index: 2/2 img (100%)")
    try:
        set_quiet(True)
        quiet = io.StringIO()
        for _ in progress(range(3), desc="x", stream=quiet, interval=0):
            pass
        assert quiet.getvalue() == ""
    finally:
        set_quiet(False)


@pytest.mark.parametrize("script", ["make_demo_data.py", "FER_transform.py", "metadata_parallel.py",
                                    "train_vggface2_resnet50.py", "eval_resnet50.py", "predict.py", "export_onnx.py",
                                    "compare_runs.py", "bench.py"])
def test_every_script_has_quiet(script):
    r = run_here(script, "--help")
    assert r.returncode == 0 and "--quiet" in r.stdout, r.stderr
# === issue 25: the rules every script gets from fer.trust ========================================
# --- rule 1 -------------------------------------------------------------------------------------
def test_rule1_rows_outside_the_root_are_refused_naming_the_row(tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.jpg").write_bytes(b"a")
    secret = tmp_path / "private.jpg"
    secret.write_bytes(b"s")
    (root / "images" / "link.jpg").symlink_to(secret)
    ok = fer.trust.resolve_rows(root / "images", ["a.jpg"], root, "index.parquet")
    assert ok == [os.path.realpath(root / "images" / "a.jpg")]
    for name, how in ((str(secret), "an absolute path"), ("../../private.jpg", "climbs out"), ("link.jpg", "a link")):
        with pytest.raises(FERError, match=rf"index.parquet: row 1 \({name}\) is {how}.*--allow_outside_root"):
            fer.trust.resolve_rows(root / "images", ["a.jpg", name], root, "index.parquet")
        assert fer.trust.resolve_rows(root / "images", [name], root, "x", allow_outside=True) == [str(secret)]


def test_rule1_the_same_image_reachable_twice_is_found(tmp_path):
    for name, data in (("happy/a.jpg", b"1"), ("sad/b.jpg", b"1"), ("sad/c.jpg", b"2"), ("sad/d.jpg", b"3")):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(data)
    (tmp_path / "happy" / "e.jpg").symlink_to(tmp_path / "sad" / "c.jpg")
    names = ["happy/a.jpg", "sad/b.jpg", "sad/c.jpg", "sad/d.jpg", "happy/e.jpg"]
    groups = fer.trust.exact_duplicates([tmp_path / n for n in names], names)
    assert sorted(sorted(g) for g in groups) == [["happy/a.jpg", "sad/b.jpg"], ["happy/e.jpg", "sad/c.jpg"]]


# --- rule 2 -------------------------------------------------------------------------------------
def test_rule2_check_outputs_refuses_inputs_artefacts_and_dataset_files(tmp_path):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "annotations").mkdir()
    (data / "images" / "a.jpg").write_bytes(b"x")
    ckpt, record = tmp_path / "m.pth", tmp_path / "r_run.json"
    ckpt.write_bytes(b"w")
    record.write_text("{}")
    used = tmp_path / "in.pth"
    used.write_bytes(b"w")
    (tmp_path / "alias.csv").symlink_to(used)
    cases = [([("--annotate", data / "images" / "a.jpg")], "is a dataset image"),
             ([("--out", data / "images" / "new.png")], "lies in the dataset"),
             ([("--out", ckpt)], "is a checkpoint, another tool's file"),
             ([("--json", record)], "is a run record"),
             ([("--out", tmp_path / "alias.csv")], "is the input --checkpoint"),
             ([("--out", tmp_path / "o.csv"), ("--json", tmp_path / "o.csv")], "is also the output")]
    for outputs, needle in cases:
        with pytest.raises(FERError, match=needle):
            fer.trust.check_outputs(outputs, [("--checkpoint", used)], kind="predictions", images=True)
    assert fer.trust.check_outputs([("--out", tmp_path / "p.csv")], [("--checkpoint", used)], kind="predictions")
    fer.trust.check_outputs([("--out", tmp_path / "m2.pth")], [], kind="checkpoint")


def test_rule2_overwrite_removes_stale_files_of_the_set_and_never_the_users(tmp_path):
    def run(names):
        with staged_outputs() as stage:
            for n in names:
                stage(tmp_path / n).write_text(f"new {n}")
            return fer.trust.stage_output_set(stage, tmp_path, "evaluation")
    assert run(["metrics.json", "predictions.csv"]) == []
    (tmp_path / "mine.txt").write_text("user's")
    assert run(["metrics.json"]) == ["predictions.csv"]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["metrics.json", "mine.txt"]
    run(["metrics.json", "predictions.csv"])
    (tmp_path / "predictions.csv").write_text("changed by the user")  # no longer as written: kept
    assert run(["metrics.json"]) == []
    assert (tmp_path / "predictions.csv").read_text() == "changed by the user"


# --- rule 3 -------------------------------------------------------------------------------------
LOCK_HOLDER = """
import sys, time
from fer.trust import run_lock
with run_lock(sys.argv[1], "--save_path"):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_rule3_second_run_is_refused_naming_the_pid_and_a_killed_runs_lock_is_taken_over(tmp_path, capsys):
    target = tmp_path / "FER.pth"
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(target)], stdout=subprocess.PIPE, text=True,
                              cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FERError, match=rf"another run \(pid {holder.pid}\) is using it"):
            with fer.trust.run_lock(target, "--save_path"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with fer.trust.run_lock(target, "--save_path"):  # the OS freed the killed run's lock
        pass
    assert f"left by run pid {holder.pid}, which no longer runs, was taken over" in capsys.readouterr().out


# --- rule 4 -------------------------------------------------------------------------------------
COMMITTER = """
import sys
from pathlib import Path
from pathlib import Path
from fer.trust import staged_outputs
folder = Path(sys.argv[1])
for k in range(1, 10**6):
    with staged_outputs() as stage:
        for name in ("best.pth", "last.pth", "history.csv", "run.json", "sub/images.txt"):
            stage(folder / name).write_text(str(k) * 1000)
"""


@pytest.mark.slow
def test_rule4_a_kill_at_any_moment_leaves_one_whole_state(tmp_path):
    """SIGKILL after random delays, many times: once the next reader (or writer) finished the commit a
    killed run left half done, every file holds the same state."""
    import random

    rng = random.Random(0)
    names = ("best.pth", "last.pth", "history.csv", "run.json", "sub/images.txt")
    mixed_before_recovery = 0
    for trial in range(40):
        proc = subprocess.Popen([sys.executable, "-c", COMMITTER, str(tmp_path)], cwd=ROOT)
        import time
        time.sleep(0.3 + rng.random() * 0.4)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        states = {(tmp_path / n).read_text() for n in names if (tmp_path / n).exists()}
        mixed_before_recovery += len(states) > 1
        fer.trust.remove_stale_temporaries(tmp_path)  # what the next run (or check_input) does first
        fer.trust.remove_stale_temporaries(tmp_path / "sub")
        states = {(tmp_path / n).read_text() for n in names if (tmp_path / n).exists()}
        assert len(states) <= 1, f"trial {trial}: mixed states {sorted(s[:3] for s in states)}"
        assert not list(tmp_path.rglob(".*")), "temporaries left"
    print(f"{mixed_before_recovery} of 40 kills fell inside a commit")


def test_rule4_ctrl_c_during_a_commit_says_the_outputs_are_complete(tmp_path):
    def interrupt(signum=signal.SIGINT):
        signal.raise_signal(signum)

    with pytest.raises(fer.trust.CompleteInterrupt) as e:
        with staged_outputs() as stage:
            stage(tmp_path / "a.csv").write_text("new")
            real = os.replace

            def replace_then_interrupt(src, dst):
                real(src, dst)
                interrupt()
            fer.trust.os.replace = replace_then_interrupt
            try:
                stage.commit()
            finally:
                fer.trust.os.replace = real
    assert e.value.committed == [tmp_path / "a.csv"] and (tmp_path / "a.csv").read_text() == "new"


# --- rule 6 -------------------------------------------------------------------------------------
def test_rule6_hostile_config_files_end_in_one_line_quickly(tmp_path):
    import time

    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))
    t0 = time.time()
    with pytest.raises(FERError, match="expands to more than"):
        fer.trust.load_yaml(bomb, "--config c.yaml")
    assert time.time() - t0 < 2
    with pytest.raises(FERError, match="key 'lr' given twice"):
        fer.trust.load_yaml("lr: 1\nepochs: 2\nlr: 3\n", "--config c.yaml")
    assert fer.trust.load_yaml("lr: 1\nx: &a [1]\ny: *a\n", "w") == {"lr": 1, "x": [1], "y": [1]}
    fifo = tmp_path / "x_run.json"
    os.mkfifo(fifo)
    with pytest.raises(FERError, match="not a regular file"):
        fer.trust.read_regular_text(fifo, "PATH")
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * 100)
    with pytest.raises(FERError, match="more than the 10"):
        fer.trust.read_regular_text(big, "--config", limit=10)


# --- rule 2, per script ---------------------------------------------------------------------------
def test_rule2_every_script_refuses_an_output_onto_an_input_artefact_or_dataset_image(demo, trained, tmp_path):
    images = demo["root"] / "images"
    image = sorted(images.iterdir())[0]
    record = tmp_path / "x_run.json"
    record.write_text("{}")
    ckpt_copy = tmp_path / "other.pth"
    shutil.copyfile(trained, ckpt_copy)
    before = snapshot(demo["root"]), record.read_text(), ckpt_copy.read_bytes()
    cases = [
        (("predict.py", image, "--checkpoint", trained, "--annotate", images, "--out", tmp_path / "p.csv"),
         "--annotate", "dataset"),
        (("predict.py", image, "--checkpoint", trained, "--out", ckpt_copy), "--out", "is a checkpoint"),
        (("FER_transform.py", "--meta", demo["train"], "--out", image.with_suffix(".png")), "--out", "dataset"),
        (("export_onnx.py", "--checkpoint", trained, "--out", tmp_path / "x.json"), "--out", ".onnx"),
        (("export_onnx.py", "--checkpoint", trained, "--out", tmp_path / "x_run.onnx.pth"), "--out", ".onnx"),
        (("compare_runs.py", "--predictions", tmp_path / "a.csv", tmp_path / "b.csv", "--json", record),
         "--json", "is a run record"),
        (("eval_resnet50.py", "--checkpoint", trained, "--meta", demo["val"], "--out_dir", tmp_path / "ev",
          "--save_predictions", ckpt_copy), "--save_predictions", "checkpoint"),
    ]
    for argv, flag, needle in cases:
        if argv[0] == "compare_runs.py":
            for name in ("a.csv", "b.csv"):
                (tmp_path / name).write_text("filename,y_true,y_pred\n")
        one_error_line(run_here(*argv), flag, needle)
    assert (snapshot(demo["root"]), record.read_text(), ckpt_copy.read_bytes()) == before


@pytest.mark.slow
def test_rule2_eval_overwrite_removes_the_earlier_predictions_csv_and_never_an_input(demo, trained, tmp_path):
    out = tmp_path / "ev"
    base = ("eval_resnet50.py", "--checkpoint", trained, "--meta", demo["val"], "--out_dir", out, "--bootstrap", 0,
            "--report", "off")
    r = run_here(*base, "--save_predictions", tmp_path / "pred.csv")
    assert r.returncode == 0, r.stderr
    (out / "notes.txt").write_text("mine")
    r = run_here(*base, "--overwrite")
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "pred.csv").exists() and "pred.csv" in r.stdout  # no folder mixing two evaluations
    assert (out / "notes.txt").read_text() == "mine"
    # two checkpoints with --overwrite: an input named like an output of the set is kept
    b = out / "ConfusionMatrix_resnet50.png"  # the earlier evaluation's file, now also an input's name
    shutil.copyfile(trained, tmp_path / "b.pth")
    os.replace(tmp_path / "b.pth", b.with_suffix(".pth"))
    r = run_here("eval_resnet50.py", "--checkpoint", trained, b.with_suffix(".pth"), "--meta", demo["val"],
                 "--out_dir", out, "--bootstrap", 0, "--overwrite")
    assert r.returncode == 0, r.stderr
    assert b.with_suffix(".pth").is_file() and (out / "notes.txt").is_file()


def test_rule3_a_second_training_into_one_save_path_is_refused_naming_the_first(demo, tmp_path):
    save = (tmp_path / "run" / "m.pth")
    save.parent.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(save.resolve())], stdout=subprocess.PIPE,
                              text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "locked"
        r = run_here(TRAIN, *tiny_args(demo, tmp_path / "run", "--save_path", save))
        one_error_line(r, "--save_path", f"pid {holder.pid}")
        assert sorted(p.name for p in save.parent.iterdir()) == [".m.pth.lock", ".m.pth.lock.pid"]
    finally:
        holder.kill()
        holder.wait()


# --- rules 5 and 6, per script ------------------------------------------------------------------
def test_rule5_6_impossible_inputs_are_one_line(demo, tmp_path):
    (tmp_path / "p1.csv").write_text("filename,y_true,y_pred,prob_Neutral,prob_Happy\na,0,0,1.7,0.1\n")
    shutil.copyfile(tmp_path / "p1.csv", tmp_path / "p2.csv")
    one_error_line(run_here("compare_runs.py", "--predictions", tmp_path / "p1.csv", tmp_path / "p1.csv"),
                   "the same file")
    one_error_line(run_here("compare_runs.py", "--predictions", tmp_path / "p1.csv", tmp_path / "p2.csv"),
                   "prob_Neutral is 1.7", "[0, 1]")
    for bad in ("", "./", str(tmp_path) + "/"):
        one_error_line(run_here(TRAIN, *tiny_args(demo, tmp_path, "--save_path", bad)), "--save_path")
    for flags, needle in ((["--batch_size", 0], "--batch_size"), (["--reps", 0], "--reps"),
                          (["--device", "tpu"], "--device"), (["--json", tmp_path], "--json")):
        one_error_line(run_here("bench.py", *flags), needle)


# --- hostile pass 2026-12-03 ----------------------------------------------------------------------
def test_rule2_overwrite_in_a_copied_output_set_never_deletes_the_originals_files(tmp_path):
    """A manifest copied with its folder (cp -a, rsync -a keep sizes and mtimes) lists the copy's files:
    --overwrite into the copy removed the original folder's predictions CSV."""
    original, copy = tmp_path / "ev", tmp_path / "ev_copy"

    def run(folder, names):
        with staged_outputs() as stage:
            for n in names:
                stage(folder / n).write_text(f"new {n}")
            return fer.trust.stage_output_set(stage, folder, "evaluation")
    run(original, ["metrics.json", "predictions.csv"])
    shutil.copytree(original, copy, copy_function=shutil.copy2)
    assert run(copy, ["metrics.json"]) == ["predictions.csv"]
    assert (original / "predictions.csv").read_text() == "new predictions.csv"
    assert not (copy / "predictions.csv").exists()


def test_rule6_a_fifo_named_like_a_checkpoint_is_never_opened_for_reading(tmp_path):
    """eval_resnet50.py --checkpoint FIFO.pth hung: the architecture was peeked at before the checks."""
    import threading

    from fer.cli import recorded_field

    fifo = tmp_path / "model.pth"
    os.mkfifo(fifo)
    found = []
    t = threading.Thread(target=lambda: found.append(recorded_field(fifo)), daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive() and found == [None]
    assert fer.trust.open_regular(fifo) is None and fer.trust.open_regular(tmp_path / "missing") is None


def test_rule1_a_root_recorded_in_an_index_cannot_widen_the_dataset(tmp_path):
    """An index's parquet metadata names its dataset root: one edited to '/' let ../ rows be read anywhere."""
    import pandas as pd

    from fer.data.dataset import dataset_root

    images = tmp_path / "a" / "b" / "ds" / "images"
    images.mkdir(parents=True)
    df = pd.DataFrame({"filename": ["x.jpg"]})
    for recorded, expected in [("/", images), (tmp_path, images), (images.parent, images.parent), (images, images)]:
        df.attrs["dataset_root"] = str(recorded)
        assert dataset_root(df, images) == expected, recorded


@pytest.mark.parametrize("target,needle", [("m.onnx", "is a ONNX model"), ("x_run.json", "is a run record"),
                                           ("images/FER_resnet18.pth", "lies in the dataset")])
def test_rule2_training_never_writes_over_another_tools_file_or_into_a_dataset(demo, tmp_path, target, needle):
    """Hostile pass 2026-12-03: --save_path m.onnx --overwrite replaced an ONNX model with a checkpoint, and a
    --save_path in the dataset put the curves PNG among its images."""
    folder = demo["root"] if target.startswith("images/") else tmp_path
    if not target.startswith("images/"):
        (folder / target).write_bytes(b"another tool's file")
    args = TF.get_args(tiny_args(demo, tmp_path, "--save_path", folder / target, "--overwrite"))
    with pytest.raises(FERError, match=needle):
        TF.preflight(args)
    assert not target.startswith("images/") or not (folder / "images" / "FER_resnet18_curves.png").exists()


def test_rule6_json_nested_too_deeply_is_one_line_and_kit_files_beside_outputs_never_hang(tmp_path):
    """Hostile pass 2026-12-03: a run record of 100,000 nested brackets ended compare_runs.py in a RecursionError
    traceback; the manifests, journals and protocol cards the kit reads beside its files went through the
    same json.loads (a FIFO named protocol_card.json would hang training and evaluation)."""
    with pytest.raises(FERError, match="nested too deeply"):
        fer.trust.load_json("[" * 100_000 + "]" * 100_000, "x_run.json")
    bomb, fifo = tmp_path / "protocol_card.json", tmp_path / "fifo.json"
    bomb.write_text("[" * 100_000 + "]" * 100_000)
    os.mkfifo(fifo)
    assert fer.trust.read_json(bomb, "protocol card", default={}) == {}
    assert fer.trust.read_json(fifo, "protocol card", default={}) == {}
    from fer.data.leakage import card_record

    assert card_record(tmp_path / "metadata_val.parquet") is None


def test_rule4_a_commit_into_two_folders_keeps_its_journal_in_both(tmp_path, monkeypatch):
    """The journal went into the folders' common ancestor (/ for --out /tmp/t.md --plot ~/p.png): not writable,
    so the whole run's output was discarded, and never looked for again by the folders' readers. Each folder
    now holds a copy; finishing the commit from either folder completes it and removes every copy."""
    a, b = tmp_path / "a", tmp_path / "b"
    stage = fer.trust.Stage()
    for target in (a / "x.txt", b / "y.txt"):
        Path(stage(target)).write_text(target.name)
    real_replace, renames = os.replace, []

    def killed_after_the_first_rename(src, dst):
        if str(dst).endswith(".txt"):
            if renames:
                raise SystemExit("killed")  # stands for a SIGKILL between the renames
            renames.append(dst)
        return real_replace(src, dst)
    monkeypatch.setattr(os, "replace", killed_after_the_first_rename)
    monkeypatch.setattr(fer.trust, "process_gone", lambda pid: True)  # the committing process is gone
    with pytest.raises(SystemExit):
        stage.commit()
    monkeypatch.setattr(os, "replace", real_replace)
    assert not list(tmp_path.glob(".fer-commit*"))  # nothing in the common ancestor
    assert len(list(a.glob(".fer-commit*"))) == len(list(b.glob(".fer-commit*"))) == 1
    assert fer.trust.finish_commits(b) == 1
    assert (a / "x.txt").read_text() == "x.txt" and (b / "y.txt").read_text() == "y.txt"
    assert not list(tmp_path.rglob(".fer-commit*")) and not list(tmp_path.rglob("*.tmp*"))
