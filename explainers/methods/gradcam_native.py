"""Grad-CAM without pytorch-grad-cam, for the default method's first map.

Why our own: ``import pytorch_grad_cam`` costs about 7 s on a cold start here (its ``base_cam`` imports cv2,
matplotlib, scipy and scikit-learn), more than the whole first-heatmap budget of issue 15 (5 s).  Grad-CAM is
the app's default method, so its plain form (no ``aug_smooth`` / ``eigen_smooth``, a CNN layer) runs here in a
few lines of torch; every other CAM, and Grad-CAM with smoothing or on ViT tokens, stays the library's.

The map is the library's ``GradCAM(...)(input_tensor, targets)`` array: channel weights = mean of the
gradient over the map, weighted sum of the activation channels, ReLU, then the library's post-processing
(``scale_cam_image``): per image ``m - min``, ``/ (1e-7 + max)``, resized to the input's width x height with
bilinear interpolation on half-pixel centres (what cv2's default INTER_LINEAR does), and for its one-layer
"aggregate" step a ReLU and the same min-max scaling once more.  tests/test_gradcam_native.py holds it to the
library's output on Lite0 and a ResNet-18.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..guard import model_guard
from ..layers import named_layer
from ..models import ModelBundle


def _min_max(cam: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's per-image scaling: ``m - min``, then ``/ (1e-7 + max)`` (B x H x W)."""
    flat = cam.flatten(1)
    cam = cam - flat.min(dim=1).values[:, None, None]
    return cam / (1e-7 + cam.flatten(1).max(dim=1).values[:, None, None])


def gradcam_maps(bundle: ModelBundle, x: torch.Tensor, targets: torch.Tensor,
                 layer_name: str) -> tuple[torch.Tensor, tuple[int, int]]:
    """Grad-CAM maps (B x H x W, in [0, 1], float32 on the CPU) and the layer's native resolution.

    Runs on the same private view the library's GradCAM used (``cam:GradCAM``), so hooks never reach the
    shared model."""
    captured: list[torch.Tensor] = []
    with model_guard(bundle, view_key="cam:GradCAM") as model:
        handle = named_layer(model, layer_name).register_forward_hook(lambda m, i, out: captured.append(out))
        try:
            logits = model(x)
        finally:
            handle.remove()
        acts = captured[-1]  # the layer's last call, as the library's hook keeps it
        score = logits.gather(1, targets.view(-1, 1).to(logits.device)).sum()
        (grads,) = torch.autograd.grad(score, acts)
    acts, grads = acts.detach().float(), grads.float()
    weights = grads.mean(dim=(2, 3))
    cam = (weights[:, :, None, None] * acts).sum(dim=1).clamp_min(0)
    cam = _min_max(cam)
    cam = F.interpolate(cam[:, None], size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
    cam = _min_max(cam.clamp_min(0))  # the library's aggregate over its one target layer
    return cam.cpu(), tuple(acts.shape[-2:])
