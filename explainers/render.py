"""Turning a raw map into pixels: heat quantisation, colormaps, views (heatmap, overlay, side by side),
colour bars, PNG export.

Signed maps use a diverging colormap with symmetric limits, so zero is always
the centre colour; positive-only maps use a sequential colormap from zero to
the maximum.  The defaults are perceptually uniform (equal steps in value look
like equal steps in lightness): "berlin" for signed maps, "inferno" otherwise;
"bwr" and "jet" are still offered for people used to them.  Colormaps are
256-entry lookup tables precomputed from matplotlib (scripts/make_colormap_luts.py),
so rendering never imports matplotlib: that import cost an app's cold start
about 0.3 s and a colormap call per map.  All of this is display work: it never touches relevance, so
sliders that call it never trigger a recomputation.  Heat quantisation
(resnet-lrp Eq. 8) lives here for that reason: it changes what is shown, not
the relevance, so it is rendering code, not propagation code.
"""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import NonFiniteAttribution

# First = default.  berlin/vanimo/managua (Crameri's perceptually uniform diverging maps, matplotlib >= 3.10) have a
# dark centre; RdBu_r is a light-centred ColorBrewer map with nearly symmetric lightness.  coolwarm, bwr, seismic
# and jet are not perceptually uniform (their lightness jumps), kept for familiarity.
DIVERGING = ("berlin", "RdBu_r", "vanimo", "managua", "PiYG", "coolwarm", "bwr", "seismic")
SEQUENTIAL = ("inferno", "viridis", "magma", "cividis", "gray", "hot", "turbo", "jet")

# How a map is shown.  "auto" picks per map (default_view): pixel-level maps alone, coarse maps over the image.
VIEWS = ("auto", "heatmap", "overlay", "side by side")

# What a map's numbers are, for the colour bar: by method family (MethodSpec has no unit field).
UNITS = {"lrp": "relevance", "srd": "relevance", "gradient": "attribution", "cam": "CAM activation"}

_LUT_FILE = Path(__file__).with_name("colormaps.npz")


@lru_cache(maxsize=1)
def _luts() -> dict[str, np.ndarray]:
    with np.load(_LUT_FILE) as data:
        return {name: data[name] for name in data.files}


def lut(name: str) -> np.ndarray:
    """The 256x3 uint8 table of colormap ``name``."""
    tables = _luts()
    if name not in tables:
        raise ValueError(f"Unknown colormap {name!r}; offered: {', '.join(tables)}.")
    return tables[name]


def unit(family: str) -> str:
    return UNITS.get(family, "attribution")


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


def limit(attribution, signed: bool, clip: float = 100.0) -> float:
    """The value at which the colour scale ends: the ``clip`` percentile of |A| (signed) or of A's positive part.

    ``clip`` = 100 uses the maximum; a sparse map whose percentile is 0 falls back to its maximum.
    """
    arr = as_numpy(attribution)
    if not 0 < clip <= 100:
        raise ValueError(f"clip must be a percentile in (0, 100], not {clip}")
    values = np.abs(arr) if signed else np.clip(arr, 0, None)
    m = float(values.max()) if values.size else 0.0
    if clip < 100 and m > 0:
        m = float(np.percentile(values, clip)) or m
    return m


def scale(attribution, signed: bool, clip: float = 100.0) -> np.ndarray:
    """Map values to [0, 1] for a colormap.

    signed: [-m, m] -> [0, 1] with m = the ``clip`` percentile of |A| (zero lands on 0.5);
    positive: [0, m] -> [0, 1] with m = the ``clip`` percentile of the positive part, negatives clipped to 0.
    ``clip`` = 100 uses the maximum.  Pixel-level gradient maps have a few extreme pixels: scaled by the
    maximum the rest is near zero and the map looks blank, so the app clips at 99.5 by default (captum's
    ``visualize_image_attr`` clips at 98).  Values beyond m take the end colour.
    """
    arr = as_numpy(attribution)
    m = limit(arr, signed, clip)
    if m == 0:
        return np.full_like(arr, 0.5 if signed else 0.0)
    return 0.5 + 0.5 * np.clip(arr / m, -1, 1) if signed else np.clip(arr / m, 0, 1)


def colorize(attribution, signed: bool = False, cmap: str | None = None, clip: float = 100.0) -> np.ndarray:
    """HxW map -> HxWx3 uint8 heatmap (``clip``: see :func:`scale`)."""
    table = lut(cmap or (DIVERGING[0] if signed else SEQUENTIAL[0]))
    return table[index(scale(attribution, signed, clip))]


