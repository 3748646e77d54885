#!/usr/bin/env python3
"""Measure where the time goes: indexing, augmentation, data loading, training steps, end to end,
evaluation, video, the report page, the comparison of runs; and, given a checkpoint, faces in the wild.

    python bench.py                      # CPU: two to three minutes on 2 cores; CUDA figures when a GPU is present
    python bench.py --json bench.json    # also write the table as JSON
    python bench.py --quick              # tiny sizes, seconds (what the test suite runs)
    python bench.py --only faces --checkpoint runs/demo/FER_resnet18.pth --scenes 80

Each figure is the median of --reps timed repetitions after a warm-up; CUDA timings synchronise.
faces: each detector's recall and false detections on faces pasted into larger scenes at known places,
and how often the model predicts on the detected, cropped face what it predicts on the original crop
(fer/bench/faces.py says how the scenes are made).
"""
from fer.cli import run_main
from fer.cli.bench import get_args


def main(argv=None):
    args = get_args(argv, __doc__)
    from fer.bench.pipeline import bench  # the heavy imports, once the flags and paths are checked

    bench(args)


if __name__ == "__main__":
    run_main(main)
