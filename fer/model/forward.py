"""Batched forward passes: autocast on CUDA, test-time mirroring, and prediction over a loader.
"""
import math
from contextlib import nullcontext

import torch

from fer.model.checkpoint import CheckpointError
from fer.model.net import unwrap
from fer.trust import progress as progress_of


def check_outputs_finite(model, *outputs):
    """Finite weights can still give NaN or inf (invalid statistics, overflow): a prediction that is
    not a number is an error naming the checkpoint, never a row with empty values."""
    if not all(bool(torch.isfinite(torch.as_tensor(o)).all()) for o in outputs):
        raise CheckpointError(f"{getattr(unwrap(model), 'source', 'the model')}: the model's outputs are not finite "
                              f"(NaN or inf) for a finite input: its weights or BatchNorm statistics are invalid")


# --- prediction ---------------------------------------------------------------------------------
def autocast(device, amp_dtype):
    """Mixed precision on CUDA (float16 or bfloat16); plain float32 elsewhere."""
    device = torch.device(device)
    if device.type != "cuda" or amp_dtype is None:
        return nullcontext()
    return torch.autocast("cuda", dtype=amp_dtype)


def infer(model, images, device, amp_dtype=None, tta=False):
    """Logits and valence/arousal (float32) for a batch of normalised images. tta ("flip", or True): the
    probabilities of the image and its horizontal mirror averaged, returned as their log (logits whose
    softmax is that average), and valence/arousal averaged; an image and its mirror then get the same."""
    device = torch.device(device)
    x = images.to(device, non_blocking=True)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(device, amp_dtype):
        logits, va = model(x)
        if tta:  # average with the mirrored face: probabilities, not logits
            logits_f, va_f = model(x.flip(3))
            logits = torch.logsumexp(torch.stack([logits.float().log_softmax(1), logits_f.float().log_softmax(1)]),
                                     0) - math.log(2)
            va = (va + va_f) / 2
    if hasattr(unwrap(model), "source"):  # a loaded checkpoint (training checks its own validation outputs)
        check_outputs_finite(model, logits, va)
    return logits.float(), va.float()


def predict_batches(model, loader, device, amp_dtype=None, tta=False, progress=False, desc="predict"):
    """Run the model over a loader of FERDataset batches.

    Returns numpy arrays: logits (N, C), va (N, 2) predicted valence/arousal (unclipped), and the
    batch's other entries (y_cls, y_reg targets, index: dataset row of each sample).
    """
    model.eval()
    out = {}
    for batch in progress_of(loader, desc=desc, unit="batch", disable=not progress):
        logits, va = infer(model, batch["image"], device, amp_dtype, tta)
        for k, v in (("logits", logits.cpu()), ("va", va.cpu()), *((k, batch[k]) for k in batch if k != "image")):
            out.setdefault(k, []).append(v)
    return {k: torch.cat(v).numpy() for k, v in out.items()}
