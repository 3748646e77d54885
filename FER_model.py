"""The multitask FER model on torchvision backbones (the families are listed in FER_backbones.py), staged
freezing, layer-wise learning rates, pretrained-weight loading, checkpoint I/O and batched prediction.

Shared by train_vggface2_resnet50.py, eval_resnet50.py, predict.py, export_onnx.py and bench.py.
"""
import pickle
import re
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn
from tqdm import tqdm

from FER_backbones import ARCHS, FAMILIES, PATCH, check_img_size
from FER_io import FERError, staged_outputs
from FER_transform import CLASS_NAMES, IMAGENET_MEAN, IMAGENET_STD

INPUT_FORMATS = ("imagenet", "caffe_bgr")
# The VGGFace2 ResNet-50 (Cao et al. 2018) was trained in Caffe on BGR pixels 0-255 minus this mean.
VGGFACE2_MEAN_BGR = (91.4953, 103.8827, 131.0912)
CHECKPOINT_VERSION = 1


class CheckpointError(FERError):
    """A weights file that cannot be used; the message names the file and the problem."""


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


# --- reading weight files safely ----------------------------------------------------------------
_NP_CORE = getattr(np, "_core", None) or np.core
_PICKLE_ALLOWED = {  # what a pickled dict of numpy arrays needs, and nothing that can run code
    ("numpy.core.multiarray", "_reconstruct"): _NP_CORE.multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _NP_CORE.multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): _NP_CORE.multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _NP_CORE.multiarray.scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("collections", "OrderedDict"): __import__("collections").OrderedDict,
    ("_codecs", "encode"): __import__("codecs").encode,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _PICKLE_ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed") from None


def _load_numpy_pickle(path):
    with open(path, "rb") as fh:
        # latin1: the VGGFace2 port's resnet50_ft_weight.pkl is a Python 2 pickle.
        return _NumpyOnlyUnpickler(fh, encoding="latin1").load()


MAX_INFLATION = 4  # a torch checkpoint stores its tensors uncompressed: its zip directory declares ~ its size


def _check_zip_sizes(path):
    """A torch checkpoint is a zip file: refuse one whose directory declares far more bytes than the
    file holds (a zip bomb), before anything is inflated. True for a zip file."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            declared = sum(info.file_size for info in z.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    size = path.stat().st_size
    if declared > MAX_INFLATION * size + (1 << 20):
        raise CheckpointError(f"{path}: its zip directory declares {declared / 2**20:.0f} MiB in a "
                              f"{size / 2**20:.1f} MiB file: not a checkpoint torch wrote (a zip bomb?); not loaded")
    return True


def read_weights(path):
    """Load a weights file without running code from it: a torch checkpoint (weights_only) or a
    pickled dict of numpy arrays. Returns the raw object."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {'not a regular file' if path.exists() else 'file not found'}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    is_zip = _check_zip_sizes(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as torch_error:
        if is_zip:  # a torch checkpoint holding pickled objects that could run code: never unpickled
            found = (re.search(r"Unsupported global: GLOBAL (\S+)", str(torch_error))
                     or re.search(r"WeightsUnpickler error: ([^\n.]+)", str(torch_error)))
            what = f" ({found[1]})" if found else ""
            raise CheckpointError(f"{path}: refused, not a weights-only checkpoint: it holds a pickled object that "
                                  f"torch.load(weights_only=True) does not allow{what}; not loaded, nothing in it "
                                  f"ran. Load it only if you trust its source, and re-save its state dict") from None
        try:
            return _load_numpy_pickle(path)
        except pickle.UnpicklingError as e:
            if "is not allowed" not in str(e):  # not a pickle at all (a CSV, an image, random bytes)
                raise CheckpointError(f"{path}: not a weights file (neither a torch checkpoint nor a pickle of "
                                      f"arrays)") from None
            raise CheckpointError(f"{path}: refused to load: it holds more than tensors and arrays ({e}); "
                                  f"only load files from sources you trust, and re-save them as plain state "
                                  f"dicts") from None
        except Exception:
            raise CheckpointError(f"{path}: not a weights file torch can read safely "
                                  f"({str(torch_error).splitlines()[0][:160]})") from None
    except Exception as e:
        if is_zip:  # torch's reader says "[enforce fail at inline_container.cc...]"
            raise CheckpointError(f"{path}: a zip file, but not a checkpoint torch.save wrote (damaged or another "
                                  f"kind of archive)") from None
        raise CheckpointError(f"{path}: not a readable weights file, neither a torch checkpoint nor a pickle of "
                              f"arrays ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:160] if str(e) else ''})") from None


