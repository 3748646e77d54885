"""Training runs side by side, and two models' predictions compared image by image (compare_runs.py).

The table: one row per run (best validation accuracy, macro F1, valence/arousal CCC at the best epoch,
epochs, wall time, images/s); as columns only the flags and data fingerprints that differ between runs,
the rest in one "same in all runs" line. Runs that differ only in --seed become one row: mean ± std over
n. A record that cannot be read is named and skipped. The plot: one figure per --metric, a line per row
(replicate seeds: their mean with a min-max band), short labels from the differing flags, the legend
outside the axes, integer epochs. The paired comparison: every metric of two
prediction files of the same images, B - A with its bootstrap interval, McNemar's test for accuracy.
"""
import csv
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fer.cli.compare import METRICS, RECORD_NAMES, outputs, plot_paths
from fer.cli.train import with_defaults
from fer.evaluation.metrics import bootstrap_indices, bootstrap_metrics, evaluate, format_comparison, paired_comparison
from fer.model.checkpoint import read_weights
from fer.trust import (
    FERError,
    check_input,
    check_not_inputs,
    load_json,
    one_line,
    read_json,
    read_regular_text,
    staged_outputs,
    write_text,
)

# Flags that name where a run's files go or how it was started: never what makes runs differ.
NOT_COMPARED = ("save_path", "resume", "overwrite", "config", "tensorboard", "train_meta", "val_meta", "quiet")
LOWER_IS_BETTER = ("wall_time_s",)


# --- reading runs -------------------------------------------------------------------------------
def record_files(paths, skip):
    """(record or checkpoint path) for each PATH, folders searched; unusable paths go to skip()."""
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(path.rglob("*_run.json"))
            if not found:
                skip(path, "no *_run.json in this folder")
            yield from found
        elif path.is_file():
            yield path
        else:
            skip(path, "not found")


def read_record(path):
    """The run record of a *_run.json or a checkpoint, with where it was read from; FERError if unusable."""
    if path.suffix.lower() in (".pth", ".pt"):
        obj = read_weights(path)
        record = obj.get("run") if isinstance(obj, dict) else None
        if record is None:
            raise FERError("no run record in this checkpoint (written by an older version?)")
        # The best checkpoint keeps the record of its own epoch; the record beside it is the whole run's.
        beside = Path(f"{path.with_suffix('')}_run.json")
        later = read_json(beside, "run record", default={})
        if isinstance(later, dict) and later.get("started") == record.get("started"):
            record = later
    else:
        try:  # a FIFO named *_run.json: no hang; a JSON bomb: no RecursionError
            record = load_json(read_regular_text(path, "PATH"), "run record")
        except FERError as e:
            raise FERError(f"not a readable run record ({str(e).split(': ', 1)[-1]})") from None
    if not isinstance(record, dict) or not isinstance(record.get("args"), dict) or not isinstance(record.get("best"), dict):
        raise FERError("not a run record (no args / best fields)")
    name = str(path.with_suffix(""))
    name = name[:-len("_run")] if name.endswith("_run") else name
    return {"name": name, "folder": path.parent, "record": record}


def load_runs(paths):
    runs, seen, skipped = [], set(), []

    def skip(path, why):
        skipped.append(f"skipped {path}: {why}")
    for path in record_files(paths, skip):
        try:
            run = read_record(path)
        except FERError as e:
            skip(path, one_line(e))
            continue
        key = (run["record"].get("started"), json.dumps(run["record"]["args"], sort_keys=True, default=str))
        if key in seen:  # the same run given as its folder, record and checkpoint
            continue
        seen.add(key)
        runs.append(run)
    return runs, skipped


# --- the table ----------------------------------------------------------------------------------
def fingerprints(record, split):
    return ",".join(d.get("fingerprint", "?")[:12] for d in record.get("data", {}).get(split, [])) or "not recorded"


def settings(record):
    """What defines a run: its flags (but where files go) and the fingerprints of its data."""
    out = {k: v for k, v in record["args"].items() if k not in NOT_COMPARED}
    start = record.get("init_from") if isinstance(record.get("init_from"), dict) else {}
    if start.get("fingerprint"):  # --init_from by the weights it held, not by the path it was given as
        out["init_from"] = f"weights {start['fingerprint'][:12]}"
    out["train data"], out["val data"] = fingerprints(record, "train"), fingerprints(record, "val")
    return out


