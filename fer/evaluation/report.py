"""The evaluation as one self-contained HTML page: which faces the model gets wrong, how sure it was,
and how well its confidence is calibrated.

eval_resnet50.py calls render() with the metrics dict, the predictions and the image paths, and
writes the page as report_resnet50.html. Plain HTML and CSS: the thumbnails (JPEG) and charts (PNG)
are data URIs, so the page opens from any folder, moved or mailed, and fetches nothing. Every string
that comes from data (file names, class names, paths, the run record) goes through html.escape.
"""
import base64
import html
import io
import json
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import cv2
import numpy as np
from tqdm import tqdm

from fer.data.dataset import FERDataError, crop_face, load_image
from fer.evaluation.metrics import clip_va, reliability, softmax
from fer.trust import one_line

THUMB = 64  # thumbnail side in px (larger images are shrunk to it, smaller ones kept as they are)

JPEG_QUALITY = 80

DASH = "\u2014"

# (key, label, what it is): the metrics of the JSON, in the order of the page. Other numeric
# top-level keys (added later) are listed after these under their own names.
CLASSIFICATION = [
    ("accuracy", "Accuracy", "share of images whose top class is the true class"),
    ("f1_macro", "F1 (macro)", "unweighted mean of the per-class F1"),
    ("kappa", "Cohen's kappa", "agreement with the labels beyond chance"),
    ("roc_auc", "ROC-AUC", "one-vs-rest per class, unweighted mean"),
    ("pr_auc", "PR-AUC", "average precision per class, one-vs-rest, unweighted mean"),
    ("krippendorff_alpha", "Krippendorff's alpha", "nominal; labels and predictions as two coders"),
    ("ece", "ECE", "expected calibration error, 15 bins of confidence (lower is better)"),
    ("nll", "NLL", "mean negative log-likelihood of the true class (lower is better)"),
    ("brier", "Brier score", "mean squared distance of the probabilities from the one-hot label, in [0, 2]"),
    ("temperature", "Temperature", "T minimising the NLL of softmax(logits / T) on this set (reported only)"),
    ("ece_at_temperature", "ECE at T", "the ECE the probabilities would have at that temperature"),
    ("nll_at_temperature", "NLL at T", "the NLL they would have at that temperature"),
    ("rmse_combined", "RMSE (valence + arousal)", "root mean squared error over both dimensions"),
]

REGRESSION = [("rmse", "RMSE"), ("mae", "MAE"), ("corr", "Pearson r"), ("sagr", "SAGR"), ("ccc", "CCC")]

NOT_METRICS = {"n", "img_size"}

CSS = """
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1b1f24;
 background:#fff}
nav{position:sticky;top:0;z-index:2;background:#f3f5f7;border-bottom:1px solid #d0d7de;padding:6px 16px;
 white-space:nowrap;overflow-x:auto}
nav a{margin-right:14px;color:#0550ae;text-decoration:none}
main{max-width:1180px;margin:0 auto;padding:4px 16px 48px}
section,h2,h3{scroll-margin-top:44px}
h1{font-size:22px;margin:16px 0 4px}
h2{font-size:18px;margin:28px 0 6px;padding-bottom:3px;border-bottom:1px solid #d0d7de}
h3{font-size:15px;margin:18px 0 4px}
a{color:#0550ae}
code,pre{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
pre{background:#f6f8fa;border:1px solid #d0d7de;padding:8px;overflow-x:auto;white-space:pre-wrap;
 overflow-wrap:anywhere}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;margin:6px 0}
th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:right;vertical-align:top}
th{background:#f6f8fa;white-space:nowrap}
.l,th.l,td.l{text-align:left}
td.wrap{word-break:break-all;max-width:560px}
.muted{color:#57606a}
.note{background:#fff8c5;border:1px solid #e3c567;padding:4px 8px;margin:4px 0}
table.cm{font-size:13px}
table.cm td{text-align:center;min-width:46px;padding:0;vertical-align:middle}
table.cm th{vertical-align:middle}
table.cm td a,table.cm td span{display:block;padding:5px 4px;color:inherit;text-decoration:none}
table.cm td a:hover{outline:2px solid #cf222e;outline-offset:-2px}
table.cm small{display:block;font-size:11px}
.gallery{display:flex;flex-wrap:wrap;gap:10px 8px;margin:6px 0}
figure.t{margin:0;width:100px;font-size:11px;line-height:1.25}
figure.t img,figure.t .missing{display:block;width:64px;height:64px;object-fit:contain;background:#eaeef2;
 border:1px solid #d0d7de}
figure.t .missing{font-size:10px;color:#57606a;padding:18px 2px;text-align:center}
figure.t figcaption{margin-top:2px;overflow:hidden}
figure.t .name{display:block;white-space:nowrap;overflow:hidden;text-overflow:ellipsis;color:#57606a}
.wrong{color:#cf222e}
img.chart{max-width:100%;height:auto;border:1px solid #d0d7de}
.charts{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
.back{font-size:12px;font-weight:normal;margin-left:8px}
"""

