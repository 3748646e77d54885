"""fer/evaluation/report.py: the HTML evaluation report. The page is parsed with the standard library's
html.parser; one slow test opens it in headless chromium (skipped where chromium is not installed).
"""
import base64
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import cv2
import numpy as np
import pandas as pd
import pytest
from builders import THREE, reference_ece, run_here
from sklearn import metrics as skm

from fer.constants import CLASS_NAMES
from fer.data.dataset import crop_face, load_image
from fer.evaluation import metrics as M
from fer.evaluation.report import FULL, THUMB, cell_id, interval, render, thumbnail

REPORT = "report_resnet18.html"  # the trained fixture is a resnet18 (names come from --arch)


class Page(HTMLParser):
    """What the tests look at: ids, in-page links, other references, images, the tables with an id
    (rows of cell texts) and the visible text."""

    def __init__(self, text):
        super().__init__(convert_charrefs=True)
        self.ids, self.links, self.refs, self.imgs, self.tags, self.tables = [], [], [], [], [], {}
        self.text, self._table, self._row, self._cell = [], None, None, None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if "id" in a:
            self.ids.append(a["id"])
        for key in ("href", "src"):
            if key in a:
                (self.links if a[key].startswith("#") else self.refs).append(a[key])
        if tag == "img":
            self.imgs.append(a)
        if tag == "table" and a.get("id"):
            self._table = self.tables.setdefault(a["id"], [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(" ".join(t.strip() for t in self._cell if t.strip()))
            self._cell = None
        elif tag == "table":
            self._table = self._row = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def decode(src, kind):
    head = f"data:image/{kind};base64,"
    assert src.startswith(head), src[:40]
    img = cv2.imdecode(np.frombuffer(base64.b64decode(src[len(head):], validate=True), np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.size
    return img


def check_self_contained(page):
    """Every in-page link has its target, ids are unique, nothing is fetched, no script runs."""
    assert len(page.ids) == len(set(page.ids))
    missing = {h[1:] for h in page.links} - set(page.ids)
    assert not missing, missing
    assert all(r.startswith("data:image/") for r in page.refs), [r[:40] for r in page.refs if not r.startswith("data:")]
    assert not {"script", "link", "iframe", "object", "embed"} & set(page.tags)


# --- the page, written by eval_resnet50.py ------------------------------------------------------
@pytest.fixture(scope="module")
def evaluated(trained, demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    r = run_here("eval_resnet50.py", "--checkpoint", trained, "--meta", demo["val"], "--out_dir", out,
                 "--save_predictions", out / "pred.csv", "--num_workers", 0, "--report_images", 3)
    assert r.returncode == 0, r.stderr
    assert REPORT in r.stdout
    html = (out / REPORT).read_text(encoding="utf-8")
    return {"dir": out, "html": html, "page": Page(html), "pred": pd.read_csv(out / "pred.csv"),
            "metrics": json.loads((out / "metrics_resnet18.json").read_text())}


def test_page_links_thumbnails_and_nothing_external(evaluated):
    page, m, df = evaluated["page"], evaluated["metrics"], evaluated["pred"]
    check_self_contained(page)
    names = m["classes_scored"]
    cm = np.array(m["confusion_matrix"])
    # Every non-empty cell of the matrix links to its gallery, which shows at most --report_images images.
    cell_links = {h[1:] for h in page.links if h.startswith("#cell-")}
    assert cell_links == {cell_id(names, i, j) for i, j in zip(*np.nonzero(cm))}
    thumbs = [a for a in page.imgs if a["src"].startswith("data:image/jpeg")]
    for a in thumbs:
        img = decode(a["src"], "jpeg")
        assert max(img.shape[:2]) <= FULL
    wrong = int((df["y_true"] != df["y_pred"]).sum())
    va_rows = int(df[["valence_true", "arousal_true"]].notna().all(axis=1).sum())
    assert len(thumbs) == np.minimum(cm[cm > 0], 3).sum() + min(wrong, 3) + min(va_rows, 3)
    charts = [a for a in page.imgs if a["src"].startswith("data:image/png")]
    assert len(charts) == 3  # reliability, valence/arousal scatter, error histograms
    for a in charts:
        decode(a["src"], "png")
    assert "valence-arousal" in page.ids and "calibration" in page.ids and "mistakes" in page.ids
    text = "".join(page.text)
    assert "python eval_resnet50.py --checkpoint" in text and "--report_images 3" in text  # the command
    assert m["checkpoint"] in text
    if not m.get("run"):
        assert "not recorded" in text  # absent: said so, not left blank


def test_page_numbers_equal_sklearn(evaluated):
    page, m, df = evaluated["page"], evaluated["metrics"], evaluated["pred"]
    names = m["classes_scored"]
    y, pred = df["y_true"].to_numpy(), df["y_pred"].to_numpy()
    ref = skm.classification_report(y, pred, labels=range(len(names)), target_names=names, output_dict=True,
                                    zero_division=0)
    cm = skm.confusion_matrix(y, pred, labels=range(len(names)))
    rows = page.tables["per-class-table"][1:]
    assert [r[0] for r in rows] == names
    for row in rows:
        r = ref[row[0]]
        assert int(row[1].replace(",", "")) == r["support"]
        for cell, key in zip(row[2:5], ("precision", "recall", "f1-score")):
            assert float(cell) == pytest.approx(r[key], abs=5e-5 + 1e-12)  # printed with 4 decimals
        i = names.index(row[0])
        off = sorted((-cm[i, j], j) for j in range(len(names)) if j != i and cm[i, j])[:2]
        assert row[5] == ("\u2014" if not off else ", ".join(
            f"{names[j]} {cm[i, j]} ({100 * cm[i, j] / cm[i].sum():.0f} %)" for _, j in off))
    table = page.tables["confusion-table"][1:]
    got = np.array([[int(c.split()[0].replace(",", "")) for c in r[1:-1]] for r in table])
    np.testing.assert_array_equal(got, cm)
    # Calibration in the JSON, from the probabilities of the predictions file.
    probs = df[[f"prob_{n}" for n in names]].to_numpy()
    assert m["ece"] == pytest.approx(reference_ece(probs, y), abs=1e-9)
    assert m["brier"] == pytest.approx(M.brier(probs, y), abs=1e-9)
    assert m["nll"] == pytest.approx(-np.mean(np.log(probs[np.arange(len(y)), y])), abs=1e-9)
    assert m["nll_at_temperature"] <= m["nll"] + 1e-12 and m["temperature"] > 0
    for name in names:
        assert len(m["per_class"][name]["confused_with"]) <= 2
    # Metrics with their 95 % interval when the JSON has one (bootstrap), a dash otherwise.
    metrics = {r[0]: r for r in page.tables["metrics-table"][1:]}
    assert float(metrics["Accuracy"][1]) == pytest.approx(m["accuracy"], abs=5e-5 + 1e-12)
    assert float(metrics["ECE"][1]) == pytest.approx(m["ece"], abs=5e-5 + 1e-12)
    assert float(metrics["valence CCC"][1]) == pytest.approx(m["valence"]["ccc"], abs=5e-5 + 1e-12)
    ci = (m.get("ci95") or {}).get("accuracy")
    assert metrics["Accuracy"][2] == (interval(ci) if ci else "\u2014")


@pytest.mark.slow
def test_report_off_leaves_the_other_outputs_alone(evaluated, trained, demo, tmp_path):
    r = run_here("eval_resnet50.py", "--checkpoint", trained, "--meta", demo["val"], "--out_dir", tmp_path,
                 "--num_workers", 0, "--report", "off")
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / REPORT).exists() and REPORT not in r.stdout
    assert json.loads((tmp_path / "metrics_resnet18.json").read_text()) == evaluated["metrics"]
    for png in ("ConfusionMatrix_resnet18.png", "ValenceArousal_resnet18.png"):
        assert (tmp_path / png).read_bytes() == (evaluated["dir"] / png).read_bytes()


@pytest.mark.parametrize("flags, message", [(["--report_images", "-1"], "--report_images"),
                                            (["--report", "maybe"], "--report"),
                                            ([], "report_resnet50.html: is a folder")])
def test_report_flags_checked(tmp_path, flags, message):
    (tmp_path / "report_resnet50.html").mkdir()  # checked before the model is loaded (the default FER_resnet50.pth)
    r = run_here("eval_resnet50.py", "--out_dir", tmp_path, *flags)
    assert r.returncode in (1, 2) and message in r.stderr and len(r.stderr.strip().splitlines()) == 1


# --- render() on its own: hostile names, unreadable images, other evaluations -------------------
def synthetic(demo, n=12, seed=0, classes=CLASS_NAMES):
    """Predictions over the first n demo images, scored like eval scores them."""
    rng = np.random.default_rng(seed)
    df = pd.read_parquet(demo["all"]).iloc[:n]
    y = rng.integers(0, len(classes), n)
    logits = rng.normal(size=(n, len(classes))) + 2 * np.eye(len(classes))[y]
    paths = [str(demo["root"] / "images" / f) for f in df["filename"]]
    return y, logits, paths, list(df["filename"])


def test_render_escapes_names_and_survives_unreadable_images(demo, tmp_path):
    y, logits, paths, names = synthetic(demo)
    hostile = '<img src=x onerror=alert(1)>"&\'.jpg'
    shutil.copy(paths[0], tmp_path / hostile)
    paths[0], names[0] = str(tmp_path / hostile), hostile
    paths[1] = str(tmp_path / "gone.jpg")  # deleted since the evaluation
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    paths[2] = str(tmp_path / "broken.jpg")
    # A 7-class evaluation of an 8-class model, without valence/arousal: as eval passes it.
    scored = CLASS_NAMES[:7]
    y = y % 7
    m = M.evaluate(logits[:, :7], np.zeros((len(y), 2)), y, None, scored)
    m.update(classes_scored=scored, classes_left_out={"evaluation_set": [], "checkpoint": ["Contempt"]},
             checkpoint_classes=CLASS_NAMES, img_size=32, checkpoint="runs/<b>x</b>.pth", meta=["m.parquet"])
    m["notes"].insert(0, "checkpoint classes absent from the evaluation set, left out of the argmax: Contempt")
    predictions = {"logits": logits[:, :7], "y_cls": y, "va": np.zeros((len(y), 2)),
                   "y_reg": np.full((len(y), 2), np.nan)}
    html = render(m, predictions, paths, names, command="python eval_resnet50.py --x '<y>'",
                             max_images=24)
    page = Page(html)
    check_self_contained(page)
    assert hostile not in html and "<b>x</b>" not in html and "<y>" not in html
    text = "".join(page.text)
    assert hostile in text and "runs/<b>x</b>.pth" in text and "--x '<y>'" in text
    wrong = sum(y[r] != logits[r, :7].argmax() for r in (1, 2))  # shown again among the mistakes
    assert html.count('class="missing"') == 2 + wrong
    assert "2 image(s) could not be read" in text and "gone.jpg" in text
    assert "valence-arousal" not in page.ids and "Valence/arousal" not in text
    assert "left out of the argmax (checkpoint only): Contempt" in text
    assert "not recorded" in text  # no run record, no fingerprints: said, not left blank
    for a in page.imgs:
        if a["src"].startswith("data:image/jpeg"):
            decode(a["src"], "jpeg")


def test_render_without_thumbnails(demo):
    y, logits, paths, names = synthetic(demo, seed=3)
    m = M.evaluate(logits, np.zeros((len(y), 2)), y, None, CLASS_NAMES)
    m["classes_scored"] = CLASS_NAMES
    html = render(m, {"logits": logits, "y_cls": y}, paths, names, max_images=0)
    page = Page(html)
    check_self_contained(page)
    assert not any(a["src"].startswith("data:image/jpeg") for a in page.imgs)
    assert "not shown: --report_images 0" in "".join(page.text)


def test_render_shows_intervals_data_and_run_when_present(demo):
    """The keys another part of the toolkit adds (bootstrap intervals, index fingerprints, run record)."""
    y, logits, paths, names = synthetic(demo, seed=1)
    va_true = np.random.default_rng(2).uniform(-1, 1, (len(y), 2))
    m = M.evaluate(logits, va_true * 0.5, y, va_true, CLASS_NAMES)
    m.update(classes_scored=CLASS_NAMES, checkpoint="c.pth",
             ci95={"accuracy": [0.125, 0.5], "valence": {"rmse": [0.25, 0.75]}},
             bootstrap={"resamples": 1000, "seed": 0, "used": {}},
             data=[{"path": "/d/metadata_val.parquet", "fingerprint": "sha256:abc<", "rows": 12}],
             run={"git": "1234abc", "args": {"lr": 0.001}})
    predictions = {"logits": logits, "y_cls": y, "va": va_true * 0.5, "y_reg": va_true}
    page = Page(render(m, predictions, paths, names, max_images=2))
    check_self_contained(page)
    rows = {r[0]: r for r in page.tables["metrics-table"][1:]}
    assert rows["Accuracy"][2] == "0.1250 \u2013 0.5000" and rows["valence RMSE"][2] == "0.2500 \u2013 0.7500"
    assert rows["F1 (macro)"][2] == "\u2014"
    text = "".join(page.text)
    assert "sha256:abc<" in text and "1234abc" in text and "1,000 resamples" in text
    assert "valence-arousal" in page.ids


def test_thumbnail_is_the_face_crop(demo):
    path = str(demo["root"] / "images" / pd.read_parquet(demo["all"])["filename"].iloc[0])
    box = np.array([8.0, 6.0, 12.0, 14.0])
    uri, w, h = thumbnail(path, box)
    crop = crop_face(load_image(path), box)
    assert (h, w) == crop.shape[:2]
    assert np.abs(decode(uri, "jpeg")[..., ::-1].astype(int) - crop).mean() < 12  # JPEG at quality 80
    uri, reason = thumbnail(path, np.array([500.0, 500.0, 10.0, 10.0]))
    assert uri is None and "outside" in reason


# --- render() ------------------------------------------------------------------------------
def test_page_shows_a_name_with_a_bidi_override_as_it_is_spelled(tmp_path):
    """'a\\u202eevil.jpg' was shown as 'agpj.live': the override reversed the rest of the caption."""
    pass
    rng = np.random.default_rng(0)
    y = np.arange(12) % 3
    logits = rng.normal(size=(12, 3)) + np.eye(3)[y]
    m = M.evaluate(logits, np.zeros((12, 2)), y, None, THREE)
    names = ["a\u202eevil.jpg"] + [f"{i}.jpg" for i in range(1, 12)]
    page = render(m, {"logits": logits, "y_cls": y, "va": np.zeros((12, 2)), "y_reg": None},
                             [str(tmp_path / n) for n in names], names)
    assert "\u202e" not in page and "a[U+202E]evil.jpg" in page


# --- the order of the page, the galleries collapsed, thumbnails that enlarge (issue 26, item 5) -----
def page_of(demo, n=48, seed=5, **kw):
    y, logits, paths, names = synthetic(demo, n=n, seed=seed)
    va_true = np.random.default_rng(seed).uniform(-1, 1, (len(y), 2))
    m = M.evaluate(logits, va_true * 0.5, y, va_true, CLASS_NAMES)
    m.update(classes_scored=CLASS_NAMES, checkpoint="runs/x/FER_convnext.pth")
    predictions = {"logits": logits, "y_cls": y, "va": va_true * 0.5, "y_reg": va_true}
    return m, render(m, predictions, paths, names, **kw)


def test_page_leads_with_the_summary_and_collapses_the_galleries(demo):
    m, html = page_of(demo, title="Evaluation: convnext_tiny <run 3>")
    page = Page(html)
    check_self_contained(page)
    assert "<title>Evaluation: convnext_tiny &lt;run 3&gt;</title>" in html  # the title given, escaped
    at = {i: html.index(f'id="{i}"') for i in ("summary", "metrics", "confusion", "mistakes", "calibration",
                                                "per-class", "galleries", "correct", "run")}
    assert at["summary"] < at["metrics"] < at["confusion"] < at["mistakes"] < at["calibration"] < at["per-class"]
    assert at["per-class"] < at["galleries"] < at["correct"] < at["run"]
    # Every cell of the matrix links to its gallery: mistakes under "galleries", correct cells last, all collapsed.
    names, cm = m["classes_scored"], np.array(m["confusion_matrix"])
    for i, j in zip(*np.nonzero(cm)):
        where = html.index(f'id="{cell_id(names, i, j)}"')
        assert (at["correct"] < where < at["run"]) if i == j else (at["galleries"] < where < at["correct"])
        opened = html.rfind('<details class="cell">', 0, where)
        assert opened > html.rfind("</details>", 0, where)  # inside a closed <details>
    assert "<details open" not in html and " open>" not in html
    # The diagonal is marked: exactly the cells i == j carry class "diag".
    rows = html[at["confusion"]:at["mistakes"]].split("<tr>")[2:]  # after the header row
    assert len(rows) == len(names)
    for i, row in enumerate(rows):
        cells = re.findall(r"<td( class=\"diag\")?", row)[:-1]  # the last: the row total
        assert [bool(c) for c in cells] == [j == i for j in range(len(names))]
    # The summary's mistakes are the most confident ones, before any gallery.
    assert html.index("Most confident mistakes") < at["galleries"]


def test_leakage_pairs_and_lower_label_issues_are_collapsed(demo):
    """On `make demo` the page was 9,900 px tall at 800 px, 4,000 of them the leakage pairs' and the label
    issues' thumbnails, open. The finding (the count, the five most likely label issues) stays open; the
    thumbnails below it are collapsed like every gallery after the summary."""
    from fer.evaluation.report import LABEL_ISSUES_OPEN, label_issues_section, leakage_section

    faces = sorted(str(p) for p in (demo["root"] / "images").glob("*.jpg"))[:24]

    def side(k, split):
        return {"path": faces[k], "split": split, "label": "Happy", "filename": f"{k}.jpg"}
    card = {"split": "val", "across_splits": {"train-val": 9}, "bits": 8, "matches": True, "card": "c.json",
            "fingerprint": "f" * 16, "pairs_with_train": [{"a": side(k, "train"), "b": side(k + 12, "val"),
                                                           "kind": "near", "bits": 2} for k in range(9)]}
    html = leakage_section({"protocol_card": [card]})
    shown, collapsed = html.split('<details class="cell">')
    assert "9 near-duplicates between train and val" in shown and "<img" not in shown
    assert collapsed.count("<img") == 18 and "the 9 pairs with train" in collapsed
    card["pairs_with_train_total"] = 30  # more pairs than the run records for the page: said so
    assert "the first 9 of 30 pairs with train" in leakage_section({"protocol_card": [card]})
    top = [{"rank": k + 1, "given_label": "Sad", "given_label_probability": 0.1, "suggested_label": "Happy",
            "suggested_label_probability": 0.8, "filename": f"{k}.jpg", "path": faces[k]} for k in range(8)]
    html = label_issues_section({"label_issues": {"n": 8, "of": 24, "method": "cleanlab", "top": top}})
    shown, collapsed = html.split('<details class="cell">')
    assert shown.count("<img") == LABEL_ISSUES_OPEN == 5 and collapsed.count("<img") == 3
    assert "#1 given" in shown and "#6 given" in collapsed and "ranks 6-8" in collapsed
    html = label_issues_section({"label_issues": {"n": 3, "of": 24, "method": "cleanlab", "top": top[:3]}})
    assert "<details" not in html and html.count("<img") == 3


def test_thumbnails_are_large_and_enlarge_to_their_stored_image(demo, tmp_path):
    big = tmp_path / "big.png"  # a face larger than FULL: stored at FULL, shown at THUMB
    cv2.imwrite(str(big), cv2.resize(cv2.imread(str(next((demo["root"] / "images").glob("*.jpg")))), (400, 400)))
    y, logits, paths, names = synthetic(demo, n=16, seed=2)
    paths[:] = [str(big)] * len(paths)
    m = M.evaluate(logits, np.zeros((len(y), 2)), y, None, CLASS_NAMES)
    m["classes_scored"] = CLASS_NAMES
    html = render(m, {"logits": logits, "y_cls": y}, paths, names, max_images=4)
    page = Page(html)
    check_self_contained(page)
    assert 112 <= THUMB <= FULL
    figures = re.findall(r'<figure class="t" id="(img-\d+)"[^>]*>(.*?)</figure>', html)
    thumbs = [a for a in page.imgs if a["src"].startswith("data:image/jpeg")]
    assert figures and len(figures) == len(thumbs)
    for k, body in figures:
        assert f'<a class="pic" href="#{k}">' in body  # the thumbnail opens itself as the :target
        close = re.search(r'<a class="close" href="#(cap-\d+)"', body)
        assert close and f'<figcaption id="{close.group(1)}">' in body
    for a in thumbs:
        assert a["width"] == a["height"] == str(THUMB)
        assert max(decode(a["src"], "jpeg").shape[:2]) == FULL
    css = html[html.index("<style>"):html.index("</style>")]
    assert "figure.t:target img{position:fixed" in css and "repeat(auto-fill" in css


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
# Run in a copy of the page only: it writes what the browser laid out into the DOM for --dump-dom.
MEASURE = """<script>addEventListener("load", () => {const d = document.documentElement, o = {ids: {}};
o.scrollWidth = d.scrollWidth; o.clientWidth = d.clientWidth; o.height = d.scrollHeight;
for (const e of document.querySelectorAll("[id]")) o.ids[e.id] = Math.round(e.getBoundingClientRect().top + scrollY);
o.broken = [...document.images].filter(i => !i.complete || !i.naturalWidth).length; o.images = document.images.length;
o.open = [...document.querySelectorAll("details")].filter(x => x.open).map(x => x.innerHTML.match(/id="(cell-[^"]+)"/g));
const p = document.createElement("pre"); p.id = "measured"; p.textContent = JSON.stringify(o); document.body.append(p);});
</script>"""


def chromium(*args):
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                        "--virtual-time-budget=5000", *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def measured(tmp_path, html, width, fragment=""):
    copy = tmp_path / f"measured_{width}.html"
    copy.write_text(html.replace("</body>", MEASURE + "</body>"), encoding="utf-8")
    dom = chromium(f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={width},900", "--dump-dom",
                   copy.as_uri() + fragment)
    found = re.search(r'<pre id="measured">(.*?)</pre>', dom, re.S)
    assert found, dom[-500:]
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_page_in_a_headless_browser(demo, tmp_path):
    """Laid out by a real browser at 800 and 1600 px: no horizontal scroll, every image decodes, the summary
    above the galleries, a matrix link opens its collapsed gallery; the screenshot is not blank."""
    m, html = page_of(demo, n=64)
    names, cm = m["classes_scored"], np.array(m["confusion_matrix"])
    for width in (800, 1600):
        o = measured(tmp_path, html, width)
        assert o["scrollWidth"] <= o["clientWidth"] == width, o["scrollWidth"]
        assert o["images"] > 0 and o["broken"] == 0
        ids = o["ids"]
        assert ids["metrics"] <= ids["confusion"] and max(ids[k] for k in ("metrics", "confusion", "mistakes",
                                                                              "calibration")) < ids["galleries"]
        assert not o["open"]  # every gallery collapsed
        if width == 1600:
            assert ids["metrics"] == ids["confusion"]  # side by side on a wide screen
    i, j = next((i, j) for i, j in zip(*np.nonzero(cm)) if i != j)
    o = measured(tmp_path, html, 800, "#" + cell_id(names, i, j))
    assert o["open"] and any(f'id="{cell_id(names, i, j)}"' in x for x in o["open"][0])
    shot = tmp_path / "page.png"
    page = tmp_path / "page.html"
    page.write_text(html, encoding="utf-8")
    chromium(f"--user-data-dir={tmp_path / 'profile2'}", "--window-size=800,1200", f"--screenshot={shot}", page.as_uri())
    img = cv2.imread(str(shot))
    assert img is not None and img.shape[1] == 800 and img.std() > 20  # drawn, not a blank page


@pytest.mark.slow
def test_the_title_names_the_architecture_and_the_run(evaluated, trained):
    """Issue 26: the page was titled by the file name; it names the architecture and the run, and leads with
    what training counted (the best_on weights' accuracy and epoch, from the run record)."""
    title = f"resnet18: {trained.parent.name}/{trained.stem}"
    assert f"<title>{title}</title>" in evaluated["html"] and f"<h1>{title}</h1>" in evaluated["html"]
    assert "Training: best validation accuracy" in evaluated["html"]
