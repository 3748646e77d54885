"""Fine-tune a multitask ResNet (8 expressions + valence/arousal) on an indexed FER dataset.

    python train_vggface2_resnet50.py --train_meta metadata_train.parquet --val_meta metadata_val.parquet
    torchrun --nproc_per_node=4 train_vggface2_resnet50.py ...        # several GPUs, same flags
    python train_vggface2_resnet50.py ... --resume FER_resnet50_last.pth  # continue a stopped run

Backbones (--arch): ResNet, EfficientNet, ConvNeXt, ViT, Swin, RegNet, MobileNetV3 (torchvision).
Staged fine-tuning, with epochs numbered from 1 as in the epoch lines: epochs 1..--freeze_epochs train
only the backbone's last stage (ResNet: layer4), later epochs the last two (layer3 and layer4; the rest
stays frozen, weights and BatchNorm statistics alike), and from epoch --unfreeze_all_at on, everything.
Heads always train. Loss = cross-entropy (label smoothing 0.1, inverse-frequency class weights) + 0.5 *
MSE(valence, arousal). Mixed precision on CUDA (and bfloat16 on CPUs that have it). Optional: --ema,
--mixup/--cutmix, --warmup_epochs, --layer_decay.

Outputs, named after --save_path (default FER_resnet50.pth):
    FER_resnet50.pth          best epoch by validation accuracy (weights + everything to use them)
    FER_resnet50_last.pth     full training state after the latest epoch, for --resume
    FER_resnet50_history.csv  per-epoch metrics;  FER_resnet50_curves.png  their plots
    FER_resnet50_run.json     where the run came from (flags, code, data fingerprints, times; see FER_run.py)
    FER_resnet50_config.yaml  its resolved flags: --config FER_resnet50_config.yaml repeats the run
    FER_resnet50_tensorboard/ TensorBoard events, with --tensorboard
"""
from fer.cli.config import apply_config
from fer.cli.config import write_config
from fer.data.dataset import data_record
from fer.model.checkpoint import weights_fingerprint
from fer.training.record import RunRecord
from fer.training.record import TensorBoardLog
from fer.training.record import command_line
from fer.training.record import write_json
import csv
import math
import os
import platform
import random
import shlex
import shutil
import sys
import time
from pathlib import Path

from fer.model.backbones import ARCHS
from fer.model.backbones import FAMILIES
from fer.model.backbones import LAYER_DECAY_ARCHS
from fer.model.backbones import RESNETS
from fer.model.backbones import check_img_size
from fer.cli import ArgumentParser
from fer.trust import FERError
from fer.trust import check_device
from fer.trust import check_input
from fer.trust import check_not_inputs
from fer.trust import check_output
from fer.cli import float_in
from fer.cli import int_at_least
from fer.cli import nonneg_float
from fer.cli import nonneg_int
from fer.trust import one_line
from fer.cli import positive_int
from fer.trust import staged_outputs

DEFAULT_VGGFACE2 = "weight/resnet50_vggface2.pth"
REG_WEIGHT = 0.5
LABEL_SMOOTHING = 0.1
AMP_DTYPES = {"fp16": "float16", "bf16": "bfloat16"}  # names in torch
# Flags a resumed run may change: they change speed or where files go, not what is computed.
# Every other flag defines the run, so a resume with another value is refused.
RESUMABLE_CHANGES = ("num_workers", "prefetch_factor", "device", "amp_dtype", "compile", "deterministic",
                     "resume", "overwrite", "save_path", "config", "tensorboard", "root")
HANDLES_ERRORS = True  # main() turns errors into one line itself (rank-aware), without FER_io.run_main
NONFINITE_CHECK_EVERY = 16  # steps between looks at the loss: one device sync each time, not every step


class TrainError(FERError):
    """A problem that ends the run with a one-line message."""


