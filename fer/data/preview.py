"""The augmentation preview: a batch of an index's images after the training (or validation)
transforms, printed as shapes and saved as a grid with their labels (FER_transform.py)."""
import os

import matplotlib
import numpy as np
import torch

from fer.data.dataset import FERDataError, FERDataset
from fer.data.transforms import denormalize
from fer.trust import FERError, staged_outputs

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)


def preview(args):
    ds = FERDataset(args.meta, train=not args.val, size=args.size, root=args.root, allow_outside_root=args.allow_outside_root)
    if len(ds) == 0:
        raise FERDataError(f"{', '.join(args.meta)}: no usable rows")
    if os.path.exists(args.out):  # the grid must not replace one of the dataset's own images
        out = os.path.realpath(args.out)
        for p in ds.paths:
            if os.path.basename(p) == os.path.basename(out) and os.path.realpath(p) == out:
                raise FERError(f"--out {args.out}: is one of the images of --meta ({p}); choose another name")
    rng = np.random.default_rng(args.seed)
    picks = rng.choice(len(ds), size=min(args.n, len(ds)), replace=False)
    batch = torch.utils.data.default_collate([ds[(int(i), args.seed + k)] for k, i in enumerate(picks)])
    print(f"batch: image {tuple(batch['image'].shape)} {batch['image'].dtype}, "
          f"y_cls {tuple(batch['y_cls'].shape)} {batch['y_cls'].dtype}, "
          f"y_reg {tuple(batch['y_reg'].shape)} {batch['y_reg'].dtype}; "
          f"pixel mean {batch['image'].mean():.3f}, std {batch['image'].std():.3f}")
    cols = int(np.ceil(np.sqrt(len(picks))))
    rows = int(np.ceil(len(picks) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.5 * rows), squeeze=False)
    for ax, img, y, (v, a) in zip(axes.flat, denormalize(batch["image"]), batch["y_cls"], batch["y_reg"].tolist()):
        ax.imshow(img)
        ax.set_title(f"{ds.classes[y]}\nV {v:+.2f}  A {a:+.2f}", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    with staged_outputs() as stage:
        fig.savefig(stage(args.out), dpi=100)
    print(f"saved {len(picks)} samples to {args.out}")
