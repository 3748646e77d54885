"""The training loop: train(args) fine-tunes a multitask FER model (8 expressions + valence/arousal) as
fer.cli.train's flags say, one process or one per GPU under torchrun, the same code.

Read top to bottom: the loss, one training epoch, validation, the loaders, then train() itself, and
run_command(), which is train_vggface2_resnet50.py's main (the rank-aware one-line errors, the Ctrl-C hint).
From a notebook or a test:

    from fer.cli.train import get_args
    from fer.training.loop import train
    train(get_args(["--train_meta", "metadata_train.parquet", "--val_meta", "metadata_val.parquet"]))

What a run starts from (model, resume) is in fer.training.start, the stages and learning rate in
fer.training.schedule, the sampler and process group in fer.training.distributed, the files of every
epoch in fer.training.outputs, the run record in fer.training.record.
"""
import math
import os
import platform
import random
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from fer.cli.config import config_values
from fer.cli.train import AMP_DTYPES, SCRIPT, TrainError, interrupted_message, output_paths, tensorboard_dir
from fer.constants import CLASS_NAMES, COLLAPSE_SHARE, LABEL_SMOOTHING
from fer.data.dataset import FERDataset, classes_in, counted_twice, data_record
from fer.data.transforms import BatchMix
from fer.evaluation import metrics as M
from fer.model.backbones import FAMILIES
from fer.model.forward import predict_batches
from fer.model.net import param_groups, unwrap
from fer.training.distributed import TrainSampler, balanced_weights, gather_predictions, setup_distributed
from fer.training.outputs import save_epoch
from fer.training.record import RunRecord, TensorBoardLog, chosen, command_line, now
from fer.training.sam import SAM
from fer.training.schedule import apply_freezing, make_scheduler, schedule_text, stage_label, train_mode, trainable_blocks
from fer.training.start import build_model, check_resume, earlier_best, template_of
from fer.trust import FERError, check_device, one_line, quiet
from fer.trust import progress as progress_of

REG_WEIGHT = 0.5
NONFINITE_CHECK_EVERY = 16  # steps between looks at the loss: one device sync each time, not every step


class Say:
    """print() on rank 0 only; info() for the set-up lines (what was read and loaded, the schedule), which
    --quiet leaves out: results, warnings and errors are said either way."""

    def __init__(self, enabled):
        self.enabled = enabled

    @property
    def informative(self):
        return self.enabled and not quiet()

    def __call__(self, *a, **k):
        if self.enabled:
            print(*a, **k, flush=True)

    def info(self, *a, **k):
        if self.informative:
            print(*a, **k, flush=True)


def fmt(x, spec=".4f"):
    return "n/a" if x != x else format(x, spec)


def seed_epoch(seed, epoch):
    """Re-seed every RNG from (seed, epoch), so a resumed run continues exactly like an uninterrupted one."""
    s = seed * 1_000_003 + epoch
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


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


# --- the loss -----------------------------------------------------------------------------------
def class_weights(labels, num_classes=len(CLASS_NAMES)):
    """Inverse class frequency, N / (K * n_c), normalised so a balanced set gets weight 1; 0 for absent classes."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    w = np.zeros(num_classes)
    w[counts > 0] = len(labels) / (num_classes * counts[counts > 0])
    return torch.tensor(w, dtype=torch.float32)


def make_criterion(weights, device, label_smoothing=LABEL_SMOOTHING):
    """Cross-entropy (label_smoothing: --label_smoothing) + REG_WEIGHT x MSE over the valence/arousal values
    that exist (NaN: the dataset has none, e.g. RAF-DB), so classification-only and joint datasets train
    with the same loss."""
    ce = nn.CrossEntropyLoss(weight=None if weights is None else weights.to(device), label_smoothing=label_smoothing)

    def criterion(logits, va, y_cls, y_reg):
        has = ~torch.isnan(y_reg)  # no .any() here: that would sync the device every step
        sq = torch.where(has, va - torch.nan_to_num(y_reg), torch.zeros_like(va)) ** 2
        return ce(logits, y_cls) + REG_WEIGHT * sq.sum() / has.sum().clamp(min=1)
    return criterion


def make_ema(model, decay):
    """The exponential moving average of the weights and buffers (BatchNorm statistics), starting at the
    current weights: after step t, ema = decay * ema + (1 - decay) * weights."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    ema.update_parameters(model)  # the first update copies: the average starts at the initial weights
    return ema


