"""Layer rules as (input modifier, parameter modifier) terms, and the LRP rule set over the walker.

A conv / linear rule is built the way zennit's ``BasicHook`` builds it (its input modifiers, parameter
modifiers, gradient mapper and reducer): each :class:`Term` is one modified forward of the layer,

    z_t = sign_t * layer(input_t(x); param_t(W), param_t(b)),

with the parameter modifier applied to the weight and the bias alike (so no rule can treat the bias
differently by accident); a :class:`Group` of terms shares one denominator, and

    R_in = sum_groups coef_g * sum_{t in g} sign_t * input_t(x) * W_t^T (mask_g * R / stab(sum_{t in g} z_t)).

That is the whole of Epsilon, z+, alpha-beta, flat, w^2, z^B and gamma (``explainers/methods/lrp/rules.py``
writes each as a few lines of terms); ``W^T s`` is the one transposed-linear helper
(:func:`~explainers.propagation.linear.transpose`) every rule family uses.

:class:`LRPRules` is the LRP family's :class:`~explainers.propagation.ruleset.RuleSet` (a sibling of absLRP's
and SRD's): it picks the layer rule per node through a composite and says what BN, pools and residual adds do.
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
from .linear import transpose
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

    def transpose(self, s: Tensor, weight: Tensor) -> Tensor:
        """W^T s (the VJP of the layer with respect to its input)."""
        return transpose(s, weight, self.conv, tuple(self.x.shape[-2:]) if self.conv is not None else None)


# --------------------------------------------------------------------------- modifiers


@dataclass(frozen=True)
class Mod:
    """A named elementwise modifier of a layer input or of a parameter.

    ``sign``: +1 when the result is >= 0 for any argument, -1 when <= 0, 0 when it depends on the argument
    (the rules use it to know a denominator's sign and to skip terms that are exactly zero)."""

    name: str
    fn: Callable[[Tensor], Tensor] = field(compare=False)
    sign: int = 0

    def __call__(self, t: Tensor) -> Tensor:
        return self.fn(t)


IDENTITY = Mod("identity", lambda t: t)
POSITIVE = Mod("positive", lambda t: t.clamp(min=0), +1)
NEGATIVE = Mod("negative", lambda t: t.clamp(max=0), -1)
ONES = Mod("ones", torch.ones_like, +1)
SQUARE = Mod("square", lambda t: t * t, +1)
ZERO = Mod("zero", torch.zeros_like)  # as a bias modifier: the term has no bias (zennit's zero_params=['bias'])
SAME = Mod("same-as-weight", lambda t: t)  # bias modifier placeholder: the weight's modifier (the default)


def constant(name: str, value: Tensor, sign: int = 0) -> Mod:
    """An input modifier that replaces the input by per-channel constants (z^B's bounds), broadcast over space."""
    def fn(x: Tensor) -> Tensor:
        v = value.to(x)
        return v.view((1, -1) + (1,) * (x.dim() - 2)).expand_as(x)
    return Mod(name, fn, sign)


@dataclass(frozen=True)
class Term:
    """One modified forward of the layer: ``sign * layer(input(x); param(W), bias(b))``.

    ``bias`` defaults to the weight's modifier (weight and bias modified alike, as zennit); ``ZERO`` drops the
    bias from this term.  Only the released resnet-lrp code needs another (it clamps W but not b)."""

    input: Mod
    param: Mod
    bias: Mod = SAME
    sign: float = 1.0

    def __post_init__(self) -> None:
        if self.bias is SAME:
            object.__setattr__(self, "bias", self.param)


@dataclass(frozen=True)
class Group:
    """Terms sharing one denominator ``stab(sum_t z_t)``; their relevance is scaled by ``coef``.

    ``where``: 'positive' / 'negative' keeps only the outputs whose *unmodified* pre-activation ``x W + b`` is
    > 0 / < 0 (zennit's Gamma); 'all' keeps every output."""

    terms: tuple[Term, ...]
    coef: float = 1.0
    where: str = "all"


# --------------------------------------------------------------------------- layer rules


class LayerRule(abc.ABC):
    """Strategy for conv / linear layers: ``rule(layer, R_out) -> R_in`` (abstract base)."""

    name = "rule"

    @abc.abstractmethod
    def __call__(self, layer: LayerContext, R: Tensor) -> Tensor:
        """Redistribute the layer output's relevance onto its input."""


_CLAMPED = WeakTensorKeyDictionary()  # weight -> {(version, modifier): modified weight}; entries die with it


def clamped(weight: Tensor, positive: bool) -> Tensor:
    """W+ or W-, cached per weight tensor (and its in-place version) so repeated calls skip the clamp."""
    return modified_param(weight, POSITIVE if positive else NEGATIVE)


def modified_param(param: Tensor, mod: Mod) -> Tensor:
    """``mod(param)``, cached per parameter tensor object and in-place version (a model's own weights are
    modified once per propagation call instead of once per term)."""
    if mod is IDENTITY or mod is SAME:
        return param
    key = (param._version, mod.name)
    per = _CLAMPED.get(param)
    if per is not None and key in per:
        return per[key]
    out = mod(param.detach())
    if per is None or any(k[0] != key[0] for k in per):
        per = {}
        _CLAMPED[param] = per
    per[key] = out
    return out


def _term_sign(t: Term, nonneg_input: bool) -> int:
    """+1 / -1 when every contribution of the term is >= 0 / <= 0 whatever the data, else 0."""
    s_in = t.input.sign or (1 if nonneg_input and t.input is IDENTITY else 0)
    s_w = t.param.sign
    s_b = t.bias.sign if t.bias is not ZERO else s_in * s_w
    s = s_in * s_w
    if s == 0 or s_b != s:
        return 0
    return int(s * (1 if t.sign > 0 else -1))


@dataclass
class ModifiedRule(LayerRule):
    """A layer rule written as groups of (input modifier, parameter modifier) terms (module docstring).

    ``stabilizer``: the denominator is ``z + eps * sign(z)`` (zennit's ``stabilize``, sign(0) = +1), or
    ``z + eps`` with ``additive=True`` (the released resnet-lrp code).  ``fallback``: a rule that receives the
    relevance of outputs whose denominator is exactly 0 instead of losing it (the paper z+'s guard for dead
    receptive fields whose output BN kept alive); single-group rules only."""

    name: str = "rule"
    groups: tuple[Group, ...] = ()
    stabilizer: float = 1e-6
    additive: bool = False
    fallback: LayerRule | None = None

    def __call__(self, layer: LayerContext, R: Tensor) -> Tensor:
        x, nonneg = layer.x, layer.nonneg
        out: Tensor | None = None
        plain: Tensor | None = None  # the unmodified pre-activation, for masked groups
        lost: Tensor | None = None
        for group in self.groups:
            z: Tensor | None = None
            live: list[tuple[Tensor | None, Tensor, float]] = []  # (input or None for ones, weight, sign)
            signs = set()
            for t in group.terms:
                if nonneg and t.input is NEGATIVE and t.bias is ZERO:
                    continue  # x- = 0 after a ReLU: the term is exactly zero
                inp = x if (t.input is IDENTITY or (nonneg and t.input is POSITIVE)) else t.input(x)
                w = modified_param(layer.weight, t.param)
                b = None if (layer.bias is None or t.bias is ZERO) else modified_param(layer.bias, t.bias)
                zt = layer.apply(inp, w, b)
                zt = zt if t.sign == 1 else t.sign * zt
                z = zt if z is None else z + zt
                live.append((None if t.input is ONES else inp, w, t.sign))
                signs.add(_term_sign(t, nonneg))
            if z is None:
                continue
            positive = signs == {1}  # every contribution >= 0, so z >= 0
            r = R
            if group.where != "all":
                if plain is None:
                    plain = layer.apply(x, layer.weight, layer.bias)
                r = R * ((plain > 0) if group.where == "positive" else (plain < 0)).to(R.dtype)
            if self.fallback is not None and (not positive or bool(z.amin() <= 0)):
                empty = (z == 0) & (r != 0)
                if bool(empty.any()):
                    lost, r = r * empty, r.masked_fill(empty, 0)
            if self.stabilizer > 0 and (self.additive or positive):
                den = z + self.stabilizer  # the released code's plain + eps; for z >= 0 also zennit's eps * sign(z)
            else:
                den = stabilize(z, self.stabilizer)  # eps * sign(z); eps = 0 only guards exact zeros
            s = r / den
            for inp, w, sign in live:
                g = layer.transpose(s, w)
                part = g if inp is None else inp * g  # a ones input multiplies by 1
                coef = group.coef * sign
                part = part if coef == 1 else coef * part
                out = part if out is None else out + part
        if out is None:
            out = torch.zeros_like(x)
        if lost is not None:
            assert self.fallback is not None
            out = out + self.fallback(layer, lost)
        return out


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
