"""Our LRP rules and composites against zennit's (issue #12 point 4): the full pixel maps, float64.

Models: torchvision VGG-16 (with BatchNorm: VGG-16-BN, so BN merging is exercised), plain VGG-16 for the ``lrp``
default check, and ResNet-50, seeded, with every BatchNorm's running statistics *and* affine parameters drawn from
a seeded generator so that no BN is the identity.  zennit runs with its canonizers (``VGGCanonizer`` /
``ResNetCanonizer``: BN merged into the conv, the residual add as its ``Sum`` layer under ``Norm``).

Tolerance: max |ours - zennit| <= 1e-10 x max |zennit|.  Both sides compute the same float64 formulas in a different
order (our W^T s is a transposed conv, zennit's is autograd), so they agree to rounding: measured 0 to 1.4e-14
relative.  1e-10 leaves 4 orders of magnitude for rounding and still fails for any rule difference (the old
alpha-beta that dropped the bias was off by 0.2 relative on VGG-16-BN; the ZBox bias placement by ~1e-3).

One deliberate difference, and how the test takes it out: zennit's BN merge leaves the BN module computing
x / sqrt(1 + eps) (it resets running_var to 1 but keeps eps = 1e-5), so its forward drifts from the model by
(1 + eps)^-1/2 per BN (3e-5 relative in the map on ResNet-50).  We merge without changing the model's forward.  The
test sets eps = 0 on zennit's *canonized* copy (after the merge used the real eps), which makes its BN exactly the
identity; the model we run keeps its eps.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision

from explainers import METHODS
from explainers.methods.lrp import RuleParams, make_composite, rule_set
from explainers.propagation import LRPRules, Proportional, propagate
from tests.reference_resnet_lrp import randomise_bn

zennit = pytest.importorskip("zennit")
from zennit import composites as zc  # noqa: E402
from zennit import rules as zr  # noqa: E402
from zennit.attribution import Gradient  # noqa: E402
from zennit.torchvision import ResNetCanonizer, VGGCanonizer  # noqa: E402
from zennit.types import Convolution, Linear  # noqa: E402

SIZE = 64  # keeps every stage (and the downsample blocks) while staying fast in float64
TOL = 1e-10  # relative to max |map| (module docstring)
LOW = torch.tensor([-2.1, -2.0, -1.8], dtype=torch.float64)  # z^B bounds (the normalised pixel range of ImageNet)
HIGH = torch.tensor([2.2, 2.4, 2.6], dtype=torch.float64)
PARAMS = RuleParams(eps=1e-6, stabilizer=1e-6, gamma=0.25, low=LOW, high=HIGH)  # zennit's defaults


@pytest.fixture(scope="module")
def nets():
    out = {}
    for name in ("vgg16", "vgg16_bn", "resnet50"):
        torch.manual_seed(0)
        net = getattr(torchvision.models, name)()
        randomise_bn(net, 1)
        out[name] = net.double().eval()
    return out


@pytest.fixture(scope="module")
def x():
    return torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def _zennit(net, x, target, composite, start: torch.Tensor) -> torch.Tensor:
    twin = copy.deepcopy(net)
    with Gradient(twin, composite) as attributor:
        for m in twin.modules():  # module docstring: make zennit's merged BN the exact identity
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eps = 0.0
        _, ref = attributor(x, start)
    return ref


def _canonizers(model: str):
    return [ResNetCanonizer()] if model.startswith("resnet") else [VGGCanonizer()]


def _base():
    return zc.layer_map_base(1e-6)


# our composite (a COMPOSITES name or a table) -> zennit's composite of the same rules
CASES = {
    "epsilon-plus-flat": lambda c: zc.EpsilonPlusFlat(canonizers=c),
    "alpha2beta1": lambda c: zc.EpsilonAlpha2Beta1(canonizers=c),
    "epsilon-plus": lambda c: zc.EpsilonPlus(canonizers=c),
    "epsilon-alpha2beta1-flat": lambda c: zc.EpsilonAlpha2Beta1Flat(canonizers=c),
    "epsilon-gamma-box": lambda c: zc.EpsilonGammaBox(low=LOW.view(1, 3, 1, 1), high=HIGH.view(1, 3, 1, 1),
                                                      canonizers=c),
    "epsilon": lambda c: zc.LayerMapComposite(_base() + [(Linear, zr.Epsilon(1e-6))], canonizers=c),
    # the rules no built-in composite uses: w^2 at the pixels, alpha1-beta0 for convs, z+ (with bias) for dense
    "wsquare/alpha1beta0/zplus-bias": lambda c: zc.SpecialFirstLayerMapComposite(
        _base() + [(Convolution, zr.AlphaBeta(1.0, 0.0, 1e-6)), (torch.nn.Linear, zr.ZPlus(1e-6))],
        [(Linear, zr.WSquare(1e-6))], canonizers=c),
    # flat at the pixels, gamma everywhere else (dense layers included)
    "flat/gamma": lambda c: zc.SpecialFirstLayerMapComposite(
        _base() + [(Linear, zr.Gamma(0.25, 1e-6))], [(Linear, zr.Flat(1e-6))], canonizers=c),
}
TABLES = {
    "wsquare/alpha1beta0/zplus-bias": {"first": "wsquare", "conv": "alpha1beta0", "dense": "zplus-bias"},
    "flat/gamma": {"first": "flat", "conv": "gamma", "dense": "gamma"},
}


def _ours(net, x, target, composite: str) -> torch.Tensor:
    rules = LRPRules(layer=make_composite(TABLES.get(composite, composite), PARAMS), residual=Proportional(1e-6),
                     bn="merge", stabilizer=1e-6, start="one")
    return propagate(net, x, target, rules).relevance


@pytest.mark.slow
@pytest.mark.parametrize("model", ["vgg16_bn", "resnet50"])
@pytest.mark.parametrize("composite", list(CASES))
def test_full_map_equals_zennit(nets, x, model, composite):
    net = nets[model]
    target = net(x).argmax(-1)
    ours = _ours(net, x, target, composite)
    ref = _zennit(net, x, target, CASES[composite](_canonizers(model)), torch.eye(1000, dtype=x.dtype)[target])
    scale = ref.abs().amax()
    assert scale > 0 and torch.isfinite(ref).all()
    assert (ours - ref).abs().amax() <= TOL * scale, f"{composite} on {model}"


@pytest.mark.parametrize("model", ["vgg16", "resnet50"])
def test_registered_lrp_alpha2beta1_equals_zennit_epsilon_alpha2beta1(nets, x, model):
    """``lrp`` with ``rule=alpha2beta1`` and every other option at its default (BN merged, signed proportional
    split at residual adds, start = the target logit, eps = stabiliser = 1e-6) is zennit's EpsilonAlpha2Beta1
    started from the logit."""
    opts = METHODS["lrp"].resolve_options({"rule": "alpha2beta1"})
    net = nets[model]
    logits = net(x)
    target = logits.argmax(-1)
    ours = propagate(net, x, target, rule_set(None, opts)).relevance
    start = torch.eye(1000, dtype=x.dtype)[target] * logits.detach()
    ref = _zennit(net, x, target, zc.EpsilonAlpha2Beta1(canonizers=_canonizers(model)), start)
    assert ref.abs().amax() > 0
    assert (ours - ref).abs().amax() <= TOL * ref.abs().amax()


def test_parity_would_catch_a_dropped_bias(nets, x):
    """The tolerance is not vacuous: alpha2beta1 without the clamped bias in its terms (the old rule) is far from
    zennit on VGG-16-BN, whose merged convs all have biases."""
    from explainers.methods.lrp.rules import alpha_beta, epsilon
    from explainers.propagation.rules import ZERO, Group, ModifiedRule, Term

    right = alpha_beta(2.0, 1.0, 1e-6)
    no_bias = ModifiedRule("ab-no-bias", tuple(
        Group(tuple(Term(t.input, t.param, ZERO) for t in g.terms), g.coef) for g in right.groups), 1e-6)
    dense = epsilon(1e-6)
    net = nets["vgg16_bn"]
    target = net(x).argmax(-1)
    rules = LRPRules(layer=lambda graph, node: dense if graph.kind[node] == "linear" else no_bias,
                     residual=Proportional(1e-6), bn="merge", stabilizer=1e-6, start="one")
    ours = propagate(net, x, target, rules).relevance
    ref = _zennit(net, x, target, zc.EpsilonAlpha2Beta1(canonizers=_canonizers("vgg16_bn")),
                  torch.eye(1000, dtype=x.dtype)[target])
    assert (ours - ref).abs().amax() > 1e-3 * ref.abs().amax()