def get_args(argv=None):
    p = ArgumentParser(description=__doc__)
    g = p.add_argument_group("data")
    g.add_argument("--train_meta", nargs="+", default=["metadata_train.parquet"],
                   help="training index file(s) from metadata_parallel.py; several files train jointly")
    g.add_argument("--val_meta", nargs="+", default=["metadata_val.parquet"], help="validation index file(s)")
    g.add_argument("--root", help="dataset folder, if the images are no longer where the index(es) recorded them "
                                  "(the dataset moved); applies to every index file")
    g.add_argument("--img_size", type=int_at_least(32, 4096), default=224,
                   help="input side in pixels (32-4096: the backbones downsample 32x; vit_b_16: a multiple of 16)")
    g.add_argument("--batch_size", type=positive_int, default=8, help="batch size per process")
    g.add_argument("--num_workers", type=nonneg_int, default=None,
                   help="loader processes per training process; 0 loads in the training process itself "
                        "(default: 0 on Windows, else the CPU cores per GPU, at most 16)")
    g.add_argument("--prefetch_factor", type=positive_int, default=4,
                   help="batches each loader worker prepares ahead (ignored with --num_workers 0)")
    g.add_argument("--balanced_sampling", action="store_true",
                   help="draw training samples with inverse class-frequency weights (class weights in the "
                        "loss are then off unless --keep_class_weights)")
    g.add_argument("--keep_class_weights", action="store_true",
                   help="keep the loss's inverse-frequency class weights with --balanced_sampling")
    g.add_argument("--align", choices=("none", "template"), default="none",
                   help="template: warp every training and validation image onto the crop template (the mean "
                        "position of five landmarks in the training crops) before augmentation, as predict.py "
                        "--detect_faces crops faces; needs landmarks in the index (AffectNet's, or "
                        "metadata_parallel.py --detect_landmarks). Default none: the dataset's crops")
    g = p.add_argument_group("model")
    g.add_argument("--arch", default="resnet50", choices=ARCHS, metavar="ARCH",
                   help=f"backbone, with torchvision's ImageNet weights: {', '.join(ARCHS)} (README: their stages)")
    g.add_argument("--vggface2_ckpt", default=None,
                   help=f"VGGFace2 backbone weights (.pth/.pt state dict or the VGGFace2-pytorch .pkl); default "
                        f"{DEFAULT_VGGFACE2}, and ImageNet weights when that file is absent")
    g.add_argument("--vggface2_layout", default="caffe", choices=("caffe", "torchvision"),
                   help="caffe: weights converted from the VGGFace2 authors' Caffe ResNet-50 (BGR mean-subtracted "
                        "input, stride on the 1x1 conv), as in resnet50_ft_weight.pkl; torchvision: weights "
                        "trained in torchvision's layout on ImageNet-normalised RGB")
    g.add_argument("--weights", metavar="FILE", default=None,
                   help="backbone weights for any --arch (a state dict in torchvision's layout, e.g. from a face "
                        "or self-supervised model), instead of the ImageNet ones")
    g.add_argument("--no_pretrained", action="store_true", help="start from random weights (nothing is loaded)")
    g.add_argument("--init_from", metavar="CKPT", default=None,
                   help="start from a trained FER checkpoint's weights (fine-tuning, e.g. AffectNet -> RAF-DB); "
                        "its expression head is re-initialised if its classes differ from this run's")
    g = p.add_argument_group("schedule")
    g.add_argument("--epochs", type=positive_int, default=100, help="number of epochs (also the cosine schedule's T_max)")
    g.add_argument("--freeze_epochs", type=nonneg_int, default=None,
                   help="epochs 1..N (numbered from 1, as printed) train only the backbone's last stage (ResNet: "
                        "layer4; README: each family's); later epochs the last two (0: from the start). Default 3; "
                        "with --no_pretrained nothing is frozen unless this or --unfreeze_all_at is given")
    g.add_argument("--unfreeze_all_at", type=positive_int, default=None,
                   help="from this epoch on (numbered from 1, as printed) the whole backbone trains; 1: from the "
                        "start. Default: never")
    g.add_argument("--patience", type=positive_int, default=15,
                   help="stop when neither validation accuracy nor RMSE improved for this many epochs")
    g.add_argument("--lr", type=float_in(0, 10), default=1e-4, help="AdamW learning rate (0-10)")
    g.add_argument("--weight_decay", type=nonneg_float, default=1e-3, help="AdamW weight decay (>= 0)")
    g.add_argument("--warmup_epochs", type=nonneg_int, default=0,
                   help="epochs of linear learning-rate warm-up (from lr/(N+1)) before the cosine schedule")
    g.add_argument("--layer_decay", type=float_in(0, 1, lo_open=True), default=None,
                   help=f"layer-wise learning-rate decay R in (0, 1] ({', '.join(LAYER_DECAY_ARCHS)}): a block "
                        f"k blocks below the heads learns at lr x R^k")
    g.add_argument("--ema", metavar="DECAY", type=float_in(0, 1, lo_open=True, hi_open=True), default=None,
                   help="keep an exponential moving average of the weights (e.g. 0.9998), updated every step "
                        "and validated each epoch beside the trained weights")
    g.add_argument("--best_on", choices=("raw", "ema"), default=None,
                   help="which weights' validation picks (and become) the best checkpoint and drive early "
                        "stopping (default: ema with --ema, else raw)")
    g.add_argument("--mixup", metavar="ALPHA", type=float_in(0, 100, lo_open=True), default=None,
                   help="MixUp with Beta(ALPHA, ALPHA) weights, e.g. 0.8 (expression and valence/arousal targets "
                        "mixed alike); with --cutmix, one of the two per batch")
    g.add_argument("--cutmix", metavar="ALPHA", type=float_in(0, 100, lo_open=True), default=None,
                   help="CutMix with Beta(ALPHA, ALPHA) box areas, e.g. 1.0")
    g.add_argument("--steps_per_epoch", type=positive_int, default=None,
                   help="cut each epoch after this many steps (quick runs)")
    g = p.add_argument_group("speed")
    g.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    g.add_argument("--amp_dtype", default="fp16", choices=AMP_DTYPES,
                   help="mixed-precision type on CUDA (fp16 uses a GradScaler); the CPU trains in float32, or "
                        "with bf16 in bfloat16 autocast (CPUs with bfloat16 instructions: AVX512-BF16, AMX)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (slow start, faster steps)")
    g.add_argument("--deterministic", action="store_true", help="deterministic cuDNN kernels (slower)")
    g = p.add_argument_group("output")
    g.add_argument("--save_path", default="FER_resnet50.pth", help="best checkpoint; other outputs are named after it")
    g.add_argument("--resume", metavar="LAST_PTH", default=None, help="continue from a *_last.pth training state")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the outputs of an earlier run at --save_path (otherwise training refuses to start)")
    g.add_argument("--seed", type=int_at_least(0, 2**32 - 1), default=42,
                   help="seed of initialisation, sampling and augmentation (0 to 2^32 - 1)")
    g.add_argument("--config", metavar="FILE", default=None,
                   help="YAML or JSON file of flag values (flag name: value), e.g. an earlier run's "
                        "<stem>_config.yaml; flags given on the command line override it")
    g.add_argument("--tensorboard", metavar="DIR", nargs="?", const="", default=None,
                   help="write TensorBoard curves to DIR (default without DIR: <stem>_tensorboard beside the "
                        "checkpoint); view with: tensorboard --logdir <folder of your runs>")
    apply_config(p, argv)
    args = p.parse_args(argv)
    if args.init_from and (args.no_pretrained or args.vggface2_ckpt or args.weights):
        p.error("--init_from gives the starting weights: leave out --no_pretrained / --vggface2_ckpt / --weights")
    if args.weights and (args.no_pretrained or args.vggface2_ckpt):
        p.error("--weights gives the backbone weights: leave out --no_pretrained / --vggface2_ckpt")
    if args.vggface2_ckpt and args.arch not in RESNETS:
        p.error(f"--vggface2_ckpt is for the ResNets; give a {args.arch} backbone's weights with --weights")
    if check_img_size(args.arch, args.img_size):
        p.error(f"argument --img_size: {check_img_size(args.arch, args.img_size)}")
    if args.layer_decay is not None and args.arch not in LAYER_DECAY_ARCHS:
        p.error(f"--layer_decay is for {', '.join(LAYER_DECAY_ARCHS)}, not {args.arch}")
    if args.warmup_epochs >= args.epochs:
        p.error(f"--warmup_epochs {args.warmup_epochs} leaves no epoch of the --epochs {args.epochs} for the schedule")
    if args.best_on == "ema" and args.ema is None:
        p.error("--best_on ema needs --ema DECAY")
    args.best_on = args.best_on or ("ema" if args.ema else "raw")
    if args.freeze_epochs is None:  # staged freezing keeps pretrained layers; random ones must train
        scratch = args.no_pretrained and args.unfreeze_all_at is None
        args.freeze_epochs, args.unfreeze_all_at = (0, 1) if scratch else (3, args.unfreeze_all_at)
    # Absolute paths: a resume from another working directory is still the same run.
    args.train_meta = [os.path.abspath(m) for m in args.train_meta]  # abspath: no link resolution (loops)
    args.val_meta = [os.path.abspath(m) for m in args.val_meta]
    return args