# --- one epoch ----------------------------------------------------------------------------------
def train_step(model, x, y_cls, y_reg, optimizer, scaler, criterion, amp_dtype=None, sam=None):
    """Forward under autocast (amp_dtype None: float32), loss in float32, scaled backward, step.
    sam: a fer.training.sam.SAM, which makes the step two forward/backward passes (--sam)."""
    def forward():
        with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits, va = model(x)
        return criterion(logits.float(), va.float(), y_cls, y_reg), logits
    if sam is not None:
        return sam.step(forward, model, scaler)
    loss, logits = forward()
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
                    step_losses=None, ema=None, mix=None, scheduler=None, sam=None):
    """Returns mean loss, accuracy, images/s and the share of wall time spent waiting for data.
    Stops with a TrainError at the first non-finite loss. step_losses: a list that receives each step's
    loss as a device scalar (read once after the epoch, for TensorBoard); ema: updated after every step;
    mix: a BatchMix applied to every batch (accuracy is counted on the unmixed labels); scheduler: stepped
    after every optimizer step (fer.training.schedule.StepSchedule); sam: see train_step."""
    sums = torch.zeros(3, device=device, dtype=torch.float64)  # loss * n, correct, n: one sync per epoch
    first_bad = torch.full((), -1, device=device, dtype=torch.long)
    wait, start = 0.0, time.perf_counter()
    bar = progress_of(total=min(steps or len(loader), len(loader)), desc=f"epoch {epoch + 1} train", unit="batch",
                      disable=not show)
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
        loss, logits = train_step(model, x, target, y_reg, optimizer, scaler, criterion, amp_dtype, sam)
        if scheduler is not None:
            scheduler.step()
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


def validate(model, loader, criterion, device, amp_dtype, world, show, class_names=CLASS_NAMES):
    """Loss, accuracy, macro F1, valence/arousal RMSE and CCC over the validation set (every rank's share), and
    the class predicted most and its share of the predictions (above COLLAPSE_SHARE: a collapsed model)."""
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
    top = np.bincount(out["logits"].argmax(1), minlength=out["logits"].shape[1])
    return {"val_loss": loss, "val_acc": M.accuracy(out["y_cls"], out["logits"].argmax(1)),
            "val_top_class": class_names[int(top.argmax())], "val_top_share": float(top.max() / max(1, top.sum())),
            "val_f1_macro": M.f1_macro(out["y_cls"], out["logits"].argmax(1)),
            "val_rmse": rmse["combined"], "val_rmse_valence": rmse["valence"], "val_rmse_arousal": rmse["arousal"],
            "val_ccc_valence": float("nan") if ccc[0] is None else ccc[0],
            "val_ccc_arousal": float("nan") if ccc[1] is None else ccc[1]}


# --- data ---------------------------------------------------------------------------------------
def make_loaders(args, train_ds, val_ds, rank, world, cuda):
    """(train loader, val loader, train sampler, the loss's class weights or None, loader workers)."""
    use_class_weights = not args.balanced_sampling or args.keep_class_weights
    weights = class_weights(train_ds.labels, len(train_ds.classes)) if use_class_weights else None
    sample_weights = balanced_weights(train_ds.labels, len(train_ds.classes), args.sampling_weights) \
        if args.balanced_sampling else None
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


