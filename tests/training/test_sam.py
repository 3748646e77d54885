"""fer/training/sam.py (--sam, --asam): two forward/backward passes a step, the step taken with the gradient at
the perturbed point, with a GradScaler (unscaled before the perturbation, one scaler step, an overflow skipped),
gradient clipping and EMA, BatchNorm statistics counted once, and a flatter minimum than plain SGD."""
import pytest
import torch
from torch import nn

import fer.training.loop as TL
from fer.training.sam import SAM


class Product(nn.Module):
    """f(a, b) = (a b - 1)^2: minima along a b = 1, whose sharpness (top Hessian eigenvalue 2 (a^2 + b^2)) is
    lowest at a = b = 1. Plain gradient descent from an unbalanced start keeps a^2 - b^2 and ends sharp."""

    def __init__(self, a=4.0, b=0.1):
        super().__init__()
        self.a, self.b = nn.Parameter(torch.tensor(a)), nn.Parameter(torch.tensor(b))
        self.calls = 0

    def loss(self, a=None, b=None):
        a, b = (self.a, self.b) if a is None else (a, b)
        return (a * b - 1) ** 2

    def forward_loss(self):
        self.calls += 1
        loss = self.loss()
        return loss, loss.detach().reshape(1, 1)


def sharpness(model):
    """The largest eigenvalue of the loss's Hessian at the weights (exact: two parameters)."""
    h = torch.autograd.functional.hessian(lambda a, b: model.loss(a, b), (model.a.detach(), model.b.detach()))
    return float(torch.linalg.eigvalsh(torch.tensor([[float(h[i][j]) for j in range(2)] for i in range(2)])).max())


def no_scaler():
    return torch.amp.GradScaler("cpu", enabled=False)


def test_a_sam_step_is_two_forward_passes_and_steps_with_the_gradient_at_the_perturbed_point():
    model, rho, lr = Product(2.0, 0.3), 0.1, 0.05
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    a, b = model.a.detach().clone(), model.b.detach().clone()
    loss, _ = SAM(opt, rho).step(model.forward_loss, model, no_scaler())
    assert model.calls == 2
    assert float(loss.detach()) == pytest.approx(float(model.loss(a, b)))  # the loss reported: the one at w
    g = torch.stack([2 * (a * b - 1) * b, 2 * (a * b - 1) * a])  # by hand
    e = rho * g / g.norm()
    pa, pb = a + e[0], b + e[1]
    g2 = torch.stack([2 * (pa * pb - 1) * pb, 2 * (pa * pb - 1) * pa])
    torch.testing.assert_close(torch.stack([model.a.detach(), model.b.detach()]), torch.stack([a, b]) - lr * g2)


def test_asam_scales_the_ball_by_the_weights():
    model, rho, lr = Product(2.0, 0.3), 0.5, 0.05
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    w = torch.stack([model.a.detach(), model.b.detach()]).clone()
    SAM(opt, rho, adaptive=True).step(model.forward_loss, model, no_scaler())
    a, b = w
    g = torch.stack([2 * (a * b - 1) * b, 2 * (a * b - 1) * a])
    e = rho * w.abs() ** 2 * g / (w.abs() * g).norm()  # Kwon et al. 2021: T^2 g / ||T g||, T = |w|
    pa, pb = w + e
    g2 = torch.stack([2 * (pa * pb - 1) * pb, 2 * (pa * pb - 1) * pa])
    torch.testing.assert_close(torch.stack([model.a.detach(), model.b.detach()]), w - lr * g2)


def test_sam_ends_in_a_flatter_minimum_than_plain_sgd():
    """Same start, same learning rate, same number of steps: both reach the valley a b = 1, SAM at a point
    whose top Hessian eigenvalue (by the exact Hessian) is lower."""
    ends = {}
    for name, rho in (("sgd", None), ("sam", 0.2)):
        model = Product()
        opt = torch.optim.SGD(model.parameters(), lr=0.02)
        sam = SAM(opt, rho) if rho else None
        for _ in range(400):
            if sam:
                sam.step(model.forward_loss, model, no_scaler())
            else:
                opt.zero_grad()
                model.forward_loss()[0].backward()
                opt.step()
        ends[name] = (float(model.loss().detach()), sharpness(model))
    assert ends["sgd"][0] < 1e-4 and ends["sam"][0] < 1e-3  # both in the valley
    assert ends["sam"][1] < 0.5 * ends["sgd"][1], ends  # measured: about 6.7 against 32


