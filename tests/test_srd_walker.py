"""SRD through the one walker (issue #12 points 1 and 8): the maps, totals, ERFs and sharing ratios equal those of
the code before the move (tests/fixtures/srd_reference.pt, written by tests/make_srd_reference.py from the old
code).  Tolerance: the walker carries relevance (value * g) instead of g and divides it back by the value at
each affine node, which reorders a few float64 roundings: 1e-12 relative to each map's peak."""

from __future__ import annotations

import os

import pytest
import torch

from explainers import load_model
from explainers.errors import RelevanceNotPropagated
from explainers.images import GALLERY
from explainers.methods import srd
from explainers.propagation import propagate
from tests.make_srd_reference import SIZES, double, image

REF = os.path.join(os.path.dirname(__file__), "fixtures", "srd_reference.pt")
RTOL = 1e-12


@pytest.fixture(scope="module")
def ref():
    return torch.load(REF, weights_only=False)


def _close(a: torch.Tensor, b: torch.Tensor, what: str, scale: float | None = None) -> None:
    scale = scale or float(b.abs().max()) or 1.0
    err = float((a - b).abs().max()) / scale
    assert err <= RTOL, f"{what}: max |diff| / max |ref| = {err:.3g}"


@pytest.mark.slow
@pytest.mark.parametrize("model", list(SIZES))
def test_maps_at_every_layer_equal_the_reference(ref, model):
    rec = ref["models"][model]
    torch.manual_seed(0)
    bundle = double(load_model(model, device="cpu", weights="untrained" if model != "efficientnet_lite0"
                               else "default"))
    x = image(rec["size"])
    assert [i.name for i in srd.layers(bundle, (rec["size"],) * 2)] == rec["layers"]
    for key, maps in rec["maps"].items():
        start, share = key.split("/")
        xb = x[: next(iter(maps.values())).shape[0]]
        res = srd.srd_maps(bundle, xb, None, start=start, bias_share=share, layers=list(maps))
        for name, m in maps.items():
            _close(res.maps[name], m, f"{model} {key} {name}")
        _close(res.start_total, rec["start_total"][key][: xb.shape[0]], f"{model} {key} start",
               float(maps["low"].abs().sum()))
        if key in rec["totals"] and xb.shape[0] == 2:
            for (n, t, cut), (rn, rt, rcut) in zip(res.totals, rec["totals"][key]):
                assert (n, cut) == (rn, rcut)
                # totals of a zero-mean start are ~1e-16: relative to the relevance moved, sum |R|
                _close(t, rt, f"{model} {key} total {n}", float(maps["low"].abs().sum()))
        # one requested layer at a time: the walk ends there and gives the same map
        one = rec["layers"][1] if rec["layers"][1] in maps else "high"
        alone = srd.srd_maps(bundle, xb, None, start=start, bias_share=share, layers=[one])
        _close(alone.maps[one], maps[one], f"{model} {key} alone")
    p = srd.forward_pass(bundle, x[:1])
    for (layer, share), (positions, erfs) in rec["erf"].items():
        for method in ("walk", "stencils"):
            got = p.erf(layer, positions, share, method=method)
            _close(got, erfs, f"{model} ERF {layer} {share} {method}")
            assert torch.allclose(got.sum((1, 2)), torch.ones(len(positions), dtype=torch.float64), atol=1e-9)
    for (layer, share), (pos, subs) in rec["subconcepts"].items():
        got = p.subconcepts(layer, pos, top=0, bias_share=share)
        assert abs(sum(s.mu for s in got) - 1) < 1e-9  # sharing ratios into one PFV sum to one
        want = {(a, tuple(b)): mu for a, b, mu in subs}
        have = {(s.layer, s.position): s.mu for s in got}
        assert have.keys() == want.keys()
        assert max(abs(have[k] - want[k]) for k in want) < 1e-12


def test_lite0_float32_app_maps_equal_the_reference(ref, lite0):
    x = lite0.preprocess(GALLERY["chelsea"].image())
    res = srd.srd_maps(lite0, x, None, layers=("low", "high", "input"))
    assert int(res.targets[0]) == ref["lite0_float32"]["target"]
    for name, m in ref["lite0_float32"]["maps"].items():
        scale = float(m.abs().max())
        assert float((res.maps[name] - m).abs().max()) <= 1e-5 * scale, name  # float32: a few ulps per layer


def test_method_layers_are_the_walkers_relevance_totals(lite0):
    from explainers import explain

    x = lite0.preprocess(GALLERY["coffee"].image())
    out = explain(lite0, x, "srd")
    names = [n for n, _ in out.layers]
    assert names[-1] == "x" or names[-1] == "input" or len(names) > 20
    start = out.extras["start_total"]
    assert out.layers[0][1] == pytest.approx(start, rel=1e-5)  # the seed: the start map at the encoder output
    assert out.layers[-1][1] == pytest.approx(float(out.attribution.sum()), rel=1e-3)


def test_relevance_that_never_reaches_the_input_raises():
    from torch import nn

    from explainers.propagation.rules import LRPRules

    class Dead(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)
            with torch.no_grad():
                self.fc.weight.zero_()

        def forward(self, x):
            return self.fc(x.flatten(1) * 0.0)

    rules = LRPRules(layer=lambda g, n: _ZeroRule())
    with pytest.raises(RelevanceNotPropagated, match="reached the input"):
        propagate(Dead().eval(), torch.randn(1, 4, 1, 1), None, rules)


class _ZeroRule:
    def __call__(self, layer, R):
        return None
