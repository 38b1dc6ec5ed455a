"""Typed errors a user can cause.

The app and the CLI catch :class:`ExplainerError` and show its message as-is, so
every message here is written for a person, not for a stack trace.
"""

from __future__ import annotations


class ExplainerError(Exception):
    """Base class: anything the user can fix by choosing differently."""


class InvalidImage(ExplainerError):
    """The upload or file is not an image we can use (not decodable, too small, too big)."""


class UnknownModel(ExplainerError):
    """A model name that is not in the zoo."""


class WeightsUnavailable(ExplainerError):
    """Trained weights for a model cannot be found offline nor downloaded."""


class InvalidCheckpoint(ExplainerError):
    """A user-given checkpoint file is not a plain state dict for the model."""


class UnknownMethod(ExplainerError):
    """A method id that is not registered."""


class UnsupportedModel(ExplainerError):
    """The method does not support this model family (e.g. SRD on a ViT)."""


class InvalidOption(ExplainerError):
    """An option that the method does not have, or a value outside its range."""


class UnknownClass(ExplainerError):
    """A class name that matches no class, or a class index out of range."""


class NonFiniteAttribution(ExplainerError):
    """The map contains NaN or Inf; we report it instead of rendering garbage."""


class InvalidLabels(ExplainerError):
    """A labels file that cannot be read, or whose class count does not match the model's head."""


class InvalidDataset(ExplainerError):
    """A dataset source that is missing, empty, or whose labels do not match the model's classes."""


class ConfigError(ExplainerError):
    """A mistake in relevance-explorer.toml: an unknown key, a missing file, a wrong class count."""


class RelevanceNotPropagated(ExplainerError):
    """A backward walk placed relevance but none of it reached the network input (instead of an all-zero map)."""


class StoreError(ExplainerError):
    """The label/result store cannot be used as asked: locked, read-only, a bad import file (see store.py)."""


def shown(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: a message quotes what the user gave on one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
