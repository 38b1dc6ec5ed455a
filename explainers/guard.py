"""One guard for every use of a shared model.

The app caches one model per (name, weights, device) and every browser session shares it.  Two kinds of
use meet on it, and they must not disturb each other:

* **Read-only use** (plain forwards, top-5, the propagation engine, SRD): nothing is mutated, so any
  number of threads run at once.  ``model_guard(bundle, requires_grad=False)`` hands out the shared model
  itself, *without a lock*: a 58-s Ablation-CAM in one session must not freeze another session's top-5.
* **Mutating use** (pytorch-grad-cam, captum, zennit register hooks, swap layers, ask for parameter
  gradients): each such method runs on its own **private view** of the model, a structural copy
  (:func:`twin`) with its own module objects, hook tables and ``Parameter`` objects that share the
  shared model's weight storage (no extra weight memory).  A view has its own lock, so one method is
  serialised with itself only, and :func:`clean_module` removes any hook left behind and restores
  ``eval()`` / ``requires_grad`` / ``.grad`` afterwards.  The shared model never carries a hook.

The traced graph (``propagation.graph.build_graph``) is built once per model from a twin, under one
process-wide lock, and shared read-only.  Everything assumes a bundle's weights are not changed in place
after loading (its fingerprint would be stale too).
"""

from __future__ import annotations

import copy
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from torch import nn

from .models import ModelBundle

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
               "_backward_pre_hooks", "_state_dict_hooks", "_load_state_dict_pre_hooks")


def count_hooks(model: nn.Module) -> int:
    """Total number of hooks registered on the model's modules (for leak tests)."""
    return sum(len(getattr(m, d, {})) for m in model.modules() for d in _HOOK_DICTS)


def twin(model: nn.Module, private_parameters: bool = False) -> nn.Module:
    """A copy of ``model``'s module tree that shares its tensors: new module objects with empty hook
    tables (and their own ``_modules`` / ``_parameters`` / ``_buffers`` dicts), the same buffer tensors,
    and either the same ``Parameter`` objects or, with ``private_parameters``, new ones on the same storage
    (their own ``requires_grad`` and ``.grad``).  A module used twice (torchvision's per-block ReLU) stays
    one module in the twin.  Why: anything done to the twin's modules (hooks, layer swaps, train mode,
    gradient flags) cannot reach the original, yet it costs no weight memory."""
    modules: dict[int, nn.Module] = {}
    params: dict[int, nn.Parameter] = {}

    def param(p: nn.Parameter | None) -> nn.Parameter | None:
        if p is None or not private_parameters:
            return p
        if id(p) not in params:
            params[id(p)] = nn.Parameter(p.detach(), requires_grad=p.requires_grad)
        return params[id(p)]

    def copy_module(m: nn.Module) -> nn.Module:
        if id(m) in modules:
            return modules[id(m)]
        new = copy.copy(m)  # a new __dict__ holding the same values; the containers are replaced below
        modules[id(m)] = new
        for key, value in m.__dict__.items():
            if "hook" in key and isinstance(value, dict):
                new.__dict__[key] = OrderedDict()
        new.__dict__["_non_persistent_buffers_set"] = set(getattr(m, "_non_persistent_buffers_set", ()))
        new.__dict__["_parameters"] = {k: param(p) for k, p in m._parameters.items()}
        new.__dict__["_buffers"] = dict(m._buffers)
        new.__dict__["_modules"] = {k: None if c is None else copy_module(c) for k, c in m._modules.items()}
        return new

    return copy_module(model)


@contextmanager
def clean_module(model: nn.Module, requires_grad: bool = True) -> Iterator[nn.Module]:
    """``model`` in eval mode with gradients as asked; afterwards hooks added meanwhile are removed and
    modes, ``requires_grad`` and ``.grad`` restored.  No lock: callers hold the view's lock."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    modes = [(m, m.training) for m in model.modules()]
    hooks = [(m, d, dict(getattr(m, d))) for m in model.modules() for d in _HOOK_DICTS if hasattr(m, d)]
    try:
        model.eval()
        for p in params:
            p.requires_grad_(requires_grad)
        yield model
    finally:
        for m, d, snapshot in hooks:
            live = getattr(m, d)
            for key in [k for k in live if k not in snapshot]:
                del live[key]
        for p, flag in zip(params, flags):
            p.grad = None
            p.requires_grad_(flag)
        for m, training in modes:
            m.training = training


@dataclass
class View:
    """A private view of a shared model (see the module docstring) and the lock of its users."""

    model: nn.Module
    lock: threading.RLock


_VIEWS: weakref.WeakKeyDictionary[nn.Module, dict[tuple[str, str | None], View]] = weakref.WeakKeyDictionary()
_VIEWS_LOCK = threading.Lock()


def view(bundle: ModelBundle, key: str, form: str | None = None) -> View:
    """The cached private view ``key`` of the bundle's model (created on first use).

    ``form``: ``None`` for a plain twin, or a library-view form (``"guided"`` / ``"rescale"``, see
    ``methods/library_view.py``) for the methods whose library recognises layers by exact module type."""
    with _VIEWS_LOCK:
        views = _VIEWS.setdefault(bundle.model, {})
        found = views.get((key, form))
        if found is None:
            if form is None:
                model = twin(bundle.model, private_parameters=True).eval()
            else:
                from .methods.library_view import make_view

                model = make_view(bundle.model, form)
            found = views[(key, form)] = View(model, threading.RLock())
        return found


def views_of(bundle: ModelBundle) -> list[View]:
    """Every private view made of the bundle's model so far (for leak tests)."""
    with _VIEWS_LOCK:
        return list(_VIEWS.get(bundle.model, {}).values())


@contextmanager
def model_guard(bundle: ModelBundle, requires_grad: bool = True, *, view_key: str | None = None,
                form: str | None = None) -> Iterator[nn.Module]:
    """The model to use for one piece of work, left as it was found.

    ``requires_grad=False`` with no view asked for: read-only use, the shared model itself, no lock (run it
    under ``torch.no_grad()``; never register a hook on it).  Otherwise the private view ``view_key``
    (default ``"default"``) in ``form``, held under its own lock and cleaned afterwards (:func:`clean_module`).
    """
    if not requires_grad and view_key is None and form is None:
        yield bundle.model
        return
    v = view(bundle, view_key or "default", form)
    with v.lock, clean_module(v.model, requires_grad) as model:
        yield model
