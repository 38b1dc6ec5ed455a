"""The method registry and :func:`explain`, the one entry point every caller uses.

A method is a :class:`MethodSpec` (display name, family, typed options, what it
needs from a model's graph) around a function that maps a batch of images and
targets to a batch of maps.  Which models a method supports is decided by
:mod:`explainers.capabilities` from the traced graph and the modules (residual
adds, attention, a spatial map, traceability), never by a model family name:
families are display labels only.  Adding a method is one small module in
``explainers/methods/`` that calls :func:`register`; the app builds its option
widgets from the spec, so no page changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .capabilities import ANY, CONV_PROPAGATION, SPATIAL, Requirement, capabilities_of
from .classes import resolve_target
from .errors import InvalidOption, NonFiniteAttribution, UnknownClass, UnknownMethod, UnsupportedModel
from .models import ModelBundle

# What a method needs when its spec does not say: by method family.
_DEFAULT_NEEDS = {"cam": SPATIAL, "gradient": ANY, "lrp": CONV_PROPAGATION, "srd": CONV_PROPAGATION}


@dataclass(frozen=True)
class Option:
    """A typed, bounded method option; the app turns it into a widget."""

    name: str
    kind: str  # 'choice' | 'int' | 'float' | 'bool' | 'str'
    default: Any
    help: str = ""
    choices: tuple[Any, ...] = ()
    min: float | None = None
    max: float | None = None
    step: float | None = None
    display: bool = False  # applied when rendering from the cached raw map (e.g. heat-quantisation bins)

    def validate(self, value: Any) -> Any:
        """Coerce and check a value; raise :class:`InvalidOption` with a readable one-line reason.

        Accepted: the option's own type, numeric strings for numbers (the CLI's ``--option k=v``), integral
        floats for ints and the usual words for bools; refused: anything else (None, containers, NaN, inf,
        2.5 for an int, 7 for a bool), and numbers outside [min, max]."""
        import math
        import numbers

        from .errors import shown

        def wrong() -> InvalidOption:
            return InvalidOption(f"Option {self.name!r} expects a {self.kind}, got {shown(value)}.")

        if self.kind == "bool":
            if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.strip().lower() in ("true", "1", "yes")
            if isinstance(value, bool) or (type(value) is int and value in (0, 1)):
                return bool(value)
            raise wrong()
        if self.kind in ("str", "choice"):
            if not isinstance(value, str | numbers.Real) or (isinstance(value, bool) and self.kind == "str"):
                raise wrong()
            value = str(value)
            if self.kind == "choice" and value not in self.choices:
                allowed = ", ".join(map(str, self.choices))
                raise InvalidOption(f"Option {self.name!r} must be one of {allowed}; got {shown(value)}.")
            return value
        # int / float: a real number, finite, within [min, max]
        if isinstance(value, bool) or not isinstance(value, str | numbers.Real):
            raise wrong()
        try:
            number = float(value.strip()) if isinstance(value, str) else value
            number = int(number) if isinstance(number, numbers.Integral) else float(number)
            if isinstance(value, str) and self.kind == "int" and len(value) < 100:
                try:
                    number = int(value.strip())
                except ValueError:
                    pass
        except (ValueError, OverflowError):
            raise wrong() from None
        if isinstance(number, float) and not math.isfinite(number):
            raise InvalidOption(f"Option {self.name!r} must be a finite number, got {shown(value)}.")
        if self.kind == "int":
            if isinstance(number, float):
                if not number.is_integer():
                    raise InvalidOption(f"Option {self.name!r} expects a whole number, got {shown(value)}.")
                number = int(number)
        if (self.min is not None and number < self.min) or (self.max is not None and number > self.max):
            raise InvalidOption(f"Option {self.name!r} must lie in [{self.min}, {self.max}]; got {shown(number)}.")
        return number if self.kind == "int" else float(number)  # within bounds: a float can hold it


@dataclass
class MethodOutput:
    """What a method function returns for a batch."""

    attribution: torch.Tensor  # [B, H, W]
    native_resolution: tuple[int, int] | None = None
    layers: list[list[tuple[str, float]]] | None = None  # per image
    trace: list[Any] | None = None  # per image
    extras: dict[str, Any] = field(default_factory=dict)
    logits: torch.Tensor | None = None  # [B, classes] of the method's own forward pass (``own_forward`` methods)


MethodFn = Callable[[ModelBundle, torch.Tensor, torch.Tensor, dict[str, Any]], MethodOutput]


@dataclass(frozen=True)
class MethodSpec:
    id: str
    name: str
    family: str  # 'cam' | 'gradient' | 'lrp' | 'srd'
    fn: MethodFn
    options: tuple[Option, ...] = ()
    needs: Requirement | None = None  # what the model must offer; None: the default of the method family
    description: str = ""
    signed: bool = False  # maps carry meaningful negative values
    normalized: bool = False  # the library returns maps already scaled to [0, 1]
    # Display-time post-processing of a raw [H, W] map with the display options
    # (those with ``display=True``); never part of the relevance computation or its cache key.
    postprocess: Callable[[torch.Tensor, dict[str, Any]], torch.Tensor] | None = None
    # The function runs the model forward itself, accepts target -1 for "the predicted class" and returns
    # its logits, so explain_batch skips its own forward pass (one forward less: the propagation methods).
    own_forward: bool = False
    # Whether the map *as shown* (after ``postprocess``) is signed, from the display options; None: ``signed``.
    # absLRP's default display is the positive part of a signed map: drawn on a diverging colormap, half of
    # the colours would go unused.
    display_signed: Callable[[dict[str, Any]], bool] | None = None

    def defaults(self) -> dict[str, Any]:
        return {o.name: o.default for o in self.options}

    def option(self, name: str) -> Option:
        for o in self.options:
            if o.name == name:
                return o
        raise InvalidOption(f"{self.name} has no option {name!r}; its options are: "
                            f"{', '.join(o.name for o in self.options) or 'none'}.")

    def resolve_options(self, given: dict[str, Any]) -> dict[str, Any]:
        """Defaults overlaid with the given options, each validated."""
        out = self.defaults()
        for key, value in given.items():
            out[key] = self.option(key).validate(value)
        return out

    def split_options(self, opts: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(compute options, display options): only the first kind is part of a cache key."""
        shown = {o.name for o in self.options if o.display}
        return ({k: v for k, v in opts.items() if k not in shown}, {k: v for k, v in opts.items() if k in shown})

    def display_map(self, attribution: torch.Tensor, opts: dict[str, Any]) -> torch.Tensor:
        """The map as shown: the raw map after this method's display-time post-processing."""
        _, shown = self.split_options(self.resolve_options(opts))
        return self.postprocess(attribution, shown) if self.postprocess else attribution

    def shown_signed(self, opts: dict[str, Any]) -> bool:
        """Whether :meth:`display_map` with these options is drawn as a signed map (diverging colormap, limits
        symmetric about zero) or as a non-negative one."""
        if self.display_signed is None:
            return self.signed
        _, shown = self.split_options(self.resolve_options(opts))
        return bool(self.display_signed(shown))

    @property
    def requirement(self) -> Requirement:
        return self.needs or _DEFAULT_NEEDS.get(self.family, ANY)

    def supports(self, bundle: ModelBundle) -> bool:
        """Whether this method runs on ``bundle``'s model, from what its graph contains."""
        return self.requirement.met(capabilities_of(bundle))

    def why_unsupported(self, bundle: ModelBundle) -> str:
        """One sentence: why this method does not run on ``bundle`` (empty when it does)."""
        caps = capabilities_of(bundle)
        if self.requirement.met(caps):
            return ""
        return f"{self.name} {self.requirement.why_not(caps)}; {bundle.label} does not offer it."


METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    if spec.id in METHODS:
        raise ValueError(f"method {spec.id!r} registered twice")
    METHODS[spec.id] = spec
    return spec


def get_method(method: str) -> MethodSpec:
    if method not in METHODS:
        raise UnknownMethod(f"Unknown method {method!r}. Available: {', '.join(METHODS)}.")
    return METHODS[method]


def methods_for(bundle: ModelBundle) -> list[MethodSpec]:
    """The registered methods that run on ``bundle``'s model."""
    return [m for m in METHODS.values() if m.supports(bundle)]


@dataclass
class Explanation:
    """One map for one image and one target class (see DESIGN.md, public API)."""

    attribution: torch.Tensor  # [H, W] float32 on CPU, raw
    target: int
    score: float
    method: str
    options: dict[str, Any]
    seconds: float
    model: str
    signed: bool = False
    normalized: bool = False
    native_resolution: tuple[int, int] | None = None
    layers: list[tuple[str, float]] = field(default_factory=list)
    trace: Any = None
    extras: dict[str, Any] = field(default_factory=dict)
    target_name: str = ""  # the target's name in the model's own labels



def _requested_targets(bundle: ModelBundle, n: int,
                       target: int | str | Sequence[int | str] | None) -> torch.Tensor:
    """The requested class index per image; -1 where the predicted class is wanted."""
    if target is None:
        return torch.full((n,), -1, dtype=torch.long)
    if not isinstance(target, list | tuple):  # one index or name for every image (torch/numpy scalars too)
        target = [target] * n
    if len(target) != n:
        raise UnknownClass(f"{len(target)} targets were given for {n} images.")
    resolved = [resolve_target(t, bundle.class_names) for t in target]
    return torch.tensor([-1 if r is None else int(r) for r in resolved], dtype=torch.long)


