"""Hostile labels files and target lookups, fuzzed (hypothesis): :func:`read_labels` returns clean names or raises
:class:`InvalidLabels` with one line; :func:`resolve_target` on those names returns an index in range or raises
:class:`UnknownClass` with one line; nothing else, and quickly.

Files: text (one name per line) and JSON, made of real-looking names, blank and whitespace lines, huge lines,
binary garbage, non-UTF-8 bytes, duplicates, very many lines, deep JSON nesting and odd JSON keys.
"""

from __future__ import annotations

import json
import math
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from explainers.classes import resolve_target
from explainers.errors import InvalidLabels, UnknownClass
from explainers.labels import MAX_LABELS, MAX_NAME_CHARS, check_count, read_labels

BUDGET_S = 5.0  # the largest file drawn here (~2 MB) reads in well under a second

NAME = st.one_of(st.sampled_from(["cat", "dog", "tabby, tabby cat", "crane", "crane", "3", "-1", "nan", "0x10",
                                  " padded ", "\t", "", "   ", "é", "\x00", "\ufeff", "a" * 5000]),
                 st.text(max_size=12))
LINES = st.lists(NAME, max_size=40)


@st.composite
def labels_file(draw) -> tuple[str, bytes]:
    how = draw(st.sampled_from(["text", "text", "json-list", "json-dict", "binary", "latin1", "many", "deep",
                                "huge-line", "mixed-endings"]))
    if how == "text":
        return ".txt", "\n".join(draw(LINES)).encode("utf-8") + draw(st.sampled_from([b"", b"\n", b"\n\n"]))
    if how == "json-list":
        items = draw(st.lists(st.one_of(NAME, st.integers(), st.none(), st.floats()), max_size=20))
        return ".json", json.dumps(items).encode()
    if how == "json-dict":
        keys = st.one_of(st.integers(-3, 25).map(str), st.sampled_from(["00", "1_0", " 2", "+1", "x", "1e3", "٣"]))
        return ".json", json.dumps(draw(st.dictionaries(keys, st.one_of(NAME, st.integers()), max_size=20))).encode()
    if how == "binary":
        return draw(st.sampled_from([".txt", ".json", ""])), draw(st.binary(max_size=512))
    if how == "latin1":
        return ".txt", "\n".join(n for n in draw(LINES)).encode("utf-8") + b"\ncaf\xe9\n"
    if how == "many":
        n = draw(st.sampled_from([1000, 100_000, MAX_LABELS + 1]))
        return ".txt", b"\n".join(b"c%d" % i for i in range(n))
    if how == "deep":
        depth = draw(st.sampled_from([10, 1000, 100_000]))
        return ".json", b"[" * depth + b"]" * depth
    if how == "huge-line":
        return ".txt", b"cat\n" + b"x" * draw(st.sampled_from([MAX_NAME_CHARS, MAX_NAME_CHARS + 1, 2_000_000]))
    return ".txt", "\r\n".join(draw(LINES)).encode() + b"\rlast\x0bname\u2028".decode().encode()


TARGETS = st.one_of(st.none(), st.integers(-5, 30), st.sampled_from([10**30, -10**30, math.nan, math.inf, 1.0, 2.5]),
                    NAME, st.text(max_size=8), st.sampled_from(["-1", "+2", " 3 ", "1e3", "²", "٣", "9" * 5000]))


def _one_line(exc: BaseException) -> None:
    msg = str(exc)
    assert msg and len(msg.splitlines()) == 1 and len(msg) < 600, repr(msg[:200])


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(f=labels_file(), targets=st.lists(TARGETS, min_size=1, max_size=4))
def test_labels_files_and_targets(tmp_path, f, targets):
    suffix, data = f
    path = tmp_path / f"labels{suffix}"
    path.write_bytes(data)
    t0 = time.perf_counter()
    try:
        names = read_labels(path)
    except InvalidLabels as exc:
        _one_line(exc)
        assert path.name in str(exc)
        names = None
    assert time.perf_counter() - t0 < BUDGET_S
    if names is None:
        return
    assert isinstance(names, tuple) and 0 < len(names) <= MAX_LABELS
    assert all(isinstance(n, str) and n == n.strip() and n and len(n) <= MAX_NAME_CHARS for n in names)
    try:
        check_count(names, 3, "the model")
    except InvalidLabels as exc:
        _one_line(exc)
        assert len(names) != 3
    for target in targets:
        t0 = time.perf_counter()
        try:
            index = resolve_target(target, names)
        except UnknownClass as exc:
            _one_line(exc)
        else:
            assert index is None if target is None else (type(index) is int and 0 <= index < len(names))
        assert time.perf_counter() - t0 < BUDGET_S


@pytest.mark.parametrize("target,expected", [(1, 1), ("1", 1), (" 2 ", 2), (2.0, 2), ("dog", 1), ("Dog", 1),
                                             ("tabby", 2), ("cat", 0)])
def test_lookup_by_index_and_name(target, expected):
    assert resolve_target(target, ("cat", "dog", "tabby, tabby cat")) == expected


@pytest.mark.parametrize("target", [3, -1, "-1", 2.5, math.nan, math.inf, "9" * 5000, "²", "nan", "", [1], b"1"])
def test_lookup_refusals(target):
    with pytest.raises(UnknownClass) as exc:
        resolve_target(target, ("cat", "dog", "tabby, tabby cat"))
    _one_line(exc.value)
