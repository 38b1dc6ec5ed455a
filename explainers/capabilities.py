"""What a model's graph contains, decided once per model: which methods apply is read from this, not from a
family name (families stay as display labels).

- ``propagation``: the model traces with ``torch.fx`` and every node has a propagation rule (LRP, ResNet-LRP,
  absLRP, SRD need it); otherwise ``reason`` names the untraceable operation, and the CAM and gradient methods
  still work.
- ``residual`` / ``attention`` / ``depthwise``: residual additions in the graph, attention modules, depthwise convs.
- ``cam_layer``: the CAM target layer: the last module to finish with a spatial ``[B, C, H, W]`` output (H, W > 1),
  i.e. the last spatial block; ``None`` when there is none (then only gradient methods apply, or a ViT-like token
  model with ``tokens=True``).

The probe runs on a private copy of the model, so hooks never touch the shared one.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from weakref import WeakKeyDictionary

import torch
from torch import nn

from .errors import ExplainerError


@dataclass(frozen=True)
class Capabilities:
    propagation: bool
    reason: str | None
    residual: bool
    attention: bool
    depthwise: bool
    cam_layer: str | None
    tokens: bool  # outputs of its blocks are [B, tokens, C] sequences (a ViT): CAMs need a reshape

    @property
    def spatial(self) -> bool:
        return self.cam_layer is not None or self.tokens


_CACHE: WeakKeyDictionary = WeakKeyDictionary()
_LOCK = threading.Lock()


def capabilities(model: nn.Module, input_size: int = 224, name: str = "") -> Capabilities:
    """Analyse ``model`` once (cached per model object; thread-safe)."""
    with _LOCK:
        hit = _CACHE.get(model)
        if hit is not None:
            return hit
        caps = _analyse(model, input_size, name)
        _CACHE[model] = caps
        return caps


def _analyse(model: nn.Module, input_size: int, name: str) -> Capabilities:
    from .propagation.graph import build_graph

    attention = any("attention" in type(m).__name__.lower() for m in model.modules())
    depthwise = any(isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
                    for m in model.modules())
    residual, propagation, reason = False, True, None
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    example = torch.zeros(1, 3, input_size, input_size, device=device)
    try:
        graph = build_graph(model, name or type(model).__name__, example=example)
        residual = bool(graph.residuals)
    except ExplainerError as exc:  # the engine's typed "not supported" errors name the operation
        propagation, reason = False, str(exc)
    cam_layer, tokens = _spatial_layer(model, example)
    return Capabilities(propagation, reason, residual, attention, depthwise, cam_layer, tokens)


def _spatial_layer(model: nn.Module, example: torch.Tensor) -> tuple[str | None, bool]:
    """(name of the last module to finish with a spatial map, whether blocks emit token sequences)."""
    probe = copy.deepcopy(model).eval()
    finished: list[tuple[str, tuple[int, ...]]] = []

    def hook(name):
        def record(_m, _inp, out):
            if isinstance(out, torch.Tensor):
                finished.append((name, tuple(out.shape)))
        return record

    for n, m in probe.named_modules():
        if n:
            m.register_forward_hook(hook(n))
    with torch.no_grad():
        probe(example)
    last = max((i for i, (_, s) in enumerate(finished) if len(s) == 4 and s[2] > 1 and s[3] > 1), default=None)
    start = -1 if last is None else last
    # Token sequences [B, T, C] produced after the last spatial map (a ViT's blocks after its patch embedding):
    # the map is an input stem, not the feature map a CAM should use.
    tokens = any(len(s) == 3 and s[1] > 1 for _, s in finished[start + 1:])
    if tokens or last is None:
        return None, tokens
    return finished[last][0], False
