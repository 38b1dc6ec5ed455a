"""Insertion, Deletion and the Insertion-Deletion (ID) score.

resnet-lrp App. A.0.3, Eqs. 9-10: pixels are sorted by the attribution in
descending order; A_n holds the first n of them; the insertion input i_n keeps
x on A_n and the baseline elsewhere, the deletion input d_n the reverse.  The
curves are the softmax probability of the explained class against n; the
scores are their areas (trapezoid rule) and ID = Insertion - Deletion.

Schedule.  The authors' released code (``metrics/patch_insdel.py``) uses
``pixels_per_step`` = 500: at 224x224, ceil(50176 / 500) = 101 points, point i
having min(500 (i + 1), N) pixels inserted/deleted, area by the trapezoid rule
with uniform spacing 1 / (points - 1).  Its curves therefore start at 1 % of
the pixels and its last step (176 px) is counted as a full one.  We add the
point at 0 pixels (the baseline's score for insertion, the image's own score
for deletion: the curve of Eq. 10 starts at n = 0) and integrate over the true
fractions n / N, i.e. the exact area under the piecewise-linear curve on
[0, 1].  ``auc(curves)`` without fractions still gives the code's uniform rule.

Ties.  The released code builds each mask as ``map >= threshold`` where the
threshold is the value at the current rank, so every pixel tied at that value
enters (or leaves) at once.  After heat quantization (resnet-lrp Eq. 8) most
pixels share the lowest level, so once the rank reaches it, insertion jumps to
the full image and deletion to the full baseline: Insertion is inflated and
Deletion deflated.  ``ties="together"`` reproduces that protocol;
``ties="strict"`` uses a strict order (the ranked map, then an optional raw
map as a secondary key, then a seeded random tiebreak) so exactly n pixels are
changed at point n.  Without ties the two protocols are identical.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ._common import ModelFn, as_maps, as_targets, baseline_image

TIES = ("together", "strict")
# Names the curve protocol (points and area rule) for stored results: values stored under another protocol
# (the earlier 1 %-first, uniform-spacing one) must not be reused as if comparable.
SCHEDULE = "0px-first/exact-trapezoid"
STARTS = ("black", "blurred")


@dataclass
class InsDelResult:
    """Curves and areas for a batch: ``insertion``/``deletion`` are ``[B, S]`` on the CPU."""

    fractions: torch.Tensor  # [S] fraction of pixels inserted / deleted at each point
    insertion: torch.Tensor  # [B, S]
    deletion: torch.Tensor  # [B, S]
    insertion_auc: torch.Tensor  # [B]
    deletion_auc: torch.Tensor  # [B]
    ties: str
    start: str

    @property
    def id_score(self) -> torch.Tensor:
        """resnet-lrp Sec. 4.2 / App. A.0.3: ID = Insertion - Deletion."""
        return self.insertion_auc - self.deletion_auc


def schedule(n_pixels: int, pixels_per_step: int = 500) -> torch.Tensor:
    """Pixel counts per curve point: 0, then min(k i, N) for i = 1 .. ceil(N / k) (102 points at 224^2).

    The authors' code has the same points without the leading 0 (see the module docstring).
    """
    if pixels_per_step < 1:
        raise ValueError("pixels_per_step must be >= 1")
    points = math.ceil(n_pixels / pixels_per_step)
    return torch.clamp(torch.arange(0, points + 1) * pixels_per_step, max=n_pixels)


def auc(curves: torch.Tensor, fractions: torch.Tensor | None = None) -> torch.Tensor:
    """Area under ``curves`` ``[..., S]`` by the trapezoid rule (resnet-lrp App. A.0.3).

    With ``fractions`` (the x of each point, in [0, 1]) the exact area of the piecewise-linear curve;
    without, uniform spacing 1 / (S - 1) as the authors' ``patch_insdel.py``.
    """
    s = curves.shape[-1]
    if s == 1:
        return curves[..., 0]
    if fractions is not None:
        return torch.trapezoid(curves, x=fractions.to(curves.dtype), dim=-1)
    return torch.trapezoid(curves, dx=1.0 / (s - 1), dim=-1)


def tie_protocols(shown: torch.Tensor, raw: torch.Tensor | None = None) -> tuple[str, ...]:
    """The tie protocols worth reporting for a map: both where they can differ, else ``("together",)``.

    They differ only when the ranked map has ties: always possible after display post-processing
    (``shown`` is not the ``raw`` map, e.g. heat-quantised), or when the map itself repeats a value
    (a CAM's ReLU leaves a plateau at 0).  Without ties they give identical curves, so one suffices.
    """
    flat = shown.flatten()
    processed = raw is not None and not torch.equal(shown, raw)
    tied = torch.unique(flat).numel() < flat.numel()
    return TIES if processed or tied else ("together",)


def strict_rank(maps: torch.Tensor, raw: torch.Tensor | None = None, seed: int = 0) -> torch.Tensor:
    """Rank of every pixel (0 = first) in a strict order: map desc, raw desc, seeded random.

    Three stable sorts, least significant key first, give the lexicographic
    order without building a composite float key (which could itself tie).
    """
    b, n = maps.shape[0], maps[0].numel()
    flat = maps.reshape(b, n)
    # One generator per image, seeded alike: an image's tiebreak does not depend on its place in a batch, so the
    # dataset pipeline's batches give exactly the per-image values.
    order = torch.stack([torch.randperm(n, generator=torch.Generator().manual_seed(seed))
                         for _ in range(b)]).to(flat.device)
    if raw is not None:
        key = raw.reshape(b, n).gather(1, order)
        order = order.gather(1, torch.sort(key, dim=1, descending=True, stable=True).indices)
    key = flat.gather(1, order)
    order = order.gather(1, torch.sort(key, dim=1, descending=True, stable=True).indices)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(n, device=flat.device).expand(b, n).contiguous())
    return rank


def insertion_masks(maps: torch.Tensor, counts: torch.Tensor, ties: str = "together",
                    raw: torch.Tensor | None = None, seed: int = 0) -> torch.Tensor:
    """Boolean ``[B, S, H, W]``: True where the pixel is in A_n (resnet-lrp Eq. 9) at each point.

    ``together``: A_n = {map >= the n-th largest value} (ties enter at once, authors' code);
    ``strict``: A_n = the first n pixels of :func:`strict_rank` (|A_n| = n exactly).
    """
    b, h, w = maps.shape
    flat = maps.reshape(b, h * w)
    counts = counts.to(flat.device)
    if ties == "together":
        sorted_desc = torch.sort(flat, dim=1, descending=True).values
        thresholds = sorted_desc[:, (counts - 1).clamp(min=0)]  # [B, S]
        # n = 0 inserts nothing (no threshold can express that with ties at the top)
        masks = (flat[:, None, :] >= thresholds[:, :, None]) & (counts > 0)[None, :, None]
    elif ties == "strict":
        rank = strict_rank(maps, raw, seed)
        masks = rank[:, None, :] < counts[None, :, None]
    else:
        raise ValueError(f"unknown ties protocol {ties!r}; use one of {TIES}")
    return masks.reshape(b, -1, h, w)


@torch.no_grad()
def insertion_deletion_curves(model: ModelFn, x: torch.Tensor, maps: torch.Tensor | Sequence[torch.Tensor],
                              targets: int | Sequence[int] | torch.Tensor, *,
                              mean: Sequence[float] = (0.0, 0.0, 0.0), std: Sequence[float] = (1.0, 1.0, 1.0),
                              pixels_per_step: int = 500, ties: str = "together", start: str = "black",
                              raw: torch.Tensor | None = None, seed: int = 0, batch_size: int = 32,
                              ) -> InsDelResult:
    """Insertion and deletion curves of a batch on any model (the engine under :func:`insertion_deletion`).

    ``x`` is the normalised ``[B, 3, H, W]`` input; ``mean``/``std`` define pixel
    space for the black start; ``raw`` is the strict protocol's secondary key
    (e.g. the map before heat quantization).  All perturbed inputs are built
    on ``x``'s device and pushed through ``model`` ``batch_size`` at a time.
    """
    if start not in STARTS:
        raise ValueError(f"unknown start {start!r}; use one of {STARTS}")
    if x.dim() == 3:
        x = x[None]
    b, _, h, w = x.shape
    maps = as_maps(maps, (h, w), x.device)
    raw_maps = as_maps(raw, (h, w), x.device) if raw is not None else None
    targets = as_targets(targets, b, x.device)
    counts = schedule(h * w, pixels_per_step)
    masks = insertion_masks(maps, counts, ties, raw_maps, seed)  # [B, S, H, W]
    base = baseline_image(x, start, mean, std)
    black = baseline_image(x, "black", mean, std)
    s = counts.numel()
    # The 2S perturbed inputs of every image form one stream of B * 2S rows (image i's insertion steps, then its
    # deletion steps), pushed through the model ``batch_size`` rows at a time: the steps of several images share
    # a forward batch, so a batch of small images (or a GPU) is not starved by one image's 2S rows.
    rows = b * 2 * s
    probs = torch.empty(rows, device=x.device)  # stays on the device: one copy to the host at the end
    for first in range(0, rows, batch_size):
        idx = torch.arange(first, min(first + batch_size, rows), device=x.device)
        img, k = idx // (2 * s), idx % (2 * s)
        m = masks[img, k % s][:, None].to(x.dtype)  # [n, 1, H, W]
        xi = x[img]
        # resnet-lrp Eq. 10: i_n = x on A_n, baseline elsewhere; d_n = baseline on A_n, x elsewhere.
        # Deletion always removes to black (the authors' protocol); ``start`` changes only where insertion begins.
        inserted = m * xi + (1 - m) * base[img]
        deleted = (1 - m) * xi + m * black[img]
        batch = torch.where((k >= s)[:, None, None, None], deleted, inserted)
        out = model(batch).float().softmax(-1)
        probs[idx] = out[torch.arange(idx.numel(), device=x.device), targets[img]]
    both = probs.reshape(b, 2 * s).cpu()  # [B, 2S]
    ins, dele = both[:, :s], both[:, s:]
    return InsDelResult(fractions=counts.float() / (h * w), insertion=ins, deletion=dele,
                        insertion_auc=auc(ins, counts.float() / (h * w)),
                        deletion_auc=auc(dele, counts.float() / (h * w)), ties=ties, start=start)


# CPU forward passes of the perturbed inputs: chunks of 8 in channels_last memory format.  Measured on this
# project's 2-core CPU (inference, ms per image): EfficientNet-Lite0 41.3 at batch 32, 21.4 at batch 8, 15.0 at
# batch 8 channels_last; ResNet-50 102 at batch 32, 61 at batch 8 channels_last.  The curves are the same to
# float rounding (another convolution algorithm).  A model that cannot run channels_last inputs (a ``.view`` on
# a feature map) falls back to contiguous inputs.
CPU_CHUNK = 8
_CONTIGUOUS_ONLY: set[int] = set()  # id() of the shared models whose channels_last run failed


def _cpu_forward(bundle) -> ModelFn:
    from ..guard import model_guard

    key = id(bundle.model)

    def model(batch: torch.Tensor) -> torch.Tensor:
        chunks = batch.split(CPU_CHUNK)
        if key not in _CONTIGUOUS_ONLY:
            try:
                with model_guard(bundle, requires_grad=False, view_key="insdel:channels_last") as m:
                    m.to(memory_format=torch.channels_last)  # the private view's own tensors (a no-op once done)
                    return torch.cat([m(c.contiguous(memory_format=torch.channels_last)) for c in chunks])
            except RuntimeError:
                _CONTIGUOUS_ONLY.add(key)
        with bundle.lock:
            return torch.cat([bundle.model(c) for c in chunks])

    return model


def insertion_deletion(bundle, x: torch.Tensor, maps: torch.Tensor | Sequence[torch.Tensor],
                       targets: int | Sequence[int] | torch.Tensor, **kwargs) -> InsDelResult:
    """:func:`insertion_deletion_curves` on a :class:`~explainers.models.ModelBundle` (its device and normalisation)."""
    if bundle.device.type == "cpu":
        model = _cpu_forward(bundle)
    else:
        def model(batch: torch.Tensor) -> torch.Tensor:
            with bundle.lock:
                return bundle.model(batch)

    return insertion_deletion_curves(model, x.to(bundle.device), maps, targets, mean=bundle.prep.mean,
                                     std=bundle.prep.std, **kwargs)
