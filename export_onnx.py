"""Export a checkpoint to ONNX and check it against PyTorch in onnxruntime.

    python export_onnx.py --checkpoint FER_resnet50.pth --out FER_resnet50.onnx

Input `image`: N x 3 x S x S float32, RGB, ImageNet-normalised (any N). Outputs `logits` (N x classes) and
`valence_arousal` (N x 2, unclipped). Class names, image size, normalisation, input format and
which heads were trained (`heads_trained`: a model trained without valence/arousal labels still has
the output, but it means nothing) are in the model's metadata. After export the model runs in
onnxruntime on random input; the script fails if the largest difference from PyTorch exceeds --tolerance.
"""
import importlib.util
import json
from pathlib import Path

from fer.cli import ArgumentParser
from fer.trust import FERError
from fer.trust import check_not_inputs
from fer.trust import check_output
from fer.cli import float_in
from fer.cli import int_at_least
from fer.cli import run_main
from fer.trust import staged_outputs

MIN_OPSET = 18  # the oldest opset torch.onnx's dynamo exporter writes
NEEDED = ("onnx", "onnxscript", "onnxruntime")  # the file, torch.onnx's exporter, the parity check


def not_installed():
    """One line naming the export's packages that are not installed (None when all are): said before the
    export, not as a traceback after it."""
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]  # without importing (seconds)
    return f"{', '.join(missing)} not installed: the export needs {', '.join(NEEDED)} " \
           f"(pip install -r requirements.txt)" if missing else None


def get_args(argv=None):
    p = ArgumentParser(description=__doc__)
    missing = not_installed()
    if missing:
        p.exit(1, f"error: {missing}\n")
    import onnx

    newest = onnx.defs.onnx_opset_version()
    p.add_argument("--checkpoint", default="FER_resnet50.pth", help="checkpoint written by training")
    p.add_argument("--out", default="FER_resnet50.onnx",
                   help="ONNX file to write (an existing file is replaced only after the new one passed the check)")
    p.add_argument("--opset", type=int_at_least(MIN_OPSET, newest), default=18,
                   help=f"ONNX opset version ({MIN_OPSET}-{newest})")
    p.add_argument("--tolerance", type=float_in(0, 1, lo_open=True), default=1e-3,
                   help="largest allowed |onnxruntime - PyTorch| (0-1)")
    return p.parse_args(argv)


if __name__ == "__main__":
    get_args()  # flags first: a bad flag fails now, not after the imports below (seconds)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fer.model.forward import check_outputs_finite
from fer.model.checkpoint import heads_trained
from fer.model.checkpoint import model_from_checkpoint


class _Named(torch.nn.Module):
    """Gives the exported graph its input name `image`."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image):
        return self.model(image)


def onnx_metadata(meta):
    """The model's metadata_props: everything a user of the .onnx file needs besides the graph."""
    heads = heads_trained(meta)
    va_note = "clip to [-1, 1]" if heads["valence_arousal"] else \
        "NOT TRAINED (no valence/arousal labels in the training data): ignore it"
    return {"class_names": json.dumps(meta["class_names"]), "img_size": str(int(meta["img_size"])),
            "arch": meta["arch"], "input_format": "RGB, ImageNet-normalised: (pixel / 255 - mean) / std",
            "normalization": json.dumps(meta.get("normalization", {})), "heads_trained": json.dumps(heads),
            "outputs": f"logits: softmax gives class probabilities; valence_arousal: {va_note}"}


def export(model, meta, out, opset=18):
    import onnx

    size = int(meta["img_size"])
    example = torch.randn(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(_Named(model).eval(), (example,), dynamo=True, opset_version=opset,
                                input_names=["image"], output_names=["logits", "valence_arousal"],
                                dynamic_shapes={"image": {0: batch}}, verbose=False)
    proto = program.model_proto
    del proto.metadata_props[:]
    for k, v in onnx_metadata(meta).items():
        proto.metadata_props.add(key=k, value=v)
    onnx.save_model(proto, str(out), save_as_external_data=False)
    onnx.checker.check_model(str(out))


def parity(model, out, size, batch=3):
    """Largest |onnxruntime - PyTorch| over both outputs, on random input of a batch size not exported with."""
    import onnxruntime as ort

    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = [t.numpy() for t in model(x)]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(["logits", "valence_arousal"], {"image": x.numpy()})
    if [g.shape for g in got] != [r.shape for r in ref]:
        return float("inf")  # a batch axis that did not stay dynamic
    return max(float(np.abs(a - b).max()) for a, b in zip(got, ref))


def main(argv=None):
    args = get_args(argv)
    check_output(args.out, "--out")
    check_not_inputs([("--out", args.out)], [("--checkpoint", args.checkpoint)])
    model, meta = model_from_checkpoint(args.checkpoint, "cpu")
    with torch.inference_mode():  # a model that outputs NaN is refused before the (slow) export
        check_outputs_finite(model, *model(torch.randn(2, 3, meta["img_size"], meta["img_size"])))
    with staged_outputs() as stage:  # the old file stays unless the new one passes the parity check
        tmp = stage(args.out)
        export(model, meta, tmp, args.opset)
        diff = parity(model, tmp, int(meta["img_size"]))
        if not diff <= args.tolerance:
            raise FERError(f"onnxruntime differs from PyTorch by {diff:.2e} > --tolerance {args.tolerance:g}; "
                           f"{args.out} not written")
        size_mib = Path(tmp).stat().st_size / 2**20
    print(f"wrote {args.out} ({size_mib:.1f} MiB, {meta['arch']}, {meta['img_size']}px, "
          f"{len(meta['class_names'])} classes, dynamic batch); onnxruntime vs PyTorch: max |diff| {diff:.2e}")
    if not meta["heads_trained"]["valence_arousal"]:
        print("note: the valence_arousal output comes from a head that never trained (no valence/arousal labels); "
              "the metadata says so (heads_trained)")


if __name__ == "__main__":
    run_main(main)