def explain_batch(bundle: ModelBundle, x: torch.Tensor, method: str,
                  target: int | str | Sequence[int | str] | None = None, **options: Any) -> list[Explanation]:
    """Explain a batch: B images with one target each, or one image with several targets.

    ``target`` is ``None`` (each image's predicted class), one index/name for all,
    or a sequence.  A single image with a sequence of T targets is repeated T times.
    """
    spec = get_method(method)
    if not spec.supports(bundle):
        raise UnsupportedModel(spec.why_unsupported(bundle))
    opts = spec.resolve_options(options)
    if x.dim() == 3:
        x = x.unsqueeze(0)
    x = x.to(bundle.device)
    if x.shape[0] == 1 and isinstance(target, (list, tuple)) and len(target) > 1:
        x = x.expand(len(target), -1, -1, -1).contiguous()
    from .memory import check_method

    check_method(spec, opts, bundle, x)  # the options' and the batch's memory against the device's
    requested = _requested_targets(bundle, x.shape[0], target).to(bundle.device)
    if spec.own_forward:
        start = time.perf_counter()
        out = spec.fn(bundle, x, requested, opts)
        seconds = (time.perf_counter() - start) / x.shape[0]
        if out.logits is None:
            raise RuntimeError(f"{spec.id} is marked own_forward but returned no logits")
        probs = out.logits.detach().float().softmax(-1)
    else:
        with torch.no_grad():  # read-only use of the shared model: no lock (see guard.py)
            probs = bundle.model(x).float().softmax(-1)
        start = time.perf_counter()
        out = spec.fn(bundle, x, torch.where(requested < 0, probs.argmax(-1), requested), opts)
        seconds = (time.perf_counter() - start) / x.shape[0]
    targets = torch.where(requested < 0, probs.argmax(-1), requested)
    attribution = out.attribution.detach().float().cpu()
    if not torch.isfinite(attribution).all():
        bad = int((~torch.isfinite(attribution)).sum())
        raise NonFiniteAttribution(
            f"{spec.name} produced {bad} NaN/Inf values on {bundle.label}; the map is not shown. "
            "Try other options (e.g. a larger epsilon) or another method."
        )
    results = []
    for i in range(x.shape[0]):
        t = int(targets[i])
        results.append(Explanation(
            attribution=attribution[i], target=t, score=float(probs[i, t]), method=method, options=opts,
            seconds=seconds, model=bundle.label, signed=spec.signed, normalized=spec.normalized,
            native_resolution=out.native_resolution,
            layers=out.layers[i] if out.layers else [], trace=out.trace[i] if out.trace else None,
            extras={k: (v[i] if isinstance(v, list) and len(v) == x.shape[0] else v) for k, v in out.extras.items()},
            target_name=bundle.class_names[t] if 0 <= t < len(bundle.class_names) else str(t),
        ))
    return results


def explain(bundle: ModelBundle, x: torch.Tensor, method: str, target: int | str | None = None,
            **options: Any) -> Explanation:
    """Explain one image (``x`` is 1x3xHxW or 3xHxW) for one target (default: the predicted class)."""
    if x.dim() == 4 and x.shape[0] != 1:
        raise ValueError("explain() takes one image; use explain_batch() for a batch")
    return explain_batch(bundle, x, method, target, **options)[0]


# Every method module registers itself on import.  ``import explainers`` is lazy (it no longer imports the methods),
# so the registry loads them: whoever can see METHODS / get_method / explain sees every method.  At the end of
# this module, so the method modules find register() defined.
from . import methods as _methods  # noqa: E402,F401