# --- before any work ----------------------------------------------------------------------------
def output_paths(save_path):
    save_path = Path(save_path)
    stem = save_path.with_suffix("")
    return {"best": save_path, "last": Path(f"{stem}_last.pth"), "history": Path(f"{stem}_history.csv"),
            "curves": Path(f"{stem}_curves.png"), "run": Path(f"{stem}_run.json"), "config": Path(f"{stem}_config.yaml")}


def tensorboard_dir(args):
    """Where --tensorboard writes: DIR, or <stem>_tensorboard beside the checkpoint; None without the flag."""
    if args.tensorboard is None:
        return None
    return Path(args.tensorboard or f"{Path(args.save_path).with_suffix('')}_tensorboard")


def preflight(args):
    """Everything that can be checked in the first second: inputs exist, outputs can be written, and
    no earlier run is silently replaced."""
    for flag in ("train_meta", "val_meta"):
        for path in getattr(args, flag):
            check_input(path, f"--{flag}")
    for flag in ("resume", "init_from", "vggface2_ckpt", "config", "weights"):
        if getattr(args, flag):
            check_input(getattr(args, flag), f"--{flag}")
    if args.root:
        check_input(args.root, "--root", folder=True)
    paths = output_paths(args.save_path)
    for path in paths.values():
        check_output(path, "--save_path")
    own = bool(args.resume) and any(p.exists() and os.path.samefile(args.resume, p) for p in paths.values())
    # --resume's file is meant to be replaced, and so is the run's own config when it resumes that run
    # (read in full before anything is written; a resume may not change what it says)
    own_config = own and paths["config"].exists() and os.path.samefile(args.config or os.devnull, paths["config"])
    check_not_inputs([("--save_path", p) for p in paths.values()],
                     [(f"--{k}", m) for k in ("train_meta", "val_meta") for m in getattr(args, k)]
                     + [(f"--{k}", getattr(args, k)) for k in ("init_from", "vggface2_ckpt", "config", "weights")
                        if not (k == "config" and own_config)])
    # Whatever starts the run (fresh, --init_from, --resume of another run's state): outputs of an
    # earlier run are replaced only with --overwrite, except by the continuation of that same run.
    existing = [p for p in paths.values() if p.exists()]
    tb = tensorboard_dir(args)
    if tb is not None:
        check_output(tb, "--tensorboard", folder=True)
        clash = next((p for p in paths.values() if p.resolve() == tb.resolve() or p.resolve() in tb.resolve().parents),
                     None)  # the event folder would take the name an output file is renamed onto
        if clash is not None:
            raise TrainError(f"--tensorboard {tb}: is the output {clash} of --save_path {args.save_path}; "
                             f"choose another folder")
        existing += list(tb.glob("events.out.tfevents.*"))[:1]
    if own and args.overwrite:
        raise TrainError(f"--resume {args.resume} continues the run at --save_path {args.save_path}, --overwrite "
                         f"would replace it: give one of them")
    if existing and not (own or args.overwrite):
        if args.resume:
            raise TrainError(f"{existing[0]} exists and belongs to another run than --resume {args.resume}; "
                             f"continue that run at its own --save_path, or replace {args.save_path}'s run with "
                             f"--overwrite")
        raise TrainError(f"{existing[0]} exists (an earlier run's output); continue that run with --resume "
                         f"{paths['last']}, or replace it with --overwrite")


if __name__ == "__main__":  # flags and paths first: a mistake fails now, not after the imports below (seconds)
    try:
        preflight(get_args())
    except FERError as e:
        sys.exit(f"error: {one_line(e)}")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402
from torch.utils.data import DataLoader, DistributedSampler, Sampler  # noqa: E402
from tqdm import tqdm  # noqa: E402

from fer.evaluation import metrics as M  # noqa: E402
from fer.model.checkpoint import CheckpointError
from fer.model.net import FERNet
from fer.model.checkpoint import as_state_dict
from fer.model.checkpoint import checkpoint_payload
from fer.model.net import freeze_backbone
from fer.model.checkpoint import imagenet_state_dict
from fer.model.checkpoint import load_backbone_weights
from fer.model.checkpoint import model_initialised_from
from fer.model.net import param_groups
from fer.model.forward import predict_batches
from fer.model.checkpoint import read_checkpoint
from fer.model.checkpoint import read_weights
from fer.model.checkpoint import save_checkpoint
from fer.model.net import unwrap
from fer.constants import CLASS_NAMES
from fer.data.transforms import BatchMix
from fer.data.dataset import FERDataset
from fer.data.dataset import classes_in
from fer.data.dataset import counted_twice
from fer.data.dataset import crop_template


# --- distributed --------------------------------------------------------------------------------
def setup_distributed(device_arg):
    """(rank, world, device). Under torchrun: one process per GPU (NCCL) or per CPU process (gloo)."""
    device = check_device(device_arg)
    if "RANK" not in os.environ:
        return 0, 1, device
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, torch.device(f"cuda:{local}" if device.type == "cuda" else "cpu")


def gather_predictions(out, world):
    """Join every rank's predictions and drop the duplicates DistributedSampler pads with."""
    if world == 1:
        return out
    parts = [None] * world
    dist.all_gather_object(parts, out)
    joined = {k: np.concatenate([p[k] for p in parts]) for k in out}
    _, first = np.unique(joined["index"], return_index=True)
    return {k: v[first] for k, v in joined.items()}


