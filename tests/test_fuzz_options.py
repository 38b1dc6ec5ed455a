"""Hostile option values and targets, fuzzed (hypothesis): every call either returns a finite map or raises a
typed :class:`ExplainerError` with a one-line message, within a time bound.

Two levels: :meth:`Option.validate` of every option of every registered method against every kind of value
(out of range, wrong type, NaN, inf, huge, negative, strings, None, containers) with many examples, since it is
pure and fast; then :func:`explain` of every method on a tiny seeded 32x32 CNN (tests/pipeline_models.py) with
one or two hostile options and a hostile target, fewer examples, each call timed.
"""

from __future__ import annotations

import math
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from explainers import ExplainerError
from explainers.errors import InvalidOption
from explainers.registry import METHODS, explain

CALL_BUDGET_S = 20.0  # the slowest legal call here (IG at 1000 steps, 4096-channel Score-CAM) takes ~2 s on a quiet CPU

HOSTILE = st.one_of(
    st.none(), st.booleans(),
    st.integers(), st.integers(-2**70, 2**70), st.sampled_from([0, -1, 1, 2, 2**31, 2**63, -2**63, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, -0.0, 0.5, 2.5]),
    st.text(max_size=40), st.binary(max_size=20),
    st.sampled_from(["", " ", "nan", "NaN", "inf", "-inf", "1e400", "-1", "0", "1", "3", "2.5", "true", "yes",
                     "None", "9" * 5000, "x" * 100_000, "\u00b2", "\n", "layer4\nx", "1_000", " 7 "]),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.just(object()), st.just(float), st.just(torch.tensor(3.0)), st.just(torch.tensor([1, 2])),
)
OPTIONS = [(m, o) for m, spec in METHODS.items() for o in spec.options]


def _one_line(exc: BaseException) -> None:
    msg = str(exc)
    assert msg and len(msg.splitlines()) == 1 and len(msg) < 600, repr(msg[:200])


@pytest.mark.parametrize("method,option", OPTIONS, ids=[f"{m}.{o.name}" for m, o in OPTIONS])
@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(value=HOSTILE)
def test_option_validate(method, option, value):
    """A value is accepted as the option's own type, finite and within its bounds, or refused with one line."""
    try:
        out = option.validate(value)
    except InvalidOption as exc:
        _one_line(exc)
        return
    kind = {"int": int, "float": float, "bool": bool, "str": str, "choice": type(option.default)}[option.kind]
    assert type(out) is kind, (value, out)
    if option.kind in ("int", "float"):
        assert math.isfinite(out)
        assert option.min is None or out >= option.min
        assert option.max is None or out <= option.max
    if option.kind == "choice":
        assert out in option.choices
    if option.kind == "int" and isinstance(value, float):
        assert value.is_integer()  # 2.5 is not silently truncated to 2


@pytest.fixture(scope="module")
def cnn():
    from tests.pipeline_models import load

    torch.manual_seed(0)
    return load()


def _values_for(bundle, option):
    """Hostile values, plus the option's legal edge values and (for layer names) every real layer of the model."""
    legal = [option.default, *option.choices]
    if option.kind in ("int", "float"):
        legal += [v for v in (option.min, option.max) if v is not None]
    if option.name == "layer":
        legal += [n for n, _ in bundle.model.named_modules()]
    return st.one_of(HOSTILE, st.sampled_from(legal))


def _run(bundle, method, options, target):
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    try:
        res = explain(bundle, x, method, target=target, **options)
    except ExplainerError as exc:
        _one_line(exc)
    else:
        assert res.attribution.dim() == 2 and torch.isfinite(res.attribution).all()
        assert 0 <= res.target < len(bundle.class_names)
    assert time.perf_counter() - t0 < CALL_BUDGET_S, (method, options)


TARGETS = st.one_of(st.none(), st.sampled_from([0, 2, 3, -1, 10**30, "circle", "SQUARE", "nan", "-1", "2", "",
                                                 "no such class", 1.0, 1.5, math.nan, True]))


@pytest.mark.parametrize("method", sorted(METHODS))
@settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_explain_with_hostile_options(cnn, method, data):
    spec = METHODS[method]
    names = [o.name for o in spec.options] + ["no_such_option"]
    chosen = data.draw(st.lists(st.sampled_from(names), min_size=0, max_size=2, unique=True), label="options")
    options = {}
    for name in chosen:
        option = next((o for o in spec.options if o.name == name), None)
        options[name] = data.draw(_values_for(cnn, option) if option else HOSTILE, label=name)
    _run(cnn, method, options, data.draw(TARGETS, label="target"))


LAYER_METHODS = sorted(m for m, spec in METHODS.items() if any(o.name == "layer" for o in spec.options))


@pytest.mark.parametrize("method", LAYER_METHODS)
def test_every_layer_name(cnn, method):
    """Every module of the model as the target layer (the input conv, a ReLU, the pooled vector, the linear head,
    the whole model ''): a map or one line (the issue's ``--option layer=classifier`` was a traceback)."""
    for name, _ in cnn.model.named_modules():
        _run(cnn, method, {"layer": name}, None)