def best_on(record):
    """The weights whose validation counts for a run ("raw" or "ema"): the record's best_on (its best epoch and
    `best` are theirs), else its --best_on flag."""
    return record.get("best_on") or record.get("args", {}).get("best_on") or "raw"


def counted_raw(record):
    """A record written before best_on was counted (--best_on ema, but `best` holds the raw weights')."""
    return "best_on" not in record and record.get("args", {}).get("best_on") == "ema"


def metric(record, key):
    value = record["best"].get(METRICS[key]) if METRICS[key] else record.get(RECORD_NAMES.get(key, key))
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def shown(value):
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(shown, value))
    return str(value)


def group_runs(runs):
    """Runs whose settings are equal but for --seed, and whose `best` holds the same weights' numbers (a record
    from before best_on was counted holds the raw ones under --best_on ema: never averaged with the EMA numbers
    of a newer replicate), in first-seen order."""
    groups = {}
    for run in runs:
        s = {k: v for k, v in settings(run["record"]).items() if k != "seed"}
        s[" counted"] = "raw" if counted_raw(run["record"]) else best_on(run["record"])
        key = json.dumps(s, sort_keys=True, default=str)
        groups.setdefault(key, []).append(run)
    return list(groups.values())


def with_new_flags(runs):
    """Runs recorded before a flag existed count it at its default (as a resume does: resolved as the run's
    own flags make it), so an older run and a newer one that differ only in --seed are one row, not a
    column of None against the default."""
    keys = set().union(*(run["record"]["args"] for run in runs))
    for run in runs:
        args = run["record"]["args"]
        if args and keys - set(args):
            filled = with_defaults(args)
            args.update({k: filled[k] for k in sorted(keys - set(args)) if k in filled})


def build_table(runs):
    """(rows, differing columns, same-in-all dict, notes)."""
    with_new_flags(runs)
    groups, notes = [], []
    for group in group_runs(runs):
        seeds = [r["record"]["args"].get("seed") for r in group]
        reruns = [r for k, r in enumerate(group) if seeds[k] in seeds[:k]]  # the same seed again: not a replicate
        if reruns:
            notes.append(f"{', '.join(r['name'] for r in reruns)}: the same settings and --seed as {group[0]['name']} "
                         f"(a rerun, not a replicate): left out of its row's n, mean and std")
        groups.append([r for r in group if all(r is not x for x in reruns)])
    grouped = any(len(g) > 1 for g in groups)
    per_group = [settings(g[0]["record"]) for g in groups]
    keys = list(dict.fromkeys(k for s in per_group for k in s))
    if grouped:
        keys.remove("seed")  # seeds are the replicates of a row, not a column
    differing = [k for k in keys if len({json.dumps(s.get(k), default=str) for s in per_group}) > 1]
    same = {k: per_group[0].get(k) for k in keys if k not in differing}
    rows = []
    for group, s in zip(groups, per_group):
        row = {"name": group[0]["name"] + (f" (+{len(group) - 1} more)" if len(group) > 1 else ""),
               "n": len(group), "seeds": [r["record"]["args"].get("seed") for r in group], "runs": group}
        row.update({k: s.get(k) for k in differing})
        for m in METRICS:
            values = np.array([metric(r["record"], m) for r in group])
            row[m] = float(np.mean(values))
            row[m + "_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
        rows.append(row)
    old = [r["name"] for g in groups for r in g if counted_raw(r["record"])]
    if old:
        notes.append(f"{', '.join(old)}: recorded before --best_on ema was counted: its metrics are the raw "
                     f"weights' at the raw weights' best epoch")
    if any(best_on(r["record"]) == "ema" for g in groups for r in g):
        notes.append("metrics are those of the weights each run's --best_on names (ema: the averaged weights)")
    for split in ("train", "val"):
        if f"{split} data" in differing:
            notes.append(f"the runs used different {split} data (fingerprints differ): their {split} results are "
                         f"not one experiment")
    return rows, differing, same, notes


def sort_rows(rows, key):
    if key == "name":
        return sorted(rows, key=lambda r: r["name"])
    sign = 1 if key in LOWER_IS_BETTER else -1
    return sorted(rows, key=lambda r: (r[key] != r[key], sign * r[key] if r[key] == r[key] else 0))


def cell(row, m):
    value, std = row[m], row[m + "_std"]
    if value != value:
        return "n/a"
    spec = {"epochs_run": ".1f" if std is not None else ".0f", "wall_time_s": ".0f", "img_per_s": ".1f"}.get(m, ".4f")
    return f"{value:{spec}}" + (f" ± {std:{spec}}" if std is not None else "")


def table_cells(rows, differing):
    header = ["name", *differing, "n", "val acc", "macro F1", "CCC V", "CCC A", "epochs run", "wall s", "img/s"]
    body = [[r["name"], *(shown(r[k]) for k in differing), str(r["n"]), *(cell(r, m) for m in METRICS)]
            for r in rows]
    return header, body


def text_table(header, body):
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, body)])


