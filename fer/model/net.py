"""The multitask FER network on torchvision backbones (families in fer.model.backbones): staged
freezing and layer-wise learning rates.
"""
import torch
import torchvision
from torch import nn

from fer.constants import CLASS_NAMES, IMAGENET_MEAN, IMAGENET_STD
from fer.model.backbones import ARCHS, FAMILIES, PATCH, check_img_size

INPUT_FORMATS = ("imagenet", "caffe_bgr")

# The VGGFace2 ResNet-50 (Cao et al. 2018) was trained in Caffe on BGR pixels 0-255 minus this mean.
VGGFACE2_MEAN_BGR = (91.4953, 103.8827, 131.0912)


def _replace(module, dotted, new):
    parent, _, name = dotted.rpartition(".")
    setattr(module.get_submodule(parent) if parent else module, name, new)


def _features(module, dotted):
    """in_features of the Linear at dotted, or of the first Linear inside it (ViT's heads)."""
    m = module.get_submodule(dotted)
    return m.in_features if isinstance(m, nn.Linear) else next(x for x in m.modules() if isinstance(x, nn.Linear)).in_features


class FERNet(nn.Module):
    """Backbone (classifier -> Identity) + Dropout + expression head (fc_cls) + valence/arousal head (fc_reg).

    Module names match the original scripts, so their state dicts load unchanged. Inputs are always
    ImageNet-normalised RGB (what FERDataset yields). With input_format="caffe_bgr" the model converts
    them to what Caffe-trained VGGFace2 weights expect (BGR, 0-255, minus the VGGFace2 mean) and uses
    the Caffe ResNet-50 layout, so that frozen pretrained layers see their training distribution.
    img_size matters to ViT only, whose position embeddings are made for one input size.
    """

    def __init__(self, arch="resnet50", class_names=CLASS_NAMES, dropout=None, input_format="imagenet", img_size=224):
        super().__init__()
        if arch not in FAMILIES:
            raise ValueError(f"unknown arch {arch!r}; choose from {', '.join(ARCHS)}")
        if input_format not in INPUT_FORMATS:
            raise ValueError(f"unknown input_format {input_format!r}")
        if check_img_size(arch, img_size):
            raise ValueError(check_img_size(arch, img_size))
        family = FAMILIES[arch]
        self.arch, self.input_format, self.class_names = arch, input_format, list(class_names)
        num_classes = len(self.class_names)
        extra = {"image_size": img_size} if arch in PATCH else {}
        self.backbone = torchvision.models.get_model(arch, weights=None, **extra)
        in_features = _features(self.backbone, family.head)
        _replace(self.backbone, family.head, nn.Identity())
        if arch == "mobilenet_v3_large":  # its recipe's dropout is ours, before the heads
            self.backbone.classifier[2] = nn.Identity()
        self.dropout = nn.Dropout(p=family.dropout if dropout is None else dropout)
        self.fc_cls = nn.Linear(in_features, num_classes)
        self.fc_reg = nn.Linear(in_features, 2)
        if input_format == "caffe_bgr":
            if arch != "resnet50":
                raise ValueError("the Caffe (VGGFace2) layout exists for resnet50 only")
            to_caffe_layout(self.backbone)
            # x_bgr255 - mean = flip(x) * 255 std + (255 mean - vggface2 mean), per channel in BGR order.
            std, mean = torch.tensor(IMAGENET_STD[::-1]), torch.tensor(IMAGENET_MEAN[::-1])
            scale, bias = 255 * std, 255 * mean - torch.tensor(VGGFACE2_MEAN_BGR)
        else:
            scale, bias = torch.ones(3), torch.zeros(3)
        # Not persistent: derived from input_format, which the checkpoint records.
        self.register_buffer("in_scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("in_bias", bias.view(1, 3, 1, 1), persistent=False)

    def forward(self, x):
        if self.input_format == "caffe_bgr":
            x = x.flip(1) * self.in_scale + self.in_bias
        features = self.dropout(self.backbone(x))
        return self.fc_cls(features), self.fc_reg(features)


def to_caffe_layout(resnet):
    """Caffe ResNet-50 v1: stride 2 on the first 1x1 conv of a downsampling block, ceil-mode max-pool."""
    resnet.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
    for layer in (resnet.layer2, resnet.layer3, resnet.layer4):
        layer[0].conv1.stride, layer[0].conv2.stride = (2, 2), (1, 1)


# --- staged fine-tuning and layer-wise learning rates ---------------------------------------------
def _under(name, prefixes):
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def freeze_backbone(model, prefixes):
    """requires_grad per backbone tensor: those under prefixes train (all when prefixes is None).
    Returns the largest modules holding nothing that trains: they stay in eval mode while training,
    so their BatchNorm statistics do not move (LayerNorm weights are frozen by requires_grad)."""
    backbone = unwrap(model).backbone
    for name, p in backbone.named_parameters():
        p.requires_grad_(prefixes is None or _under(name, prefixes))
    if prefixes is None:
        return []
    frozen = []

    def walk(module, path):
        for name, child in module.named_children():
            full = f"{path}{name}"
            if _under(full, prefixes):
                continue
            if any(p.startswith(full + ".") for p in prefixes):
                walk(child, full + ".")
            else:
                frozen.append(child)
    walk(backbone, "")
    return frozen


def layer_ids(model):
    """{parameter name: depth} for layer-wise learning-rate decay (ViT, Swin, ConvNeXt), and the top depth.

    Depth 0 is the stem (ViT: patch projection, class token, position embedding); each transformer or
    ConvNeXt block is one deeper, a downsampling layer goes with the block after it, and the final
    norm and the heads are the top (BEiT's convention)."""
    model = unwrap(model)
    backbone, prefix_depth = model.backbone, {}
    if model.arch == "vit_b_16":
        layers = list(backbone.encoder.layers.named_children())
        prefix_depth = {f"encoder.layers.{n}": i + 1 for i, (n, _) in enumerate(layers)}
        top = len(layers) + 1
    else:  # convnext / swin: features = stem, stage, downsample, stage, ...
        depth = 0
        for k, stage in enumerate(backbone.features):
            if k % 2 == 1:
                for j in range(len(stage)):
                    depth += 1
                    prefix_depth[f"features.{k}.{j}"] = depth
            elif k > 0:
                prefix_depth[f"features.{k}"] = depth + 1
        top = depth + 1
    ids = {}
    for name, _ in model.named_parameters():
        if not name.startswith("backbone."):
            ids[name] = top
            continue
        inner = name[len("backbone."):]
        hit = [d for p, d in prefix_depth.items() if _under(inner, (p,))]
        stem = inner.startswith(("features.0.", "conv_proj.", "class_token", "encoder.pos_embedding"))
        ids[name] = hit[0] if hit else 0 if stem else top
    return ids, top


def param_groups(model, lr, layer_decay=None):
    """AdamW parameter groups: one (all at lr), or one per depth with lr x layer_decay^(top - depth),
    the top (heads) first, so param_groups[0]["lr"] is the heads' learning rate."""
    if layer_decay is None:
        return [{"params": list(model.parameters())}]
    ids, top = layer_ids(model)
    params = dict(model.named_parameters())
    groups = []
    for depth in sorted(set(ids.values()), reverse=True):
        groups.append({"params": [params[n] for n, d in ids.items() if d == depth],
                       "lr": lr * layer_decay ** (top - depth)})
    return groups


def unwrap(model):
    """The plain FERNet inside DDP / torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or getattr(model, "_orig_mod")
    return model
