"""Hand-written reference implementations for cross-checks (no captum, no pytorch-grad-cam)."""

from __future__ import annotations

import copy

import torch

from explainers.guard import model_guard


class _GuidedReLU6(torch.autograd.Function):
    """Guided backprop through ReLU6 written out by hand: pass positive signals where 0 < x < 6."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(0, 6)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad.clamp(min=0) * ((x > 0) & (x < 6))


def hand_guided_backprop(bundle, x, target: int) -> torch.Tensor:
    """Guided backprop without captum or pytorch-grad-cam: a copy of the model with every ReLU6 guided."""
    model = copy.deepcopy(bundle.model).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.ReLU6):
            m.forward = _GuidedReLU6.apply
    xi = x.clone().requires_grad_(True)
    model(xi)[0, target].backward()
    return xi.grad.detach()


def plain_gradient(bundle, x, target: int) -> torch.Tensor:
    with model_guard(bundle) as model:
        xi = x.clone().requires_grad_(True)
        model(xi)[0, target].backward()
    return xi.grad.detach()
