"""Focus and GAE (abslrp-gae Sec. 2.3 and Sec. 3.2): mosaic-based and perturbation-based scores.

Quadrant order everywhere is (top-left, top-right, bottom-left, bottom-right),
as quantus's Focus ``custom_batch`` tuples.  quantus quirk: its per-instance
helper ``quadrant_top_right`` (older releases) slices the bottom-left region
of a C x H x W map, so Focus from those releases swaps TR and BL.  The
installed quantus 0.6.0 computes Focus in ``evaluate_batch`` with correct
slices; ``tests/test_metrics.py`` checks our values equal that on the same maps.

Where we differ from the released GAE code (abslrp_gae/gae/gae.py), on purpose:

* Masking schedule.  The released code zeroes the top-k (MoRF) or bottom-k
  (LeRF) entries of the *current* impact map with k = int(p C H W); entries
  already zeroed score 0, so MoRF zeroes cumulative fractions 0, .1, .3, .6,
  ~1 while LeRF zeroes 0, .1, ..., .9: the two curves are not comparable step
  by step.  We zero, among the entries not yet zeroed, the most (MoRF) or
  least (LeRF) impactful ones so that exactly the cumulative fraction t / T is
  zeroed at step t in both modes (the paper's description, Sec. 3.2).
* Mosaic indexing.  ``_create_mosaic`` puts images j, n+j, 2n+j, 3n+j in
  mosaic j while the positive and label indexing assume 4j..4j+3; the two
  agree only at batch size 4.  Our mosaics are built explicitly from four
  images (``explainers/mosaic.py``), so there is no indexing to get wrong.
* Scoring map.  The code sets only the centre 2x2 pixels of each quadrant
  boundary and does not clamp tile scores; we fill whole quadrants (the
  paper's S_mosaic) and clamp 2 s_p[c_n] / s_p[c_p] - 1 to [-1, 1] (it can only
  exceed 1 when the positive's own class is not its argmax).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ._common import ModelFn, as_maps, max_normalise_positive

ExplainFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def quadrant_masks(height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Boolean ``[4, H, W]``: TL, TR, BL, BR (integer halves; an odd extra row/column goes to the bottom/right)."""
    hh, hw = height // 2, width // 2
    masks = torch.zeros(4, height, width, dtype=torch.bool, device=device)
    masks[0, :hh, :hw] = True
    masks[1, :hh, hw:] = True
    masks[2, hh:, :hw] = True
    masks[3, hh:, hw:] = True
    return masks


def focus(maps: torch.Tensor, target_quadrants: Sequence[Sequence[bool]] | Sequence[bool]) -> torch.Tensor:
    """Positive relevance in the target quadrants / total positive relevance (abslrp-gae Eq. 11, Arias-Duart 2022).

    ``target_quadrants``: one (TL, TR, BL, BR) flag tuple per map (or one for all).
    """
    maps = as_maps(maps)
    b, h, w = maps.shape
    flags = torch.as_tensor(target_quadrants, dtype=torch.float32, device=maps.device)
    if flags.dim() == 1:
        flags = flags[None].expand(b, 4)
    scoring = torch.einsum("bq,qhw->bhw", flags, quadrant_masks(h, w, maps.device).float())
    pos = maps.clamp(min=0)
    # abslrp-gae Eq. 11: F(m) = (R(p1) + R(p2)) / R(m), R = sum of positive relevance
    return (pos * scoring).flatten(1).sum(1) / (pos.flatten(1).sum(1) + 1e-9)


