"""``resnet-lrp preset=released-code`` against a hand-written transcription of the authors' code
(tests/reference_resnet_lrp.py), and what it conserves (issue #12 point 5).

Float64 throughout.  The toy net (two BasicBlocks, one with a projection skip, a max pool, randomised BN) is
compared for every released skip type to 1e-12 relative to max |map|: both sides compute the same formulas,
ours through the walker and transposed convs, the reference through the code's autograd trick, so they agree to
rounding (measured ~1e-16); a wrong rule anywhere (a clamped bias, BN merged, the max pool kept, the stem on the
image instead of ones) moves the map by far more.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

from explainers import METHODS, explain
from explainers.errors import InvalidOption
from explainers.methods.lrp import SKIP_TYPES, released_code_rules, rule_set
from explainers.propagation import LRPRules, propagate
from tests.reference_resnet_lrp import ToyResNet, randomise_bn, released_lrp

TOL = 1e-12


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    return randomise_bn(ToyResNet(), 1).double().eval()


def _x(seed: int, size: int) -> torch.Tensor:
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("skip_type", list(SKIP_TYPES))
def test_released_code_preset_equals_hand_written_reference_on_toy_net(toy, skip_type):
    x = _x(2, 16)
    residual, include_identity = SKIP_TYPES[skip_type]
    opts = METHODS["resnet-lrp"].resolve_options(
        {"preset": "released-code", "residual": residual, "include_identity": include_identity})
    ours = propagate(toy, x, None, rule_set(None, opts)).relevance.sum(1)[0]
    ref = released_lrp(toy, x, skip_type)
    assert ref.abs().amax() > 0 and torch.isfinite(ref).all()
    assert (ours - ref).abs().amax() <= TOL * ref.abs().amax(), skip_type


def test_reference_comparison_can_fail(toy):
    """The paper preset (z+ with x+- split, winner max pool, the image at the stem) is far from the released code."""
    x = _x(2, 16)
    opts = METHODS["resnet-lrp"].resolve_options({"residual": "ratio", "include_identity": False})
    ours = propagate(toy, x, None, rule_set(None, opts)).relevance.sum(1)[0]
    ref = released_lrp(toy, x, "latest")
    assert (ours - ref).abs().amax() > 1e-2 * ref.abs().amax()


def test_released_code_fixes_its_options():
    spec = METHODS["resnet-lrp"]
    with pytest.raises(InvalidOption, match="'bn' applies to preset 'paper' only"):
        rule_set(None, spec.resolve_options({"preset": "released-code", "bn": "merge"}))
    rules = rule_set(None, spec.resolve_options({"preset": "released-code"}))
    assert (rules.bn, rules.maxpool, rules.start, rules.stabilizer) == ("pass", "avg", "probability", 1e-5)


class _PoolRecorder(LRPRules):
    """The released rules, recording the relevance and input at the (replaced) max pool."""

    seen: list = []

    def rule_maxpool(self, op, R):
        self.seen.append((R.clone(), op.x.clone()))
        return super().rule_maxpool(op, R)


def _recording_rules(residual: str, include_identity: bool) -> _PoolRecorder:
    base = released_code_rules(residual, include_identity, eps=0.0)
    rec = _PoolRecorder(layer=base.layer, residual=base.residual, include_identity=base.include_identity, bn="pass",
                        maxpool="avg", stabilizer=0.0, start="probability")
    rec.seen = []
    return rec


@pytest.fixture(scope="module")
def resnets():
    out = {}
    for name in ("resnet18", "resnet50"):
        torch.manual_seed(0)
        out[name] = randomise_bn(getattr(torchvision.models, name)(), 1).double().eval()
    return out


@pytest.mark.parametrize("model", ["resnet18", "resnet50"])
@pytest.mark.parametrize("skip_type", list(SKIP_TYPES))
def test_released_code_conserves_probability_up_to_the_pool_leak(resnets, model, skip_type):
    """With its stabiliser off (eps = 0) the released rules conserve the top-1 softmax probability exactly
    except at the 2x2 average pool that replaces the max pool: a pooled output whose 2x2 window is all zero has
    z = 0 and no input to give its relevance to (the max pool's 3x3 window saw a positive value, so the block
    above did give it relevance).  That leak is computed here independently from the pool's relevance and input,
    and input total + leak = probability to 1e-10 relative (measured <= 4e-16; the issue asks 1e-6).  Every
    checkpoint above the pool conserves too."""
    net = resnets[model]
    x = _x(5, 64)
    rules = _recording_rules(*SKIP_TYPES[skip_type])
    prop = propagate(net, x, None, rules)
    with torch.no_grad():
        prob = net(x).softmax(-1).amax(-1)
    assert torch.allclose(prop.start, prob, rtol=1e-12)
    (r_pool, x_pool), = rules.seen
    empty = F.avg_pool2d(x_pool, 2) == 0
    leak = (r_pool * empty).sum()
    total = prop.relevance.sum()
    assert abs(float(total + leak - prob[0])) <= 1e-10 * float(prob[0]), (float(total), float(leak))  # measured 4e-16
    assert float(leak) >= 0
    trace = prop.traces()[0]
    pool_name = prop.graph.names[next(n for n in prop.graph.nodes if prop.graph.kind[n] == "maxpool")]
    above = []
    for node in trace.nodes:
        if node.name == pool_name:
            break
        above.append(node)
    for node in above:
        if node.checkpoint:
            assert abs(node.total - trace.start) <= 1e-6 * trace.start, node.name


def test_released_code_preset_through_explain_on_resnet18(untrained):
    """The registered preset runs end to end (float32) and its map carries the probability minus the leaks."""
    bundle = untrained("resnet18")
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    res = explain(bundle, x, "resnet-lrp", preset="released-code", bins=0)
    assert res.attribution.shape == (64, 64) and torch.isfinite(res.attribution).all()
    assert (res.attribution >= 0).all()  # every contribution is >= 0 under z+ on W+ with ones at the stem
    total = float(res.attribution.sum())
    assert 0 < total <= res.score * (1 + 1e-5)
