"""Gradient baselines: each equals captum's own ``attribute`` call (channel-summed), follows the target class,
stays signed where the method is signed, and leaves no hook behind."""

from __future__ import annotations

import pytest
import torch

from explainers import METHODS, explain
from explainers.guard import count_hooks, model_guard
from explainers.methods.gradients import baseline_tensor

TARGETS = (281, 954)  # tabby cat (Lite0's top class on chelsea) and banana


def captum_map(bundle, x, cls_name: str, target: int, wrap=None, **kwargs) -> torch.Tensor:
    """captum's own call; the guard only provides gradients and cleanup."""
    import captum.attr

    with model_guard(bundle) as model:
        method = getattr(captum.attr, cls_name)(model)
        if wrap:
            method = getattr(captum.attr, wrap)(method)
        return method.attribute(x.clone().requires_grad_(True), target=target, **kwargs).detach().sum(1)[0]


CASES = {
    "saliency": ({}, "Saliency", None, lambda b, x: {"abs": True}),
    "input-x-gradient": ({}, "InputXGradient", None, lambda b, x: {}),
    "integrated-gradients": ({"steps": 8, "baseline": "black"}, "IntegratedGradients", None,
                             lambda b, x: {"n_steps": 8, "internal_batch_size": 16,
                                           "baselines": baseline_tensor(b, x, "black")}),
    "guided-backprop": ({}, "GuidedBackprop", None, lambda b, x: {}),
    "deeplift": ({"baseline": "blurred"}, "DeepLift", None,
                 lambda b, x: {"baselines": baseline_tensor(b, x, "blurred")}),
}


@pytest.mark.parametrize("method", list(CASES))
def test_equals_captum_and_follows_target(lite0, gallery_x, method):
    opts, cls_name, wrap, kwargs = CASES[method]
    x = gallery_x["chelsea"]
    before = count_hooks(lite0.model)
    maps = [explain(lite0, x, method, target=t, **opts) for t in TARGETS]
    assert count_hooks(lite0.model) == before
    ref = captum_map(lite0, x, cls_name, TARGETS[0], wrap, **kwargs(lite0, x))
    assert maps[0].attribution.shape == (224, 224) and maps[0].native_resolution == (224, 224)
    assert torch.allclose(maps[0].attribution, ref, atol=1e-6, rtol=0)
    assert not torch.allclose(maps[0].attribution, maps[1].attribution, atol=1e-6)
    if METHODS[method].signed:
        assert maps[0].signed and maps[0].attribution.min() < 0 < maps[0].attribution.max()
    else:
        assert maps[0].attribution.min() >= 0


def test_smoothgrad_equals_seeded_noise_tunnel(lite0, gallery_x):
    x = gallery_x["chelsea"]
    opts = {"samples": 4, "noise_level": 0.15, "batch_size": 4, "seed": 3}
    maps = [explain(lite0, x, "smoothgrad", target=t, **opts).attribution for t in TARGETS]
    state = torch.get_rng_state()
    torch.manual_seed(3)
    ref = captum_map(lite0, x, "Saliency", TARGETS[0], "NoiseTunnel", nt_type="smoothgrad", nt_samples=4,
                     nt_samples_batch_size=4, stdevs=0.15 * float(x.max() - x.min()), abs=False)
    torch.set_rng_state(state)
    assert torch.allclose(maps[0], ref, atol=1e-6, rtol=0)
    assert not torch.allclose(maps[0], maps[1], atol=1e-6)
    # reproducible (cached maps), and the global RNG is left alone
    before = torch.get_rng_state()
    again = explain(lite0, x, "smoothgrad", target=TARGETS[0], **opts).attribution
    assert torch.equal(again, maps[0]) and torch.equal(torch.get_rng_state(), before)


def test_integrated_gradients_blurred_baseline(lite0, gallery_x):
    x = gallery_x["chelsea"]
    black = explain(lite0, x, "integrated-gradients", steps=4).attribution
    blurred = explain(lite0, x, "integrated-gradients", steps=4, baseline="blurred").attribution
    assert not torch.allclose(black, blurred)
    # black is black in pixel space: the baseline denormalises to zeros
    assert torch.allclose(lite0.denormalize(baseline_tensor(lite0, x, "black")), torch.zeros_like(x), atol=1e-6)


def test_guided_backprop_keeps_model_clean_on_resnet(untrained, gallery_x):
    bundle = untrained("resnet18")
    before = count_hooks(bundle.model)
    res = explain(bundle, gallery_x["chelsea"], "guided-backprop")
    assert res.attribution.shape == (224, 224) and count_hooks(bundle.model) == before


@pytest.mark.parametrize("method", ["saliency", "input-x-gradient", "smoothgrad"])
def test_pixel_methods_run_on_vit(untrained, gallery_x, method):
    opts = {"samples": 2, "batch_size": 2} if method == "smoothgrad" else {}
    res = explain(untrained("vit_tiny_patch16_224"), gallery_x["chelsea"], method, **opts)
    assert res.attribution.shape == (224, 224) and torch.isfinite(res.attribution).all()


def test_deeplift_is_not_offered_for_resnets():
    """captum's DeepLift raises on torchvision ResNets (a ReLU module used twice per block)."""
    assert not METHODS["deeplift"].supports("resnet") and METHODS["deeplift"].supports("efficientnet")
