"""Issue 18, trust second pass: each class of data loss, silent wrong result and traceback, closed.

Every test fails on the code before the issue and passes after. They reuse the session fixtures
(`demo`, `trained`) and run scripts in-process (`run_here`); none trains a model.
"""
import errno
import os
import shutil
import signal
import zipfile

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_here, tiny_args
from test_trust import one_error_line, snapshot  # the same checks as the first trust pass

import fer.cli.train as TF
import fer.training.schedule as TS
import fer.training.start as TI
import fer.trust
from fer.data import demo as make_demo_data
from fer.data import formats as mp
from fer.evaluation.metrics import evaluate
from fer.trust import FERError, check_not_inputs, check_output, staged_outputs

TRAIN = "train_vggface2_resnet50.py"


def with_index(src, dst, change):
    """A copy of the index src with change(df) applied (the images folder stays recorded)."""
    df = pd.read_parquet(src)
    attrs = dict(df.attrs)
    df = change(df)
    df.attrs = attrs
    df.to_parquet(dst, index=False)
    return dst


# --- data loss ----------------------------------------------------------------------------------
def test_fer2013_and_ferplus_in_one_folder_keep_each_others_pixels(tmp_path):
    """FERPlus names stop following the row number at the first row without a name; indexing it into
    the folder of a FER2013 index must not change the pixels behind the FER2013 names."""
    data = make_demo_data.make_dataset(tmp_path / "fer", n=20, fmt="ferplus", progress=False)
    votes = pd.read_csv(data / "fer2013new.csv", keep_default_na=False, dtype=str)
    votes.loc[1, "Image name"] = ""  # as in the real file: a removed image, later names shift by one
    named = [i for i in range(len(votes)) if votes.loc[i, "Image name"]]
    votes.loc[named, "Image name"] = [f"fer{k:07d}.png" for k in range(len(named))]
    votes.to_csv(data / "fer2013new.csv", index=False)
    pixels = pd.read_csv(data / "fer2013.csv")["pixels"]
    out = tmp_path / "out"
    for fmt in ("fer2013", "ferplus"):
        r = run_here("metadata_parallel.py", "--format", fmt, "--root", data, "--out_dir", out, "--quiet")
        assert r.returncode == 0, r.stderr
        if fmt == "fer2013":
            fer = pd.read_parquet(out / "metadata_all.parquet")
    plus = pd.read_parquet(out / "metadata_all.parquet")
    for df, row_of in ((fer, lambda f: int(f[3:10])),  # FER2013: fer<row>_<hash>.png
                       (plus, lambda f: named[int(f[3:10])])):  # FERPlus: its Image name, which is not the row
        for f in df["filename"]:
            img = cv2.imread(str(out / "images" / f), cv2.IMREAD_GRAYSCALE)
            assert (img.reshape(-1) == np.array(pixels[row_of(f)].split(), np.uint8)).all(), f


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


def test_resume_never_continues_into_another_runs_files(demo, trained, tmp_path):
    other = tmp_path / "other.pth"  # a different finished run at --save_path
    shutil.copy(trained, other)
    (tmp_path / "other_history.csv").write_text("epoch,val_acc\n1,0.93\n")
    before = snapshot(tmp_path)
    last = trained.with_name("FER_resnet18_last.pth")
    args = tiny_args(demo, tmp_path, "--epochs", 1, "--resume", last, "--save_path", other)
    one_error_line(run_here(TRAIN, *args), "other.pth", "another run", "--overwrite")
    assert snapshot(tmp_path) == before
    r = run_here(TRAIN, *args, "--overwrite")  # the user said so
    assert r.returncode == 0 and "already complete" in r.stdout, r.stderr
    r = run_here(TRAIN, *tiny_args(demo, tmp_path, "--epochs", 1, "--resume", last, "--save_path", tmp_path / "new.pth"))
    assert r.returncode == 0, r.stderr  # an empty --save_path: nothing to replace


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
    r = run_here("make_demo_data.py", "--out", out, "--n", 8, "--size", 16)
    assert r.returncode == 0 and not killed.exists() and "left by an interrupted run" in r.stdout


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