def test_sam_under_a_grad_scaler_steps_as_unscaled_and_skips_an_overflow():
    plain, scaled = Product(2.0, 0.3), Product(2.0, 0.3)
    opt_p, opt_s = torch.optim.SGD(plain.parameters(), lr=0.05), torch.optim.SGD(scaled.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    SAM(opt_p, 0.1).step(plain.forward_loss, plain, no_scaler())
    SAM(opt_s, 0.1).step(scaled.forward_loss, scaled, scaler)
    torch.testing.assert_close(torch.stack([scaled.a, scaled.b]), torch.stack([plain.a, plain.b]))
    assert scaled.calls == 2 and scaler.get_scale() == 2.0 ** 12  # one scaler step, one update, nothing skipped
    with torch.no_grad():
        scaled.b.fill_(1e38)  # the loss overflows: inf gradients
    before = torch.stack([scaled.a, scaled.b]).detach().clone()
    SAM(opt_s, 0.1).step(scaled.forward_loss, scaled, scaler)
    assert torch.equal(torch.stack([scaled.a, scaled.b]).detach(), before)  # skipped, and restored exactly
    assert scaler.get_scale() == 2.0 ** 11


def test_sam_clips_the_unscaled_gradient():
    model = Product(2.0, 0.3)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    w = torch.stack([model.a, model.b]).detach().clone()
    SAM(opt, 0.1).step(model.forward_loss, model, torch.amp.GradScaler("cpu", init_scale=2.0 ** 10), max_norm=0.01)
    assert float((torch.stack([model.a, model.b]).detach() - w).norm()) == pytest.approx(0.01, rel=1e-4)


def test_the_training_step_with_sam_batchnorm_and_ema():
    """train_step(sam=...): two passes of the model, BatchNorm statistics updated by the first only, and the
    EMA updated from the restored weights, as a plain step's."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    calls = []
    model[0].register_forward_hook(lambda *_: calls.append(1))

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, x):
            logits = self.net(x)
            return logits, logits[:, :2]

    net = Two().train()
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 3, (8,))
    reference = nn.BatchNorm2d(4).train()
    with torch.no_grad():
        reference(model[0](x))  # the running statistics after one batch
    calls.clear()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    ema = TL.make_ema(net, 0.5)
    start = [p.detach().clone() for p in net.parameters()]
    criterion = TL.make_criterion(None, torch.device("cpu"), 0.0)
    loss, logits = TL.train_step(net, x, y, torch.zeros(8, 2), opt, no_scaler(), criterion, None, SAM(opt, 0.05))
    assert len(calls) == 2 and logits.shape == (8, 3) and torch.isfinite(loss)
    torch.testing.assert_close(model[1].running_mean, reference.running_mean)
    torch.testing.assert_close(model[1].running_var, reference.running_var)
    assert int(model[1].num_batches_tracked) == 1
    ema.update_parameters(net)
    for p, q, w0 in zip(ema.module.parameters(), net.parameters(), start):  # decay 0.5: the midpoint
        torch.testing.assert_close(p, (w0 + q.detach()) / 2)


def test_an_overflow_of_the_first_pass_only_still_skips_the_step():
    """The two passes differ (dropout, the perturbation): when only the first overflows, the scaler used to
    see finite second-pass gradients and stepped with an unperturbed gradient, its scale unchanged."""
    model = Product(2.0, 0.3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    passes = []

    def forward():  # the first pass's loss overflows, the second's does not
        passes.append(1)
        loss = model.loss() * (1e38 if len(passes) == 1 else 1.0)
        return loss, loss.detach().reshape(1, 1)
    before = torch.stack([model.a, model.b]).detach().clone()
    SAM(opt, 0.1).step(forward, model, scaler)
    assert torch.equal(torch.stack([model.a, model.b]).detach(), before)  # skipped, weights exactly as they were
    assert scaler.get_scale() == 2.0 ** 11


def test_restoring_the_weights_is_exact():
    """w + e - e rounds in floating point; the weights after the second pass are w to the bit."""
    torch.manual_seed(0)
    lin = nn.Linear(64, 64)
    opt = torch.optim.SGD(lin.parameters(), lr=0.0)  # lr 0: any change to the weights is the restore's
    w = [p.detach().clone() for p in lin.parameters()]
    x = torch.randn(8, 64)

    def forward():
        loss = (lin(x) ** 2).mean() * 1e3
        return loss, loss.detach().reshape(1, 1)
    for _ in range(5):
        SAM(opt, 0.5).step(forward, lin, no_scaler())
    assert all(torch.equal(a, b.detach()) for a, b in zip(w, lin.parameters()))
