"""fer/training/schedule.py: staged fine-tuning (which blocks train when, frozen ones do not move), the
epoch convention of the flags, warm-up then cosine.
"""
import pytest
import torch
from builders import run_here, tiny_args

import fer.cli.train as TF
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
    TI.build_model(TF.get_args(tiny_args(demo, tmp_path)), said.append, ["Happy", "Sad"])
    TI.build_model(TF.get_args(tiny_args(demo, tmp_path, "--freeze_epochs", 1)), said.append, ["Happy", "Sad"])
    assert "every layer trains from the first epoch" in said[0] and "warning" in said[1]


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
