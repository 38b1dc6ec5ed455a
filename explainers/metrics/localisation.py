"""Localisation and complexity metrics of srd App. E: pointing game, attribution localisation, sparseness.

All three work on a ``[B, H, W]`` map batch on any device and return ``[B]``
tensors; the quantus toolkit gives the same values on the same inputs (see
``tests/test_metrics.py``: quantus's PointingGame has no tolerance, so it is
given our tolerance-dilated mask).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ._common import as_maps


def box_mask(box: Sequence[float], height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(x0, y0, x1, y1)`` in pixels (x1, y1 exclusive) -> boolean ``[H, W]`` mask."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    mask = torch.zeros(height, width, dtype=torch.bool, device=device)
    mask[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = True
    return mask


def dilate(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """Grow boolean ``[B, H, W]`` masks by a Euclidean disc of ``radius`` pixels."""
    masks = masks.bool()
    if radius <= 0:
        return masks
    r = torch.arange(-radius, radius + 1, device=masks.device, dtype=torch.float32)
    disc = ((r[:, None] ** 2 + r[None, :] ** 2) <= radius ** 2).float()[None, None]
    grown = F.conv2d(masks.float()[:, None], disc, padding=radius)[:, 0]
    return grown > 0.5


def _masks_like(masks: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    masks = torch.as_tensor(masks, device=maps.device).bool()
    if masks.dim() == 2:
        masks = masks[None].expand(maps.shape[0], -1, -1)
    if masks.dim() == 4:
        masks = masks.any(1)
    if tuple(masks.shape[-2:]) != tuple(maps.shape[-2:]):
        masks = F.interpolate(masks[:, None].float(), size=maps.shape[-2:], mode="nearest")[:, 0] > 0.5
    return masks


def pointing_game(maps: torch.Tensor, masks: torch.Tensor, tolerance: int = 15) -> torch.Tensor:
    """1.0 when a maximum of the map lies within ``tolerance`` px of the object, else 0.0.

    srd App. E Eq. 24: mu_PG = Hits / (Hits + Misses); the ground-truth region
    is expanded by 15 px so low-resolution maps are not penalised.  Ties at
    the maximum count as a hit when any of them is inside (as quantus does).
    Images with an empty mask give NaN.
    """
    maps = as_maps(maps)
    masks = _masks_like(masks, maps)
    grown = dilate(masks, tolerance).flatten(1)
    flat = maps.flatten(1)
    at_max = flat == flat.amax(1, keepdim=True)
    hit = (at_max & grown).any(1).float()
    hit[masks.flatten(1).sum(1) == 0] = float("nan")
    return hit


def attribution_localisation(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Positive relevance inside the object / total positive relevance (srd App. E Eq. 25: R_in / R_tot).

    Only the positive part counts (srd App. E, after Kohlbrenner et al. 2020),
    so a method cannot score by putting negative relevance on the background.
    """
    maps = as_maps(maps)
    masks = _masks_like(masks, maps)
    pos = maps.clamp(min=0).flatten(1)
    inside = (pos * masks.flatten(1)).sum(1)
    total = pos.sum(1)
    out = inside / (total + 1e-9)  # same stabiliser as quantus
    out[masks.flatten(1).sum(1) == 0] = float("nan")
    return out


def sparseness(maps: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Gini index of |map| (srd App. E Eq. 26, after Chalasani et al. 2020); higher = sparser.

    mu_Spa = 1 - 2 sum_k v_(k) / ||v||_1 * (d - k + 0.5) / d, with v sorted
    ascending, which equals sum_k (2k - d - 1) v_(k) / (d sum v).  quantus adds
    ``eps = 1e-7`` to every value before sorting; pass it to reproduce quantus exactly.
    A map of all zeros has no mass to distribute and scores 0.
    """
    v = as_maps(maps).abs().flatten(1) + eps
    d = v.shape[1]
    v = torch.sort(v, dim=1).values
    k = torch.arange(1, d + 1, device=v.device, dtype=v.dtype)
    total = v.sum(1)
    # srd App. E Eq. 26 (rewritten as sum (2k - d - 1) v_(k) / (d ||v||_1)).
    gini = ((2 * k - d - 1) * v).sum(1) / (d * total.clamp(min=1e-30))
    return torch.where(total > 0, gini, torch.zeros_like(gini))
