"""The training knobs (EMA, MixUp/CutMix, warm-up, layer decay, CPU bfloat16), pretrained weights for
every family (--weights, the offline message, ViT position embeddings) and bench.py --arch."""
import copy

import pytest
import torch
from conftest import run_here, tiny_args

import fer.cli.train as TF
import fer.training.loop as TL
import fer.training.schedule as TS
import fer.training.start as TI
from fer.data.transforms import BatchMix
from fer.model.net import FERNet, layer_ids, param_groups


# --- knobs --------------------------------------------------------------------------------------
def test_ema_equals_a_reference_update_over_two_steps():
    torch.manual_seed(0)
    model = FERNet("resnet18", dropout=0.0, img_size=32)  # no dropout: the twin draws no other masks
    twin = copy.deepcopy(model)
    batches = [{"image": torch.randn(4, 3, 32, 32), "y_cls": torch.randint(0, 8, (4,)), "y_reg": torch.rand(4, 2)}
               for _ in range(2)]
    decay, crit, scaler = 0.9, TL.make_criterion(None, "cpu"), torch.amp.GradScaler("cuda", enabled=False)
    ema = TL.make_ema(model, decay)
    TL.train_one_epoch(model, batches, torch.optim.AdamW(model.parameters(), lr=1e-2), scaler, crit,
                       torch.device("cpu"), None, None, False, ema=ema)
    # The reference: the same two steps on a twin, averaged by hand from the starting weights.
    snaps = [{k: v.clone().double() for k, v in twin.state_dict().items()}]
    opt = torch.optim.AdamW(twin.parameters(), lr=1e-2)
    twin.train()
    for b in batches:
        TL.train_step(twin, b["image"], b["y_cls"], b["y_reg"], opt, scaler, crit)
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
    sched = TS.make_scheduler(opt, 6, 2)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == pytest.approx([1 / 3, 2 / 3, 1.0]) and lrs[3] < 1.0 and lrs == sorted(lrs[:3]) + sorted(lrs[3:], reverse=True)


@pytest.mark.parametrize("arch", ["vit_b_16", "swin_t", "convnext_tiny"])
def test_layer_decay_groups(arch):
    model = FERNet(arch, img_size=32)
    groups = param_groups(model, 1.0, 0.5)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert groups[0]["lr"] == 1.0 and any(p is model.fc_cls.weight for p in groups[0]["params"])
    lrs = [g["lr"] for g in groups]
    assert lrs == sorted(lrs, reverse=True) and len(set(lrs)) == len(lrs)
    ids, top = layer_ids(model)
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


# --- pretrained weights -------------------------------------------------------------------------
def test_missing_pretrained_file_names_it(demo, tmp_path, monkeypatch):
    def offline(*a, **k):
        raise OSError("no network")  # and nothing is downloaded
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    args = [a for a in tiny_args(demo, tmp_path, "--arch", "efficientnet_b0") if a != "--no_pretrained"]
    r = run_here("train_vggface2_resnet50.py", *args)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "put efficientnet_b0_rwightman-7f5810bc.pth (from https://" in r.stderr
    assert f"in {tmp_path / 'torch' / 'hub' / 'checkpoints'}/" in r.stderr


def test_weights_flag_loads_any_family(tmp_path, capsys):
    import torchvision
    state = torchvision.models.get_model("efficientnet_b0").state_dict()  # with its 1000-way classifier
    torch.save(state, tmp_path / "eff.pth")
    model = TI.build_model(TF.get_args(["--arch", "efficientnet_b0", "--weights", str(tmp_path / "eff.pth")]), TL.Say(True))
    out = capsys.readouterr().out
    n = sum(1 for k in state if not k.startswith("classifier") and not k.endswith("num_batches_tracked"))
    assert f"loaded {n}/{n} backbone tensors (100.0%); 0 missing, 2 unexpected (ignored)" in out
    assert torch.equal(model.backbone.features[3][1].block[0][0].weight, state["features.3.1.block.0.0.weight"])
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "resnet.pth")
    with pytest.raises(TF.TrainError, match="none of its tensors fits a efficientnet_b0 backbone"):
        TI.build_model(TF.get_args(["--arch", "efficientnet_b0", "--weights", str(tmp_path / "resnet.pth")]), TL.Say(False))


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


def test_bench_arch(tmp_path):
    r = run_here("bench.py", "--quick", "--only", "train_step", "--arch", "mobilenet_v3_large",
                 "--json", tmp_path / "b.json")
    assert r.returncode == 0, r.stderr
    assert "mobilenet_v3_large 32px" in r.stdout and "peak RSS" in r.stdout
