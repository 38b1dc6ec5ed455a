"""Class activation maps through pytorch-grad-cam (pip ``grad-cam``).

We adapt the library rather than reimplement it: the map we return is exactly
the array the library's own ``cam(input_tensor, targets, ...)`` call returns
(per image min-max scaled to [0, 1] and resized to the input size by the
library).  What we add: the default target layer per model family, a layer
chosen by name, ViT token reshaping, the native resolution of the map, and
exclusive, hook-clean use of the shared model (:func:`model_guard`).
"""

from __future__ import annotations

from typing import Any

import torch

from ..guard import model_guard
from ..layers import default_cam_layer, named_layer, vit_reshape_transform
from ..models import ModelBundle
from ..registry import ALL_FAMILIES, MethodOutput, MethodSpec, Option, register

LAYER_OPTION = Option("layer", "str", "", help="Target layer by name (empty: the model family's default: "
                      "last conv stage for CNNs, last block's norm1 for ViTs).")
SMOOTH_OPTIONS = (
    Option("aug_smooth", "bool", False, help="Test-time augmentation smoothing (6x slower)."),
    Option("eigen_smooth", "bool", False, help="First principal component of the weighted activations."),
)


def run_cam(cam_class, bundle: ModelBundle, x: torch.Tensor, targets: torch.Tensor,
            opts: dict[str, Any], **cam_kwargs: Any) -> MethodOutput:
    """Run one pytorch-grad-cam class on a batch with per-image targets."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer_name = opts.get("layer") or default_cam_layer(bundle)
    with model_guard(bundle) as model:
        layer = named_layer(model, layer_name)
        reshape = vit_reshape_transform(bundle) if bundle.family == "vit" else None
        cam = cam_class(model=model, target_layers=[layer], reshape_transform=reshape, **cam_kwargs)
        try:
            grayscale = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets],
                            aug_smooth=opts.get("aug_smooth", False), eigen_smooth=opts.get("eigen_smooth", False))
            acts = cam.activations_and_grads.activations
            native = tuple(acts[0].shape[-2:]) if acts else None
        finally:
            # Not ``with cam:``: its __exit__ swallows IndexError, which would hide bugs.
            cam.activations_and_grads.release()
    return MethodOutput(attribution=torch.from_numpy(grayscale), native_resolution=native,
                        extras={"layer": layer_name})


def _gradcam(bundle, x, targets, opts):
    from pytorch_grad_cam import GradCAM

    return run_cam(GradCAM, bundle, x, targets, opts)


register(MethodSpec(
    id="gradcam", name="Grad-CAM", family="cam", fn=_gradcam,
    options=(LAYER_OPTION, *SMOOTH_OPTIONS), model_families=ALL_FAMILIES, normalized=True,
    description="Gradient-weighted class activation map (Selvaraju et al. 2017) via pytorch-grad-cam.",
))
