"""One training process per GPU (torchrun), or a single process: the process group, the training
sampler that shards and seeds every epoch, and the gathering of validation predictions.
"""
import math
import os

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from fer.constants import SAMPLING_POWERS
from fer.trust import check_device


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


def balanced_weights(labels, num_classes, kind="inverse"):
    """Each sample's weight for the training sampler: n_c^-power of its class c (SAMPLING_POWERS[kind])."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return counts[labels] ** -SAMPLING_POWERS[kind]


def class_frequencies(labels, num_classes, kind="inverse"):
    """The share of draws each class gets under balanced_weights (0 for an absent class)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    mass = np.where(counts > 0, counts ** (1 - SAMPLING_POWERS[kind]), 0.0)
    return mass / mass.sum()


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
