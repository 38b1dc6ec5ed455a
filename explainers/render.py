"""Turning a raw map into pixels: heat quantisation, colormaps, overlays, PNG export.

Signed maps use a diverging colormap with symmetric limits, so zero is always
the centre colour; positive-only maps use a sequential colormap from zero to
the maximum.  All of this is display work: it never touches relevance, so
sliders that call it never trigger a recomputation.  Heat quantisation
(resnet-lrp Eq. 8) lives here for that reason: it changes what is shown, not
the relevance, so it is rendering code, not propagation code.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from .errors import NonFiniteAttribution

DIVERGING = ("bwr", "RdBu_r", "coolwarm", "seismic", "PiYG")
SEQUENTIAL = ("jet", "inferno", "viridis", "magma", "hot", "turbo", "gray")


def heat_quantize(attribution: torch.Tensor, bins: int) -> torch.Tensor:
    """Quantise a map to exactly ``bins`` levels (fewer only when the map has fewer distinct values).

    Otsuki et al., Eq. 8: Delta = (max - min) / Q, A_q = min + floor((A - min) / Delta) * Delta
    (the paper prints "... floor(.) Q"; the factor must be Delta for the levels to lie in the map's
    range).  The maximum itself would land in an extra level Q, so it is kept in the top bin
    (index Q - 1): exactly Q levels, monotone in the raw map.

    The authors' released code differs: it floors on ``np.linspace(min, max, Q)``, i.e. with
    Delta = (max - min) / (Q - 1), so only Q - 1 steps and the top level holds only the maximum
    pixel(s).  We implement the paper.
    """
    if bins <= 0:
        return attribution
    a = attribution
    lo, hi = a.amin(), a.amax()
    if not bool(hi > lo):
        return a.clone()
    delta = (hi - lo) / bins
    # Paper Eq. 8 (resnet-lrp), with the top bin closed so that max maps to bin Q-1.
    index = torch.floor((a - lo) / delta).clamp(0, bins - 1)
    return lo + index * delta


def postprocess(attribution: torch.Tensor, display: dict) -> torch.Tensor:
    """``MethodSpec.postprocess`` for the LRP methods: heat quantisation with the ``bins`` display option."""
    return heat_quantize(attribution, int(display.get("bins", 0) or 0))


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
