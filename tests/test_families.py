"""Every backbone family through every script, and staged fine-tuning per family.

One short training run per family (two steps, the second after the stage change; convnext_tiny with
every knob on), resumed exactly, evaluated, predicted and exported in one test per family.
"""
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_here, tiny_args

import fer.training.loop as TL
import fer.training.schedule as TS
import train_vggface2_resnet50 as T
from fer.model.backbones import ARCHS, FAMILIES, RESNETS
from fer.model.net import FERNet, _under

NEW = [a for a in ARCHS if a not in RESNETS]  # the ResNets' path is tested in test_train.py
# Seconds per step even at 32 px and ONNX files of hundreds of MB: in test_families_large.py, so that
# `make test` (pytest-xdist, --dist loadfile) runs them beside this file, not after it.
LARGE = ("vit_b_16", "swin_t", "convnext_small", "efficientnet_v2_s")
KNOBS = {"convnext_tiny": ["--ema", 0.9, "--mixup", 0.4, "--cutmix", 1.0, "--warmup_epochs", 1, "--layer_decay", 0.8]}


def main_ok(argv):
    with pytest.raises(SystemExit) as e:
        T.main([str(a) for a in argv])
    assert e.value.code == 0


def train_and_resume(arch, demo, out):
    """Two one-step epochs (the second after the stage change) in out/full, and the same run in out/cut
    resumed from a copy of the training state after the first epoch."""
    real = TL.save_epoch

    def keep_first(paths, *a, **k):
        real(paths, *a, **k)
        if not (out / "cut").exists():
            (out / "cut").mkdir()
            shutil.copy(paths["last"], out / "cut" / "m_last.pth")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TL, "save_epoch", keep_first)
        main_ok(tiny_args(demo, out / "full", *family_flags(arch)))
    main_ok(tiny_args(demo, out / "cut", *family_flags(arch), "--resume", out / "cut" / "m_last.pth"))


def family_flags(arch):
    return ["--arch", arch, "--epochs", 2, "--steps_per_epoch", 1, "--freeze_epochs", 1, "--batch_size", 4,
            "--lr", 1e-3, *KNOBS.get(arch, [])]


@pytest.mark.parametrize("arch", [a for a in NEW if a not in LARGE])
def test_family_end_to_end(demo, arch, tmp_path):
    check_end_to_end(arch, demo, tmp_path)


def check_end_to_end(arch, demo, tmp_path):
    """One test per family, so that parallel workers never train a family twice: train two steps, save,
    resume exactly, evaluate, predict, export to ONNX with the parity check."""
    import onnxruntime as ort

    train_and_resume(arch, demo, tmp_path)
    full = torch.load(tmp_path / "full" / "m_last.pth", weights_only=True)
    cut = torch.load(tmp_path / "cut" / "m_last.pth", weights_only=True)
    assert full["arch"] == arch and full["train_state"]["epoch"] == cut["train_state"]["epoch"] == 2
    stages = FAMILIES[arch].stages
    assert [h["trainable"] for h in full["train_state"]["history"]] == [TS.stage_label(stages[1]),
                                                                         TS.stage_label(stages[0] + stages[1])]
    for k, v in full["model"].items():
        assert torch.equal(v, cut["model"][k]), f"resumed weights differ: {k}"
    assert full["train_state"]["history"][-1]["val_acc"] == cut["train_state"]["history"][-1]["val_acc"]
    if "--ema" in KNOBS.get(arch, []):
        assert set(full["ema"]) == set(cut["ema"])
        for k, v in full["ema"].items():
            assert torch.equal(v, cut["ema"][k]), f"resumed EMA differs: {k}"
        assert {"ema_val_acc", "val_acc"} <= set(full["train_state"]["history"][-1])
        args = tiny_args(demo, tmp_path / "cut", *family_flags(arch), "--resume", tmp_path / "cut" / "m_last.pth")
        args[args.index("--ema") + 1] = "0.5"
        r = run_here("train_vggface2_resnet50.py", *args)
        assert r.returncode == 1 and "resuming would change the run (--ema 0.9 -> 0.5)" in r.stderr
    del full, cut

    ckpt = tmp_path / "full" / "m.pth"
    r = run_here("eval_resnet50.py", "--checkpoint", ckpt, "--meta", demo["val"], "--out_dir", tmp_path,
                 "--save_predictions", tmp_path / "eval.csv", "--num_workers", 0)
    assert r.returncode == 0, r.stderr
    ev = pd.read_csv(tmp_path / "eval.csv").set_index("filename")
    names = list(ev.index[:3])
    r = run_here("predict.py", "--checkpoint", ckpt, *[demo["root"] / "images" / n for n in names],
                 "--out", tmp_path / "pred.csv", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    pred = pd.read_csv(tmp_path / "pred.csv")
    pred.index = [f.split("/")[-1] for f in pred["filename"]]
    probs = [c for c in pred.columns if c.startswith("prob_")]
    assert probs and len(pred) == 3
    np.testing.assert_allclose(pred.loc[names, probs].to_numpy(), ev.loc[names, probs].to_numpy(), atol=1e-3)

    onnx = tmp_path / "m.onnx"
    r = run_here("export_onnx.py", "--checkpoint", ckpt, "--out", onnx)
    assert r.returncode == 0, r.stderr
    assert "max |diff|" in r.stdout and f"{arch}, 32px" in r.stdout  # parity checked by the script itself
    meta = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    assert meta["arch"] == arch
    for f in [onnx, *tmp_path.rglob("*.pth")]:  # hundreds of MB for the large families
        f.unlink()


# --- staged fine-tuning -------------------------------------------------------------------------
@pytest.mark.parametrize("arch", NEW)
def test_frozen_stages_do_not_move(arch):
    """Last stage, then the last two: everything else bit-equal after a step, norm statistics included."""
    torch.manual_seed(0)
    model = FERNet(arch, img_size=32)
    stages = FAMILIES[arch].stages
    assert set(stages[0] + stages[1]) <= {n for n, _ in model.backbone.named_modules()}
    for epoch in (0, 1):
        blocks = TS.trainable_blocks(epoch, 1, None, stages)
        frozen = TS.apply_freezing(model, blocks)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        TS.train_mode(model, frozen)
        TL.train_step(model, torch.randn(4, 3, 32, 32), torch.randint(0, 8, (4,)), torch.rand(4, 2),
                      opt, torch.amp.GradScaler("cuda", enabled=False), TL.make_criterion(None, "cpu"))
        after = model.state_dict()
        moved = {k for k in before if not torch.equal(before[k], after[k])}
        inside = {k for k in before if k.startswith("backbone.") and _under(k[9:], blocks)}
        frozen_keys = {k for k in before if k.startswith("backbone.") and k not in inside}
        assert frozen_keys and not moved & frozen_keys, sorted(moved & frozen_keys)[:3]
        assert {"fc_cls.weight", "fc_reg.weight"} <= moved and moved & inside  # heads and the stage train
        assert all(p.requires_grad == (k in inside) for k, p in model.backbone.named_parameters(prefix="backbone"))
