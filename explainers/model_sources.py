"""Models from anywhere: ``timm:<name>``, ``torchvision:<name>``, a trusted factory ``package.module:function``,
each with its own head size, labels and preprocessing (DESIGN.md, "Any model, described as data").

The factory is trusted code: it is named in ``relevance-explorer.toml`` or on the CLI, never typed into the
browser.  Preprocessing comes from the model's own metadata (timm's pretrained cfg, torchvision's weights
transforms) unless the project file overrides it.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import ConfigError, InvalidCheckpoint, UnknownModel

_FACTORY = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_]\w*$")
IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class Source:
    kind: str  # 'zoo' | 'timm' | 'torchvision' | 'factory'
    name: str  # the zoo name, the library's model name, or 'package.module:function'

    @property
    def spec(self) -> str:
        return self.name if self.kind == "zoo" else f"{self.kind}:{self.name}"


def parse_source(text: str) -> Source:
    """'timm:resnet18' / 'torchvision:resnet50' / 'mymodels:build' (or 'factory:mymodels:build') / a zoo name."""
    text = text.strip()
    for kind in ("timm", "torchvision", "factory"):
        if text.startswith(kind + ":"):
            name = text[len(kind) + 1:].strip()
            if not name:
                raise ConfigError(f"model source {text!r} names no model after '{kind}:'.")
            if kind == "factory" and not _FACTORY.match(name):
                raise ConfigError(f"factory {name!r} must look like package.module:function.")
            return Source(kind, name)
    if ":" in text:
        if not _FACTORY.match(text):
            raise ConfigError(f"model source {text!r} is neither timm:NAME, torchvision:NAME nor "
                              "package.module:function.")
        return Source("factory", text)
    if not text:
        raise ConfigError("empty model source.")
    return Source("zoo", text)


def is_source_spec(name: str) -> bool:
    """Does this model name need :func:`build` (anything with a colon) rather than the built-in zoo?"""
    return ":" in name


# --------------------------------------------------------------------------- building


def build(source: Source, num_classes: int | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The architecture with a ``num_classes``-way head (None: the library's default), untrained, and its
    preprocessing metadata as a dict (resize, crop, mean, std, interpolation)."""
    if source.kind == "timm":
        return _timm(source.name, num_classes)
    if source.kind == "torchvision":
        return _torchvision(source.name, num_classes)
    if source.kind == "factory":
        return _factory(source.name, num_classes)
    raise UnknownModel(f"{source.name!r} is a built-in zoo name, not a model source.")


IMAGENET_PREP = {"resize": 256, "crop": 224, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
                 "interpolation": "bilinear"}


def timm_preprocessing(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """timm's pretrained cfg -> our preprocessing (crop from input_size, resize from crop_pct)."""
    crop = int(cfg.get("input_size", (3, 224, 224))[-1])
    return {"resize": int(round(crop / cfg.get("crop_pct", 0.875))), "crop": crop,
            "mean": tuple(cfg.get("mean", IMAGENET_PREP["mean"])), "std": tuple(cfg.get("std", IMAGENET_PREP["std"])),
            "interpolation": "bicubic" if cfg.get("interpolation", "bicubic") == "bicubic" else "bilinear"}


def _timm(name: str, num_classes: int | None) -> tuple[nn.Module, dict[str, Any]]:
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:5]
        raise UnknownModel(f"timm has no model {name!r}" + (f"; similar: {', '.join(close)}." if close else "."))
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    model = timm.create_model(name, pretrained=False, **kwargs)
    return model, timm_preprocessing(model.pretrained_cfg)


def torchvision_preprocessing(name: str) -> dict[str, Any]:
    """The DEFAULT weights' transforms of a torchvision model (ImageNet 256/224 when it has no weights)."""
    import torchvision

    try:
        t = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    except (ValueError, AttributeError, KeyError):
        return dict(IMAGENET_PREP)
    size = t.resize_size[0] if isinstance(t.resize_size, list | tuple) else t.resize_size
    crop = t.crop_size[0] if isinstance(t.crop_size, list | tuple) else t.crop_size
    interp = "bicubic" if "BICUBIC" in str(t.interpolation) else "bilinear"
    return {"resize": int(size), "crop": int(crop), "mean": tuple(t.mean), "std": tuple(t.std), "interpolation": interp}


