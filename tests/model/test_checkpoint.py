"""fer/model/checkpoint.py: weight files in every format, coverage, code in weight files refused, the
checkpoint's metadata checked, non-finite and negative-variance weights, zip bombs.

The hostile cases (from the trust passes) each failed on the code before their fix: they check the exit
code, the one line that names the file or flag (no traceback), and that earlier outputs are unchanged.
"""
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch
import torchvision
from builders import ROOT, one_error_line, run_here

import fer.cli.train as TF
import fer.model.checkpoint
import fer.training.loop as TL
import fer.training.start as TI
from fer.model.checkpoint import CheckpointError, load_backbone_weights, read_weights
from fer.model.net import FERNet


# --- weight files -------------------------------------------------------------------------------
def resnet50_state(prefix=""):
    torch.manual_seed(1)
    return {prefix + k: v for k, v in torchvision.models.resnet50().state_dict().items()}


def n_countable():
    return sum(1 for k in torchvision.models.resnet50().state_dict() if not k.endswith("num_batches_tracked")
               and not k.startswith("fc."))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["plain", "state_dict", "model", "module", "backbone", "numpy_pickle"])
def test_vggface2_formats_load_fully(tmp_path, fmt, capsys):
    state = resnet50_state()
    path = tmp_path / "w.pth"
    if fmt == "numpy_pickle":  # like resnet50_ft_weight.pkl: numpy arrays, 8631-way fc
        arrays = {k: v.numpy() for k, v in state.items() if not k.endswith("num_batches_tracked")}
        arrays["fc.weight"] = np.zeros((8631, 2048), np.float32)
        path = tmp_path / "resnet50_ft_weight.pkl"
        path.write_bytes(pickle.dumps(arrays, protocol=2))
    else:
        obj = {"plain": state, "state_dict": {"state_dict": state}, "model": {"model": state, "epoch": 3},
               "module": {f"module.{k}": v for k, v in state.items()},
               "backbone": {f"backbone.{k}": v for k, v in state.items()}}[fmt]
        torch.save(obj, path)
    model = TI.build_model(TF.get_args(["--vggface2_ckpt", str(path)]), TL.Say(True))
    out = capsys.readouterr().out
    n = n_countable()
    assert f"loaded {n}/{n} backbone tensors (100.0%)" in out
    assert torch.equal(model.backbone.layer3[2].conv2.weight, state["layer3.2.conv2.weight"])
    assert model.input_format == "caffe_bgr" and "VGGFace2 mean" in out


@pytest.mark.slow
def test_partial_checkpoint_reports_coverage(tmp_path, capsys, monkeypatch):
    state = {k: v for k, v in resnet50_state().items() if not k.startswith("layer4")}
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)  # wrong shape: skipped, not loaded
    torch.save(state, tmp_path / "w.pth")
    monkeypatch.setattr(fer.model.checkpoint, "imagenet_state_dict", lambda arch: (_ for _ in ()).throw(CheckpointError("x")))
    monkeypatch.setattr(TI, "imagenet_state_dict", fer.model.checkpoint.imagenet_state_dict)
    TI.build_model(TF.get_args(["--vggface2_ckpt", str(tmp_path / "w.pth")]), TL.Say(True))
    out = capsys.readouterr().out
    n = n_countable()
    n_layer4 = sum(1 for k in resnet50_state() if k.startswith("layer4") and not k.endswith("num_batches_tracked"))
    loaded = n - n_layer4 - 1
    assert f"loaded {loaded}/{n} backbone tensors ({100 * loaded / n:.1f}%), 1 skipped for shape mismatch" in out
    assert f"ImageNet weights unavailable; {n_layer4 + 1} backbone tensors keep random init" in out


