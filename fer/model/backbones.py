"""The backbone families: which torchvision models, their last two stages and their dropout.

Imports nothing heavy, so that a script checks --arch and --img_size before it imports torch.
Used by fer.model.net (which builds them) and the flag parsers of fer.cli: imports nothing.
"""
from typing import NamedTuple


class Family(NamedTuple):
    """How a torchvision backbone becomes a FER backbone.

    head: the classifier module replaced by Identity, so the backbone returns its pooled features.
    stages: the backbone's last two stages as module-name prefixes, (second to last, last): the blocks at
    1/16 and 1/32 of the input resolution (ViT: blocks 7-9 and 10-12, its last two quarters), with what
    follows them (head convolution, final norm) in the last. Staged fine-tuning trains the last, then both.
    dropout: before the heads, as in the family's ImageNet recipe (ResNet: 0.7, as the original scripts).
    """
    head: str
    stages: tuple
    dropout: float


_RESNET = Family("fc", (("layer3",), ("layer4",)), 0.7)

_EFF = (("features.4", "features.5"), ("features.6", "features.7", "features.8"))

_CONVNEXT = (("features.4", "features.5"), ("features.6", "features.7", "classifier"))

_VIT_BLOCKS = [f"encoder.layers.encoder_layer_{i}" for i in range(12)]

FAMILIES = {
    "resnet18": _RESNET, "resnet34": _RESNET, "resnet50": _RESNET,
    "efficientnet_b0": Family("classifier", _EFF, 0.2),
    "efficientnet_b2": Family("classifier", _EFF, 0.3),
    "efficientnet_v2_s": Family("classifier", (("features.4", "features.5"), ("features.6", "features.7")), 0.2),
    "convnext_tiny": Family("classifier.2", _CONVNEXT, 0.0),
    "convnext_small": Family("classifier.2", _CONVNEXT, 0.0),
    "vit_b_16": Family("heads", (tuple(_VIT_BLOCKS[6:9]), tuple(_VIT_BLOCKS[9:]) + ("encoder.ln",)), 0.0),
    "swin_t": Family("head", (("features.4", "features.5"), ("features.6", "features.7", "norm")), 0.0),
    "regnet_y_1_6gf": Family("fc", (("trunk_output.block3",), ("trunk_output.block4",)), 0.0),
    "mobilenet_v3_large": Family("classifier.3", (tuple(f"features.{i}" for i in range(7, 13)),
                                                  tuple(f"features.{i}" for i in range(13, 17)) + ("classifier",)),
                                 0.2),
}

ARCHS = tuple(FAMILIES)

RESNETS = ("resnet18", "resnet34", "resnet50")

LAYER_DECAY_ARCHS = ("convnext_tiny", "convnext_small", "vit_b_16", "swin_t")

PATCH = {"vit_b_16": 16}  # input side must be a multiple of this


def check_img_size(arch, img_size):
    """None, or why this family cannot take img_size."""
    patch = PATCH.get(arch)
    if patch and img_size % patch:
        return f"{arch} takes images whose side is a multiple of {patch} pixels, not {img_size}"
    return None