def scoring_map(height: int, width: int, positive: int, quadrant_classes: Sequence[int],
                positive_probs: torch.Tensor) -> torch.Tensor:
    """S_mosaic of abslrp-gae Sec. 3.2: 1 on the positive quadrant, 2 s_p[c_n] / s_p[c_p] - 1 on the others.

    ``positive_probs`` is s^p, the softmax of the positive image on its own;
    ``quadrant_classes`` the predicted class c of each quadrant's image.
    """
    probs = torch.as_tensor(positive_probs, dtype=torch.float32).flatten().cpu()
    cp = int(quadrant_classes[positive])
    values = []
    for q, c in enumerate(quadrant_classes):
        if q == positive:
            values.append(1.0)
        else:
            # abslrp-gae Sec. 3.2 (before Eq. 17): S = 2 s_p[c_n] / s_p[c_p] - 1, clamped to [-1, 1]
            values.append(float(max(-1.0, min(1.0, 2.0 * float(probs[int(c)]) / max(float(probs[cp]), 1e-12) - 1.0))))
    s = torch.einsum("q,qhw->hw", torch.tensor(values), quadrant_masks(height, width).float())
    return s


def contrastiveness(mosaic_maps: torch.Tensor, scoring: torch.Tensor) -> torch.Tensor:
    """C = ( sum(A+ S) / ||A+||_1 )^+ on the positive-only, max-normalised mosaic map (abslrp-gae Eq. 17).

    A constant map scores relu(mean S): 0 whenever the negatives' classes are
    unlikely for the positive image, as the paper's tables show for such maps.
    """
    maps = max_normalise_positive(as_maps(mosaic_maps))
    s = torch.as_tensor(scoring, dtype=maps.dtype, device=maps.device)
    if s.dim() == 2:
        s = s[None].expand_as(maps)
    total = maps.flatten(1).sum(1)
    c = (maps * s).flatten(1).sum(1) / total.clamp(min=1e-12)
    return torch.where(total > 0, c, torch.zeros_like(c)).clamp(min=0)