# --- silent wrong results -----------------------------------------------------------------------
def test_one_scored_class_is_not_a_score(trained, demo, tmp_path):
    one = with_index(demo["val"], tmp_path / "one.parquet", lambda df: df[df["expression"] == 1])
    one_error_line(run_here("eval_resnet50.py", "--checkpoint", trained, "--meta", one, "--out_dir", tmp_path,
                            "--num_workers", 0), "one.parquet", "only one class", "Happy", "--all_classes")
    assert not (tmp_path / "metrics_resnet50.json").exists()
    r = run_here("eval_resnet50.py", "--checkpoint", trained, "--meta", one, "--out_dir", tmp_path,
                 "--num_workers", 0, "--all_classes")
    assert r.returncode == 0 and "WARNING: the evaluation set holds one class only (Happy)" in r.stderr, r.stderr
    assert "one class only" in pd.read_json(tmp_path / "metrics_resnet50.json", typ="series")["notes"][0]


def test_rows_are_never_counted_twice(trained, demo, tmp_path):
    one_error_line(run_here("eval_resnet50.py", "--checkpoint", trained, "--meta", demo["val"], demo["val"],
                            "--out_dir", tmp_path, "--num_workers", 0), "given twice")
    one_error_line(run_here("eval_resnet50.py", "--checkpoint", trained, "--meta", demo["all"], demo["val"],
                            "--out_dir", tmp_path, "--num_workers", 0), "listed more than once")
    for val in (demo["train"], demo["all"]):  # the same file, or overlapping rows
        r = run_here(TRAIN, *tiny_args(demo, tmp_path, "--epochs", 1, "--val_meta", val))
        one_error_line(r, "in both training (--train_meta) and validation (--val_meta)")
    assert not list(tmp_path.glob("m*"))


def test_images_listed_twice_are_resolved_by_the_rule_and_named(tmp_path):
    data = make_demo_data.make_dataset(tmp_path / "raf", n=10, size=16, fmt="rafdb", progress=False)
    labels = data / "EmoLabel" / "list_patition_label.txt"
    lines = labels.read_text().splitlines()
    name0, code0 = lines[0].split()
    other = str(int(code0) % 7 + 1)
    labels.write_text("\n".join(lines + [f"{name0} {other}", lines[1], lines[2]]) + "\n")
    r = run_here("metadata_parallel.py", "--root", data, "--out_dir", tmp_path / "o", "--quiet")
    assert r.returncode == 0, r.stderr
    every = pd.read_parquet(tmp_path / "o" / "metadata_all.parquet")["filename"]
    assert not every.duplicated().any() and name0.replace(".jpg", "_aligned.jpg") not in set(every)
    assert f"_aligned.jpg: listed 2 times with different labels ({code0}, {other}): dropped" in r.stdout
    assert "2 images listed more than once with the same label" in r.stdout
    # FERPlus: the same Image name on two rows with different votes
    fp = make_demo_data.make_dataset(tmp_path / "fp", n=10, fmt="ferplus", progress=False)
    votes = pd.read_csv(fp / "fer2013new.csv", keep_default_na=False, dtype=str)
    top = int(np.argmax(votes.loc[2, mp.FERPLUS_VOTES].astype(int)))
    votes.loc[3, "Image name"] = votes.loc[2, "Image name"]
    votes.loc[3, mp.FERPLUS_VOTES] = ["10" if k == (top + 1) % 8 else "0" for k in range(10)]  # another emotion
    votes.to_csv(fp / "fer2013new.csv", index=False)
    r = run_here("metadata_parallel.py", "--root", fp, "--out_dir", tmp_path / "p", "--quiet")
    assert r.returncode == 0 and f"{votes.loc[2, 'Image name']}: listed 2 times with different labels" in r.stdout


def nonfinite_checkpoints(trained, tmp_path):
    ckpt = torch.load(trained, weights_only=True)
    ckpt["model"]["backbone.bn1.running_var"][0] = -1.0  # finite, but sqrt of a negative variance
    torch.save(ckpt, tmp_path / "negvar.pth")
    ckpt = torch.load(trained, weights_only=True)
    ckpt["model"]["fc_cls.weight"].fill_(3e38)  # finite weights whose outputs overflow
    torch.save(ckpt, tmp_path / "overflow.pth")
    return tmp_path / "negvar.pth", tmp_path / "overflow.pth"


