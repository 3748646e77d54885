"""What a training run starts from: the initial model (pretrained, random, another run's weights), the
training state it resumes, and the crop template its checkpoints record.
"""
import os
from pathlib import Path

from fer.cli.train import DEFAULT_VGGFACE2, RESUMABLE_CHANGES, TrainError, output_paths, with_defaults
from fer.constants import CLASS_NAMES
from fer.data.dataset import crop_template
from fer.model.backbones import FAMILIES, RESNETS
from fer.model.checkpoint import (
    CheckpointError,
    as_state_dict,
    imagenet_state_dict,
    load_backbone_weights,
    model_initialised_from,
    read_checkpoint,
    read_weights,
    weights_fingerprint,
)
from fer.model.net import FERNet
from fer.training.schedule import trainable_blocks


# --- the model ----------------------------------------------------------------------------------
def build_model(args, say, class_names=CLASS_NAMES):
    """The initial model, loaded as the flags ask, with a line saying exactly what was loaded."""
    if args.init_from:
        return model_initialised_from(args.init_from, args.arch, class_names, say, args.img_size)
    if args.no_pretrained:
        stages = FAMILIES[args.arch].stages
        frozen = trainable_blocks(0, args.freeze_epochs, args.unfreeze_all_at, stages) is not None
        if frozen:  # a warning: said even with --quiet
            say(f"{args.arch}: random initialisation (--no_pretrained); warning: the schedule you gave keeps the "
                f"layers before the last stage(s) frozen at their random values until --unfreeze_all_at")
        else:
            say.info(f"{args.arch}: random initialisation (--no_pretrained); every layer trains from the first epoch")
        return FERNet(args.arch, class_names, img_size=args.img_size)
    if args.weights:
        model = FERNet(args.arch, class_names, img_size=args.img_size)
        missing = load_backbone_weights(model.backbone, as_state_dict(read_weights(args.weights), args.weights),
                                        f"--weights {args.weights}", verbose=say.informative)
        if len(missing) == sum(not k.endswith("num_batches_tracked") for k in model.backbone.state_dict()):
            raise TrainError(f"--weights {args.weights}: none of its tensors fits a {args.arch} backbone "
                             f"(names and shapes as in torchvision's {args.arch})")
        return model
    path = Path(args.vggface2_ckpt or DEFAULT_VGGFACE2)
    if args.arch not in RESNETS:
        model = FERNet(args.arch, class_names, img_size=args.img_size)
        load_backbone_weights(model.backbone, imagenet_state_dict(args.arch), "ImageNet", verbose=say.informative)
        return model
    if path.is_file():
        caffe = args.vggface2_layout == "caffe"
        if caffe and args.arch != "resnet50":
            raise TrainError("VGGFace2 weights in the Caffe layout are for resnet50; use --arch resnet50 or "
                             "--vggface2_layout torchvision")
        model = FERNet(args.arch, class_names, input_format="caffe_bgr" if caffe else "imagenet")
        missing = load_backbone_weights(model.backbone, as_state_dict(read_weights(path), path),
                                        f"VGGFace2 ({path})", verbose=say.informative)
        if missing:
            try:
                still = load_backbone_weights(model.backbone, {k: v for k, v in imagenet_state_dict(args.arch).items()
                                                               if k in missing}, "ImageNet", verbose=False)
                say.info(f"ImageNet: filled {len(missing) - len(still)} of the {len(missing)} tensors not in {path.name}")
            except CheckpointError:
                say(f"warning: ImageNet weights unavailable; {len(missing)} backbone tensors keep random init")
        say.info(f"input: {'BGR 0-255 minus the VGGFace2 mean (converted inside the model)' if caffe else 'ImageNet-normalised RGB'}")
        return model
    if args.vggface2_ckpt is not None:
        raise TrainError(f"--vggface2_ckpt {path}: file not found")
    say(f"{path} not found: starting from ImageNet weights (see weight/README.md for VGGFace2)")
    model = FERNet(args.arch, class_names)
    load_backbone_weights(model.backbone, imagenet_state_dict(args.arch), "ImageNet", verbose=say.informative)
    return model


# --- a resumed run ------------------------------------------------------------------------------
def check_resume(ckpt_path, args, class_names):
    """The training state of a *_last.pth that continues exactly this run, or one line saying why not.
    Resolved flags are compared (fer.cli.train.resolve), a flag newer than the run at its default."""
    meta, _ = read_checkpoint(ckpt_path)  # weights finite, metadata consistent
    ckpt = read_weights(ckpt_path)
    for field in ("optimizer", "scheduler", "scaler", "train_state", "args"):
        if not isinstance(ckpt.get(field), dict):
            raise TrainError(f"{ckpt_path}: field {field} missing: not a training state (resume from the *_last.pth file)")
    if meta["arch"] != args.arch:
        raise TrainError(f"{ckpt_path}: field arch = {meta['arch']}, but this run is --arch {args.arch}")
    if meta["class_names"] != class_names:
        raise TrainError(f"{ckpt_path}: field class_names = {meta['class_names']}, but the training index has "
                         f"{class_names}")
    old = with_defaults(ckpt["args"])  # a flag newer than the run counts as its default
    changed = [f"--{k} {old.get(k)} -> {v}" for k, v in vars(args).items()
               if k not in RESUMABLE_CHANGES and old.get(k) != v
               and not (k == "epochs" and isinstance(old.get(k), int) and v > old[k])]  # more epochs: an extension
    if changed:
        raise TrainError(f"{ckpt_path}: resuming would change the run ({'; '.join(changed)}); resume with the "
                         f"original flags, or start a new run with another --save_path")
    return ckpt


def earlier_best(args, ckpt):
    """A resume into another --save_path: the run's best checkpoint so far (beside --resume, as the run
    named it), which the new folder needs as long as no later epoch beats it; None when the run
    continues in its own folder or has no best epoch yet. One line when it is missing or is not the
    checkpoint the run record names."""
    last = output_paths(args.save_path)["last"]
    if (last.exists() and os.path.samefile(args.resume, last)) or not ckpt["train_state"].get("history"):
        return None
    best = Path(args.resume).with_name(Path(str(ckpt["args"].get("save_path", ""))).name)
    want = (ckpt.get("run") or {}).get("checkpoint_fingerprint")
    try:
        found = weights_fingerprint(read_checkpoint(best)[1]) if best.is_file() else None
    except CheckpointError:
        found = None
    if want is None or found != want:
        raise TrainError(f"--resume {args.resume} into another --save_path needs the run's best checkpoint {best}, "
                         f"{'which is not the one the run record names' if best.is_file() else 'not found'}: resume at "
                         f"the run's own --save_path, or put its best checkpoint beside {Path(args.resume).name}")
    return best


# --- the crop template --------------------------------------------------------------------------
def template_of(args, say):
    """The checkpoint's crop_template: where the five landmarks sit on average in the training crops
    (predict.py warps detected faces onto it), or None when the training index has no landmarks."""
    template, n = crop_template(args.train_meta, root=args.root, progress=say.informative)
    if template is None:
        if args.align == "template":
            raise TrainError(f"--align template: no landmarks in {', '.join(args.train_meta)}; add five per image "
                             f"with metadata_parallel.py --detect_landmarks")
        say("crop template: none (no landmarks in the training index); predict.py will crop the detector's box "
            "with a margin")
    else:
        say.info(f"crop template from the landmarks of {n} training images: eyes at "
                 f"({template[0][0]:.3f}, {template[0][1]:.3f}), ({template[1][0]:.3f}, {template[1][1]:.3f}) of the crop")
    return template
