"""Small free functions both absLRP rule sets use (the paper's :mod:`.rules` and the released code's
:mod:`.released`): Eq. 12 through a conv / dense layer, through an average pool, and the structural
rules (pass-through, reshape, winner-take-all max pool).  Kept as functions, not a base class, so the two
rule sets stay siblings under :class:`~explainers.propagation.ruleset.RuleSet`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ...propagation.linear import transpose
from ...propagation.rules import clamped
from ...propagation.ruleset import OpContext, layer_params

Tensor = torch.Tensor


def pos(t: Tensor) -> Tensor:
    return t.clamp(min=0)


def ratio(num: Tensor, den: Tensor) -> Tensor:
    """num / den, 0 where den is 0 (a sign none of whose relevance can pass is lost, as under Eq. 12)."""
    ok = den != 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


def image_sums(t: Tensor, bd: int = 0) -> Tensor:
    """Per-image total of a tensor whose batch dimension is ``bd``."""
    t = t.movedim(bd, 0) if bd else t
    return t.reshape(t.shape[0], -1).sum(1)


def batch_view(v: Tensor, dim: int, bd: int) -> Tensor:
    """A per-image vector shaped to broadcast against a ``dim``-dim tensor with the batch at ``bd``."""
    shape = [1] * dim
    shape[bd] = -1
    return v.view(shape)


@dataclass
class Layer:
    """A conv or dense layer as Eq. 12 sees it: its parameters in the activations' dtype, never BN-merged
    (absLRP gives BatchNorm its own rule)."""

    weight: Tensor
    bias: Tensor | None
    conv: dict[str, Any] | None  # stride / padding / dilation / groups; None for nn.Linear
    nonneg: bool  # the layer input is >= 0 by construction (it follows a ReLU)

    def apply(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.conv is None:
            return F.linear(x, weight, bias)
        return F.conv2d(x, weight, bias, **self.conv)


def layer_of(op: OpContext) -> Layer:
    weight, bias, conv = layer_params(op)
    return Layer(weight=weight, bias=bias, conv=conv, nonneg=op.graph.data_inputs[op.node][0] in op.graph.nonneg)


def layer_output(op: OpContext, layer: Layer) -> Tensor:
    """z, the layer output kept from the forward pass (``keeps``), or recomputed if it was not kept."""
    z = op.env.get(op.node)
    return z if isinstance(z, torch.Tensor) else layer.apply(op.x, layer.weight, layer.bias)


def eq12_layer(layer: Layer, x: Tensor, S: Tensor) -> Tensor:
    """abslrp-gae Eq. 12 for a conv / dense layer given ``S = R / (|z| + eps)``:
    ``R_i = sum_j (x_i w_ij)^+ S_j = x^+ (W+^T S) + x^- (W-^T S)`` (just ``x (W+^T S)`` after a ReLU), the
    transposed products through the one helper :func:`explainers.propagation.linear.transpose`."""
    size = tuple(x.shape[-2:]) if layer.conv is not None else None
    g_pos = transpose(S, clamped(layer.weight, positive=True), layer.conv, size)  # type: ignore[arg-type]
    if layer.nonneg:
        return g_pos.mul_(x)
    g_neg = transpose(S, clamped(layer.weight, positive=False), layer.conv, size)  # type: ignore[arg-type]
    return g_pos.mul_(pos(x)).addcmul_(g_neg, x.clamp(max=0))


def eq12_pool(op: OpContext, R: Tensor, eps: float) -> Tensor:
    """Average pools / means: Eq. 12 with positive averaging weights, ``R_x = x^+ J^T (R / (|z| + eps))``."""
    with torch.enable_grad():
        x = op.x.detach().requires_grad_(True)
        z = op.rerun(x)
        (g,) = torch.autograd.grad(z, x, R / (z.detach().abs() + eps))
    x = x.detach()
    return (x if op.graph.data_inputs[op.node][0] in op.graph.nonneg else pos(x)) * g


def winner_take_all(op: OpContext, R: Tensor) -> Tensor:
    """Max pool: the VJP routes each output's relevance to its arg-max input (mass preserving)."""
    with torch.enable_grad():
        x = op.x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(op.rerun(x), x, R)
    return g
