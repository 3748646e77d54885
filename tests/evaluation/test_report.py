"""fer/evaluation/report.py: the HTML evaluation report. The page is parsed with the standard library's
html.parser; the browser is kept out of the tests (README: how to look at the page in headless chromium).
"""
import base64
import json
import shutil
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
from fer.evaluation.report import THUMB, cell_id, interval, render, thumbnail

REPORT = "report_resnet50.html"


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
            "metrics": json.loads((out / "metrics_resnet50.json").read_text())}


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
        assert max(img.shape[:2]) <= THUMB
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
    assert json.loads((tmp_path / "metrics_resnet50.json").read_text()) == evaluated["metrics"]
    for png in ("ConfusionMatrix_resnet50.png", "ValenceArousal_resnet50.png"):
        assert (tmp_path / png).read_bytes() == (evaluated["dir"] / png).read_bytes()


@pytest.mark.parametrize("flags, message", [(["--report_images", "-1"], "--report_images"),
                                            (["--report", "maybe"], "--report"),
                                            ([], "report_resnet50.html: is a folder")])
def test_report_flags_checked(tmp_path, flags, message):
    (tmp_path / REPORT).mkdir()  # checked before the model is loaded
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
