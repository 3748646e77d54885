"""The evaluation as one self-contained HTML page: which faces the model gets wrong, how sure it was,
and how well its confidence is calibrated.

eval_resnet50.py calls render() with the metrics dict, the predictions and the image paths, and
writes the page as report_<arch>.html. Plain HTML and CSS, no script: the thumbnails (JPEG) and charts
(PNG) are data URIs, so the page opens from any folder, moved or mailed, and fetches nothing. Every string
that comes from data (file names, class names, paths, the run record) goes through html.escape.

The page leads with the summary (SUMMARY: metrics with intervals, the confusion matrix with its diagonal
marked and every cell linked to its faces, the most confident mistakes, calibration), then the details
(DETAILS: per class, valence/arousal, the galleries of the off-diagonal cells collapsed, the correct cells
collapsed and last, the run). Each section is a function of the Evaluation; a new one is added to a list.
A thumbnail is shown at THUMB px and stored at up to FULL px: clicking it shows it large (CSS :target).
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

from fer.data.dataset import FERDataError, crop_face, load_image
from fer.evaluation.metrics import clip_va, reliability, softmax
from fer.trust import one_line
from fer.trust import progress as progress_of

THUMB = 128  # side of a thumbnail on the page, in CSS px
FULL = 192  # side of the image stored for it (larger faces are shrunk to it): what a click enlarges
SUMMARY_MISTAKES = 12  # the most confident mistakes shown in the summary (all of them are in the cell galleries)

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
main{max-width:1440px;margin:0 auto;padding:4px 16px 48px}
section,h2,h3,summary,figure{scroll-margin-top:44px}
h1{font-size:22px;margin:16px 0 4px}
h2{font-size:18px;margin:24px 0 6px;padding-bottom:3px;border-bottom:1px solid #d0d7de}
h3{font-size:15px;margin:18px 0 4px}
a{color:#0550ae}
code,pre{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
pre{background:#f6f8fa;border:1px solid #d0d7de;padding:8px;overflow-x:auto;white-space:pre-wrap;
 overflow-wrap:anywhere}
.scroll{overflow-x:auto;max-width:100%}
.summary{display:grid;grid-template-columns:minmax(0,1fr);gap:0 28px;align-items:start}
@media (min-width:1200px){.summary{grid-template-columns:minmax(0,1fr) minmax(0,1.25fr)}}
.summary>section{min-width:0}
table{border-collapse:collapse;margin:6px 0}
th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:right;vertical-align:top}
th{background:#f6f8fa;white-space:nowrap}
.l,th.l,td.l{text-align:left}
td.wrap{word-break:break-all;max-width:560px}
td.what{font-size:12px;min-width:160px}
.muted{color:#57606a}
.note{background:#fff8c5;border:1px solid #e3c567;padding:4px 8px;margin:4px 0}
table.cm{font-size:13px}
table.cm td{text-align:center;min-width:46px;padding:0;vertical-align:middle}
table.cm th{vertical-align:middle}
table.cm td a,table.cm td span{display:block;padding:5px 4px;color:inherit;text-decoration:none}
table.cm td a:hover{outline:2px solid #cf222e;outline-offset:-2px}
table.cm td.diag{box-shadow:inset 0 0 0 3px #1a7f37}
table.cm small{display:block;font-size:11px}
.key{display:inline-block;width:14px;height:14px;vertical-align:-2px;box-shadow:inset 0 0 0 3px #1a7f37}
details.cell{border:1px solid #d0d7de;border-radius:4px;margin:6px 0;padding:0 8px}
details.cell>summary{cursor:pointer;padding:6px 0;font-weight:600}
details.cell>summary span{font-weight:normal}
details.cell[open]>summary{border-bottom:1px solid #d0d7de}
details.cell h3{font-size:14px;margin:12px 0 4px}
h3:target{background:#fff8c5}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(136px,1fr));gap:12px 10px;margin:6px 0}
figure.t{margin:0;min-width:0;font-size:12px;line-height:1.3}
figure.t .pic{display:block;width:128px;height:128px}
figure.t img,figure.t .missing{display:block;width:128px;height:128px;object-fit:contain;background:#eaeef2;
 border:1px solid #d0d7de}
figure.t a.pic:hover img{outline:2px solid #0550ae}
figure.t .missing{font-size:11px;color:#57606a;padding:50px 4px;text-align:center}
figure.t figcaption{margin-top:3px;overflow:hidden}
figure.t .name{display:block;white-space:nowrap;overflow:hidden;text-overflow:ellipsis;color:#57606a}
figure.t .close{display:none}
figure.t:target .close{display:block;position:fixed;inset:0;z-index:10;background:rgba(15,20,25,.85);cursor:zoom-out}
figure.t:target img{position:fixed;z-index:11;top:50%;left:50%;transform:translate(-50%,-50%);
 width:min(90vw,84vh,576px);height:auto;max-height:84vh;background:#000;border:0;pointer-events:none}
figure.t:target .close span{position:absolute;left:0;right:0;bottom:12px;color:#fff;text-align:center}
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
def thumbnail(path, box=None, side=FULL):
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
            done = progress_of(pool.map(lambda r: thumbnail(paths[r], None if boxes is None else boxes[r]), rows),
                               total=len(rows), desc="report thumbnails", unit="img", disable=not progress)
            self.thumbs = dict(zip(rows, list(done)))  # list: the progress counts the last one too
        finally:  # on Ctrl-C, drop the images not started yet instead of waiting for them
            pool.shutdown(cancel_futures=True)
        self.names = names
        self.count = 0  # figures written: their ids
        self.unreadable = [(names[r], t[1]) for r, t in self.thumbs.items() if t[0] is None]

    def figure(self, r, caption, alt):
        """A thumbnail with its caption; clicking it shows the stored image large (its figure becomes the
        :target), clicking outside it closes it (a link to the caption: the page stays where it was)."""
        thumb = self.thumbs[r]
        name = self.names[r]
        cap = f'<figcaption>{caption}<span class="name">{esc(name)}</span></figcaption>'
        if thumb[0] is None:
            pic = f'<div class="missing" title="{esc(thumb[1])}">image not readable</div>'
            return f'<figure class="t" title="{esc(name)}">{pic}{cap}</figure>'
        self.count += 1
        k = self.count
        return (f'<figure class="t" id="img-{k}" title="{esc(name)}"><a class="pic" href="#img-{k}">'
                f'<img src="{thumb[0]}" width="{THUMB}" height="{THUMB}" alt="{esc(alt)}"></a>'
                f'<a class="close" href="#cap-{k}" aria-label="close"><span>{esc(alt)} \u00b7 {esc(name)} '
                f'({thumb[1]}\u00d7{thumb[2]} px) \u00b7 click to close</span></a>'
                + cap.replace("<figcaption>", f'<figcaption id="cap-{k}">', 1) + "</figure>")


# --- the evaluation the sections draw from ------------------------------------------------------
class Evaluation:
    """What every section reads: the metrics, the predictions sorted into cells, the pictures."""

    def __init__(self, metrics, predictions, image_paths, names, boxes, command, max_images, progress, title):
        self.m = metrics
        self.class_names = list(metrics.get("classes_scored") or metrics["per_class"])
        self.names = list(names) if names is not None else [str(p) for p in image_paths]
        self.probs = softmax(predictions["logits"])
        self.y, self.pred = np.asarray(predictions["y_cls"]), self.probs.argmax(1)
        self.conf = self.probs.max(1)
        self.cm = np.asarray(metrics["confusion_matrix"])
        self.command, self.cap = command, max_images
        cells = {}
        for r in np.lexsort((-self.conf, self.pred, self.y)):  # by cell, most confident first within a cell
            cells.setdefault((int(self.y[r]), int(self.pred[r])), []).append(int(r))
        self.cells = dict(sorted(cells.items()))
        self.wrong = [int(r) for r in np.argsort(-self.conf, kind="stable") if self.y[r] != self.pred[r]]
        self.has_va = any(isinstance(metrics.get(n), dict) for n in ("valence", "arousal")) and \
            predictions.get("y_reg") is not None
        self.va_rows = []
        if self.has_va:
            self.va_true = np.asarray(predictions["y_reg"], np.float64)
            self.va_pred = clip_va(np.asarray(predictions["va"], np.float64))
            err = np.where(np.isnan(self.va_true).all(1), np.nan,
                           np.sqrt(np.nansum((self.va_pred - self.va_true) ** 2, 1)))
            self.va_rows = [int(r) for r in np.argsort(-np.nan_to_num(err, nan=-1), kind="stable")
                            if np.isfinite(err[r])]
        shown = ([r for rows in self.cells.values() for r in rows[:max_images]]
                 + self.wrong[:min(max_images, SUMMARY_MISTAKES)] + self.va_rows[:max_images])
        self.pics = Pictures(image_paths, self.names, boxes, shown, progress)
        self.title = title or page_title(metrics)



# --- sections: each (Evaluation) -> HTML, "" when it has nothing to show -----------------------------
def metrics_table(m):  # also metrics_section(ev)
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
                   f'<td class="l muted what">{esc(what)}</td></tr>' for label, v, c, what in rows)
    note = "" if ci else '<p class="muted">No 95 % intervals in the metrics file (no bootstrap run).</p>'
    return (f'<section id="metrics"><h2>Metrics</h2>{note}<div class="scroll"><table id="metrics-table">'
            f'<tr><th class="l">metric</th><th>value</th><th>95 % interval</th><th class="l">what it is</th></tr>'
            f'{body}</table></div></section>')


def metrics_section(ev):
    return metrics_table(ev.m)


def confusion_section(ev):
    cm, class_names = ev.cm, ev.class_names
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
                    f'{esc(class_names[j])}: show the images">{inner}</a>' if cm[i, j] else f"<span>{inner}</span>")
            diag = ' class="diag"' if i == j else ""
            cells += f'<td{diag} style="background:{bg};color:{fg}">{link}</td>'
        body += f'<tr><th class="l">{esc(name)}</th>{cells}<td>{rows[i]:,}</td></tr>'
    return (f'<section id="confusion"><h2>Confusion matrix</h2><p class="muted">Rows: true class; columns: '
            f'predicted class; each cell: images and share of the true class (shaded as in '
            f'ConfusionMatrix_&lt;arch&gt;.png); <span class="key"></span> the diagonal (correct). A cell links '
            f'to its images.</p><div class="scroll">'
            f'<table class="cm" id="confusion-table"><tr><th class="l">true \\ predicted</th>{head}'
            f'<th>images</th></tr>{body}</table></div></section>')


def caption_cls(class_names, t, p, conf, extra=""):
    cls = ' class="wrong"' if t != p else ""
    return (f"<b{cls}>{esc(class_names[p])}</b> {conf:.2f}<br>true {esc(class_names[t])}{extra}")


def mistakes_section(ev):
    rows, class_names, y, pred, probs = ev.wrong, ev.class_names, ev.y, ev.pred, ev.probs
    if not rows:
        return '<section id="mistakes"><h2>Most confident mistakes</h2><p>No mistakes.</p></section>'
    cap = min(ev.cap, SUMMARY_MISTAKES)
    figs = "".join(ev.pics.figure(r, caption_cls(class_names, y[r], pred[r], probs[r, pred[r]],
                                                 f" ({probs[r, y[r]]:.2f})"),
                                  f"true {class_names[y[r]]}, predicted {class_names[pred[r]]}") for r in rows[:cap])
    what = (f"The {min(cap, len(rows))} wrong predictions the model was surest of, of {len(rows):,} mistakes "
            f"(all of them: <a href=\"#galleries\">mistakes by cell</a>): the likely label errors worth a second "
            f"look. Caption: predicted class and its probability; true class and (its probability). Click a "
            f"face to enlarge it.") if cap else f"{len(rows):,} mistakes (not shown: --report_images 0)."
    return (f'<section id="mistakes"><h2>Most confident mistakes</h2><p class="muted">{what}</p>'
            f'<div class="gallery">{figs}</div></section>')


def calibration_section(ev):
    m, probs, y = ev.m, ev.probs, ev.y
    plt = pyplot()
    bins = m.get("reliability") or reliability(probs, y)
    lo = np.array([b["lo"] for b in bins])
    width = bins[0]["hi"] - bins[0]["lo"]
    cnt = np.array([b["count"] for b in bins])
    fig, (ax, axc) = plt.subplots(2, 1, figsize=(5.6, 5.4), sharex=True, gridspec_kw={"height_ratios": [3, 1.2]})
    reliability_axes(ax, bins, f"Reliability (ECE {num(m.get('ece'), 3)}, {len(bins)} bins)")
    ax.set(xlabel="", ylabel="accuracy")  # the counts below carry the confidence axis
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
            f"Reported only: <code>eval_resnet50.py --calibrate</code> on a validation split records a temperature in "
            f"the checkpoint (see Calibrated confidence); fit it on validation, not on the test set.</p>")
    return (f'<section id="calibration"><h2>Calibration</h2>{text}<div class="charts">'
            f'<img class="chart" src="{chart}" alt="reliability diagram" width="560" height="540">'
            f'</div><details><summary>Per bin</summary><div class="scroll"><table id="reliability-table"><tr>'
            f'<th class="l">confidence</th><th>images</th><th>accuracy</th><th>mean confidence</th></tr>{table}'
            f'</table></div></details></section>')


def per_class_section(ev):
    m, class_names = ev.m, ev.class_names
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


def va_section(ev):
    if not ev.has_va:
        return ""
    m, va_true, va_pred, rows, class_names, y, pics, cap = (ev.m, ev.va_true, ev.va_pred, ev.va_rows,
                                                            ev.class_names, ev.y, ev.pics, ev.cap)
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
            f'<details class="cell" id="va-errors"><summary>Largest errors <span class="muted">(the '
            f'{min(cap, len(rows))} largest distances between true and predicted (valence, arousal))</span>'
            f'</summary><p class="muted">Largest first. Caption: true \u2192 predicted, and the true class.</p>'
            f'<div class="gallery">{figs}</div></details></section>')


def cell_gallery(ev, i, j):
    """The images of one cell under a heading that holds the id the matrix links to."""
    class_names, rows = ev.class_names, ev.cells[(i, j)]
    shown = rows[:ev.cap]
    rest = "" if len(rows) == len(shown) else " (not shown: --report_images 0)" if not shown else \
        f" (the {len(shown)} most confident shown)"
    figs = "".join(ev.pics.figure(r, caption_cls(class_names, i, j, ev.conf[r]),
                                  f"true {class_names[i]}, predicted {class_names[j]}") for r in shown)
    return (f'<h3 id="{cell_id(class_names, i, j)}">true {esc(class_names[i])} \u2192 predicted {esc(class_names[j])}: '
            f'{len(rows):,} image{"s" if len(rows) != 1 else ""}{rest}<a class="back" href="#confusion">\u2191 matrix'
            f'</a></h3><div class="gallery">{figs}</div>')


def grouped_galleries(ev, diagonal):
    """One collapsed <details> per true class holding its cells' galleries (the off-diagonal ones, the
    largest first, or its diagonal cell). A link from the matrix points inside one, which opens it."""
    out = []
    for i, name in enumerate(ev.class_names):
        cells = [c for c in ev.cells if c[0] == i and (c[1] == i) == diagonal]
        if not cells:
            continue
        cells.sort(key=lambda c: (-len(ev.cells[c]), c))
        n = sum(len(ev.cells[c]) for c in cells)
        what = (f"{n:,} correct" if diagonal else f"{n:,} mistake{'s' if n != 1 else ''}: predicted as "
                + ", ".join(f"{esc(ev.class_names[j])} {len(ev.cells[(i, j)]):,}" for _, j in cells))
        out.append(f'<details class="cell"><summary>true {esc(name)} <span class="muted">({what})</span></summary>'
                   + "".join(cell_gallery(ev, *c) for c in cells) + "</details>")
    return "".join(out) or "<p>None.</p>"


def galleries_section(ev):
    return (f'<section id="galleries"><h2>Mistakes by cell</h2><p class="muted">The off-diagonal cells of the '
            f'confusion matrix by true class, collapsed: open a class here or click a cell in the matrix. Most '
            f'confident first; at most {ev.cap} images per cell (<code>--report_images</code>). Click a face to '
            f'enlarge it.</p>{grouped_galleries(ev, diagonal=False)}</section>')


def correct_section(ev):
    return (f'<section id="correct"><h2>Correct, by class</h2><p class="muted">The diagonal of the confusion '
            f'matrix, collapsed. Most confident first.</p>{grouped_galleries(ev, diagonal=True)}</section>')


def run_section(ev):
    return header(ev.m, ev.command, len(ev.y))


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
    return f'<section id="run"><h2>Run</h2><div class="scroll"><table class="hdr">{body}</table></div></section>'


def reliability_axes(ax, bins, title):
    """One reliability diagram: accuracy per confidence bin, the bins' mean confidence, the diagonal."""
    lo = np.array([b["lo"] for b in bins])
    width = bins[0]["hi"] - bins[0]["lo"]
    ax.bar(lo, [b["accuracy"] if b["count"] else 0.0 for b in bins], width=width, align="edge", color="#4c78a8",
           edgecolor="white", label="accuracy")
    mid = [(b["confidence"], b["accuracy"]) for b in bins if b["count"]]
    if mid:
        ax.plot(*zip(*mid), "o", color="#e45756", ms=4, label="mean confidence")
    ax.plot([0, 1], [0, 1], "--", color="gray", lw=1, label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top probability)", title=title)


