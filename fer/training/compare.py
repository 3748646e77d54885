"""Training runs side by side, and two models' predictions compared image by image (compare_runs.py).

The table: one row per run (best validation accuracy, macro F1, valence/arousal CCC at the best epoch,
epochs, wall time, images/s); as columns only the flags and data fingerprints that differ between runs,
the rest in one "same in all runs" line. Runs that differ only in --seed become one row: mean ± std over
n. A record that cannot be read is named and skipped. The paired comparison: every metric of two
prediction files of the same images, B - A with its bootstrap interval, McNemar's test for accuracy.
"""
import csv
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fer.cli.compare import METRICS, outputs
from fer.cli.train import with_defaults
from fer.evaluation.metrics import bootstrap_indices, bootstrap_metrics, evaluate, format_comparison, paired_comparison
from fer.model.checkpoint import read_weights
from fer.trust import FERError, check_input, check_not_inputs, one_line, staged_outputs, write_text

# Flags that name where a run's files go or how it was started: never what makes runs differ.
NOT_COMPARED = ("save_path", "resume", "overwrite", "config", "tensorboard", "train_meta", "val_meta")
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
        try:
            later = json.loads(beside.read_text()) if beside.is_file() else None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            later = None
        if isinstance(later, dict) and later.get("started") == record.get("started"):
            record = later
    else:
        try:
            record = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise FERError(f"not a readable run record ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
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
    out["train data"], out["val data"] = fingerprints(record, "train"), fingerprints(record, "val")
    return out


def metric(record, key):
    value = record["best"].get(METRICS[key]) if METRICS[key] else record.get(key)
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
    """Runs whose settings are equal but for --seed, in first-seen order."""
    groups = {}
    for run in runs:
        s = settings(run["record"])
        key = json.dumps({k: v for k, v in s.items() if k != "seed"}, sort_keys=True, default=str)
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
    spec = {"epochs": ".1f" if std is not None else ".0f", "wall_time_s": ".0f", "img_per_s": ".1f"}.get(m, ".4f")
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


def plot_curves(path, rows, differing):
    """Validation accuracy and loss per epoch of every run, labelled by what differs. Returns notes."""
    notes = []
    fig = Figure(figsize=(12, 4.2))  # its own canvas: pyplot's backend and figures are left alone
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for row in rows:
        label = ", ".join(f"{k}={shown(row[k])}" for k in differing) or row["name"]
        for run in row["runs"]:
            history = run["record"].get("outputs", {}).get("history")
            file = run["folder"] / history if history else None
            if file is None or not file.is_file():
                notes.append(f"no curve for {run['name']}: history {file or 'not recorded'} not found")
                continue
            try:
                df = pd.read_csv(file)
                curves = [(ax, df["epoch"], df[k]) for ax, k in zip(axes, ("val_acc", "val_loss"))]
            except Exception as e:  # a damaged CSV: named, not a traceback
                notes.append(f"no curve for {run['name']}: {file} unreadable ({type(e).__name__})")
                continue
            seed = f", seed={run['record']['args'].get('seed')}" if row["n"] > 1 else ""
            for ax, x, y in curves:
                ax.plot(x, y, marker="o", ms=3, label=label + seed)
    for ax, title in zip(axes, ("validation accuracy", "validation loss")):
        ax.set(title=title, xlabel="epoch")
        ax.grid(alpha=0.3)
        if ax.lines:  # no curve at all: the notes say why; no empty legend (and its warning)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return notes


# --- paired comparison of prediction files ------------------------------------------------------
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
    probs = df[[f"prob_{c}" for c in classes]].to_numpy(np.float64)
    if not np.isfinite(probs).all() or not np.isin(df["y_true"], range(len(classes))).all():
        raise FERError(f"--predictions {path}: probabilities or y_true are not valid numbers")
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
        if args.plot:
            notes += plot_curves(stage(args.plot), rows, differing)
    for note in notes:
        print(f"note: {note}")
    if args.out or args.plot:
        print("wrote " + ", ".join(p for p in (args.out, args.plot) if p))
