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