# Bidirectional controls (U+202A-202E, U+2066-2069) and marks (U+200E, U+200F): a file name holding one
# would display reversed ("a\u202eevil.jpg" as "agpj.live"), so they are shown by their code.
BIDI = re.compile("[\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def esc(x):
    return BIDI.sub(lambda m: f"[U+{ord(m.group()):04X}]", html.escape(str(x), quote=True))


def num(x, digits=4):
    """A number for the page; None (undefined) as a dash."""
    if x is None or isinstance(x, bool):
        return DASH
    if isinstance(x, (int, np.integer)):
        return f"{x:,}"
    return f"{x:.{digits}f}" if np.isfinite(x) else DASH


def interval(ci):
    """A [lo, hi] pair from the JSON's ci95 as text, else a dash (no bootstrap run)."""
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(v, (int, float)) for v in ci):
        return f"{num(ci[0])} \u2013 {num(ci[1])}"
    return DASH


def slug(name):
    return re.sub(r"[^A-Za-z0-9]+", "_", str(name)).strip("_") or "class"


def cell_id(class_names, i, j):
    """The anchor of the gallery of true class i predicted as j (its own URL: report.html#cell-...)."""
    return f"cell-{i}-{slug(class_names[i])}-as-{j}-{slug(class_names[j])}"


# --- pictures -----------------------------------------------------------------------------------
def thumbnail(path, box=None, side=THUMB):
    """(JPEG data URI, width, height) of the face crop shrunk to fit side x side, or (None, reason)."""
    try:
        img = load_image(path)
        if box is not None and np.isfinite(box).all():
            img = crop_face(img, box)
            if img is None:
                raise FERDataError(f"{path}: face box lies outside the image")
        h, w = img.shape[:2]
        if max(h, w) > side:
            s = side / max(h, w)
            img = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise FERDataError(f"{path}: cannot be encoded as JPEG")
        return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii"), img.shape[1], img.shape[0]
    except Exception as e:  # noqa: BLE001  one picture that cannot be read must not fail the evaluation
        return None, one_line(e) if str(e) else type(e).__name__


def png(fig):
    """A matplotlib figure as a PNG data URI (and closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def va_scatter(axes, va_true, va_pred, titles=("valence", "arousal")):
    """Predicted against true valence and arousal on two axes, with the identity line (a hexbin plot
    above 2,000 images). Also draws eval's ValenceArousal_resnet50.png."""
    for k, (ax, name, title) in enumerate(zip(axes, ("valence", "arousal"), titles)):
        ok = ~np.isnan(va_true[:, k])  # each dimension on the images that have it
        if not ok.any():
            ax.text(0, 0, f"no {name} labels", ha="center", va="center")
        elif ok.sum() > 2000:
            ax.hexbin(va_true[ok, k], va_pred[ok, k], gridsize=50, extent=(-1, 1, -1, 1), mincnt=1, cmap="viridis")
        else:
            ax.scatter(va_true[ok, k], va_pred[ok, k], s=6, alpha=0.5)
        ax.plot([-1, 1], [-1, 1], "r--", lw=1, label="identity")
        ax.set(xlim=(-1.05, 1.05), ylim=(-1.05, 1.05), xlabel=f"true {name}", ylabel=f"predicted {name}",
               title=title, aspect="equal")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)


