"""Where a training run came from, and its live curves.

- The run record (`<stem>_run.json` beside the checkpoint, and the same dict in the checkpoint under
  `run`): command line, resolved flags (`args`) and the flags given (`given`, as <stem>_config.yaml
  holds them; set by fer.training.loop.train), times, code version, library versions, device, and a
  fingerprint of the data rows used, so two runs on different data are never taken for one experiment.
- TensorBoard scalars (rank 0 only), behind a small logger that does nothing without --tensorboard.
"""
import json
import platform
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np

from fer.constants import COLLAPSE_SHARE
from fer.data.leakage import card_records
from fer.model.checkpoint import weights_fingerprint
from fer.trust import FERError

RECORD_VERSION = 1

VERSIONED = ("torch", "torchvision", "albumentations", "numpy")


# --- the environment ----------------------------------------------------------------------------
def git_state(folder=Path(__file__).resolve().parents[2]):
    """{"commit", "dirty"} of the code's checkout, or "not a git checkout"."""
    try:
        head = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=20)
        if head.returncode:
            return "not a git checkout"
        status = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return "not a git checkout (git not available)"
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}


def versions():
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def cpu_name():
    try:
        with open("/proc/cpuinfo") as fh:
            return next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine() or "cpu"


def device_record(device, world):
    if device.type == "cuda":
        import torch

        return {"type": "cuda", "name": torch.cuda.get_device_name(device), "count": world}
    return {"type": "cpu", "name": cpu_name(), "count": world}


def command_line(script, argv=None):
    """The command as typed (arguments quoted for a shell)."""
    argv = sys.argv[1:] if argv is None else argv
    return shlex.join([Path(script).name, *map(str, argv)])


def now():
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --- the run record -----------------------------------------------------------------------------
class RunRecord:
    """The record of one training run, across resumes: created at the start, brought up to date at
    every saved epoch (the caller stages it with the epoch's other outputs)."""

    def __init__(self, args, command, device, world, precision, data, outputs, previous=None):
        self.session_start = time.time()
        session = {"command": command, "started": now()}
        if previous:
            changed = [f"{split} {new['path']}" for split in ("train", "val")
                       for old, new in zip(previous.get("data", {}).get(split, []), data[split])
                       if old.get("fingerprint") != new["fingerprint"]]
            if changed:
                raise FERError(f"{changed[0]}: its rows changed since the run started (fingerprint differs); "
                               f"a resumed run must see the same data: start a new run instead")
            self.record = previous
            self.earlier_wall = previous.get("wall_time_s", 0.0)
            self.record["sessions"] = previous.get("sessions", []) + [session]
            self.record["outputs"] = outputs  # a resume into another --save_path names its own files
            self.record.update(args=dict(vars(args)), git=git_state(), versions=versions(),
                               device=device_record(device, world), world_size=world, precision=precision,
                               protocol_card=protocol_cards(data))
            return
        self.earlier_wall = 0.0
        self.record = {
            "version": RECORD_VERSION, "command": command, "args": dict(vars(args)), "started": now(), "ended": None,
            "wall_time_s": 0.0, "epochs": 0, "best_epoch": None, "best": {}, "img_per_s": None,
            "git": git_state(), "versions": versions(), "device": device_record(device, world), "world_size": world,
            "precision": precision, "data": data, "outputs": outputs, "checkpoint_fingerprint": None,
            "sessions": [session], "protocol_card": protocol_cards(data)}

    def update(self, state, best_weights=None):
        """After an epoch: times, best epoch and its validation metrics, mean images/s. The best epoch and
        `best` are those of the weights --best_on names (`best_on`), as training picks them; with --ema
        `best_raw` / `best_ema` hold both weights' metrics at that epoch."""
        history = state["history"]
        best_on = self.record["args"].get("best_on") or "raw"
        best = max(history, key=lambda h: chosen(h, best_on).get("val_acc", -1.0))  # the first of equals, as training
        r = self.record
        r["ended"] = r["sessions"][-1]["ended"] = now()
        r["wall_time_s"] = self.earlier_wall + time.time() - self.session_start
        r["epochs"] = state["epoch"]
        r["best_epoch"] = best["epoch"]
        r["best_on"] = best_on
        r["best"] = chosen(best, best_on)
        if any(k.startswith("ema_val") for k in best):
            r["best_raw"], r["best_ema"] = chosen(best, "raw"), chosen(best, "ema")
        share = r["best"].get("val_top_share")  # one class takes (almost) every prediction: a collapsed model
        r["collapse"] = {"class": r["best"].get("val_top_class"), "share": share, "threshold": COLLAPSE_SHARE,
                         "epoch": best["epoch"]} if share is not None and share > COLLAPSE_SHARE else None
        r["img_per_s"] = float(np.mean([h["img_per_s"] for h in history]))
        r["stopped_early"] = bool(state.get("stopped"))
        if best_weights is not None:
            r["checkpoint_fingerprint"] = weights_fingerprint(best_weights)
        return r


