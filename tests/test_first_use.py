"""What a researcher meets on first use (issue 19): moved datasets, outputs that describe themselves,
untrained heads, messages that say what happened, help and names."""
import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_here, tiny_args

import fer.cli.evaluate as E
import fer.cli.train as TF
import fer.training.loop as TL
import fer.training.outputs as TO
import fer.training.schedule as TS
import train_vggface2_resnet50 as T
from fer.data.dataset import FERDataError, FERDataset, images_dir_of


# --- moving data --------------------------------------------------------------------------------
@pytest.fixture
def moved(demo, tmp_path):
    """Copies of the demo index whose recorded images folder no longer exists (the dataset moved)."""
    paths = {}
    for name in ("train", "val"):
        df = pd.read_parquet(demo[name])
        df.attrs["images_dir"] = str(tmp_path / "old_place" / "images")
        paths[name] = tmp_path / f"moved_{name}.parquet"
        df.to_parquet(paths[name])
    return paths


def test_a_moved_dataset_says_so_and_root_finds_it(demo, moved):
    with pytest.raises(FERDataError, match=r"records the images folder .*old_place.*no longer exists.*--root"):
        FERDataset(moved["val"], train=False, size=32, verbose=False)
    ds = FERDataset(moved["val"], train=False, size=32, root=demo["root"], verbose=False)  # <root>/images
    assert len(ds) == 16 and all(map(lambda p: __import__("os").path.isfile(p), ds.paths))


def test_root_finds_an_images_folder_below_the_dataset_folder(tmp_path):
    """RAF-DB keeps its images in Image/aligned/: --root is the dataset folder, found by the recorded path."""
    (tmp_path / "new" / "basic" / "Image" / "aligned").mkdir(parents=True)
    (tmp_path / "new" / "basic" / "Image" / "aligned" / "train_0001_aligned.jpg").write_bytes(b"x")
    df = pd.DataFrame({"filename": ["train_0001_aligned.jpg"]})
    df.attrs["images_dir"] = "/old/RAF-DB/basic/Image/aligned"
    basic = tmp_path / "new" / "basic"
    assert images_dir_of(df, "m.parquet", basic) == basic / "Image" / "aligned"


def test_training_and_evaluation_take_root(demo, moved, tmp_path):
    args = tiny_args(demo, tmp_path, "--train_meta", moved["train"], "--val_meta", moved["val"], "--epochs", 1)
    r = run_here("train_vggface2_resnet50.py", *args)
    assert r.returncode == 1 and "no longer exists" in r.stderr and "--root" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run_here("train_vggface2_resnet50.py", *args, "--root", tmp_path / "nowhere")
    assert r.returncode == 1 and "--root" in r.stderr and "folder not found" in r.stderr
    r = run_here("eval_resnet50.py", "--checkpoint", "x.pth", "--meta", moved["val"], "--out_dir", tmp_path / "e",
                 "--root", tmp_path / "nowhere")
    assert r.returncode == 1 and "--root" in r.stderr and "folder not found" in r.stderr
    r = run_here("FER_transform.py", "--meta", moved["val"], "--out", tmp_path / "g.png",
                 "--root", tmp_path / "nowhere")
    assert r.returncode == 1 and "--root" in r.stderr and "folder not found" in r.stderr
    assert "root" in TF.RESUMABLE_CHANGES  # a moved dataset can be resumed: --root changes where, not what