def shade(pct):
    """Background and text colour of a confusion cell: the PNG's colour map (Blues, 0-100 %)."""
    import matplotlib
    r, g, b, _ = matplotlib.colormaps["Blues"](pct / 100)
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}", "#fff" if pct > 55 else "#000"


class Pictures:
    """The thumbnails of the rows shown on the page, each read once (in threads: decoding releases
    the GIL), with a placeholder and a note for every image that cannot be read any more."""

    def __init__(self, paths, names, boxes, rows, progress=False):
        rows = sorted(set(int(r) for r in rows))
        pool = ThreadPoolExecutor(min(8, os.cpu_count() or 1))
        try:
            done = tqdm(pool.map(lambda r: thumbnail(paths[r], None if boxes is None else boxes[r]), rows),
                        total=len(rows), desc="report thumbnails", unit="img", disable=not progress, leave=False)
            self.thumbs = dict(zip(rows, done))
        finally:  # on Ctrl-C, drop the images not started yet instead of waiting for them
            pool.shutdown(cancel_futures=True)
        self.names = names
        self.unreadable = [(names[r], t[1]) for r, t in self.thumbs.items() if t[0] is None]

    def figure(self, r, caption, alt):
        thumb = self.thumbs[r]
        if thumb[0] is None:
            pic = f'<div class="missing" title="{esc(thumb[1])}">image not readable</div>'
        else:
            pic = f'<img src="{thumb[0]}" width="{thumb[1]}" height="{thumb[2]}" alt="{esc(alt)}">'
        name = self.names[r]
        return (f'<figure class="t" title="{esc(name)}">{pic}<figcaption>{caption}'
                f'<span class="name">{esc(name)}</span></figcaption></figure>')


# --- sections -----------------------------------------------------------------------------------
def header(m, command, n_images):
    rows = [("checkpoint", f"<code>{esc(m.get('checkpoint', DASH))}</code>"
             + (f'<br><span class="muted">fingerprint {esc(m["checkpoint_fingerprint"])}</span>'
                if m.get("checkpoint_fingerprint") else ""))]
    if m.get("checkpoint_classes"):
        rows.append(("classes of the checkpoint", esc(", ".join(m["checkpoint_classes"]))))
    scored = m.get("classes_scored") or []
    left = m.get("classes_left_out") or {}
    rows.append(("classes scored", esc(", ".join(scored))
                 + (f'<br><span class="muted">left out of the argmax (checkpoint only): '
                    f'{esc(", ".join(left["checkpoint"]))}</span>' if left.get("checkpoint") else "")
                 + (f'<br><span class="muted">evaluation-set classes not in the checkpoint: '
                    f'{esc(", ".join(left["evaluation_set"]))}</span>' if left.get("evaluation_set") else "")))
    if m.get("img_size"):
        rows.append(("image size", f"{int(m['img_size'])} px"
                     + (" (with the mirrored image averaged: --tta)" if m.get("tta") else "")))
    not_scored = m.get("rows_not_scored") or {}
    rows.append(("images scored", f"{n_images:,}" + "".join(
        f'<br><span class="muted">{int(k):,} rows not scored: {esc(why)}</span>' for why, k in not_scored.items())))
    data = m.get("data")
    if data:
        cells = "".join(
            f'<tr><td class="l wrap"><code>{esc(d.get("path", DASH))}</code></td><td>{num(d.get("rows"))}</td>'
            f'<td class="l wrap"><code>{esc(d.get("fingerprint") or "not recorded")}</code></td></tr>' for d in data)
        rows.append(("index files", f'<div class="scroll"><table><tr><th class="l">file</th><th>rows</th>'
                                    f'<th class="l">fingerprint</th></tr>{cells}</table></div>'))
    else:
        rows.append(("index files", "<br>".join(f"<code>{esc(p)}</code>" for p in m.get("meta") or [])
                     + '<br><span class="muted">fingerprints not recorded</span>'))
    run = m.get("run")
    if run:
        summary = ", ".join(f"{k}: {v}" for k, v in run.items() if isinstance(v, (str, int, float)))
        summary = summary[:200] + ("\u2026" if len(summary) > 200 else "")
        rows.append(("run record", f"<details><summary>{esc(summary or 'show')}</summary>"
                                   f"<pre>{esc(json.dumps(run, indent=2, default=str))}</pre></details>"))
    else:
        rows.append(("run record", '<span class="muted">not recorded</span>'))
    boot = m.get("bootstrap")
    if boot:
        rows.append(("95 % intervals", f"percentile bootstrap over images, {num(boot.get('resamples'))} resamples, "
                                       f"seed {esc(boot.get('seed', DASH))}"))
    rows.append(("written", esc(datetime.now().astimezone().isoformat(timespec="seconds"))))
    if command:
        rows.append(("command", f"<pre>{esc(command)}</pre>"))
    body = "".join(f'<tr><th class="l">{k}</th><td class="l">{v}</td></tr>' for k, v in rows)
    return f'<section id="header"><table class="hdr">{body}</table></section>'


