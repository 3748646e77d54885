"""Metrics for expression classification and valence/arousal regression.

Training's per-epoch validation and eval_resnet50.py both score through this module, so their
numbers are the same by construction. scikit-learn and krippendorff compute what they can; SAGR and
CCC, which they do not provide, are defined below (and in the README), as are the calibration
measures (ECE, NLL, Brier score, temperature scaling: Guo et al. 2017, "On Calibration of Modern
Neural Networks").
"""
import numpy as np
from sklearn import metrics as skm

from fer.cli import MIN_RESAMPLES
from fer.constants import COLLAPSE_SHARE, VA_RANGE
from fer.trust import progress as progress_of


def softmax(logits):
    """Class probabilities from logits (float64, rows sum to 1)."""
    z = np.asarray(logits, np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def log_softmax(logits):
    z = np.asarray(logits, np.float64)
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def clip_va(pred):
    return np.clip(pred, *VA_RANGE)


def accuracy(y_true, y_pred):
    return float(skm.accuracy_score(y_true, y_pred)) if len(y_true) else float("nan")


def f1_macro(y_true, y_pred):
    """Macro F1 over the labels that occur in truth or prediction (scikit-learn's), 0 where undefined."""
    return float(skm.f1_score(y_true, y_pred, average="macro", zero_division=0)) if len(y_true) else float("nan")


def rmse(true, pred):
    """Root mean squared error per column and over all values together, on clipped predictions."""
    err = (clip_va(np.asarray(pred, np.float64)) - np.asarray(true, np.float64)) ** 2
    return {"valence": float(np.sqrt(err[:, 0].mean())), "arousal": float(np.sqrt(err[:, 1].mean())),
            "combined": float(np.sqrt(err.mean()))}


def sagr(true, pred):
    """Sign agreement rate: mean of sign(true) == sign(pred); a zero only agrees with a zero."""
    return float(np.mean(np.sign(true) == np.sign(pred)))


def ccc(true, pred):
    """Lin's concordance correlation coefficient with population (ddof=0) moments.

    None when undefined, i.e. when both series are constant (zero denominator).
    """
    mt, mp = true.mean(), pred.mean()
    if np.ptp(true) == 0 and np.ptp(pred) == 0 and mt == mp:  # 0/0
        return None
    vt, vp = true.var(), pred.var()
    cov = np.mean((true - mt) * (pred - mp))
    denom = vt + vp + (mt - mp) ** 2
    return float(2 * cov / denom)


def pearson(true, pred):
    """Pearson correlation; None when either series is constant."""
    if np.ptp(true) == 0 or np.ptp(pred) == 0:  # exact test: np.std of a constant can be 1e-17
        return None
    return float(np.corrcoef(true, pred)[0, 1])


def regression_metrics(true, pred):
    """rmse, mae, corr, sagr, ccc of one target (pred already clipped)."""
    true, pred = np.asarray(true, np.float64), np.asarray(pred, np.float64)
    return {"rmse": float(np.sqrt(np.mean((pred - true) ** 2))), "mae": float(np.mean(np.abs(pred - true))),
            "corr": pearson(true, pred), "sagr": sagr(true, pred), "ccc": ccc(true, pred)}


def classification_metrics(y_true, probs, class_names):
    """Accuracy, macro F1, Cohen's kappa, one-vs-rest macro ROC-AUC and PR-AUC, Krippendorff's alpha,
    per-class precision/recall/F1/support and the confusion matrix. Returns (metrics, notes)."""
    import krippendorff

    notes = []
    y_true = np.asarray(y_true)
    y_pred = probs.argmax(1)
    labels = np.arange(len(class_names))
    present = np.unique(y_true)
    out = {"accuracy": accuracy(y_true, y_pred),
           "f1_macro": f1_macro(y_true, y_pred),
           "kappa": _or_none(skm.cohen_kappa_score(y_true, y_pred))}
    # AUCs one-vs-rest over the classes that occur: a class without positives has no ROC curve.
    if len(present) < len(labels):
        missing = [class_names[c] for c in labels if c not in present]
        notes.append(f"classes absent from the ground truth ({', '.join(missing)}): "
                     f"ROC-AUC and PR-AUC are averaged over the {len(present)} classes present")
    if len(present) >= 2:
        onehot = (y_true[:, None] == present[None, :]).astype(int)
        out["roc_auc"] = float(skm.roc_auc_score(onehot, probs[:, present], average="macro"))
        out["pr_auc"] = float(skm.average_precision_score(onehot, probs[:, present], average="macro"))
    else:
        out["roc_auc"] = out["pr_auc"] = None
        notes.append("fewer than two classes in the ground truth: ROC-AUC and PR-AUC are undefined")
    # Nominal alpha with ground truth and prediction as two coders.
    if len(np.unique(np.concatenate([y_true, y_pred]))) > 1:
        out["krippendorff_alpha"] = float(krippendorff.alpha(reliability_data=np.vstack([y_true, y_pred]),
                                                             level_of_measurement="nominal"))
    else:
        out["krippendorff_alpha"] = None
        notes.append("a single category overall: Krippendorff's alpha is undefined")
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    out["per_class"] = {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                               "support": int(s[i])} for i, name in enumerate(class_names)}
    out["confusion_matrix"] = skm.confusion_matrix(y_true, y_pred, labels=labels).tolist()
    return out, notes


