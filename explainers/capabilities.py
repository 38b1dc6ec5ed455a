"""What a model's graph contains, decided once per model: which methods apply is read from this, not from a
family name (families stay as display labels).

- ``propagation``: the model traces with ``torch.fx`` and every node has a propagation rule (LRP, ResNet-LRP,
  absLRP, SRD need it); otherwise ``reason`` names the untraceable operation, and the CAM and gradient methods
  still work.
- ``residual`` / ``attention`` / ``depthwise``: residual additions in the graph, attention modules, depthwise convs.
- ``cam_layer``: the CAM target layer: the last module to finish with a spatial ``[B, C, H, W]`` output (H, W > 1),
  i.e. the last spatial block; ``None`` when there is none (then only gradient methods apply, or a ViT-like token
  model with ``tokens=True``).
- ``distinct_activations``: every nonlinearity is its own module, called once (captum's DeepLift needs it; a
  torchvision ResNet reuses one ReLU per block).

A method states what it needs as a :class:`Requirement` (``MethodSpec.needs``); ``registry.supports`` tests it
against these capabilities, and the message for a missing one names what is missing (for an untraceable model:
the operation).

The probe runs on a private copy of the model, so hooks never touch the shared one.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
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
    distinct_activations: bool = True
    # Each named module's output shape at the analysed input size (its last call); not part of equality.
    layer_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict, compare=False, repr=False)

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
    residual, propagation, reason, distinct = False, True, None, False
    try:
        first = next(model.parameters())
        device, dtype = first.device, first.dtype
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    example = torch.zeros(1, 3, input_size, input_size, device=device, dtype=dtype)
    try:
        graph = build_graph(model, name or type(model).__name__, example=example)
        residual = bool(graph.residuals)
        distinct = _activations_called_once(graph.module)
    except ExplainerError as exc:  # the engine's typed "not supported" errors name the operation
        propagation, reason = False, str(exc)
    except Exception as exc:  # noqa: BLE001 - e.g. a model without parameters: no propagation, other methods stay
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        propagation, reason = False, f"the graph of {name or type(model).__name__} could not be analysed " \
                                     f"({type(exc).__name__}{': ' + first if first else ''})"
    shapes: dict[str, tuple[int, ...]] = {}
    cam_layer, tokens = _spatial_layer(model, example, shapes)
    return Capabilities(propagation, reason, residual, attention, depthwise, cam_layer, tokens, distinct, shapes)


_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish,
                nn.Hardsigmoid, nn.Softplus, nn.Mish)


def _activations_called_once(gm) -> bool:
    """No activation module is called twice, and no activation is a bare function (fx call_function)."""
    modules = dict(gm.named_modules())
    calls = Counter(n.target for n in gm.graph.nodes
                    if n.op == "call_module" and isinstance(modules.get(n.target), _ACTIVATIONS))
    functional = any(n.op in ("call_function", "call_method") and getattr(n.target, "__name__", str(n.target))
                     in ("relu", "relu_", "relu6", "gelu", "silu", "sigmoid", "tanh", "hardswish")
                     for n in gm.graph.nodes)
    return bool(calls) and max(calls.values()) == 1 and not functional


@dataclass(frozen=True)
class Requirement:
    """What a method needs from a model, testable on its :class:`Capabilities`."""

    name: str
    test: Callable[[Capabilities], bool]
    needs: str  # completes "<method> needs ..."

    def met(self, caps: Capabilities) -> bool:
        return bool(self.test(caps))

    def why_not(self, caps: Capabilities) -> str:
        """Why ``caps`` does not meet this requirement (one sentence, naming the untraceable operation)."""
        if self.name in ("propagation", "conv propagation") and not caps.propagation and caps.reason:
            return f"needs {self.needs}, and {caps.reason.rstrip('.')}"
        return f"needs {self.needs}"


ANY = Requirement("any", lambda c: True, "nothing")
SPATIAL = Requirement("spatial", lambda c: c.spatial,
                      "a spatial feature map (a convolutional block or a ViT's patch tokens)")
CONV_MAP = Requirement("conv map", lambda c: c.cam_layer is not None and not c.tokens,
                       "a convolutional feature map")
PROPAGATION = Requirement("propagation", lambda c: c.propagation,
                          "a model torch.fx can trace with a propagation rule for every operation")
CONV_PROPAGATION = Requirement("conv propagation", lambda c: c.propagation and not c.tokens and not c.attention,
                               "a convolutional network torch.fx can trace with a rule for every operation")
DISTINCT_ACTIVATIONS = Requirement("distinct activations",
                                   lambda c: c.cam_layer is not None and c.distinct_activations,
                                   "a CNN whose every activation is its own module, called once (captum's DeepLift)")
ABSLRP = Requirement("abslrp", lambda c: c.propagation or (c.tokens and c.attention),
                     "a model torch.fx can trace with a propagation rule for every operation, or a ViT")


def capabilities_of(bundle) -> Capabilities:
    """The capabilities of a loaded :class:`~explainers.models.ModelBundle` (at its input size)."""
    return capabilities(bundle.model, bundle.input_size, bundle.label)


def _spatial_layer(model: nn.Module, example: torch.Tensor,
                   shapes: dict[str, tuple[int, ...]] | None = None) -> tuple[str | None, bool]:
    """(name of the last module to finish with a spatial map, whether blocks emit token sequences); fills
    ``shapes`` with each module's output shape."""
    from .guard import twin

    probe = twin(model).eval()  # own modules and hook tables, shared weight storage
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
    if shapes is not None:
        shapes.update(finished)
    last = max((i for i, (_, s) in enumerate(finished) if len(s) == 4 and s[2] > 1 and s[3] > 1), default=None)
    start = -1 if last is None else last
    # Token sequences [B, T, C] produced after the last spatial map (a ViT's blocks after its patch embedding):
    # the map is an input stem, not the feature map a CAM should use.
    tokens = any(len(s) == 3 and s[1] > 1 for _, s in finished[start + 1:])
    if tokens or last is None:
        return None, tokens
    return finished[last][0], False
