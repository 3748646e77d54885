"""fer/training/distributed.py: the sampler that shards and balances, and two processes under torchrun."""
import os
import sys

import numpy as np
import pytest
import torch
from builders import ROOT, tiny_args

import fer.training.distributed as TD


def test_sampler_shards_and_balances():
    shards = [list(TD.TrainSampler(10, rank=r, world=3, seed=1)) for r in range(3)]
    assert all(len(s) == 4 for s in shards)
    assert set(i for s in shards for i, _ in s) == set(range(10))
    assert list(TD.TrainSampler(10, seed=1)) == list(TD.TrainSampler(10, seed=1))
    labels = np.array([0] * 90 + [1] * 10)
    counts = np.bincount(labels)
    sampler = TD.TrainSampler(100, 1.0 / counts[labels], seed=0)
    drawn = []
    for epoch in range(20):
        sampler.set_epoch(epoch)
        drawn += [labels[i] for i, _ in sampler]
    assert 0.4 < np.mean(drawn) < 0.6  # 10% of the data, about half of the draws


# --- --balanced_sampling: the class frequencies drawn, and each rank's share ------------------------
LABELS = np.repeat(np.arange(4), [700, 200, 80, 20])  # unbalanced, as AffectNet is


@pytest.mark.parametrize("kind,expected", [("inverse", [0.25] * 4),
                                           ("sqrt", np.sqrt([700, 200, 80, 20]) / np.sqrt([700, 200, 80, 20]).sum())])
def test_balanced_sampling_draws_the_target_class_frequencies(kind, expected):
    """Over many epochs the share of each class among the draws is its target (inverse: uniform; sqrt: in
    proportion to the square root of the class's size), within 4 binomial standard errors."""
    target = TD.class_frequencies(LABELS, 4, kind)
    np.testing.assert_allclose(target, expected)
    sampler = TD.TrainSampler(len(LABELS), TD.balanced_weights(LABELS, 4, kind), seed=3)
    drawn = []
    for epoch in range(20):
        sampler.set_epoch(epoch)
        drawn += [LABELS[i] for i, _ in sampler]
    n = len(drawn)
    share = np.bincount(drawn, minlength=4) / n
    se = np.sqrt(target * (1 - target) / n)
    assert (np.abs(share - target) < 4 * se).all(), (share, target, se)
    assert np.abs(np.bincount(LABELS) / len(LABELS) - target).max() > 10 * se.max()  # not the data's own shares


def test_ranks_draw_disjoint_shares_of_the_right_size():
    """Under DDP each of 3 ranks draws ceil(N / 3) samples of one shared weighted draw, seeded by (seed, epoch):
    the shares are disjoint slots of that draw (their augmentation seeds never repeat across ranks), together
    its every slot, and a new epoch (set_epoch) draws anew."""
    weights, world = TD.balanced_weights(LABELS, 4, "inverse"), 3
    per_rank = -(-len(LABELS) // world)
    for epoch in (0, 1):
        shares = []
        for rank in range(world):
            sampler = TD.TrainSampler(len(LABELS), weights, rank=rank, world=world, seed=7)
            sampler.set_epoch(epoch)
            shares.append(list(sampler))
            assert len(shares[-1]) == len(sampler) == per_rank
        seeds = [set(s for _, s in share) for share in shares]
        assert all(not seeds[a] & seeds[b] for a in range(world) for b in range(a + 1, world))
        whole = TD.TrainSampler(len(LABELS), weights, rank=0, world=1, seed=7)
        whole.per_rank = per_rank * world  # the one draw the ranks share, undivided
        whole.set_epoch(epoch)
        interleaved = [shares[k % world][k // world] for k in range(per_rank * world)]
        assert interleaved == list(whole)
        if epoch == 0:
            first = shares
    assert shares != first
    share = np.bincount([LABELS[i] for s in shares for i, _ in s], minlength=4) / (per_rank * world)
    assert np.abs(share - 0.25).max() < 4 * np.sqrt(0.25 * 0.75 / (per_rank * world))


# --- the training script ------------------------------------------------------------------------
@pytest.mark.slow
def test_torchrun_two_processes(demo, tmp_path):
    import subprocess
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531",
           str(ROOT / "train_vggface2_resnet50.py"), *tiny_args(demo, tmp_path, "--epochs", 1, "--balanced_sampling")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("epoch 1/1") == 1  # only rank 0 prints
    assert "x2" in r.stdout and (tmp_path / "m.pth").is_file()
    # Validation covers each of the 16 images exactly once, whatever the sharding.
    ckpt = torch.load(tmp_path / "m.pth", weights_only=True)
    acc = ckpt["metrics"]["val_acc"]
    assert abs(acc * 16 - round(acc * 16)) < 1e-9
