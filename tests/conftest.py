"""Fixtures every test folder shares (this file applies to tests/ and all its sub-folders).

The plain builders the fixtures use are in builders.py, which the test files import (`from builders
import ...`): tests/ is put on sys.path here, so that works from tests/data/, tests/model/ and the other
sub-folders. Test file basenames are unique across the folders (pytest's default import mode needs it;
pytest says so at collection if two collide).

Session fixtures (`demo`, `trained`, `runs`, ...) are built once per process: once per pytest-xdist worker.

The `slow` marker (`make test` leaves these out, `make test-all` runs everything) is set in the test files,
on every test that takes more than about 2 s on 2 idle cores: a real training run (or a fixture that trains,
as `runs`, `seven_model` and training/test_start.py's `last_state` do), a video through predict.py, an ONNX
export, a script's whole run in a fresh interpreter (run_script, subprocess), a large backbone. A script
started in a fresh interpreter only to see its flags refused before the heavy imports takes well under a
second, and stays in the fast set. Every module of fer/ keeps fast tests of its own.
"""
import sys
from contextlib import ExitStack
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # builders.py, from every sub-folder

from builders import QUICK, ROOT, background, mount_tmpfs_at, paste, run_here, run_script, tiny_args, tmpfs, unmount  # noqa: E402

sys.path.insert(0, str(ROOT))  # the scripts (run_here imports them) and the fer package

from fer.constants import CLASS_NAMES  # noqa: E402
from fer.data import demo as demo_data  # noqa: E402  (not `demo`: the fixture below has that name)
from fer.data import index  # noqa: E402


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """A tiny demo dataset (64 images, 32 px) and its index: {'root', 'all', 'train', 'val'}."""
    root = tmp_path_factory.mktemp("demo")
    demo_data.make_dataset(root / "data", n=64, size=32, seed=1, progress=False)
    df, _ = index.build_index(root / "data" / "images", root / "data" / "annotations", progress=False)
    train, val = index.stratified_split(df, 0.25, 42)
    paths = {"root": root / "data"}
    for name, part in (("all", df), ("train", train), ("val", val)):
        paths[name] = root / f"metadata_{name}.parquet"
        index.write_parquet(part, paths[name])
    return paths


@pytest.fixture(scope="session")
def trained(demo, tmp_path_factory):
    """A checkpoint from a short real training run on the tiny demo set."""
    out = tmp_path_factory.mktemp("trained")
    r = run_script("train_vggface2_resnet50.py", *tiny_args(demo, out, "--epochs", 1,
                                                            "--save_path", out / "FER_resnet18.pth"))
    assert r.returncode == 0, r.stderr
    return out / "FER_resnet18.pth"


@pytest.fixture
def mount(tmp_path):
    """mount(size, ro=False, fill=None) -> a fresh tmpfs folder (a small disk, or a read-only one, filled
    by fill(folder) first); skipped where this user cannot mount."""
    with ExitStack() as stack:
        made = []

        def make(size="1m", ro=False, fill=None):
            where = tmp_path / f"fs{len(made)}"
            where.mkdir()
            mount_tmpfs_at(where, f"size={size}")
            stack.callback(unmount, where)
            made.append(where)
            if fill:
                fill(where)
            if ro:
                import subprocess
                subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
            return where
        yield make


@pytest.fixture
def mount_tmpfs(tmp_path):
    """mount_tmpfs(name, options) -> a fresh tmpfs folder tmp_path/name (skips the test where mount is
    not allowed)."""
    with ExitStack() as stack:
        yield lambda name, options: stack.enter_context(tmpfs(tmp_path / name, options))


