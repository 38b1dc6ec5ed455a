"""SRD (issue #5): sharing ratios, conservation, ERFs, stencils, the PFV index and the ``srd`` method.

Property tests run in float64 on private double copies of the models (the session fixtures stay float32);
random ResNet-50 / VGG-16 at 64x64 keep every kind of segment (stem max pool, downsample blocks, pool + conv)
while staying fast; the real EfficientNet-Lite0 runs at 96x96.
"""

from __future__ import annotations

import copy
import dataclasses
import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from explainers import METHODS, UnsupportedModel, explain, explain_batch
from explainers.images import GALLERY, image_hash
from explainers.methods import srd
from explainers.methods.srd.rules import SRDRules, conv_backward, srd_graph
from explainers.methods.srd.stencils import compile_stencils, probe_stencils
from explainers.propagation import build_graph, forward


def _double(bundle, random_biases: bool = False):
    """A float64 twin of a bundle (own model copy and lock), for 1e-8 / 1e-10 tolerances.

    ``random_biases``: freshly initialised torchvision models have zero conv biases and identity BatchNorm
    statistics, so b' = 0 everywhere and the bias shares (App. B Eq. 11) would go untested; give them
    seeded non-trivial BN statistics, affine parameters and conv biases."""
    model = copy.deepcopy(bundle.model).double().eval()
    if random_biases:
        g = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                    m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
                    m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g))
                    m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
                elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                    m.bias.copy_(0.05 * torch.randn(m.bias.shape, generator=g))
    return dataclasses.replace(bundle, model=model, lock=threading.RLock())


@pytest.fixture(scope="module")
def doubles(untrained, lite0):
    return {"resnet50": _double(untrained("resnet50"), random_biases=True),
            "resnet18": _double(untrained("resnet18"), random_biases=True),
            "vgg16": _double(untrained("vgg16"), random_biases=True), "efficientnet_lite0": _double(lite0)}


SIZES = {"resnet50": 64, "resnet18": 64, "vgg16": 64, "efficientnet_lite0": 96}


def _x(size: int, seed: int = 0, batch: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=g, dtype=torch.float64)


# --------------------------------------------------------------------------- Eqs. 5-6 per kernel offset


