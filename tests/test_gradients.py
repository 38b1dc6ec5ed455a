"""Gradient baselines: each equals captum's own ``attribute`` call (channel-summed), follows the target class,
stays signed where the method is signed, and leaves no hook behind."""

from __future__ import annotations

import pytest
import torch

from explainers import METHODS, explain, explain_batch
from explainers.guard import count_hooks, model_guard
from explainers.methods.gradients import baseline_tensor
from explainers.methods.library_view import ReLU6AsReLUs, library_view
from tests.hand_written import hand_guided_backprop, plain_gradient

TARGETS = (281, 954)  # tabby cat (Lite0's top class on chelsea) and banana


def captum_map(bundle, x, cls_name: str, target: int, wrap=None, view=None, **kwargs) -> torch.Tensor:
    """captum's own call (on the library view of the model when ``view`` names a form); the guard only
    provides gradients and cleanup."""
    import captum.attr

    with model_guard(bundle) as model:
        method = getattr(captum.attr, cls_name)(library_view(model, view) if view else model)
        if wrap:
            method = getattr(captum.attr, wrap)(method)
        return method.attribute(x.clone().requires_grad_(True), target=target, **kwargs).detach().sum(1)[0]


CASES = {
    "saliency": ({}, "Saliency", None, lambda b, x: {"abs": True}),
    "input-x-gradient": ({}, "InputXGradient", None, lambda b, x: {}),
    "integrated-gradients": ({"steps": 8, "baseline": "black"}, "IntegratedGradients", None,
                             lambda b, x: {"n_steps": 8, "internal_batch_size": 16,
                                           "baselines": baseline_tensor(b, x, "black")}),
    "guided-backprop": ({}, "GuidedBackprop", None, lambda b, x: {"view": "guided"}),
    "deeplift": ({"baseline": "blurred"}, "DeepLift", None,
                 lambda b, x: {"baselines": baseline_tensor(b, x, "blurred"), "view": "rescale"}),
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


def test_smoothgrad_explain_equals_explain_batch_row(lite0, gallery_x):
    """Noise level and noise are per image: an image's map does not depend on the batch around it."""
    opts = {"samples": 3, "noise_level": 0.15, "batch_size": 2, "seed": 5}
    xs = torch.cat([gallery_x["chelsea"], gallery_x["coffee"]])
    batch = explain_batch(lite0, xs, "smoothgrad", target=TARGETS[0], **opts)
    for i in range(2):
        alone = explain(lite0, xs[i:i + 1], "smoothgrad", target=TARGETS[0], **opts).attribution
        # each image's noisy copies go through the model in the same chunks either way: bit-identical
        assert torch.equal(batch[i].attribution, alone)
    assert not torch.allclose(batch[0].attribution, batch[1].attribution)


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


def test_deeplift_is_not_offered_for_resnets(untrained, lite0):
    """captum's DeepLift raises on torchvision ResNets (a ReLU module used twice per block): the graph shows it."""
    assert not METHODS["deeplift"].supports(untrained("resnet18")) and METHODS["deeplift"].supports(lite0)
    assert "its own module" in METHODS["deeplift"].why_unsupported(untrained("resnet18"))


# ------------------------------------------------------------------ EfficientNet-Lite's ReLU6 (library view)


def test_library_view_keeps_the_function(lite0, gallery_x):
    """Both forms compute Lite0's logits; ResNets and VGGs need no view."""
    x = gallery_x["chelsea"]
    with torch.no_grad():
        for form in ("guided", "rescale"):
            view = library_view(lite0.model, form)
            assert view is library_view(lite0.model, form)  # cached
            assert not any(type(m) is torch.nn.ReLU6 for m in view.modules())
            assert torch.allclose(view(x), lite0.model(x), atol=1e-4)
    t = torch.linspace(-3, 9, 121)
    assert torch.allclose(ReLU6AsReLUs()(t), torch.nn.functional.relu6(t), atol=1e-6)


def test_guided_backprop_guides_relu6_on_lite0(lite0, gallery_x):
    """Cross-check against a hand-written guided ReLU6, and it is no longer just the gradient."""
    x = gallery_x["chelsea"]
    ours = explain(lite0, x, "guided-backprop", target=TARGETS[0]).attribution
    hand = hand_guided_backprop(lite0, x, TARGETS[0]).sum(1)[0]
    assert torch.allclose(ours, hand, atol=1e-6)
    plain = plain_gradient(lite0, x, TARGETS[0]).sum(1)[0]
    assert (ours - plain).abs().max() > 0.1 * plain.abs().max()


@pytest.mark.parametrize("baseline", ["black", "blurred"])
def test_deeplift_sums_to_the_output_difference_on_lite0(lite0, gallery_x, baseline):
    """DeepLift's summation-to-delta: sum of attributions = f(x) - f(baseline) for the target logit.
    Holds only when every ReLU6 gets the Rescale rule (captum alone passes ReLU6 as linear: off by ~60 %)."""
    x = gallery_x["chelsea"]
    res = explain(lite0, x, "deeplift", target=TARGETS[0], baseline=baseline)
    base = baseline_tensor(lite0, x, baseline)
    with torch.no_grad():
        delta = float(lite0.model(x)[0, TARGETS[0]] - lite0.model(base)[0, TARGETS[0]])
    assert abs(float(res.attribution.sum()) - delta) < 1e-3 * max(1.0, abs(delta))


def test_library_view_is_left_clean_even_when_the_library_raises(lite0, gallery_x):
    from explainers.guard import count_hooks
    from explainers.methods.gradients import run_captum

    x = gallery_x["chelsea"]
    explain(lite0, x, "guided-backprop", target=TARGETS[1])
    explain(lite0, x, "deeplift", target=TARGETS[1])
    views = [library_view(lite0.model, form) for form in ("guided", "rescale")]
    assert [count_hooks(v) for v in views] == [0, 0]

    class Exploding:
        def __init__(self, model):
            model.register_forward_hook(lambda *a: None)
            self.model = model

        def attribute(self, *args, **kwargs):
            raise RuntimeError("library failed")

    with pytest.raises(RuntimeError, match="library failed"):
        run_captum(lite0, x, Exploding, view="rescale", target=torch.tensor([TARGETS[0]]))
    assert [count_hooks(v) for v in views] == [0, 0] and count_hooks(lite0.model) == 0
    assert not any(p.requires_grad for v in views for p in v.parameters())
