"""fer/model/forward.py: test-time mirroring (probabilities averaged; an image and its mirror alike), and a model whose outputs are not finite predicts nothing."""
import numpy as np
import pytest
import torch
from builders import one_error_line, run_here

from fer.model.checkpoint import CheckpointError
from fer.model.forward import infer, predict_batches
from fer.model.net import FERNet


@pytest.mark.slow
def test_tta_changes_nothing_for_symmetric_input():
    torch.manual_seed(0)
    model = FERNet("resnet18").eval()
    x = torch.randn(4, 3, 32, 32)
    x = (x + x.flip(3)) / 2
    batch = {"image": x, "y_cls": torch.zeros(4, dtype=torch.long), "y_reg": torch.zeros(4, 2),
             "index": torch.arange(4)}
    plain = predict_batches(model, [batch], "cpu")
    tta = predict_batches(model, [batch], "cpu", tta=True)
    # TTA returns the log of the averaged probabilities: the same probabilities as the plain pass
    np.testing.assert_allclose(torch.softmax(torch.from_numpy(plain["logits"]), 1).numpy(),
                               np.exp(tta["logits"]), atol=1e-5)
    np.testing.assert_allclose(plain["va"], tta["va"], atol=1e-5)
    y = torch.randn(4, 3, 32, 32)  # and it does change an asymmetric one
    batch["image"] = y
    assert not np.allclose(predict_batches(model, [batch], "cpu")["logits"],
                           predict_batches(model, [batch], "cpu", tta=True)["logits"])


def test_tta_gives_an_image_and_its_mirror_the_same_probabilities():
    """--tta flip: the averaged probabilities of x and of mirror(x) are the same (same pair, other order), while
    without TTA an asymmetric model tells them apart; the probabilities are the mean of the two passes'."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(5))
    model(torch.zeros(1, 3, 8, 8))

    class Two(torch.nn.Module):
        def forward(self, x):
            logits = model(x)
            return logits, logits[:, :2]

    x = torch.randn(3, 3, 8, 8)
    both = torch.cat([x, x.flip(3)])
    plain = infer(Two(), both, "cpu")[0].softmax(1)
    tta, va = infer(Two(), both, "cpu", tta="flip")
    assert not torch.allclose(plain[:3], plain[3:], atol=1e-3)
    torch.testing.assert_close(tta.softmax(1)[:3], tta.softmax(1)[3:], rtol=0, atol=1e-6)
    torch.testing.assert_close(va[:3], va[3:], rtol=0, atol=1e-6)
    torch.testing.assert_close(tta.softmax(1)[:3], (plain[:3] + plain[3:]) / 2)


# --- silent wrong results -----------------------------------------------------------------------
def nonfinite_checkpoints(trained, tmp_path):
    ckpt = torch.load(trained, weights_only=True)
    ckpt["model"]["backbone.bn1.running_var"][0] = -1.0  # finite, but sqrt of a negative variance
    torch.save(ckpt, tmp_path / "negvar.pth")
    ckpt = torch.load(trained, weights_only=True)
    ckpt["model"]["fc_cls.weight"].fill_(3e38)  # finite weights whose outputs overflow
    torch.save(ckpt, tmp_path / "overflow.pth")
    return tmp_path / "negvar.pth", tmp_path / "overflow.pth"


@pytest.mark.slow
def test_a_model_that_outputs_nan_predicts_nothing(trained, demo, tmp_path):
    negvar, overflow = nonfinite_checkpoints(trained, tmp_path)
    image = demo["root"] / "images" / "0.jpg"
    runs = {"predict.py": [image, "--out", tmp_path / "p.csv"],
            "eval_resnet50.py": ["--meta", demo["val"], "--out_dir", tmp_path, "--num_workers", 0],
            "export_onnx.py": ["--out", tmp_path / "m.onnx"]}
    for script, args in runs.items():
        one_error_line(run_here(script, "--checkpoint", negvar, *args), "negvar.pth", "BatchNorm variance is negative",
                       "backbone.bn1.running_var")
        one_error_line(run_here(script, "--checkpoint", overflow, *args), "overflow.pth", "outputs are not finite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["negvar.pth", "overflow.pth"]


# --- infer and predict_batches on a toy model -----------------------------------------------------
class HalfMeans(torch.nn.Module):
    """Logits: the mean of the image's left and right halves; valence/arousal: the mean of the whole."""

    def forward(self, x):
        half = x.shape[3] // 2
        logits = torch.stack([x[..., :half].mean((1, 2, 3)), x[..., half:].mean((1, 2, 3))], 1)
        return logits, torch.stack([x.mean((1, 2, 3))] * 2, 1)


def test_infer_mirrors_batches_and_names_a_model_whose_outputs_are_not_finite():
    """infer's test-time mirroring averages with the flipped image, predict_batches keeps each batch's
    other entries, and a loaded model whose output is NaN is an error naming its checkpoint."""
    model = HalfMeans()
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    logits, va = infer(model, x, "cpu")
    mirrored, va_mirrored = infer(model, x, "cpu", tta=True)
    # the halves swap: the probabilities of the image and its mirror averaged
    torch.testing.assert_close(mirrored.softmax(1), (logits.softmax(1) + logits.flip(1).softmax(1)) / 2)
    torch.testing.assert_close(va_mirrored, va)
    out = predict_batches(model, [{"image": x, "y_cls": torch.tensor([3, 5]), "index": torch.tensor([0, 1])}] * 2,
                          "cpu", tta=True)
    assert out["logits"].shape == (4, 2) and out["y_cls"].tolist() == [3, 5, 3, 5] and out["index"].tolist() == [0, 1] * 2
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    assert infer(model, bad, "cpu")[0].isnan().any()  # a model being trained: its own validation checks it
    model.source = "toy.pth"  # as model_from_checkpoint marks a loaded one
    with pytest.raises(CheckpointError, match="toy.pth: the model's outputs are not finite"):
        infer(model, bad, "cpu")