def _explicit(x, W, b, R, stride, pad, groups, mode):
    """Eq. 5-6 and App. B Eq. 11 literally: v_hat_(i->j) for every output j and kernel offset o, mu = <v_hat,
    v_j> / |v_j|^2, R_i = sum_j mu_(i->j) R_j.  Bias shared by |x_i| over RF_j ('norm', paper) or by
    |W_o x_i| ('contribution', released code); padding positions contribute nothing."""
    C, H, Wd = x.shape
    Co, Cg, k, _ = W.shape
    v = F.conv2d(x[None], W, b, stride, pad, 1, groups)[0]
    Ho, Wo = v.shape[-2:]
    out = torch.zeros(H, Wd, dtype=x.dtype)
    mus = torch.zeros(Ho, Wo, k * k, dtype=x.dtype)
    for jr in range(Ho):
        for jc in range(Wo):
            vj = v[:, jr, jc]
            contribs = []
            for o in range(k * k):
                ir, ic = jr * stride - pad + o // k, jc * stride - pad + o % k
                if not (0 <= ir < H and 0 <= ic < Wd):
                    contribs.append(None)
                    continue
                xi = x[:, ir, ic]
                grp = [co // (Co // groups) for co in range(Co)]  # each output channel sees its group's inputs
                wx = torch.stack([W[co, :, o // k, o % k] @ xi[grp[co] * Cg:(grp[co] + 1) * Cg] for co in range(Co)])
                contribs.append((ir, ic, xi, wx))
            norms = [0.0 if c is None else float(c[2].norm() if mode == "norm" else c[3].norm()) for c in contribs]
            total = sum(norms)
            for o, c in enumerate(contribs):
                if c is None:
                    continue
                ir, ic, xi, wx = c
                v_hat = wx + b * (norms[o] / total)
                mu = float(v_hat @ vj) / float(vj @ vj)
                mus[jr, jc, o] = mu
                out[ir, ic] += mu * R[jr, jc]
    return out, mus


@pytest.mark.parametrize("groups,mode", [(1, "norm"), (1, "contribution"), (4, "norm"), (4, "contribution")])
def test_fast_conv_step_equals_per_offset_sharing_ratios(groups, mode):
    g = torch.Generator().manual_seed(3)
    C, Co = (3, 5) if groups == 1 else (4, 4)
    x = torch.randn(C, 9, 8, generator=g, dtype=torch.float64)
    W = torch.randn(Co, C // groups, 3, 3, generator=g, dtype=torch.float64)
    b = torch.randn(Co, generator=g, dtype=torch.float64)
    v = F.conv2d(x[None], W, b, 2, 1, 1, groups)
    R = torch.randn(v.shape[-2:], generator=g, dtype=torch.float64)
    expected, mus = _explicit(x, W, b, R, 2, 1, groups, mode)
    assert torch.allclose(mus.sum(-1), torch.ones_like(R), atol=1e-12)  # Eq. 6: the ratios into v_j sum to 1
    gv = R * v / v.pow(2).sum(1, keepdim=True)
    gx = conv_backward(x[None], gv, W, b, stride=2, padding=1, groups=groups, bias_share=mode)
    fast = (x[None] * gx).sum(1)[0]
    assert (fast - expected).abs().max() < 1e-10


def test_direct_conv_stencil_equals_explicit_ratios():
    """The one-conv stencil (a GEMM + unfold) reproduces the per-offset mu of Eq. 6 for a stride-2 padded conv."""
    torch.manual_seed(5)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, 2, 1), nn.ReLU(), nn.Conv2d(6, 4, 3, 2, 1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).double().eval()
    x = torch.randn(1, 3, 9, 9, dtype=torch.float64)
    graph = build_graph(net, "tiny", example=x)
    info = srd_graph(graph)
    rules = SRDRules(info=info)
    env = forward(graph, x, inplace=False)
    first = info.acts[0]
    (st,) = compile_stencils(graph, env, rules, first, x)
    R = torch.zeros(st.sink_size, dtype=torch.float64)
    _, mus = _explicit(x[0], net[0].weight.detach(), net[0].bias.detach(), R, 2, 1, 1, "norm")
    assert (st.coef.T.reshape(*st.sink_size, 9) - mus).abs().max() < 1e-10
    (probed,) = probe_stencils(graph, env, rules, first, x)  # and the rule code's walk agrees
    assert (probed.coef - st.coef).abs().max() < 1e-10


# --------------------------------------------------------------------------- sum of ratios, conservation


@pytest.mark.parametrize("model,bias_share", [("resnet50", "norm"), ("resnet18", "norm"), ("vgg16", "norm"),
                                              ("efficientnet_lite0", "norm"), ("efficientnet_lite0", "contribution")])
def test_sharing_ratios_into_every_pfv_sum_to_one(doubles, model, bias_share):
    bundle = doubles[model]
    x = _x(SIZES[model])
    p = srd.forward_pass(bundle, x)
    kinds = set()
    for node in p.info.acts:
        stencils = p.stencils_for(node, bias_share)
        total = sum(s.coef.sum(0) for s in stencils)
        assert (total - 1).abs().max() < 1e-8, f"{model} {p.info.names[node]}"
        kinds.add(len(stencils))
    if model != "vgg16":
        assert max(kinds) >= 2  # residual segments: contributors from two earlier non-linear layers (Eq. 1)


@pytest.mark.parametrize("model", ["resnet50", "vgg16", "efficientnet_lite0"])
@pytest.mark.parametrize("start", ["contrastive", "plain"])
def test_input_relevance_equals_start_relevance(doubles, model, start):
    bundle = doubles[model]
    res = srd.srd_maps(bundle, _x(SIZES[model], batch=2), None, start=start, layers=("low", "high", "input"))
    start_total = res.start_total
    assert (start_total.abs() > 0).all()
    for name, total, cut in res.totals:
        if cut:  # every non-linear layer that all relevance passes, and the pixels
            assert torch.allclose(total, start_total, rtol=1e-6, atol=0), f"{model} {name}"
    for key in ("low", "high", "input"):
        assert torch.allclose(res.maps[key].flatten(1).sum(1), start_total, rtol=1e-6, atol=0)


def test_spatial_mean_start_and_contribution_bias_share_conserve(doubles):
    bundle = doubles["resnet50"]
    res = srd.srd_maps(bundle, _x(64), None, start="spatial-mean", bias_share="contribution", layers=("input",))
    assert abs(float(res.start_total[0])) < 1e-9  # the released code's start has zero mean
    assert abs(float(res.maps["input"].sum() - res.start_total[0])) < 1e-9


# --------------------------------------------------------------------------- ERF


def test_erf_sums_to_one_and_is_zero_outside_the_receptive_field(doubles):
    bundle = doubles["efficientnet_lite0"]
    x = _x(160, seed=1)
    p = srd.forward_pass(bundle, x)
    layer = [i for i in srd.layers(bundle, (160, 160)) if i.stride == 4][-1].name
    h, w = p.grid(layer)
    positions = [(h // 2, w // 3), (1, w - 2)]
    erfs = p.erf(layer, positions, method="walk")
    for pos, e in zip(positions, erfs):
        assert abs(float(e.sum()) - 1) < 1e-8
        r0, r1, c0, c1 = p.box(layer, pos)
        assert (r1 - r0 + 1) * (c1 - c0 + 1) < 160 * 160 / 4  # a real, bounded receptive field
        outside = e.clone()
        outside[r0:r1 + 1, c0:c1 + 1] = 0
        assert outside.abs().max() == 0
        # the box really is the receptive field: changing every pixel outside it leaves the PFV unchanged
        noisy = x.clone()
        mask = torch.ones_like(noisy, dtype=torch.bool)
        mask[..., r0:r1 + 1, c0:c1 + 1] = False
        noisy[mask] = torch.randn(int(mask.sum()), dtype=torch.float64)
        q = srd.forward_pass(bundle, noisy)
        assert torch.allclose(q.vector(layer, pos), p.vector(layer, pos), rtol=0, atol=1e-10)
        assert not torch.allclose(q.vectors(layer), p.vectors(layer))


@pytest.mark.parametrize("model,bias_share", [("resnet50", "norm"), ("efficientnet_lite0", "contribution")])
def test_batched_erf_stencils_equal_one_hot_walks(doubles, model, bias_share):
    bundle = doubles[model]
    x = _x(64, seed=2)
    p = srd.forward_pass(bundle, x)
    h, w = p.grid("low")
    positions = [(r, c) for r in range(h) for c in range(w)]
    fast = p.erf("low", positions, bias_share, method="stencils")
    slow = p.erf("low", positions, bias_share, method="walk")
    assert fast.shape == (len(positions), 64, 64)
    assert (fast - slow).abs().max() < 1e-10
    assert torch.allclose(fast.sum((1, 2)), torch.ones(len(positions), dtype=torch.float64), atol=1e-8)
    # one PFV through the public function
    single = srd.erf(bundle, x, "low", positions[0], bias_share)
    assert single.shape == (64, 64) and (single - slow[0]).abs().max() < 1e-10


def test_subconcepts_are_the_sharing_ratios_of_the_previous_layer(doubles):
    bundle = doubles["efficientnet_lite0"]
    p = srd.forward_pass(bundle, _x(96, seed=4))
    layer = srd.layers(bundle, (96, 96))[-3].name  # a depthwise layer: a k x k window of sub-concepts
    subs = p.subconcepts(layer, (1, 1), top=0)
    assert abs(sum(s.mu for s in subs) - 1) < 1e-8
    assert subs == sorted(subs, key=lambda s: -s.mu)
    node = p.node(layer)
    ratios = {(p.info.names[st.source], pos): mu for st in p.stencils_for(node) for pos, mu in st.ratios((1, 1))}
    assert {(s.layer, s.position): s.mu for s in subs} == pytest.approx(ratios, abs=1e-12)
    top = p.subconcepts(layer, (1, 1), top=3)
    assert top == subs[:3]


# --------------------------------------------------------------------------- PFV index


def test_nearest_pfvs_finds_the_query_itself_first(lite0, tmp_path, monkeypatch):
    items = [(f"{k}.png", GALLERY[k].png_bytes()) for k in ("chelsea", "coffee", "rocket")]
    index = srd.build_index(lite0, "low", items, cache=tmp_path)
    assert len(index) == 3 * 49 and index.layer == "bn2.act"
    chelsea = image_hash(items[0][1])
    p = srd.forward_pass(lite0, lite0.preprocess(GALLERY["chelsea"].image()))
    for pos in [(3, 3), (0, 6)]:
        best = index.nearest_pfvs(p.vector("low", pos), k=3)
        assert (best[0].image_key, best[0].position) == (chelsea, pos)
        assert best[0].similarity == pytest.approx(1.0, abs=1e-5)
        assert best[0].similarity >= best[1].similarity >= best[2].similarity
        others = index.nearest_pfvs(p.vector("low", pos), k=3, exclude_image=chelsea)
        assert all(n.image_key != chelsea for n in others)
    # cached on disk per model + layer + image: a second build runs no forward pass
    files = list(tmp_path.rglob("*.pt"))
    assert len(files) == 3 and all("bn2.act" in str(f) for f in files)
    monkeypatch.setattr(srd, "forward_pass", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    again = srd.build_index(lite0, "low", items, cache=tmp_path)
    assert torch.equal(again.vectors, index.vectors)


def test_cache_dir_is_overridable(monkeypatch, tmp_path):
    monkeypatch.setenv(srd.CACHE_ENV, str(tmp_path / "c"))
    assert srd.cache_dir() == tmp_path / "c"
    monkeypatch.delenv(srd.CACHE_ENV)
    assert srd.cache_dir().name == "relevance-explorer"


def test_neighbour_crop_is_around_its_erf(lite0):
    items = {image_hash(GALLERY["coffee"].png_bytes()): ("coffee.png", GALLERY["coffee"].png_bytes())}
    nb = srd.Neighbour(next(iter(items)), "coffee.png", "blocks.1.1.bn2.act", (10, 12), 0.9)
    (view,) = srd.neighbour_views(lite0, [nb], items)
    assert view.crop.dtype.name == "uint8" and view.crop.ndim == 3
    assert 32 <= view.crop.shape[0] < 224 and 32 <= view.crop.shape[1] < 224  # a crop around the ERF
    assert abs(float(view.erf.sum()) - 1) < 1e-4


# --------------------------------------------------------------------------- the method


def test_srd_method_resolutions_and_batching(lite0, gallery_x, untrained):
    spec = METHODS["srd"]
    assert spec.family == "srd" and not spec.supports(untrained("vit_tiny_patch16_224")) and spec.supports(lite0)
    x = gallery_x["chelsea"]
    low = explain(lite0, x, "srd", resolution="low")
    assert low.native_resolution == (7, 7) and low.attribution.shape == (224, 224)
    assert low.extras["grid"].shape == (7, 7) and low.extras["layer"] == "bn2.act"
    assert "cat" in low.target_name.lower()
    high = explain(lite0, x, "srd", resolution="high")
    assert high.native_resolution == (28, 28)
    named = explain(lite0, x, "srd", layer="blocks.1.1.bn2.act")
    assert named.native_resolution == (56, 56)
    full = explain(lite0, x, "srd")
    assert full.native_resolution == (224, 224)
    assert float(full.attribution.sum()) == pytest.approx(full.extras["start_total"], rel=1e-4)
    both = explain_batch(lite0, torch.cat([x, gallery_x["coffee"]]), "srd", resolution="low")
    assert torch.allclose(both[0].attribution, low.attribution, atol=1e-5)
    assert both[1].target_name.lower().startswith("espresso")


def test_vit_gets_a_clear_unsupported_message(lite0, untrained):
    """Decided from the graph (attention, patch tokens), not from a family label: relabelling a CNN as a
    'vit' changes nothing, a real ViT is refused with one line."""
    relabelled = dataclasses.replace(lite0, name="vit_tiny_patch16_224", family="vit")
    assert METHODS["srd"].supports(relabelled)
    vit = untrained("vit_tiny_patch16_224")
    with pytest.raises(UnsupportedModel, match="SRD needs a convolutional network") as err:
        explain(vit, torch.zeros(1, 3, 224, 224), "srd")
    assert "\n" not in str(err.value)
    with pytest.raises(UnsupportedModel, match="convolutional grid"):
        srd.erf(vit, torch.zeros(1, 3, 224, 224), "low", (0, 0))


def test_model_is_left_clean(lite0, gallery_x):
    from explainers.guard import count_hooks

    model = lite0.model
    before = count_hooks(model)
    flags = [p.requires_grad for p in model.parameters()]
    explain(lite0, gallery_x["rocket"], "srd")
    p = srd.forward_pass(lite0, gallery_x["rocket"])
    p.erf("low", [(1, 1)])
    p.subconcepts("low", (1, 1))
    assert count_hooks(model) == before
    assert [q.requires_grad for q in model.parameters()] == flags
    assert all(q.grad is None for q in model.parameters())
    assert not model.training
