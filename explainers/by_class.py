"""Metrics per true class, split into correct and wrong predictions (for labelled datasets).

A quality row explains the predicted class (``Row.target``), so a row is *correct* when that class is the
image's true class.  Rows of images without a true label are grouped under ``(unlabelled)``.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

UNLABELLED = "(unlabelled)"


def truth_by_name(dataset: Any, class_names: Sequence[str]) -> dict[str, tuple[str, int]]:
    """File name -> (true label, its class index in the model's labels), for every labelled sample."""
    targets = dataset.targets(class_names)
    return {s.name: (s.label, targets[s.label]) for s in dataset.samples if s.label is not None}


def per_class(rows: Sequence[Any], truth: Mapping[str, tuple[str, int]]) -> list[dict[str, Any]]:
    """One record per method x true class x {correct, wrong}: the number of images and each metric's mean
    (``None`` values left out).  ``rows``: quality rows (``.image``, ``.method``, ``.target``, ``.values``)."""
    groups: dict[tuple[str, str, str], list[Any]] = {}
    for r in rows:
        label, target = truth.get(r.image, (UNLABELLED, None))
        split = "unknown" if target is None else ("correct" if r.target == target else "wrong")
        groups.setdefault((r.method, label, split), []).append(r)
    out = []
    for (method, label, split), members in sorted(groups.items()):
        record: dict[str, Any] = {"method": method, "true class": label, "prediction": split, "images": len(members)}
        columns = list(dict.fromkeys(c for r in members for c in r.values))
        for c in columns:
            vals = [r.values[c] for r in members if r.values.get(c) is not None]
            record[c] = statistics.fmean(vals) if vals else None
        out.append(record)
    return out


def accuracy(rows: Sequence[Any], truth: Mapping[str, tuple[str, int]]) -> dict[str, float]:
    """Share of correct predictions per true class (one row per image counts once per method)."""
    seen: dict[str, list[bool]] = {}
    for r in {(r.image, r.target): r for r in rows}.values():
        if r.image in truth:
            label, target = truth[r.image]
            seen.setdefault(label, []).append(r.target == target)
    return {label: sum(v) / len(v) for label, v in sorted(seen.items())}