def metrics_table(m):
    ci = m.get("ci95") if isinstance(m.get("ci95"), dict) else {}
    known = {k for k, _, _ in CLASSIFICATION}
    rows = [(label, m[k], ci.get(k), what) for k, label, what in CLASSIFICATION if k in m]
    rows += [(k, v, ci.get(k), "") for k, v in m.items() if k not in known and k not in NOT_METRICS
             and isinstance(v, (int, float)) and not isinstance(v, bool)]
    for dim in ("valence", "arousal"):
        if isinstance(m.get(dim), dict):
            dim_ci = ci.get(dim) if isinstance(ci.get(dim), dict) else {}
            rows += [(f"{dim} {label}", m[dim].get(k), dim_ci.get(k), "") for k, label in REGRESSION if k in m[dim]]
    body = "".join(f'<tr><td class="l">{esc(label)}</td><td>{num(v)}</td><td>{interval(c)}</td>'
                   f'<td class="l muted">{esc(what)}</td></tr>' for label, v, c, what in rows)
    note = "" if ci else '<p class="muted">No 95 % intervals in the metrics file (no bootstrap run).</p>'
    return (f'<section id="metrics"><h2>Metrics</h2>{note}<div class="scroll"><table id="metrics-table">'
            f'<tr><th class="l">metric</th><th>value</th><th>95 % interval</th><th class="l">what it is</th></tr>'
            f'{body}</table></div></section>')


def per_class_table(m, class_names):
    body = ""
    for i, name in enumerate(class_names):
        c = m["per_class"][name]
        confused = ", ".join(
            f'<a href="#{cell_id(class_names, i, class_names.index(x["class"]))}">{esc(x["class"])}</a> '
            f'{x["count"]} ({100 * x["share"]:.0f} %)' for x in c.get("confused_with", [])
            if x["class"] in class_names) or DASH
        body += (f'<tr><td class="l">{esc(name)}</td><td>{num(c["support"])}</td><td>{num(c["precision"])}</td>'
                 f'<td>{num(c["recall"])}</td><td>{num(c["f1"])}</td><td class="l">{confused}</td></tr>')
    return (f'<section id="per-class"><h2>Per class</h2><div class="scroll"><table id="per-class-table">'
            f'<tr><th class="l">class</th><th>support</th><th>precision</th><th>recall</th><th>F1</th>'
            f'<th class="l">most often predicted as</th></tr>{body}</table></div></section>')


def confusion_table(cm, class_names):
    rows = cm.sum(1)
    head = "".join(f"<th>{esc(n)}</th>" for n in class_names)
    body = ""
    for i, name in enumerate(class_names):
        cells = ""
        for j in range(len(class_names)):
            pct = 100 * cm[i, j] / rows[i] if rows[i] else 0.0
            bg, fg = shade(pct)
            inner = f"{cm[i, j]:,}<small>{pct:.0f} %</small>"
            link = (f'<a href="#{cell_id(class_names, i, j)}" title="{esc(name)} predicted as '
                    f'{esc(class_names[j])}">{inner}</a>' if cm[i, j] else f"<span>{inner}</span>")
            cells += f'<td style="background:{bg};color:{fg}">{link}</td>'
        body += f'<tr><th class="l">{esc(name)}</th>{cells}<td>{rows[i]:,}</td></tr>'
    return (f'<section id="confusion"><h2>Confusion matrix</h2><p class="muted">Rows: true class; columns: '
            f'predicted class; each cell: images and share of the true class (shaded as in '
            f'ConfusionMatrix_resnet50.png). A cell links to its images.</p><div class="scroll">'
            f'<table class="cm" id="confusion-table"><tr><th class="l">true \\ predicted</th>{head}'
            f'<th>images</th></tr>{body}</table></div></section>')


