"""A checkpoint as an ONNX file (export_onnx.py): the graph with a dynamic batch axis, the metadata a
user of the file needs, and the parity check against PyTorch in onnxruntime before the file is kept.
onnx and onnxruntime are imported where used: the rest of the kit runs without them."""
import json
from pathlib import Path

import numpy as np
import torch

from fer.model.checkpoint import heads_trained, model_from_checkpoint
from fer.model.forward import check_outputs_finite
from fer.trust import FERError, staged_outputs


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


def check_opset(opset):
    """--opset no newer than the installed onnx writes (the flag's lower bound is checked with the flags)."""
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise FERError(f"--opset {opset}: the installed onnx {onnx.__version__} writes opsets up to {newest}")


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


def export_checkpoint(args):
    """export_onnx.py, once fer.cli.export.get_args has checked the flags and --out: the checkpoint
    exported to args.out, kept only if onnxruntime agrees with PyTorch within args.tolerance."""
    check_opset(args.opset)
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
