"""Model, weight loading, freezing policy and the training script."""
import csv
import json
import os
import pickle
import sys

import numpy as np
import pytest
import torch
import torchvision
from conftest import ROOT, run_here, run_script, tiny_args

import fer.cli.train as TF
import fer.model.checkpoint
import fer.training.distributed as TD
import fer.training.loop as TL
import fer.training.schedule as TS
import fer.training.start as TI
import train_vggface2_resnet50 as T
from fer.constants import IMAGENET_MEAN, IMAGENET_STD
from fer.model.checkpoint import CheckpointError, load_backbone_weights, read_weights
from fer.model.net import VGGFACE2_MEAN_BGR, FERNet


@pytest.mark.parametrize("arch,features", [("resnet18", 512), ("resnet50", 2048)])
def test_model_outputs(arch, features):
    model = FERNet(arch).eval()
    logits, va = model(torch.randn(3, 3, 64, 64))
    assert logits.shape == (3, 8) and va.shape == (3, 2)
    assert model.fc_cls.in_features == features and isinstance(model.backbone.fc, torch.nn.Identity)
    assert model.dropout.p == 0.7
    # Names as in the original scripts, so their state dicts load.
    assert {k.split(".")[0] for k in model.state_dict()} == {"backbone", "fc_cls", "fc_reg"}


