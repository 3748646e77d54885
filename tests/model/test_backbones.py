"""fer/model/backbones.py: the large families (ViT-B, Swin-T, ConvNeXt-S, EfficientNetV2-S) through every
script, the same end-to-end check as model/test_net.py's, in a file of its own so that pytest-xdist
(--dist loadfile) runs it beside the other (they cost seconds per step even at 32 px).
"""
import pytest
from builders import LARGE, check_end_to_end

from fer.model.backbones import ARCHS, FAMILIES, LAYER_DECAY_ARCHS, RESNETS, check_img_size


@pytest.mark.slow
@pytest.mark.parametrize("arch", LARGE)
def test_large_family_end_to_end(demo, arch, tmp_path):
    check_end_to_end(arch, demo, tmp_path)


# --- the table of families ------------------------------------------------------------------------
def test_the_family_table_and_the_img_size_rule():
    """What the flags and the network read from the table: two disjoint, non-empty last stages per family,
    a dropout, the ResNets and the layer-decay families among them, ViT's side a multiple of its patch;
    on two families that build in a moment, the stages and the replaced head are modules of the backbone."""
    import torch

    from fer.model.net import FERNet

    assert set(RESNETS) <= set(ARCHS) and set(LAYER_DECAY_ARCHS) <= set(ARCHS) and "vit_b_16" in ARCHS
    for arch, family in FAMILIES.items():
        second, last = family.stages
        assert second and last and not set(second) & set(last) and 0 <= family.dropout < 1, arch
    assert check_img_size("vit_b_16", 48) is None and "multiple of 16 pixels, not 40" in check_img_size("vit_b_16", 40)
    assert all(check_img_size(arch, 40) is None for arch in ARCHS if arch != "vit_b_16")
    for arch in ("resnet18", "mobilenet_v3_large"):
        modules = dict(FERNet(arch, img_size=32).backbone.named_modules())
        assert set(FAMILIES[arch].stages[0] + FAMILIES[arch].stages[1]) <= set(modules), arch
        assert isinstance(modules[FAMILIES[arch].head], torch.nn.Identity), arch