def most_confused(cm, class_names, k=2):
    """Per true class, the k classes its images are most often predicted as (count > 0, most first;
    ties in class order), with the count and its share of the class's images."""
    cm = np.asarray(cm)
    out = {}
    for i, name in enumerate(class_names):
        row = cm[i].astype(np.int64).copy()
        row[i] = -1
        order = sorted((j for j in range(len(class_names)) if row[j] > 0), key=lambda j: -row[j])[:k]
        total = int(cm[i].sum())
        out[name] = [{"class": class_names[j], "count": int(cm[i, j]), "share": float(cm[i, j] / total)}
                     for j in order]
    return out


# --- calibration (Guo et al. 2017) ----------------------------------------------------------------
CALIBRATION_BINS = 15

TEMPERATURE_RANGE = (0.01, 100.0)  # the search range of the temperature


def confidence_bins(probs, y_true, bins=CALIBRATION_BINS):
    """(confidence, correct as 0/1, the bin of each image, the bin edges): equal-width bins (lo, hi] of the
    top probability, shared by the reliability diagram, the ECE and its bootstrap."""
    probs, y_true = np.asarray(probs, np.float64), np.asarray(y_true)
    conf, correct = probs.max(1), (probs.argmax(1) == y_true).astype(np.float64)
    edges = np.linspace(0, 1, bins + 1)
    return conf, correct, np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1), edges


def reliability(probs, y_true, bins=CALIBRATION_BINS):
    """Confidence (top probability) against accuracy in equal-width bins (lo, hi]: one dict per bin
    with count, accuracy and mean confidence (None when empty)."""
    conf, correct, which, edges = confidence_bins(probs, y_true, bins)
    out = []
    for b in range(bins):
        sel = which == b
        n = int(sel.sum())
        out.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": n,
                    "accuracy": float(correct[sel].mean()) if n else None,
                    "confidence": float(conf[sel].mean()) if n else None})
    return out


def ece(probs, y_true, bins=CALIBRATION_BINS):
    """Expected calibration error: sum over bins of |accuracy - confidence| x share of samples."""
    return float(bootstrap_ece(np.arange(len(y_true))[None], probs, y_true, bins)[0])


def nll(logits, y_true):
    """Mean negative log-likelihood of the true class (natural log), from logits for accuracy."""
    y_true = np.asarray(y_true)
    return float(-log_softmax(logits)[np.arange(len(y_true)), y_true].mean())


