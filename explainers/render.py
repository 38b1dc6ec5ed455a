"""Turning a raw map into pixels: colormaps, overlays, PNG export.

Signed maps use a diverging colormap with symmetric limits, so zero is always
the centre colour; positive-only maps use a sequential colormap from zero to
the maximum.  All of this is display work: it never touches relevance, so
sliders that call it never trigger a recomputation.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from .errors import NonFiniteAttribution

DIVERGING = ("bwr", "RdBu_r", "coolwarm", "seismic", "PiYG")
SEQUENTIAL = ("jet", "inferno", "viridis", "magma", "hot", "turbo", "gray")


def as_numpy(attribution: torch.Tensor | np.ndarray) -> np.ndarray:
    arr = attribution.detach().cpu().numpy() if isinstance(attribution, torch.Tensor) else np.asarray(attribution)
    arr = arr.astype(np.float32)
    if arr.ndim == 3:  # channel map -> channel sum
        arr = arr.sum(0)
    if not np.isfinite(arr).all():
        raise NonFiniteAttribution(f"The map holds {int((~np.isfinite(arr)).sum())} NaN/Inf values; not rendered.")
    return arr


def scale(attribution, signed: bool) -> np.ndarray:
    """Map values to [0, 1] for a colormap.

    signed: [-m, m] -> [0, 1] with m = max |A| (zero lands on 0.5);
    positive: [0, max] -> [0, 1], negative values clipped to 0.
    """
    arr = as_numpy(attribution)
    if signed:
        m = float(np.abs(arr).max())
        return np.full_like(arr, 0.5) if m == 0 else 0.5 + 0.5 * arr / m
    pos = np.clip(arr, 0, None)
    m = float(pos.max())
    return np.zeros_like(pos) if m == 0 else pos / m


def colorize(attribution, signed: bool = False, cmap: str | None = None) -> np.ndarray:
    """HxW map -> HxWx3 uint8 heatmap."""
    from matplotlib import colormaps

    name = cmap or (DIVERGING[0] if signed else SEQUENTIAL[0])
    rgba = colormaps[name](scale(attribution, signed))
    return (rgba[..., :3] * 255).round().astype(np.uint8)


def overlay(image: Image.Image | np.ndarray, attribution, opacity: float = 0.5,
            signed: bool = False, cmap: str | None = None) -> np.ndarray:
    """Blend a heatmap over the image (resized to the map's size); opacity 0 = image only."""
    heat = colorize(attribution, signed, cmap)
    h, w = heat.shape[:2]
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    base = np.asarray(img.convert("RGB").resize((w, h), Image.BILINEAR), dtype=np.float32)
    out = (1 - opacity) * base + opacity * heat.astype(np.float32)
    return out.clip(0, 255).round().astype(np.uint8)


def upsample(attribution: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of an HxW map (low-resolution maps are shown at input size)."""
    if tuple(attribution.shape[-2:]) == tuple(size):
        return attribution
    return torch.nn.functional.interpolate(attribution[None, None].float(), size=size, mode="bilinear",
                                           align_corners=False)[0, 0]


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()