def l1_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||a - b||_1 / (||a||_1 + ||b||_1) over all but the first dimension (abslrp-gae Eqs. 13-14)."""
    num = (a - b).abs().flatten(1).sum(1)
    den = a.abs().flatten(1).sum(1) + b.abs().flatten(1).sum(1)
    return num / den.clamp(min=1e-12)


@dataclass
class LocalConsistency:
    """Per-image parts of abslrp-gae Eqs. 13-16 and the curves behind them (CPU tensors)."""

    robustness: torch.Tensor  # LC_R [B], Eq. 14
    faithfulness: torch.Tensor  # LC_F [B], Eq. 15
    score: torch.Tensor  # LC [B], Eq. 16
    fractions: torch.Tensor  # [T] cumulative zeroed fraction at each recorded step
    outputs_morf: torch.Tensor  # [B, T] target logit / initial logit
    outputs_lerf: torch.Tensor
    sim_morf: torch.Tensor  # [B, T] Eq. 13
    sim_lerf: torch.Tensor
    impact: torch.Tensor  # [B, H, W] combined impact map I_c


def _impact(model: ModelFn, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """|x * d|logit_c| / dx| (abslrp-gae Sec. 3.2: masking loss = |target output|) and the target logits."""
    x = x.detach().requires_grad_(True)
    logits = model(x).float()
    out = logits.gather(1, targets[:, None])[:, 0]
    (grad,) = torch.autograd.grad(out.abs().sum(), x)
    return (x * grad).abs().detach(), out.detach()


def local_consistency(model: ModelFn, explain_fn: ExplainFn, x: torch.Tensor,
                      targets: Sequence[int] | torch.Tensor, *, steps: int = 10,
                      reference: torch.Tensor | None = None) -> LocalConsistency:
    """Local consistency LC (abslrp-gae Sec. 3.2, Eqs. 13-16) for a batch of positives.

    At recorded step t = 0..T-1 the input has the cumulative fraction t / T of
    its entries (C x H x W, zero = mean colour in normalised space) zeroed,
    most impactful first (MoRF) or least first (LeRF), the impact being
    recomputed at every step.  We record the target logit, the impact map and
    the method's map.  MoRF and LeRF run as one batch of 2B; the method is
    called once on all 2 B T perturbed inputs.
    """
    if x.dim() == 3:
        x = x[None]
    b = x.shape[0]
    targets = torch.as_tensor(targets, dtype=torch.long, device=x.device).reshape(-1)
    n = x[0].numel()
    cur = torch.cat([x, x]).detach().clone()  # [MoRF batch; LeRF batch]
    zeroed = torch.zeros(2 * b, n, dtype=torch.bool, device=x.device)
    t2 = targets.repeat(2)
    inputs, logits, impacts = [], [], []
    for t in range(steps):
        imp, out = _impact(model, cur, t2)
        inputs.append(cur.clone())
        logits.append(out)
        impacts.append(imp)
        if t == steps - 1:
            break
        # after step t exactly round(t / T n) entries are zeroed (every step tops up to its fraction), so k is
        # known on the host: reading zeroed.sum() would synchronise the device once per step
        k = int(round((t + 1) / steps * n)) - int(round(t / steps * n))
        score = imp.flatten(1).clone()
        # entries already zeroed are never picked again: MoRF takes the largest remaining, LeRF the smallest
        score[:b][zeroed[:b]] = -float("inf")
        score[b:][zeroed[b:]] = float("inf")
        top = torch.topk(score[:b], k, dim=1, largest=True).indices
        low = torch.topk(score[b:], k, dim=1, largest=False).indices
        zeroed[:b].scatter_(1, top, True)
        zeroed[b:].scatter_(1, low, True)
        cur = cur.masked_fill(zeroed.view_as(cur), 0.0)
    size = tuple(x.shape[-2:])
    allx = torch.stack(inputs, 1).reshape(2 * b * steps, *x.shape[1:])  # [(mode, b) x T] ordered mode-major
    maps = as_maps(explain_fn(allx, t2.repeat_interleave(steps)), size).cpu().reshape(2, b, steps, *size)
    maps = max_normalise_positive(maps.reshape(-1, *size)).reshape(2, b, steps, *size)
    ref = maps[0, :, 0] if reference is None else max_normalise_positive(as_maps(reference, size).cpu())
    o = torch.stack(logits, 1).cpu().reshape(2, b, steps)  # [mode, B, T]
    o = o / o[:, :, :1].where(o[:, :, :1].abs() > 1e-12, torch.ones_like(o[:, :, :1]))  # normalise by o_init
    sim = torch.stack([1 - l1_distance(ref.repeat(2, 1, 1), maps[:, :, t].reshape(2 * b, *size)).reshape(2, b)
                       for t in range(steps)], -1)  # abslrp-gae Eq. 13
    d_o = (o[1] - o[0])[:, 1:]  # abslrp-gae Eq. 14: d^o_t = o_t^Le - o_t^Mo
    d_a = (sim[1] - sim[0])[:, 1:]  # d^A_t = sim_t^Le - sim_t^Mo
    lc_r = 1 - 2 * (d_o - d_a).abs().sum(1) / (d_o.abs().sum(1) + d_a.abs().sum(1)).clamp(min=1e-12)  # Eq. 14
    imp = torch.stack(impacts, 1).cpu().reshape(2, b, steps, *x.shape[1:]).sum(3)  # channel sum -> [2, B, T, H, W]
    imp = imp / imp.flatten(3).sum(-1).clamp(min=1e-12)[..., None, None]  # SUM_TO_ONE per step, as the code
    combined = imp[1].sum(1) - imp[0].sum(1)  # I_c = sum_t r^Le_t - sum_t r^Mo_t
    lc_f = (ref * combined.sign()).flatten(1).sum(1) / ref.flatten(1).sum(1).clamp(min=1e-12)  # Eq. 15
    lc = ((lc_r + lc_f) / 2).clamp(min=0)  # Eq. 16
    return LocalConsistency(robustness=lc_r, faithfulness=lc_f, score=lc,
                            fractions=torch.arange(steps).float() / steps, outputs_morf=o[0], outputs_lerf=o[1],
                            sim_morf=sim[0], sim_lerf=sim[1], impact=combined)


def gae(local: torch.Tensor, contrast: torch.Tensor) -> torch.Tensor:
    """GAE = LC x C (abslrp-gae Eq. 18)."""
    return local * contrast