def test_a_model_that_outputs_nan_predicts_nothing(trained, demo, tmp_path):
    negvar, overflow = nonfinite_checkpoints(trained, tmp_path)
    image = demo["root"] / "images" / "0.jpg"
    runs = {"predict.py": [image, "--out", tmp_path / "p.csv"],
            "eval_resnet50.py": ["--meta", demo["val"], "--out_dir", tmp_path, "--num_workers", 0],
            "export_onnx.py": ["--out", tmp_path / "m.onnx"]}
    for script, args in runs.items():
        one_error_line(run_here(script, "--checkpoint", negvar, *args), "negvar.pth", "BatchNorm variance is negative",
                       "backbone.bn1.running_var")
        one_error_line(run_here(script, "--checkpoint", overflow, *args), "overflow.pth", "outputs are not finite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["negvar.pth", "overflow.pth"]


def test_no_pretrained_trains_every_layer_and_says_so(demo, tmp_path):
    def schedule(*extra):
        args = TF.get_args(tiny_args(demo, tmp_path, *extra))
        return [TS.trainable_blocks(e, args.freeze_epochs, args.unfreeze_all_at) for e in range(4)]
    assert schedule() == [None] * 4  # from random weights: everything trains
    assert schedule("--freeze_epochs", 1) == [("layer4",)] + [("layer3", "layer4")] * 3  # the user's schedule
    pretrained = [a for a in tiny_args(demo, tmp_path) if a != "--no_pretrained"]
    assert [TS.trainable_blocks(e, a.freeze_epochs, a.unfreeze_all_at) for a in [TF.get_args(pretrained)]
            for e in (0, 3)] == [("layer4",), ("layer3", "layer4")]  # pretrained: staged as before
    said = []
    TI.build_model(TF.get_args(tiny_args(demo, tmp_path)), said.append, ["Happy", "Sad"])
    TI.build_model(TF.get_args(tiny_args(demo, tmp_path, "--freeze_epochs", 1)), said.append, ["Happy", "Sad"])
    assert "every layer trains from the first epoch" in said[0] and "warning" in said[1]


def test_a_mapping_flag_never_means_two_things(tmp_path):
    data = make_demo_data.make_dataset(tmp_path / "f", n=16, size=16, fmt="folders", progress=False)
    r = run_here("metadata_parallel.py", "--root", data, "--out_dir", tmp_path / "o", "--class_map", "0=happy,0=sad")
    assert r.returncode == 2 and "folder '0' is given twice" in r.stderr
    shutil.copytree(data / "train" / "happy", data / "train" / "happiness")
    one_error_line(run_here("metadata_parallel.py", "--root", data, "--out_dir", tmp_path / "o"),
                   "folders happiness, happy are all class Happy", "--class_map")


# --- tracebacks and unclear errors --------------------------------------------------------------
def test_a_regression_dimension_without_values_is_absent(trained, demo, tmp_path):
    rng = np.random.default_rng(0)
    va = rng.uniform(-1, 1, (6, 2))
    for empty in (0, 1):
        true = va.copy()
        true[:, empty] = np.nan
        m = evaluate(rng.normal(size=(6, 3)), va / 2, np.arange(6) % 3, true, ["a", "b", "c"])
        absent, present = ("valence", "arousal")[empty], ("valence", "arousal")[1 - empty]
        assert absent not in m and m[present]["rmse"] > 0 and f"no {absent} labels" in " ".join(m["notes"])
    no_valence = with_index(demo["val"], tmp_path / "a.parquet", lambda df: df.drop(columns="valence"))
    r = run_here("eval_resnet50.py", "--checkpoint", trained, "--meta", no_valence, "--out_dir", tmp_path,
                 "--num_workers", 0)
    assert r.returncode == 0 and "arousal: RMSE" in r.stdout and "valence: RMSE" not in r.stdout, r.stderr


def test_rafdb_line_with_three_fields_is_one_line(tmp_path):
    data = make_demo_data.make_dataset(tmp_path / "raf", n=5, size=16, fmt="rafdb", progress=False)
    labels = data / "EmoLabel" / "list_patition_label.txt"
    labels.write_text(labels.read_text().replace("\n", " extra\n", 1))
    one_error_line(run_here("metadata_parallel.py", "--root", data, "--out_dir", tmp_path / "o"),
                   "list_patition_label.txt: line 1", "3 fields")


def test_smooth_on_a_video_without_faces(trained, tmp_path):
    writer = cv2.VideoWriter(str(tmp_path / "wall.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 64))
    for _ in range(4):
        writer.write(np.full((64, 64, 3), 128, np.uint8))
    writer.release()
    r = run_here("predict.py", "--checkpoint", trained, tmp_path / "wall.mp4", "--detect_faces", "--smooth", 0.3,
                 "--out", tmp_path / "p.csv")
    assert r.returncode == 0 and "faces in 0 of 4" in r.stdout, r.stderr
    assert "smooth_expression" in pd.read_csv(tmp_path / "p.csv").columns


def test_checkpoints_that_are_not_weights_only_or_zip_bombs(trained, demo, tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this ran",))
    ckpt = torch.load(trained, weights_only=True)
    ckpt["extra"] = Evil()
    torch.save(ckpt, tmp_path / "evil.pth")
    bomb = tmp_path / "bomb.pth"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("bomb/data/0", "w", force_zip64=True) as fh:
            for _ in range(64):
                fh.write(bytes(1 << 20))  # 64 MiB of zeros in a file of about 64 KiB
    for script, args in (("eval_resnet50.py", ["--meta", demo["val"], "--out_dir", tmp_path, "--num_workers", 0]),
                         ("predict.py", [demo["root"] / "images" / "0.jpg", "--out", tmp_path / "p.csv"])):
        r = run_here(script, "--checkpoint", tmp_path / "evil.pth", *args)
        one_error_line(r, "evil.pth: refused, not a weights-only checkpoint", "(print)")
        assert "this ran" not in r.stdout
        one_error_line(run_here(script, "--checkpoint", bomb, *args), "bomb.pth", "declares 64 MiB", "not loaded")


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

    from conftest import ROOT
    r = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / script), *flag], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and f"argument {flag[0]}" in r.stderr
    imported = [ln.rsplit("|", 1)[-1].strip() for ln in r.stderr.splitlines() if ln.startswith("import time:")]
    assert imported and not [m for m in imported if m.split(".")[0] in ("torch", "cv2", "albumentations", "pandas")]


def test_training_checks_its_paths_before_the_heavy_imports(tmp_path):
    """A missing index or an earlier run at --save_path is said in the first second, not after torch loads."""
    import subprocess
    import sys

    from conftest import ROOT
    r = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "train_vggface2_resnet50.py"), "--train_meta",
                        str(tmp_path / "missing.parquet")], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    errors = [ln for ln in r.stderr.splitlines() if not ln.startswith("import time:")]
    assert r.returncode == 1 and errors == [f"error: --train_meta {tmp_path / 'missing.parquet'}: file not found"]
    imported = [ln.rsplit("|", 1)[-1].strip() for ln in r.stderr.splitlines() if ln.startswith("import time:")]
    assert imported and not [m for m in imported if m.split(".")[0] in ("torch", "cv2", "albumentations", "pandas")]


def test_hostile_findings_are_one_clear_line(trained, demo, tmp_path):
    """Found trying the surface again: files that are no checkpoint get a reason that is true, and a
    --class_map entry without a folder is a flag error."""
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "notes.pth").write_text("epoch,acc\n1,0.5\n")  # e.g. a CSV that predict once wrote over a checkpoint
    with zipfile.ZipFile(tmp_path / "archive.pth", "w") as z:
        z.writestr("a.txt", "hello")
    for name, needle in (("empty.pth", "empty file"), ("notes.pth", "neither a torch checkpoint nor a pickle"),
                         ("archive.pth", "not a checkpoint torch.save wrote")):
        one_error_line(run_here("eval_resnet50.py", "--checkpoint", tmp_path / name, "--meta", demo["val"],
                                "--out_dir", tmp_path, "--num_workers", 0), name, needle)
    r = run_here("metadata_parallel.py", "--root", tmp_path, "--out_dir", tmp_path / "o", "--class_map", "=happy")
    assert r.returncode == 2 and "'=happy' is not FOLDER=CLASS" in r.stderr
