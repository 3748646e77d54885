"""fer/evaluation/metrics.py against hand-worked values and reference libraries: classification,
regression, calibration (ECE, NLL, Brier, temperature), bootstrap intervals and paired comparisons.
"""
import json

import krippendorff
import numpy as np
import pytest
from builders import NAMES, THREE, reference_ece, run_here, with_index
from scipy.stats import binomtest
from sklearn import metrics as skm

from fer.constants import CLASS_NAMES
from fer.evaluation import metrics as M
from fer.evaluation.metrics import evaluate


def test_ccc_hand_values():
    t = np.array([-1.0, 0.0, 1.0, 2.0])  # mean 0.5, population variance 1.25
    assert M.ccc(t, t) == pytest.approx(1.0)
    assert M.ccc(t, t + 0.5) == pytest.approx(2 * 1.25 / (1.25 + 1.25 + 0.25))
    assert M.ccc(t, 2 * t) == pytest.approx(2 * 2.5 / (1.25 + 5.0 + 0.25))
    assert M.ccc(t, -t) < 0
    assert M.ccc(np.ones(3), np.ones(3)) is None
    assert M.ccc(t, np.zeros(4)) == 0.0  # constant prediction: defined, and 0


def test_sagr_with_zeros():
    assert M.sagr(np.array([0, 1, -1, 0.5]), np.array([0, 0.2, 0.3, -0.1])) == 0.5
    assert M.sagr(np.array([0.0]), np.array([0.1])) == 0.0


def test_regression_metrics_hand_values():
    t, p = np.array([0.0, 0.5, -0.5, 1.0]), np.array([0.1, 0.5, -0.3, 0.6])
    r = M.regression_metrics(t, p)
    assert r["rmse"] == pytest.approx(np.sqrt((0.01 + 0 + 0.04 + 0.16) / 4))
    assert r["mae"] == pytest.approx((0.1 + 0 + 0.2 + 0.4) / 4)
    assert r["corr"] == pytest.approx(np.corrcoef(t, p)[0, 1])
    assert M.regression_metrics(t, np.full(4, 0.2))["corr"] is None


def test_rmse_clips_predictions():
    r = M.rmse(np.array([[1.0, -1.0]]), np.array([[3.0, -0.5]]))
    assert r["valence"] == 0 and r["arousal"] == pytest.approx(0.5)
    assert r["combined"] == pytest.approx(np.sqrt(0.25 / 2))


def random_case(seed=0, n=200, classes=8):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, 8)) + 2 * np.eye(8)[y] * rng.random((n, 1))
    return y, logits


def test_classification_against_libraries():
    y, logits = random_case()
    probs = M.softmax(logits)
    m, notes = M.classification_metrics(y, probs, NAMES)
    pred = probs.argmax(1)
    assert m["accuracy"] == pytest.approx(np.mean(pred == y))
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["kappa"] == pytest.approx(skm.cohen_kappa_score(y, pred))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    ap = np.mean([skm.average_precision_score(y == c, probs[:, c]) for c in range(8)])
    assert m["pr_auc"] == pytest.approx(ap)
    assert m["krippendorff_alpha"] == pytest.approx(krippendorff.alpha(np.vstack([y, pred]),
                                                                       level_of_measurement="nominal"))
    assert np.array(m["confusion_matrix"]).sum() == len(y) and notes == []


def test_classification_hand_values():
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]])
    m, _ = M.classification_metrics(y, probs, ["a", "b"])
    assert m["accuracy"] == 0.75
    # kappa: po = 0.75, pe = 0.5*0.25 + 0.5*0.75 = 0.5 -> 0.5
    assert m["kappa"] == pytest.approx(0.5)
    assert m["roc_auc"] == pytest.approx(1.0)  # every positive outranks every negative, both ways
    # nominal alpha, two coders, 4 units: Do = 1/4 mismatching pairs..., value from the definition:
    # pairable values 8, n_a=3 ('a' twice in truth, once in prediction), n_b=5; D_o = 2*1/8, D_e = 2*3*5/(8*7)
    assert m["krippendorff_alpha"] == pytest.approx(1 - (2 / 8) / (30 / 56))
    assert m["per_class"]["b"] == {"precision": pytest.approx(2 / 3), "recall": 1.0, "f1": pytest.approx(0.8),
                                   "support": 2}


