"""CAM family: each wrapped method returns exactly what pytorch-grad-cam's own call returns, responds to the
target class (except class-agnostic EigenCAM), leaves no hook behind, and works on ViTs.

Score-CAM / Ablation-CAM run one forward pass per channel; Lite0's default layer has 1280 channels, so the
library comparison uses ``blocks.0`` (16 channels at 112x112), where k = all is cheap and still the full method.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from explainers import explain
from explainers.guard import count_hooks, model_guard
from explainers.layers import default_cam_layer, named_layer
from explainers.progress import progress_callback

TARGETS = (281, 954)  # tabby cat (Lite0's top class on chelsea) and banana

SIMPLE = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "xgradcam": "XGradCAM", "layercam": "LayerCAM",
          "hirescam": "HiResCAM", "eigencam": "EigenCAM"}
SMALL_LAYER = "blocks.0"


def library_cam(bundle, x, cls_name: str, target: int, layer: str | None = None, **kwargs) -> np.ndarray:
    """pytorch-grad-cam's own call, as its README shows it (the guard only provides gradients + cleanup)."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with model_guard(bundle) as model:
        layers = [] if cls_name == "FullGrad" else [named_layer(model, layer or default_cam_layer(bundle))]
        attrs = kwargs.pop("attrs", {})
        with getattr(pytorch_grad_cam, cls_name)(model=model, target_layers=layers, **kwargs) as cam:
            for k, v in attrs.items():
                setattr(cam, k, v)
            return cam(input_tensor=x.clone(), targets=[ClassifierOutputTarget(target)])


def ours(bundle, x, method: str, target: int, **opts) -> np.ndarray:
    before = count_hooks(bundle.model)
    res = explain(bundle, x, method, target=target, **opts)
    assert count_hooks(bundle.model) == before, f"{method} left hooks on the model"
    assert res.attribution.shape == x.shape[-2:]
    return res.attribution.numpy()


def assert_same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape
    assert np.allclose(a, b, atol=1e-6, rtol=0), float(np.abs(a - b).max())


@pytest.mark.parametrize("method", list(SIMPLE))
def test_gradient_cams_equal_library_and_follow_target(lite0, gallery_x, method):
    x = gallery_x["chelsea"]
    maps = [ours(lite0, x, method, t) for t in TARGETS]
    assert_same(maps[0], library_cam(lite0, x, SIMPLE[method], TARGETS[0])[0])
    if method == "eigencam":  # class-agnostic by construction: first principal component of the activations
        assert_same(maps[0], maps[1])
    else:
        assert not np.allclose(maps[0], maps[1], atol=1e-3)


def test_native_resolution_is_reported(lite0, gallery_x):
    x = gallery_x["chelsea"]
    assert explain(lite0, x, "gradcam").native_resolution == (7, 7)
    assert explain(lite0, x, "layercam", layer="blocks.1").native_resolution == (56, 56)


