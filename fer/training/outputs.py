"""The files of a training run, written after every epoch and replaced together or not at all:
best and last checkpoints, history CSV, curves, run record and config (names: fer.cli.train.output_paths).
"""
import csv
import shutil

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fer.cli.config import write_config
from fer.model.checkpoint import checkpoint_payload, save_checkpoint
from fer.training.record import chosen, write_json
from fer.trust import staged_outputs


def write_history(history, paths, stage):
    """The per-epoch metrics as <stem>_history.csv and their plots as <stem>_curves.png (staged)."""
    with open(stage(paths["history"]), "w", newline="") as fh:
        # Every key of every row: a run resumed from an older version adds columns.
        writer = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k for h in history for k in h)))
        writer.writeheader()
        writer.writerows(history)
    epochs = [h["epoch"] for h in history]
    panels = [("loss", ("train_loss", "val_loss", "ema_val_loss")), ("accuracy", ("train_acc", "val_acc", "ema_val_acc")),
              ("RMSE (valence/arousal)", ("val_rmse", "val_rmse_valence", "val_rmse_arousal", "ema_val_rmse"))]
    # Only series with data: no empty RMSE panel for a classification-only run, no legend entry without a line.
    panels = [(title, [k for k in keys if any(h.get(k) == h.get(k) and h.get(k) is not None for h in history)])
              for title, keys in panels]
    panels = [(title, keys) for title, keys in panels if keys]
    fig = Figure(figsize=(4.4 * len(panels), 3.6))  # its own canvas: pyplot's backend and figures are left alone
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)
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


def save_epoch(paths, model, args, state, row, better_acc, optimizer, scheduler, scaler, fields, ema=None,
               carried_best=None):
    """The epoch's checkpoints, history, curves, run record and config, replaced together or not at all.
    fields: what every checkpoint records besides the weights (run record, heads trained, crop template).
    The best checkpoint holds the weights --best_on chose; the last one both, to resume. carried_best: an
    earlier best checkpoint (a resume into another --save_path), copied when this epoch is not better.
    The checkpoints' args are the resolved flags; the config holds the flags given (fer.cli.config).
    Their `metrics` are those of the weights --best_on names (`best_on`), which the best checkpoint holds;
    with --ema, `metrics_raw` and `metrics_ema` hold both."""
    meta = dict(epoch=row["epoch"], metrics=chosen(row, args.best_on), best_on=args.best_on, args=vars(args), **fields)
    if ema is not None:
        meta.update(metrics_raw=chosen(row, "raw"), metrics_ema=chosen(row, "ema"))
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