def test_missing_class_is_reported_not_fatal():
    y, logits = random_case(classes=5)  # classes 5-7 never occur
    m = M.evaluate(logits, np.zeros((len(y), 2)), y, np.zeros((len(y), 2)) + 0.1, NAMES)
    probs = M.softmax(logits)
    onehot = np.eye(8)[y][:, :5]
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(onehot, probs[:, :5], average="macro"))
    assert any("Disgust, Anger, Contempt" in n for n in m["notes"])
    assert m["per_class"]["Contempt"]["support"] == 0


def test_constant_predictions_are_null_with_note():
    y, logits = random_case()
    va_true = np.random.default_rng(1).uniform(-1, 1, (len(y), 2))
    m = M.evaluate(logits, np.full((len(y), 2), 0.3), y, va_true, NAMES)
    assert m["valence"]["corr"] is None and m["arousal"]["corr"] is None
    assert any("valence CORR undefined" in n for n in m["notes"])
    json.dumps(m)  # null, not NaN


def test_classification_only_report():
    y, logits = random_case()
    m = M.evaluate(logits, np.zeros((len(y), 2)), y, None, NAMES)
    assert "valence" not in m and any("classification-only" in n for n in m["notes"])


# --- calibration metrics ------------------------------------------------------------------------
def test_ece_equals_reference_formula():
    # By hand: confidences 0.9 (right), 0.9 (wrong), 0.65, 0.65 (both right): 0.5*|0.5-0.9| + 0.5*|1-0.65|.
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.65, 0.35], [0.35, 0.65]])
    y = np.array([0, 0, 0, 1])
    assert M.ece(probs, y) == pytest.approx(0.2 + 0.175, abs=1e-12)
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.full(6, 0.4), 500)
    y = np.where(rng.random(500) < 0.7, probs.argmax(1), rng.integers(0, 6, 500))
    assert M.ece(probs, y) == pytest.approx(reference_ece(probs, y), abs=1e-12)
    bins = M.reliability(probs, y)
    assert len(bins) == 15 and sum(b["count"] for b in bins) == 500


def test_nll_and_brier_hand_values():
    probs = np.array([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]])
    y = np.array([0, 1])
    logits = np.log(probs) + 3.0  # a constant shift changes nothing
    assert M.nll(logits, y) == pytest.approx(-(np.log(0.7) + np.log(0.25)) / 2, abs=1e-12)
    brier = ((0.3 ** 2 + 0.2 ** 2 + 0.1 ** 2) + (0.25 ** 2 + 0.75 ** 2 + 0.5 ** 2)) / 2
    assert M.brier(probs, y) == pytest.approx(brier, abs=1e-12)