def brier(probs, y_true):
    """Multi-class Brier score: mean over samples of sum over classes of (p - one-hot)^2, in [0, 2]."""
    probs = np.asarray(probs, np.float64)
    onehot = np.eye(probs.shape[1])[np.asarray(y_true)]
    return float(((probs - onehot) ** 2).sum(1).mean())


def fit_temperature(logits, y_true):
    """The temperature T minimising the NLL of softmax(logits / T) on this set (searched on log T)."""
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, np.float64)
    res = minimize_scalar(lambda t: nll(logits / np.exp(t), y_true), method="bounded",
                          bounds=tuple(np.log(TEMPERATURE_RANGE)), options={"xatol": 1e-5})
    return float(np.exp(res.x))


def calibration(logits, y_true, bins=CALIBRATION_BINS):
    """ECE, NLL, Brier score, the reliability bins, and the NLL-optimal temperature with the ECE and
    NLL it would give. Reported only: nothing is rescaled. Returns (metrics, notes)."""
    probs = softmax(logits)
    t = fit_temperature(logits, y_true)
    scaled = np.asarray(logits, np.float64) / t
    out = {"ece": ece(probs, y_true, bins), "nll": nll(logits, y_true), "brier": brier(probs, y_true),
           "temperature": t, "ece_at_temperature": ece(softmax(scaled), y_true, bins),
           "nll_at_temperature": nll(scaled, y_true), "reliability": reliability(probs, y_true, bins)}
    notes = []
    if not TEMPERATURE_RANGE[0] * 1.01 < t < TEMPERATURE_RANGE[1] / 1.01:
        notes.append(f"the NLL-optimal temperature lies at the end of the searched range "
                     f"[{TEMPERATURE_RANGE[0]:g}, {TEMPERATURE_RANGE[1]:g}] (e.g. every image right with a margin)")
    return out, notes


def collapse(y_pred, class_names, share=COLLAPSE_SHARE):
    """{"class", "share", "threshold"} when one class takes more than `share` of the predictions (a collapsed
    model: it predicts (almost) one class whatever the image), else None."""
    y_pred = np.asarray(y_pred)
    if not len(y_pred):
        return None
    counts = np.bincount(y_pred, minlength=len(class_names))
    top = int(counts.argmax())
    top_share = float(counts[top] / len(y_pred))
    if top_share <= share:
        return None
    return {"class": class_names[top], "share": top_share, "threshold": share}


def collapse_text(c, what="images"):
    """The warning line of a collapse() result."""
    return (f"COLLAPSED: the model predicts {c['class']} for {c['share']:.0%} of the {what} (more than "
            f"{c['threshold']:.0%}): it does not tell the expressions apart")


def _or_none(x):
    x = float(x)
    return None if np.isnan(x) else x


def evaluate(logits, va_pred, y_true, va_true, class_names):
    """The full report: {'n', classification and calibration metrics, 'valence': {...}, 'arousal': {...},
    'notes'}; per class also the two classes it is most often predicted as.

    va_true may be None or all-NaN (a classification-only dataset): regression is then left out. Each
    dimension is scored on the samples that have it; a dimension without any value is absent.
    """
    probs = softmax(logits)
    out, notes = classification_metrics(y_true, probs, class_names)
    cal, cal_notes = calibration(logits, y_true)
    out = {"n": int(len(y_true)), **out, **cal}
    notes += cal_notes
    for name, confused in most_confused(out["confusion_matrix"], class_names).items():
        out["per_class"][name]["confused_with"] = confused
    va_true = np.full((len(y_true), 2), np.nan) if va_true is None else np.asarray(va_true, np.float64)
    has = ~np.isnan(va_true)
    if has.any():
        notes.append(f"valence/arousal predictions clipped to [{VA_RANGE[0]:g}, {VA_RANGE[1]:g}] before scoring")
    for i, name in enumerate(("valence", "arousal")):
        if not has[:, i].any():
            if has.any():
                notes.append(f"no {name} labels: {name} is not scored")
            continue
        if not has[:, i].all():
            notes.append(f"{int((~has[:, i]).sum())} samples without {name} left out of its metrics")
        out[name] = regression_metrics(va_true[has[:, i], i], clip_va(va_pred[has[:, i], i]))
        for m in ("corr", "ccc"):
            if out[name][m] is None:
                notes.append(f"{name} {m.upper()} undefined (constant predictions or labels): reported as null")
    both = has.all(1)
    if both.any():
        out["rmse_combined"] = rmse(va_true[both], va_pred[both])["combined"]
    if not has.any():
        notes.append("no valence/arousal labels: classification-only report")
    out["collapse"] = collapse(probs.argmax(1), list(class_names))
    if out["collapse"]:
        notes.insert(0, collapse_text(out["collapse"]))
    out["notes"] = notes
    return out