class TrainSampler(Sampler):
    """Shuffled (or class-balanced) indices, sharded over ranks, each paired with an augmentation seed.

    Everything is drawn from (seed, epoch), so an epoch is the same whether or not the run was
    resumed before it, and whatever the number of loader workers.
    """

    def __init__(self, n, sample_weights=None, rank=0, world=1, seed=0):
        self.n, self.rank, self.world, self.seed, self.epoch = n, rank, world, seed, 0
        self.weights = None if sample_weights is None else torch.as_tensor(sample_weights, dtype=torch.double)
        self.per_rank = math.ceil(n / world)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        total = self.per_rank * self.world
        if self.weights is None:
            order = torch.randperm(self.n, generator=g)
            order = torch.cat([order, order[: total - self.n]])  # pad so every rank gets as many
        else:
            order = torch.multinomial(self.weights, total, replacement=True, generator=g)
        aug_seeds = torch.randint(0, 2**31 - 1, (total,), generator=g)
        mine = slice(self.rank, total, self.world)
        return iter(zip(order[mine].tolist(), aug_seeds[mine].tolist()))

    def __len__(self):
        return self.per_rank


# --- what the run starts from -------------------------------------------------------------------
def check_resume(ckpt_path, args, class_names):
    """The training state of a *_last.pth that continues exactly this run, or one line saying why not."""
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
    old, defaults = ckpt["args"], vars(get_args([]))  # a flag newer than the run counts as its default
    changed = [f"--{k} {old.get(k, defaults.get(k))} -> {v}" for k, v in vars(args).items()
               if k not in RESUMABLE_CHANGES and old.get(k, defaults.get(k)) != v]
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


def template_of(args, say):
    """The checkpoint's crop_template: where the five landmarks sit on average in the training crops
    (predict.py warps detected faces onto it), or None when the training index has no landmarks."""
    template, n = crop_template(args.train_meta, root=args.root, progress=say.enabled and sys.stderr.isatty())
    if template is None:
        if args.align == "template":
            raise TrainError(f"--align template: no landmarks in {', '.join(args.train_meta)}; add five per image "
                             f"with metadata_parallel.py --detect_landmarks")
        say("crop template: none (no landmarks in the training index); predict.py will crop the detector's box "
            "with a margin")
    else:
        say(f"crop template from the landmarks of {n} training images: eyes at "
            f"({template[0][0]:.3f}, {template[0][1]:.3f}), ({template[1][0]:.3f}, {template[1][1]:.3f}) of the crop")
    return template


# --- model --------------------------------------------------------------------------------------
def build_model(args, say, class_names=CLASS_NAMES):
    """The initial model, loaded as the flags ask, with a line saying exactly what was loaded."""
    if args.init_from:
        return model_initialised_from(args.init_from, args.arch, class_names, say, args.img_size)
    if args.no_pretrained:
        stages = FAMILIES[args.arch].stages
        frozen = trainable_blocks(0, args.freeze_epochs, args.unfreeze_all_at, stages) is not None
        say(f"{args.arch}: random initialisation (--no_pretrained); " +
            ("warning: the schedule you gave keeps the layers before the last stage(s) frozen at their random "
             "values until --unfreeze_all_at" if frozen else "every layer trains from the first epoch"))
        return FERNet(args.arch, class_names, img_size=args.img_size)
    if args.weights:
        model = FERNet(args.arch, class_names, img_size=args.img_size)
        missing = load_backbone_weights(model.backbone, as_state_dict(read_weights(args.weights), args.weights),
                                        f"--weights {args.weights}", verbose=bool(say.enabled))
        if len(missing) == sum(not k.endswith("num_batches_tracked") for k in model.backbone.state_dict()):
            raise TrainError(f"--weights {args.weights}: none of its tensors fits a {args.arch} backbone "
                             f"(names and shapes as in torchvision's {args.arch})")
        return model
    path = Path(args.vggface2_ckpt or DEFAULT_VGGFACE2)
    if args.arch not in RESNETS:
        model = FERNet(args.arch, class_names, img_size=args.img_size)
        load_backbone_weights(model.backbone, imagenet_state_dict(args.arch), "ImageNet", verbose=bool(say.enabled))
        return model
    if path.is_file():
        caffe = args.vggface2_layout == "caffe"
        if caffe and args.arch != "resnet50":
            raise TrainError("VGGFace2 weights in the Caffe layout are for resnet50; use --arch resnet50 or "
                             "--vggface2_layout torchvision")
        model = FERNet(args.arch, class_names, input_format="caffe_bgr" if caffe else "imagenet")
        missing = load_backbone_weights(model.backbone, as_state_dict(read_weights(path), path),
                                        f"VGGFace2 ({path})", verbose=bool(say.enabled))
        if missing:
            try:
                still = load_backbone_weights(model.backbone, {k: v for k, v in imagenet_state_dict(args.arch).items()
                                                               if k in missing}, "ImageNet", verbose=False)
                say(f"ImageNet: filled {len(missing) - len(still)} of the {len(missing)} tensors not in {path.name}")
            except CheckpointError:
                say(f"warning: ImageNet weights unavailable; {len(missing)} backbone tensors keep random init")
        say(f"input: {'BGR 0-255 minus the VGGFace2 mean (converted inside the model)' if caffe else 'ImageNet-normalised RGB'}")
        return model
    if args.vggface2_ckpt is not None:
        raise TrainError(f"--vggface2_ckpt {path}: file not found")
    say(f"{path} not found: starting from ImageNet weights (see weight/README.md for VGGFace2)")
    model = FERNet(args.arch, class_names)
    load_backbone_weights(model.backbone, imagenet_state_dict(args.arch), "ImageNet", verbose=bool(say.enabled))
    return model


