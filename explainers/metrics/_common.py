"""Shared helpers for the metrics: map shapes, model calls in chunks, baselines.

Every metric takes maps as a ``[B, H, W]`` tensor (a ``[B, C, H, W]`` map is
channel-summed, a smaller map is bilinearly upsampled to the input size) so
that any registered method, whatever its native resolution, can be scored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

ModelFn = Callable[[torch.Tensor], torch.Tensor]


def as_maps(maps: torch.Tensor | Sequence[torch.Tensor], size: tuple[int, int] | None = None,
            device: torch.device | str | None = None) -> torch.Tensor:
    """Any map batch -> float ``[B, H, W]`` at ``size`` (channel sum first, as the papers rank pixels)."""
    if not isinstance(maps, torch.Tensor):
        maps = torch.stack([torch.as_tensor(m) for m in maps])
    maps = maps.detach().float()
    if maps.dim() == 2:
        maps = maps[None]
    if maps.dim() == 4:
        maps = maps.sum(1)
    if device is not None:
        maps = maps.to(device)
    if size is not None and tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return maps


def as_targets(targets: int | Sequence[int] | torch.Tensor, n: int, device: torch.device | str) -> torch.Tensor:
    if isinstance(targets, int):
        targets = [targets] * n
    t = torch.as_tensor(targets, dtype=torch.long, device=device).reshape(-1)
    if t.numel() == 1 and n > 1:
        t = t.expand(n)
    if t.numel() != n:
        raise ValueError(f"{t.numel()} targets for {n} images")
    return t


@torch.no_grad()
def chunked_forward(model: ModelFn, x: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Logits for a large perturbation batch, ``batch_size`` at a time (memory stays bounded)."""
    outs = [model(x[i:i + batch_size]).float() for i in range(0, x.shape[0], batch_size)]
    return torch.cat(outs)


def baseline_image(x: torch.Tensor, start: str, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """The image pixels are replaced with, in the model's (normalised) input space.

    ``black``: pixel value 0 in [0, 1] pixel space, then re-normalised, as the
    ResNet-LRP code does (resnet-lrp App. A.0.3; released ``patch_insdel.py``).
    ``blurred``: a Gaussian blur of the image (kernel 11, sigma 5, as RISE's
    insertion start).  Blurring commutes with the per-channel affine
    normalisation, so blurring the normalised tensor equals blur-then-normalise.
    ``zero``: 0 in normalised space, i.e. the dataset mean colour (GAE's masking).
    """
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    if start == "black":
        return ((torch.zeros_like(x) - m) / s).expand_as(x).contiguous()
    if start == "blurred":
        from torchvision.transforms.functional import gaussian_blur

        return gaussian_blur(x, kernel_size=[11, 11], sigma=[5.0, 5.0])
    if start == "zero":
        return torch.zeros_like(x)
    raise ValueError(f"unknown start {start!r}; use 'black', 'blurred' or 'zero'")


def max_normalise_positive(maps: torch.Tensor) -> torch.Tensor:
    """Positive part scaled so each map's maximum is 1 (abslrp-gae Sec. 3.2, last paragraph)."""
    pos = maps.clamp(min=0)
    peak = pos.flatten(1).amax(1).clamp(min=1e-12).view(-1, *([1] * (maps.dim() - 1)))
    return pos / peak