# --- bootstrap intervals and paired comparisons ---------------------------------------------------
# Every metric is computed on the same matrix of resampled image indices (resamples x n), in numpy
# over the whole matrix where the metric allows it, so 1000 resamples of 800 images take seconds and
# two models compared on the same resamples give a paired interval. A metric that is undefined on a
# resample (a class of the evaluated set missing from it, a constant series) is left out of that
# resample; the number of resamples each interval used is reported beside it.
CLASS_AVERAGED = ("f1_macro", "roc_auc", "pr_auc")  # undefined on a resample that misses a class


def bootstrap_indices(n, resamples, seed):
    """(resamples, n) image indices drawn with replacement, reproducible from seed."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _ratio(num, den):
    """num / den, NaN where den is 0 (an undefined value, left out of the interval)."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.divide(num, den, out=np.full(np.broadcast(num, den).shape, np.nan), where=den != 0)


def _resampled_classification(idx, y_true, probs, class_names):
    """{key: (resamples,) values} of the classification metrics, NaN where undefined."""
    b, k = len(idx), probs.shape[1]
    y, p = y_true[idx], probs.argmax(1)[idx]
    cm = np.bincount((np.arange(b)[:, None] * k * k + y * k + p).ravel(), minlength=b * k * k).reshape(b, k, k)
    rows, cols, tp = cm.sum(2), cm.sum(1), np.einsum("bkk->bk", cm)
    n = idx.shape[1]
    present = np.unique(y_true)
    complete = (rows[:, present] > 0).all(1)  # every class of the evaluated set drawn
    out = {"accuracy": tp.sum(1) / n}
    labels = (rows > 0) | (cols > 0)  # scikit-learn's macro F1 averages over the labels that occur
    f1 = _ratio(2 * tp, rows + cols)
    out["f1_macro"] = np.nansum(np.where(labels, f1, 0), 1) / labels.sum(1)
    pe = (rows * cols).sum(1) / n ** 2
    out["kappa"] = _ratio(tp.sum(1) / n - pe, 1 - pe)
    # ROC-AUC and average precision one-vs-rest, from one sort of each class's scores per resample.
    if len(present) >= 2:
        auc, ap = zip(*(_ranking_metrics(probs[idx, c], y == c) for c in present))
        out["roc_auc"], out["pr_auc"] = np.mean(auc, 0), np.mean(ap, 0)
    else:
        out["roc_auc"] = out["pr_auc"] = np.full(b, np.nan)
    # Krippendorff's nominal alpha with truth and prediction as two coders, from the coincidence matrix.
    o = cm + cm.transpose(0, 2, 1)
    nc = o.sum(2)
    disagree = o.sum((1, 2)) - np.einsum("bkk->b", o)
    expected = nc.sum(1) ** 2 - (nc ** 2).sum(1)
    out["krippendorff_alpha"] = 1 - (2 * n - 1) * _ratio(disagree, expected)
    for key in CLASS_AVERAGED:
        out[key] = np.where(complete, out[key], np.nan)
    for i, name in enumerate(class_names):
        out[f"per_class.{name}.precision"] = _ratio(tp[:, i], cols[:, i])
        out[f"per_class.{name}.recall"] = _ratio(tp[:, i], rows[:, i])
        out[f"per_class.{name}.f1"] = np.where(rows[:, i] > 0, f1[:, i], np.nan)
    return out