def trainable_blocks(epoch, freeze_epochs, unfreeze_all_at, stages=FAMILIES["resnet50"].stages):
    """Backbone blocks that train in a (0-based) epoch: the family's last stage, then its last two
    (stages from FER_model.FAMILIES); None means all of them. In the epochs as printed (from 1): epochs
    1..freeze_epochs train the last stage, and from epoch unfreeze_all_at on everything trains."""
    if unfreeze_all_at is not None and epoch + 1 >= unfreeze_all_at:
        return None
    return stages[-1] if epoch < freeze_epochs else stages[-2] + stages[-1]


def schedule_text(epochs, freeze_epochs, unfreeze_all_at, stages=FAMILIES["resnet50"].stages):
    """The fine-tuning stages as epoch ranges, e.g. "epochs 1-3 layer4, 4-9 layer3+layer4, 10-100 all"."""
    # The stage changes only where freezing ends or everything unfreezes: no loop over the epochs (--epochs 10**9)
    starts = sorted(e for e in {1, freeze_epochs + 1, unfreeze_all_at or 1} if 1 <= e <= epochs)
    ranges = []
    for start, end in zip(starts, starts[1:] + [epochs + 1]):
        name = stage_label(trainable_blocks(start - 1, freeze_epochs, unfreeze_all_at, stages))
        if ranges and ranges[-1][0] == name:
            ranges[-1][2] = end - 1
        else:
            ranges.append([name, start, end - 1])
    return "epochs " + ", ".join(f"{a}{f'-{b}' if b > a else ''} {name}" for name, a, b in ranges)


def apply_freezing(model, blocks):
    """Set requires_grad per backbone block; returns the frozen modules (kept in eval mode while training)."""
    return freeze_backbone(model, blocks)


def stage_label(blocks):
    """The history's name of a training stage: layer4, layer3+layer4, features.6..8, all."""
    if blocks is None:
        return "all"
    return "+".join(blocks) if len(blocks) <= 2 else f"{blocks[0]}..{blocks[-1].rsplit('.', 1)[-1]}"


def train_mode(model, frozen):
    """model.train(), except frozen blocks stay in eval mode so their BatchNorm statistics do not move."""
    model.train()
    for m in frozen:
        m.eval()