def test_missing_weights_messages(tmp_path, monkeypatch):
    with pytest.raises(TF.TrainError, match="file not found"):
        TI.build_model(TF.get_args(["--vggface2_ckpt", str(tmp_path / "nope.pth")]), TL.Say(False))

    def offline(*a, **k):
        raise OSError("no network")
    monkeypatch.setattr(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.__class__, "get_state_dict", offline)
    monkeypatch.chdir(tmp_path)  # no weight/resnet50_vggface2.pth here: ImageNet fallback
    with pytest.raises(CheckpointError, match="--no_pretrained.*weight/"):
        TI.build_model(TF.get_args([]), TL.Say(False))


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("kind", ["pickle", "torch"])
def test_code_in_weight_files_is_refused(tmp_path, kind):
    path = tmp_path / "evil.pth"
    if kind == "pickle":
        path.write_bytes(pickle.dumps({"conv1.weight": _Evil()}, protocol=2))
    else:
        torch.save({"conv1.weight": _Evil()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        read_weights(path)


def test_coverage_ignores_num_batches_tracked():
    model = FERNet("resnet18")
    state = {k: v for k, v in torchvision.models.resnet18().state_dict().items()}
    missing = load_backbone_weights(model.backbone, state, verbose=False)
    assert missing == []


# --- pretrained weights -------------------------------------------------------------------------
@pytest.mark.slow
def test_vit_position_embeddings_follow_img_size(tmp_path, capsys):
    import torchvision
    state = torchvision.models.vit_b_16().state_dict()  # 224 px: 14 x 14 patches + the class token
    torch.save(state, tmp_path / "vit.pth")
    model = TI.build_model(TF.get_args(["--arch", "vit_b_16", "--img_size", "48", "--weights", str(tmp_path / "vit.pth")]),
                           TL.Say(True))
    assert "(100.0%)" in capsys.readouterr().out
    assert model.backbone.encoder.pos_embedding.shape == (1, 3 * 3 + 1, 768)
    assert torch.equal(model.backbone.encoder.pos_embedding[0, 0], state["encoder.pos_embedding"][0, 0])  # class token
    model.eval()(torch.randn(1, 3, 48, 48))


# --- untrained heads -------------------------------------------------------------------------------
def test_old_checkpoints_count_as_both_heads_trained(trained):
    from fer.model.checkpoint import heads_trained
    assert heads_trained({}) == {"expression": True, "valence_arousal": True}
    assert heads_trained({"heads_trained": {"valence_arousal": False}})["valence_arousal"] is False


# --- 3. no non-finite or out-of-range value reaches a model -------------------------------------
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


# --- 6. one line everywhere ---------------------------------------------------------------------
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


# --- found by trying the scripts as a hostile user ----------------------------------------------
def test_nonfinite_pretrained_weights_are_refused(tmp_path):
    import torchvision
    state = torchvision.models.resnet18().state_dict()
    state["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "w.pth")
    from fer.model.checkpoint import CheckpointError
    with pytest.raises(CheckpointError, match="w.pth.*non-finite.*layer2.0.conv1.weight"):
        TI.build_model(TF.get_args(["--arch", "resnet18", "--vggface2_ckpt", str(tmp_path / "w.pth"),
                                    "--vggface2_layout", "torchvision"]), TL.Say(False))


# --- tracebacks and unclear errors --------------------------------------------------------------
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


def test_init_from_is_fingerprinted_by_its_weights(trained, tmp_path):
    """Trust rule 5 (issue 25): --init_from was recorded as a path only; the run record now holds the starting
    weights' fingerprint, the same for a copy elsewhere and different for other weights."""
    import shutil

    from fer.constants import CLASS_NAMES
    from fer.model.checkpoint import model_initialised_from, read_checkpoint, weights_fingerprint

    copy = tmp_path / "elsewhere" / "start.pth"
    copy.parent.mkdir()
    shutil.copy(trained, copy)
    a = model_initialised_from(trained, "resnet18", CLASS_NAMES, say=lambda *_: None)
    b = model_initialised_from(copy, "resnet18", CLASS_NAMES, say=lambda *_: None)
    assert a.init_fingerprint == b.init_fingerprint == weights_fingerprint(read_checkpoint(trained)[1])
    other = FERNet("resnet18", CLASS_NAMES, img_size=64)
    assert weights_fingerprint(other.state_dict()) != a.init_fingerprint


@pytest.mark.slow  # a fresh interpreter that imports torch
def test_a_file_size_limit_during_torch_save_is_one_line_naming_the_file(tmp_path):
    """Trust rule 6 (issue 25): `ulimit -f` inside torch.save was a traceback that named no file; the old file
    is kept."""
    import subprocess
    import sys

    target = tmp_path / "m.pth"
    target.write_bytes(b"the earlier checkpoint")
    code = ("import resource, torch; resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))\n"
            "from fer.model.checkpoint import save_checkpoint\n"
            "from fer.trust import FERError\n"
            f"try:\n    save_checkpoint({{'model': {{'w': torch.zeros(1_000_000)}}}}, {str(target)!r})\n"
            "except FERError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=ROOT)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    assert r.stdout.startswith(f"{target}: not written") and "ulimit -f" in r.stdout and len(r.stdout.splitlines()) == 1
    assert target.read_bytes() == b"the earlier checkpoint" and [p.name for p in tmp_path.iterdir()] == ["m.pth"]