def as_state_dict(obj, path="weights"):
    """Unwrap the usual containers ({'state_dict': ...}, {'model': ...}) into {name: tensor}."""
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: holds no state dict")
    out = {}
    for k, v in obj.items():
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(np.array(v))
        if isinstance(v, torch.Tensor):
            out[k] = v
    if not out:
        raise CheckpointError(f"{path}: holds no tensors")
    return out


def _strip(state, prefixes):
    """Remove wrapper prefixes (DDP's module., torch.compile's _orig_mod., ...) until none is left."""
    out = {}
    for k, v in state.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def fit_position_embedding(state, backbone):
    """A ViT's position embeddings resized (bicubic, torchvision's interpolate_embeddings) to the backbone's
    image size when the weights were made for another; other state dicts are returned unchanged."""
    key = "encoder.pos_embedding"
    if not hasattr(backbone, "image_size") or key not in state or state[key].shape == backbone.encoder.pos_embedding.shape:
        return state
    from torchvision.models.vision_transformer import interpolate_embeddings
    return interpolate_embeddings(backbone.image_size, backbone.patch_size, dict(state))


def load_backbone_weights(backbone, state, label="VGGFace2", verbose=True):
    """Copy every compatible tensor (same name and shape, not fc.*) into the backbone.

    Returns the names of the backbone tensors still not covered. Coverage counts weights and BN
    statistics, not num_batches_tracked.
    """
    state = fit_position_embedding(_strip(state, ("module.", "backbone.")), backbone)
    bad = nonfinite_tensor(state)
    if bad:
        raise CheckpointError(f"{label}: refused, the weights hold non-finite values (NaN or inf in {bad})")
    own = backbone.state_dict()
    countable = [k for k in own if not k.endswith("num_batches_tracked") and not k.startswith("fc.")]
    usable = {k: v for k, v in state.items() if k in own and not k.startswith("fc.") and v.shape == own[k].shape}
    mismatched = [k for k, v in state.items() if k in own and not k.startswith("fc.") and v.shape != own[k].shape]
    unexpected = [k for k in state if k not in own]
    backbone.load_state_dict({k: v.to(own[k].dtype) for k, v in usable.items()}, strict=False)
    loaded = [k for k in countable if k in usable]
    if verbose:
        extra = f", {len(mismatched)} skipped for shape mismatch" if mismatched else ""
        print(f"{label}: loaded {len(loaded)}/{len(countable)} backbone tensors "
              f"({100 * len(loaded) / len(countable):.1f}%){extra}; {len(countable) - len(loaded)} missing, "
              f"{len(unexpected)} unexpected (ignored)")
    return [k for k in countable if k not in usable]


def imagenet_state_dict(arch):
    """torchvision's ImageNet weights (from the torch hub cache, or downloaded)."""
    weights = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=True)
    except Exception as e:
        folder = Path(torch.hub.get_dir()) / "checkpoints"
        vggface2 = ", or put resnet50_vggface2.pth in weight/" if arch == "resnet50" else ""
        raise CheckpointError(f"ImageNet weights for {arch} cannot be downloaded ({type(e).__name__}): put "
                              f"{weights.url.rsplit('/', 1)[-1]} (from {weights.url}) in {folder}/; or use "
                              f"--no_pretrained, or --weights FILE{vggface2}") from None


# --- checkpoints --------------------------------------------------------------------------------
def nonfinite_tensor(state):
    """The name of the first floating tensor holding NaN or inf, else None."""
    for k, v in state.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all():
            return k
    return None


def save_checkpoint(obj, path, stage=None):
    """torch.save through a staged temporary file: a crash mid-save never breaks the old file, and
    weights holding NaN or inf are never written."""
    bad = nonfinite_tensor(obj.get("model", {}))
    if bad:
        raise CheckpointError(f"{path}: not saved, the weights hold non-finite values ({bad})")
    if stage is None:
        with staged_outputs() as stage:
            return save_checkpoint(obj, path, stage)
    torch.save(obj, stage(path))


