"""Every backbone family through every script, staged fine-tuning per family, and the training knobs
(EMA, MixUp/CutMix, warm-up, layer decay, CPU bfloat16).

One short training run per family (two steps, the second after the stage change; convnext_tiny with
every knob on) is shared by that family's tests: resumed exactly, evaluated, predicted, exported.
"""
import copy
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import FER_model
import train_vggface2_resnet50 as T
from conftest import run_here, tiny_args
from FER_model import ARCHS, FAMILIES, RESNETS, FERNet
from FER_transform import BatchMix

NEW = [a for a in ARCHS if a not in RESNETS]  # the ResNets' path is tested in test_train.py
KNOBS = {"convnext_tiny": ["--ema", 0.9, "--mixup", 0.4, "--cutmix", 1.0, "--warmup_epochs", 1, "--layer_decay", 0.8]}


def main_ok(argv):
    with pytest.raises(SystemExit) as e:
        T.main([str(a) for a in argv])
    assert e.value.code == 0


@pytest.fixture(scope="session")
def family_run(demo, tmp_path_factory):
    """family_run(arch) -> folder with full/ (two one-step epochs) and cut/ (the same run resumed from
    the state after its first epoch); trained once per session and family."""
    runs = {}

    def get(arch):
        if arch in runs:
            return runs[arch]
        out = tmp_path_factory.mktemp(arch)
        common = ["--arch", arch, "--epochs", 2, "--steps_per_epoch", 1, "--freeze_epochs", 1, "--batch_size", 4,
                  "--lr", 1e-3, *KNOBS.get(arch, [])]
        real = T.save_epoch

        def keep_first(paths, *a, **k):  # a copy of the training state after epoch 1, to resume from
            real(paths, *a, **k)
            if not (out / "cut").exists():
                (out / "cut").mkdir()
                shutil.copy(paths["last"], out / "cut" / "m_last.pth")
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(T, "save_epoch", keep_first)
            main_ok(tiny_args(demo, out / "full", *common))
        main_ok(tiny_args(demo, out / "cut", *common, "--resume", out / "cut" / "m_last.pth"))
        runs[arch] = out
        return out
    return get


@pytest.mark.parametrize("arch", NEW)
def test_family_trains_saves_and_resumes_exactly(family_run, arch):
    out = family_run(arch)
    full = torch.load(out / "full" / "m_last.pth", weights_only=True)
    cut = torch.load(out / "cut" / "m_last.pth", weights_only=True)
    assert full["arch"] == arch and full["train_state"]["epoch"] == cut["train_state"]["epoch"] == 2
    stages = FAMILIES[arch].stages
    assert [h["trainable"] for h in full["train_state"]["history"]] == [T.stage_label(stages[1]),
                                                                         T.stage_label(stages[0] + stages[1])]
    for k, v in full["model"].items():
        assert torch.equal(v, cut["model"][k]), k
    assert full["train_state"]["history"][-1]["val_acc"] == cut["train_state"]["history"][-1]["val_acc"]
    if "--ema" in KNOBS.get(arch, []):
        assert set(full["ema"]) == set(cut["ema"])
        for k, v in full["ema"].items():
            assert torch.equal(v, cut["ema"][k]), k
        assert {"ema_val_acc", "val_acc"} <= set(full["train_state"]["history"][-1])
    model, meta = FER_model.model_from_checkpoint(out / "full" / "m.pth")
    assert meta["arch"] == arch and model.fc_cls.out_features == len(meta["class_names"])


@pytest.mark.parametrize("arch", NEW)
def test_family_evaluates_and_predicts(family_run, demo, arch, tmp_path):
    ckpt = family_run(arch) / "full" / "m.pth"
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


