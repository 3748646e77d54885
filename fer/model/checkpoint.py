"""Reading and writing weights, in one place: pretrained backbones (VGGFace2, ImageNet, any state
dict), FER checkpoints with their metadata, and their fingerprints. Weight files are read safely
(torch's weights_only, or numpy-only unpickling), and refused with one line when they cannot be used.
"""
import hashlib
import pickle
import re
from pathlib import Path

try:
    import resource  # POSIX: the file-size limit (ulimit -f) a failed save names
except ImportError:  # Windows
    resource = None

import numpy as np
import torch
import torchvision
from torch import nn

from fer.constants import CLASS_NAMES, IMAGENET_MEAN, IMAGENET_STD
from fer.model.backbones import ARCHS, check_img_size
from fer.model.net import INPUT_FORMATS, FERNet, unwrap
from fer.trust import FERError, one_line, staged_outputs

CHECKPOINT_VERSION = 1


class CheckpointError(FERError):
    """A weights file that cannot be used; the message names the file and the problem."""


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
    try:
        torch.save(obj, stage(path))
    except RuntimeError as e:  # its C++ writer says only "unexpected pos ..." or "file write failed"
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0] if resource else None
        if limit is None or limit == resource.RLIM_INFINITY:
            raise  # a full disk: staged_outputs names the file
        raise CheckpointError(f"{path}: not written ({one_line(e)[:120]}): this process may write files of at most "
                              f"{limit:,} bytes (ulimit -f); raise the limit") from None


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
    model.init_fingerprint = weights_fingerprint(state)  # the run record groups runs by their starting weights
    return model


def weights_fingerprint(state_dict):
    """SHA-256 of a model's tensors (names, dtypes, shapes, values): the same weights give the same
    fingerprint whichever file or device they come from."""
    import torch

    h = hashlib.sha256()
    for name, t in state_dict.items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(dtype=torch.uint8).numpy().tobytes())
    return h.hexdigest()


# --- calibration: the temperature in the checkpoint's metadata ----------------------------------
def temperature_of(meta, path="checkpoint"):
    """The temperature a checkpoint's metadata records (eval_resnet50.py --calibrate), or None when it
    records none; a recorded value that is not a positive finite number is refused."""
    cal = meta.get("calibration")
    if cal is None:
        return None
    t = cal.get("temperature") if isinstance(cal, dict) else None
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not np.isfinite(t) or t <= 0:
        raise CheckpointError(f"{path}: field calibration.temperature = {t!r} is not a positive number")
    return float(t)


def temperature_mismatch(meta, tta):
    """Why the checkpoint's temperature does not fit outputs made with (tta true) or without test-time
    augmentation, or None: a temperature fitted on plain logits mis-scales the flip average's (less
    confident) log-probabilities, and the reverse."""
    cal = meta.get("calibration")
    if not isinstance(cal, dict) or "temperature" not in cal:
        return None
    fitted_with = bool(cal.get("tta"))
    if fitted_with == bool(tta):
        return None
    return f"the temperature was fitted {'with' if fitted_with else 'without'} --tta"


def write_calibration(path, calibration, stage=None):
    """Record calibration (a dict holding "temperature") in the checkpoint's metadata, keeping every
    other field and the weights as they are. Written through a staged temporary file and renamed over
    the checkpoint (with the stage's other files when given): an interrupted write leaves the old file."""
    obj = read_weights(path)
    if isinstance(obj, dict) and not isinstance(obj.get("model"), dict):  # a plain state dict of the original scripts
        obj = {"model": obj}
    obj = {**obj, "calibration": calibration}
    temperature_of(obj, path)
    save_checkpoint(obj, path, stage)
