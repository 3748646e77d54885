"""A checkpoint as an ONNX file (export_onnx.py): the graph with a dynamic batch axis, the metadata a
user of the file needs, and the parity check against PyTorch in onnxruntime before the file is kept.
onnx and onnxruntime are imported where used: the rest of the kit runs without them."""
import json
from pathlib import Path

import numpy as np
import torch

from fer.constants import FACE_MARGIN, POINTS
from fer.model.checkpoint import heads_trained, model_from_checkpoint, temperature_mismatch, temperature_of
from fer.model.forward import check_outputs_finite
from fer.trust import FERError, staged_outputs


class _Named(torch.nn.Module):
    """Gives the exported graph its input name `image`, and adds the output `probabilities`:
    softmax(logits / temperature), calibrated when the checkpoint records a temperature."""

    def __init__(self, model, temperature=1.0):
        super().__init__()
        self.model = model
        self.temperature = float(temperature)

    def forward(self, image):
        logits, va = self.model(image)
        return logits, va, torch.softmax(logits / self.temperature, dim=1)


def export_temperature(meta):
    """The temperature the exported `probabilities` output divides by, or None (raw): the checkpoint's,
    unless it was fitted on test-time-augmented outputs, which the graph does not compute."""
    t = temperature_of(meta)
    return None if t is None or temperature_mismatch(meta, tta=False) else t


def onnx_metadata(meta):
    """The model's metadata_props: everything a user of the .onnx file needs besides the graph."""
    heads = heads_trained(meta)
    va_note = "clip to [-1, 1]" if heads["valence_arousal"] else \
        "NOT TRAINED (no valence/arousal labels in the training data): ignore it"
    t = export_temperature(meta)
    probs = (f"probabilities: calibrated, softmax(logits / {t:.6g}) (temperature fitted on "
             f"{', '.join(str(r.get('path')) for r in meta['calibration'].get('fitted_on') or []) or 'a recorded split'})"
             if t else "probabilities: raw softmax(logits) (the checkpoint records no temperature fitted without --tta)")
    return {"class_names": json.dumps(meta["class_names"]), "img_size": str(int(meta["img_size"])),
            "arch": meta["arch"], "input_format": "RGB, ImageNet-normalised: (pixel / 255 - mean) / std",
            "normalization": json.dumps(meta.get("normalization", {})), "heads_trained": json.dumps(heads),
            "temperature": repr(float(t or 1.0)), "probabilities": "calibrated" if t else "raw",
            "calibration": json.dumps(meta.get("calibration"), default=str),
            "outputs": f"logits: raw scores; {probs}; valence_arousal: {va_note}",
            **crop_metadata(meta.get("crop_template"))}


def crop_metadata(template):
    """How predict.py crops a detected face for this model, so that a user of the .onnx file can do the same:
    the crop template (five landmarks as fractions of the crop side, which predict.py warps detected faces
    onto), or the box rule when the checkpoint has none."""
    if template is None:
        return {"crop_template": "none",
                "crop": f"no template (no landmarks in the training index): the detector's box widened by "
                        f"{FACE_MARGIN:g} of its larger side on every edge, resized to img_size"}
    points = [[round(float(v), 6) for v in p] for p in np.asarray(template, dtype=np.float64).reshape(-1, 2)]
    return {"crop_template": json.dumps(dict(zip(POINTS, points))),
            "crop": "similarity-warp the five detected landmarks (" + ", ".join(POINTS) + ") onto crop_template "
                    "(x, y as fractions of the crop side; left/right as seen in the picture), output img_size "
                    "square: as predict.py --detect_faces --align template"}


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
    program = torch.onnx.export(_Named(model, export_temperature(meta) or 1.0).eval(), (example,), dynamo=True,
                                opset_version=opset, input_names=["image"],
                                output_names=["logits", "valence_arousal", "probabilities"],
                                dynamic_shapes={"image": {0: batch}}, verbose=False)
    proto = program.model_proto
    del proto.metadata_props[:]
    for k, v in onnx_metadata(meta).items():
        proto.metadata_props.add(key=k, value=v)
    onnx.save_model(proto, str(out), save_as_external_data=False)
    onnx.checker.check_model(str(out))


def parity(model, out, size, batch=3, temperature=1.0):
    """Largest |onnxruntime - PyTorch| over the three outputs, on random input of a batch size not exported with."""
    import onnxruntime as ort

    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = [t.numpy() for t in _Named(model, temperature)(x)]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(["logits", "valence_arousal", "probabilities"], {"image": x.numpy()})
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
        diff = parity(model, tmp, int(meta["img_size"]), temperature=export_temperature(meta) or 1.0)
        if not diff <= args.tolerance:
            raise FERError(f"onnxruntime differs from PyTorch by {diff:.2e} > --tolerance {args.tolerance:g}; "
                           f"{args.out} not written")
        size_mib = Path(tmp).stat().st_size / 2**20
    print(f"wrote {args.out} ({size_mib:.1f} MiB, {meta['arch']}, {meta['img_size']}px, "
          f"{len(meta['class_names'])} classes, dynamic batch); onnxruntime vs PyTorch: max |diff| {diff:.2e}")
    t = export_temperature(meta)
    print(f"output probabilities: {'calibrated, softmax(logits / %.4f)' % t if t else 'raw softmax (the checkpoint records no temperature fitted without --tta)'}")
    if not meta["heads_trained"]["valence_arousal"]:
        print("note: the valence_arousal output comes from a head that never trained (no valence/arousal labels); "
              "the metadata says so (heads_trained)")