def class_weights(labels, num_classes=len(CLASS_NAMES)):
    """Inverse class frequency, N / (K * n_c), normalised so a balanced set gets weight 1; 0 for absent classes."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    w = np.zeros(num_classes)
    w[counts > 0] = len(labels) / (num_classes * counts[counts > 0])
    return torch.tensor(w, dtype=torch.float32)


# --- one epoch ----------------------------------------------------------------------------------
def train_step(model, x, y_cls, y_reg, optimizer, scaler, criterion, amp_dtype=None):
    """Forward under autocast (amp_dtype None: float32), loss in float32, scaled backward, step."""
    with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        logits, va = model(x)
    loss = criterion(logits.float(), va.float(), y_cls, y_reg)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss, logits


def stop_if_nonfinite(first_bad, epoch, amp_dtype, lr):
    """Raise at the first step whose loss was NaN or inf (first_bad: a device scalar, -1 if none)."""
    if dist.is_initialized():
        dist.all_reduce(first_bad, op=dist.ReduceOp.MAX)
    step = int(first_bad)
    if step >= 0:
        cause = ("fp16 overflow (try --amp_dtype bf16) or " if amp_dtype == torch.float16 else "") + \
            f"a learning rate too high for this batch size (--lr {lr:g})"
        raise TrainError(f"non-finite loss at epoch {epoch + 1}, step {step + 1}: likely {cause}; "
                         f"nothing of this epoch was saved")


def train_one_epoch(model, loader, optimizer, scaler, criterion, device, amp_dtype, steps, show, epoch=0,
                    step_losses=None, ema=None, mix=None):
    """Returns mean loss, accuracy, images/s and the share of wall time spent waiting for data.
    Stops with a TrainError at the first non-finite loss. step_losses: a list that receives each step's
    loss as a device scalar (read once after the epoch, for TensorBoard); ema: updated after every step;
    mix: a BatchMix applied to every batch (accuracy is counted on the unmixed labels)."""
    sums = torch.zeros(3, device=device, dtype=torch.float64)  # loss * n, correct, n: one sync per epoch
    first_bad = torch.full((), -1, device=device, dtype=torch.long)
    wait, start = 0.0, time.perf_counter()
    bar = tqdm(total=steps or len(loader), desc="train", unit="batch", disable=not show, leave=False)
    end = start
    for step, batch in enumerate(loader):
        if steps is not None and step >= steps:
            break
        wait += time.perf_counter() - end
        x = batch["image"].to(device, non_blocking=True)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        y_cls = batch["y_cls"].to(device, non_blocking=True)
        y_reg = batch["y_reg"].to(device, non_blocking=True)
        x, target, y_reg = mix(x, y_cls, y_reg) if mix else (x, y_cls, y_reg)
        loss, logits = train_step(model, x, target, y_reg, optimizer, scaler, criterion, amp_dtype)
        if ema is not None:
            ema.update_parameters(unwrap(model))
        with torch.no_grad():
            n = y_cls.numel()
            sums += torch.stack([loss.detach().double() * n, (logits.argmax(1) == y_cls).sum().double(),
                                 torch.tensor(n, device=device, dtype=torch.float64)])
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), step, first_bad)
        if step_losses is not None:
            step_losses.append(loss.detach())
        if (step + 1) % NONFINITE_CHECK_EVERY == 0:
            stop_if_nonfinite(first_bad, epoch, amp_dtype, optimizer.param_groups[0]["lr"])
        bar.update()
        end = time.perf_counter()
    bar.close()
    stop_if_nonfinite(first_bad, epoch, amp_dtype, optimizer.param_groups[0]["lr"])
    if dist.is_initialized():
        dist.all_reduce(sums)
    loss_sum, correct, n = sums.tolist()
    elapsed = time.perf_counter() - start
    return {"train_loss": loss_sum / max(n, 1), "train_acc": correct / max(n, 1),
            "img_per_s": n / elapsed, "data_wait": wait / elapsed}


def make_criterion(weights, device):
    """Cross-entropy + REG_WEIGHT x MSE over the valence/arousal values that exist (NaN: the dataset has
    none, e.g. RAF-DB), so classification-only and joint datasets train with the same loss."""
    ce = nn.CrossEntropyLoss(weight=None if weights is None else weights.to(device), label_smoothing=LABEL_SMOOTHING)

    def criterion(logits, va, y_cls, y_reg):
        has = ~torch.isnan(y_reg)  # no .any() here: that would sync the device every step
        sq = torch.where(has, va - torch.nan_to_num(y_reg), torch.zeros_like(va)) ** 2
        return ce(logits, y_cls) + REG_WEIGHT * sq.sum() / has.sum().clamp(min=1)
    return criterion


def validate(model, loader, criterion, device, amp_dtype, world, show):
    out = gather_predictions(predict_batches(model, loader, device, amp_dtype, progress=show, desc="val"), world)
    if not (np.isfinite(out["logits"]).all() and np.isfinite(out["va"]).all()):
        raise TrainError("validation predictions are not finite: the weights diverged; nothing of this epoch was saved")
    logits, va = torch.from_numpy(out["logits"]), torch.from_numpy(out["va"])
    y_cls, y_reg = torch.from_numpy(out["y_cls"]), torch.from_numpy(out["y_reg"])
    loss = float(criterion(logits.to(device), va.to(device), y_cls.to(device), y_reg.to(device)))
    has_va = ~np.isnan(out["y_reg"]).any(1)
    rmse = M.rmse(out["y_reg"][has_va], out["va"][has_va]) if has_va.any() else \
        dict.fromkeys(("combined", "valence", "arousal"), float("nan"))  # the same code as eval_resnet50.py
    ccc = [M.ccc(out["y_reg"][has_va, k].astype(np.float64),
                 M.clip_va(out["va"][has_va, k].astype(np.float64))) if has_va.any() else None
           for k in (0, 1)]
    return {"val_loss": loss, "val_acc": M.accuracy(out["y_cls"], out["logits"].argmax(1)),
            "val_f1_macro": M.f1_macro(out["y_cls"], out["logits"].argmax(1)),
            "val_rmse": rmse["combined"], "val_rmse_valence": rmse["valence"], "val_rmse_arousal": rmse["arousal"],
            "val_ccc_valence": float("nan") if ccc[0] is None else ccc[0],
            "val_ccc_arousal": float("nan") if ccc[1] is None else ccc[1]}


# --- outputs ------------------------------------------------------------------------------------
def write_history(history, paths, stage):
    with open(stage(paths["history"]), "w", newline="") as fh:
        # Every key of every row: a run resumed from an older version adds columns.
        writer = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k for h in history for k in h)))
        writer.writeheader()
        writer.writerows(history)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] for h in history]
    panels = [("loss", ("train_loss", "val_loss", "ema_val_loss")), ("accuracy", ("train_acc", "val_acc", "ema_val_acc")),
              ("RMSE (valence/arousal)", ("val_rmse", "val_rmse_valence", "val_rmse_arousal", "ema_val_rmse"))]
    # Only series with data: no empty RMSE panel for a classification-only run, no legend entry without a line.
    panels = [(title, [k for k in keys if any(h.get(k) == h.get(k) and h.get(k) is not None for h in history)])
              for title, keys in panels]
    panels = [(title, keys) for title, keys in panels if keys]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels):
        for k in keys:
            ax.plot(epochs, [h[k] for h in history], marker="o", ms=3, label=k)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs only
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=len(keys), frameon=False)  # below
    fig.tight_layout()
    fig.savefig(stage(paths["curves"]), dpi=110, bbox_inches="tight")
    plt.close(fig)


def save_epoch(paths, model, args, state, row, better_acc, optimizer, scheduler, scaler, fields, ema=None,
               carried_best=None):
    """The epoch's checkpoints, history, curves, run record and config, replaced together or not at all.
    fields: what every checkpoint records besides the weights (run record, heads trained, crop template).
    The best checkpoint holds the weights --best_on chose; the last one both, to resume. carried_best: an
    earlier best checkpoint (a resume into another --save_path), copied when this epoch is not better."""
    meta = dict(epoch=row["epoch"], metrics={k: v for k, v in row.items() if k.startswith(("val", "ema_val"))},
                args=vars(args), **fields)
    with staged_outputs() as stage:
        write_json(fields["run"], stage(paths["run"]))
        write_config(args, stage(paths["config"]))
        if better_acc:
            best = ema.module if args.best_on == "ema" else model
            save_checkpoint(checkpoint_payload(best, args.img_size, **meta), paths["best"], stage)
        elif carried_best is not None:
            shutil.copyfile(carried_best, stage(paths["best"]))
        extra = {"ema": ema.state_dict()} if ema is not None else {}
        save_checkpoint(checkpoint_payload(model, args.img_size, optimizer=optimizer.state_dict(),
                                           scheduler=scheduler.state_dict(), scaler=scaler.state_dict(),
                                           train_state=state, **extra, **meta), paths["last"], stage)
        write_history(state["history"], paths, stage)


def seed_epoch(seed, epoch):
    """Re-seed every RNG from (seed, epoch), so a resumed run continues exactly like an uninterrupted one."""
    s = seed * 1_000_003 + epoch
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


class Say:
    """print() on rank 0 only."""

    def __init__(self, enabled):
        self.enabled = enabled

    def __call__(self, *a, **k):
        if self.enabled:
            print(*a, **k, flush=True)


def fmt(x, spec=".4f"):
    return "n/a" if x != x else format(x, spec)


def make_scheduler(optimizer, epochs, warmup_epochs):
    """Cosine annealing over the epochs, after --warmup_epochs of linear warm-up from lr/(N+1)."""
    if not warmup_epochs:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, 1 / (warmup_epochs + 1), total_iters=warmup_epochs)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs - warmup_epochs)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_epochs])


def make_ema(model, decay):
    """The exponential moving average of the weights and buffers (BatchNorm statistics), starting at the
    current weights: after step t, ema = decay * ema + (1 - decay) * weights."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    ema.update_parameters(model)  # the first update copies: the average starts at the initial weights
    return ema


