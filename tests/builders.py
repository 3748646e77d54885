"""Builders the tests share: running a script (in a fresh interpreter or in-process), the arguments of a
seconds-long training run, synthetic pictures and videos, tiny indexes and checkpoint copies, and the
checks every "one clear line, nothing lost" case makes. Plain functions; the fixtures built on them are
in conftest.py. Test files import what they use: `from builders import run_here, one_error_line`.
"""
import importlib
import io
import json
import shutil
import subprocess
import sys
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the scripts and the fer package, importable from every test file
    sys.path.insert(0, str(ROOT))

import fer.training.loop as TL  # noqa: E402
import fer.training.schedule as TS  # noqa: E402
import train_vggface2_resnet50 as T  # noqa: E402
from fer.constants import CLASS_NAMES  # noqa: E402
from fer.model.backbones import FAMILIES  # noqa: E402


# --- running the scripts --------------------------------------------------------------------------
def run_script(script, *args, cwd=None, timeout=300):
    """Run one of the repository's scripts as a user would; returns the CompletedProcess."""
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def run_here(script, *args):
    """Run a script's main() inside this process, as run_script would run it (exit code, stdout,
    stderr), without an interpreter start-up and imports: for the many quick checks of flags and paths."""
    from fer.cli import run_main

    module = importlib.import_module(Path(script).stem)
    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with redirect_stdout(out), redirect_stderr(err):
        try:
            if getattr(module, "HANDLES_ERRORS", False):  # training reports its own errors (DDP, Ctrl-C hint)
                module.main(argv)
            else:
                run_main(module.main, argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) or e.code is None else 1
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
    return subprocess.CompletedProcess([script, *argv], code or 0, out.getvalue(), err.getvalue())


