"""fer/training/schedule.py: staged fine-tuning (which blocks train when, frozen ones do not move), the
epoch convention of the flags, warm-up then cosine.
"""
import math

import pytest
import torch
from builders import run_here, tiny_args

import fer.cli.train as TF
import fer.training.loop as TL
import fer.training.schedule as TS
import fer.training.start as TI
from fer.model.net import FERNet


def test_freezing_stages():
    assert TS.trainable_blocks(0, 3, None) == ("layer4",)
    assert TS.trainable_blocks(2, 3, None) == ("layer4",)
    assert TS.trainable_blocks(3, 3, None) == ("layer3", "layer4")
    assert TS.trainable_blocks(3, 3, 5) == ("layer3", "layer4")
    assert TS.trainable_blocks(4, 3, 5) is None  # epoch index 4 is 1-based epoch 5
    assert TS.trainable_blocks(0, 3, 1) is None


@pytest.mark.slow
@pytest.mark.parametrize("blocks", [("layer4",), ("layer3", "layer4")])
def test_frozen_layers_do_not_move(blocks):
    torch.manual_seed(0)
    model = FERNet("resnet18")
    frozen = TS.apply_freezing(model, blocks)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    TS.train_mode(model, frozen)
    for _ in range(2):
        logits, va = model(torch.randn(4, 3, 32, 32))
        opt.zero_grad()
        (logits.sum() + va.sum()).backward()
        opt.step()
    after = model.state_dict()
    for k in before:
        block = k.split(".")[1] if k.startswith("backbone.") else "head"
        moved = not torch.equal(before[k], after[k])
        if block in blocks or block == "head":
            if not k.endswith("num_batches_tracked"):
                assert moved, f"{k} should train"
        else:
            assert not moved, f"{k} is frozen but changed"  # weights and BN running stats alike
    assert any(not torch.equal(before[k], after[k]) for k in before if "running_mean" in k)  # trainable BN did move


# --- knobs --------------------------------------------------------------------------------------
def test_warmup_then_cosine():
    opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=1.0)
    sched = TS.make_scheduler(opt, 6, 2)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == pytest.approx([1 / 3, 2 / 3, 1.0]) and lrs[3] < 1.0 and lrs == sorted(lrs[:3]) + sorted(lrs[3:], reverse=True)


def test_cosine_sets_the_rate_at_every_step_and_resumes_exactly():
    """Issue 26: the cosine schedule steps per optimizer step, not per epoch; its state resumes it exactly,
    an older per-epoch state at its next epoch, and a re-plan (more epochs) continues from the same step."""
    def lrs(sched, opt, n):
        out = []
        for _ in range(n):
            out.append(opt.param_groups[0]["lr"])
            sched.step()
        return out

    opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=1.0)
    sched = TS.make_scheduler(opt, 2, 0, steps_per_epoch=4)
    first = lrs(sched, opt, 4)
    assert first == sorted(first, reverse=True) and len(set(first)) == 4  # falls within the epoch
    assert first == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(4)])
    state = sched.state_dict()
    rest = lrs(sched, opt, 4)
    opt2 = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=1.0)
    again = TS.make_scheduler(opt2, 2, 0, steps_per_epoch=4)
    again.load_state_dict(state)
    assert lrs(again, opt2, 4) == pytest.approx(rest)
    older = TS.make_scheduler(opt2, 2, 0, steps_per_epoch=4)
    older.load_state_dict({"last_epoch": 1, "base_lrs": [1.0]})  # torch's CosineAnnealingLR after one epoch
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.5)
    longer = TS.make_scheduler(opt2, 4, 0, steps_per_epoch=4)
    longer.load_state_dict(state)  # after epoch 1 of 2, re-planned over 4 epochs
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 16)))


