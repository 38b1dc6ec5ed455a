"""absLRP (issue #4): the rule of abslrp-gae Eq. 12, its contrastive start, CNNs and Vision Transformers.

Exactness checks run in float64 on tiny networks; the real EfficientNet-Lite0 is used for contrastiveness;
the ViT checks use vit_tiny with random weights (no trained ViT weights offline).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from explainers import METHODS, explain, explain_batch
from explainers.guard import count_hooks
from explainers.methods.abslrp.rules import AbsLRPRules, _bilinear
from explainers.methods.lrp import rule_set
from explainers.metrics.gae import quadrant_masks
from explainers.mosaic import build_mosaic, gallery_pool
from explainers.propagation import propagate

VIT = "vit_tiny_patch16_224"


# --------------------------------------------------------------------------- the rule itself


def _toy(hidden: list[list[float]]) -> nn.Module:
    """abslrp-gae Fig. 1: two inputs, two ReLU hidden units with the given weights, one output summing them."""
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False)).double().eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor(hidden, dtype=torch.float64))
        net[2].weight.fill_(1.0)
    return net


def _toy_attribution(net: nn.Module, rules) -> list[float]:
    x = torch.ones(1, 2, dtype=torch.float64)
    r = propagate(net, x, torch.tensor([0]), rules).relevance[0]
    return (r / r.abs().sum()).tolist()  # normalised to absolute sum 1, as in the paper


@pytest.mark.parametrize("renormalise", ["sign", "off"])
def test_fig1_toy_networks(renormalise):
    """Paper Fig. 1 / Sec. 2.1: absLRP gives [0.5, 0.5] (left) and [0.25, 0.75] (right); LRP-alpha1beta0 [0.5, 0.5]
    for both; with the second unit's weights [-17, 18] absLRP gives the second input 9 times the first's."""
    left, right, wide = _toy([[2, -1], [-1, 2]]), _toy([[2, -1], [-5, 6]]), _toy([[2, -1], [-17, 18]])
    ours = AbsLRPRules(eps=0.0, contrast="none", renormalise=renormalise)
    assert _toy_attribution(left, ours) == pytest.approx([0.5, 0.5], abs=1e-12)
    assert _toy_attribution(right, ours) == pytest.approx([0.25, 0.75], abs=1e-12)
    wide_r = _toy_attribution(wide, ours)
    assert wide_r[1] / wide_r[0] == pytest.approx(9.0, rel=1e-12)
    zplus = rule_set(None, dict(rule="zplus", eps=1e-6, residual="ratio", include_identity=True, bn="pass",
                                maxpool="winner", start="one", stabilizer=0.0, input_rule="composite"))
    for net in (left, right):
        assert _toy_attribution(net, zplus) == pytest.approx([0.5, 0.5], abs=1e-12)


def test_conv_rule_equals_explicit_eq12():
    """Engine step (transposed products) vs Eq. 12 written out with loops on a tiny signed-input conv with bias."""
    g = torch.Generator().manual_seed(7)
    conv = nn.Conv2d(3, 2, 3, stride=2, padding=1).double().eval()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(2, 3, 3, 3, generator=g, dtype=torch.float64))
        conv.bias.copy_(torch.randn(2, generator=g, dtype=torch.float64))
    x = torch.randn(1, 3, 5, 5, generator=g, dtype=torch.float64)  # signed input: both x+W+ and x-W- terms
    R = torch.randn(1, 2, 3, 3, generator=g, dtype=torch.float64)  # signed relevance
    eps = 1e-9
    ours = propagate(nn.Sequential(conv), x, None, AbsLRPRules(eps=eps, renormalise="off"), start=R).relevance

    xp = nn.functional.pad(x, (1, 1, 1, 1))
    ref = torch.zeros_like(xp)
    for o in range(2):
        for i in range(3):
            for j in range(3):
                patch = xp[0, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3]
                contrib = patch * conv.weight[o]
                z = contrib.sum() + conv.bias[o]
                # Eq. 12: R_i = sum_j (x_i w_ij)^+ / (|sum_k x_k w_kj| + eps) R_j, the bias inside |z| only
                ref[0, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3] += contrib.clamp(min=0) / (z.abs() + eps) * R[0, o, i, j]
    assert torch.allclose(ours, ref[:, :, 1:-1, 1:-1], rtol=1e-10, atol=1e-12)


def test_bilinear_rule_equals_explicit_eq12():
    """The attention products: one Eq. 12 pass per factor of z = a @ b, against loops."""
    g = torch.Generator().manual_seed(3)
    a = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    b = torch.randn(2, 4, 5, generator=g, dtype=torch.float64)
    z = a @ b
    S = torch.randn(2, 3, 5, generator=g, dtype=torch.float64) / z.abs()
    r_a, r_b = _bilinear(a, b, S, False, False)
    ref_a, ref_b = torch.zeros_like(a), torch.zeros_like(b)
    for n in range(2):
        for i in range(3):
            for k in range(4):
                for j in range(5):
                    c = (a[n, i, k] * b[n, k, j]).clamp(min=0) * S[n, i, j]
                    ref_a[n, i, k] += c
                    ref_b[n, k, j] += c
    assert torch.allclose(r_a, ref_a, atol=1e-12) and torch.allclose(r_b, ref_b, atol=1e-12)
    soft = a.abs()  # a factor known to be >= 0 takes the cheaper path: same numbers
    for got, want in zip(_bilinear(soft, b, S, True, False), _bilinear(soft, b, S, False, False)):
        assert torch.allclose(got, want, atol=1e-12)


def test_sign_renormalisation_conserves_each_sign(untrained):
    """renormalise="sign" (the released code's per-sign renormalisation, at every node): the total is the start's
    at every checkpoint; the contrastive start (1 and -1/N) keeps its signed total 1 - (N-1)/N too."""
    net = copy.deepcopy(untrained("resnet18").model).double().eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for contrast, start in (("none", 1.0), ("abslrp", 1e-3)):
        prop = propagate(net, x, None, AbsLRPRules(contrast=contrast))
        for trace in prop.traces():
            assert trace.start == pytest.approx(start, rel=1e-9)
            for name, total, _ in trace.checkpoint_errors():
                assert total == pytest.approx(start, rel=1e-6, abs=1e-12), name


# --------------------------------------------------------------------------- the method on real networks


@pytest.fixture(scope="module")
def mosaic(lite0):
    pool = gallery_pool()
    names = ["chelsea", "coffee", "rocket", "camera"]  # tabby, espresso, missile, tripod on Lite0
    m = build_mosaic(lite0, [pool[n] for n in names], names)
    assert len(set(m.classes)) == 4
    return m


def test_contrastive_on_lite0_mosaic(lite0, mosaic):
    """Each quadrant's class: most (> 50 %) of the positive map lies in that quadrant, for >= 3 of 4 quadrants."""
    maps = explain_batch(lite0, mosaic.x, "abslrp", target=mosaic.classes)  # one call, four targets
    masks = quadrant_masks(*mosaic.size)
    shares = []
    for q, res in enumerate(maps):
        assert res.target == mosaic.classes[q]
        pos = METHODS["abslrp"].display_map(res.attribution, res.options)  # the positive part, as shown
        assert (pos >= 0).all()
        shares.append(float(pos[masks[q]].sum() / pos.sum()))
    assert sum(s > 0.5 for s in shares) >= 3, shares
    # Why renormalise="sign" is the default: Eq. 12 alone lets the -1/N share, amplified through the other
    # classes' near-zero logits, swamp the target's (the deviation documented in explainers/methods/abslrp/rules.py).
    raw = explain(lite0, mosaic.x, "abslrp", target=mosaic.classes[0], renormalise="off").attribution
    assert float(raw.clamp(min=0).sum()) < 0.01 * float(raw.abs().sum())


def test_clrp_and_none_contrasts(lite0, mosaic):
    target = mosaic.classes[0]
    clrp = explain(lite0, mosaic.x, "abslrp", target=target, contrast="clrp").attribution
    assert abs(float(clrp.sum())) < 1e-4  # unit-mass target map minus unit-mass dual map
    assert float(clrp.clamp(min=0).sum()) > 0 and float(clrp.clamp(max=0).sum()) < 0
    none = explain(lite0, mosaic.x, "abslrp", target=target, contrast="none").attribution
    assert (none >= 0).all() and float(none.sum()) == pytest.approx(1.0, rel=1e-3)  # one-hot start, conserved


def test_signed_is_display_only(lite0, mosaic):
    spec = METHODS["abslrp"]
    assert spec.option("signed").display and not spec.option("contrast").display
    compute, shown = spec.split_options(spec.resolve_options({"signed": True}))
    assert "signed" not in compute and shown == {"signed": True}
    res = explain(lite0, mosaic.x, "abslrp", target=mosaic.classes[1])
    assert float(res.attribution.min()) < 0 < float(res.attribution.max())  # the raw map is signed
    assert torch.equal(spec.display_map(res.attribution, {"signed": True}), res.attribution)
    assert torch.equal(spec.display_map(res.attribution, {}), res.attribution.clamp(min=0))


@pytest.mark.parametrize("model", ["resnet18", "resnet50", "vgg16"])
def test_runs_on_cnns_hook_clean(untrained, model):
    bundle = untrained(model)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    hooks = count_hooks(bundle.model)
    flags = [p.requires_grad for p in bundle.model.parameters()]
    maps = explain_batch(bundle, x, "abslrp", target=[3, 7])  # one image, two targets
    assert count_hooks(bundle.model) == hooks and [p.requires_grad for p in bundle.model.parameters()] == flags
    for res in maps:
        assert res.attribution.shape == (64, 64) and torch.isfinite(res.attribution).all()
        assert res.attribution.abs().sum() > 0


def test_batched_targets_match_single_calls(untrained):
    """Images and targets of a batch do not interact (float64: the per-sign renormalisation of the contrastive
    start divides nearly equal masses, so float32 batches of different sizes agree only to ~1e-3)."""
    net = copy.deepcopy(untrained("resnet18").model).double().eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    pair = propagate(net, x, torch.tensor([3, 7]), AbsLRPRules()).relevance
    one = propagate(net, x[1:], torch.tensor([7]), AbsLRPRules()).relevance
    assert torch.allclose(pair[1], one[0], rtol=0, atol=1e-9 * one.abs().max())
    assert not torch.allclose(pair[0], propagate(net, x[:1], torch.tensor([7]), AbsLRPRules()).relevance[0])


def test_vit_pixel_level_map_and_constants_in_trace(untrained):
    bundle = untrained(VIT)
    attn = [m for m in bundle.model.modules() if hasattr(m, "fused_attn")]
    fused = [m.fused_attn for m in attn]
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    res = explain(bundle, x, "abslrp")
    assert [m.fused_attn for m in attn] == fused  # the shared model keeps its fused kernel
    a = res.attribution
    assert a.shape == (224, 224) and torch.isfinite(a).all()
    patches = a.reshape(14, 16, 14, 16).permute(0, 2, 1, 3).reshape(196, 256)
    assert (patches.std(1) > 1e-6 * a.abs().max()).float().mean() > 0.9  # detail inside the 16x16 patches
    layers = dict(res.layers)
    assert layers["cls_token (constant)"] != 0 and layers["pos_embed (constant)"] != 0
    assert {n.kind for n in res.trace.nodes} >= {"constant", "input"}
    # with a one-hot start every unit of relevance ends at the pixels or at the two constants (per-sign conservation)
    one = explain(bundle, x, "abslrp", contrast="none")
    ends = dict(one.layers)
    total = one.trace.total_at("input") + ends["cls_token (constant)"] + ends["pos_embed (constant)"]
    assert total == pytest.approx(1.0, rel=1e-3)


def test_vit_float32_map_close_to_float64(untrained):
    """float32 map vs the same propagation in float64."""
    bundle = untrained(VIT)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    r32 = propagate(bundle.model, x, None, AbsLRPRules()).relevance.sum(1)
    net64 = copy.deepcopy(bundle.model).double().eval()
    r64 = propagate(net64, x.double(), None, AbsLRPRules()).relevance.sum(1)
    # Eq. 12 divides by |z| (LayerNorm: by |x - mean|), so units whose inputs nearly cancel amplify float32
    # rounding; on this random-weight ViT the float32 map stays within ~1 % (L1) of the float64 one.
    assert (r32.double() - r64).abs().sum() < 0.05 * r64.abs().sum()


def test_the_default_display_is_drawn_as_a_non_negative_map():
    """absLRP shows the positive part by default (``signed`` is display-only): the app then draws it on a
    sequential colormap from 0, as the other non-negative maps; the signed map keeps the diverging one."""
    from explainers import METHODS

    spec = METHODS["abslrp"]
    assert spec.signed and not spec.shown_signed({}) and spec.shown_signed({"signed": True})
    raw = torch.tensor([[-2.0, 1.0], [0.5, -0.1]])
    assert (spec.display_map(raw, {}) >= 0).all()
    assert all(METHODS[m].shown_signed({}) == METHODS[m].signed for m in METHODS if m != "abslrp")