def index(scaled: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> table rows, as matplotlib indexes a 256-colour map (floor(x * 256), 1.0 -> 255)."""
    return np.minimum((np.asarray(scaled, dtype=np.float32) * 256).astype(np.intp), 255)


def overlay(image: Image.Image | np.ndarray, attribution, opacity: float = 0.5,
            signed: bool = False, cmap: str | None = None, clip: float = 100.0) -> np.ndarray:
    """Blend a heatmap over the image (resized to the map's size); opacity 0 = image only."""
    heat = colorize(attribution, signed, cmap, clip)
    h, w = heat.shape[:2]
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    base = np.asarray(img.convert("RGB").resize((w, h), Image.BILINEAR), dtype=np.float32)
    out = (1 - opacity) * base + opacity * heat.astype(np.float32)
    return out.clip(0, 255).round().astype(np.uint8)


def heatmap(attribution, signed: bool = False, cmap: str | None = None, clip: float = 100.0) -> np.ndarray:
    """The map alone (no image pixels): what pixel-level maps are read best as."""
    return colorize(attribution, signed, cmap, clip)


def side_by_side(image: Image.Image | np.ndarray, heat: np.ndarray, gap: int = 4) -> np.ndarray:
    """The image (resized to the heatmap) and the heatmap next to each other, a white gap between."""
    h, w = heat.shape[:2]
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    base = np.asarray(img.convert("RGB").resize((w, h), Image.BILINEAR), dtype=np.uint8)
    return np.concatenate([base, np.full((h, gap, 3), 255, np.uint8), heat], axis=1)


def has_negative_relevance(arr, share: float = 0.01) -> bool:
    """Whether a map reaches below zero by more than ``share`` of its largest magnitude, so that it wants a
    diverging colormap centred on zero; rounding-level negatives do not count.  The SRD Explorer's maps at the
    encoder and a middle layer start from a non-negative Eq. 4 map and stay non-negative on Lite0 (0.005-0.4 on
    Chelsea): drawn on a diverging colormap they read as a pale wash.  Its input-level map is signed (23 % of
    the pixels below zero)."""
    a = np.asarray(arr.detach().cpu() if hasattr(arr, "detach") else arr, dtype=np.float64)
    if a.size == 0 or not np.isfinite(a).any():
        return False
    peak = float(np.nanmax(np.abs(a)))
    return peak > 0 and float(np.nanmin(a)) < -share * peak


def default_view(family: str, signed: bool, native_resolution: tuple[int, int] | None,
                 shape: tuple[int, ...]) -> str:
    """"heatmap" for pixel-level maps (LRP family, SRD at input resolution, gradients, Guided Grad-CAM),
    "overlay" for CAMs and maps computed at a coarser resolution than they are shown (a 7x7 map says where,
    so it is read against the image)."""
    if family == "cam" and not signed:
        return "overlay"
    if native_resolution is None:
        return "heatmap" if family in ("lrp", "gradient") else "overlay"
    return "overlay" if min(native_resolution) * 2 <= min(shape[-2:]) else "heatmap"


def view(kind: str, image: Image.Image | np.ndarray, attribution, *, signed: bool = False, cmap: str | None = None,
         clip: float = 100.0, opacity: float = 0.5) -> np.ndarray:
    """One map as shown in a tile: ``kind`` is "heatmap", "overlay" or "side by side" (not "auto")."""
    if kind == "heatmap":
        return heatmap(attribution, signed, cmap, clip)
    if kind == "overlay":
        return overlay(image, attribution, opacity, signed, cmap, clip)
    if kind == "side by side":
        return side_by_side(image, heatmap(attribution, signed, cmap, clip))
    raise ValueError(f"Unknown view {kind!r}; choose heatmap, overlay or side by side.")


def colorbar(cmap: str, width: int = 256, height: int = 10, signed: bool = False) -> np.ndarray:
    """A horizontal strip of the colormap (low left, high right), with dark tick marks at the ends and,
    for signed maps, at zero."""
    strip = np.repeat(lut(cmap)[index(np.linspace(0.0, 1.0, width))][None], height, axis=0)
    ticks = [0, width - 1] + ([width // 2] if signed else [])
    marks = strip.copy()
    marks[height // 2:, ticks] = 0
    return marks


def colorbar_labels(m: float, signed: bool, what: str, clip: float = 100.0) -> str:
    """Tick labels of :func:`colorbar` in one line: min, (0,) max and the unit, plus where the limit comes from.
    A map that is zero everywhere says so (a tile labelled "0 · 0" read as a broken scale; Grad-CAM of an
    untrained network often gives one: no channel has a positive weight for the class)."""
    if not m > 0:
        return f"zero everywhere: no {what} for this class on this image, so the colour scale is empty"
    ends = f"{-m:.3g} · 0 · {m:.3g}" if signed else f"0 · {m:.3g}"
    source = "maximum" if clip >= 100 else f"{clip:g}th percentile"
    of = f"|{what}|" if signed else what
    return f"{ends} {what} (limit = {source} of {of}; beyond it: end colour)"


def colour_scale(shown, signed: bool, what: str, cmap: str | None = None,
                 clip: float = 100.0) -> tuple[np.ndarray, str]:
    """The colour bar drawn under a map and its one-line labels (:func:`colorbar`, :func:`colorbar_labels`), for
    the values ``shown`` drawn with ``cmap`` (default: the first diverging or sequential map) clipped at ``clip``."""
    cmap = cmap or (DIVERGING[0] if signed else SEQUENTIAL[0])
    return colorbar(cmap, signed=signed), colorbar_labels(limit(shown, signed, clip), signed, what, clip)


def enlarge(rgb: np.ndarray, at_least: int = 672) -> np.ndarray:
    """Nearest-neighbour upscale by a whole factor, so single pixels stay sharp when shown large."""
    factor = max(1, -(-at_least // max(rgb.shape[1], 1)))
    return rgb.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else rgb


def upsample(attribution: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of an HxW map (low-resolution maps are shown at input size)."""
    if tuple(attribution.shape[-2:]) == tuple(size):
        return attribution
    return torch.nn.functional.interpolate(attribution[None, None].float(), size=size, mode="bilinear",
                                           align_corners=False)[0, 0]


def encode(rgb: np.ndarray, lossless: bool = True) -> bytes:
    """Image bytes for a browser: PNG (exact pixels: maps alone, where single pixels matter) or JPEG at quality 95
    without chroma subsampling (overlays, which are mostly a photo: ~30x faster to encode than PNG on a noisy
    224 px map, and it is the encoding a rerun of a moved opacity slider has to redo)."""
    if lossless:
        return png_bytes(rgb)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95, subsampling=0)
    return buf.getvalue()


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()