def calibrated_section(m):
    """ECE (with its interval), NLL and Brier score before and after the checkpoint's temperature, the two
    reliability diagrams, the split the temperature was fitted on, and a warning when it is this one."""
    cal = m.get("calibrated")
    head = '<section id="calibrated"><h2>Calibrated confidence</h2>'
    if not cal:
        return (f'{head}<p class="muted">The checkpoint records no temperature: predict.py reports raw softmax '
                f'probabilities. Fit one on the validation split with <code>eval_resnet50.py --calibrate --meta '
                f'metadata_val.parquet</code>, then evaluate the test split.</p></section>')
    plt = pyplot()
    b, a = cal["before"], cal["after"]
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.9), sharey=True)
    reliability_axes(axes[0], b["reliability"], f"raw: ECE {num(b['ece'], 3)}")
    reliability_axes(axes[1], a["reliability"], f"T = {cal['temperature']:.3f}: ECE {num(a['ece'], 3)}")
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.subplots_adjust(left=0.08, right=0.98, top=0.9, bottom=0.14, wspace=0.08)
    chart = png(fig)
    rows = [("ECE", b["ece"], a["ece"], b.get("ece_ci95"), a.get("ece_ci95")), ("NLL", b["nll"], a["nll"], None, None),
            ("Brier score", b["brier"], a["brier"], None, None)]
    body = "".join(f'<tr><td class="l">{k}</td><td>{num(x)}</td><td>{interval(cx)}</td><td>{num(y)}</td>'
                   f'<td>{interval(cy)}</td></tr>' for k, x, y, cx, cy in rows)
    where = ", ".join(f"<code>{esc(p)}</code>" for p in cal.get("fitted_on_paths") or [])
    fps = ", ".join(esc(str(r.get("fingerprint", ""))[:12]) for r in cal.get("fitted_on") or [])
    how = "fitted by this evaluation (--calibrate) and written into the checkpoint" if cal.get("fitted_here") else \
        "recorded in the checkpoint"
    warn = f'<p class="note">WARNING: {esc(cal["warning"])}</p>' if cal.get("warning") else ""
    return (f'{head}{warn}<p>Temperature T = {cal["temperature"]:.4f}, {how}; fitted on {where or DASH}'
            f'{f" (rows fingerprint {fps})" if fps else ""}. Calibrated probabilities are softmax(logits / T): '
            f'the predicted class, accuracy and every ranking metric are unchanged; predict.py and the ONNX '
            f'export report them by default.</p><div class="scroll"><table id="calibrated-table"><tr>'
            f'<th class="l">on this split</th><th>raw</th><th>95 % interval</th><th>calibrated</th>'
            f'<th>95 % interval</th></tr>{body}</table></div>'
            f'<img class="chart" src="{chart}" alt="reliability diagrams before and after temperature scaling" '
            f'width="840" height="390"></section>')


