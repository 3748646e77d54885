import importlib
import io
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fer.data import demo as demo_data  # noqa: E402  (not `demo`: the fixture below has that name)
from fer.data import index  # noqa: E402


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


SLOW_CALLS = ("run_script(", "subprocess.", "Popen(")  # a fresh interpreter: seconds of imports each


def pytest_collection_modifyitems(config, items):
    """`slow` marks the end-to-end tests: those that start a script in a fresh interpreter (run_script,
    subprocess) or carry the marker themselves. `make test` leaves them out; `make test-all` runs all."""
    import inspect

    for item in items:
        fn = getattr(item, "function", None)
        source = inspect.getsource(fn) if fn is not None else ""
        if any(call in source for call in SLOW_CALLS):
            item.add_marker(pytest.mark.slow)