def test_caffe_layout_and_input_conversion():
    model = FERNet("resnet50", input_format="caffe_bgr").eval()
    assert model.backbone.maxpool.ceil_mode and model.backbone.maxpool.padding == 0
    assert model.backbone.layer2[0].conv1.stride == (2, 2) and model.backbone.layer2[0].conv2.stride == (1, 1)
    seen = {}
    model.backbone.register_forward_pre_hook(lambda m, inp: seen.setdefault("x", inp[0]))
    rgb = torch.rand(1, 3, 32, 32)
    normalised = (rgb - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    model(normalised)
    expected = rgb.flip(1) * 255 - torch.tensor(VGGFACE2_MEAN_BGR).view(1, 3, 1, 1)
    assert torch.allclose(seen["x"], expected, atol=1e-3)
    assert FERNet("resnet50").backbone.layer2[0].conv2.stride == (2, 2)  # torchvision layout otherwise


def test_freezing_stages():
    assert TS.trainable_blocks(0, 3, None) == ("layer4",)
    assert TS.trainable_blocks(2, 3, None) == ("layer4",)
    assert TS.trainable_blocks(3, 3, None) == ("layer3", "layer4")
    assert TS.trainable_blocks(3, 3, 5) == ("layer3", "layer4")
    assert TS.trainable_blocks(4, 3, 5) is None  # epoch index 4 is 1-based epoch 5
    assert TS.trainable_blocks(0, 3, 1) is None


@pytest.mark.parametrize("blocks", [("layer4",), ("layer3", "layer4")])
def test_frozen_layers_do_not_move(blocks):
    torch.manual_seed(0)
    model = FERNet("resnet18")
    frozen = TS.apply_freezing(model, blocks)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    TS.train_mode(model, frozen)
    for _ in range(2):
        logits, va = model(torch.randn(4, 3, 32, 32))
        opt.zero_grad()
        (logits.sum() + va.sum()).backward()
        opt.step()
    after = model.state_dict()
    for k in before:
        block = k.split(".")[1] if k.startswith("backbone.") else "head"
        moved = not torch.equal(before[k], after[k])
        if block in blocks or block == "head":
            if not k.endswith("num_batches_tracked"):
                assert moved, f"{k} should train"
        else:
            assert not moved, f"{k} is frozen but changed"  # weights and BN running stats alike
    assert any(not torch.equal(before[k], after[k]) for k in before if "running_mean" in k)  # trainable BN did move


def test_class_weights():
    w = TL.class_weights(np.array([0, 0, 0, 1]))
    assert torch.allclose(w[:2], torch.tensor([4 / (8 * 3), 4 / 8]))
    assert (w[2:] == 0).all()


def test_sampler_shards_and_balances():
    shards = [list(TD.TrainSampler(10, rank=r, world=3, seed=1)) for r in range(3)]
    assert all(len(s) == 4 for s in shards)
    assert set(i for s in shards for i, _ in s) == set(range(10))
    assert list(TD.TrainSampler(10, seed=1)) == list(TD.TrainSampler(10, seed=1))
    labels = np.array([0] * 90 + [1] * 10)
    counts = np.bincount(labels)
    sampler = TD.TrainSampler(100, 1.0 / counts[labels], seed=0)
    drawn = []
    for epoch in range(20):
        sampler.set_epoch(epoch)
        drawn += [labels[i] for i, _ in sampler]
    assert 0.4 < np.mean(drawn) < 0.6  # 10% of the data, about half of the draws


# --- weight files -------------------------------------------------------------------------------
def resnet50_state(prefix=""):
    torch.manual_seed(1)
    return {prefix + k: v for k, v in torchvision.models.resnet50().state_dict().items()}


def n_countable():
    return sum(1 for k in torchvision.models.resnet50().state_dict() if not k.endswith("num_batches_tracked")
               and not k.startswith("fc."))


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


# --- the training script ------------------------------------------------------------------------
def test_short_run_outputs(demo, tmp_path):
    r = run_here("train_vggface2_resnet50.py", *tiny_args(demo, tmp_path, "--epochs", 2, "--freeze_epochs", 1))
    assert r.returncode == 0, r.stderr
    for name in ("m.pth", "m_last.pth", "m_history.csv", "m_curves.png"):
        assert (tmp_path / name).is_file(), name
    rows = list(csv.DictReader(open(tmp_path / "m_history.csv")))
    assert [row["trainable"] for row in rows] == ["layer4", "layer3+layer4"]
    assert "epoch 2/2 [layer3+layer4]" in r.stdout and "img/s, data wait" in r.stdout
    ckpt = torch.load(tmp_path / "m.pth", weights_only=True)
    assert {"model", "arch", "class_names", "img_size", "normalization", "epoch", "metrics", "args",
            "input_format"} <= set(ckpt)
    assert ckpt["img_size"] == 32 and ckpt["arch"] == "resnet18" and len(ckpt["class_names"]) == 8
    last = torch.load(tmp_path / "m_last.pth", weights_only=True)
    assert {"optimizer", "scheduler", "scaler", "train_state"} <= set(last) and last["train_state"]["epoch"] == 2


def test_early_stopping(demo, tmp_path):
    r = run_here("train_vggface2_resnet50.py", *tiny_args(demo, tmp_path, "--epochs", 6, "--patience", 2,
                                                            "--lr", 0, "--weight_decay", 0, "--freeze_epochs", 3))
    assert r.returncode == 0, r.stderr
    assert "early stopping" in r.stdout and "epoch 3/6" in r.stdout and "epoch 4/6" not in r.stdout


def test_resume_equals_uninterrupted(demo, tmp_path, monkeypatch):
    common = ["--epochs", 3, "--freeze_epochs", 1, "--lr", 1e-3]
    with pytest.raises(SystemExit) as e:
        T.main(tiny_args(demo, tmp_path / "full", *common))
    assert e.value.code == 0

    real, calls = TL.train_one_epoch, []

    def interrupted(*a, **k):  # Ctrl-C during the third epoch
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(TL, "train_one_epoch", interrupted)
    with pytest.raises(SystemExit) as e:
        T.main(tiny_args(demo, tmp_path / "cut", *common, "--tensorboard"))
    assert e.value.code == 130
    first = json.loads((tmp_path / "cut" / "m_run.json").read_text())
    monkeypatch.setattr(TL, "train_one_epoch", real)
    with pytest.raises(SystemExit) as e:
        T.main(tiny_args(demo, tmp_path / "cut", *common, "--tensorboard", "--resume", tmp_path / "cut" / "m_last.pth"))
    assert e.value.code == 0
    # One record for the whole run: its start, both sessions, the wall time of both.
    record = json.loads((tmp_path / "cut" / "m_run.json").read_text())
    assert record["started"] == first["started"] and record["epochs"] == 3 and first["epochs"] == 2
    assert len(record["sessions"]) == 2 and "--resume" in record["sessions"][1]["command"]
    assert "--resume" not in record["command"] and record["wall_time_s"] > first["wall_time_s"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    steps = [e.step for e in EventAccumulator(str(tmp_path / "cut" / "m_tensorboard")).Reload().Scalars("step/train_loss")]
    assert steps == list(range(18))  # 3 epochs x 6 steps, each once across the two sessions
    full = torch.load(tmp_path / "full" / "m_last.pth", weights_only=True)
    cut = torch.load(tmp_path / "cut" / "m_last.pth", weights_only=True)
    assert cut["train_state"]["epoch"] == 3
    for k, v in full["model"].items():
        assert torch.equal(v, cut["model"][k]), k
    assert full["train_state"]["history"][-1]["val_acc"] == cut["train_state"]["history"][-1]["val_acc"]


def test_bad_image_ends_with_one_line(demo, tmp_path):
    import pandas as pd
    df = pd.read_parquet(demo["train"])
    df.loc[3, "filename"] = "missing.jpg"
    df.to_parquet(tmp_path / "train.parquet")
    args = tiny_args(demo, tmp_path, "--epochs", 1)
    args[1] = str(tmp_path / "train.parquet")
    args[args.index("--num_workers") + 1] = "1"  # the error crosses a worker process
    r = run_script("train_vggface2_resnet50.py", *args)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: ") and "missing.jpg: file not found" in r.stderr


def test_empty_split_is_an_error(demo, tmp_path):
    import pandas as pd
    df = pd.read_parquet(demo["train"])
    df.loc[df.index[:4], "expression"] = 1
    df.loc[df.index[4:], "expression"] = 9  # AffectNet's "Uncertain": indexed, never trained
    df.to_parquet(tmp_path / "train.parquet")
    args = tiny_args(demo, tmp_path, "--epochs", 1)
    args[1] = str(tmp_path / "train.parquet")
    r = run_here("train_vggface2_resnet50.py", *args)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "1 expression class(es) with labels 0-7; at least 2 are needed" in r.stderr


def test_torchrun_two_processes(demo, tmp_path):
    import subprocess
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531",
           str(ROOT / "train_vggface2_resnet50.py"), *tiny_args(demo, tmp_path, "--epochs", 1, "--balanced_sampling")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("epoch 1/1") == 1  # only rank 0 prints
    assert "x2" in r.stdout and (tmp_path / "m.pth").is_file()
    # Validation covers each of the 16 images exactly once, whatever the sharding.
    ckpt = torch.load(tmp_path / "m.pth", weights_only=True)
    acc = ckpt["metrics"]["val_acc"]
    assert abs(acc * 16 - round(acc * 16)) < 1e-9
