"""Flags of export_onnx.py. The export's packages are looked for (not imported: onnx alone takes a
second) before anything else, so that a missing one is said first, not as a traceback after the export."""
import importlib.util
from pathlib import Path

from fer.cli import ArgumentParser, add_quiet_argument, default_checkpoint, float_in, int_at_least
from fer.trust import check_not_inputs, check_output, check_outputs

MIN_OPSET = 18  # the oldest opset torch.onnx's dynamo exporter writes
NEEDED = ("onnx", "onnxscript", "onnxruntime")  # the file, torch.onnx's exporter, the parity check


def not_installed():
    """One line naming the export's packages that are not installed (None when all are): said before the
    export, not as a traceback after it."""
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]  # without importing (seconds)
    return f"{', '.join(missing)} not installed: the export needs {', '.join(NEEDED)} " \
           f"(pip install -r requirements.txt)" if missing else None


def get_args(argv=None, description=None):
    """The flags, checked (the newest opset the installed onnx writes is checked by the export, which
    imports onnx), then --out."""
    p = ArgumentParser(description=description)
    missing = not_installed()
    if missing:
        p.exit(1, f"error: {missing}\n")
    p.add_argument("--checkpoint", default=None,
                   help="checkpoint written by training (default: the one FER_<arch>.pth in this folder)")
    p.add_argument("--out", default=None,
                   help="ONNX file to write (an existing file is replaced only after the new one passed the check; "
                        "default: the checkpoint's name with .onnx, e.g. FER_resnet18.onnx beside FER_resnet18.pth)")
    p.add_argument("--opset", type=int_at_least(MIN_OPSET), default=18,
                   help=f"ONNX opset version ({MIN_OPSET} up to the newest the installed onnx writes)")
    p.add_argument("--tolerance", type=float_in(0, 1, lo_open=True), default=1e-3,
                   help="largest allowed |onnxruntime - PyTorch| (0-1)")
    add_quiet_argument(p)
    args = p.parse_args(argv)
    args.checkpoint = args.checkpoint or default_checkpoint(p)
    args.out = args.out or str(Path(args.checkpoint).with_suffix(".onnx"))
    check_output(args.out, "--out")
    check_not_inputs([("--out", args.out)], [("--checkpoint", args.checkpoint)])
    if not str(args.out).lower().endswith(".onnx"):  # trust rule 2: x.json was a traceback after the export
        p.error(f"--out {args.out}: the model is written as .onnx")
    check_outputs([("--out", args.out)], [("--checkpoint", args.checkpoint)], kind="ONNX model")
    return args
