"""fer/evaluation/audit.py (eval_resnet50.py --audit_labels): the label-issue audit, tested honestly on a
synthetic set with a known share of flipped labels, and end to end."""
import json

import numpy as np
import pandas as pd
import pytest
from builders import run_here

from fer.evaluation.audit import REVIEW_COLUMNS, label_issues, review_table


def flipped(n=3000, k=7, share=0.1, signal=3.0, seed=0):
    """Informative probabilities (the true class's logit raised by `signal`) and labels of which a known
    share is flipped to another class: (probs, given labels, flipped mask)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    z = rng.normal(0, 1, (n, k))
    z[np.arange(n), y] += signal
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    flip = rng.random(n) < share
    given = y.copy()
    given[flip] = (y[flip] + rng.integers(1, k, flip.sum())) % k
    return p, given, flip


@pytest.mark.parametrize("share, signal, precision, recall", [(0.05, 3.0, 0.8, 0.8), (0.1, 3.0, 0.8, 0.8),
                                                              (0.2, 3.0, 0.9, 0.9), (0.1, 2.0, 0.4, 0.8)])
def test_the_audit_finds_flipped_labels(share, signal, precision, recall):
    """Figures in BENCHMARKS.md: precision and recall of the flagged rows against the flipped ones."""
    p, given, flip = flipped(share=share, signal=signal)
    idx = label_issues(p, given)
    found = np.zeros(len(given), bool)
    found[idx] = True
    assert (found & flip).sum() / found.sum() >= precision
    assert (found & flip).sum() / flip.sum() >= recall
    self_confidence = p[idx, given[idx]]
    assert (np.diff(self_confidence) >= -1e-12).all()  # ranked: the least confident in the given label first


def test_review_table_names_given_and_suggested_labels():
    p, given, flip = flipped(n=400, k=3, share=0.1)
    table = review_table([f"{i}.jpg" for i in range(400)], p, given, ["Neutral", "Happy", "Sad"])
    assert list(table.columns) == REVIEW_COLUMNS and (table["rank"] == np.arange(1, len(table) + 1)).all()
    row = table.iloc[0]
    k = int(row["filename"].split(".")[0])
    assert row["given_label"] == ["Neutral", "Happy", "Sad"][given[k]] and row["given_label"] != row["suggested_label"]
    assert row["given_label_probability"] == pytest.approx(p[k, given[k]])


@pytest.mark.slow
def test_eval_audit_labels_writes_the_review_csv_and_warns_on_training_rows(trained, demo, tmp_path):
    r = run_here("eval_resnet50.py", "--checkpoint", trained, "--meta", demo["train"], "--out_dir", tmp_path,
                 "--num_workers", 0, "--bootstrap", 0, "--audit_labels")
    assert r.returncode == 0, r.stderr
    table = pd.read_csv(tmp_path / "label_issues_resnet18.csv")
    assert list(table.columns) == REVIEW_COLUMNS
    m = json.loads((tmp_path / "metrics_resnet18.json").read_text())
    assert m["label_issues"]["n"] == len(table) and "not out-of-sample" in m["label_issues"]["warning"]
    page = (tmp_path / "report_resnet18.html").read_text()
    assert 'id="label-issues"' in page and "not out-of-sample" in page and "label audit:" in r.stdout