@pytest.mark.parametrize("arch", NEW)
def test_family_exports_with_onnx_parity(family_run, arch, tmp_path):
    import onnxruntime as ort

    out = tmp_path / "m.onnx"
    r = run_here("export_onnx.py", "--checkpoint", family_run(arch) / "full" / "m.pth", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "max |diff|" in r.stdout and f"{arch}, 32px" in r.stdout  # parity checked by the script itself
    meta = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    assert meta["arch"] == arch
    out.unlink()  # hundreds of MB for the large families


# --- staged fine-tuning -------------------------------------------------------------------------
@pytest.mark.parametrize("arch", NEW)
def test_frozen_stages_do_not_move(arch):
    """Last stage, then the last two: everything else bit-equal after a step, norm statistics included."""
    torch.manual_seed(0)
    model = FERNet(arch, img_size=32)
    stages = FAMILIES[arch].stages
    assert set(stages[0] + stages[1]) <= {n for n, _ in model.backbone.named_modules()}
    for epoch in (0, 1):
        blocks = T.trainable_blocks(epoch, 1, None, stages)
        frozen = T.apply_freezing(model, blocks)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        T.train_mode(model, frozen)
        T.train_step(model, torch.randn(4, 3, 32, 32), torch.randint(0, 8, (4,)), torch.rand(4, 2),
                     opt, torch.amp.GradScaler("cuda", enabled=False), T.make_criterion(None, "cpu"))
        after = model.state_dict()
        moved = {k for k in before if not torch.equal(before[k], after[k])}
        inside = {k for k in before if k.startswith("backbone.") and FER_model._under(k[9:], blocks)}
        frozen_keys = {k for k in before if k.startswith("backbone.") and k not in inside}
        assert frozen_keys and not moved & frozen_keys, sorted(moved & frozen_keys)[:3]
        assert {"fc_cls.weight", "fc_reg.weight"} <= moved and moved & inside  # heads and the stage train
        assert all(p.requires_grad == (k in inside) for k, p in model.backbone.named_parameters(prefix="backbone"))


# --- knobs --------------------------------------------------------------------------------------
def test_ema_equals_a_reference_update_over_two_steps():
    torch.manual_seed(0)
    model = FERNet("resnet18", dropout=0.0, img_size=32)  # no dropout: the twin draws no other masks
    twin = copy.deepcopy(model)
    batches = [{"image": torch.randn(4, 3, 32, 32), "y_cls": torch.randint(0, 8, (4,)), "y_reg": torch.rand(4, 2)}
               for _ in range(2)]
    decay, crit, scaler = 0.9, T.make_criterion(None, "cpu"), torch.amp.GradScaler("cuda", enabled=False)
    ema = T.make_ema(model, decay)
    T.train_one_epoch(model, batches, torch.optim.AdamW(model.parameters(), lr=1e-2), scaler, crit,
                      torch.device("cpu"), None, None, False, ema=ema)
    # The reference: the same two steps on a twin, averaged by hand from the starting weights.
    snaps = [{k: v.clone().double() for k, v in twin.state_dict().items()}]
    opt = torch.optim.AdamW(twin.parameters(), lr=1e-2)
    twin.train()
    for b in batches:
        T.train_step(twin, b["image"], b["y_cls"], b["y_reg"], opt, scaler, crit)
        snaps.append({k: v.clone().double() for k, v in twin.state_dict().items()})
    averaged = ema.module.state_dict()
    for k, v in averaged.items():
        if not v.is_floating_point():
            continue
        ref = decay * (decay * snaps[0][k] + (1 - decay) * snaps[1][k]) + (1 - decay) * snaps[2][k]
        # float32 lerp, two rounding steps on values of order 1: a few ulps
        torch.testing.assert_close(v.double(), ref, atol=1e-6, rtol=1e-5, msg=k)
    assert not torch.equal(averaged["fc_cls.weight"], twin.state_dict()["fc_cls.weight"])
    assert any("running_mean" in k and not torch.equal(v, snaps[0][k].float()) for k, v in averaged.items())


@pytest.mark.parametrize("mixup,cutmix", [(0.8, None), (None, 1.0), (0.8, 1.0)])
def test_mixed_targets_sum_to_one_and_mix_valence_alike(mixup, cutmix):
    torch.manual_seed(0)
    mix = BatchMix(8, mixup, cutmix)
    y = torch.randint(0, 8, (16,))
    va = torch.stack([y.float(), torch.rand(16)], 1)  # valence = the class index: mixed alike or not
    va[5, 1] = float("nan")  # no arousal for sample 5
    for _ in range(5):
        x, soft, mixed = mix(torch.randn(16, 3, 32, 32), y, va)
        assert x.shape == (16, 3, 32, 32) and soft.shape == (16, 8) and (soft >= 0).all()
        torch.testing.assert_close(soft.sum(1), torch.ones(16))
        torch.testing.assert_close(mixed[:, 0], soft @ torch.arange(8.0))
        assert mixed[:, 1].isnan().sum() in (1, 2) and mixed[5, 1].isnan()  # itself and whoever mixes it in
    assert not torch.equal(soft, torch.nn.functional.one_hot(y, 8).float())


def test_warmup_then_cosine():
    opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=1.0)
    sched = T.make_scheduler(opt, 6, 2)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == pytest.approx([1 / 3, 2 / 3, 1.0]) and lrs[3] < 1.0 and lrs == sorted(lrs[:3]) + sorted(lrs[3:], reverse=True)


@pytest.mark.parametrize("arch", ["vit_b_16", "swin_t", "convnext_tiny"])
def test_layer_decay_groups(arch):
    model = FERNet(arch, img_size=32)
    groups = FER_model.param_groups(model, 1.0, 0.5)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert groups[0]["lr"] == 1.0 and any(p is model.fc_cls.weight for p in groups[0]["params"])
    lrs = [g["lr"] for g in groups]
    assert lrs == sorted(lrs, reverse=True) and len(set(lrs)) == len(lrs)
    ids, top = FER_model.layer_ids(model)
    stem = {"vit_b_16": "backbone.conv_proj.weight"}.get(arch, "backbone.features.0.0.weight")
    assert ids[stem] == 0 and lrs[-1] == 0.5 ** top


