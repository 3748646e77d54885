#!/usr/bin/env python3
"""Look at what the model will see: a batch of an index's images after the training (or, with --val,
the validation) transforms; prints the batch's shapes and saves a grid of the samples with their labels.

    python FER_transform.py --meta metadata_train.parquet --out augmented_samples.png

The dataset and the transforms themselves are in fer/data/ (FERDataset, build_transforms).
"""
from fer.cli import run_main
from fer.cli.preview import get_args


def main(argv=None):
    args = get_args(argv, __doc__)
    from fer.data.preview import preview  # the heavy imports, once the flags and paths are checked

    preview(args)


if __name__ == "__main__":
    run_main(main)
