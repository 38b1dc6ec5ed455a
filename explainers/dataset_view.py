"""What the Dataset page shows, computed from one pipeline run (:func:`explainers.pipeline.run` with ``keep=True``):
one record per image (true class, prediction, metrics, map), the worst images first, the mean map per true
class, strategy clusters per class (SpRAy, :mod:`explainers.spray`), and the sidebar state that opens one
image in Compare / Failure review.  No Streamlit here: the page only renders these.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .by_class import UNLABELLED
from .spray import cluster, prepare

METRIC_COLUMNS = ("id", "insertion", "deletion", "sparseness")


@dataclass
class Record:
    """One image x method of a run."""

    name: str
    label: str | None  # true label (None: unlabelled)
    target: int  # the explained (predicted) class
    correct: bool | None  # prediction == true class (None without a true label)
    values: dict[str, float | None]
    map: np.ndarray  # [H, W] float32: the map as displayed (what the metrics scored)


def records(result: Any, items: Sequence[Any], method: str, truth: Mapping[str, tuple[str, int]]) -> list[Record]:
    """Records of ``method`` from a run's rows and kept maps; ``items`` are the run's inputs (``.name`` each),
    ``truth`` name -> (true label, class index) (:func:`explainers.by_class.truth_by_name`).  Images without a
    kept map (skipped or read from a store) are left out."""
    rows = {r.image: r for r in result.rows if r.method == method}
    out = []
    for (i, m), computed in sorted(result.kept.items()):
        if m != method or items[i].name not in rows:
            continue
        row = rows[items[i].name]
        label, target = truth.get(row.image, (None, None))
        out.append(Record(row.image, label, row.target, None if target is None else row.target == target,
                          dict(row.values), computed.shown.detach().float().cpu().numpy()))
    return out


def table(recs: Sequence[Record], class_names: Sequence[str]) -> list[dict[str, Any]]:
    """One flat dict per record (for a dataframe and the plots)."""
    return [{"name": r.name, "true class": r.label or UNLABELLED, "predicted": class_names[r.target]
             if 0 <= r.target < len(class_names) else str(r.target), "correct": r.correct,
             **{c: r.values.get(c) for c in METRIC_COLUMNS}} for r in recs]


def _bad(v: float | None) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def worst_first(recs: Sequence[Record], metric: str = "id", wrong_first: bool = True) -> list[Record]:
    """Records ordered worst first: wrong predictions before right ones (when ``wrong_first``), then by
    ``metric`` ascending (low ID / insertion is bad; for deletion, where high is bad, pass ``metric="-deletion"``);
    undefined values last; ties by name so the order is stable."""
    sign, col = (-1.0, metric[1:]) if metric.startswith("-") else (1.0, metric)

    def key(r: Record):
        v = r.values.get(col)
        wrong = 0 if (wrong_first and r.correct is False) else 1
        return (wrong, _bad(v), 0.0 if _bad(v) else sign * float(v), r.name)

    return sorted(recs, key=key)


def mean_maps(recs: Sequence[Record], size: int = 32) -> dict[str, np.ndarray]:
    """True class -> [size, size] mean of the class's maps, each downsampled and normalised to unit positive
    mass first (:func:`explainers.spray.prepare`), so every image weighs the same and only shapes count."""
    groups: dict[str, list[np.ndarray]] = {}
    for r in recs:
        groups.setdefault(r.label or UNLABELLED, []).append(r.map)
    return {label: prepare(maps, size).mean(0).reshape(size, size) for label, maps in sorted(groups.items())}


@dataclass
class ClassClusters:
    """Strategy clusters of one true class."""

    label: str
    names: list[str]  # member images, in the order of ``labels`` / ``embedding``
    labels: np.ndarray  # [N] cluster per image (0 = the largest)
    embedding: np.ndarray  # [N, 2] t-SNE
    mean_maps: np.ndarray  # [K, size, size]

    @property
    def n_clusters(self) -> int:
        return int(self.labels.max()) + 1 if self.labels.size else 0

    def members(self, k: int) -> list[str]:
        return [n for n, c in zip(self.names, self.labels) if c == k]

    def points(self) -> list[dict[str, Any]]:
        """One dict per image for a scatter plot: name, cluster, x, y."""
        return [{"name": n, "cluster": f"cluster {int(c)}", "x": float(e[0]), "y": float(e[1])}
                for n, c, e in zip(self.names, self.labels, self.embedding)]


def class_clusters(recs: Sequence[Record], label: str, n_clusters: int | None = None, size: int = 16,
                   seed: int = 0) -> ClassClusters:
    """SpRAy on the maps of one true class (``n_clusters`` None: the eigengap chooses)."""
    members = sorted((r for r in recs if (r.label or UNLABELLED) == label), key=lambda r: r.name)
    found = cluster([r.map for r in members], n_clusters=n_clusters, size=size, seed=seed)
    means = found.mean_maps(size) if len(members) else np.zeros((0, size, size))
    return ClassClusters(label, [r.name for r in members], found.labels, found.embedding, means)


def compare_state(dataset: Any, name: str, page_size: int) -> dict[str, Any]:
    """The sidebar's widget values that pick image ``name`` of ``dataset`` (its true-class filter, page and
    position in the page, as ``views/sources.py`` lays them out)."""
    sample = next((s for s in dataset.samples if s.name == name), None)
    if sample is None:
        raise KeyError(name)
    view = dataset.filter(sample.label) if dataset.labelled and sample.label is not None else dataset
    idx = [s.name for s in view.samples].index(name)
    return {"image_source": "Dataset", "ds_name": dataset.name,
            "ds_true": sample.label if view is not dataset else "(all)", "ds_pred": "(all)",
            "ds_page": idx // page_size + 1, "ds_pick": idx % page_size}


def review_state(dataset_name: str, label: str | None) -> dict[str, Any]:
    """Failure review's widget values for this dataset (and the image's true class)."""
    return {"fr_source": "Dataset", "fr_dataset": dataset_name, "fr_ds_class": label or "(all)"}
