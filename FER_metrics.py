"""Metrics for expression classification and valence/arousal regression.

Training's per-epoch validation and eval_resnet50.py both score through this module, so their
numbers are the same by construction. scikit-learn and krippendorff compute what they can; SAGR and
CCC, which they do not provide, are defined below (and in the README), as are the calibration
measures (ECE, NLL, Brier score, temperature scaling: Guo et al. 2017, "On Calibration of Modern
Neural Networks").
"""
import numpy as np
from sklearn import metrics as skm

VA_RANGE = (-1.0, 1.0)  # valence/arousal labels lie in [-1, 1]; predictions are clipped to it


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
           "f1_macro": float(skm.f1_score(y_true, y_pred, average="macro", zero_division=0)),
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


def reliability(probs, y_true, bins=CALIBRATION_BINS):
    """Confidence (top probability) against accuracy in equal-width bins (lo, hi]: one dict per bin
    with count, accuracy and mean confidence (None when empty)."""
    probs, y_true = np.asarray(probs, np.float64), np.asarray(y_true)
    conf, correct = probs.max(1), probs.argmax(1) == y_true
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
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
    n = len(y_true)
    return float(sum(b["count"] / n * abs(b["accuracy"] - b["confidence"])
                     for b in reliability(probs, y_true, bins) if b["count"]))


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


def _or_none(x):
    x = float(x)
    return None if np.isnan(x) else x


def evaluate(logits, va_pred, y_true, va_true, class_names):
    """The full report: {'n', classification and calibration metrics, 'valence': {...}, 'arousal': {...},
    'notes'}; per class also the two classes it is most often predicted as.

    va_true may be None or all-NaN (a classification-only dataset): regression is then left out.
    """
    probs = softmax(logits)
    out, notes = classification_metrics(y_true, probs, class_names)
    cal, cal_notes = calibration(logits, y_true)
    out = {"n": int(len(y_true)), **out, **cal}
    notes += cal_notes
    for name, confused in most_confused(out["confusion_matrix"], class_names).items():
        out["per_class"][name]["confused_with"] = confused
    has_va = va_true is not None and len(va_true) and not np.isnan(va_true).all()
    if has_va:
        ok = ~np.isnan(va_true).any(1)
        if not ok.all():
            notes.append(f"{int((~ok).sum())} samples without valence/arousal left out of the regression metrics")
        pred = clip_va(va_pred[ok])
        notes.append(f"valence/arousal predictions clipped to [{VA_RANGE[0]:g}, {VA_RANGE[1]:g}] before scoring")
        for i, name in enumerate(("valence", "arousal")):
            out[name] = regression_metrics(va_true[ok, i], pred[:, i])
            for m in ("corr", "ccc"):
                if out[name][m] is None:
                    notes.append(f"{name} {m.upper()} undefined (constant predictions or labels): reported as null")
        out["rmse_combined"] = rmse(va_true[ok], va_pred[ok])["combined"]
    else:
        notes.append("no valence/arousal labels: classification-only report")
    out["notes"] = notes
    return out


if __name__ == "__main__":
    from FER_io import not_a_script
    not_a_script(__file__)
