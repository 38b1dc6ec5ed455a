"""Relevance Explorer's library: models, attribution methods, rendering.  No Streamlit here.

>>> from explainers import load_model, explain, METHODS, list_models
>>> bundle = load_model("efficientnet_lite0")
>>> res = explain(bundle, bundle.preprocess(image), method="gradcam")
"""

from . import methods as _methods  # noqa: F401  (imports register every method)
from .errors import (
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
from .images import gallery, load_image
from .models import DEFAULT_MODEL, MODEL_SPECS, ModelBundle, list_models, load_model
from .registry import METHODS, Explanation, MethodSpec, Option, explain, explain_batch, get_method, methods_for

__all__ = [
    "DEFAULT_MODEL", "METHODS", "MODEL_SPECS", "Explanation", "ExplainerError", "InvalidCheckpoint",
    "InvalidImage", "InvalidOption", "MethodSpec", "ModelBundle", "NonFiniteAttribution", "Option",
    "UnknownClass", "UnknownMethod", "UnknownModel", "UnsupportedModel", "WeightsUnavailable",
    "explain", "explain_batch", "gallery", "get_method", "list_models", "load_image", "load_model",
    "methods_for",
]