def markdown_table(header, body):
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                      *("| " + " | ".join(b) + " |" for b in body)])


def write_csv(path, rows, differing):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["name", *differing, "n", "seeds", *(c for m in METRICS for c in (m, m + "_std"))])
        for r in rows:
            w.writerow([r["name"], *(shown(r[k]) for k in differing), r["n"], shown(r["seeds"]),
                        *(("" if v is None or v != v else v) for m in METRICS for v in (r[m], r[m + "_std"]))])


CURVE_TITLES = {"val_acc": "validation accuracy", "val_loss": "validation loss", "val_f1_macro": "validation macro F1",
                "val_rmse": "validation RMSE (valence + arousal)", "val_ccc_valence": "validation CCC of valence",
                "val_ccc_arousal": "validation CCC of arousal", "train_loss": "training loss",
                "train_acc": "training accuracy", "lr": "learning rate"}
LABEL_CHARS = 32  # the most characters of a legend label (before " (n=3)")
BAND = "min\u2013max"  # what the band around a mean of replicate seeds spans


def short_values(key, values):
    """A differing flag's values as a legend shows them: fingerprints by 8 hex digits; otherwise without the
    beginning they share when one is long (cut back to a / _ - . boundary: paths keep their last different part), then at
    most 16 characters."""
    texts = [shown(v) for v in values]
    if key.endswith(" data"):
        return [t[:8] for t in texts]
    long = len(set(texts)) > 1 and max(map(len, texts)) > 16  # short values (numbers, names) stay whole
    common = len(os.path.commonprefix(texts)) if long else 0
    while common and texts[0][common - 1] not in "/\\_-.":
        common -= 1
    texts = [("\u2026" if common else "") + t[common:] for t in texts]
    return [t if len(t) <= 16 else t[:15] + "\u2026" for t in texts]


def short_labels(rows, differing):
    """One legend label per row, from the flags that differ (the run's last two path parts when none
    does), at most LABEL_CHARS characters, distinct."""
    if differing:
        columns = [short_values(k, [row[k] for row in rows]) for k in differing]
        labels = [", ".join(f"{k}={col[i]}" for k, col in zip(differing, columns)) for i in range(len(rows))]
    else:
        labels = ["/".join(Path(row["runs"][0]["name"]).parts[-2:]) for row in rows]
    labels = [label if len(label) <= LABEL_CHARS else label[:LABEL_CHARS - 1] + "\u2026" for label in labels]
    for k, label in enumerate(labels):  # shortened into one another: numbered
        if labels.count(label) > 1:
            labels[k] = f"{label} #{k + 1}"
    return labels


def read_histories(rows):
    """({run name: history DataFrame}, notes for the runs without a readable one)."""
    found, notes = {}, []
    for row in rows:
        for run in row["runs"]:
            history = run["record"].get("outputs", {}).get("history")
            file = run["folder"] / history if history else None
            if file is None or not file.is_file():
                notes.append(f"no curve for {run['name']}: history {file or 'not recorded'} not found")
                continue
            try:
                df = pd.read_csv(file)
                df["epoch"] = pd.to_numeric(df["epoch"])
                # val_*: the weights the run's --best_on counts; raw_val_*, ema_val_*: one set of weights
                counted = best_on(run["record"])
                for raw in [c for c in df.columns if c.startswith("val_")]:
                    df["raw_" + raw] = df[raw]
                    if counted == "ema" and "ema_" + raw in df:
                        df[raw] = df["ema_" + raw]
            except Exception as e:  # a damaged CSV: named, not a traceback
                notes.append(f"no curve for {run['name']}: {file} unreadable ({type(e).__name__})")
                continue
            found[run["name"]] = df
    return found, notes