def leakage_section(m):
    """The index's leakage guard for the evaluated split: its protocol card's fingerprint and how many of
    its images have an exact or near duplicate in the training split, with thumbnails of the pairs."""
    cards = m.get("protocol_card") or []
    head = '<section id="leakage"><h2>Leakage guard</h2>'
    if not cards:
        return (f'{head}<p class="muted">No protocol card beside the index file (indexed before the leakage guard): '
                f'index again with metadata_parallel.py to check for duplicates between the splits.</p></section>')
    out = [head]
    for c in cards:
        split = c.get("split") or "this split"
        n = (c.get("across_splits") or {}).get(f"train-{split}", 0)
        line = (f"<b>{n:,} near-duplicate{'s' if n != 1 else ''} between train and {esc(split)}</b> (exact or "
                f"within {esc(c.get('bits'))} bits of a 64-bit pHash); {esc(c.get('action') or '')}. Card "
                f"<code>{esc(c.get('card'))}</code>, fingerprint <code>{esc(str(c.get('fingerprint'))[:16])}</code>"
                + (f"; {int(c['excluded'])} rows excluded by review" if c.get("excluded") else ""))
        if not c.get("matches"):
            line += ' <span class="wrong">(the card does not match this index file: its rows differ)</span>'
        out.append(f"<p>{line}</p>")
        figs = []
        for p in c.get("pairs_with_train") or []:
            for side in ("a", "b"):
                thumb = thumbnail(p[side]["path"])
                pic = (f'<img src="{thumb[0]}" width="{thumb[1]}" height="{thumb[2]}" alt="{esc(side)}">'
                       if thumb[0] else '<div class="missing">image not readable</div>')
                figs.append(f'<figure class="t" title="{esc(p[side]["path"])}">{pic}<figcaption>{esc(p[side]["split"])}: '
                            f'{esc(p[side]["label"])}<br>{esc(p["kind"])} {int(p["bits"])}<span class="name">'
                            f'{esc(p[side]["filename"])}</span></figcaption></figure>')
        if figs:  # collapsed, as every gallery below the summary: the count above is the finding
            n_pairs, total = len(figs) // 2, c.get("pairs_with_train_total") or len(figs) // 2
            which = f"the {n_pairs:,} pair{'s' if n_pairs != 1 else ''}" if total <= n_pairs else \
                f"the first {n_pairs:,} of {total:,} pairs"
            out.append(f'<details class="cell"><summary>{which} with train <span class="muted">(thumbnails; every '
                       f'pair is in the card)</span></summary><div class="gallery">{"".join(figs)}</div></details>')
    out.append("</section>")
    return "".join(out)