def caption_cls(class_names, t, p, conf, extra=""):
    cls = ' class="wrong"' if t != p else ""
    return (f"<b{cls}>{esc(class_names[p])}</b> {conf:.2f}<br>true {esc(class_names[t])}{extra}")


def galleries(cells, class_names, conf, pics, cap):
    out = ['<section id="galleries"><h2>Images per cell</h2><p class="muted">Most confident first; '
           f'at most {cap} per cell (<code>--report_images</code>).</p>']
    for (i, j), rows in cells.items():
        shown = rows[:cap]
        rest = "" if len(rows) == len(shown) else " (not shown: --report_images 0)" if not shown else \
            f" (showing the {len(shown)} most confident; {len(rows) - len(shown):,} more not shown)"
        figs = "".join(pics.figure(r, caption_cls(class_names, i, j, conf[r]),
                                   f"true {class_names[i]}, predicted {class_names[j]}") for r in shown)
        out.append(f'<section id="{cell_id(class_names, i, j)}"><h3>true {esc(class_names[i])}, predicted '
                   f'{esc(class_names[j])}: {len(rows):,} image{"s" if len(rows) != 1 else ""}{rest}'
                   f'<a class="back" href="#confusion">\u2191 matrix</a></h3>'
                   f'<div class="gallery">{figs}</div></section>')
    out.append("</section>")
    return "".join(out)


def mistakes(rows, class_names, y, pred, probs, pics, cap):
    if not rows:
        return '<section id="mistakes"><h2>Most confident mistakes</h2><p>No mistakes.</p></section>'
    figs = "".join(pics.figure(r, caption_cls(class_names, y[r], pred[r], probs[r, pred[r]],
                                              f" ({probs[r, y[r]]:.2f})"),
                               f"true {class_names[y[r]]}, predicted {class_names[pred[r]]}") for r in rows[:cap])
    what = (f"The {min(cap, len(rows))} wrong predictions the model was surest of, of {len(rows):,} mistakes: the "
            f"likely label errors worth a second look. Caption: predicted class and its probability; true class "
            f"and (its probability).") if cap else f"{len(rows):,} mistakes (not shown: --report_images 0)."
    return (f'<section id="mistakes"><h2>Most confident mistakes</h2><p class="muted">{what}</p>'
            f'<div class="gallery">{figs}</div></section>')


