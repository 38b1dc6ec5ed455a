"""Relevance Explorer's library: models, attribution methods, rendering.  No Streamlit here.

>>> from explainers import load_model, explain, METHODS, list_models
>>> bundle = load_model("efficientnet_lite0")
>>> res = explain(bundle, bundle.preprocess(image), method="gradcam")

The public names are imported lazily (module ``__getattr__``, PEP 562): ``import explainers`` and
``python -m explainers --help`` must not pay for torch and every method's library (measured 2.2-4.0 s and
650 MB RSS for ``--help`` when this file imported everything).  ``from explainers import X`` still works for
every name in ``__all__``; the registry imports :mod:`explainers.methods` on first use, so ``METHODS``,
``get_method`` and ``explain`` always see every method.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

from . import defer_imports

# 1-2 s of every model build's imports (see the module); the older variable's name still turns it off
if not (os.environ.get("RELEVANCE_EXPLORER_EAGER_IMPORTS") or os.environ.get("RELEVANCE_EXPLORER_IMPORT_DYNAMO")):
    defer_imports.install()

# public name -> submodule that defines it
_LAZY = {
    **dict.fromkeys(("ExplainerError", "InvalidCheckpoint", "InvalidImage", "InvalidOption", "NonFiniteAttribution",
                     "UnknownClass", "UnknownMethod", "UnknownModel", "UnsupportedModel", "WeightsUnavailable"),
                    "errors"),
    **dict.fromkeys(("gallery", "load_image"), "images"),
    **dict.fromkeys(("DEFAULT_MODEL", "MODEL_SPECS", "ModelBundle", "list_models", "load_model"), "models"),
    **dict.fromkeys(("METHODS", "Explanation", "MethodSpec", "Option", "explain", "explain_batch", "get_method",
                     "methods_for"), "registry"),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if module == "registry":
        importlib.import_module(f"{__name__}.methods")  # every method registers itself
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs only
    from .errors import (  # noqa: F401
        ExplainerError,
        InvalidCheckpoint,
        InvalidImage,
        InvalidOption,
        NonFiniteAttribution,
        UnknownClass,
        UnknownMethod,
        UnknownModel,
        UnsupportedModel,
        WeightsUnavailable,
    )
    from .images import gallery, load_image  # noqa: F401
    from .models import DEFAULT_MODEL, MODEL_SPECS, ModelBundle, list_models, load_model  # noqa: F401
    from .registry import METHODS, Explanation, MethodSpec, Option, explain, explain_batch, get_method, methods_for  # noqa: F401