@pytest.mark.parametrize("scale", [4.0, 0.25])
def test_fitted_temperature_lowers_nll(scale):
    """Over-confident logits (x4) get T > 1, under-confident ones (/4) T < 1; T is the minimum."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 8, 600)
    logits = rng.normal(size=(600, 8)) + 2.5 * np.eye(8)[y]
    logits *= scale
    cal, notes = M.calibration(logits, y)
    t = cal["temperature"]
    assert (t > 1) if scale > 1 else (t < 1)
    assert cal["nll_at_temperature"] < cal["nll"]
    assert cal["nll_at_temperature"] == pytest.approx(M.nll(logits / t, y), abs=1e-12)
    for other in (t * 1.02, t / 1.02):
        assert M.nll(logits / other, y) > cal["nll_at_temperature"]
    assert cal["ece_at_temperature"] == pytest.approx(M.ece(M.softmax(logits / t), y), abs=1e-12)
    assert notes == []


def test_most_confused_equals_confusion_matrix():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, 300)
    pred = np.where(rng.random(300) < 0.5, y, rng.integers(0, 5, 300))
    cm = skm.confusion_matrix(y, pred, labels=range(5))
    names = CLASS_NAMES[:5]
    got = M.most_confused(cm, names)
    for i, name in enumerate(names):
        off = [(-cm[i, j], j) for j in range(5) if j != i and cm[i, j] > 0]
        assert [x["class"] for x in got[name]] == [names[j] for _, j in sorted(off)[:2]]
        assert [x["count"] for x in got[name]] == [cm[i, j] for _, j in sorted(off)[:2]]


# --- bootstrap intervals -------------------------------------------------------------------------
def bootstrap_case(seed, n, classes=8):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, 8)) + 2.5 * np.eye(8)[y] * rng.random((n, 1))
    va_true = rng.uniform(-1, 1, (n, 2))
    va_pred = 0.6 * va_true + rng.normal(0, 0.3, (n, 2))
    va_true[:3] = np.nan  # rows without labels
    va_true[3:6, 0] = np.nan  # rows with arousal only: each dimension is scored over the rows that have it
    return y, logits, va_pred, va_true


def reference_metrics(y, probs, va_pred, va_true, names, full_classes):
    """The slow, plain way: scikit-learn and krippendorff on one resample, None where undefined."""
    pred = probs.argmax(1)
    complete = set(full_classes) <= set(y)
    present = np.unique(y)
    onehot = (y[:, None] == present[None, :]).astype(int)
    out = {"accuracy": skm.accuracy_score(y, pred),
           "f1_macro": skm.f1_score(y, pred, average="macro", zero_division=0) if complete else None,
           "kappa": skm.cohen_kappa_score(y, pred),
           "roc_auc": skm.roc_auc_score(onehot, probs[:, present], average="macro") if complete else None,
           "pr_auc": skm.average_precision_score(onehot, probs[:, present], average="macro") if complete else None,
           "krippendorff_alpha": krippendorff.alpha(reliability_data=np.vstack([y, pred]), level_of_measurement="nominal")}
    labels = np.arange(len(names))
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    predicted = np.bincount(pred, minlength=len(names))
    for i, name in enumerate(names):
        out[f"per_class.{name}.precision"] = p[i] if predicted[i] else None
        out[f"per_class.{name}.recall"] = r[i] if s[i] else None
        out[f"per_class.{name}.f1"] = f[i] if s[i] else None
    for j, name in enumerate(("valence", "arousal")):
        ok = ~np.isnan(va_true[:, j])
        t, q = va_true[ok, j], np.clip(va_pred[ok, j], -1, 1)
        out[f"{name}.rmse"] = np.sqrt(skm.mean_squared_error(t, q))
        out[f"{name}.mae"] = skm.mean_absolute_error(t, q)
        out[f"{name}.corr"] = np.corrcoef(t, q)[0, 1]
        out[f"{name}.sagr"] = np.mean(np.sign(t) == np.sign(q))
        out[f"{name}.ccc"] = 2 * np.cov(t, q, bias=True)[0, 1] / (t.var() + q.var() + (t.mean() - q.mean()) ** 2)
    ok = ~np.isnan(va_true).any(1)
    out["rmse_combined"] = np.sqrt(skm.mean_squared_error(va_true[ok], np.clip(va_pred[ok], -1, 1)))
    return out


@pytest.mark.parametrize("seed,n", [(0, 40), (1, 120)])
def test_bootstrap_matches_a_plain_loop(seed, n):
    y, logits, va_pred, va_true = bootstrap_case(seed, n)
    idx = M.bootstrap_indices(n, 60 if n < 100 else 150, seed)  # 150: intervals given, 60: none
    fast = M.bootstrap_metrics(idx, logits, y, va_pred, va_true, NAMES)
    probs = M.softmax(logits)
    ref = [reference_metrics(y[i], probs[i], va_pred[i], va_true[i], NAMES, np.unique(y)) for i in idx]
    assert set(fast) == set(ref[0])
    undefined = 0
    for key, values in fast.items():
        expected = np.array([np.nan if r[key] is None else r[key] for r in ref], np.float64)
        undefined += int(np.isnan(expected).sum())
        np.testing.assert_allclose(values, expected, rtol=1e-9, atol=1e-12, err_msg=key)
        lo_hi, used = M.interval(values)
        ok = expected[np.isfinite(expected)]
        assert used == len(ok)
        if used >= M.MIN_RESAMPLES:
            assert lo_hi == pytest.approx(list(np.percentile(ok, [2.5, 97.5])), abs=1e-12)
        else:  # trust rule 5: too few usable resamples give no interval
            assert lo_hi is None
    assert undefined > 0 or n > 100  # the small case does miss classes on some resamples
    blocks = M.bootstrap_metrics(idx, logits, y, va_pred, va_true, NAMES, block=7 * n)  # 9 blocks, the last short
    for key, values in fast.items():
        np.testing.assert_allclose(blocks[key], values, rtol=1e-12, atol=1e-15, err_msg=key)


def test_intervals_contain_their_point_estimates():
    y, logits, va_pred, va_true = bootstrap_case(3, 300)
    point = M.flatten(M.evaluate(logits, va_pred, y, va_true, NAMES))
    report = M.bootstrap_report(M.bootstrap_metrics(M.bootstrap_indices(300, 400, 0), logits, y, va_pred, va_true,
                                                    NAMES), 400, 0)
    checked = 0
    for key, value in point.items():
        if key not in report["bootstrap"]["used"]:  # calibration (ECE, NLL, ...) has no interval yet
            continue
        node = report["ci95"]
        for part in key.split("."):
            node = node[part]
        if value is not None and node is not None:
            assert node[0] <= value <= node[1], key
            checked += 1
    assert checked > 40 and report["bootstrap"]["used"]["accuracy"] == 400


def test_mcnemar_is_the_binomial_test_on_discordant_pairs():
    rng = np.random.default_rng(5)
    a, b = rng.random(300) < 0.6, rng.random(300) < 0.7
    m = M.mcnemar(a, b)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    assert (m["a_only_correct"], m["b_only_correct"]) == (only_a, only_b)
    assert m["p_value"] == binomtest(only_b, only_a + only_b, 0.5, alternative="two-sided").pvalue
    assert M.mcnemar(a, a)["p_value"] == 1.0


def test_paired_difference_uses_the_same_resamples():
    y, logits, va_pred, va_true = bootstrap_case(4, 150)
    better = logits + 1.5 * np.eye(8)[y]
    idx = M.bootstrap_indices(150, 200, 1)
    sa = M.bootstrap_metrics(idx, logits, y, va_pred, va_true, NAMES)
    sb = M.bootstrap_metrics(idx, better, y, va_pred, va_true, NAMES)
    comp = M.paired_comparison(M.evaluate(logits, va_pred, y, va_true, NAMES), M.evaluate(better, va_pred, y, va_true, NAMES),
                               sa, sb, logits.argmax(1) == y, better.argmax(1) == y, 200, 1)
    acc = comp["metrics"]["accuracy"]
    assert acc["diff"] == pytest.approx(acc["b"] - acc["a"]) and acc["ci95_diff"][0] <= acc["diff"] <= acc["ci95_diff"][1]
    assert acc["ci95_diff"] == pytest.approx(list(np.percentile(sb["accuracy"] - sa["accuracy"], [2.5, 97.5])))
    assert comp["metrics"]["valence.rmse"]["ci95_diff"] == [0.0, 0.0]  # the same regression outputs
    assert comp["mcnemar"]["p_value"] < 0.05 and "McNemar" in M.format_comparison(comp)


# --- tracebacks and unclear errors --------------------------------------------------------------
def test_a_regression_dimension_without_values_is_absent(trained, demo, tmp_path):
    rng = np.random.default_rng(0)
    va = rng.uniform(-1, 1, (6, 2))
    for empty in (0, 1):
        true = va.copy()
        true[:, empty] = np.nan
        m = evaluate(rng.normal(size=(6, 3)), va / 2, np.arange(6) % 3, true, ["a", "b", "c"])
        absent, present = ("valence", "arousal")[empty], ("valence", "arousal")[1 - empty]
        assert absent not in m and m[present]["rmse"] > 0 and f"no {absent} labels" in " ".join(m["notes"])
    no_valence = with_index(demo["val"], tmp_path / "a.parquet", lambda df: df.drop(columns="valence"))
    r = run_here("eval_resnet50.py", "--checkpoint", trained, "--meta", no_valence, "--out_dir", tmp_path,
                 "--num_workers", 0)
    assert r.returncode == 0 and "arousal: RMSE" in r.stdout and "valence: RMSE" not in r.stdout, r.stderr


# --- found by the hostile pass over evaluation, the report page and the export --------------------
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
    point = M.flatten(M.evaluate(logits, va_pred, y, va_true, THREE))
    same = M.bootstrap_metrics(np.arange(len(y))[None], logits, y, va_pred, va_true, THREE)  # the set itself
    for key, values in same.items():
        if point.get(key) is not None:
            assert values[0] == pytest.approx(point[key]), key
    ci = M.bootstrap_report(M.bootstrap_metrics(M.bootstrap_indices(len(y), 300, 0), logits, y, va_pred, va_true,
                                                THREE), 300, 0)["ci95"]
    for dim in ("valence", "arousal"):
        lo, hi = ci[dim]["rmse"]
        assert lo <= point[f"{dim}.rmse"] <= hi, dim


def test_a_dimension_without_labels_has_no_interval_and_the_other_keeps_its_own():
    """No valence at all: arousal had no interval (and 'valence.rmse 0' resamples was reported)."""
    logits, va_pred, y, va_true = partly_labelled()
    va_true[:, 0] = np.nan
    samples = M.bootstrap_metrics(M.bootstrap_indices(len(y), 100, 0), logits, y, va_pred, va_true, THREE)
    assert not any(k.startswith("valence.") for k in samples) and "rmse_combined" not in samples
    report = M.bootstrap_report(samples, 100, 0)
    assert report["bootstrap"]["used"]["arousal.rmse"] == 100 and report["ci95"]["arousal"]["ccc"] is not None


def test_a_collapsed_model_is_named():
    """Issue 26: a model that predicts one class for (almost) every image gets a note and a `collapse` field."""
    from fer.constants import COLLAPSE_SHARE

    y = np.arange(40) % 4
    logits = np.zeros((40, 4))
    logits[:, 1] = 5.0
    logits[:2, 0] = 10.0  # 2 of 40 elsewhere: 95 % Happy
    m = evaluate(logits, None, y, None, NAMES[:4])
    assert m["collapse"] == {"class": NAMES[1], "share": 0.95, "threshold": COLLAPSE_SHARE}
    assert m["notes"][0].startswith(f"COLLAPSED: the model predicts {NAMES[1]} for 95%")
    logits[:, :] = np.eye(4)[y]  # a real classifier
    assert evaluate(logits, None, y, None, NAMES[:4])["collapse"] is None
    assert M.collapse([0] * 9 + [1], NAMES[:2]) is None  # exactly COLLAPSE_SHARE: not more than it


def test_rule5_no_interval_from_too_few_usable_resamples():
    """Trust rule 5 (issue 25): ROC-AUC [0.7321, 0.7321] came from 1 usable resample of a tiny set."""
    from fer.cli import MIN_RESAMPLES
    from fer.evaluation.metrics import bootstrap_report, interval

    values = np.full(1000, np.nan)
    values[:1] = 0.7321
    assert interval(values) == (None, 1)
    values[:MIN_RESAMPLES] = np.linspace(0.6, 0.8, MIN_RESAMPLES)
    ci, used = interval(values)
    assert used == MIN_RESAMPLES and ci[0] < ci[1]
    report = bootstrap_report({"roc_auc": np.r_[0.73, np.full(999, np.nan)]}, 1000, 0)
    assert report["ci95"]["roc_auc"] is None and report["bootstrap"]["used"]["roc_auc"] == 1
    assert report["bootstrap"]["no_interval"] == ["roc_auc"] and report["bootstrap"]["min_usable"] == MIN_RESAMPLES


# --- calibrated confidence: checked against independent implementations ---------------------------
def overconfident(n, k=7, scale=3.0, seed=0):
    """Logits of a classifier that is right about 60 % of the time, scaled up by `scale` (over-confident):
    the labels are drawn from softmax(z), the reported logits are scale * z."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, k))
    p = M.softmax(z)
    y = (p.cumsum(1) > rng.random((n, 1))).argmax(1)
    return scale * z, y