def unwrap(model):
    """The plain FERNet inside DDP / torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or getattr(model, "_orig_mod")
    return model


def checkpoint_payload(model, img_size, **extra):
    """Everything needed to use a model without the command line that trained it."""
    model = unwrap(model)
    return {"version": CHECKPOINT_VERSION, "model": model.state_dict(), "arch": model.arch,
            "input_format": model.input_format, "class_names": list(model.class_names), "img_size": img_size,
            "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}, **extra}


def _infer_arch(state):
    if state["fc_cls.weight"].shape[1] == 2048:
        return "resnet50"
    return "resnet34" if "backbone.layer3.5.conv1.weight" in state else "resnet18"


def _is_imagenet(norm):
    """The normalization a checkpoint records must be the one FERDataset and the exports apply."""
    try:
        return all(np.allclose(np.asarray(norm[k], float), ref, atol=1e-6)
                   for k, ref in (("mean", IMAGENET_MEAN), ("std", IMAGENET_STD)))
    except (TypeError, KeyError, ValueError):
        return False


def check_metadata(meta, state, path):
    """Refuse metadata that cannot describe these weights, naming the field. Returns the clean fields."""
    arch = meta.get("arch") or _infer_arch(state)
    input_format = meta.get("input_format", "imagenet")
    img_size = meta.get("img_size", 224)
    n_out = state["fc_cls.weight"].shape[0]
    names = meta.get("class_names", list(CLASS_NAMES) if n_out == len(CLASS_NAMES) else None)
    if arch not in ARCHS:
        raise CheckpointError(f"{path}: field arch = {arch!r} is not one of {', '.join(ARCHS)}")
    if input_format not in INPUT_FORMATS:
        raise CheckpointError(f"{path}: field input_format = {input_format!r} is not one of {', '.join(INPUT_FORMATS)}")
    if input_format == "caffe_bgr" and arch != "resnet50":
        raise CheckpointError(f"{path}: field input_format = caffe_bgr exists for resnet50 only, not {arch}")
    if isinstance(img_size, bool) or not isinstance(img_size, int) or not 32 <= img_size <= 4096:
        raise CheckpointError(f"{path}: field img_size = {img_size!r} is not a whole number of pixels in 32-4096")
    if check_img_size(arch, img_size):
        raise CheckpointError(f"{path}: field img_size = {img_size}: {check_img_size(arch, img_size)}")
    norm = meta.get("normalization", {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)})
    if not _is_imagenet(norm):
        raise CheckpointError(f"{path}: field normalization = {norm!r} is not the ImageNet mean/std this model "
                              f"normalises with")
    if (not isinstance(names, (list, tuple)) or len(names) != n_out or len(set(map(str, names))) != len(names)
            or not all(isinstance(n, str) and n in CLASS_NAMES for n in names)):
        raise CheckpointError(f"{path}: field class_names = {names!r} does not fit the {n_out}-way head "
                              f"(expected {n_out} distinct names from {', '.join(CLASS_NAMES)})")
    return {"arch": arch, "input_format": input_format, "img_size": img_size, "class_names": list(names)}


def read_checkpoint(path):
    """(metadata dict, state dict) of a FER checkpoint, ours or a plain state dict of the original
    scripts, refusing files whose weights are non-finite or whose metadata does not fit them."""
    obj = read_weights(path)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        meta, state = obj, obj["model"]
    elif isinstance(obj, dict) and any(str(k).endswith("fc_cls.weight") for k in obj):
        meta, state = {}, obj  # saved by the original scripts: weights only, ImageNet input
    else:
        raise CheckpointError(f"{path}: not a FER checkpoint (no model weights with an fc_cls head)")
    state = _strip(as_state_dict(state, path), ("module.", "_orig_mod."))
    if "fc_cls.weight" not in state or state["fc_cls.weight"].ndim != 2:
        raise CheckpointError(f"{path}: not a FER checkpoint (no fc_cls head)")
    bad = nonfinite_tensor(state)
    if bad:
        raise CheckpointError(f"{path}: refused, the weights hold non-finite values (NaN or inf in {bad})")
    bad = next((k for k, v in state.items() if k.endswith("running_var") and bool((v < 0).any())), None)
    if bad:
        raise CheckpointError(f"{path}: refused, a BatchNorm variance is negative ({bad}): the model would output NaN")
    return {**meta, **check_metadata(meta, state, path)}, state


def build_from_state(meta, state, path, img_size=None):
    """The FERNet that meta describes, with state loaded strictly (a ViT's position embeddings resized to
    img_size when given)."""
    img_size = img_size or meta["img_size"]
    model = FERNet(meta["arch"], class_names=meta["class_names"], input_format=meta["input_format"],
                   img_size=img_size)
    key = "backbone.encoder.pos_embedding"
    if key in state:  # ViT
        resized = fit_position_embedding({"encoder.pos_embedding": state[key]}, model.backbone)
        state = {**state, key: resized["encoder.pos_embedding"]}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        raise CheckpointError(f"{path}: weights do not fit a {meta['arch']} FER model ({len(missing)} missing, "
                              f"{len(unexpected)} unexpected, {len(mismatched)} of another shape; "
                              f"e.g. {(missing + unexpected + mismatched)[0]})")
    model.load_state_dict(state)
    return model


def heads_trained(meta):
    """{"expression": bool, "valence_arousal": bool}: which heads the training data trained (a dataset
    without valence/arousal leaves that head untrained). Checkpoints that do not record it: both."""
    recorded = meta.get("heads_trained")
    recorded = recorded if isinstance(recorded, dict) else {}
    return {k: bool(recorded.get(k, True)) for k in ("expression", "valence_arousal")}


def model_from_checkpoint(path, device="cpu", img_size=None):
    """Build the model a checkpoint describes. Accepts our checkpoints and the plain state dicts of the
    original scripts. Returns (model in eval mode, checkpoint metadata without the weights, with
    heads_trained always filled in). img_size: another input size than the checkpoint's (a ViT's
    position embeddings are resized to it)."""
    meta, state = read_checkpoint(path)
    if img_size and check_img_size(meta["arch"], img_size):
        raise CheckpointError(f"{path}: --img_size {img_size}: {check_img_size(meta['arch'], img_size)}")
    model = build_from_state(meta, state, path, img_size)
    model.source = str(path)  # infer() names it when its outputs are not finite
    meta = {k: v for k, v in meta.items() if k not in ("model", "optimizer", "scheduler", "scaler")}
    meta["heads_trained"] = heads_trained(meta)
    return model.to(device).eval(), meta


def check_outputs_finite(model, *outputs):
    """Finite weights can still give NaN or inf (invalid statistics, overflow): a prediction that is
    not a number is an error naming the checkpoint, never a row with empty values."""
    if not all(bool(torch.isfinite(torch.as_tensor(o)).all()) for o in outputs):
        raise CheckpointError(f"{getattr(unwrap(model), 'source', 'the model')}: the model's outputs are not finite "
                              f"(NaN or inf) for a finite input: its weights or BatchNorm statistics are invalid")


def model_initialised_from(path, arch, class_names, say=print, img_size=None):
    """The model of a trained checkpoint as the start of a new run (fine-tuning, e.g. AffectNet -> RAF-DB).

    Backbone, input format and valence/arousal head are kept; the expression head too when the
    classes are the same, otherwise it is re-initialised for class_names, and we say so.
    """
    meta, state = read_checkpoint(path)
    if meta["arch"] != arch:
        raise CheckpointError(f"{path}: --init_from holds a {meta['arch']} model, this run builds {arch}; "
                              f"use --arch {meta['arch']}")
    model = build_from_state(meta, state, path, img_size)
    if list(meta["class_names"]) == list(class_names):
        head = "expression head too"
    else:
        model.class_names = list(class_names)
        model.fc_cls = nn.Linear(model.fc_cls.in_features, len(class_names))
        head = (f"expression head re-initialised: its classes ({', '.join(meta['class_names'])}) differ from this "
                f"run's ({', '.join(class_names)})")
    say(f"initialised from {path} (backbone, valence/arousal head; {head})")
    return model


# --- prediction ---------------------------------------------------------------------------------
def autocast(device, amp_dtype):
    """Mixed precision on CUDA (float16 or bfloat16); plain float32 elsewhere."""
    device = torch.device(device)
    if device.type != "cuda" or amp_dtype is None:
        return nullcontext()
    return torch.autocast("cuda", dtype=amp_dtype)


def infer(model, images, device, amp_dtype=None, tta=False):
    """Logits and valence/arousal (float32) for a batch of normalised images; tta adds the mirror image."""
    device = torch.device(device)
    x = images.to(device, non_blocking=True)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(device, amp_dtype):
        logits, va = model(x)
        if tta:  # average with the mirrored face
            logits_f, va_f = model(x.flip(3))
            logits, va = (logits + logits_f) / 2, (va + va_f) / 2
    if hasattr(unwrap(model), "source"):  # a loaded checkpoint (training checks its own validation outputs)
        check_outputs_finite(model, logits, va)
    return logits.float(), va.float()


def predict_batches(model, loader, device, amp_dtype=None, tta=False, progress=False, desc="predict"):
    """Run the model over a loader of FERDataset batches.

    Returns numpy arrays: logits (N, C), va (N, 2) predicted valence/arousal (unclipped), and the
    batch's other entries (y_cls, y_reg targets, index: dataset row of each sample).
    """
    model.eval()
    out = {}
    for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
        logits, va = infer(model, batch["image"], device, amp_dtype, tta)
        for k, v in (("logits", logits.cpu()), ("va", va.cpu()), *((k, batch[k]) for k in batch if k != "image")):
            out.setdefault(k, []).append(v)
    return {k: torch.cat(v).numpy() for k, v in out.items()}


if __name__ == "__main__":
    from FER_io import not_a_script
    not_a_script(__file__)