def test_cpu_bf16(demo, tmp_path):
    r = run_here("train_vggface2_resnet50.py", *tiny_args(demo, tmp_path, "--epochs", 1, "--steps_per_epoch", 1,
                                                            "--amp_dtype", "bf16", "--device", "cpu"))
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert r.returncode == 0, r.stderr
        assert "training on cpu, bf16" in r.stdout and "| bf16 |" in r.stdout
    else:
        assert r.returncode == 1 and "no bfloat16 instructions" in r.stderr


@pytest.mark.parametrize("flags,message", [
    (["--arch", "resnet18", "--layer_decay", "0.7"], "--layer_decay is for"),
    (["--arch", "vit_b_16", "--img_size", "40"], "multiple of 16"),
    (["--best_on", "ema"], "--best_on ema needs --ema"),
    (["--arch", "convnext_tiny", "--vggface2_ckpt", "x.pth"], "--vggface2_ckpt is for the ResNets"),
    (["--weights", "x.pth", "--no_pretrained"], "--weights gives the backbone weights"),
    (["--ema", "1"], "--ema"),
    (["--warmup_epochs", "3", "--epochs", "3"], "leaves no epoch"),
    (["--arch", "vgg16"], "--arch"),
])
def test_bad_knobs_one_line(demo, tmp_path, flags, message):
    r = run_here("train_vggface2_resnet50.py", *tiny_args(demo, tmp_path, *flags))
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_changed_knob_refused_on_resume(family_run, demo):
    out = family_run("convnext_tiny")
    args = tiny_args(demo, out / "cut", "--arch", "convnext_tiny", "--epochs", 2, "--steps_per_epoch", 1,
                     "--freeze_epochs", 1, "--batch_size", 4, "--lr", 1e-3, *KNOBS["convnext_tiny"],
                     "--resume", out / "cut" / "m_last.pth")
    args[args.index("--ema") + 1] = "0.5"
    r = run_here("train_vggface2_resnet50.py", *args)
    assert r.returncode == 1 and "resuming would change the run (--ema 0.9 -> 0.5)" in r.stderr


# --- pretrained weights -------------------------------------------------------------------------
def test_missing_pretrained_file_names_it(demo, tmp_path, monkeypatch):
    def offline(*a, **k):
        raise OSError("no network")  # and nothing is downloaded
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    args = [a for a in tiny_args(demo, tmp_path, "--arch", "efficientnet_b0") if a != "--no_pretrained"]
    r = run_here("train_vggface2_resnet50.py", *args)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"put efficientnet_b0_rwightman-7f5810bc.pth (from https://" in r.stderr
    assert f"in {tmp_path / 'torch' / 'hub' / 'checkpoints'}/" in r.stderr


def test_weights_flag_loads_any_family(tmp_path, capsys):
    import torchvision
    state = torchvision.models.get_model("efficientnet_b0").state_dict()  # with its 1000-way classifier
    torch.save(state, tmp_path / "eff.pth")
    model = T.build_model(T.get_args(["--arch", "efficientnet_b0", "--weights", str(tmp_path / "eff.pth")]), T.Say(True))
    out = capsys.readouterr().out
    n = sum(1 for k in state if not k.startswith("classifier") and not k.endswith("num_batches_tracked"))
    assert f"loaded {n}/{n} backbone tensors (100.0%); 0 missing, 2 unexpected (ignored)" in out
    assert torch.equal(model.backbone.features[3][1].block[0][0].weight, state["features.3.1.block.0.0.weight"])
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "resnet.pth")
    with pytest.raises(T.TrainError, match="none of its tensors fits a efficientnet_b0 backbone"):
        T.build_model(T.get_args(["--arch", "efficientnet_b0", "--weights", str(tmp_path / "resnet.pth")]), T.Say(False))


def test_vit_position_embeddings_follow_img_size(tmp_path, capsys):
    import torchvision
    state = torchvision.models.vit_b_16().state_dict()  # 224 px: 14 x 14 patches + the class token
    torch.save(state, tmp_path / "vit.pth")
    model = T.build_model(T.get_args(["--arch", "vit_b_16", "--img_size", "48", "--weights", str(tmp_path / "vit.pth")]),
                          T.Say(True))
    assert "(100.0%)" in capsys.readouterr().out
    assert model.backbone.encoder.pos_embedding.shape == (1, 3 * 3 + 1, 768)
    assert torch.equal(model.backbone.encoder.pos_embedding[0, 0], state["encoder.pos_embedding"][0, 0])  # class token
    model.eval()(torch.randn(1, 3, 48, 48))


def test_bench_arch(tmp_path):
    r = run_here("bench.py", "--quick", "--only", "train_step", "--arch", "mobilenet_v3_large",
                 "--json", tmp_path / "b.json")
    assert r.returncode == 0, r.stderr
    assert "mobilenet_v3_large 32px" in r.stdout and "peak RSS" in r.stdout
