"""The training schedule: staged fine-tuning (which backbone blocks train in which epoch) and the
learning rate (linear warm-up, then cosine annealing).

Epochs are 0-based in code and numbered from 1 where printed: epochs 1..freeze_epochs train the
backbone's last stage, later epochs its last two, and from epoch unfreeze_all_at on everything trains.
"""
import math

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


def lr_factor(step, total_steps, warmup_steps, start):
    """The learning rate of a step as a share of --lr: linear warm-up from `start` over warmup_steps, then
    cosine annealing to 0 over the remaining steps."""
    if step < warmup_steps:
        return start + (1 - start) * step / warmup_steps
    rest = max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(step - warmup_steps, rest) / rest))


class StepSchedule:
    """The learning rate set at every optimizer step (not once per epoch): --warmup_epochs of linear warm-up
    from lr/(N+1), then cosine annealing to 0 at the last step of --epochs. The plan is a function of the
    step, so a resume continues it exactly, and a resume with a larger --epochs plans the rest of the run
    again (a warm restart: the cosine goes on from where the new plan puts the step). state_dict() holds the
    step and the base learning rates; a state of an older run, stepped once per epoch (torch's schedulers:
    last_epoch), is taken at the first step of its next epoch."""

    def __init__(self, optimizer, epochs, steps_per_epoch, warmup_epochs=0):
        self.optimizer, self.step_count = optimizer, 0
        self.base_lrs = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
        self.epochs, self.steps_per_epoch, self.warmup_epochs = epochs, steps_per_epoch, warmup_epochs
        self._apply()

    def factor(self):
        return lr_factor(self.step_count, self.epochs * self.steps_per_epoch, self.warmup_epochs * self.steps_per_epoch,
                         1 / (self.warmup_epochs + 1))

    def _apply(self):
        f = self.factor()
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * f

    def step(self):
        self.step_count += 1
        self._apply()

    def state_dict(self):
        return {"kind": "per_step", "step": self.step_count, "base_lrs": list(self.base_lrs), "epochs": self.epochs,
                "steps_per_epoch": self.steps_per_epoch, "warmup_epochs": self.warmup_epochs}

    def load_state_dict(self, state):
        if state.get("kind") == "per_step":
            # A resume starts at an epoch boundary: its position is the epochs done, counted in this run's steps
            # (another number of processes, e.g. 2 GPUs resumed on 1, gives each epoch another number of steps).
            saved = int(state.get("steps_per_epoch") or self.steps_per_epoch)
            self.step_count = int(state["step"]) * self.steps_per_epoch // max(saved, 1)
            self.base_lrs = list(state["base_lrs"])
        else:  # torch's per-epoch scheduler of an older run: last_epoch epochs done
            self.step_count = int(state.get("last_epoch", 0)) * self.steps_per_epoch
            self.base_lrs = list(state.get("base_lrs", self.base_lrs))
        self._apply()


def make_scheduler(optimizer, epochs, warmup_epochs, steps_per_epoch=1):
    """The learning-rate schedule (StepSchedule): step() after every optimizer step."""
    return StepSchedule(optimizer, epochs, steps_per_epoch, warmup_epochs)
