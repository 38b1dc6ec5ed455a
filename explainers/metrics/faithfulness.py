"""Fidelity and stability (srd App. E): does the map track the model, and does it survive noise?"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ._common import ModelFn, as_maps, as_targets, chunked_forward

ExplainFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x [B,3,H,W], targets [B]) -> maps [B,H,W]


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation along the last dimension (0 when either side is constant)."""
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    denom = a.norm(dim=-1) * b.norm(dim=-1)
    return torch.where(denom > 0, (a * b).sum(-1) / denom.clamp(min=1e-30), torch.zeros_like(denom))


@torch.no_grad()
def fidelity(model: ModelFn, x: torch.Tensor, maps: torch.Tensor | Sequence[torch.Tensor],
             targets: int | Sequence[int] | torch.Tensor, *, subset: int = 200, runs: int = 100,
             seed: int = 0, batch_size: int = 32) -> torch.Tensor:
    """Correlation between the summed attribution of random pixel subsets and the logit drop when they are zeroed.

    srd App. E (Bhatt et al. 2020): mu_Fid = Corr_S( sum_{i in S} phi(x)_i,
    F(x) - F(x[x_S = 0]) ) over ``runs`` random subsets S of ``subset`` pixels
    (all channels of a pixel are zeroed; 0 is the normalised input, i.e. the
    mean colour).  F is the target logit.  Returns ``[B]`` on the CPU.
    """
    if x.dim() == 3:
        x = x[None]
    b, _, h, w = x.shape
    maps = as_maps(maps, (h, w), x.device).flatten(1)
    targets = as_targets(targets, b, x.device)
    gen = torch.Generator().manual_seed(seed)
    out = []  # kept on the device; one copy to the host at the end
    for i in range(b):
        subsets = torch.stack([torch.randperm(h * w, generator=gen)[:subset] for _ in range(runs)]).to(x.device)
        keep = torch.ones(runs, h * w, device=x.device, dtype=x.dtype)
        keep.scatter_(1, subsets, 0.0)
        perturbed = x[i:i + 1] * keep.view(runs, 1, h, w)
        logits = chunked_forward(model, torch.cat([x[i:i + 1], perturbed]), batch_size)[:, targets[i]]
        drop = logits[0] - logits[1:]
        summed = maps[i][subsets].sum(1)
        out.append(pearson(summed.float(), drop.float()))
    return torch.stack(out).cpu()


def max_abs_normalise(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map into [-1, 1] by its largest |value| (srd App. E: metrics after clamping to [-1, 1])."""
    peak = maps.flatten(1).abs().amax(1).clamp(min=1e-12).view(-1, *([1] * (maps.dim() - 1)))
    return maps / peak


def stability(explain_fn: ExplainFn, x: torch.Tensor, targets: int | Sequence[int] | torch.Tensor, *,
              sigma: float = 0.1, samples: int = 5, seed: int = 0,
              reference: torch.Tensor | None = None) -> torch.Tensor:
    """max_j ||phi(x) - phi(x_j)||_2 / ||x - x_j||_2 over Gaussian-noised copies x_j (lower is better).

    srd App. E Eq. 27 (Alvarez-Melis & Jaakkola 2018), noise std 0.1 in the
    model's input space, ``samples`` draws.  Maps are scaled into [-1, 1] by
    their max |value| first, as the SRD authors score maps after clamping to
    [-1, 1]; otherwise methods with large raw scales would look unstable.
    ``explain_fn`` is called once on all ``B * samples`` noisy images.
    """
    if x.dim() == 3:
        x = x[None]
    b = x.shape[0]
    targets = as_targets(targets, b, x.device)
    gen = torch.Generator().manual_seed(seed)
    noise = (torch.randn((samples, *x.shape), generator=gen) * sigma).to(x.device, x.dtype)  # [S, B, 3, H, W]
    noisy = (x[None] + noise).reshape(samples * b, *x.shape[1:])
    ref = reference if reference is not None else explain_fn(x, targets)
    size = tuple(x.shape[-2:])
    ref = max_abs_normalise(as_maps(ref, size))
    pert = max_abs_normalise(as_maps(explain_fn(noisy, targets.repeat(samples)), size)).reshape(samples, b, *size)
    num = (pert.cpu() - ref.cpu()[None]).flatten(2).norm(dim=-1)  # [S, B]
    den = noise.cpu().flatten(2).norm(dim=-1)
    return (num / den).amax(0)


def method_explain_fn(bundle: Any, method: str, options: dict[str, Any] | None = None,
                      display: bool = False) -> ExplainFn:
    """An :data:`ExplainFn` for a registered method (maps on the CPU, ``[B, H, W]``).

    ``display=True`` applies the method's display-time post-processing (e.g.
    heat quantization), so a metric scores the map the user sees.
    """
    from ..registry import explain_batch, get_method

    opts = dict(options or {})
    spec = get_method(method)

    def fn(x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        res = explain_batch(bundle, x, method, target=[int(t) for t in targets], **opts)
        maps = [spec.display_map(r.attribution, opts) if display else r.attribution for r in res]
        return torch.stack([m.float() for m in maps])

    return fn