# --- Ctrl-C before the first epoch; the schedule ---------------------------------------------------
def _interrupt_first_epoch(monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(TL, "train_one_epoch", interrupted)


def test_ctrl_c_before_the_first_epoch_says_nothing_was_saved(demo, moved, tmp_path, monkeypatch, capsys):
    _interrupt_first_epoch(monkeypatch)
    argv = tiny_args(demo, tmp_path, "--train_meta", moved["train"], "--val_meta", moved["val"], "--epochs", 9,
                     "--freeze_epochs", 2, "--unfreeze_all_at", 5, "--root", demo["root"])
    with pytest.raises(SystemExit) as e:
        T.main(argv)
    out, err = capsys.readouterr()
    assert e.value.code == 130 and "epochs 1-2 layer4, 3-4 layer3+layer4, 5-9 all" in out  # --root worked
    assert "nothing was saved" in err and "--resume" not in err
    assert "start again with: python train_vggface2_resnet50.py --train_meta" in err and "--root" in err
    assert not any((tmp_path / n).exists() for n in ("m.pth", "m_last.pth", "m_history.csv", "m_curves.png"))
    # Over an earlier run (--overwrite): its files are untouched, and the message says so.
    (tmp_path / "m_last.pth").write_bytes(b"earlier run")
    with pytest.raises(SystemExit):
        T.main(argv + ["--overwrite"])
    err = capsys.readouterr().err
    assert "nothing was saved (the earlier run's files at" in err and "--overwrite" in err and "--resume" not in err
    assert (tmp_path / "m_last.pth").read_bytes() == b"earlier run"


def test_one_epoch_convention():
    """Epochs are numbered from 1 (as printed): --freeze_epochs N = epochs 1..N, --unfreeze_all_at E = from E;
    the meaning is the one older checkpoints were trained with (a resume keeps its schedule)."""
    for epochs, freeze, unfreeze in ((100, 3, None), (6, 3, 1), (10, 3, 6), (5, 0, None), (5, 3, 3)):
        text = TS.schedule_text(epochs, freeze, unfreeze)
        for epoch in range(1, epochs + 1):  # each epoch's stage in the text is the one training applies
            blocks = TS.trainable_blocks(epoch - 1, freeze, unfreeze)
            name = "all" if blocks is None else "+".join(blocks)
            ranges = {(int(a), int(b or a)): n for a, b, n in
                      (__import__("re").fullmatch(r"(\d+)(?:-(\d+))? (.+)", s).groups()
                       for s in text.removeprefix("epochs ").split(", "))}
            assert [n for (a, b), n in ranges.items() if a <= epoch <= b] == [name], (text, epoch)
    assert TS.schedule_text(5, 3, 3) == "epochs 1-2 layer4, 3-5 all"  # all wins from epoch E on
    help_text = run_here("train_vggface2_resnet50.py", "--help").stdout
    assert help_text.count("numbered from 1") >= 2


# --- curves ----------------------------------------------------------------------------------------
@pytest.fixture
def saved_figures(monkeypatch):
    """The titles, axes and tick labels of every matplotlib figure saved while the fixture is active."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    seen, real = [], Figure.savefig

    def savefig(fig, *a, **k):
        fig.canvas.draw()
        seen.append({"suptitle": fig._suptitle.get_text() if fig._suptitle else "",
                     "titles": [ax.get_title() for ax in fig.axes if ax.get_label() != "<colorbar>"],
                     "xticks": [[t.get_text() for t in ax.get_xticklabels()] for ax in fig.axes],
                     "legends": [ax.get_legend() for ax in fig.axes], "axes": fig.axes})
        return real(fig, *a, **k)
    monkeypatch.setattr(Figure, "savefig", savefig)
    return seen


def test_curves_classification_only_whole_epochs(tmp_path, saved_figures):
    from fer.trust import staged_outputs
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1 / e, "train_acc": e / 9, "val_acc": e / 10,
                "val_rmse": math.nan, "val_rmse_valence": math.nan, "val_rmse_arousal": math.nan} for e in (1, 2, 3)]
    paths = {"history": tmp_path / "h.csv", "curves": tmp_path / "c.png"}
    with staged_outputs() as stage:
        TO.write_history(history, paths, stage)
    fig = saved_figures[-1]
    assert fig["titles"] == ["loss", "accuracy"]  # no empty RMSE panel
    for ticks in fig["xticks"]:
        assert ticks and all(t.lstrip("−-").isdigit() for t in ticks), ticks  # whole epochs only
    for ax, legend in zip(fig["axes"], fig["legends"]):  # below the axes: it hides no point
        box, area = legend.get_window_extent(), ax.get_window_extent()
        assert box.y1 <= area.y0
        assert len(legend.get_texts()) == len(ax.get_lines())


# --- evaluation: one evaluation per folder, titled ---------------------------------------------------
def test_evaluation_refuses_a_used_folder_and_overwrite_replaces_the_whole_set(trained, demo, tmp_path,
                                                                                saved_figures):
    out = tmp_path / "ev"
    base = ["--checkpoint", trained, "--out_dir", out, "--num_workers", 0]
    r = run_here("eval_resnet50.py", *base, "--meta", demo["val"])
    assert r.returncode == 0, r.stderr
    assert f"checkpoint: {trained}\nevaluated: {demo['val']}\n" in r.stdout
    name = f"{trained.parent.name}/{trained.name} on {demo['val'].parent.name}/{demo['val'].name}"
    cm, va = saved_figures[:2]  # the pictures come first, then the report page's charts
    assert name in cm["titles"][0] and name in va["suptitle"]
    m = json.loads((out / "metrics_resnet50.json").read_text())
    assert m["checkpoint"] == str(trained) and m["meta"] == [str(demo["val"])]
    assert va["titles"] == [f"{k}: CCC {m[k]['ccc']:.3f}, RMSE {m[k]['rmse']:.3f}" for k in ("valence", "arousal")]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == set(E.OUTPUTS) - {E.COMPARISON}
    # A classification-only index into the same folder: refused, nothing touched ...
    df = pd.read_parquet(demo["val"]).drop(columns=["valence", "arousal"])
    df.attrs = pd.read_parquet(demo["val"]).attrs
    df.to_parquet(tmp_path / "cls.parquet")
    r = run_here("eval_resnet50.py", *base, "--meta", tmp_path / "cls.parquet")
    assert r.returncode == 1 and "holds an earlier evaluation" in r.stderr and "--overwrite" in r.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # ... and with --overwrite the whole set is this evaluation's: no stale valence/arousal picture.
    first = len(saved_figures)
    r = run_here("eval_resnet50.py", *base, "--meta", tmp_path / "cls.parquet", "--overwrite")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(E.OUTPUTS[:2] + E.OUTPUTS[3:4])
    assert "removed ValenceArousal" in r.stdout and "cls.parquet" in saved_figures[first]["titles"][0]
    # The rule covers --save_predictions too.
    (tmp_path / "p.csv").write_text("earlier")
    r = run_here("eval_resnet50.py", *base, "--meta", demo["val"], "--out_dir", tmp_path / "ev2",
                 "--save_predictions", tmp_path / "p.csv")
    assert r.returncode == 1 and "--save_predictions" in r.stderr and (tmp_path / "p.csv").read_text() == "earlier"


# --- untrained heads -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def no_va(trained, tmp_path_factory):
    """The demo checkpoint as a classification-only dataset would have written it."""
    ckpt = torch.load(trained, weights_only=True)
    assert ckpt["heads_trained"] == {"expression": True, "valence_arousal": True}  # the demo has V/A labels
    ckpt["heads_trained"] = {"expression": True, "valence_arousal": False}
    path = tmp_path_factory.mktemp("no_va") / "no_va.pth"
    torch.save(ckpt, path)
    return path


def test_old_checkpoints_count_as_both_heads_trained(trained):
    from fer.model.checkpoint import heads_trained
    assert heads_trained({}) == {"expression": True, "valence_arousal": True}
    assert heads_trained({"heads_trained": {"valence_arousal": False}})["valence_arousal"] is False


def test_predict_marks_an_untrained_head_and_speaks_per_image(trained, no_va, demo, tmp_path):
    images = sorted((demo["root"] / "images").glob("*.jpg"), key=lambda p: int(p.stem))
    r = run_here("predict.py", "--checkpoint", trained, *images[:2], "--out", tmp_path / "a.csv")
    assert r.returncode == 0, r.stderr
    assert "predicting 2 file(s) (2 image(s), 0 video(s))" in r.stdout
    a = pd.read_csv(tmp_path / "a.csv")
    lines = {ln.split(": ")[0]: ln.split(": ")[1].split() for ln in r.stdout.splitlines() if ln.endswith(")")}
    for _, row in a.iterrows():  # one line per image: its label, confidence and valence/arousal
        label, confidence, v = lines[row["filename"]][:3]
        assert label == row["expression"] and abs(float(confidence) - row["confidence"]) <= 0.0051 and v == "(V"
    text = (tmp_path / "a.csv").read_text().splitlines()[1].split(",")
    assert max(len(v.split(".")[1]) for v in text if "." in v and v.replace(".", "").lstrip("-").isdigit()) <= 4
    # An untrained valence/arousal head: empty columns and a note; many images: a summary table.
    many = tmp_path / "many"
    many.mkdir()
    for image in images[:21]:  # one more than gets a line each
        shutil.copy(image, many)
    r = run_here("predict.py", "--checkpoint", no_va, many, "--out", tmp_path / "b.csv")
    assert r.returncode == 0, r.stderr
    b = pd.read_csv(tmp_path / "b.csv")
    assert b["valence"].isna().all() and b["arousal"].isna().all() and b["expression"].notna().all()
    assert "valence/arousal head never trained" in r.stdout and "columns are left empty" in r.stdout
    assert len(b) == 21 and "21 images, 21 faces predicted:" in r.stdout
    table = {ln.split()[0]: int(ln.split()[1]) for ln in r.stdout.splitlines() if ln.startswith("  ")
             and ln.split()[0] in set(b["expression"])}
    assert table == b["expression"].value_counts().to_dict()
    # The same model in evaluation: the regression figures carry a note.
    r = run_here("eval_resnet50.py", "--checkpoint", no_va, "--meta", demo["val"], "--out_dir", tmp_path / "e",
                 "--num_workers", 0)
    assert r.returncode == 0 and "valence/arousal head never trained" in r.stdout


def test_onnx_metadata_marks_an_untrained_head(no_va):
    from fer.inference.export import onnx_metadata
    from fer.model.checkpoint import model_from_checkpoint
    info = onnx_metadata(model_from_checkpoint(no_va)[1])
    assert json.loads(info["heads_trained"]) == {"expression": True, "valence_arousal": False}
    assert "NOT TRAINED" in info["outputs"]


# --- help and names ---------------------------------------------------------------------------------
@pytest.mark.parametrize("script,shown", [("train_vggface2_resnet50.py", "(default: 100)"),
                                          ("eval_resnet50.py", "(default: 32)"),
                                          ("FER_transform.py", "(default: 224)"),
                                          ("export_onnx.py", "(default: 18)")])
def test_help_shows_defaults(script, shown):
    r = run_here(script, "--help")
    assert r.returncode == 0 and shown in " ".join(r.stdout.split())
    assert "(default: None)" not in r.stdout and "(default: False)" not in r.stdout


def test_index_summary_shows_rows_per_class_and_split():
    from fer.data import index as mp
    parts = {"train": pd.DataFrame({"expression": [0, 0, 1, 1, 1, 3]}), "val": pd.DataFrame({"expression": [0, 1, 3]})}
    rows = {ln.split()[0]: ln.split()[1:] for ln in mp.class_table(parts).splitlines()[1:]}
    assert rows == {"Neutral": ["2", "1", "3"], "Happy": ["3", "1", "4"], "Surprise": ["1", "1", "2"],
                    "total": ["6", "3", "9"]}
    assert mp.class_table(parts).splitlines()[0].split() == ["rows", "per", "class", "train", "val", "all", "splits"]
    assert np.all([c not in rows for c in ("Sad", "Contempt")])  # classes the dataset lacks are left out