def ece_by_definition(probs, y, bins=15):
    """ECE straight from the definition, one image at a time: the image with confidence c falls in bin m
    when m/M < c <= (m+1)/M (c = 0 in the first); ECE = sum_m n_m/n |acc_m - conf_m|."""
    members = {}
    for p, t in zip(probs, y):
        c = float(max(p))
        m = min(max(int(np.ceil(c * bins)) - 1, 0), bins - 1)
        members.setdefault(m, []).append((c, float(np.argmax(p) == t)))
    return sum(len(v) / len(y) * abs(np.mean([r for _, r in v]) - np.mean([c for c, _ in v])) for v in members.values())


def lbfgs_temperature(logits, y):
    """The NLL-optimal temperature by a direct fit: torch's LBFGS on log T of cross_entropy(logits / T)."""
    import torch

    x, t = torch.tensor(logits, dtype=torch.float64), torch.tensor(y)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x / log_t.exp(), t)
        loss.backward()
        return loss
    opt.step(closure)
    return float(log_t.detach().exp())


@pytest.mark.parametrize("scale", [0.5, 1.0, 3.0])
def test_fitted_temperature_matches_a_direct_lbfgs_fit(scale):
    logits, y = overconfident(3000, scale=scale, seed=1)
    t = M.fit_temperature(logits, y)
    assert t == pytest.approx(lbfgs_temperature(logits, y), rel=1e-3)
    assert t == pytest.approx(scale, rel=0.15)  # the labels were drawn from softmax(logits / scale)