def calibration_section(m, probs, y):
    plt = pyplot()
    bins = m.get("reliability") or reliability(probs, y)
    lo = np.array([b["lo"] for b in bins])
    width = bins[0]["hi"] - bins[0]["lo"]
    acc = np.array([b["accuracy"] if b["count"] else 0.0 for b in bins])
    cnt = np.array([b["count"] for b in bins])
    fig, (ax, axc) = plt.subplots(2, 1, figsize=(5.6, 5.4), sharex=True, gridspec_kw={"height_ratios": [3, 1.2]})
    ax.bar(lo, acc, width=width, align="edge", color="#4c78a8", edgecolor="white", label="accuracy")
    mid = [(b["confidence"], b["accuracy"]) for b in bins if b["count"]]
    ax.plot(*zip(*mid), "o", color="#e45756", ms=4, label="mean confidence")
    ax.plot([0, 1], [0, 1], "--", color="gray", lw=1, label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy",
           title=f"Reliability (ECE {num(m.get('ece'), 3)}, {len(bins)} bins)")
    ax.legend(loc="upper left", fontsize=8)
    axc.bar(lo, cnt, width=width, align="edge", color="#9ecae1", edgecolor="white")
    for x, c in zip(lo, cnt):
        if c:
            axc.text(x + width / 2, c, str(c), ha="center", va="bottom", fontsize=7)
    axc.set(xlabel="confidence (top probability)", ylabel="images", ylim=(0, max(cnt.max(), 1) * 1.3))
    fig.subplots_adjust(left=0.12, right=0.97, top=0.93, bottom=0.1, hspace=0.08)
    chart = png(fig)
    table = "".join(f'<tr><td class="l">{b["lo"]:.3f} \u2013 {b["hi"]:.3f}</td><td>{b["count"]:,}</td>'
                    f'<td>{num(b["accuracy"], 3)}</td><td>{num(b["confidence"], 3)}</td></tr>'
                    for b in bins if b["count"])
    t = m.get("temperature")
    verdict = "" if not t else "T &gt; 1: over-confident. " if t > 1 else "T &lt; 1: under-confident. "
    text = (f"<p>ECE {num(m.get('ece'))}, NLL {num(m.get('nll'))}, Brier score {num(m.get('brier'))}. "
            f"Temperature scaling (Guo et al. 2017): dividing the logits by T = {num(t, 3)} minimises the NLL on "
            f"this set ({num(m.get('nll_at_temperature'))}) and would give ECE {num(m.get('ece_at_temperature'))}. "
            f"{verdict}"
            f"Reported only: the checkpoint is not changed; fit T on a validation set, not the test set, if you "
            f"apply it.</p>")
    return (f'<section id="calibration"><h2>Calibration</h2>{text}<div class="charts">'
            f'<img class="chart" src="{chart}" alt="reliability diagram" width="560" height="540">'
            f'<div class="scroll"><table id="reliability-table"><tr><th class="l">confidence</th><th>images</th>'
            f'<th>accuracy</th><th>mean confidence</th></tr>{table}</table></div></div></section>')


def va_section(m, va_true, va_pred, rows, class_names, y, pics, cap):
    plt = pyplot()
    ok = ~np.isnan(va_true).all(1)  # a dimension without labels is absent from m (see metrics.evaluate)
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 4.2))
    va_scatter(axes, va_true, va_pred, [f"{name}: CCC {num(m.get(name, {}).get('ccc'), 3)}"
                                        for name in ("valence", "arousal")])
    fig.subplots_adjust(left=0.1, right=0.98, top=0.92, bottom=0.12, wspace=0.3)
    scatter = png(fig)
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.2), sharey=True)
    for k, (ax, name) in enumerate(zip(axes, ("valence", "arousal"))):
        err = (va_pred[:, k] - va_true[:, k])[~np.isnan(va_true[:, k])]
        ax.hist(err, bins=np.linspace(-2, 2, 41), color="#4c78a8", edgecolor="white")
        ax.axvline(0, color="gray", lw=1)
        ax.set(xlabel=f"predicted \u2212 true {name}", title=f"{name}: mean {f'{err.mean():+.3f}' if len(err) else DASH}"
               f", RMSE {num(m.get(name, {}).get('rmse'), 3)}")
    axes[0].set_ylabel("images")
    fig.subplots_adjust(left=0.08, right=0.98, top=0.89, bottom=0.16, wspace=0.08)
    hist = png(fig)
    figs = "".join(pics.figure(r, f"V {va_true[r, 0]:+.2f}\u2192{va_pred[r, 0]:+.2f}<br>"
                                  f"A {va_true[r, 1]:+.2f}\u2192{va_pred[r, 1]:+.2f}<br>{esc(class_names[y[r]])}",
                               f"true {class_names[y[r]]}") for r in rows[:cap])
    return (f'<section id="valence-arousal"><h2>Valence and arousal</h2><p class="muted">{int(ok.sum()):,} images '
            f'with labels; predictions clipped to [-1, 1].</p><div class="charts">'
            f'<img class="chart" src="{scatter}" alt="predicted against true valence and arousal" width="840" '
            f'height="420"><img class="chart" src="{hist}" alt="error histograms" width="840" height="320"></div>'
            f'<h3 id="va-errors">Largest errors</h3><p class="muted">Distance between true and predicted '
            f'(valence, arousal), largest first. Caption: true \u2192 predicted, and the true class.</p>'
            f'<div class="gallery">{figs}</div></section>')


