"""Finding layers by name and the default layer per model family (for CAMs and later SRD)."""

from __future__ import annotations

import torch
from torch import nn

from .errors import InvalidOption
from .models import ModelBundle


def named_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` (as in ``model.named_modules()``); a clear error otherwise."""
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        examples = [n for n, m in modules.items() if n and len(list(m.children())) == 0][-5:]
        raise InvalidOption(f"This model has no layer {name!r}; layer names look like: {', '.join(examples)}.")
    return modules[name]


def default_cam_layer(bundle: ModelBundle) -> str:
    """The usual Grad-CAM layer: the last convolutional stage's output.

    Zoo families keep their well-known layers (below); any other model (a timm/torchvision name, a user factory)
    gets the last module that finishes with a spatial map, read from its graph (:mod:`explainers.capabilities`).

    resnet: ``layer4`` (7x7); vgg: the last ReLU of ``features`` (14x14, before the
    final max-pool); efficientnet: ``bn2`` (timm's BatchNormAct2d, i.e. the ReLU6
    output of the 1x1 head conv, 7x7); vit: the last block's ``norm1`` (tokens
    reshaped to the 14x14 patch grid).
    """
    model = bundle.model
    modules = dict(model.named_modules())
    known = _family_layer(bundle)
    if known is not None and known in modules:
        return known
    from .capabilities import capabilities_of

    caps = capabilities_of(bundle)  # any other model: the last module with a spatial output
    if caps.cam_layer is not None:
        return caps.cam_layer
    if caps.tokens and hasattr(model, "blocks"):
        return f"blocks.{len(model.blocks) - 1}.norm1"
    raise InvalidOption(f"{bundle.label} has no spatial feature map for a CAM (no module outputs [B, C, H, W] "
                        "with H, W > 1); name a layer, or use a gradient method.")


def _family_layer(bundle: ModelBundle) -> str | None:
    """The well-known layer of a zoo family, when the model is built the way that family is."""
    model = bundle.model
    if bundle.family == "resnet":
        return "layer4"
    if bundle.family == "vgg" and hasattr(model, "features"):
        relus = [n for n, m in model.features.named_children() if isinstance(m, nn.ReLU)]
        return f"features.{relus[-1]}" if relus else None
    if bundle.family == "efficientnet":
        return "bn2"
    if bundle.family == "vit" and hasattr(model, "blocks"):
        return f"blocks.{len(model.blocks) - 1}.norm1"
    return None


def vit_reshape_transform(bundle: ModelBundle):
    """tokens [B, prefix + h*w, C] -> feature map [B, C, h, w] (drops class/register tokens)."""
    model = bundle.model
    prefix = getattr(model, "num_prefix_tokens", 1)
    grid = model.patch_embed.grid_size

    def transform(tokens: torch.Tensor) -> torch.Tensor:
        body = tokens[:, prefix:, :]
        return body.reshape(body.shape[0], grid[0], grid[1], body.shape[2]).permute(0, 3, 1, 2)

    return transform


def cam_layer(bundle: ModelBundle, name: str = "", method: str = "a CAM") -> str:
    """The CAM target layer: ``name`` (checked) or the family default.

    A named layer must output what a CAM weighs: a spatial map ``[B, C, H, W]`` with H or W > 1 on a CNN, a
    token sequence ``[B, T, C]`` on a ViT.  A linear head, a pooled vector or a layer the forward pass never
    calls is one clear line here instead of a shape error deep inside the CAM library."""
    if not name:
        return default_cam_layer(bundle)
    named_layer(bundle.model, name)  # unknown names: the message with examples
    from .capabilities import capabilities_of

    caps = capabilities_of(bundle)
    shape = caps.layer_shapes.get(name)
    ok = shape is not None and (len(shape) == 3 if caps.tokens else len(shape) == 4 and max(shape[2:]) > 1)
    if not ok:
        what = "is not called by the forward pass" if shape is None else f"outputs shape {list(shape)}"
        want = "a token sequence [B, T, C]" if caps.tokens else "a spatial map [B, C, H, W]"
        raise InvalidOption(f"{method} cannot use layer {name!r}: it {what}, not {want}; choose a convolutional "
                            f"block (the default is {default_cam_layer(bundle)!r}).")
    return name