# --- Ctrl-C before the first epoch; the schedule ---------------------------------------------------
def test_one_epoch_convention():
    """Epochs are numbered from 1 (as printed): --freeze_epochs N = epochs 1..N, --unfreeze_all_at E = from E;
    the meaning is the one older checkpoints were trained with (a resume keeps its schedule)."""
    for epochs, freeze, unfreeze in ((100, 3, None), (6, 3, 1), (10, 3, 6), (5, 0, None), (5, 3, 3)):
        text = TS.schedule_text(epochs, freeze, unfreeze)
        for epoch in range(1, epochs + 1):  # each epoch's stage in the text is the one training applies
            blocks = TS.trainable_blocks(epoch - 1, freeze, unfreeze)
            name = "all" if blocks is None else "+".join(blocks)
            ranges = {(int(a), int(b or a)): n for a, b, n in
                      (__import__("re").fullmatch(r"(\d+)(?:-(\d+))? (.+)", s).groups()
                       for s in text.removeprefix("epochs ").split(", "))}
            assert [n for (a, b), n in ranges.items() if a <= epoch <= b] == [name], (text, epoch)
    assert TS.schedule_text(5, 3, 3) == "epochs 1-2 layer4, 3-5 all"  # all wins from epoch E on
    help_text = run_here("train_vggface2_resnet50.py", "--help").stdout
    assert help_text.count("numbered from 1") >= 2


# --- silent wrong results -----------------------------------------------------------------------
def test_no_pretrained_trains_every_layer_and_says_so(demo, tmp_path):
    def schedule(*extra):
        args = TF.get_args(tiny_args(demo, tmp_path, *extra))
        return [TS.trainable_blocks(e, args.freeze_epochs, args.unfreeze_all_at) for e in range(4)]
    assert schedule() == [None] * 4  # from random weights: everything trains
    assert schedule("--freeze_epochs", 1) == [("layer4",)] + [("layer3", "layer4")] * 3  # the user's schedule
    pretrained = [a for a in tiny_args(demo, tmp_path) if a != "--no_pretrained"]
    assert [TS.trainable_blocks(e, a.freeze_epochs, a.unfreeze_all_at) for a in [TF.get_args(pretrained)]
            for e in (0, 3)] == [("layer4",), ("layer3", "layer4")]  # pretrained: staged as before
    said = []

    class Said(TL.Say):
        def __call__(self, line):
            said.append(line)
        info = __call__
    TI.build_model(TF.get_args(tiny_args(demo, tmp_path)), Said(True), ["Happy", "Sad"])
    TI.build_model(TF.get_args(tiny_args(demo, tmp_path, "--freeze_epochs", 1)), Said(True), ["Happy", "Sad"])
    assert "every layer trains from the first epoch" in said[0] and "warning" in said[1]
    said.clear()
    Said.info = lambda self, line: None  # --quiet: the set-up line goes, the warning stays
    TI.build_model(TF.get_args(tiny_args(demo, tmp_path)), Said(True), ["Happy", "Sad"])
    TI.build_model(TF.get_args(tiny_args(demo, tmp_path, "--freeze_epochs", 1)), Said(True), ["Happy", "Sad"])
    assert len(said) == 1 and "warning" in said[0]


# --- found by the hostile pass over training ------------------------------------------------------
def test_huge_epochs_do_not_hang_before_the_first_epoch(monkeypatch):
    """--epochs 10**9: the schedule line looped over every epoch (minutes) before training started; it
    looks at the epochs where the stage changes only."""
    import fer.training.schedule as T

    calls = []
    blocks = T.trainable_blocks
    monkeypatch.setattr(T, "trainable_blocks", lambda *a, **k: calls.append(a) or blocks(*a, **k))
    assert T.schedule_text(10**5, 3, None) == "epochs 1-3 layer4, 4-100000 layer3+layer4" and len(calls) <= 3
    assert T.schedule_text(6, 3, 1) == "epochs 1-6 all" and T.schedule_text(10**9, 0, 5).endswith("5-1000000000 all")


def test_a_resume_with_another_number_of_processes_keeps_its_place_in_the_schedule():
    """Resumed on 1 process after 1 of 4 epochs on 2 (8 steps per epoch there, 16 here): the schedule used to
    continue at step 8 of 64, a quarter of an epoch, with the rate jumping back up."""
    opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=1.0)
    two = TS.make_scheduler(opt, 4, 0, steps_per_epoch=8)
    for _ in range(8):
        two.step()
    one_opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=1.0)
    one = TS.make_scheduler(one_opt, 4, 0, steps_per_epoch=16)
    one.load_state_dict(two.state_dict())
    assert one.step_count == 16 and one_opt.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
