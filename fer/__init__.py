"""The FER toolkit's library. The scripts at the top of the repository are thin command lines over it.

The sub-packages read as the pipeline, and imports point down it only (tests/test_layout.py checks):

    fer.constants   class names, sizes, margins: every shared constant, once
    fer.trust       the trust rules: staged outputs, path checks, one-line errors
    fer.cli         each script's flags and their checks (imports nothing heavy: flags fail in a second)
    fer.data        dataset formats -> the index; FERDataset, transforms, face detection and alignment
    fer.model       backbone families, the multitask network, checkpoints, batched forward passes
    fer.evaluation  metrics and statistics, the evaluation and its HTML report
    fer.training    the training loop, its schedule and run record, the comparison of runs
    fer.inference   prediction on photos and videos, face tracks, the ONNX export
"""
import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations, whoever imports it first: no network check