def interruptible():
    """Popen(preexec_fn=...) for tests that press Ctrl-C: a child started from a background job
    (as CI may run us) inherits an ignored SIGINT, and Python then never raises KeyboardInterrupt."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_DFL)


TINY = ["--arch", "resnet18", "--img_size", 32, "--batch_size", 8, "--no_pretrained", "--num_workers", 0]


def tiny_args(demo, out_dir, *extra):
    """Training arguments for a seconds-long run on the demo fixture; later flags in extra win."""
    return [str(a) for a in ["--train_meta", demo["train"], "--val_meta", demo["val"], *TINY,
                             "--save_path", out_dir / "m.pth", *extra]]


# --- what a failed run must look like -------------------------------------------------------------
def one_error_line(r, *needles, code=None):
    """The run failed (with exit code `code` when given) with exactly one line on stderr, naming every
    needle, and no traceback; returns that line."""
    if code is None:
        assert r.returncode not in (0, None) and "Traceback" not in r.stderr, r.stderr
    else:
        assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert str(n) in lines[0], (n, lines[0])
    return lines[0]


def one_line_error(r, code, *needles):
    """one_error_line with the exit code first (the indexer's tests)."""
    one_error_line(r, *needles, code=code)


def assert_one_line_error(r, *words, code=1):
    """one_error_line with exit code 1 unless told (predict.py's tests)."""
    one_error_line(r, *words, code=code)


def snapshot(folder):
    """{relative path: bytes} of every file below folder (hidden temporary files included)."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- small disks ----------------------------------------------------------------------------------
def mount_tmpfs_at(path, options):
    """Mount a fresh tmpfs (mount -o options) on the existing folder path; skips the test where this
    user cannot mount."""
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.decode().strip()}")
    return path


def unmount(path):
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextmanager
def tmpfs(path, options):
    """A tmpfs at path (made if missing) for the duration of the block."""
    path.mkdir(parents=True, exist_ok=True)
    mount_tmpfs_at(path, options)
    try:
        yield path
    finally:
        unmount(path)


def fill_disk(folder, leave=0):
    """Write a filler file until only about `leave` bytes are free."""
    import os
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    with open(folder / "filler", "wb") as fh:
        fh.write(b"\0" * max(0, free - leave))


# --- tiny datasets and indexes --------------------------------------------------------------------
def tree(tmp_path, n=32, seed=4):
    """A demo dataset of n images (32 px) in tmp_path/ds: (root, images folder, annotations folder)."""
    from fer.data import demo as make_demo_data

    root = make_demo_data.make_dataset(tmp_path / "ds", n=n, size=32, seed=seed, progress=False)
    return root, root / "images", root / "annotations"


def make_tree(tmp_path, n=16):
    """tree() with seed 2: (root, annotations folder)."""
    root, _, ann = tree(tmp_path, n, seed=2)
    return root, ann


# --- pictures of faces (scikit-image's astronaut), and predict.py's CSV ---------------------------
# The astronaut's five points in scikit-image's 512x512 picture (eye centres, nose tip, mouth corners).
ASTRONAUT_POINTS = np.array([[205.4, 101.5], [246.9, 103.1], [225.1, 129.2], [201.2, 139.6], [245.1, 141.1]])
FACE_CROP = (120, 20, 180, 210)  # x, y, w, h of the head in that picture


def astronaut():
    from skimage import data
    return data.astronaut()


def paste(scene, centre, side, angle):
    """Paste the astronaut's head into scene (in place), side px wide, turned angle degrees
    counter-clockwise, its crop centred at centre. Returns the five points where they land."""
    x, y, w, h = FACE_CROP
    m = cv2.getRotationMatrix2D((x + w / 2, y + h / 2), angle, side / w)
    m[:, 2] += np.asarray(centre) - (x + w / 2, y + h / 2)
    head = np.zeros_like(astronaut())
    head[y:y + h, x:x + w] = astronaut()[y:y + h, x:x + w]
    mask = np.zeros(head.shape[:2], np.uint8)
    mask[y:y + h, x:x + w] = 255
    size = scene.shape[1], scene.shape[0]
    warped, inside = cv2.warpAffine(head, m, size), cv2.warpAffine(mask, m, size) > 127
    scene[inside] = warped[inside]
    return ASTRONAUT_POINTS @ m[:, :2].T + m[:, 2]


def background(h, w):
    return np.tile(np.linspace(60, 190, w).astype(np.uint8)[None, :, None], (h, 1, 3))


def predict_csv(*args):
    r = run_here("predict.py", *args)
    assert r.returncode == 0, r.stderr
    return r, pd.read_csv(args[args.index("--out") + 1])


# --- a backbone family through every script -------------------------------------------------------
# Seconds per step even at 32 px and ONNX files of hundreds of MB: in model/test_backbones.py, so that
# pytest-xdist (--dist loadfile) runs them beside model/test_net.py, not after it.
LARGE = ("vit_b_16", "swin_t", "convnext_small", "efficientnet_v2_s")
KNOBS = {"convnext_tiny": ["--ema", 0.9, "--mixup", 0.4, "--cutmix", 1.0, "--warmup_epochs", 1, "--layer_decay", 0.8]}


def main_ok(argv):
    with pytest.raises(SystemExit) as e:
        T.main([str(a) for a in argv])
    assert e.value.code == 0


def train_and_resume(arch, demo, out):
    """Two one-step epochs (the second after the stage change) in out/full, and the same run in out/cut
    resumed from a copy of the training state after the first epoch."""
    real = TL.save_epoch

    def keep_first(paths, *a, **k):
        real(paths, *a, **k)
        if not (out / "cut").exists():
            (out / "cut").mkdir()
            shutil.copy(paths["last"], out / "cut" / "m_last.pth")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TL, "save_epoch", keep_first)
        main_ok(tiny_args(demo, out / "full", *family_flags(arch)))
    main_ok(tiny_args(demo, out / "cut", *family_flags(arch), "--resume", out / "cut" / "m_last.pth"))


def family_flags(arch):
    return ["--arch", arch, "--epochs", 2, "--steps_per_epoch", 1, "--freeze_epochs", 1, "--batch_size", 4,
            "--lr", 1e-3, *KNOBS.get(arch, [])]


def check_end_to_end(arch, demo, tmp_path):
    """One test per family, so that parallel workers never train a family twice: train two steps, save,
    resume exactly, evaluate, predict, export to ONNX with the parity check."""
    import onnxruntime as ort

    train_and_resume(arch, demo, tmp_path)
    full = torch.load(tmp_path / "full" / "m_last.pth", weights_only=True)
    cut = torch.load(tmp_path / "cut" / "m_last.pth", weights_only=True)
    assert full["arch"] == arch and full["train_state"]["epoch"] == cut["train_state"]["epoch"] == 2
    stages = FAMILIES[arch].stages
    assert [h["trainable"] for h in full["train_state"]["history"]] == [TS.stage_label(stages[1]),
                                                                         TS.stage_label(stages[0] + stages[1])]
    for k, v in full["model"].items():
        assert torch.equal(v, cut["model"][k]), f"resumed weights differ: {k}"
    assert full["train_state"]["history"][-1]["val_acc"] == cut["train_state"]["history"][-1]["val_acc"]
    if "--ema" in KNOBS.get(arch, []):
        assert set(full["ema"]) == set(cut["ema"])
        for k, v in full["ema"].items():
            assert torch.equal(v, cut["ema"][k]), f"resumed EMA differs: {k}"
        assert {"ema_val_acc", "val_acc"} <= set(full["train_state"]["history"][-1])
        args = tiny_args(demo, tmp_path / "cut", *family_flags(arch), "--resume", tmp_path / "cut" / "m_last.pth")
        args[args.index("--ema") + 1] = "0.5"
        r = run_here("train_vggface2_resnet50.py", *args)
        assert r.returncode == 1 and "resuming would change the run (--ema 0.9 -> 0.5)" in r.stderr
    del full, cut

    ckpt = tmp_path / "full" / "m.pth"
    r = run_here("eval_resnet50.py", "--checkpoint", ckpt, "--meta", demo["val"], "--out_dir", tmp_path,
                 "--save_predictions", tmp_path / "eval.csv", "--num_workers", 0)
    assert r.returncode == 0, r.stderr
    ev = pd.read_csv(tmp_path / "eval.csv").set_index("filename")
    names = list(ev.index[:3])
    r = run_here("predict.py", "--checkpoint", ckpt, *[demo["root"] / "images" / n for n in names],
                 "--out", tmp_path / "pred.csv", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    pred = pd.read_csv(tmp_path / "pred.csv")
    pred.index = [f.split("/")[-1] for f in pred["filename"]]
    probs = [c for c in pred.columns if c.startswith("prob_")]
    assert probs and len(pred) == 3
    np.testing.assert_allclose(pred.loc[names, probs].to_numpy(), ev.loc[names, probs].to_numpy(), atol=1e-3)

    onnx = tmp_path / "m.onnx"
    r = run_here("export_onnx.py", "--checkpoint", ckpt, "--out", onnx)
    assert r.returncode == 0, r.stderr
    assert "max |diff|" in r.stdout and f"{arch}, 32px" in r.stdout  # parity checked by the script itself
    meta = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    assert meta["arch"] == arch
    for f in [onnx, *tmp_path.rglob("*.pth")]:  # hundreds of MB for the large families
        f.unlink()


# --- metrics --------------------------------------------------------------------------------------
NAMES = ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt"]


def reference_ece(probs, y, bins=15):
    """ECE as written in Guo et al. (2017): sum_m |B_m|/n |acc(B_m) - conf(B_m)|, bins (m/M, (m+1)/M]."""
    conf, correct = probs.max(1), probs.argmax(1) == y
    total = 0.0
    for m in range(bins):
        sel = (conf > m / bins) & (conf <= (m + 1) / bins)
        if sel.any():
            total += sel.sum() / len(y) * abs(correct[sel].mean() - conf[sel].mean())
    return total


THREE = ["Neutral", "Happy", "Sad"]


# --- tiny training runs ---------------------------------------------------------------------------
QUICK = ["--epochs", 1, "--steps_per_epoch", 1]


# --- videos ---------------------------------------------------------------------------------------
GAP = (12, 15)  # frames in which the lower face is gone


def face_video(path, n=30, size=(320, 240), gap=GAP, faces=2, fps=10, fourcc="mp4v"):
    """Two copies of the astronaut's face crossing the frame in opposite directions (the upper one
    left to right); the lower one is missing in the frames of gap. A smooth grey gradient behind
    them: the Haar cascade finds both faces in every frame."""
    from skimage import data

    width, height = size
    side = width * 90 // 320
    face = cv2.resize(data.astronaut()[20:230, 120:300], (side, side * 210 // 180), interpolation=cv2.INTER_AREA)
    face = cv2.cvtColor(face, cv2.COLOR_RGB2BGR)
    background = np.tile(np.linspace(40, 200, width).astype(np.uint8)[None, :, None], (height, 1, 3))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    for i in range(n):
        frame = background.copy()
        x = int(i * (width - side) / max(n - 1, 1))
        if faces >= 1:
            frame[height // 12:height // 12 + face.shape[0], x:x + side] = face
        if faces >= 2 and not gap[0] <= i < gap[1]:
            y = height - face.shape[0] - height // 24
            frame[y:y + face.shape[0], width - side - x:width - x] = face
        writer.write(frame)
    writer.release()
    return path


# --- class sets: a 7-class index, an evaluation ---------------------------------------------------
SEVEN = [c for c in CLASS_NAMES if c != "Contempt"]  # RAF-DB, FER2013


def evaluate(ckpt, meta, out_dir, *extra):
    r = run_here("eval_resnet50.py", "--checkpoint", ckpt, "--meta", meta, "--out_dir", out_dir,
                 "--num_workers", 0, "--save_predictions", out_dir / "pred.csv", *extra)
    assert r.returncode == 0, r.stderr
    return json.loads(next(out_dir.glob("metrics_*.json")).read_text()), pd.read_csv(out_dir / "pred.csv"), r.stdout


# --- indexes, runs and checkpoints for the hostile cases ------------------------------------------
TRAIN = "train_vggface2_resnet50.py"


def with_index(src, dst, change):
    """A copy of the index src with change(df) applied (the images folder stays recorded)."""
    df = pd.read_parquet(src)
    attrs = dict(df.attrs)
    df = change(df)
    df.attrs = attrs
    df.to_parquet(dst, index=False)
    return dst


def unfinished_copy(trained, folder, best_acc=2.0):
    """A copy of the trained run (best and last) whose last state is one epoch short of --epochs 2 and
    whose best epoch no later epoch can beat (best_acc 2.0)."""
    folder.mkdir()
    shutil.copy(trained, folder / trained.name)
    last = folder / trained.name.replace(".pth", "_last.pth")
    ckpt = torch.load(trained.with_name(last.name), weights_only=False)
    ckpt["args"]["epochs"] = 2
    ckpt["train_state"]["best_acc"] = best_acc
    torch.save(ckpt, last)
    return last


# --- the indexer, as the hostile cases run it -----------------------------------------------------
def index_script(*args, quiet=True):
    return run_script("metadata_parallel.py", *args, *(["--quiet"] if quiet else []), timeout=120)


def write_fer2013(path, n, seed, usages=("Training", "PublicTest", "PrivateTest")):
    rng = np.random.default_rng(seed)
    pd.DataFrame({"emotion": np.arange(n) % 7,
                  "pixels": [" ".join(map(str, rng.integers(0, 256, 2304))) for _ in range(n)],
                  "Usage": [usages[i % len(usages)] for i in range(n)]}).to_csv(path, index=False)


def index_here(root, out, *flags):
    return run_here("metadata_parallel.py", "--root", root, "--out_dir", out, "--quiet", "--workers", 1, *flags)
