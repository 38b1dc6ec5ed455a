"""explain() and the registry: options are validated, targets resolved, the model left clean."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from explainers import (
    METHODS,
    InvalidOption,
    MethodSpec,
    NonFiniteAttribution,
    Option,
    UnknownClass,
    UnknownMethod,
    UnsupportedModel,
    explain,
    explain_batch,
)
from explainers.capabilities import Requirement
from explainers.guard import count_hooks
from explainers.registry import MethodOutput, register


@pytest.fixture
def temp_method():
    """Register throw-away methods for one test and remove them afterwards."""
    added = []

    def add(spec: MethodSpec) -> MethodSpec:
        added.append(spec.id)
        return register(spec)

    yield add
    for mid in added:
        METHODS.pop(mid, None)


def test_gradcam_matches_the_library(lite0, gallery_x):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x = gallery_x["chelsea"]
    res = explain(lite0, x, "gradcam")
    with GradCAM(model=lite0.model, target_layers=[lite0.model.bn2]) as cam:
        expected = cam(input_tensor=x, targets=[ClassifierOutputTarget(res.target)])[0]
    for p in lite0.model.parameters():
        p.grad = None
    assert res.attribution.shape == (224, 224) and res.attribution.dtype == torch.float32
    # Our Grad-CAM is computed natively (no pytorch-grad-cam import, issue 15): float32 summation order and
    # torch's vs cv2's bilinear resize differ by ~1e-7, so 1e-5 (tests/test_gradcam_native.py says more).
    assert np.abs(res.attribution.numpy() - expected).max() < 1e-5
    assert res.native_resolution == (7, 7)


def test_explain_defaults_to_prediction_and_reports_its_probability(lite0, gallery_x):
    x = gallery_x["coffee"]
    res = explain(lite0, x, "gradcam")
    probs = lite0.predict(x)[0]
    assert res.target == int(probs.argmax()) == 967
    assert res.score == pytest.approx(float(probs[967]), rel=1e-5)
    assert res.method == "gradcam" and res.options["layer"] == "" and res.seconds > 0


@pytest.mark.parametrize("method", ["gradcam", "resnet-lrp"])  # an extra forward, and the engine's own forward
def test_predicted_and_named_targets_mix_in_one_batch(lite0, gallery_x, method):
    x = torch.cat([gallery_x["chelsea"], gallery_x["coffee"]])
    probs = lite0.predict(x)
    maps = explain_batch(lite0, x, method)
    assert [m.target for m in maps] == probs.argmax(-1).tolist()
    assert [m.score for m in maps] == pytest.approx(probs.max(-1).values.tolist(), rel=1e-5)
    named = explain_batch(lite0, x, method, target="tabby")
    assert [m.target for m in named] == [281, 281]
    assert named[1].score == pytest.approx(float(probs[1, 281]), rel=1e-5)


def test_targets_by_name_and_several_targets_in_one_call(lite0, gallery_x):
    x = gallery_x["chelsea"]
    assert explain(lite0, x, "gradcam", target="espresso").target == 967
    maps = explain_batch(lite0, x, "gradcam", target=[281, "espresso"])
    assert [m.target for m in maps] == [281, 967]
    assert not torch.allclose(maps[0].attribution, maps[1].attribution)
    batch = explain_batch(lite0, torch.cat([gallery_x["chelsea"], gallery_x["coffee"]]), "gradcam")
    assert batch[1].target == 967


def test_user_errors_are_typed(lite0, gallery_x):
    x = gallery_x["chelsea"]
    with pytest.raises(UnknownMethod):
        explain(lite0, x, "magic")
    with pytest.raises(UnknownClass):
        explain(lite0, x, "gradcam", target=5000)
    with pytest.raises(UnknownClass):
        explain(lite0, x, "gradcam", target="not a class at all")
    with pytest.raises(InvalidOption, match="has no option"):
        explain(lite0, x, "gradcam", colour="red")
    with pytest.raises(InvalidOption, match="no layer"):
        explain(lite0, x, "gradcam", layer="does.not.exist")
    with pytest.raises(InvalidOption, match="expects a bool"):
        explain(lite0, x, "gradcam", aug_smooth="maybe")


def test_option_validation():
    opt = Option("eps", "float", 1e-6, min=0.0, max=1.0)
    assert opt.validate("0.5") == 0.5
    for bad in (-1, 2, "x", float("nan")):
        with pytest.raises(InvalidOption):
            opt.validate(bad)
    choice = Option("rule", "choice", "a", choices=("a", "b"))
    assert choice.validate("b") == "b"
    with pytest.raises(InvalidOption, match="one of a, b"):
        choice.validate("c")


def test_model_is_left_clean(lite0, gallery_x):
    model = lite0.model
    before = count_hooks(model)
    flags = [p.requires_grad for p in model.parameters()]
    explain(lite0, gallery_x["rocket"], "gradcam")
    assert count_hooks(model) == before
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert not model.training


def test_unsupported_model_and_non_finite_maps(lite0, gallery_x, temp_method):
    def nan_map(bundle, x, targets, opts):
        return MethodOutput(attribution=torch.full((x.shape[0], 4, 4), float("nan")))

    temp_method(MethodSpec(id="test-vit-only", name="ViT only", family="test", fn=nan_map,
                           needs=Requirement("tokens", lambda c: c.tokens, "patch tokens")))
    temp_method(MethodSpec(id="test-nan", name="NaN maker", family="test", fn=nan_map))
    with pytest.raises(UnsupportedModel, match="ViT only needs patch tokens; efficientnet_lite0 does not offer it"):
        explain(lite0, gallery_x["chelsea"], "test-vit-only")
    with pytest.raises(NonFiniteAttribution, match="16 NaN/Inf"):
        explain(lite0, gallery_x["chelsea"], "test-nan")


def test_display_options_are_split_from_compute_options(temp_method):
    spec = temp_method(MethodSpec(
        id="test-display", name="display", family="test",
        fn=lambda b, x, t, o: MethodOutput(attribution=torch.zeros(1, 2, 2)),
        options=(Option("eps", "float", 0.1), Option("bins", "int", 8, display=True)),
        postprocess=lambda a, shown: a + shown["bins"],
    ))
    assert spec.split_options({"eps": 0.1, "bins": 3}) == ({"eps": 0.1}, {"bins": 3})
    assert spec.display_map(torch.zeros(2, 2), {"bins": 3}).max() == 3
