"""fer/model/net.py: the multitask network's outputs and layouts, layer-wise learning rates, channels_last,
staged freezing per backbone family, and every (small) family through every script: trained two steps,
resumed exactly, evaluated, predicted and exported.
"""
import copy

import pytest
import torch
from builders import LARGE, check_end_to_end

import fer.training.loop as TL
import fer.training.schedule as TS
from fer.constants import IMAGENET_MEAN, IMAGENET_STD
from fer.model.backbones import ARCHS, FAMILIES, RESNETS
from fer.model.net import VGGFACE2_MEAN_BGR, FERNet, _under, layer_ids, param_groups


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


# --- every backbone family ------------------------------------------------------------------------
NEW = [a for a in ARCHS if a not in RESNETS]  # the ResNets' path: training/test_loop.py


@pytest.mark.slow
@pytest.mark.parametrize("arch", [a for a in NEW if a not in LARGE])
def test_family_end_to_end(demo, arch, tmp_path):
    check_end_to_end(arch, demo, tmp_path)


# --- staged fine-tuning -------------------------------------------------------------------------
@pytest.mark.slow
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


# --- speed options change how fast, never what is computed ----------------------------------------
@pytest.mark.slow
def test_channels_last_gives_the_same_outputs_and_gradients():
    """channels_last is as exact as the default layout.

    Which kernels oneDNN runs (and so the order of each float32 sum) depends on the CPU's instruction
    set, so a fixed tolerance measured on one CPU is not one that follows from the arithmetic. Both
    layouts are compared with a float64 reference instead: the channels_last error must stay within
    a small multiple of the default layout's own float32 rounding error (with a floor of 16 float32
    ulps of the value's norm, for tensors the default layout happens to get almost exact).
    """
    torch.manual_seed(0)
    model = FERNet("resnet18")
    model.dropout.p = 0.0  # no random masks: float64 and float32 draw them differently
    x = torch.randn(4, 3, 48, 48)

    def outputs_and_grads(m, inp):
        logits, va = m(inp)
        (logits.logsumexp(1).sum() + va.square().sum()).backward()
        return [logits, va] + [p.grad for p in m.parameters()]

    ref = outputs_and_grads(copy.deepcopy(model).double(), x.double())
    plain = outputs_and_grads(copy.deepcopy(model), x)
    fast = outputs_and_grads(copy.deepcopy(model).to(memory_format=torch.channels_last),
                             x.contiguous(memory_format=torch.channels_last))
    eps = torch.finfo(torch.float32).eps
    for k, (r, a, b) in enumerate(zip(ref, plain, fast)):
        err_plain, err_fast = (a.double() - r).norm(), (b.double() - r).norm()
        assert err_fast <= 8 * err_plain + 16 * eps * r.norm(), (k, float(err_fast), float(err_plain))


# --- knobs --------------------------------------------------------------------------------------
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
