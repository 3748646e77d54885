"""The training schedule: staged fine-tuning (which backbone blocks train in which epoch) and the
learning rate (linear warm-up, then cosine annealing).

Epochs are 0-based in code and numbered from 1 where printed: epochs 1..freeze_epochs train the
backbone's last stage, later epochs its last two, and from epoch unfreeze_all_at on everything trains.
"""
import torch

from fer.model.backbones import FAMILIES
from fer.model.net import freeze_backbone


def trainable_blocks(epoch, freeze_epochs, unfreeze_all_at, stages=FAMILIES["resnet50"].stages):
    """Backbone blocks that train in a (0-based) epoch: the family's last stage, then its last two
    (stages from fer.model.backbones.FAMILIES); None means all of them. In the epochs as printed (from 1):
    epochs 1..freeze_epochs train the last stage, and from epoch unfreeze_all_at on everything trains."""
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


def stage_label(blocks):
    """The history's name of a training stage: layer4, layer3+layer4, features.6..8, all."""
    if blocks is None:
        return "all"
    return "+".join(blocks) if len(blocks) <= 2 else f"{blocks[0]}..{blocks[-1].rsplit('.', 1)[-1]}"


def apply_freezing(model, blocks):
    """Set requires_grad per backbone block; returns the frozen modules (kept in eval mode while training)."""
    return freeze_backbone(model, blocks)


def train_mode(model, frozen):
    """model.train(), except frozen blocks stay in eval mode so their BatchNorm statistics do not move."""
    model.train()
    for m in frozen:
        m.eval()


def make_scheduler(optimizer, epochs, warmup_epochs):
    """Cosine annealing over the epochs, after --warmup_epochs of linear warm-up from lr/(N+1)."""
    if not warmup_epochs:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, 1 / (warmup_epochs + 1), total_iters=warmup_epochs)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs - warmup_epochs)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_epochs])