# --- the run ------------------------------------------------------------------------------------
def extend_or_stop(args, resumed, state, paths, say):
    """A resumed run: {} to continue as planned; for a larger --epochs than the run had, what was extended
    (the schedule is re-planned over the new epochs by fer.training.schedule.StepSchedule, and an early stop
    is lifted); None when the run is complete and nothing is to do, with the commands that continue it."""
    old = int(resumed["args"].get("epochs", args.epochs))
    done, stopped = state["epoch"], state["stopped"]
    if args.epochs > old:
        say(f"--epochs {args.epochs}: extends the run's {old} epochs after epoch {done}"
            + (" (its early stop is lifted)" if stopped else "")
            + "; the cosine learning-rate schedule is re-planned to end at the new last epoch")
        state["stopped"], state["bad_epochs"] = False, 0
        return {"at_epoch": done, "epochs_from": old, "epochs_to": args.epochs, "early_stop_lifted": bool(stopped),
                "started": now()}
    if not (stopped or done >= args.epochs):
        return {}
    why = f"stopped early after epoch {done}" if stopped else f"all {done} epochs done"
    say(f"that run is complete ({why}); nothing to do. To train it further: --resume {args.resume} --epochs "
        f"{max(args.epochs, done) * 2} (more epochs; the schedule is re-planned), or start a new run from its "
        f"best weights: --init_from {paths['best']} --save_path NEW.pth")
    return None


