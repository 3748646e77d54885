"""The label-issue audit (eval_resnet50.py --audit_labels): from out-of-sample predicted probabilities (a
split the model did not train on), the rows whose given label is most likely wrong, by confident learning
(cleanlab.filter.find_label_issues, ranked by self-confidence: the probability the model gives the given
label, lowest first). The review CSV it writes is what metadata_parallel.py --exclude takes back."""
import numpy as np
import pandas as pd
from cleanlab.filter import find_label_issues

REVIEW_COLUMNS = ["rank", "filename", "given_label", "suggested_label", "given_label_probability",
                  "suggested_label_probability", "exclude"]


def label_issues(probs, labels):
    """Indices of the likely label issues, most likely first (cleanlab's confident learning)."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels, int)
    present = np.unique(labels)
    if len(present) < 2:
        return np.zeros(0, int)
    # cleanlab wants the classes 0..K-1 all present: restrict to those present, as the metrics do
    sub = probs[:, present]
    sub = sub / sub.sum(1, keepdims=True)
    remap = np.searchsorted(present, labels)
    return np.asarray(find_label_issues(remap, sub, return_indices_ranked_by="self_confidence"), int)


def review_table(filenames, probs, labels, class_names, paths=None):
    """The ranked issues as the review CSV: rank, filename, given and suggested label with the model's
    probability of each, and an empty `exclude` column for the reviewer (yes: excluded by --exclude)."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels, int)
    idx = label_issues(probs, labels)
    names = np.asarray(class_names)
    suggested = probs[idx].argmax(1)
    df = pd.DataFrame({"rank": np.arange(1, len(idx) + 1), "filename": np.asarray(filenames, dtype=object)[idx],
                       "given_label": names[labels[idx]], "suggested_label": names[suggested],
                       "given_label_probability": probs[idx, labels[idx]],
                       "suggested_label_probability": probs[idx, suggested], "exclude": ""})
    if paths is not None:
        df["path"] = np.asarray(paths, dtype=object)[idx]
    df.attrs["rows"] = idx
    return df