def test_fullgrad_equals_library(lite0, gallery_x):
    """Our FullGrad is the library's FullGrad on the model with timm's fused BN+act layers split apart."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from explainers.methods.library_view import library_view

    x = gallery_x["chelsea"]
    maps = [ours(lite0, x, "fullgrad", t) for t in TARGETS]
    res = explain(lite0, x, "fullgrad")
    assert res.native_resolution == (224, 224)
    assert not np.allclose(maps[0], maps[1], atol=1e-3)

    with model_guard(lite0) as model:
        split = library_view(model)
        assert split is not model and library_view(model) is split  # a cached private copy
        with torch.no_grad():  # the split copy computes the same function
            assert torch.allclose(split(x), model(x), atol=1e-5)

        def library(m):
            cam = pytorch_grad_cam.FullGrad(model=m, target_layers=[])
            out = cam(input_tensor=x.clone(), targets=[ClassifierOutputTarget(TARGETS[0])])[0]
            cam.activations_and_grads.release()
            return out, len(cam.bias_data)

        ref, n_bias = library(split)
        input_only, n_bias_fused = library(model)
    # timm's BatchNormAct2d hides Lite0's 49 BN biases from the library's exact-type check
    assert n_bias_fused == 0 and n_bias == res.extras["bias_layers"] == 49
    assert_same(maps[0], ref)
    assert not np.allclose(maps[0], input_only, atol=1e-2)  # the bias-gradient terms are really in the map


def test_fullgrad_uses_resnet_batchnorm_biases_directly():
    from explainers import load_model
    from explainers.methods.library_view import library_view

    bundle = load_model("resnet18", weights="untrained")
    assert library_view(bundle.model) is bundle.model  # plain BatchNorm2d and ReLU: nothing to rewrite
    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    res = explain(bundle, x, "fullgrad", target=3)
    assert res.extras["bias_layers"] == 20
    # our batched aggregation (one upsampling per layer) equals the library's per-channel cv2 resizes
    assert_same(res.attribution.numpy(), library_cam(bundle, x, "FullGrad", 3)[0])


def test_scorecam_all_channels_equals_library(lite0, gallery_x):
    x = gallery_x["chelsea"]
    maps = [ours(lite0, x, "scorecam", t, layer=SMALL_LAYER, top_k=-1, batch_size=8) for t in TARGETS]
    ref = library_cam(lite0, x, "ScoreCAM", TARGETS[0], layer=SMALL_LAYER, attrs={"batch_size": 8})[0]
    assert_same(maps[0], ref)
    assert not np.allclose(maps[0], maps[1], atol=1e-3)


def test_ablationcam_all_channels_equals_library(lite0, gallery_x):
    from pytorch_grad_cam.ablation_layer import AblationLayer

    x = gallery_x["chelsea"]
    maps = [ours(lite0, x, "ablationcam", t, layer=SMALL_LAYER, top_k=-1, batch_size=8) for t in TARGETS]
    ref = library_cam(lite0, x, "AblationCAM", TARGETS[0], layer=SMALL_LAYER, batch_size=8,
                      ablation_layer=AblationLayer())[0]
    assert_same(maps[0], ref)
    assert not np.allclose(maps[0], maps[1], atol=1e-3)


@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
def test_top_k_uses_fewer_forward_passes_and_reports_progress(lite0, gallery_x, method):
    """top_k=16 at the default (1280-channel) layer: 1 batch of 16 instead of 80; progress reaches 1."""
    x = gallery_x["chelsea"]
    seen: list[float] = []
    with progress_callback(lambda f, _t: seen.append(f)):
        a = ours(lite0, x, method, TARGETS[0], top_k=16, batch_size=16)
    assert seen and seen[-1] == 1.0 and len(seen) <= 2
    b = ours(lite0, x, method, TARGETS[1], top_k=16, batch_size=16)
    assert not np.allclose(a, b, atol=1e-3)
    assert explain(lite0, x, method, top_k=16, batch_size=16).extras["top_k"] == 16


def test_top_k_auto_is_smaller_on_cpu():
    from explainers.methods.cams import CPU_TOP_K, resolve_top_k

    assert resolve_top_k(0, "cpu") == CPU_TOP_K
    assert resolve_top_k(0, "cuda") is None
    assert resolve_top_k(-1, "cpu") is None


def test_ablationcam_restores_layer_when_a_pass_fails(lite0, gallery_x, monkeypatch):
    from pytorch_grad_cam.ablation_layer import AblationLayer

    def boom(self, *args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(AblationLayer, "set_next_batch", boom)
    layer = lite0.model.blocks[0]
    with pytest.raises(RuntimeError, match="boom"):
        explain(lite0, gallery_x["chelsea"], "ablationcam", layer=SMALL_LAYER, top_k=4, batch_size=4)
    assert lite0.model.blocks[0] is layer


def test_guided_gradcam_equals_library_product(lite0, gallery_x):
    """The library's guided backprop (on the library view, where Lite0's ReLU6 is ReLU + clamp, so the library
    guides it) times the library's Grad-CAM; the guided part equals a hand-written guided ReLU6."""
    from pytorch_grad_cam import GuidedBackpropReLUModel

    from explainers.methods.library_view import library_view
    from tests.hand_written import hand_guided_backprop

    x = gallery_x["chelsea"]
    maps = [ours(lite0, x, "guided-gradcam", t) for t in TARGETS]
    with model_guard(lite0) as model:
        gb = GuidedBackpropReLUModel(model=library_view(model, "guided"), device=x.device)(
            x.clone(), target_category=TARGETS[0])
    ref = (gb * library_cam(lite0, x, "GradCAM", TARGETS[0])[0][..., None]).sum(-1)
    assert np.allclose(maps[0], ref, atol=1e-6)
    assert not np.allclose(maps[0], maps[1], atol=1e-6)
    # pytorch-grad-cam returns the gradient [H, W, C]: the same as our hand-written guided ReLU6
    hand = hand_guided_backprop(lite0, x, TARGETS[0])[0].permute(1, 2, 0).numpy()
    assert np.allclose(gb, hand, atol=1e-6) and np.abs(hand).max() > 0


def test_guided_gradcam_keeps_relu_modules(untrained, gallery_x):
    """The library swaps nn.ReLU modules for new ones; the shared model must keep its own (inplace) modules."""
    bundle = untrained("resnet18")
    relus = [m for m in bundle.model.modules() if isinstance(m, torch.nn.ReLU)]
    before = count_hooks(bundle.model)
    explain(bundle, gallery_x["chelsea"], "guided-gradcam")
    assert [m for m in bundle.model.modules() if isinstance(m, torch.nn.ReLU)] == relus
    assert all(m.inplace for m in relus) and count_hooks(bundle.model) == before


@pytest.mark.parametrize("method,opts", [
    *[(m, {}) for m in SIMPLE],
    ("scorecam", {"top_k": 8, "batch_size": 8}),
    ("ablationcam", {"top_k": 8, "batch_size": 8}),
])
def test_vit_cams_give_224_maps(untrained, gallery_x, method, opts):
    bundle = untrained("vit_tiny_patch16_224")
    before = count_hooks(bundle.model)
    res = explain(bundle, gallery_x["chelsea"], method, **opts)
    assert tuple(res.attribution.shape) == (224, 224)
    assert res.native_resolution == (14, 14)
    assert torch.isfinite(res.attribution).all()
    assert count_hooks(bundle.model) == before


def test_estimate_scales_with_top_k(lite0):
    from explainers.estimate import estimate_seconds

    opts = {"layer": SMALL_LAYER, "batch_size": 1}  # 16 channels: all = 16 passes, top 1 = 1 pass
    assert estimate_seconds(lite0, "scorecam", {**opts, "top_k": -1}) > estimate_seconds(lite0, "scorecam",
                                                                                         {**opts, "top_k": 1})
    assert estimate_seconds(lite0, "gradcam") > 0