def _ranking_metrics(scores, positive):
    """(ROC-AUC, average precision) of each row, as roc_auc_score and average_precision_score compute
    them: tied scores form one threshold; a positive tied with a negative counts half for the AUC."""
    n = scores.shape[1]
    order = np.argsort(-scores, axis=1, kind="stable")
    s, pos = np.take_along_axis(scores, order, 1), np.take_along_axis(positive, order, 1)
    steps = np.arange(n)
    cum_pos = np.cumsum(pos, 1)
    cum_neg = steps + 1 - cum_pos
    new_score = s[:, 1:] != s[:, :-1]
    is_end, is_start = np.ones_like(pos, bool), np.ones_like(pos, bool)
    is_end[:, :-1], is_start[:, 1:] = new_score, new_score
    group_end = np.minimum.accumulate(np.where(is_end, steps, n)[:, ::-1], 1)[:, ::-1]
    group_start = np.maximum.accumulate(np.where(is_start, steps, 0), 1)
    neg_through = np.take_along_axis(cum_neg, group_end, 1)  # negatives scored >= this one
    neg_above = np.where(group_start > 0, np.take_along_axis(cum_neg, np.maximum(group_start - 1, 0), 1), 0)
    npos = pos.sum(1)
    nneg = n - npos
    auc = _ratio((pos * (nneg[:, None] - 0.5 * (neg_through + neg_above))).sum(1), npos * nneg)
    precision = np.take_along_axis(cum_pos / (steps + 1), group_end, 1)
    return auc, _ratio((pos * precision).sum(1), npos)


def _resampled_regression(idx, va_true, va_pred):
    """{key: (resamples,) values} of the valence/arousal metrics, each dimension over the resampled rows that
    have it and the combined RMSE over those that have both, as evaluate() scores them (not over the rows
    with both: an interval must belong to its point estimate); a dimension without labels is absent."""
    has = ~np.isnan(va_true)
    both = has.all(1)[idx].astype(np.float64)
    out, sq = {}, 0
    for j, name in enumerate(("valence", "arousal")):
        if not has[:, j].any():
            continue
        w = has[idx, j].astype(np.float64)
        m = w.sum(1)
        t, p = np.nan_to_num(va_true[:, j])[idx], clip_va(np.asarray(va_pred[:, j], np.float64))[idx]
        mean = lambda x: _ratio((w * x).sum(1), m)  # noqa: E731
        mt, mp = mean(t), mean(p)
        vt, vp = mean((t - mt[:, None]) ** 2), mean((p - mp[:, None]) ** 2)
        cov = mean((t - mt[:, None]) * (p - mp[:, None]))
        spread = lambda x: np.where(w > 0, x, -np.inf).max(1) - np.where(w > 0, x, np.inf).min(1)  # noqa: E731
        constant_t, constant_p = spread(t) == 0, spread(p) == 0
        sq = sq + both * (p - t) ** 2
        out[f"{name}.rmse"] = np.sqrt(mean((p - t) ** 2))
        out[f"{name}.mae"] = mean(np.abs(p - t))
        out[f"{name}.corr"] = np.where(constant_t | constant_p, np.nan, _ratio(cov, np.sqrt(vt * vp)))
        out[f"{name}.sagr"] = mean(np.sign(t) == np.sign(p))
        out[f"{name}.ccc"] = np.where(constant_t & constant_p & (mt == mp), np.nan,
                                      _ratio(2 * cov, vt + vp + (mt - mp) ** 2))
    if has.all(1).any():
        out["rmse_combined"] = np.sqrt(_ratio(sq.sum(1), 2 * both.sum(1)))
    return out