def replicate_curve(frames, metric):
    """(epochs, mean, min, max, runs per epoch) over the replicate runs' histories that hold metric."""
    series = [df.set_index("epoch")[metric].astype(float) for df in frames if metric in df.columns]
    if not series:
        return None
    table = pd.concat(series, axis=1).sort_index()
    return (table.index.to_numpy(), table.mean(axis=1).to_numpy(), table.min(axis=1).to_numpy(),
            table.max(axis=1).to_numpy(),
            table.notna().sum(axis=1).to_numpy())


def curve_figure(rows, labels, histories, metric):
    """One metric per epoch: a line per row (replicate seeds: their mean, with a min-max band where two or
    more runs reached the epoch), the legend outside the axes, integer epochs. Returns (Figure, notes)."""
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(9, 4.5))  # its own canvas: pyplot's backend and figures are left alone
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    notes, banded = [], False
    for k, (row, label) in enumerate(zip(rows, labels)):
        frames = [histories[r["name"]] for r in row["runs"] if r["name"] in histories]
        curve = replicate_curve(frames, metric)
        if curve is None:
            if frames:
                notes.append(f"no {metric} in the history of {row['name']} (a run without that curve)")
            continue
        x, mean, lo, hi, count = curve
        n = len([f for f in frames if metric in f.columns])
        color = f"C{k % 10}"
        ax.plot(x, mean, marker="o", ms=3, color=color, label=label + (f" (n={n})" if n > 1 else ""))
        if n > 1:
            two = count >= 2
            ax.fill_between(x[two], lo[two], hi[two], color=color, alpha=0.2, lw=0)
            banded = True
    ax.set(title=CURVE_TITLES.get(metric, metric), xlabel="epoch", ylabel=metric)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if ax.lines:  # no curve at all: the notes say why; no empty legend (and its warning)
        title = f"mean of n seeds, band {BAND}" if banded else None
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0, fontsize=8, title=title,
                  title_fontsize=8, frameon=False)
    fig.tight_layout()
    return fig, notes


def plot_curves(paths, rows, differing):
    """{metric: file}: one figure per metric (curve_figure), labelled by what differs. Returns notes."""
    histories, notes = read_histories(rows)
    labels = short_labels(rows, differing)
    for metric, path in paths.items():
        fig, more = curve_figure(rows, labels, histories, metric)
        notes += more
        fig.savefig(path, dpi=110, bbox_inches="tight")  # the legend outside the axes kept in the file
    return notes


# --- paired comparison of prediction files ------------------------------------------------------
PROB_SUM_TOLERANCE = 0.01  # 8 probabilities rounded to 4 decimals are off by at most 0.0004


def read_predictions(path):
    """(table indexed by filename, class names) of an eval_resnet50.py --save_predictions CSV."""
    check_input(path, "--predictions")
    try:
        df = pd.read_csv(path)
    except Exception as e:
        raise FERError(f"--predictions {path}: not a readable CSV ({type(e).__name__})") from None
    classes = [c[len("prob_"):] for c in df.columns if c.startswith("prob_")]
    missing = [c for c in ("filename", "y_true") if c not in df.columns] + ([] if classes else ["prob_<class>"])
    if missing:
        raise FERError(f"--predictions {path}: column {missing[0]} missing (not a --save_predictions file)")
    if df.empty:
        raise FERError(f"--predictions {path}: no rows (a header only): nothing to compare")
    dup = df["filename"].duplicated()
    if dup.any():
        raise FERError(f"--predictions {path}: {int(dup.sum())} file names occur twice (e.g. {df['filename'][dup].iloc[0]}); "
                       f"rows are matched by file name")
    probs = df[[f"prob_{c}" for c in classes]].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)  # 'x': NaN
    if not np.isfinite(probs).all() or not np.isin(df["y_true"], range(len(classes))).all():
        raise FERError(f"--predictions {path}: probabilities or y_true are not valid numbers")
    bad = (probs < 0) | (probs > 1)
    if bad.any():  # trust rule 5: no comparison computed from impossible probabilities
        row, col = np.argwhere(bad)[0]
        raise FERError(f"--predictions {path}: prob_{classes[col]} is {probs[row, col]:g} on row {row} "
                       f"({df['filename'].iloc[row]}); probabilities lie in [0, 1]")
    sums = probs.sum(1)
    off = np.abs(sums - 1) > PROB_SUM_TOLERANCE
    if off.any():  # trust rule 5: a row of class probabilities sums to 1 (the CSV's 4 decimals allow a little)
        row = int(np.argmax(off))
        raise FERError(f"--predictions {path}: the probabilities of row {row} ({df['filename'].iloc[row]}) sum to "
                       f"{sums[row]:g}, not 1; not one model's class probabilities")
    df[[f"prob_{c}" for c in classes]] = probs
    return df.set_index("filename"), classes


