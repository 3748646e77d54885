"""Hostile pass over evaluation, the report page and the export: each bug found, closed.

Every test fails on the code before its fix and passes after. They reuse the session fixtures
(`demo`, `trained`) and run the scripts in-process (`run_here`); none trains a model.
"""
import numpy as np
import pytest

import FER_metrics as M

NAMES = ["Neutral", "Happy", "Sad"]


def partly_labelled(n=400, seed=0):
    """A set where valence is missing on half the rows and arousal on a few, and arousal is badly
    predicted exactly where valence is missing."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3)) + np.eye(3)[y]
    va_true = rng.uniform(-1, 1, (n, 2))
    va_pred = va_true + rng.normal(0, 0.1, (n, 2))
    va_pred[: n // 2, 1] = va_true[: n // 2, 1] + rng.normal(0, 0.8, n // 2)
    va_true[: n // 2, 0] = np.nan
    va_true[-10:, 1] = np.nan
    return logits, va_pred, y, va_true


# --- bootstrap intervals ------------------------------------------------------------------------
def test_interval_belongs_to_its_point_estimate_when_a_dimension_is_partly_missing():
    """Each dimension's interval was resampled over the rows with *both* labels while its point estimate
    uses the rows with that label: arousal 0.47 came with the interval [0.09, 0.10]."""
    logits, va_pred, y, va_true = partly_labelled()
    point = M.flatten(M.evaluate(logits, va_pred, y, va_true, NAMES))
    same = M.bootstrap_metrics(np.arange(len(y))[None], logits, y, va_pred, va_true, NAMES)  # the set itself
    for key, values in same.items():
        if point.get(key) is not None:
            assert values[0] == pytest.approx(point[key]), key
    ci = M.bootstrap_report(M.bootstrap_metrics(M.bootstrap_indices(len(y), 300, 0), logits, y, va_pred, va_true,
                                                NAMES), 300, 0)["ci95"]
    for dim in ("valence", "arousal"):
        lo, hi = ci[dim]["rmse"]
        assert lo <= point[f"{dim}.rmse"] <= hi, dim


def test_a_dimension_without_labels_has_no_interval_and_the_other_keeps_its_own():
    """No valence at all: arousal had no interval (and 'valence.rmse 0' resamples was reported)."""
    logits, va_pred, y, va_true = partly_labelled()
    va_true[:, 0] = np.nan
    samples = M.bootstrap_metrics(M.bootstrap_indices(len(y), 100, 0), logits, y, va_pred, va_true, NAMES)
    assert not any(k.startswith("valence.") for k in samples) and "rmse_combined" not in samples
    report = M.bootstrap_report(samples, 100, 0)
    assert report["bootstrap"]["used"]["arousal.rmse"] == 100 and report["ci95"]["arousal"]["ccc"] is not None
