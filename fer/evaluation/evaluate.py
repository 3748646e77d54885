"""Evaluation of a checkpoint on an indexed split (eval_resnet50.py): the predictions, the metrics with
their bootstrap intervals, two checkpoints compared on the same images, and the report files, written
as one set (an out_dir holds one evaluation)."""
import argparse
import json
import os
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from fer.cli.evaluate import evaluation_files
from fer.data import faces
from fer.data.dataset import FERDataError, FERDataset, classes_in, data_record
from fer.data.faces import check_template
from fer.data.leakage import card_records
from fer.evaluation.audit import review_table
from fer.evaluation.metrics import (
    bootstrap_ece,
    bootstrap_indices,
    bootstrap_metrics,
    bootstrap_report,
    clip_va,
    collapse_text,
    evaluate,
    format_comparison,
    interval,
    paired_comparison,
    softmax,
    temperature_scaling,
)
from fer.evaluation.report import pyplot, render, va_scatter
from fer.model.checkpoint import (
    model_from_checkpoint,
    temperature_mismatch,
    temperature_of,
    weights_fingerprint,
    write_calibration,
)
from fer.model.forward import predict_batches
from fer.trust import check_device, check_input, check_not_inputs, earlier_outputs, stage_output_set, staged_outputs, write_text


def short(path):
    """The last folder and the name of a path (runs/rafdb/FER_resnet50.pth -> rafdb/FER_resnet50.pth): enough
    to tell two runs' pictures apart without the whole path."""
    path = Path(path)
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def what_was_evaluated(metrics):
    """"<checkpoint> on <index>[ + <index>]", for titles and the report."""
    return f"{short(metrics['checkpoint'])} on {' + '.join(map(short, metrics['meta']))}"


