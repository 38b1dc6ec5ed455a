"""The propagation engine, the LRP / ResNet-LRP rules and heat quantisation (issue #3).

Property tests run in float64 on private double copies of the models (the session fixtures stay
float32) at 64x64, which keeps every architecture's structure (downsample blocks included) while
staying fast; conservation does not depend on the input size.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from explainers import explain, explain_batch
from explainers.guard import count_hooks
from explainers.methods.lrp import rule_set
from explainers.propagation import (
    Ratio,
    ResidualContext,
    UnsupportedOperation,
    build_graph,
    propagate,
)
from explainers.render import heat_quantize

SIZE = 64


def _double(bundle) -> nn.Module:
    return copy.deepcopy(bundle.model).double().eval()


def _opts(**kw):
    base = dict(rule="zplus", eps=1e-6, residual="ratio", include_identity=True, bn="pass", maxpool="winner",
                start="probability", stabilizer=0.0, input_rule="composite")
    base.update(kw)
    return base


@pytest.fixture(scope="module")
def doubles(untrained, lite0):
    """float64 copies: random resnet18/resnet50/vgg16 and the real efficientnet_lite0."""
    out = {name: _double(untrained(name)) for name in ("resnet18", "resnet50", "vgg16")}
    out["efficientnet_lite0"] = _double(lite0)
    return out


def _input(seed: int = 0, batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, SIZE, SIZE, generator=g, dtype=torch.float64)


# --------------------------------------------------------------------------- conservation (property tests)


SPLITS = [("symmetric", True), ("symmetric", False), ("ratio", True), ("ratio", False)]
CASES = [(m, r, i) for m in ("resnet18", "resnet50", "efficientnet_lite0") for r, i in SPLITS] + \
    [("vgg16", "ratio", True)]  # vgg16 has no residual junction: one splitting variant covers it


@pytest.mark.parametrize("model,residual,include_identity", CASES)
def test_zplus_conserves_relevance_at_every_checkpoint(doubles, model, residual, include_identity):
    net = doubles[model]
    prop = propagate(net, _input(), None, rule_set(None, _opts(residual=residual, include_identity=include_identity)),
                     model_name=model)
    graph = prop.graph
    if model.startswith("resnet"):
        assert any(not r.identity for r in graph.residuals.values()), "downsample blocks are covered"
    for trace in prop.traces():
        assert trace.start > 0
        # output, classifier input, input, and each residual block's input and output
        assert len(trace.checkpoints) >= 3 + len(graph.residuals)
        for name, total, rel in trace.checkpoint_errors():
            assert abs(rel) < 1e-6, f"{model} {residual} {include_identity}: {name} total {total} vs {trace.start}"
    # the map is the channel sum of the input relevance and carries the whole start value
    assert torch.allclose(prop.relevance.sum((1, 2, 3)), prop.start, rtol=1e-6)


def test_ratio_shares_sum_to_one_elementwise():
    g = torch.Generator().manual_seed(1)
    h_s = torch.randn(4, 8, 5, 5, generator=g, dtype=torch.float64)
    h_m = torch.randn(4, 8, 5, 5, generator=g, dtype=torch.float64)
    h_s[0, 0] = 0
    h_m[0, 0] = 0  # both zero: guarded, no NaN
    R = torch.randn(4, 8, 5, 5, generator=g, dtype=torch.float64)
    r_s, r_m = Ratio()(ResidualContext(op=None, residual=None, h_skip=h_s, h_main=h_m), R)  # type: ignore[arg-type]
    assert torch.isfinite(r_s).all() and torch.isfinite(r_m).all()
    assert torch.allclose(r_s + r_m, R, rtol=0, atol=1e-15)
    # Eq. 5: shares proportional to |h_s| and |h_m|
    mask = (h_s.abs() + h_m.abs()) > 0
    share = (r_s / R)[mask]
    assert torch.allclose(share, (h_s.abs() / (h_s.abs() + h_m.abs()))[mask], atol=1e-12)
    assert ((share >= 0) & (share <= 1)).all()


@pytest.mark.parametrize("model", ["resnet50", "efficientnet_lite0"])
def test_identity_skips_get_zero_when_not_included(doubles, model):
    prop = propagate(doubles[model], _input(batch=1), None, rule_set(None, _opts(include_identity=False)))
    trace = prop.traces()[0]
    ident = [b for b in trace.blocks if b.identity]
    proj = [b for b in trace.blocks if not b.identity]
    assert ident
    assert all(b.skip == 0.0 for b in ident)
    if model == "resnet50":
        assert len(proj) == 4 and all(b.skip != 0.0 for b in proj)  # projection skips still split
    prop_in = propagate(doubles[model], _input(batch=1), None, rule_set(None, _opts(include_identity=True)))
    assert all(b.skip != 0.0 for b in prop_in.traces()[0].blocks if b.identity)


def test_graph_finds_blocks_and_checkpoints(untrained, lite0):
    g50 = build_graph(untrained("resnet50").model, "resnet50")
    assert len(g50.residuals) == 16 and sum(not r.identity for r in g50.residuals.values()) == 4
    g18 = build_graph(untrained("resnet18").model, "resnet18")
    assert len(g18.residuals) == 8 and sum(not r.identity for r in g18.residuals.values()) == 3
    glite = build_graph(lite0.model, "efficientnet_lite0")
    assert glite.residuals and all(r.identity for r in glite.residuals.values())
    assert len(glite.merged_bn) == sum(glite.kind[n] == "conv" for n in glite.nodes)  # functional BN merges too
    assert any(glite.kind[n] == "bn" and n.op == "call_function" for n in glite.nodes)  # timm's functional BN
    gvgg = build_graph(untrained("vgg16").model, "vgg16")
    assert not gvgg.residuals and gvgg.classifier_input is not None


def test_unsupported_operation_names_op_and_model():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 10)

        def forward(self, x):
            return self.fc(torch.cumsum(self.conv(x), 1).mean((2, 3)))

    with pytest.raises(UnsupportedOperation, match=r"cumsum.*odd-net"):
        propagate(Odd().eval(), torch.randn(1, 3, 8, 8), None, rule_set(None, _opts()), model_name="odd-net")


# zennit cross-checks of every rule and composite: tests/test_zennit_parity.py


# --------------------------------------------------------------------------- heat quantisation


@pytest.mark.parametrize("bins", [2, 4, 8, 16])
def test_heat_quantization_levels_and_monotone(bins):
    g = torch.Generator().manual_seed(bins)
    raw = torch.randn(56, 56, generator=g)
    q = heat_quantize(raw, bins)
    assert q.unique().numel() == bins  # exactly Q levels (the max is kept in the top bin, not a level Q+1)
    order = raw.flatten().argsort()
    assert (q.flatten()[order].diff() >= 0).all(), "monotone non-decreasing in the raw map"
    lo, hi = raw.min(), raw.max()
    assert q.min() == lo and q.max() < hi  # levels are bin floors (Eq. 8); the max sits in the top bin
    assert torch.allclose(q.unique(), lo + torch.arange(bins) * (hi - lo) / bins)


def test_heat_quantization_heavy_tail_has_one_level_per_occupied_bin():
    raw = torch.randn(56, 56, generator=torch.Generator().manual_seed(8)).exp()
    q = heat_quantize(raw, 8)
    occupied = torch.floor((raw - raw.min()) / ((raw.max() - raw.min()) / 8)).clamp(max=7).unique().numel()
    assert q.unique().numel() == occupied <= 8  # Eq. 8 bins are equal-width: an empty bin gives no level


def test_heat_quantization_fewer_levels_and_off():
    raw = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    assert heat_quantize(raw, 8).unique().numel() == 2
    assert torch.equal(heat_quantize(raw, 0), raw)
    const = torch.full((3, 3), 2.5)
    assert torch.equal(heat_quantize(const, 8), const)


# --------------------------------------------------------------------------- the registered methods


def test_methods_registered_with_issue_options():
    from explainers import METHODS

    for mid in ("lrp", "resnet-lrp"):
        spec = METHODS[mid]
        names = {o.name for o in spec.options}
        assert {"rule", "bn", "residual", "include_identity", "start", "maxpool", "eps", "bins"} <= names
        assert spec.option("bins").display and spec.postprocess is not None
    d = METHODS["resnet-lrp"].defaults()
    assert (d["rule"], d["bn"], d["residual"], d["include_identity"], d["start"], d["bins"]) == \
        ("zplus", "pass", "ratio", True, "probability", 8)


def test_resnet_lrp_on_lite0_conserves_probability_and_is_hook_clean(lite0, gallery_x):
    x = gallery_x["chelsea"]
    hooks = count_hooks(lite0.model)
    flags = [p.requires_grad for p in lite0.model.parameters()]
    res = explain(lite0, x, "resnet-lrp")
    assert count_hooks(lite0.model) == hooks
    assert [p.requires_grad for p in lite0.model.parameters()] == flags
    assert res.attribution.shape == (224, 224)
    assert abs(float(res.attribution.sum()) - res.score) < 1e-3 * res.score  # float32: input total = probability
    assert res.layers[0][0] == "classifier" and abs(res.layers[0][1] - res.score) < 1e-6
    assert abs(res.trace.total_at("input") - res.score) < 1e-3 * res.score
    assert len(res.trace.blocks) == 9
    # bins are display-only: the raw map is unquantised, the display map has 8 levels
    from explainers import METHODS

    shown = METHODS["resnet-lrp"].display_map(res.attribution, res.options)
    assert shown.unique().numel() == 8 and res.attribution.unique().numel() > 8


def test_batched_images_and_targets_match_single_calls(untrained):
    bundle = untrained("resnet18")
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 3, SIZE, SIZE, generator=g)
    both = explain_batch(bundle, x, "lrp", target=[3, 7], bins=0)
    single = explain(bundle, x, "lrp", target=7)
    assert [r.target for r in both] == [3, 7]
    assert torch.allclose(both[1].attribution, single.attribution, atol=1e-5 * single.attribution.abs().max())
    assert not torch.allclose(both[0].attribution, both[1].attribution)


@pytest.mark.parametrize("options", [
    dict(rule="mixture"), dict(rule="alpha2beta1"), dict(rule="epsilon", residual="symmetric"),
    dict(input_rule="zbox"), dict(input_rule="flat"), dict(maxpool="avg"), dict(bn="merge", start="logit"),
])
def test_other_options_run_and_are_finite(untrained, options):
    bundle = untrained("resnet18")
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(6))
    res = explain(bundle, x, "resnet-lrp", **options)
    assert torch.isfinite(res.attribution).all() and res.attribution.abs().sum() > 0


def test_mixture_uses_epsilon_after_eighth_block(untrained):
    from explainers.methods.lrp import make_composite

    graph = build_graph(untrained("resnet50").model, "resnet50")
    pick = make_composite("mixture")
    layers = [n for n in graph.nodes if graph.kind[n] in ("conv", "linear")]
    rules = [pick(graph, n).name for n in layers]
    assert rules[0] == "zplus" and rules[-1] == "epsilon"
    switch = rules.index("epsilon")
    assert graph.blocks_before(layers[switch]) == 8 and all(r == "epsilon" for r in rules[switch:])
    assert graph.blocks_before(layers[switch - 1]) < 8


def test_zplus_conv_step_equals_explicit_eq2():
    """The modified-VJP z+ step equals resnet-lrp Eq. 2 written out with explicit loops on a tiny conv."""
    from explainers.methods.lrp.rules import zplus
    from explainers.propagation import LayerContext

    g = torch.Generator().manual_seed(7)
    x = torch.rand(1, 3, 5, 5, generator=g, dtype=torch.float64)
    w = torch.randn(2, 3, 3, 3, generator=g, dtype=torch.float64)
    R = torch.rand(1, 2, 3, 3, generator=g, dtype=torch.float64)
    conv = {"stride": (2, 2), "padding": (1, 1), "dilation": (1, 1), "groups": 1}
    layer = LayerContext(op=None, weight=w, bias=None, conv=conv, first=False, nonneg=True)  # type: ignore[arg-type]
    layer.op = type("Op", (), {"x": x})()  # the rule reads only x from the op
    ours = zplus(0.0, bias=False)(layer, R)
    xp = torch.nn.functional.pad(x, (1, 1, 1, 1))
    ref = torch.zeros_like(xp)
    wp = w.clamp(min=0)
    for o in range(2):
        for i in range(3):
            for j in range(3):
                patch = xp[0, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3]
                contrib = patch * wp[o]
                ref[0, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3] += contrib / contrib.sum() * R[0, o, i, j]
    assert torch.allclose(ours, ref[:, :, 1:-1, 1:-1], atol=1e-12)