LABEL_ISSUES_OPEN = 5  # the most likely label issues shown open (one row at 800 px); the others collapsed


def label_issues_section(m):
    """The likely label issues (eval --audit_labels): thumbnail, given and suggested label, the probabilities;
    the first LABEL_ISSUES_OPEN open, the others in a collapsed gallery."""
    li = m.get("label_issues")
    if not li:
        return ""
    figs = []
    for r in li.get("top") or []:
        thumb = thumbnail(r.get("path"))
        pic = (f'<img src="{thumb[0]}" width="{thumb[1]}" height="{thumb[2]}" alt="label issue">' if thumb[0]
               else '<div class="missing">image not readable</div>')
        figs.append(f'<figure class="t" title="{esc(r["filename"])}">{pic}<figcaption>#{int(r["rank"])} given '
                    f'<b class="wrong">{esc(r["given_label"])}</b> {r["given_label_probability"]:.2f}<br>suggested '
                    f'<b>{esc(r["suggested_label"])}</b> {r["suggested_label_probability"]:.2f}'
                    f'<span class="name">{esc(r["filename"])}</span></figcaption></figure>')
    warn = f'<p class="note">WARNING: {esc(li["warning"])}</p>' if li.get("warning") else ""
    more = figs[LABEL_ISSUES_OPEN:]
    rest = (f'<details class="cell"><summary>the next {len(more):,} <span class="muted">(ranks '
            f'{LABEL_ISSUES_OPEN + 1}-{len(figs)})</span></summary><div class="gallery">{"".join(more)}</div></details>'
            if more else "")
    return (f'<section id="label-issues"><h2>Likely label issues</h2>{warn}<p class="muted">{li["n"]:,} of '
            f'{li["of"]:,} rows flagged by confident learning ({esc(li["method"])}); the {len(figs)} most likely '
            f'first. Review <code>{esc(li.get("csv", "label_issues_<arch>.csv"))}</code> (mark the column '
            f'<code>exclude</code>) and index again with <code>metadata_parallel.py --exclude FILE</code>.</p>'
            f'<div class="gallery">{"".join(figs[:LABEL_ISSUES_OPEN])}</div>{rest}</section>')


