"""Sharpness-aware minimisation (--sam RHO, --asam) around the run's optimizer, with AMP's GradScaler.

SAM (Foret et al., ICLR 2021, "Sharpness-Aware Minimization for Efficiently Improving Generalization")
steps with the gradient taken at the worst point of a rho-ball around the weights: a first forward and
backward pass gives g at w; the weights move to w + e, e = rho g / ||g||; a second pass gives the gradient
there; the weights go back to w and the optimizer steps with that second gradient. ASAM (Kwon et al.,
ICML 2021, "ASAM: Adaptive Sharpness-Aware Minimization for Scale-Invariant Learning of Deep Neural
Networks") scales the ball by the weights' magnitudes: e = rho T^2 g / ||T g|| with T = |w| elementwise.

Not pytorch-optimizer's SAM (which installs cleanly beside this torch): its second step calls the wrapped
optimizer's step() itself, so a GradScaler could neither unscale the second gradients nor skip a step
that overflowed. Here the optimizer is the run's own (its state, schedule and checkpoint unchanged) and
the scaler steps it once per step:

    pass 1 (scaled) -> perturb with the unscaled gradient (no perturbation if it overflowed)
    pass 2 (scaled, BatchNorm statistics frozen) -> restore w -> [unscale_, clip] -> scaler.step -> update
"""
import torch
from torch import nn

EPS = 1e-12  # added to the gradient norm: a zero gradient perturbs nothing


class SAM:
    """The perturbation of one SAM/ASAM step. Holds no optimizer state: the wrapped optimizer keeps its own."""

    def __init__(self, optimizer, rho, adaptive=False):
        if not rho > 0:
            raise ValueError(f"rho must be > 0, got {rho}")
        self.optimizer, self.rho, self.adaptive = optimizer, rho, adaptive
        self.saved = []  # (param, w) while the weights stand at w + e
        self.overflow = None  # a device bool: the first pass's gradients were not finite

    def params(self):
        return [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]

    @torch.no_grad()
    def perturb(self, inv_scale=None):
        """Move the weights to w + e by the current gradients (times inv_scale: the GradScaler's 1/scale, a
        tensor, so nothing waits for the device). A non-finite gradient perturbs nothing (the scaler then
        skips the step and lowers its scale)."""
        params = self.params()
        if not params:
            return
        self.saved = [(p, p.detach().clone()) for p in params]
        grads = [p.grad.float() if inv_scale is None else p.grad.float() * inv_scale for p in params]
        scaled = [p.detach().abs().float() * g for p, g in zip(params, grads)] if self.adaptive else grads
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in scaled]))
        self.overflow = ~torch.isfinite(norm)
        factor = torch.where(self.overflow, torch.zeros_like(norm), self.rho / (norm + EPS))
        for p, t in zip(params, scaled):
            e = (p.detach().abs().float() * t if self.adaptive else t) * factor
            p.add_(torch.nan_to_num(e, nan=0.0, posinf=0.0, neginf=0.0).to(p.dtype))

    @torch.no_grad()
    def restore(self):
        """Back to w exactly (a copy, not w + e - e, which rounds); the gradients of the second pass stay."""
        for p, w in self.saved:
            p.copy_(w)
        self.saved = []

    @torch.no_grad()
    def carry_overflow(self):
        """An overflow of the first pass only (the two passes differ: dropout, the perturbation) must still
        make the GradScaler skip the step and lower its scale: a NaN is added to one gradient of the second
        pass exactly then, decided on the device (no sync)."""
        params = self.params()
        if self.overflow is not None and params:
            g = params[0].grad
            g.add_(torch.where(self.overflow, torch.tensor(float("nan"), device=g.device), torch.zeros((), device=g.device))
                   .to(g.dtype))
        self.overflow = None

    def step(self, forward, model, scaler, max_norm=None):
        """One SAM step. forward(): (loss, logits) of the batch at the current weights, under autocast.
        Returns the first pass's (loss, logits): the loss at w, as a plain step reports it."""
        optimizer = self.optimizer
        optimizer.zero_grad(set_to_none=True)
        loss, logits = forward()
        scaler.scale(loss).backward()
        scale = scaler._get_scale_async() if scaler.is_enabled() else None
        self.perturb(None if scale is None else scale.double().reciprocal().float())
        optimizer.zero_grad(set_to_none=True)
        with frozen_batchnorm_statistics(model):
            loss2, _ = forward()
            scaler.scale(loss2).backward()
        self.restore()
        if scaler.is_enabled():
            self.carry_overflow()
        if max_norm is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(self.params(), max_norm)
        scaler.step(optimizer)
        scaler.update()
        return loss, logits


class frozen_batchnorm_statistics:
    """BatchNorm layers keep their running statistics through the second pass (momentum 0: the batch is
    the same one the first pass already counted), as the SAM reference implementations do."""

    def __init__(self, model):
        self.layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def __enter__(self):
        self.saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
                      for m in self.layers]
        for m in self.layers:
            m.momentum = 0.0
        return self

    def __exit__(self, *exc):
        for m, (momentum, tracked) in zip(self.layers, self.saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)
        return False