def bootstrap_metrics(idx, logits, y_true, va_pred, va_true, class_names, block=4_000_000, progress=False):
    """Every metric of evaluate() on each row of idx: {"accuracy": (resamples,), "valence.ccc": ..., ...}.
    Resamples are scored in blocks of about `block` drawn images, which bounds the memory on large sets
    (and, with progress, in at least 20 blocks, reported as fer.trust.progress does)."""
    probs, y_true = softmax(logits), np.asarray(y_true)
    has_va = va_true is not None and len(va_true) and not np.isnan(va_true).all()
    parts = []
    step = max(1, block // max(idx.shape[1], 1))
    if progress:
        step = min(step, max(1, -(-len(idx) // 20)))
    starts = range(0, max(len(idx), 1), step)
    for start in progress_of(starts, desc="bootstrap", unit="block", disable=not progress):
        part = idx[start:start + step]
        out = _resampled_classification(part, y_true, probs, class_names)
        if has_va:
            out.update(_resampled_regression(part, np.asarray(va_true, np.float64), np.asarray(va_pred)))
        parts.append(out)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def interval(values):
    """([2.5th, 97.5th] percentile or None, resamples used) over the defined values. Trust rule 5: fewer
    usable resamples than MIN_RESAMPLES (a metric undefined on most resamples of a tiny set) give no
    interval: the 2.5th percentile of a handful of values is no 95 % interval."""
    ok = values[np.isfinite(values)]
    if len(ok) < MIN_RESAMPLES:
        return None, int(len(ok))
    lo, hi = np.percentile(ok, [2.5, 97.5])
    return [float(lo), float(hi)], int(len(ok))


def nest(flat):
    """{"valence.ccc": x} -> {"valence": {"ccc": x}} (class names hold no dots: they are fixed names)."""
    out = {}
    for key, value in flat.items():
        *path, last = key.split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def flatten(metrics, prefix=""):
    """The scalar metrics of evaluate()'s dict as {"accuracy": x, "valence.ccc": y, ...}."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        elif isinstance(value, (float, int, type(None))) and not isinstance(value, bool) and key not in ("n", "support"):
            out[prefix + key] = value
    return out


def bootstrap_report(samples, resamples, seed):
    """The JSON fields "ci95" (nested like the metrics) and "bootstrap" (resamples, seed, used per metric)."""
    cis, used = {}, {}
    for key, values in samples.items():
        cis[key], used[key] = interval(values)
    return {"ci95": nest(cis), "bootstrap": {"resamples": int(resamples), "seed": int(seed), "used": used,
                                             "min_usable": MIN_RESAMPLES,
                                             "no_interval": sorted(k for k, n in used.items() if n < MIN_RESAMPLES)}}


def mcnemar(correct_a, correct_b):
    """McNemar's exact test: a two-sided binomial test on the pairs only one of the two models got right."""
    from scipy.stats import binomtest

    a_only = int(np.sum(correct_a & ~correct_b))
    b_only = int(np.sum(~correct_a & correct_b))
    p = binomtest(b_only, a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
    return {"a_only_correct": a_only, "b_only_correct": b_only, "p_value": float(p)}


def paired_comparison(point_a, point_b, samples_a, samples_b, correct_a, correct_b, resamples, seed):
    """Each metric of A and B, the difference B - A with its interval over the same resamples, and McNemar
    for accuracy. point_*: evaluate() dicts; samples_*: bootstrap_metrics() of the same indices."""
    fa, fb = flatten(point_a), flatten(point_b)
    metrics = {}
    for key in samples_a:
        a, b = fa.get(key), fb.get(key)
        diff_ci, used = interval(samples_b[key] - samples_a[key])
        metrics[key] = {"a": a, "b": b, "diff": None if a is None or b is None else b - a,
                        "ci95_a": interval(samples_a[key])[0], "ci95_b": interval(samples_b[key])[0],
                        "ci95_diff": diff_ci, "used": used}
    return {"n": int(len(correct_a)), "metrics": metrics, "mcnemar": mcnemar(correct_a, correct_b),
            "bootstrap": {"resamples": int(resamples), "seed": int(seed)}}


def format_comparison(comp, name_a="A", name_b="B"):
    """The paired comparison as a text table: each metric of both, B - A, its 95 % interval, McNemar."""
    fmt = lambda x: "n/a" if x is None else f"{x:+.4f}" if isinstance(x, float) and x < 0 else f"{x:.4f}"  # noqa: E731
    ci = lambda c: "n/a" if c is None else f"[{c[0]:+.4f}, {c[1]:+.4f}]"  # noqa: E731
    lines = [f"paired comparison on {comp['n']} images, {comp['bootstrap']['resamples']} bootstrap resamples "
             f"(seed {comp['bootstrap']['seed']}); A = {name_a}, B = {name_b}",
             f"  {'metric':<28}{'A':>9}{'B':>9}{'B - A':>10}  {'95% CI of B - A':<22}{'resamples':>9}"]
    for key, m in comp["metrics"].items():
        if key.startswith("per_class."):
            continue
        diff = "n/a" if m["diff"] is None else f"{m['diff']:+.4f}"
        lines.append(f"  {key:<28}{fmt(m['a']):>9}{fmt(m['b']):>9}{diff:>10}  {ci(m['ci95_diff']):<22}{m['used']:>9}")
    mc = comp["mcnemar"]
    lines.append(f"McNemar's exact test (accuracy): {mc['a_only_correct']} images only A got right, "
                 f"{mc['b_only_correct']} only B; two-sided p = {mc['p_value']:.4g}")
    return "\n".join(lines)


# --- calibrated confidence: a temperature fitted on one split, applied to another -----------------
def bootstrap_ece(idx, probs, y_true, bins=CALIBRATION_BINS):
    """The ECE of each resample (row of idx; ece() is the one 'resample' of every image): one bincount per
    statistic over the whole (resamples x n) matrix, so 1000 resamples of thousands of images take a fraction
    of a second."""
    idx = np.asarray(idx)
    conf, correct, which, _ = confidence_bins(probs, y_true, bins)
    b, n = idx.shape
    key = (np.arange(b)[:, None] * bins + which[idx]).ravel()
    conf_sum = np.bincount(key, conf[idx].ravel(), minlength=b * bins).reshape(b, bins)
    right_sum = np.bincount(key, correct[idx].ravel(), minlength=b * bins).reshape(b, bins)
    return np.abs(right_sum - conf_sum).sum(1) / n  # sum_b n_b/n |acc_b - conf_b| = sum_b |right_b - conf_b| / n


def calibration_summary(logits, y_true, idx=None, bins=CALIBRATION_BINS):
    """ECE (with its bootstrap interval over the resamples idx, when given), NLL, Brier and the reliability
    bins of softmax(logits)."""
    probs = softmax(logits)
    out = {"ece": ece(probs, y_true, bins), "nll": nll(logits, y_true), "brier": brier(probs, y_true),
           "reliability": reliability(probs, y_true, bins)}
    if idx is not None:
        out["ece_ci95"] = interval(bootstrap_ece(idx, probs, y_true, bins))[0]
    return out


def temperature_scaling(logits, y_true, temperature, idx=None, bins=CALIBRATION_BINS):
    """Calibration before and after dividing the logits by temperature: {"temperature", "before": {...},
    "after": {...}} with calibration_summary's fields (the same resamples idx for both intervals)."""
    logits = np.asarray(logits, np.float64)
    return {"temperature": float(temperature), "before": calibration_summary(logits, y_true, idx, bins),
            "after": calibration_summary(logits / temperature, y_true, idx, bins)}
