"""Exclusive, clean use of a shared model.

The app caches one model per (name, weights, device) and every browser session
shares it.  Libraries such as pytorch-grad-cam, captum and zennit register
hooks, switch ``eval()`` and ask for gradients; :func:`model_guard` serialises
that under the bundle's lock and afterwards removes any hook left behind and
restores train/eval mode, ``requires_grad`` and ``.grad`` exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from .models import ModelBundle

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
               "_backward_pre_hooks", "_state_dict_hooks", "_load_state_dict_pre_hooks")


def count_hooks(model: nn.Module) -> int:
    """Total number of hooks registered on the model's modules (for leak tests)."""
    return sum(len(getattr(m, d, {})) for m in model.modules() for d in _HOOK_DICTS)


@contextmanager
def clean_module(model: nn.Module, requires_grad: bool = True) -> Iterator[nn.Module]:
    """``model`` in eval mode with gradients as asked; afterwards hooks added meanwhile are removed and
    modes, ``requires_grad`` and ``.grad`` restored.  No lock: see :func:`model_guard` for shared models."""
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


@contextmanager
def model_guard(bundle: ModelBundle, requires_grad: bool = True) -> Iterator[nn.Module]:
    """The bundle's shared model, used exclusively (its lock) and left clean (:func:`clean_module`)."""
    with bundle.lock, clean_module(bundle.model, requires_grad) as model:
        yield model
