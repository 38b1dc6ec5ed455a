"""absLRP ``preset="released-code"`` against tests/reference_abslrp.py, an independent transcription of the
authors' released code (hooks + autograd with "abs copies" of every leaf, as the code works; no engine code),
and the method-level behaviour of the preset.

Untrained timm ResNets zero-initialise the last BatchNorm of every block (gamma = 0), which silences every main
branch; ``seeded_bn`` gives every BN seeded random statistics and affine parameters (some gamma < 0) so that
every rule of the code, including the sign of gamma in the one-step BN rule, is exercised.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from explainers import explain, explain_batch
from explainers.errors import InvalidOption, UnsupportedModel
from explainers.methods.abslrp import AbsLRPRules, ReleasedCodeRules
from explainers.propagation import propagate

sys.path.insert(0, str(Path(__file__).parent))
import reference_abslrp as ref  # noqa: E402

# float64 maps, max|diff| / max|map|: measured 3e-13 on ResNet-50 and below 1e-14 on the toy nets; 1e-9 leaves
# room for summation-order differences and is still far below any difference of rules (the nearest variant,
# the paper's BN instead of the code's, differs by > 1e-2).
TOL = 1e-9


def seeded_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(1 + 0.5 * torch.randn(c, generator=g))
                m.bias.copy_(0.2 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
    return model


def engine_map(net: nn.Module, x: torch.Tensor, rules=None) -> torch.Tensor:
    """The preset's map as explainers/methods/abslrp/method.py builds it, on a raw nn.Module."""
    y = net(x).argmax(-1)
    rel = propagate(net, torch.cat([x, x]), torch.cat([y, y]), rules or ReleasedCodeRules()).relevance
    rel = rel / rel.flatten(1).abs().sum(1).view(-1, 1, 1, 1)
    m = (rel[: len(x)] - rel[len(x):]).sum(1)
    return m / m.flatten(1).abs().amax(1).view(-1, 1, 1)


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def toy_sequential() -> nn.Module:
    """Conv with bias, BN (gamma of both signs), ReLU, Identity and Dropout on signed inputs, max pool, avg pool,
    Flatten, a linear layer with bias: every leaf step of the code outside residual blocks."""
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.Identity(), nn.ReLU(inplace=True),
        nn.MaxPool2d(2), nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.Dropout(0.5),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    return seeded_bn(net, 3).double().eval()


def test_toy_sequential_equals_reference():
    net = toy_sequential()
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    want = ref.released_map(net, x)
    assert rel_diff(engine_map(net, x), want) < TOL


@pytest.fixture(scope="module")
def small_timm_resnet():
    """A timm ResNet with one BasicBlock per stage (identity and downsample shortcuts), seeded."""
    from timm.models.resnet import BasicBlock, ResNet

    torch.manual_seed(0)
    return seeded_bn(ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10), 1).double().eval()


def test_small_resnet_equals_reference(small_timm_resnet):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert rel_diff(engine_map(small_timm_resnet, x), ref.released_map(small_timm_resnet, x)) < TOL


def test_residual_branches_get_unit_mass(small_timm_resnet):
    """The code's residual rule: each branch leaves the add with mass 1, whatever their magnitudes (notes: "the
    branch ratio is lost"); the paper preset keeps the ratio instead."""
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    code = propagate(small_timm_resnet, x, None, ReleasedCodeRules(contrast="none")).traces()[0].blocks
    assert all(b.skip == pytest.approx(1.0, rel=1e-12) and b.main == pytest.approx(1.0, rel=1e-12) for b in code)
    paper = propagate(small_timm_resnet, x, None, AbsLRPRules(contrast="none")).traces()[0].blocks
    assert all(b.skip + b.main == pytest.approx(1.0, rel=1e-9) for b in paper)  # per-sign conservation
    assert max(abs(b.skip - b.main) for b in paper) > 0.05  # the paper's Eq. 12 shares are not 50/50


@pytest.mark.slow
def test_resnet50_equals_reference(untrained):
    """The issue's check: a seeded timm ResNet-50 (float64, 32x32 input to keep the reference's per-leaf autograd
    cheap; every stage, shortcut and BN is exercised at any size)."""
    net = seeded_bn(copy.deepcopy(untrained("timm_resnet50").model)).double().eval()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert rel_diff(engine_map(net, x), ref.released_map(net, x)) < TOL


def test_preset_through_explain(untrained, small_timm_resnet):
    """explain(..., preset="released-code") is the same map as the rule set (float32 model: rounding only), and
    contrast="clrp" is the same two passes under this preset (uniform or unit dual start: equal after unit mass)."""
    net = copy.deepcopy(small_timm_resnet).float().eval()
    bundle = dataclasses.replace(untrained("timm_resnet50"), model=net, class_names=tuple(map(str, range(10))))
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    res = explain(bundle, x, "abslrp", preset="released-code")
    want = engine_map(copy.deepcopy(small_timm_resnet), x.double())[0].float()
    assert float(res.attribution.abs().max()) == pytest.approx(1.0, abs=1e-6)  # MAX_TO_ONE
    # float32 vs float64: Eq. 12 divides by |z|, so near-cancelling units amplify rounding; measured ~1e-5
    assert rel_diff(res.attribution, want) < 1e-3
    clrp = explain(bundle, x, "abslrp", preset="released-code", contrast="clrp").attribution
    assert torch.equal(clrp, res.attribution)
    paper = explain(bundle, x, "abslrp").attribution
    assert rel_diff(paper / paper.abs().max(), res.attribution) > 1e-2  # the presets are different methods
    assert res.extras["preset"] == "released-code"
    with pytest.raises(InvalidOption):
        explain(bundle, x, "abslrp", preset="released-code", renormalise="off")


def test_released_code_rejects_vit(untrained):
    with pytest.raises(UnsupportedModel):
        explain_batch(untrained("vit_tiny_patch16_224"), torch.zeros(1, 3, 224, 224), "abslrp",
                      preset="released-code")


@pytest.mark.slow
def test_released_code_contrastive_on_lite0_mosaic(lite0):
    """The code's map is contrastive too: for each quadrant's class most (> 50 %) of the positive map lies in that
    quadrant (measured 0.76 / 0.95 / 0.81 / 0.89 on the trained Lite0)."""
    from explainers import METHODS
    from explainers.metrics.gae import quadrant_masks
    from explainers.mosaic import build_mosaic, gallery_pool

    pool = gallery_pool()
    names = ["chelsea", "coffee", "rocket", "camera"]
    m = build_mosaic(lite0, [pool[n] for n in names], names)
    maps = explain_batch(lite0, m.x, "abslrp", target=m.classes, preset="released-code")
    masks = quadrant_masks(*m.size)
    for q, res in enumerate(maps):
        shown = METHODS["abslrp"].display_map(res.attribution, res.options)
        assert float(shown[masks[q]].sum() / shown.sum()) > 0.5, q
