"""Our Grad-CAM (explainers/methods/gradcam_native.py, written to skip pytorch-grad-cam's ~7 s import) equals
pytorch-grad-cam's GradCAM on the trained Lite0 and on a seeded untrained torchvision ResNet-18, per image of a
batch with different targets, at the default and at another layer.

Tolerance 1e-5 on maps in [0, 1]: both compute in float32; the only differences are summation order (torch vs
numpy means and channel sums, about 1e-7 relative) and bilinear resizing in torch vs cv2 (float arithmetic
for float32 images), far below 1e-5, while any real difference (a missing ReLU, a max instead of a mean, another
resize) moves the map by more than 1e-2.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from explainers import load_model
from explainers.guard import count_hooks, model_guard
from explainers.layers import default_cam_layer, named_layer
from explainers.methods.gradcam_native import gradcam_maps

TOL = 1e-5


def library_gradcam(bundle, x, targets, layer):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with model_guard(bundle) as model, GradCAM(model=model, target_layers=[named_layer(model, layer)]) as cam:
        return cam(input_tensor=x.clone(), targets=[ClassifierOutputTarget(int(t)) for t in targets])


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return load_model("resnet18", device="cpu", weights="untrained")


def check(bundle, x, targets, layer):
    before = count_hooks(bundle.model)
    ours, native = gradcam_maps(bundle, x, targets, layer)
    assert count_hooks(bundle.model) == before
    ref = library_gradcam(bundle, x, targets, layer)
    assert ours.shape == ref.shape == (x.shape[0], *x.shape[-2:])
    assert np.abs(ours.numpy() - ref).max() < TOL
    assert float(ours.max()) > 0.99 and float(ours.min()) == 0.0  # min-max scaled, not a constant map
    return ours, native


def test_lite0_equals_library(lite0, gallery_x):
    x = torch.cat([gallery_x["chelsea"], gallery_x["chelsea"]])
    ours, native = check(lite0, x, torch.tensor([281, 954]), default_cam_layer(lite0))
    assert native == (7, 7)
    assert np.abs(ours[0].numpy() - ours[1].numpy()).max() > 1e-2  # follows the target class
    check(lite0, x[:1], torch.tensor([281]), "blocks.5")


def test_resnet18_equals_library(resnet18):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 224, 224)
    _, native = check(resnet18, x, torch.tensor([3, 500]), default_cam_layer(resnet18))
    assert native == (7, 7)
    check(resnet18, x, torch.tensor([7, 7]), "layer3")
