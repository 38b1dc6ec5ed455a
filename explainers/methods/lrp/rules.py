"""The LRP layer rules, each a few (input modifier, parameter modifier) terms (zennit's ``rules.py``, term for
term; :mod:`explainers.propagation.rules` explains how terms become relevance).

Notation: x+ / x- and W+ / W- are the positive / negative parts; every parameter modifier applies to the weight
and to the bias alike, and ``bias=ZERO`` drops the bias from a term (zennit's ``zero_params=['bias']``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ...propagation.rules import (
    IDENTITY,
    NEGATIVE,
    ONES,
    POSITIVE,
    SQUARE,
    ZERO,
    Group,
    LayerRule,
    Mod,
    ModifiedRule,
    Term,
    constant,
)

Tensor = torch.Tensor


def epsilon(eps: float = 1e-6) -> ModifiedRule:
    """LRP-epsilon (Bach et al. 2015): z = x W + b, R_i = sum_j x_i w_ij R_j / (z_j + eps sign z_j)."""
    return ModifiedRule("epsilon", (Group((Term(IDENTITY, IDENTITY),)),), eps)


def _positive_terms(bias: bool) -> tuple[Term, ...]:
    """The positive contributions x+ (W+, b+) + x- W- (zennit's z+ / alpha-beta positive part)."""
    return (Term(POSITIVE, POSITIVE, POSITIVE if bias else ZERO), Term(NEGATIVE, NEGATIVE, ZERO))


def _negative_terms(bias: bool) -> tuple[Term, ...]:
    """The negative contributions x+ (W-, b-) + x- W+."""
    return (Term(POSITIVE, NEGATIVE, NEGATIVE if bias else ZERO), Term(NEGATIVE, POSITIVE, ZERO))


def zplus(stabilizer: float = 1e-6, bias: bool = True, fallback: bool = False) -> ModifiedRule:
    """z+ = alpha1-beta0 (resnet-lrp paper Eq. 2-3; zennit's ``ZPlus``): only positive contributions.

    After a ReLU (x >= 0) this is exactly the paper's Eq. 2, R_i = sum_j x_i w+_ij / sum_k x_k w+_kj R_j.
    ``bias``: keep b+ in the denominator as zennit does (the paper ignores biases).  ``fallback``: outputs with
    no positive contribution at all (z = 0: a dead input window or an all-negative depthwise kernel whose output
    BN kept alive) pass their relevance by the flat rule instead of losing it, so z+ conserves on real
    networks such as EfficientNet-Lite0 (our addition; zennit loses it)."""
    guard = flat(max(stabilizer, 1e-12)) if fallback else None
    return ModifiedRule("zplus", (Group(_positive_terms(bias)),), stabilizer, fallback=guard)


def alpha_beta(alpha: float = 2.0, beta: float = 1.0, stabilizer: float = 1e-6) -> ModifiedRule:
    """LRP-alpha-beta (Bach et al. 2015, Eq. 60; zennit's ``AlphaBeta``): alpha x positive shares - beta x
    negative shares, each normalised by its own denominator; the clamped bias is in both."""
    groups = (Group(_positive_terms(True), coef=alpha),)
    if beta:
        groups += (Group(_negative_terms(True), coef=-beta),)
    return ModifiedRule(f"alpha{alpha:g}beta{beta:g}", groups, stabilizer)


def gamma(g: float = 0.25, stabilizer: float = 1e-6) -> ModifiedRule:
    """Generalised LRP-gamma (Montavon et al. 2019; zennit's ``Gamma``): W + g W+ where x W + b > 0 and
    W + g W- where it is < 0 (each sign with the matching input part)."""
    up = Mod(f"gamma{g:g}+", lambda t: t + g * t.clamp(min=0))
    down = Mod(f"gamma{g:g}-", lambda t: t + g * t.clamp(max=0))
    return ModifiedRule(f"gamma{g:g}", (
        Group((Term(POSITIVE, up), Term(NEGATIVE, down, ZERO)), where="positive"),
        Group((Term(POSITIVE, down), Term(NEGATIVE, up, ZERO)), where="negative"),
    ), stabilizer)


def flat(stabilizer: float = 1e-6) -> ModifiedRule:
    """Flat (Lapuschkin et al. 2019; zennit's ``Flat``): input and weights set to one, no bias; spreads R
    uniformly over each output's receptive field."""
    return ModifiedRule("flat", (Group((Term(ONES, ONES, ZERO),)),), stabilizer)


def wsquare(stabilizer: float = 1e-6) -> ModifiedRule:
    """w^2 (Montavon et al. 2017; zennit's ``WSquare``): input set to one, parameters squared (bias too)."""
    return ModifiedRule("wsquare", (Group((Term(ONES, SQUARE),)),), stabilizer)


def zbox(low: Tensor, high: Tensor, stabilizer: float = 1e-6) -> ModifiedRule:
    """z^B for inputs bounded in [low, high] per channel (Montavon et al. 2017; zennit's ``ZBox``):
    z = x (W, b) - low (W+, b+) - high (W-, b-)."""
    return ModifiedRule("zbox", (Group((
        Term(IDENTITY, IDENTITY),
        Term(constant("low", low), POSITIVE, sign=-1.0),
        Term(constant("high", high), NEGATIVE, sign=-1.0),
    )),), stabilizer)


# --------------------------------------------------------------------------- released resnet-lrp code


def released_zplus(eps: float = 1e-5, first: bool = False, dense: bool = False) -> ModifiedRule:
    """The released LRP-for-ResNet code's only layer rule (``src/lrp_layers.py``): z = a (W+, b) + eps with a
    plain additive eps; its Linear also zeroes the bias; the first conv sees ``activations[0] = ones``."""
    term = Term(ONES if first else IDENTITY, POSITIVE, ZERO if dense else IDENTITY)
    return ModifiedRule("released-zplus", (Group((term,)),), eps, additive=True)


@dataclass(frozen=True)
class RuleParams:
    """The numbers a composite's rules take (from the method's options)."""

    eps: float = 1e-6  # the epsilon rule's epsilon
    stabilizer: float = 1e-6  # every other rule's stabiliser
    gamma: float = 0.25
    low: Tensor | None = None  # z^B bounds per input channel (the normalised pixel range)
    high: Tensor | None = None


def _zbox(p: RuleParams) -> ModifiedRule:
    low = p.low if p.low is not None else torch.zeros(3)
    high = p.high if p.high is not None else torch.ones(3)
    return zbox(low, high, max(p.stabilizer, 1e-12))


# Rule names a composite can use -> how to build the rule from the options.
RULES: dict[str, Callable[[RuleParams], LayerRule]] = {
    "epsilon": lambda p: epsilon(p.eps),
    "zplus": lambda p: zplus(p.stabilizer, bias=False, fallback=True),  # the resnet-lrp paper's z+
    "zplus-bias": lambda p: zplus(p.stabilizer, bias=True),  # zennit's ZPlus
    "alpha2beta1": lambda p: alpha_beta(2.0, 1.0, p.stabilizer),
    "alpha1beta0": lambda p: alpha_beta(1.0, 0.0, p.stabilizer),
    "gamma": lambda p: gamma(p.gamma, p.stabilizer),
    "flat": lambda p: flat(max(p.stabilizer, 1e-12)),
    "wsquare": lambda p: wsquare(max(p.stabilizer, 1e-12)),
    "zbox": _zbox,
    "released": lambda p: released_zplus(p.stabilizer),
    "released-ones": lambda p: released_zplus(p.stabilizer, first=True),
    "released-dense": lambda p: released_zplus(p.stabilizer, dense=True),
}
