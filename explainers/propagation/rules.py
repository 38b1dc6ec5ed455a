"""Local propagation rules as small strategy objects (DESIGN.md, "One engine, many rules").

Every rule for a conv / linear layer is a *modified vector-Jacobian product*: build the
modified pre-activation ``z`` from (modified) inputs and parameters, divide the upstream
relevance by the stabilised ``z`` and take one VJP; the relevance of the input is
``input * VJP`` (gradient x input).  That is one extra forward and one backward of the
layer, batched over images and targets, with no Python loop over pixels or channels.

A :class:`RuleSet` dispatches on the node kind; absLRP and SRD subclass it and
override the handful of methods whose rule differs (conv/linear, BN, residual add,
start).  Each method gets an :class:`OpContext` that exposes every activation of the
forward pass, so rules that need more than the layer input (SRD's channel norms of the
pointwise feature vectors) can have it.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.utils.weak import WeakTensorKeyDictionary

from .graph import PropGraph, Residual, batch_norm_params
from .ruleset import OpContext, RuleSet, layer_params, stabilize

Tensor = torch.Tensor


@dataclass
class LayerContext:
    """A conv or linear layer with the parameters its rule should use (BN already merged when asked)."""

    op: OpContext
    weight: Tensor
    bias: Tensor | None
    conv: dict[str, Any] | None  # stride/padding/dilation/groups for Conv2d; None for Linear
    first: bool  # the network's first layer (input-layer rules)
    nonneg: bool = False  # the layer input is >= 0 by construction (it follows a ReLU)

    @property
    def x(self) -> Tensor:
        return self.op.x

    def apply(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.conv is None:
            return F.linear(x, weight, bias)
        return F.conv2d(x, weight, bias, **self.conv)


Term = tuple[Tensor, Tensor, Tensor | None, float]  # (input, weight, bias, sign)


def modified_vjp(layer: LayerContext, R: Tensor, terms: list[Term], eps: float, fallback: bool = False,
                 nonneg: bool = False) -> Tensor:
    """R_in = sum_t input_t * d(z)/d(input_t)^T (R / stab(z)), z = sum_t sign_t * layer(input_t; W_t, b_t).

    This is the generic LRP step (Bach et al. 2015, Eq. 2 of the resnet-lrp paper; Montavon et al. 2019,
    "LRP as gradient x input") used by every rule below: each is a choice of ``terms``.

    ``fallback``: outputs whose z is exactly 0 (no positive contribution at all: a dead input channel
    or an all-negative depthwise kernel, while BN's shift kept the output alive) cannot pass relevance
    under z+; their relevance is spread by the flat rule over their receptive field instead of being
    lost, so conservation holds on real networks such as EfficientNet-Lite0.
    ``nonneg``: every contribution is >= 0 (z+), so z >= 0.
    """
    with torch.enable_grad():
        ins = [t[0].detach().requires_grad_(True) for t in terms]
        z = None
        for inp, (_, w, b, sign) in zip(ins, terms):
            out = layer.apply(inp, w.detach(), b.detach() if b is not None else None)  # VJP w.r.t. inputs only
            out = out if sign == 1 else sign * out
            z = out if z is None else z + out
        assert z is not None
        zd = z.detach()
        lost = None
        if fallback and bool(zd.amin() <= 0):  # z >= 0 here, so this is "some z is exactly 0"
            empty = (zd == 0) & (R != 0)
            if bool(empty.any()):
                lost, R = R * empty, R.masked_fill(empty, 0)
        s = R / stabilize(zd, eps, nonneg)
        grads = torch.autograd.grad(z, ins, s)
    out_r = None
    for inp, g in zip(ins, grads):
        part = inp.detach() * g
        out_r = part if out_r is None else out_r + part
    assert out_r is not None
    if lost is not None:
        ones: list[Term] = [(torch.ones_like(layer.x), torch.ones_like(layer.weight), None, 1.0)]
        out_r = out_r + modified_vjp(layer, lost, ones, max(eps, 1e-12))
    return out_r


_CLAMPED = WeakTensorKeyDictionary()  # weight -> {(version, positive): W+ or W-}; entries die with the model


def clamped(weight: Tensor, positive: bool) -> Tensor:
    """W+ or W-, cached per weight tensor (and its in-place version) so repeated calls skip the clamp."""
    key = (weight._version, positive)
    per_weight = _CLAMPED.get(weight)
    if per_weight is not None and key in per_weight:
        return per_weight[key]
    out = weight.detach().clamp(min=0) if positive else weight.detach().clamp(max=0)
    if per_weight is None or any(k[0] != key[0] for k in per_weight):
        per_weight = {}
        _CLAMPED[weight] = per_weight
    per_weight[key] = out
    return out


class LayerRule(abc.ABC):
    """Strategy for conv / linear layers: ``rule(layer, R_out) -> R_in`` (abstract base)."""

    name = "rule"

    @abc.abstractmethod
    def __call__(self, layer: LayerContext, R: Tensor) -> Tensor:
        """Redistribute the layer output's relevance onto its input."""


@dataclass
class Epsilon(LayerRule):
    """LRP-epsilon (Bach et al. 2015): R_i = sum_j x_i w_ij / (z_j + eps sign z_j) R_j, bias included in z."""

    eps: float = 1e-6
    name = "epsilon"

    def __call__(self, layer: LayerContext, R: Tensor) -> Tensor:
        return modified_vjp(layer, R, [(layer.x, layer.weight, layer.bias, 1.0)], self.eps)


@dataclass
class ZPlus(LayerRule):
    """z+ rule (resnet-lrp paper Eq. 2-3; = alpha1-beta0): R_i = sum_j x_i w+_ij / sum_k x_k w+_kj R_j.

    For non-negative inputs (every layer after a ReLU) this is exactly the paper's Eq. 2.  Signed
    inputs (the image, or timm's un-activated block outputs) use the alpha1-beta0 generalisation
    x+ W+ + x- W- (as zennit's ``ZPlus``), whose contributions are all positive, so shares stay in [0, 1].
    ``bias=True`` adds the positive bias to the denominator as zennit does; the paper ignores biases.
    """

    stabilizer: float = 1e-9
    bias: bool = False
    fallback: bool = True  # flat rule where z+ is exactly 0 (see modified_vjp)
    name = "zplus"

    def __call__(self, layer: LayerContext, R: Tensor) -> Tensor:
        w_pos = clamped(layer.weight, positive=True)
        b_pos = layer.bias.clamp(min=0) if (self.bias and layer.bias is not None) else None
        x = layer.x
        if layer.nonneg:
            terms: list[Term] = [(x, w_pos, b_pos, 1.0)]
        else:
            terms = [(x.clamp(min=0), w_pos, b_pos, 1.0),
                     (x.clamp(max=0), clamped(layer.weight, positive=False), None, 1.0)]
        return modified_vjp(layer, R, terms, self.stabilizer, fallback=self.fallback, nonneg=True)


@dataclass
class AlphaBeta(LayerRule):
    """LRP-alpha-beta (Bach et al. 2015, Eq. 60): alpha * positive shares - beta * negative shares."""

    alpha: float = 2.0
    beta: float = 1.0
    stabilizer: float = 1e-9
    name = "alphabeta"

    def __call__(self, layer: LayerContext, R: Tensor) -> Tensor:
        x, w = layer.x, layer.weight
        xp, xn, wp, wn = x.clamp(min=0), x.clamp(max=0), w.clamp(min=0), w.clamp(max=0)
        pos = modified_vjp(layer, R, [(xp, wp, None, 1.0), (xn, wn, None, 1.0)], self.stabilizer)
        if self.beta == 0:
            return self.alpha * pos
        neg = modified_vjp(layer, R, [(xp, wn, None, 1.0), (xn, wp, None, 1.0)], self.stabilizer)
        return self.alpha * pos - self.beta * neg


@dataclass
class Flat(LayerRule):
    """Flat rule (Lapuschkin et al. 2019): inputs and weights set to one, bias dropped; spreads R uniformly
    over each output's receptive field (zennit's ``Flat``)."""

    stabilizer: float = 1e-6
    name = "flat"

    def __call__(self, layer: LayerContext, R: Tensor) -> Tensor:
        return modified_vjp(layer, R, [(torch.ones_like(layer.x), torch.ones_like(layer.weight), None, 1.0)],
                            self.stabilizer)


@dataclass
class ZBox(LayerRule):
    """z^B rule for bounded inputs (Montavon et al. 2017, Eq. for the input layer):
    z = x W - l W+ - h W-, R_in = x c(W) - l c(W+) - h c(W-) with l, h the per-channel input bounds."""

    low: Tensor = field(default_factory=lambda: torch.zeros(3))
    high: Tensor = field(default_factory=lambda: torch.ones(3))
    stabilizer: float = 1e-6
    name = "zbox"

    def __call__(self, layer: LayerContext, R: Tensor) -> Tensor:
        x, w = layer.x, layer.weight
        shape = (1, -1) + (1,) * (x.dim() - 2)
        low = self.low.to(x).view(shape).expand_as(x)
        high = self.high.to(x).view(shape).expand_as(x)
        return modified_vjp(layer, R, [(x, w, layer.bias, 1.0), (low, w.clamp(min=0), None, -1.0),
                                       (high, w.clamp(max=0), None, -1.0)], self.stabilizer)


# --------------------------------------------------------------------------- residual junctions


@dataclass
class ResidualContext:
    op: OpContext
    residual: Residual
    h_skip: Tensor
    h_main: Tensor


class ResidualRule(abc.ABC):
    """Strategy for ``h = h_s + h_m``: ``rule(ctx, R) -> (R_skip, R_main)`` (abstract base)."""

    name = "residual"

    @abc.abstractmethod
    def __call__(self, ctx: ResidualContext, R: Tensor) -> tuple[Tensor, Tensor]:
        """Split the sum's relevance between the skip and the main branch."""


@dataclass
class Proportional(ResidualRule):
    """Signed z-rule at the sum (zennit's ``Norm`` on its ``Sum`` layer): R_a = a R / stab(a + b)."""

    stabilizer: float = 1e-9
    name = "proportional"

    def __call__(self, ctx: ResidualContext, R: Tensor) -> tuple[Tensor, Tensor]:
        s = R / stabilize(ctx.h_skip + ctx.h_main, self.stabilizer)
        return ctx.h_skip * s, ctx.h_main * s


class Symmetric(ResidualRule):
    """Symmetric Relevance Splitting (resnet-lrp paper Eq. 4): (R_s)_i = (R_m)_i = R_i / 2."""

    name = "symmetric"

    def __call__(self, ctx: ResidualContext, R: Tensor) -> tuple[Tensor, Tensor]:
        half = R / 2
        return half, half


class Ratio(ResidualRule):
    """Ratio-Based Relevance Splitting (resnet-lrp paper Eq. 5):
    (R_s)_i = R_i |h_s|_i / (|h_m|_i + |h_s|_i), (R_m)_i = R_i |h_m|_i / (|h_m|_i + |h_s|_i).

    Guard: where both are 0 (the released code gives 0/0 = NaN there) the skip share is 0 and the main
    branch takes all; R_m = R - R_s makes the two shares sum to one exactly (Eq. 6-7) everywhere."""

    name = "ratio"

    def shares(self, h_skip: Tensor, h_main: Tensor) -> Tensor:
        """The skip share |h_s| / (|h_s| + |h_m|) (0 where both vanish)."""
        a_s = h_skip.abs()
        return a_s / (a_s + h_main.abs()).clamp_min(torch.finfo(a_s.dtype).tiny)

    def __call__(self, ctx: ResidualContext, R: Tensor) -> tuple[Tensor, Tensor]:
        r_s = R * self.shares(ctx.h_skip, ctx.h_main)
        return r_s, R - r_s


RESIDUAL_RULES: dict[str, Callable[[float], ResidualRule]] = {
    "proportional": lambda eps: Proportional(eps),
    "symmetric": lambda eps: Symmetric(),
    "ratio": lambda eps: Ratio(),
}


# --------------------------------------------------------------------------- rule sets


def start_relevance(logits: Tensor, targets: Tensor, start: str) -> Tensor:
    """Relevance placed at the output: one-hot at the target times the start value.

    ``probability``: the target's softmax probability (resnet-lrp paper Sec. 4 / Fig. 7: the input
    relevance then sums to the predicted probability); ``logit``: the target logit (classic LRP);
    ``one``: 1.0 (zennit's one-hot ``attr_output``)."""
    onehot = F.one_hot(targets.long(), logits.shape[-1]).to(logits.dtype)
    if start == "probability":
        value = logits.softmax(-1).gather(1, targets.view(-1, 1).long())
    elif start == "logit":
        value = logits.gather(1, targets.view(-1, 1).long())
    elif start == "one":
        value = torch.ones(logits.shape[0], 1, dtype=logits.dtype, device=logits.device)
    else:
        raise ValueError(f"unknown start {start!r}")
    return onehot * value


Composite = Callable[[PropGraph, fx.Node], LayerRule]


@dataclass
class LRPRules(RuleSet):
    """The LRP family's rules for every kind of node (``lrp``, ``resnet-lrp``)."""

    layer: Composite  # picks the conv/linear rule per node (a "composite")
    residual: ResidualRule = field(default_factory=Ratio)
    include_identity: bool = True  # resnet-lrp paper Sec. 4.4 / Table 2: False sends R_s = 0 through identity skips
    bn: str = "pass"  # 'pass' | 'merge' (fold into the preceding conv/linear, as zennit's SequentialMergeBatchNorm)
    maxpool: str = "winner"  # 'winner' | 'avg' (the released resnet-lrp code's 2x2 average pool)
    stabilizer: float = 1e-9  # for the z-rule at pools and for z+ style denominators
    start: str = "probability"
    # Node kinds after which the engine may rescale relevance per image (only for rule sets that are linear in R
    # but not conservative, such as absLRP); empty: never (the LRP rules conserve relevance).
    rescale_kinds: frozenset[str] = frozenset()

    def start_relevance(self, logits: Tensor, targets: Tensor) -> Tensor:
        return start_relevance(logits, targets, self.start)

    # -- per kind ------------------------------------------------------------------------
    def layer_context(self, op: OpContext) -> LayerContext:
        weight, bias, conv = layer_params(op)
        bn = op.graph.merged_bn.get(op.node)
        if self.bn == "merge" and bn is not None:
            scale, shift = batch_norm_params(op.graph, bn, op.env)
            scale, shift = scale.detach().to(weight), shift.detach().to(weight)
            weight = weight * scale.view((-1,) + (1,) * (weight.dim() - 1))
            bias = shift if bias is None else bias * scale + shift
        return LayerContext(op=op, weight=weight, bias=bias, conv=conv, first=op.node is op.graph.first_layer,
                            nonneg=op.graph.data_inputs[op.node][0] in op.graph.nonneg)

    def rule_conv(self, op: OpContext, R: Tensor) -> list[Tensor | None]:
        return [self.layer(op.graph, op.node)(self.layer_context(op), R)]

    rule_linear = rule_conv

    def rule_bn(self, op: OpContext, R: Tensor) -> list[Tensor | None]:
        """BN passes relevance unchanged: resnet-lrp paper Sec. 3.1 ('pass'), or it has been merged."""
        return [R]

    def rule_act(self, op: OpContext, R: Tensor) -> list[Tensor | None]:
        return [R]

    def rule_pass(self, op: OpContext, R: Tensor) -> list[Tensor | None]:
        return [R]

    def rule_reshape(self, op: OpContext, R: Tensor) -> list[Tensor | None]:
        return [R.reshape(op.x.shape)]

    def zrule(self, op: OpContext, R: Tensor, fn: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """LRP-0 through a parameter-free linear op (zennit's ``Norm``): R_x = x * J^T (R / stab(z))."""
        fn = fn or op.rerun
        with torch.enable_grad():
            x = op.x.detach().requires_grad_(True)
            z = fn(x)
            (g,) = torch.autograd.grad(z, x, R / stabilize(z.detach(), self.stabilizer))
        return x.detach() * g

    def rule_avgpool(self, op: OpContext, R: Tensor) -> list[Tensor | None]:
        return [self.zrule(op, R)]

    rule_mean = rule_avgpool

    def rule_maxpool(self, op: OpContext, R: Tensor) -> list[Tensor | None]:
        if self.maxpool == "avg":
            # The released resnet-lrp code swaps max-pool for AvgPool2d(2) and applies the z-rule there.
            m = op.module
            k, s, p = (2, 2, 0)
            out_shape = F.avg_pool2d(op.x[:1], k, s, p).shape[-2:]
            if out_shape != R.shape[-2:] and isinstance(m, nn.MaxPool2d):
                k, s, p = m.kernel_size, m.stride, m.padding
            return [self.zrule(op, R, lambda x: F.avg_pool2d(x, k, s, p))]
        # Winner-take-all: the VJP of max pooling routes each output's relevance to its arg-max input.
        with torch.enable_grad():
            x = op.x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(op.rerun(x), x, R)
        return [g]

    def rule_add(self, op: OpContext, R: Tensor) -> list[Tensor | None]:
        res = op.graph.residuals.get(op.node)
        if res is None:  # an add with a constant: relevance stays with the data input
            return [R for _ in op.inputs]
        ins = op.graph.data_inputs[op.node]
        h_skip, h_main = op.inputs[ins.index(res.skip)], op.inputs[ins.index(res.main)]
        if res.identity and not self.include_identity:
            r_skip, r_main = torch.zeros_like(R), R  # resnet-lrp paper Sec. 4.4: R_s = 0 for identity skips
        else:
            r_skip, r_main = self.residual(ResidualContext(op, res, h_skip, h_main), R)
        out: list[Tensor | None] = [None, None]
        out[ins.index(res.skip)] = r_skip
        out[ins.index(res.main)] = r_main
        if res.skip is res.main:  # degenerate x + x
            out = [r_skip + r_main, None]
        return out