def _torchvision(name: str, num_classes: int | None) -> tuple[nn.Module, dict[str, Any]]:
    import torchvision

    classifiers = set(torchvision.models.list_models(module=torchvision.models))
    if name not in classifiers:
        close = sorted(n for n in classifiers if n.startswith(name[:4]))[:5]
        raise UnknownModel(f"torchvision has no classification model {name!r}"
                           + (f"; similar: {', '.join(close)}." if close else "."))
    kwargs: dict[str, Any] = {"weights": None}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if name.startswith("inception") or name.startswith("googlenet"):
        kwargs["aux_logits"] = False  # the auxiliary heads are for training; they also break tracing
        kwargs["init_weights"] = True
    model = torchvision.models.get_model(name, **kwargs)
    return model, torchvision_preprocessing(name)


def _factory(spec: str, num_classes: int | None) -> tuple[nn.Module, dict[str, Any]]:
    module_name, fn_name = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownModel(f"factory {spec!r}: module {module_name!r} cannot be imported ({exc}).") from exc
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise UnknownModel(f"factory {spec!r}: {module_name} has no function {fn_name!r}.")
    kwargs = {}
    if num_classes is not None:
        params = inspect.signature(fn).parameters
        if "num_classes" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
            kwargs["num_classes"] = num_classes
    model = fn(**kwargs)
    if not isinstance(model, nn.Module):
        raise UnknownModel(f"factory {spec!r} returned a {type(model).__name__}, not a torch.nn.Module.")
    cfg = getattr(model, "pretrained_cfg", None)
    prep = timm_preprocessing(cfg) if isinstance(cfg, Mapping) else dict(IMAGENET_PREP)
    return model, prep


# --------------------------------------------------------------------------- heads and checkpoints


def output_count(model: nn.Module, size: int = 64) -> int:
    """How many classes the model predicts (one tiny forward; the model is not changed)."""
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            p = next(model.parameters(), None)
            dev = p.device if p is not None else torch.device("cpu")
            out = model(torch.zeros(1, 3, size, size, device=dev))
    finally:
        model.train(was)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise UnknownModel(f"the model returns {type(out).__name__} of shape {getattr(out, 'shape', '?')}; "
                           "an image classifier must return [batch, classes] logits.")
    return int(out.shape[1])


def head_classes(state: Mapping[str, torch.Tensor], model: nn.Module) -> int | None:
    """The class count a checkpoint was trained with: its rows of the model's last Linear layer's weight."""
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last = name
    if last is None:
        return None
    w = state.get(f"{last}.weight") if last else None
    return int(w.shape[0]) if isinstance(w, torch.Tensor) and w.dim() == 2 else None


def load_checkpoint(model: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Strict load; a mismatch names the offending keys (shapes first, then missing / unexpected)."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if wrong or missing or unexpected:
        parts = []
        if wrong:
            parts.append(f"shape mismatch (checkpoint vs model) at {', '.join(wrong[:3])}"
                         + (f" and {len(wrong) - 3} more" if len(wrong) > 3 else ""))
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}" + (f" and {len(missing) - 3} more" if len(missing) > 3
                                                                  else ""))
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:3])}"
                         + (f" and {len(unexpected) - 3} more" if len(unexpected) > 3 else ""))
        raise InvalidCheckpoint(f"{what} does not fit this architecture: {'; '.join(parts)}.")
    model.load_state_dict(state, strict=True)