# --- pictures -----------------------------------------------------------------------------------
def plot_confusion(cm, class_names, path, title=""):
    """Counts with row-normalised percentages, sized to stay readable in a paper."""
    plt = pyplot()
    cm = np.asarray(cm)
    rows = cm.sum(1, keepdims=True)
    pct = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0) * 100
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    im = ax.imshow(pct, cmap="Blues", vmin=0, vmax=100)
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{cm[i, j]}\n{pct[i, j]:.0f}%", ha="center", va="center", fontsize=7.5,
                    color="white" if pct[i, j] > 55 else "black")
    fig.colorbar(im, ax=ax, label="% of true class", fraction=0.046, pad=0.04)
    ax.set_title(f"Confusion matrix (n = {cm.sum()})" + (f"\n{title}" if title else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def plot_valence_arousal(va_true, va_pred, path, metrics=None, title=""):
    """Predicted against true valence and arousal, with the identity line; each panel's CCC and RMSE."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.5))
    titles = []
    for name in ("valence", "arousal"):
        r = (metrics or {}).get(name)
        titles.append(name if r is None else
                      f"{name}: CCC {'n/a' if r['ccc'] is None else format(r['ccc'], '.3f')}, RMSE {r['rmse']:.3f}")
    va_scatter(axes, va_true, va_pred, titles)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def format_report(m, class_names):
    """The metrics as the terminal shows them, with their 95 % intervals when computed."""
    fmt = lambda x: "n/a" if x is None else f"{x:.4f}"  # noqa: E731

    def ci(*path):  # " [lo, hi]" after a value when intervals were computed
        c = m.get("ci95")
        for part in path:
            c = c.get(part) if isinstance(c, dict) else None
        return f" [{c[0]:.4f}, {c[1]:.4f}]" if isinstance(c, list) else ""
    lines = [f"checkpoint: {m['checkpoint']}", f"evaluated: {', '.join(m['meta'])}", f"samples: {m['n']}",
             f"classification over {len(class_names)} classes: {', '.join(class_names)}"]
    if "bootstrap" in m:
        used = m["bootstrap"]["used"]
        fewer = {k: n for k, n in used.items() if n < m["bootstrap"]["resamples"] and not k.startswith("per_class.")}
        lines.append(f"[95% intervals: {m['bootstrap']['resamples']} bootstrap resamples of the images, seed "
                     f"{m['bootstrap']['seed']}" + ("; fewer where the metric was undefined on some: " + ", ".join(
                         f"{k} {n}" for k, n in fewer.items()) if fewer else "") + "]")
    for key, label in (("accuracy", "Accuracy"), ("f1_macro", "F1 (macro)"), ("kappa", "Cohen's kappa"),
                       ("roc_auc", "ROC-AUC (OvR macro)"), ("pr_auc", "PR-AUC (macro AP)"),
                       ("krippendorff_alpha", "Krippendorff's alpha")):
        lines.append(f"  {label:<22}{fmt(m[key])}{ci(key)}")
    lines.append(f"  {'class':<10}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}")
    for name in class_names:
        c = m["per_class"][name]
        lines.append(f"  {name:<10}{c['precision']:>10.4f}{c['recall']:>10.4f}{c['f1']:>10.4f}{c['support']:>10}")
    if "ece" in m:
        lines.append(f"calibration: ECE {fmt(m['ece'])}  NLL {fmt(m['nll'])}  Brier {fmt(m['brier'])}  "
                     f"(temperature {m['temperature']:.3f} would give ECE {fmt(m['ece_at_temperature'])})")
    cal = m.get("calibrated")
    if cal:
        ci95 = lambda c: f" [{c[0]:.4f}, {c[1]:.4f}]" if c else ""  # noqa: E731
        b, a = cal["before"], cal["after"]
        lines.append(f"calibrated (temperature {cal['temperature']:.3f}, fitted on {', '.join(cal['fitted_on_paths'])}): "
                     f"ECE {b['ece']:.4f}{ci95(b.get('ece_ci95'))} -> {a['ece']:.4f}{ci95(a.get('ece_ci95'))}  "
                     f"NLL {b['nll']:.4f} -> {a['nll']:.4f}")
    for name in ("valence", "arousal"):
        if name in m:
            r = m[name]
            lines.append(f"{name}: " + "  ".join(f"{k.upper()} {fmt(r[k])}{ci(name, k)}"
                                                 for k in ("rmse", "mae", "corr", "sagr", "ccc")))
    lines += [f"note: {n}" for n in m["notes"]]
    return "\n".join(lines)


# --- evaluation ---------------------------------------------------------------------------------
def scored_classes(checkpoint_classes, metas, all_classes):
    """(classes scored, eval-set classes left out, checkpoint classes left out of the argmax)."""
    present = classes_in(metas)
    scored = list(checkpoint_classes) if all_classes else [c for c in checkpoint_classes if c in present]
    if not scored:
        raise FERDataError(f"{', '.join(map(str, metas))}: no class in common with the checkpoint "
                           f"({', '.join(checkpoint_classes)})")
    if len(scored) < 2:  # an argmax over one class is always right: accuracy 1.0 that measures nothing
        raise FERDataError(f"{', '.join(map(str, metas))}: only one class to score ({scored[0]}), so every "
                           f"prediction would be right by construction; evaluate on a set with at least two of "
                           f"the checkpoint's classes, or use --all_classes to score against all of them")
    return scored, [c for c in present if c not in scored], [c for c in checkpoint_classes if c not in scored]


def evaluate_checkpoint(args):
    """Predict the index with the checkpoint and score it. Writes nothing."""
    device = check_device(args.device)
    for m in args.meta:
        check_input(m, "--meta")
    model, meta = model_from_checkpoint(args.checkpoint, device, args.img_size)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    scored, set_only, ckpt_only = scored_classes(meta["class_names"], args.meta, args.all_classes)
    recrop, fallback = None, None
    if args.recrop == "detect":
        template = check_template(meta.get("crop_template"), f"{args.checkpoint}: field crop_template")
        recrop = dict(detector=args.detector, min_face=args.min_face, threshold=args.face_threshold,
                      template=template, align=args.align)
        fallback = faces.fallback(args.detector, template, args.align)
    ds = FERDataset(args.meta, train=False, size=args.img_size or meta["img_size"], root=args.root, classes=scored,
                    recrop=recrop, allow_outside_root=args.allow_outside_root)
    if len(ds) == 0:
        raise FERDataError(f"{', '.join(args.meta)}: no usable rows")
    loader = DataLoader(ds, args.batch_size, shuffle=False, num_workers=args.num_workers,
                        pin_memory=device.type == "cuda")
    out = predict_batches(model, loader, device, torch.bfloat16 if args.amp else None, tta=args.tta,
                          progress=True, desc="evaluate")
    out["logits"] = out["logits"][:, [meta["class_names"].index(c) for c in scored]]
    metrics = evaluate(out["logits"], out["va"], out["y_cls"], out["y_reg"].astype(np.float64), scored)
    if set_only:
        metrics["notes"].insert(0, f"classes of the evaluation set not in the checkpoint, left out: "
                                   f"{', '.join(set_only)} ({sum(ds.dropped.values())} rows not scored)")
    if ckpt_only:
        metrics["notes"].insert(0, f"checkpoint classes absent from the evaluation set, left out of the argmax: "
                                   f"{', '.join(ckpt_only)} (--all_classes keeps them)")
    truth = sorted({scored[k] for k in np.unique(out["y_cls"])})
    if len(truth) < 2:  # honest (the argmax is over several classes) but it is one class's recall only
        warning = (f"WARNING: the evaluation set holds one class only ({', '.join(truth)}): accuracy is that "
                   f"class's recall; F1, kappa, ROC-AUC and PR-AUC do not measure a classifier here")
        metrics["notes"].insert(0, warning)
        print(warning, file=sys.stderr)
    if "valence" in metrics and not meta["heads_trained"]["valence_arousal"]:
        metrics["notes"].append("this checkpoint's valence/arousal head never trained (no labels in its training "
                                "data): the regression figures measure an untrained head")
    if recrop:
        found = out["recrop_found"].astype(bool)
        missed = [ds.filenames[i] for i in out["index"][~found]]
        metrics["recrop"] = dict(detector=args.detector, align=args.align, min_face=args.min_face,
                                 face_threshold=args.face_threshold if args.detector == "mtcnn" else None,
                                 aligned_to_template=fallback is None, faces_found=int(found.sum()),
                                 no_face=len(missed), no_face_examples=missed[:10])
        metrics["notes"].insert(0, f"--recrop detect: faces detected and cropped as predict.py does in {int(found.sum())} "
                                   f"of {len(found)} images ({args.detector}, "
                                   f"{'box + margin: ' + fallback if fallback else 'aligned to ' + args.align}); "
                                   f"{len(missed)} without a face kept the dataset's crop"
                                   + (f", e.g. {', '.join(missed[:3])}" if missed else ""))
    if metrics.get("collapse"):  # first among the notes, and said on the terminal
        text = collapse_text(metrics["collapse"])
        metrics["notes"] = [text] + [n for n in metrics["notes"] if n != text]
        print(f"WARNING: {text}", file=sys.stderr)
    metrics.update(classes_scored=scored, classes_left_out={"evaluation_set": set_only, "checkpoint": ckpt_only},
                   rows_not_scored=ds.dropped, checkpoint=str(args.checkpoint), meta=list(map(str, args.meta)),
                   heads_trained=meta["heads_trained"], tta=args.tta, all_classes=args.all_classes, data=data_record(ds),
                   checkpoint_fingerprint=weights_fingerprint(model.state_dict()), run=meta.get("run"))
    metrics.update(checkpoint_classes=list(meta["class_names"]), img_size=ds.size, arch=meta["arch"],
                   protocol_card=card_records(args.meta))
    temperature_of(meta, args.checkpoint)  # a malformed temperature is refused before any file is written
    metrics["checkpoint_calibration"] = meta.get("calibration")
    return metrics, scored, ds, out


def resampled(out, scored, idx):
    """Every metric on each bootstrap resample of the evaluated images."""
    return bootstrap_metrics(idx, out["logits"], out["y_cls"], out["va"], out["y_reg"].astype(np.float64), scored,
                             progress=True)


def compare_checkpoints(args):
    """Both checkpoints on the same images, compared on the same bootstrap resamples."""
    a, scored, ds, out_a = evaluate_checkpoint(args)
    b, scored_b, ds_b, out_b = evaluate_checkpoint(argparse.Namespace(**{**vars(args), "checkpoint": args.checkpoint_b}))
    if scored_b != scored:
        raise FERDataError(f"--checkpoint {args.checkpoint_b}: scores the classes {', '.join(scored_b)}, "
                           f"{args.checkpoint} scores {', '.join(scored)}: the models cannot be compared image by image")
    idx = bootstrap_indices(len(ds), args.bootstrap, args.seed)
    comp = paired_comparison(a, b, resampled(out_a, scored, idx), resampled(out_b, scored, idx),
                             out_a["logits"].argmax(1) == out_a["y_cls"],
                             out_b["logits"].argmax(1) == out_b["y_cls"], len(idx), args.seed)
    comp.update(a={k: a[k] for k in ("checkpoint", "checkpoint_fingerprint", "run", "notes")},
                b={k: b[k] for k in ("checkpoint", "checkpoint_fingerprint", "run", "notes")},
                data=a["data"], meta=a["meta"], classes_scored=scored, tta=args.tta)
    # What each model's own report would say (an untrained valence/arousal head, classes left out of its
    # argmax, faces not found) belongs beside the differences it explains.
    comp["notes"] = [n for n in a["notes"] if n in b["notes"]] + \
        [f"{side}: {n}" for side, m, other in (("A", a, b), ("B", b, a)) for n in m["notes"] if n not in other["notes"]]
    if a["checkpoint_fingerprint"] == b["checkpoint_fingerprint"]:
        comp["notes"].insert(0, f"A and B hold the same weights (fingerprint {a['checkpoint_fingerprint'][:12]}): "
                                f"every difference is 0 by construction")
    return comp


# --- calibration --------------------------------------------------------------------------------
def same_split(fitted_on, evaluated):
    """True when an index file the temperature was fitted on is one of those evaluated (the same rows by
    fingerprint, or the same file)."""
    def keys(records):
        out = set()
        for r in records or []:
            if r.get("fingerprint"):
                out.add(("fp", r["fingerprint"]))
            if r.get("path"):
                out.add(("path", str(Path(r["path"]).resolve())))
        return out
    return bool(keys(fitted_on) & keys(evaluated))


def calibrate(args, metrics, out, idx):
    """The temperature of this evaluation: fitted here (--calibrate: returned, to be written into the
    checkpoint with the report) or recorded in the checkpoint. Adds metrics["calibrated"] (ECE with its
    interval over the resamples idx, NLL, Brier, reliability: before and after) and a warning when the
    temperature was fitted on the evaluated split. Returns the record to write, or None."""
    record = None
    fit_here = args.calibrate
    if fit_here:
        t = metrics["temperature"]  # metrics.calibration fitted it on these logits (fit_temperature)
        record = {"temperature": t, "method": "temperature scaling (Guo et al. 2017): T minimising the mean NLL of "
                                              "softmax(logits / T), bounded search on log T",
                  "fitted_on": metrics["data"], "n": int(len(out["y_cls"])), "classes": metrics["classes_scored"],
                  "checkpoint_fingerprint": metrics["checkpoint_fingerprint"], "tta": bool(args.tta),
                  "written": datetime.now().astimezone().isoformat(timespec="seconds")}
        source = record
    else:
        source = metrics.get("checkpoint_calibration")
        mismatch = temperature_mismatch({"calibration": source}, args.tta) if source else None
        if mismatch:  # applied to the other kind of output it would mis-scale them: not applied, said
            metrics["notes"].append(f"the checkpoint's temperature is not applied: {mismatch}; evaluate as it "
                                    f"was fitted, or fit it again with --calibrate")
            return None
    if not source:
        return None
    cal = temperature_scaling(out["logits"], out["y_cls"], source["temperature"], idx)
    cal.update(fitted_on=source.get("fitted_on") or [], fitted_here=fit_here,
               fitted_on_paths=[str(r.get("path")) for r in source.get("fitted_on") or []] or ["(not recorded)"],
               same_split=same_split(source.get("fitted_on"), metrics["data"]))
    if record:
        record.update(nll_before=cal["before"]["nll"], nll_after=cal["after"]["nll"],
                      ece_before=cal["before"]["ece"], ece_after=cal["after"]["ece"])
    if cal["same_split"]:
        cal["warning"] = (f"the temperature ({cal['temperature']:.3f}) was fitted on the evaluated split "
                          f"({', '.join(cal['fitted_on_paths'])}): the calibrated figures are fitted and reported on "
                          f"the same images, so they are optimistic; evaluate another split (the test split) to "
                          f"measure calibration")
        metrics["notes"].insert(0, cal["warning"])
    fp = source.get("checkpoint_fingerprint")
    if fp and fp != metrics["checkpoint_fingerprint"]:
        metrics["notes"].insert(0, f"the checkpoint's temperature was fitted for other weights (fingerprint {fp[:12]}, "
                                   f"these are {metrics['checkpoint_fingerprint'][:12]}): fit it again with --calibrate")
    metrics["calibrated"] = cal
    return record


def audit_labels(args, metrics, class_names, ds, out):
    """The likely label issues of the evaluated rows (fer.evaluation.audit), ranked; metrics["label_issues"]
    holds the top ones for the page, and a warning when the model trained on these rows."""
    rows = out["index"]
    table = review_table([ds.filenames[i] for i in rows], softmax(out["logits"]), out["y_cls"], class_names,
                         [str(ds.paths[i]) for i in rows])
    trained_on = ((metrics.get("run") or {}).get("data") or {}).get("train")
    info = {"n": int(len(table)), "of": int(len(rows)), "method": "cleanlab.filter.find_label_issues, ranked by "
                                                                  "self_confidence", "top": json.loads(table.head(24).to_json(orient="records"))}
    if trained_on and same_split(trained_on, metrics["data"]):
        info["warning"] = ("the model trained on these rows: its probabilities are not out-of-sample and the audit "
                           "misses most label issues (it has fitted them); audit a split it did not train on")
        metrics["notes"].insert(0, info["warning"])
    info["csv"] = args.outputs[5]
    metrics["label_issues"] = info
    return table


# --- outputs ------------------------------------------------------------------------------------
def write_report(args, metrics, class_names, ds, out, calibration=None, issues=None):
    """Every report file of the run, replaced together once all are written; files of an earlier
    evaluation in out_dir that this run does not write are then removed. Returns (written, removed)."""
    out_dir, names = Path(args.out_dir), args.outputs
    written = list(names[:2])
    va_pred = clip_va(out["va"])
    has_va = "valence" in metrics or "arousal" in metrics
    title = what_was_evaluated(metrics)
    with staged_outputs() as stage:
        write_text(json.dumps(metrics, indent=2), out_dir / names[0], stage)
        plot_confusion(metrics["confusion_matrix"], class_names, stage(out_dir / names[1]), title)
        if has_va:
            untrained = "" if metrics["heads_trained"]["valence_arousal"] else " (head never trained)"
            plot_valence_arousal(out["y_reg"], va_pred, stage(out_dir / names[2]), metrics, title + untrained)
            written.append(names[2])
        if args.save_predictions:
            save_predictions(stage(args.save_predictions), ds, out, va_pred, class_names, args.tta)
            written.append(str(args.save_predictions))
        if args.report == "on":
            rows = out["index"]
            page = render(metrics, out, [ds.paths[i] for i in rows], [ds.filenames[i] for i in rows],
                          ds.boxes[rows] if ds.has_boxes else None, args.command, args.report_images,
                          progress=True)
            Path(stage(out_dir / names[3])).write_bytes(page.encode("utf-8", "xmlcharrefreplace"))
            written.append(names[3])
        if getattr(args, "audit_labels", False):
            issues.drop(columns=["path"]).to_csv(stage(out_dir / names[5]), index=False)
            written.append(names[5])
        if calibration:  # the checkpoint rewritten with its temperature, together with the report
            write_calibration(args.checkpoint, calibration, stage)
        removed = remove_earlier_files(out_dir, stage, args)
    return written, removed


def remove_earlier_files(out_dir, stage, args):
    """The files of an earlier evaluation in out_dir that this run does not write (asked before the
    stage commits): removed as the new set is renamed into place, so the folder holds one evaluation only.
    Trust rule 2: the set is the one the earlier run's manifest lists (its --save_predictions CSV too),
    as that run left them; a folder from before manifests, by the output names (of any model). Never an input."""
    had_manifest = bool(earlier_outputs(out_dir, "evaluation"))
    stage_output_set(stage, out_dir, "evaluation")
    if not had_manifest:
        stage.obsolete += [p for p in evaluation_files(out_dir, args.model) if p not in stage.files]
    inputs = [getattr(args, k, None) for k in ("checkpoint", "checkpoint_b")] + list(getattr(args, "meta", None) or [])
    inputs = {os.path.realpath(p) for p in inputs if p}
    stage.obsolete = [p for p in dict.fromkeys(stage.obsolete) if os.path.realpath(p) not in inputs]
    return [p.name for p in stage.obsolete]


def save_predictions(path, ds, out, va_pred, class_names, tta=None):
    """One CSV row per image: its file, true and predicted class, every probability, true and predicted V/A;
    with test-time augmentation a last column tta (its kind: flip)."""
    probs = softmax(out["logits"])
    y_pred = probs.argmax(1)
    df = pd.DataFrame({"filename": [ds.filenames[i] for i in out["index"]], "y_true": out["y_cls"],
                       "y_pred": y_pred, "expression_true": np.asarray(class_names)[out["y_cls"]],
                       "expression_pred": np.asarray(class_names)[y_pred], "probabilities": "raw"})
    for k, name in enumerate(class_names):
        df[f"prob_{name}"] = probs[:, k]
    for k, name in enumerate(("valence", "arousal")):
        df[f"{name}_true"] = out["y_reg"][:, k]
        df[f"{name}_pred"] = va_pred[:, k]
    if tta:
        df["tta"] = tta
    df.to_csv(path, index=False)


def report_removed(removed, out_dir):
    if removed:
        print(f"removed {', '.join(removed)} (from the earlier evaluation in {out_dir}; --overwrite replaces the "
              f"whole set)")


# --- the command --------------------------------------------------------------------------------
def run_comparison(args):
    """eval_resnet50.py with two checkpoints: comparison_<arch of A>.json, and the comparison on the terminal."""
    out_dir = Path(args.out_dir)
    comp = compare_checkpoints(args)
    with staged_outputs() as stage:
        write_text(json.dumps(comp, indent=2), out_dir / args.comparison, stage)
        removed = remove_earlier_files(out_dir, stage, args)
    print(format_comparison(comp, args.checkpoint, args.checkpoint_b))
    for note in comp["notes"]:
        print(f"note: {note}")
    print(f"wrote {args.comparison} to {out_dir.resolve()}")
    report_removed(removed, out_dir)


def run_evaluation(args):
    """eval_resnet50.py, once fer.cli.evaluate.get_args has checked the flags and paths: one checkpoint
    evaluated (with --bootstrap intervals) and its report files written, or two compared."""
    if args.checkpoint_b:
        return run_comparison(args)
    out_dir = Path(args.out_dir)
    metrics, class_names, ds, out = evaluate_checkpoint(args)
    if args.save_predictions:  # the images are inputs too (known now): --overwrite must not replace one with a CSV
        name = Path(args.save_predictions).name
        check_not_inputs([("--save_predictions", args.save_predictions)],
                         [("image of --meta", path) for path in ds.paths if Path(path).name == name])
    idx = None
    if args.bootstrap:
        idx = bootstrap_indices(len(ds), args.bootstrap, args.seed)
        metrics.update(bootstrap_report(resampled(out, class_names, idx), args.bootstrap, args.seed))
        metrics["ci95"]["ece"], metrics["bootstrap"]["used"]["ece"] = interval(bootstrap_ece(idx, softmax(out["logits"]),
                                                                                             out["y_cls"]))
    calibration = calibrate(args, metrics, out, idx)
    issues = audit_labels(args, metrics, class_names, ds, out) if getattr(args, "audit_labels", False) else None
    written, removed = write_report(args, metrics, class_names, ds, out, calibration, issues)
    print(format_report(metrics, class_names))
    if issues is not None:
        print(f"label audit: {len(issues)} of {len(ds)} rows are likely label issues (confident learning); review "
              f"{Path(args.out_dir) / args.outputs[5]} and give it to metadata_parallel.py --exclude")
    if calibration:
        print(f"wrote temperature {calibration['temperature']:.4f} into {args.checkpoint} (fitted on "
              f"{', '.join(metrics['calibrated']['fitted_on_paths'])}; predict.py and export_onnx.py now use it)")
    print(f"wrote {', '.join(written)} to {out_dir.resolve()}")
    report_removed(removed, out_dir)