# --- fixtures several test files use -------------------------------------------------------------
@pytest.fixture(scope="module")
def group(tmp_path_factory):
    """A 640x400 group picture: four heads of 95-130 px, one turned 30 degrees; their true points."""
    scene = background(400, 640)
    truth = [paste(scene, c, s, a) for c, s, a in (((110, 120), 100, 0), ((330, 110), 95, 30),
                                                   ((540, 130), 110, -10), ((300, 300), 130, 0))]
    path = tmp_path_factory.mktemp("group") / "group.png"
    cv2.imwrite(str(path), cv2.cvtColor(scene, cv2.COLOR_RGB2BGR))
    return {"path": path, "rgb": scene, "truth": truth, "angles": [0, 30, -10, 0]}


@pytest.fixture(scope="module")
def faces_folder(tmp_path_factory):
    """A 'folders' dataset of astronaut pictures (heads of 90-140 px, turned -20..25 degrees) and one
    picture without a face: what --detect_landmarks and --recrop detect work on."""
    root = tmp_path_factory.mktemp("faces_folder")
    truth = {}
    for k, (cls, side, angle) in enumerate([("happy", 120, 0), ("happy", 100, 25), ("sad", 140, -20),
                                            ("sad", 90, 10), ("neutral", 110, 5), ("neutral", 130, -5)]):
        scene = background(240, 260)
        truth[f"{cls}/{k}.png"] = paste(scene, (130, 125), side, angle)
        (root / cls).mkdir(exist_ok=True)
        cv2.imwrite(str(root / cls / f"{k}.png"), cv2.cvtColor(scene, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(root / "neutral" / "wall.png"), background(240, 260))
    return {"root": root, "truth": truth}


@pytest.fixture(scope="session")
def runs(demo, tmp_path_factory):
    """Five tiny training runs (one step each): two that differ in --lr (lr_a with --tensorboard), three
    that differ only in --seed."""
    root = tmp_path_factory.mktemp("runs")
    flags = {"lr_a": ["--lr", 1e-3, "--tensorboard"], "lr_b": ["--lr", 1e-2],
             "seed_1": ["--seed", 1], "seed_2": ["--seed", 2], "seed_3": ["--seed", 3]}
    for name, extra in flags.items():
        r = run_here("train_vggface2_resnet50.py", *tiny_args(demo, root / name, *QUICK, *extra))
        assert r.returncode == 0, r.stderr
    return root


@pytest.fixture(scope="session")
def seven(demo, tmp_path_factory):
    """The demo split without Contempt and without valence/arousal: shaped like a RAF-DB index."""
    out = tmp_path_factory.mktemp("seven")
    paths = {}
    for split in ("train", "val"):
        df = pd.read_parquet(demo[split])
        df = df[df["expression"] != CLASS_NAMES.index("Contempt")].reset_index(drop=True)
        df["valence"] = df["arousal"] = np.nan
        paths[split] = out / f"metadata_{split}.parquet"
        df.to_parquet(paths[split])
    return paths


@pytest.fixture(scope="session")
def seven_model(seven, demo, tmp_path_factory):
    """A classification-only 7-class checkpoint trained one epoch on `seven`."""
    out = tmp_path_factory.mktemp("seven_model")
    r = run_here("train_vggface2_resnet50.py", *tiny_args(demo, out, "--epochs", 1, "--train_meta", seven["train"],
                                                          "--val_meta", seven["val"]))
    assert r.returncode == 0, r.stderr
    assert "rmse n/a" in r.stdout  # no valence/arousal anywhere: classification only
    assert torch.load(out / "m.pth", weights_only=True)["heads_trained"] == {"expression": True,
                                                                            "valence_arousal": False}
    return out / "m.pth"


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


@pytest.fixture(scope="module")
def no_va(trained, tmp_path_factory):
    """The demo checkpoint as a classification-only dataset would have written it."""
    ckpt = torch.load(trained, weights_only=True)
    assert ckpt["heads_trained"] == {"expression": True, "valence_arousal": True}  # the demo has V/A labels
    ckpt["heads_trained"] = {"expression": True, "valence_arousal": False}
    path = tmp_path_factory.mktemp("no_va") / "no_va.pth"
    torch.save(ckpt, path)
    return path
