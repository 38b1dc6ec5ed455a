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


def scale(attribution, signed: bool, clip: float = 100.0) -> np.ndarray:
    """Map values to [0, 1] for a colormap.

    signed: [-m, m] -> [0, 1] with m = the ``clip`` percentile of |A| (zero lands on 0.5);
    positive: [0, m] -> [0, 1] with m = the ``clip`` percentile of the positive part, negatives clipped to 0.
    ``clip`` = 100 uses the maximum.  Pixel-level gradient maps have a few extreme pixels: scaled by the
    maximum the rest is near zero and the map looks blank, so the app clips at 99.5 by default (captum's
    ``visualize_image_attr`` clips at 98).  Values beyond m take the end colour.
    """
    arr = as_numpy(attribution)
    if not 0 < clip <= 100:
        raise ValueError(f"clip must be a percentile in (0, 100], not {clip}")
    values = np.abs(arr) if signed else np.clip(arr, 0, None)
    m = float(values.max())
    if clip < 100 and m > 0:
        m = float(np.percentile(values, clip)) or m  # a sparse map's percentile can be 0: keep the maximum
    if m == 0:
        return np.full_like(arr, 0.5 if signed else 0.0)
    return 0.5 + 0.5 * np.clip(arr / m, -1, 1) if signed else np.clip(values / m, 0, 1)


def colorize(attribution, signed: bool = False, cmap: str | None = None, clip: float = 100.0) -> np.ndarray:
    """HxW map -> HxWx3 uint8 heatmap (``clip``: see :func:`scale`)."""
    from matplotlib import colormaps

    name = cmap or (DIVERGING[0] if signed else SEQUENTIAL[0])
    rgba = colormaps[name](scale(attribution, signed, clip))
    return (rgba[..., :3] * 255).round().astype(np.uint8)


def overlay(image: Image.Image | np.ndarray, attribution, opacity: float = 0.5,
            signed: bool = False, cmap: str | None = None, clip: float = 100.0) -> np.ndarray:
    """Blend a heatmap over the image (resized to the map's size); opacity 0 = image only."""
    heat = colorize(attribution, signed, cmap, clip)
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