def chosen(row, best_on):
    """The validation metrics of one epoch (a history row) of the weights best_on names ("raw" or "ema"), as
    val_* keys: the numbers that count for that run (best epoch, checkpoint, console, compare_runs.py)."""
    prefix = "ema_val" if best_on == "ema" else "val"
    return {k[len(prefix) - 3:]: v for k, v in row.items() if k.startswith(prefix)}


def protocol_cards(data):
    """{split: the protocol card beside each index file (fingerprint, rows, duplicates across splits)}: the
    index's leakage guard, copied into the run record (fer.data.leakage)."""
    return {split: card_records([d["path"] for d in records]) for split, records in data.items()}


def run_record_path(save_path):
    return Path(f"{Path(save_path).with_suffix('')}_run.json")


def json_safe(obj):
    """NaN and inf (e.g. the CCC of a set without valence/arousal) as null: strict JSON readers refuse them."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json(obj, path):
    Path(path).write_text(json.dumps(json_safe(obj), indent=2, default=str, allow_nan=False) + "\n")


# --- TensorBoard --------------------------------------------------------------------------------
class TensorBoardLog:
    """TensorBoard scalars of a run; a no-op when folder is None (no --tensorboard, or not rank 0).

    purge_step: the first step this session writes (0 for a fresh run, the steps done for a resume), so
    TensorBoard hides anything an earlier, replaced or interrupted session wrote from there on."""

    def __init__(self, folder, purge_step=0):
        self.folder, self.purge_step, self._writer = folder, purge_step, None

    @property
    def writer(self):
        """Opened at the first write: a run that fails before its first epoch leaves no folder behind."""
        if self._writer is None and self.folder is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.folder), purge_step=self.purge_step)
        return self._writer

    def epoch(self, row, step_losses, first_step):
        """The epoch's per-step losses and learning rate, then its per-epoch metrics."""
        if self.writer is None:
            return
        w, epoch = self.writer, row["epoch"]
        for k, loss in enumerate(step_losses):
            w.add_scalar("step/train_loss", loss, first_step + k)
            w.add_scalar("step/lr", row["lr"], first_step + k)
        for key, tag in (("train_loss", "loss/train"), ("val_loss", "loss/val"), ("train_acc", "accuracy/train"),
                         ("val_acc", "accuracy/val"), ("val_f1_macro", "f1_macro/val"), ("val_rmse", "rmse/val"),
                         ("val_rmse_valence", "rmse/val_valence"), ("val_rmse_arousal", "rmse/val_arousal"),
                         ("val_ccc_valence", "ccc/val_valence"), ("val_ccc_arousal", "ccc/val_arousal"),
                         ("img_per_s", "speed/img_per_s"), ("data_wait", "speed/data_wait_share"),
                         ("ema_val_loss", "loss/val_ema"), ("ema_val_acc", "accuracy/val_ema"),
                         ("ema_val_f1_macro", "f1_macro/val_ema"), ("ema_val_rmse", "rmse/val_ema"),
                         ("ema_val_ccc_valence", "ccc/val_ema_valence"), ("ema_val_ccc_arousal", "ccc/val_ema_arousal")):
            if key in row and row[key] == row[key]:  # NaN (no valence/arousal labels) is left out
                w.add_scalar(tag, row[key], epoch)
        w.flush()

    def finish(self, record):
        """The flags with the best validation metrics, for TensorBoard's HParams tab."""
        if self.writer is None:
            return
        hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in record["args"].items()}
        best = {f"hparam/best_{k}": float(v) for k, v in record["best"].items()
                if isinstance(v, (int, float)) and v == v}
        self.writer.add_hparams(hparams, best, run_name=".")
        self.writer.close()

    def close(self):
        if self._writer is not None:
            self._writer.close()