# --- the page -----------------------------------------------------------------------------------
def render(metrics, predictions, image_paths, names=None, boxes=None, command=None, max_images=24,
           progress=False):
    """The report page as a string.

    metrics: eval's metrics dict (metrics.evaluate plus eval's keys; ci95, data, run, bootstrap
    shown when present). predictions: {"logits": (N, C) over metrics["classes_scored"], "y_cls": (N,),
    "va": (N, 2) predicted, "y_reg": (N, 2) true (NaN where none)}. image_paths: N paths, names: N
    names to show (default: the paths), boxes: (N, 4) face boxes or None. max_images: thumbnails per
    gallery. Images that cannot be read get a placeholder and a note (on the page and on stderr).
    """
    class_names = list(metrics.get("classes_scored") or metrics["per_class"])
    names = list(names) if names is not None else [str(p) for p in image_paths]
    probs = softmax(predictions["logits"])
    y, pred = np.asarray(predictions["y_cls"]), probs.argmax(1)
    conf = probs.max(1)
    cm = np.asarray(metrics["confusion_matrix"])
    cells = {}
    for r in np.lexsort((-conf, pred, y)):  # by cell, most confident first within a cell
        cells.setdefault((int(y[r]), int(pred[r])), []).append(int(r))
    cells = dict(sorted(cells.items()))
    wrong = [int(r) for r in np.argsort(-conf, kind="stable") if y[r] != pred[r]]
    has_va = any(isinstance(metrics.get(n), dict) for n in ("valence", "arousal")) and \
        predictions.get("y_reg") is not None
    va_rows = []
    if has_va:
        va_true = np.asarray(predictions["y_reg"], np.float64)
        va_pred = clip_va(np.asarray(predictions["va"], np.float64))
        err = np.where(np.isnan(va_true).all(1), np.nan, np.sqrt(np.nansum((va_pred - va_true) ** 2, 1)))
        va_rows = [int(r) for r in np.argsort(-np.nan_to_num(err, nan=-1), kind="stable") if np.isfinite(err[r])]
    shown = [r for rows in cells.values() for r in rows[:max_images]] + wrong[:max_images] + va_rows[:max_images]
    pics = Pictures(image_paths, names, boxes, shown, progress)

    notes = list(metrics.get("notes") or [])
    if pics.unreadable:
        name, why = pics.unreadable[0]
        note = (f"{len(pics.unreadable)} image(s) could not be read when the report was written and are shown "
                f"as placeholders (the metrics were computed before), e.g. {name}: {why}")
        notes.append(note)
        print(f"report: {note}", file=sys.stderr)
    title = f"Evaluation: {os.path.basename(str(metrics.get('checkpoint', 'checkpoint')))}"
    summary = (f"{len(y):,} images, {len(class_names)} classes: accuracy {num(metrics.get('accuracy'))}, "
               f"F1 (macro) {num(metrics.get('f1_macro'))}, ECE {num(metrics.get('ece'))}"
               + (f", valence CCC {num(metrics.get('valence', {}).get('ccc'))}, arousal CCC "
                  f"{num(metrics.get('arousal', {}).get('ccc'))}" if has_va else ""))
    nav = [("header", "Run"), ("metrics", "Metrics"), ("per-class", "Per class"), ("confusion", "Confusion"),
           ("galleries", "Images"), ("mistakes", "Mistakes"), ("calibration", "Calibration")]
    if has_va:
        nav.append(("valence-arousal", "Valence/arousal"))
    parts = [
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{esc(title)}</title>'
        f'<style>{CSS}</style></head><body>',
        "<nav>" + "".join(f'<a href="#{a}">{t}</a>' for a, t in nav) + "</nav><main>",
        f"<h1>{esc(title)}</h1><p>{summary}</p>",
        "".join(f'<p class="note">{esc(n)}</p>' for n in notes),
        header(metrics, command, len(y)),
        metrics_table(metrics),
        per_class_table(metrics, class_names),
        confusion_table(cm, class_names),
        galleries(cells, class_names, conf, pics, max_images),
        mistakes(wrong, class_names, y, pred, probs, pics, max_images),
        calibration_section(metrics, probs, y),
    ]
    if has_va:
        parts.append(va_section(metrics, va_true, va_pred, va_rows, class_names, y, pics, max_images))
    parts.append("</main></body></html>\n")
    return "".join(parts)