def training_dtype(args, device):
    """The autocast dtype of the training step (None: float32), or one line saying why it cannot run."""
    if device.type == "cuda":
        return getattr(torch, AMP_DTYPES[args.amp_dtype])
    if args.amp_dtype != "bf16":
        return None  # CPU default: float32
    try:
        supported = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):
        supported = False
    if not supported:
        raise TrainError("--amp_dtype bf16: this CPU has no bfloat16 instructions (AVX512-BF16 or AMX); "
                         "train in float32 (leave out --amp_dtype)")
    return torch.bfloat16


# --- main ---------------------------------------------------------------------------------------
def make_loaders(args, train_ds, val_ds, rank, world, cuda):
    use_class_weights = not args.balanced_sampling or args.keep_class_weights
    weights = class_weights(train_ds.labels, len(train_ds.classes)) if use_class_weights else None
    counts = np.bincount(train_ds.labels, minlength=len(train_ds.classes))
    sample_weights = 1.0 / counts[train_ds.labels] if args.balanced_sampling else None
    workers = args.num_workers
    if workers is None:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        workers = 0 if platform.system() == "Windows" else min(16, max(1, (os.cpu_count() or 1) // local_world))
    loader_kw = dict(num_workers=workers, pin_memory=cuda, persistent_workers=workers > 0,
                     prefetch_factor=args.prefetch_factor if workers > 0 else None)
    sampler = TrainSampler(len(train_ds), sample_weights, rank, world, args.seed)
    # Own generator: creating the loader iterator must not consume the global RNG (exact resume).
    train_loader = DataLoader(train_ds, args.batch_size, sampler=sampler, generator=torch.Generator(), **loader_kw)
    val_sampler = DistributedSampler(val_ds, world, rank, shuffle=False) if world > 1 else None
    val_loader = DataLoader(val_ds, args.batch_size, sampler=val_sampler, shuffle=False, **loader_kw)
    return train_loader, val_loader, sampler, weights, workers


def train(args, rank, world, device, command=None):
    say = Say(rank == 0)
    paths = output_paths(args.save_path)
    cuda = device.type == "cuda"
    amp_dtype = training_dtype(args, device)
    precision = "float32" if amp_dtype is None else f"{'mixed precision ' if cuda else ''}{args.amp_dtype}"
    if cuda:
        torch.backends.cudnn.benchmark = not args.deterministic
        torch.backends.cudnn.deterministic = args.deterministic
    seed_epoch(args.seed, -1)

    class_names = classes_in(args.train_meta)  # the head: the classes present in the training index(es)
    if len(class_names) < 2:
        raise TrainError(f"{', '.join(args.train_meta)}: {len(class_names)} expression class(es) with labels 0-7; "
                         f"at least 2 are needed")
    resumed = check_resume(args.resume, args, class_names) if args.resume else None
    carried_best = earlier_best(args, resumed) if resumed else None
    template = template_of(args, say)
    align = template if args.align == "template" else None
    train_ds = FERDataset(args.train_meta, train=True, size=args.img_size, root=args.root, classes=class_names,
                          verbose=rank == 0, template=align)
    val_ds = FERDataset(args.val_meta, train=False, size=args.img_size, root=args.root, classes=class_names,
                        verbose=rank == 0, template=align)
    counted_twice(args.train_meta + args.val_meta, train_ds.faces(), val_ds.faces(),
                  "in both training (--train_meta) and validation (--val_meta)")
    if align is not None:
        say(f"--align template: {len(train_ds) - train_ds.unaligned} training and {len(val_ds) - val_ds.unaligned} "
            f"validation images warped onto the template; {train_ds.unaligned + val_ds.unaligned} without "
            f"landmarks keep the dataset's crop")
    for metas, ds in ((args.train_meta, train_ds), (args.val_meta, val_ds)):
        if len(ds) == 0:
            raise TrainError(f"{', '.join(metas)}: no rows left after filtering (labels of the trained classes "
                             f"{', '.join(class_names)} with valid values)")
    counts = np.bincount(train_ds.labels, minlength=len(class_names))
    say("train classes: " + ", ".join(f"{c} {n}" for c, n in zip(class_names, counts)))
    # Recorded in the checkpoint, so that predict.py and the ONNX export can say a head never trained.
    heads_trained = {"expression": True, "valence_arousal": bool(np.isfinite(train_ds.va).any())}
    if not heads_trained["valence_arousal"]:
        say("valence/arousal: no labels in the training index(es): that head does not train, and the checkpoint "
            "says so (predict.py leaves its columns empty)")
    train_loader, val_loader, sampler, weights, workers = make_loaders(args, train_ds, val_ds, rank, world, cuda)

    model = build_model(args, say, class_names).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(param_groups(model, args.lr, args.layer_decay), lr=args.lr,
                                  weight_decay=args.weight_decay)
    scheduler = make_scheduler(optimizer, args.epochs, args.warmup_epochs)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    criterion = make_criterion(weights, device)
    ema = make_ema(model, args.ema) if args.ema else None
    mix = BatchMix(len(class_names), args.mixup, args.cutmix) if args.mixup or args.cutmix else None
    state = {"epoch": 0, "best_acc": -1.0, "best_rmse": math.inf, "bad_epochs": 0, "stopped": False, "history": [],
             "steps": 0}
    if resumed:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        scaler.load_state_dict(resumed["scaler"])
        if ema is not None:
            ema.load_state_dict(resumed["ema"])
        state = resumed["train_state"]
        say(f"resumed from {args.resume} after epoch {state['epoch']}")
        if state["stopped"] or state["epoch"] >= args.epochs:
            say("that run is already complete; nothing to do")
            return
    run = RunRecord(args, command or command_line(__file__), device, world, precision,
                            {"train": data_record(train_ds), "val": data_record(val_ds)},
                            {k: paths[k].name for k in ("best", "last", "history", "curves", "config")},
                            previous=resumed.get("run") if resumed else None)
    tb_dir = tensorboard_dir(args)
    run.record["outputs"]["tensorboard"] = None if tb_dir is None else os.path.relpath(tb_dir, paths["run"].parent)
    tensorboard = TensorBoardLog(tb_dir if rank == 0 else None, purge_step=state.setdefault("steps", 0))

    show = rank == 0 and sys.stderr.isatty()
    plan = schedule_text(args.epochs, args.freeze_epochs, args.unfreeze_all_at, FAMILIES[args.arch].stages)
    say(f"schedule: {plan} "
        f"(--freeze_epochs {args.freeze_epochs}, --unfreeze_all_at {args.unfreeze_all_at or 'none'})")
    say(f"training on {device}{f' x{world}' if world > 1 else ''}, {precision}, {len(train_ds)} train / "
        f"{len(val_ds)} val images, batch {args.batch_size}{f' x{world}' if world > 1 else ''}, {workers} loader workers")
    train_model, stage = None, "unset"
    for epoch in range(state["epoch"], args.epochs):
        t0 = time.time()
        blocks = trainable_blocks(epoch, args.freeze_epochs, args.unfreeze_all_at, FAMILIES[args.arch].stages)
        if blocks != stage:  # requires_grad changed: DDP must be rebuilt to see the new set
            stage, frozen = blocks, apply_freezing(model, blocks)
            train_model = DistributedDataParallel(model, device_ids=[device.index] if cuda else None) \
                if world > 1 else model
            if args.compile:
                train_model = torch.compile(train_model)
        seed_epoch(args.seed, epoch)
        sampler.set_epoch(epoch)
        train_mode(model, frozen)
        step_losses = []
        stats = train_one_epoch(train_model, train_loader, optimizer, scaler, criterion, device, amp_dtype,
                                args.steps_per_epoch, show, epoch, step_losses, ema, mix)
        stats.update(validate(model, val_loader, criterion, device, amp_dtype, world, show))
        if ema is not None:
            stats.update({f"ema_{k}": v for k, v in validate(ema.module, val_loader, criterion, device, amp_dtype,
                                                              world, show).items()})
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()

        key = "ema_val" if args.best_on == "ema" else "val"  # the weights that pick the best checkpoint
        better_acc = stats[f"{key}_acc"] > state["best_acc"]
        better_rmse = stats[f"{key}_rmse"] < state["best_rmse"]
        state["best_acc"] = max(state["best_acc"], stats[f"{key}_acc"])
        state["best_rmse"] = min(state["best_rmse"], stats[f"{key}_rmse"])
        state["bad_epochs"] = 0 if better_acc or better_rmse else state["bad_epochs"] + 1
        state["epoch"] = epoch + 1
        state["stopped"] = state["bad_epochs"] >= args.patience
        stage_name = stage_label(blocks)
        row = {"epoch": epoch + 1, "lr": lr, "trainable": stage_name, **stats, "time_s": time.time() - t0}
        state["history"].append(row)
        tensorboard.epoch(row, torch.stack(step_losses).tolist() if step_losses else [], state["steps"])
        state["steps"] += len(step_losses)
        if rank == 0:
            best = ema.module if args.best_on == "ema" else model
            run.update(state, best.state_dict() if better_acc else None)
            save_epoch(paths, model, args, state, row, better_acc, optimizer, scheduler, scaler,
                       dict(run=run.record, heads_trained=heads_trained, crop_template=template), ema, carried_best)
            carried_best = None  # copied, or replaced by a better epoch
        say(f"epoch {epoch + 1}/{args.epochs} [{stage_name}] lr {lr:.2e} | train loss {stats['train_loss']:.4f} "
            f"acc {stats['train_acc']:.4f} | val loss {stats['val_loss']:.4f} acc {stats['val_acc']:.4f} "
            f"rmse {fmt(stats['val_rmse'])} (V {fmt(stats['val_rmse_valence'], '.3f')} "
            f"A {fmt(stats['val_rmse_arousal'], '.3f')}) | "
            + (f"EMA acc {stats['ema_val_acc']:.4f} rmse {fmt(stats['ema_val_rmse'])} | " if ema is not None else "")
            + f"{stats['img_per_s']:.0f} img/s, data wait {100 * stats['data_wait']:.0f}% | {precision} | "
            f"{row['time_s']:.0f}s"
            f"{' | best, saved' if better_acc else ''}")
        if state["stopped"]:
            say(f"early stopping: neither validation accuracy nor RMSE improved for {args.patience} epochs")
            break
    tensorboard.finish(run.record)
    say(f"best validation accuracy{' (EMA weights)' if args.best_on == 'ema' else ''} {state['best_acc']:.4f}; "
        f"checkpoint {paths['best']}, history {paths['history']}, "
        f"curves {paths['curves']}, run record {paths['run']}, config {paths['config']}"
        + (f", TensorBoard {tb_dir}" if tb_dir is not None else ""))


def interrupted_message(args, argv, last_before):
    """What Ctrl-C leaves: the epochs saved and how to resume, or that nothing was saved and the command
    that starts again (a --resume of a file this run never wrote would fail or continue an older run)."""
    last = output_paths(args.save_path)["last"]
    saved = last.exists() and (last_before is None or last.stat().st_mtime_ns != last_before)
    if saved or args.resume:
        return (f"interrupted: every epoch reported above is saved; resume with: "
                f"--resume {last if saved else args.resume}")
    command = shlex.join([Path(__file__).name, *(sys.argv[1:] if argv is None else argv)])
    earlier = f" (the earlier run's files at {args.save_path} are unchanged)" if last_before is not None else ""
    return (f"interrupted before the first epoch finished: nothing was saved{earlier}; start again with: "
            f"python {command}")


def main(argv=None):
    args = get_args(argv)
    code, rank = 0, 0
    last = output_paths(args.save_path)["last"]
    last_before = last.stat().st_mtime_ns if last.is_file() else None
    try:
        preflight(args)
        rank, world, device = setup_distributed(args.device)
        train(args, rank, world, device, command_line(__file__, argv))
    except KeyboardInterrupt:
        if rank == 0:
            print("\n" + interrupted_message(args, argv, last_before), file=sys.stderr)
        code = 130
    except torch.OutOfMemoryError:
        if rank == 0:
            print(f"error: out of GPU memory at --batch_size {args.batch_size} --img_size {args.img_size}; "
                  f"try a smaller --batch_size or --img_size", file=sys.stderr)
        code = 1
    except FERError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        code = 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    sys.exit(code)


if __name__ == "__main__":
    main()