def family_of(model: nn.Module) -> str:
    """A display label only (method support is decided from the traced graph): what the modules look like."""
    names = {type(m).__name__.lower() for m in model.modules()}
    if any("attention" in n for n in names):
        return "vit"
    if any(n in ("bottleneck", "basicblock") or "resblock" in n or "residual" in n for n in names):
        return "resnet"
    if any("efficientnet" in n or "invertedresidual" in n or "depthwise" in n for n in names):
        return "efficientnet"
    if any(n == "vgg" for n in names):
        return "vgg"
    return "custom"


# --------------------------------------------------------------------------- loading


def load_source(spec: str, device: str | torch.device | None = None, weights: str = "default",
                labels: str | None = None, num_classes: int | None = None,
                preprocessing: Mapping[str, Any] | None = None, display_name: str | None = None, seed: int = 0):
    """A :class:`~explainers.models.ModelBundle` for a model source (see :func:`parse_source`).

    ``weights``: "default" (the library's trained ImageNet weights from a cache or a download; only for a
    1000-class head), "untrained", or a checkpoint path (its head size is read from it when ``num_classes``
    and ``labels`` do not say).  ``labels``: a labels file; without one a 1000-class model gets the ImageNet
    names and any other head 'class 0', 'class 1', ...  ``seed``: the random initialisation (so an untrained
    model is the same network, with the same fingerprint, on every load).
    """
    from . import models as zoo
    from .classes import imagenet_class_names
    from .labels import check_count, default_names, read_labels

    source = parse_source(spec)
    if source.kind == "zoo":
        if source.name not in zoo.MODEL_SPECS:
            raise UnknownModel(f"Unknown model {source.name!r}. Known models: {', '.join(zoo.MODEL_SPECS)}, "
                               "or timm:NAME, torchvision:NAME, package.module:function.")
        source = Source(zoo.MODEL_SPECS[source.name].source if zoo.MODEL_SPECS[source.name].source != "embedded"
                        else "timm", zoo.MODEL_SPECS[source.name].arch)
    names = read_labels(labels) if labels else None
    state = None
    if weights not in ("default", "untrained"):
        state = zoo._read_state_dict(weights)
    if num_classes is None and names is not None:
        num_classes = len(names)
    if num_classes is None and state is not None:  # build once at the default size to find the head's keys
        probe, _ = build(source)
        num_classes = head_classes(state, probe)
    with zoo._SEED_LOCK, torch.random.fork_rng(devices=[]):  # as zoo models: libraries draw from the global RNG
        torch.manual_seed(int(seed))
        model, prep = build(source, num_classes)
    classes = output_count(model)
    if names is not None:
        check_count(names, classes, display_name or spec)
    else:
        names = imagenet_class_names() if classes == IMAGENET_CLASSES else default_names(classes)
    if weights == "untrained":
        trained, where = False, f"untrained (random initialisation from seed {int(seed)}, architecture only)"
    elif weights == "default":
        if source.kind == "factory":
            raise zoo.WeightsUnavailable(f"{spec}: a factory model has no library weights; pass a checkpoint file "
                                         "(--weights FILE) or choose 'untrained'.")
        if classes != IMAGENET_CLASSES:
            raise zoo.WeightsUnavailable(f"{spec}: the library's trained weights have 1000 classes, this head has "
                                         f"{classes}; pass your checkpoint (--weights FILE) or choose 'untrained'.")
        lib_spec = zoo.ModelSpec(spec, family_of(model), source.kind, source.name, spec)
        state, where = zoo._trained_state(lib_spec, model)
        load_checkpoint(model, state, where)
        trained = True
    else:
        assert state is not None
        load_checkpoint(model, state, f"checkpoint {weights.rsplit('/', 1)[-1]}")
        trained, where = True, f"checkpoint {weights}"
    p = {**prep, **dict(preprocessing or {})}
    dev = zoo.resolve_device(device)
    model.eval().to(dev)
    return zoo.ModelBundle(
        model=model, name=display_name or spec, family=family_of(model), class_names=tuple(names), device=dev,
        trained=trained, weights_source=where,
        prep=zoo.Preprocessing.from_dict(p))