def train(args, rank=0, world=1, device=None, command=None, on_epoch=None):
    """Train as args say (fer.cli.train.get_args; its preflight() checks the paths first), writing every
    epoch's outputs on rank 0. device: None for args.device; command: the command line to record.
    on_epoch: called as on_epoch(row, state) after each epoch is saved (row: the epoch's history row, state:
    the training state), e.g. a sweep's pruning; an exception it raises ends the run there (the epochs
    saved so far stay, as after Ctrl-C)."""
    device = check_device(args.device) if device is None else device
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
                          verbose=rank == 0, template=align, allow_outside_root=getattr(args, "allow_outside_root", False))
    val_ds = FERDataset(args.val_meta, train=False, size=args.img_size, root=args.root, classes=class_names,
                        verbose=rank == 0, template=align, allow_outside_root=getattr(args, "allow_outside_root", False))
    counted_twice(args.train_meta + args.val_meta, train_ds.faces(), val_ds.faces(),
                  "in both training (--train_meta) and validation (--val_meta)")
    if align is not None:
        say.info(f"--align template: {len(train_ds) - train_ds.unaligned} training and {len(val_ds) - val_ds.unaligned} "
            f"validation images warped onto the template; {train_ds.unaligned + val_ds.unaligned} without "
            f"landmarks keep the dataset's crop")
    for metas, ds in ((args.train_meta, train_ds), (args.val_meta, val_ds)):
        if len(ds) == 0:
            raise TrainError(f"{', '.join(metas)}: no rows left after filtering (labels of the trained classes "
                             f"{', '.join(class_names)} with valid values)")
    counts = np.bincount(train_ds.labels, minlength=len(class_names))
    say.info("train classes: " + ", ".join(f"{c} {n}" for c, n in zip(class_names, counts)))
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
    steps_per_epoch = min(len(train_loader), args.steps_per_epoch or len(train_loader))
    scheduler = make_scheduler(optimizer, args.epochs, args.warmup_epochs, steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    criterion = make_criterion(weights, device, args.label_smoothing)
    ema = make_ema(model, args.ema) if args.ema else None
    mix = BatchMix(len(class_names), args.mixup, args.cutmix) if args.mixup or args.cutmix else None
    sam = SAM(optimizer, args.sam, adaptive=args.asam) if args.sam else None
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
        say.info(f"resumed from {args.resume} after epoch {state['epoch']}")
        extension = extend_or_stop(args, resumed, state, paths, say)
        if extension is None:
            return
    run = RunRecord(args, command or command_line(SCRIPT), device, world, precision,
                    {"train": data_record(train_ds), "val": data_record(val_ds)},
                    {k: paths[k].name for k in ("best", "last", "history", "curves", "config")},
                    previous=resumed.get("run") if resumed else None)
    run.record["given"] = config_values(args)  # the flags given, as <stem>_config.yaml holds them
    if args.init_from and not resumed:  # the starting weights by content: a copy elsewhere is the same start
        run.record["init_from"] = {"path": os.path.realpath(args.init_from),
                                   "fingerprint": getattr(model, "init_fingerprint", None)}
    if resumed and extension:
        run.record.setdefault("extensions", []).append(extension)
    tb_dir = tensorboard_dir(args)
    run.record["outputs"]["tensorboard"] = None if tb_dir is None else os.path.relpath(tb_dir, paths["run"].parent)
    tensorboard = TensorBoardLog(tb_dir if rank == 0 else None, purge_step=state.setdefault("steps", 0))

    show = rank == 0  # a bar on a terminal, plain lines in a log (fer.trust.progress); none with --quiet
    plan = schedule_text(args.epochs, args.freeze_epochs, args.unfreeze_all_at, FAMILIES[args.arch].stages)
    say.info(f"schedule: {plan} "
        f"(--freeze_epochs {args.freeze_epochs}, --unfreeze_all_at {args.unfreeze_all_at or 'none'})")
    say.info(f"training on {device}{f' x{world}' if world > 1 else ''}, {precision}, {len(train_ds)} train / "
        f"{len(val_ds)} val images, batch {args.batch_size}{f' x{world}' if world > 1 else ''}, {workers} loader workers")
    train_model, stage = None, "unset"
    try:  # the writer closed however training ends (a sweep's pruned or failed trial goes on in this process)
        for epoch in range(state["epoch"], args.epochs):
            t0 = time.time()
            lr = optimizer.param_groups[0]["lr"]  # at the epoch's first step (the schedule steps every step)
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
                                    args.steps_per_epoch, show, epoch, step_losses, ema, mix, scheduler, sam)
            stats.update(validate(model, val_loader, criterion, device, amp_dtype, world, show, class_names))
            if ema is not None:
                stats.update({f"ema_{k}": v for k, v in validate(ema.module, val_loader, criterion, device, amp_dtype,
                                                                  world, show, class_names).items()})

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
                f"{(' | best' + (' (EMA)' if args.best_on == 'ema' else '') + ', saved') if better_acc else ''}")
            counted = chosen(row, args.best_on)
            if counted["val_top_share"] > COLLAPSE_SHARE:
                say("warning: " + M.collapse_text({"class": counted["val_top_class"], "share": counted["val_top_share"],
                                                   "threshold": COLLAPSE_SHARE}, "validation images"))
            if on_epoch is not None:
                on_epoch(row, state)
            if state["stopped"]:
                say(f"early stopping: neither validation accuracy nor RMSE improved for {args.patience} epochs")
                break
        tensorboard.finish(run.record)
    finally:
        tensorboard.close()
    say(f"best validation accuracy{' (EMA weights, --best_on ema)' if args.best_on == 'ema' else ''} "
        f"{state['best_acc']:.4f} at epoch {run.record.get('best_epoch')}; "
        f"checkpoint {paths['best']}, history {paths['history']}, "
        f"curves {paths['curves']}, run record {paths['run']}, config {paths['config']}"
        + (f", TensorBoard {tb_dir}" if tb_dir is not None else ""))
    if run.record.get("collapse"):
        say("warning: the best epoch's model is collapsed: " + M.collapse_text(run.record["collapse"], "validation images"))


def run_command(args, argv=None, script=SCRIPT):
    """train_vggface2_resnet50.py after its flags and paths are checked: the process group (torchrun), the
    training, and every expected failure as one line (Ctrl-C and out-of-memory on rank 0 only).
    argv: the command line (None: sys.argv), recorded and repeated in the Ctrl-C hint. Returns the exit code."""
    code, rank = 0, 0
    last = output_paths(args.save_path)["last"]
    last_before = last.stat().st_mtime_ns if last.is_file() else None
    try:
        rank, world, device = setup_distributed(args.device)
        train(args, rank, world, device, command_line(script, argv))
    except KeyboardInterrupt:
        if rank == 0:
            print("\n" + interrupted_message(args, argv, last_before, script), file=sys.stderr)
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
    return code