def compare_predictions(path_a, path_b, resamples, seed):
    a, classes = read_predictions(path_a)
    b, classes_b = read_predictions(path_b)
    if classes != classes_b:
        raise FERError(f"--predictions: {path_a} scores {', '.join(classes)}, {path_b} scores {', '.join(classes_b)}")
    only_a, only_b = a.index.difference(b.index), b.index.difference(a.index)
    if len(only_a) or len(only_b):
        raise FERError(f"--predictions: the files hold different images: {len(only_a)} only in {path_a}, "
                       f"{len(only_b)} only in {path_b} (e.g. {(list(only_a) + list(only_b))[0]})")
    b = b.loc[a.index]
    if (a["y_true"] != b["y_true"]).any():
        raise FERError(f"--predictions: {int((a['y_true'] != b['y_true']).sum())} images have different true "
                       f"labels in the two files (not the same evaluation set)")
    y = a["y_true"].to_numpy()
    has_va = all(f"{n}_{w}" in a.columns and f"{n}_{w}" in b.columns
                 for n in ("valence", "arousal") for w in ("true", "pred"))
    va_true = a[["valence_true", "arousal_true"]].to_numpy(np.float64) if has_va else None
    sides = []
    for df in (a, b):
        logits = np.log(np.clip(df[[f"prob_{c}" for c in classes]].to_numpy(np.float64), 1e-300, None))
        va = df[["valence_pred", "arousal_pred"]].to_numpy(np.float64) if has_va else None
        sides.append((evaluate(logits, va, y, va_true, classes), logits, va))
    idx = bootstrap_indices(len(y), resamples, seed)
    samples = [bootstrap_metrics(idx, logits, y, va, va_true, classes) for _, logits, va in sides]
    correct = [logits.argmax(1) == y for _, logits, _ in sides]
    comp = paired_comparison(sides[0][0], sides[1][0], *samples, *correct, resamples, seed)
    comp.update(a={"predictions": str(path_a)}, b={"predictions": str(path_b)}, classes_scored=classes)
    return comp


# --- compare_runs.py ----------------------------------------------------------------------------
def compare(args):
    """compare_runs.py once its flags and paths are checked (fer.cli.compare.get_args): the paired
    comparison of two prediction files, or the table of runs. Prints; writes what --out/--plot/--json ask."""
    if args.predictions:
        comp = compare_predictions(*args.predictions, args.bootstrap, args.seed)
        print(format_comparison(comp, *args.predictions))
        if args.json:
            write_text(json.dumps(comp, indent=2), args.json)
            print(f"wrote {args.json}")
        return
    runs, skipped = load_runs(args.paths)
    for line in skipped:
        print(line, file=sys.stderr)
    if not runs:
        raise FERError(f"no readable run record in {', '.join(args.paths)}")
    # A run's own files (its history, checkpoints) are inputs too: --out onto a history would replace it.
    check_not_inputs(outputs(args), [(f"run {r['name']}:", r["folder"] / f) for r in runs
                                     for f in (r["record"].get("outputs") or {}).values() if isinstance(f, str)])
    rows, differing, same, notes = build_table(runs)
    rows = sort_rows(rows, args.sort)
    header, body = table_cells(rows, differing)
    print(text_table(header, body))
    print("same in all runs: " + (", ".join(f"{k}={shown(v)}" for k, v in same.items()) or "nothing"))
    if any(r["n"] > 1 for r in rows):
        print("rows with n > 1: runs that differ only in --seed, as mean ± std (sample std over n)")
    with staged_outputs() as stage:
        if args.out:
            if args.out.lower().endswith(".csv"):
                write_csv(stage(args.out), rows, differing)
            else:
                Path(stage(args.out)).write_text(markdown_table(header, body) + "\n\nsame in all runs: "
                                                 + ", ".join(f"{k}={shown(v)}" for k, v in same.items()) + "\n")
        plots = plot_paths(args.plot, args.metric) if args.plot else {}
        if plots:
            notes += plot_curves({m: stage(path) for m, path in plots.items()}, rows, differing)
    for note in notes:
        print(f"note: {note}")
    if args.out or plots:
        print("wrote " + ", ".join([*([args.out] if args.out else []), *plots.values()]))