# The page: the summary first (two columns on a wide screen), then the details. (id, nav label, section):
# a section added later (issue 27: calibration after temperature, label issues) is one more entry.
SUMMARY = [("metrics", "Metrics", metrics_section), ("confusion", "Confusion", confusion_section),
           ("mistakes", "Mistakes", mistakes_section), ("calibration", "Calibration", calibration_section),
           ("calibrated", "Calibrated", lambda ev: calibrated_section(ev.m))]
DETAILS = [("leakage", "Leakage", lambda ev: leakage_section(ev.m)),
           ("label-issues", "Label issues", lambda ev: label_issues_section(ev.m)),
           ("per-class", "Per class", per_class_section), ("valence-arousal", "Valence/arousal", va_section),
           ("galleries", "Mistakes by cell", galleries_section), ("correct", "Correct", correct_section),
           ("run", "Run", run_section)]


# --- the page -----------------------------------------------------------------------------------
def page_title(metrics):
    """"<arch>: <run>", the run named by its checkpoint (folder and name): what was trained, and which run."""
    path = str(metrics.get("checkpoint", "checkpoint"))
    run = f"{os.path.basename(os.path.dirname(path))}/" if os.path.dirname(path) else ""
    run += os.path.splitext(os.path.basename(path))[0]
    return f"{metrics['arch']}: {run}" if metrics.get("arch") else f"Evaluation: {os.path.basename(path)}"