def test_ece_and_its_bootstrap_match_the_definition():
    logits, y = overconfident(500, seed=2)
    probs = M.softmax(logits)
    assert M.ece(probs, y) == pytest.approx(ece_by_definition(probs, y), abs=1e-12)
    idx = M.bootstrap_indices(len(y), 20, seed=3)
    got = M.bootstrap_ece(idx, probs, y)
    for row, value in zip(idx, got):
        assert value == pytest.approx(ece_by_definition(probs[row], y[row]), abs=1e-12)


def test_a_temperature_fitted_on_one_split_lowers_ece_and_nll_on_another():
    fit_logits, fit_y = overconfident(2000, seed=4)
    test_logits, test_y = overconfident(2000, seed=5)
    t = M.fit_temperature(fit_logits, fit_y)
    cal = M.temperature_scaling(test_logits, test_y, t, M.bootstrap_indices(len(test_y), 200, 0))
    b, a = cal["before"], cal["after"]
    assert a["ece"] < b["ece"] / 2 and a["nll"] < b["nll"]
    assert b["ece_ci95"][0] <= b["ece"] <= b["ece_ci95"][1] and a["ece_ci95"][1] < b["ece_ci95"][0]
    assert a["ece"] == pytest.approx(ece_by_definition(M.softmax(test_logits / t), test_y), abs=1e-12)
