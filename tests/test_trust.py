"""Issue 9's trust rules for training, evaluation, export, the dataset and the transform CLI.

Each case checks the exit code, the one-line message (it names the file or flag), that no traceback
is printed, and that outputs that existed before are byte-identical afterwards.
"""
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import interruptible, run_here, tiny_args

import fer.cli.train as TF
import fer.training.loop as TL
import fer.training.start as TI
import train_vggface2_resnet50 as T
from fer.data.dataset import FERDataset, integer_labels
from fer.trust import FERError, staged_outputs

TRAIN = "train_vggface2_resnet50.py"


def one_error_line(r, *needles):
    """The run failed with exactly one line on stderr, naming every needle."""
    assert r.returncode not in (0, None) and "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert str(n) in lines[0], (n, lines[0])
    return lines[0]


def snapshot(folder):
    """{relative path: bytes} of every file below folder (hidden temporary files included)."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def mount(tmp_path):
    """mount(size, ro=False) -> a fresh tmpfs folder (a small disk, or a read-only one); skipped where
    this user cannot mount."""
    mounted = []

    def make(size="1m", ro=False, fill=None):
        where = tmp_path / f"fs{len(mounted)}"
        where.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
        if r.returncode != 0:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        mounted.append(where)
        if fill:
            fill(where)
        if ro:
            subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
        return where
    yield make
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill_disk(folder, leave=0):
    """Write a filler file until only about `leave` bytes are free."""
    import os
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    with open(folder / "filler", "wb") as fh:
        fh.write(b"\0" * max(0, free - leave))


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


def test_eval_on_a_full_disk_keeps_the_old_report(trained, demo, mount):
    def old_report(d):
        for name in ("metrics_resnet50.json", "ConfusionMatrix_resnet50.png", "ValenceArousal_resnet50.png"):
            (d / name).write_bytes(b"last month's " + name.encode())
        fill_disk(d, leave=16 * 1024)  # the JSON fits, the PNGs do not
    disk = mount("512k", fill=old_report)
    before = snapshot(disk)
    r = run_here("eval_resnet50.py", "--checkpoint", trained, "--meta", demo["val"], "--out_dir", disk,
                   "--num_workers", 0, "--overwrite")  # without it: refused, the folder holds an evaluation
    one_error_line(r, "no space left on device writing", disk)
    assert snapshot(disk) == before


def test_training_on_a_full_disk_is_one_line(demo, mount):
    disk = mount("1m", fill=lambda d: fill_disk(d, leave=64 * 1024))
    before = snapshot(disk)
    r = run_here(TRAIN, *tiny_args(demo, disk, "--epochs", 1))
    one_error_line(r, "no space left on device writing", disk)
    assert snapshot(disk) == before


def test_export_keeps_the_old_onnx_when_the_check_fails(trained, tmp_path):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"the model we shipped")
    r = run_here("export_onnx.py", "--checkpoint", trained, "--out", out, "--tolerance", 1e-30)
    one_error_line(r, "--tolerance", "m.onnx not written")
    assert out.read_bytes() == b"the model we shipped" and [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


# --- 2. a new training run never silently replaces an earlier run --------------------------------
def test_training_refuses_to_replace_an_earlier_run(demo, trained):
    folder = trained.parent
    before = snapshot(folder)
    r = run_here(TRAIN, *tiny_args(demo, folder, "--epochs", 1, "--save_path", trained))
    one_error_line(r, trained, "--resume", "FER_resnet18_last.pth", "--overwrite")
    assert snapshot(folder) == before


def test_overwrite_replaces_an_earlier_run(demo, tmp_path):
    r = run_here(TRAIN, *tiny_args(demo, tmp_path, "--epochs", 1, "--steps_per_epoch", 1))
    assert r.returncode == 0, r.stderr
    (tmp_path / "m_history.csv").write_text("stale")
    r = run_here(TRAIN, *tiny_args(demo, tmp_path, "--epochs", 1, "--steps_per_epoch", 1, "--overwrite"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m_history.csv").read_text().startswith("epoch,")


# --- 3. no non-finite or out-of-range value reaches a model -------------------------------------
def test_dataset_rejects_bad_labels_and_va(demo, tmp_path, capsys):
    df = pd.read_parquet(demo["val"])
    df["expression"] = df["expression"].astype(float)
    df.loc[0, "expression"] = 3.5
    df.loc[1, "expression"] = np.nan
    df.loc[3, "valence"] = np.inf
    df.loc[4, "arousal"] = 1.7
    df.loc[5, "valence"] = -2.0  # AffectNet's "none": kept, without a regression target
    df.loc[6, "valence"] = np.nan
    bad = df.iloc[[0, 1, 3, 4]]["filename"].tolist()
    df.to_parquet(tmp_path / "m.parquet")
    ds = FERDataset(tmp_path / "m.parquet", train=False, size=32, root=demo["root"])
    out = capsys.readouterr().out
    assert len(ds) == len(df) - 4 and not set(bad) & set(ds.filenames)
    assert ds.dropped == {"labels that are not whole numbers": 2, "valence/arousal not a finite number in [-1, 1]": 2}
    assert bad[0] in out and "3.5" in out and bad[2] in out and "inf" in out
    kept = {f: va for f, va in zip(ds.filenames, ds.va)}
    assert np.isnan(kept[df.loc[5, "filename"]][0]) and np.isnan(kept[df.loc[6, "filename"]][0])
    assert np.isfinite(ds.va[~np.isnan(ds.va)]).all()


def test_string_and_complex_labels_are_not_labels(demo, tmp_path):
    df = pd.read_parquet(demo["val"])
    df["expression"] = df["expression"].astype(str)  # "3": a parquet written by another tool
    df.to_parquet(tmp_path / "m.parquet")
    ds = FERDataset(tmp_path / "m.parquet", train=False, size=32, verbose=False)
    assert len(ds) == 0 and ds.dropped == {"labels that are not whole numbers": len(df)}
    labels, ok = integer_labels(pd.Series([1 + 1j, 2.0, True, "4", 5], dtype=object))
    assert ok.tolist() == [False, True, False, False, True] and labels[[1, 4]].tolist() == [2, 5]
    r = run_here(TRAIN, "--train_meta", tmp_path / "m.parquet", "--val_meta", demo["val"],
                   *tiny_args(demo, tmp_path / "t")[4:])
    one_error_line(r, "m.parquet", "no label in the expression column is a whole number", "'")


def test_training_stops_at_the_first_nonfinite_loss(demo, tmp_path, monkeypatch, capsys):
    real = TL.make_criterion
    calls = []

    def poisoned(weights, device):
        crit = real(weights, device)

        def criterion(*a):
            calls.append(1)
            loss = crit(*a)
            return loss * float("nan") if len(calls) == 3 else loss
        return criterion
    monkeypatch.setattr(TL, "make_criterion", poisoned)
    with pytest.raises(SystemExit) as e:
        T.main(tiny_args(demo, tmp_path, "--epochs", 2))
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: non-finite loss at epoch 1, step 3") and "--lr" in err
    assert list(tmp_path.iterdir()) == []  # nothing saved


@pytest.mark.parametrize("script", ["eval_resnet50.py", "predict.py", "export_onnx.py"])
def test_nonfinite_weights_are_refused(trained, demo, tmp_path, script):
    ckpt = torch.load(trained, weights_only=True)
    ckpt["model"]["fc_reg.bias"][0] = float("nan")
    bad = tmp_path / "nan.pth"
    torch.save(ckpt, bad)
    extra = {"eval_resnet50.py": ["--meta", demo["val"], "--out_dir", tmp_path],
             "predict.py": [demo["root"] / "images" / "0.jpg", "--out", tmp_path / "p.csv"],
             "export_onnx.py": ["--out", tmp_path / "m.onnx"]}[script]
    r = run_here(script, "--checkpoint", bad, *extra)
    one_error_line(r, "nan.pth", "non-finite", "fc_reg.bias")
    assert [p.name for p in tmp_path.iterdir()] == ["nan.pth"]


# --- 5. bad paths and flags fail in the first second --------------------------------------------
@pytest.mark.parametrize("flag,value,needle", [
    ("--batch_size", 0, "--batch_size: 0 must be >= 1"), ("--lr", -1, "--lr"), ("--lr", "nan", "not finite"),
    ("--weight_decay", -0.1, "--weight_decay"), ("--img_size", 16, "--img_size"), ("--epochs", "2.5", "--epochs"),
    ("--num_workers", -1, "--num_workers"), ("--prefetch_factor", 0, "--prefetch_factor"),
    ("--device", "tpu", "--device tpu"), ("--device", "cuda:7", "--device cuda:7"),
])
def test_training_flags_are_checked_first(demo, tmp_path, flag, value, needle):
    if flag == "--device" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = run_here(TRAIN, *tiny_args(demo, tmp_path, flag, value))
    one_error_line(r, needle)
    assert list(tmp_path.iterdir()) == [] and "epoch" not in r.stdout


@pytest.mark.parametrize("case", ["parent_is_file", "is_folder", "read_only"])
def test_unusable_save_path_fails_before_training(demo, tmp_path, mount, case):
    if case == "parent_is_file":
        (tmp_path / "file").write_text("x")
        save = tmp_path / "file" / "m.pth"
    elif case == "is_folder":
        save = tmp_path / "m.pth"
        save.mkdir()
    else:
        save = mount("64k", ro=True) / "m.pth"
    r = run_here(TRAIN, *tiny_args(demo, tmp_path, "--epochs", 1, "--save_path", save))
    one_error_line(r, "--save_path", {"parent_is_file": "is a file", "is_folder": "is a folder",
                                      "read_only": "not writable"}[case])
    assert "epoch" not in r.stdout


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


# --- 6. one line everywhere ---------------------------------------------------------------------
def test_eval_with_loader_workers_is_one_line(trained, demo, tmp_path):
    df = pd.read_parquet(demo["val"])
    df.loc[2, "filename"] = "gone.jpg"
    df.to_parquet(tmp_path / "m.parquet")
    r = run_here("eval_resnet50.py", "--checkpoint", trained, "--meta", tmp_path / "m.parquet",
                   "--out_dir", tmp_path / "out", "--num_workers", 2)
    one_error_line(r, "gone.jpg: file not found")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("field,value", [("arch", "vgg16"), ("input_format", "yuv"), ("img_size", 7),
                                         ("img_size", "224"), ("class_names", ["Happy", "Sad"]),
                                         ("class_names", ["Happy"] * 8), ("class_names", "Neutral"),
                                         ("normalization", {"mean": [0, 0, 0], "std": [0, 0, 0]}),
                                         ("normalization", {"mean": [0.5]})])
def test_inconsistent_checkpoint_metadata_is_refused(trained, demo, tmp_path, field, value):
    ckpt = torch.load(trained, weights_only=True)
    ckpt[field] = value
    bad = tmp_path / "bad.pth"
    torch.save(ckpt, bad)
    r = run_here("eval_resnet50.py", "--checkpoint", bad, "--meta", demo["val"], "--out_dir", tmp_path)
    one_error_line(r, "bad.pth", f"field {field}")


@pytest.fixture(scope="module")
def last_state(demo, tmp_path_factory):
    """A run of 2 epochs stopped by Ctrl-C after the first, to resume."""
    out = tmp_path_factory.mktemp("resume")
    real, calls = TL.train_one_epoch, []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)
    with pytest.MonkeyPatch.context() as mp, pytest.raises(SystemExit) as e:
        mp.setattr(TL, "train_one_epoch", interrupted)
        T.main(tiny_args(demo, out, "--epochs", 2, "--steps_per_epoch", 1))
    assert e.value.code == 130
    return out


@pytest.mark.parametrize("case", ["no_scheduler", "no_train_state", "other_arch", "changed_flags", "best_not_last"])
def test_resume_must_be_the_same_run(demo, last_state, tmp_path, case):
    last = last_state / "m_last.pth"
    extra = []
    if case in ("no_scheduler", "no_train_state"):
        ckpt = torch.load(last, weights_only=True)
        del ckpt[{"no_scheduler": "scheduler", "no_train_state": "train_state"}[case]]
        last = tmp_path / "m_last.pth"
        torch.save(ckpt, last)
        extra = ["--save_path", tmp_path / "m.pth"]  # the copy's own run (another run's files: refused first)
    elif case == "other_arch":
        extra = ["--arch", "resnet34"]
    elif case == "changed_flags":
        extra = ["--lr", 0.5, "--epochs", 3]
    else:
        last = last_state / "m.pth"
    before = snapshot(last_state)
    r = run_here(TRAIN, *tiny_args(demo, last_state, "--epochs", 2, "--steps_per_epoch", 1, *extra,
                                     "--resume", last))
    needles = {"no_scheduler": ["field scheduler missing"], "no_train_state": ["field train_state missing"],
               "other_arch": ["field arch = resnet18", "--arch resnet34"],
               "changed_flags": ["--lr 0.0001 -> 0.5", "--epochs 2 -> 3"], "best_not_last": ["m.pth", "field"]}[case]
    one_error_line(r, *needles)
    assert snapshot(last_state) == before


def test_resume_may_change_speed_flags(demo, last_state, tmp_path):
    run = shutil.copytree(last_state, tmp_path / "run")
    r = run_here(TRAIN, *tiny_args(demo, run, "--epochs", 2, "--steps_per_epoch", 1,
                                     "--num_workers", 1, "--prefetch_factor", 2, "--device", "cpu",
                                     "--resume", run / "m_last.pth"))
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stdout and "epoch 2/2" in r.stdout


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


def test_nonfinite_pretrained_weights_are_refused(tmp_path):
    import torchvision
    state = torchvision.models.resnet18().state_dict()
    state["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "w.pth")
    from fer.model.checkpoint import CheckpointError
    with pytest.raises(CheckpointError, match="w.pth.*non-finite.*layer2.0.conv1.weight"):
        TI.build_model(TF.get_args(["--arch", "resnet18", "--vggface2_ckpt", str(tmp_path / "w.pth"),
                                    "--vggface2_layout", "torchvision"]), TL.Say(False))


def test_special_inputs_are_one_line(demo, trained, tmp_path):
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2.parquet")
    (tmp_path / "loop2.parquet").symlink_to(tmp_path / "loop1")
    r = run_here(TRAIN, *tiny_args(demo, tmp_path / "run", "--train_meta", tmp_path / "loop2.parquet"))
    one_error_line(r, "--train_meta", "loop2.parquet")
    import os
    os.mkfifo(tmp_path / "fifo.pth")
    r = run_here("export_onnx.py", "--checkpoint", tmp_path / "fifo.pth", "--out", tmp_path / "m.onnx")
    one_error_line(r, "fifo.pth", "not a regular file")


def test_grid_needs_a_picture_format(demo, tmp_path):
    one_error_line(run_here("FER_transform.py", "--meta", demo["train"], "--out", tmp_path / "grid"), "--out", ".png")


def test_ctrl_c_while_starting_is_one_line(demo, tmp_path):
    """SIGINT a second after start: during the imports or the first steps, either way one line."""
    import signal
    import sys

    from conftest import ROOT
    proc = subprocess.Popen([sys.executable, str(ROOT / TRAIN), *tiny_args(demo, tmp_path, "--epochs", 50)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)
    import time
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode in (130, -signal.SIGINT) and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and "interrupted" in err