def training_headline(metrics):
    """What training counted for this checkpoint (its run record): the best validation accuracy of the
    weights --best_on names, at which epoch, and a collapse."""
    run = metrics.get("run") if isinstance(metrics.get("run"), dict) else {}
    acc = (run.get("best") or {}).get("val_acc")
    if acc is None:
        return ""
    weights = " (EMA weights)" if run.get("best_on") == "ema" else ""
    line = f"Training: best validation accuracy{weights} {num(acc)} at epoch {run.get('best_epoch')}."
    if run.get("collapse"):
        line += f" COLLAPSED in training: {run['collapse']['class']} took {run['collapse']['share']:.0%} of the predictions."
    return line



def render(metrics, predictions, image_paths, names=None, boxes=None, command=None, max_images=24,
           progress=False, title=None):
    """The report page as a string.

    metrics: eval's metrics dict (metrics.evaluate plus eval's keys; ci95, data, run, bootstrap
    shown when present). predictions: {"logits": (N, C) over metrics["classes_scored"], "y_cls": (N,),
    "va": (N, 2) predicted, "y_reg": (N, 2) true (NaN where none)}. image_paths: N paths, names: N
    names to show (default: the paths), boxes: (N, 4) face boxes or None. max_images: thumbnails per
    gallery. title: the page's title (default: "<arch>: <run folder>/<checkpoint stem>"). Images that cannot be
    read get a placeholder and a note (on the page and on stderr).
    """
    ev = Evaluation(metrics, predictions, image_paths, names, boxes, command, max_images, progress, title)
    notes = list(metrics.get("notes") or [])
    if ev.pics.unreadable:
        name, why = ev.pics.unreadable[0]
        note = (f"{len(ev.pics.unreadable)} image(s) could not be read when the report was written and are shown "
                f"as placeholders (the metrics were computed before), e.g. {name}: {why}")
        notes.append(note)
        print(f"report: {note}", file=sys.stderr)
    m = metrics
    summary = (f"{len(ev.y):,} images, {len(ev.class_names)} classes: accuracy {num(m.get('accuracy'))}, "
               f"F1 (macro) {num(m.get('f1_macro'))}, ECE {num(m.get('ece'))}"
               + (f", valence CCC {num(m.get('valence', {}).get('ccc'))}, arousal CCC "
                  f"{num(m.get('arousal', {}).get('ccc'))}" if ev.has_va else "")
               + f". Checkpoint <code>{esc(m.get('checkpoint', DASH))}</code> (<a href=\"#run\">run details</a>).")
    headline = training_headline(metrics)
    drawn = [[(a, label, fn(ev)) for a, label, fn in part] for part in (SUMMARY, DETAILS)]
    nav = [(a, label) for part in drawn for a, label, html_ in part if html_]
    return "".join([
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{esc(ev.title)}</title>'
        f'<style>{CSS}</style></head><body>',
        "<nav>" + "".join(f'<a href="#{a}">{t}</a>' for a, t in nav) + "</nav><main>",
        f"<h1>{esc(ev.title)}</h1><p>{summary}</p>" + (f"<p>{esc(headline)}</p>" if headline else ""),
        "".join(f'<p class="note">{esc(n)}</p>' for n in notes),
        '<div class="summary" id="summary">' + "".join(h for _, _, h in drawn[0]) + "</div>",
        "".join(h for _, _, h in drawn[1]),
        "</main></body></html>\n"])
