"""Failure triage (resnet-lrp App. D.4): find maps whose ID score is too low and suggest why.

The paper calls an explanation a failure when its ID score (Insertion - Deletion,
App. A.0.3) is not above 0.371, the best baseline's score (Grad-CAM), and sorts
failures by eye into three categories:

* IA, Insufficiently Attended: the attributed area is too small;
* OA, Over-Attended: the attributed area is excessively large;
* WA, Wrongly Attended: relevance sits on pixels that do not drive the decision.

We suggest a category from one measurable quantity, the *attributed area*: the
fraction of pixels above half the map's maximum.  Small -> IA, large -> OA,
otherwise the area is of ordinary size yet the ID score is low -> WA.  Both
thresholds are parameters; the suggestion is a starting point for a human label.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from .models import ModelBundle
from .progress import report

PAPER_THRESHOLD = 0.371  # resnet-lrp App. D.4: Grad-CAM's ID score, the best baseline
CATEGORIES = {"IA": "Insufficiently Attended", "OA": "Over-Attended", "WA": "Wrongly Attended"}


@dataclass(frozen=True)
class TriageSettings:
    threshold: float = PAPER_THRESHOLD  # failure when ID <= threshold
    small_area: float = 0.10  # attributed area below this fraction -> IA
    large_area: float = 0.50  # attributed area above this fraction -> OA
    pixels_per_step: int = 500  # insertion/deletion schedule (0 px, then 101 points of 500 px at 224x224)
    # 'together' is the authors' tie protocol, under which the 0.371 threshold was measured;
    # 'strict' avoids its jump to the full image on heat-quantised maps (see metrics.insdel).
    ties: str = "together"


@dataclass
class TriageItem:
    name: str
    image_hash: str
    target: int
    target_name: str
    score: float
    insertion: float
    deletion: float
    id_score: float
    attributed_area: float
    failure: bool
    suggestion: str  # 'IA' | 'OA' | 'WA' | 'none'
    reason: str
    attribution: torch.Tensor = field(repr=False)
    fractions: torch.Tensor = field(repr=False)
    insertion_curve: torch.Tensor = field(repr=False)
    deletion_curve: torch.Tensor = field(repr=False)
    true_label: str | None = None  # from a labelled dataset (None: unknown)
    true_target: int | None = None  # the true label's class index in the model's labels

    @property
    def correct(self) -> bool | None:
        """Whether the explained (predicted) class is the true one; None without a true label."""
        return None if self.true_target is None else self.target == self.true_target

    @property
    def kind(self) -> str:
        """The two failures App. D separates: a wrong prediction, or a right one for the wrong reasons (low ID)."""
        if self.correct is None:
            return "failure" if self.failure else "ok"
        if not self.correct:
            return WRONG
        return RIGHT_LOW_ID if self.failure else RIGHT

    def row(self) -> dict[str, Any]:
        """The scalar part, for tables and CSV export."""
        keys = ("name", "image_hash", "target", "target_name", "score", "insertion", "deletion", "id_score",
                "attributed_area", "failure", "suggestion", "reason", "true_label", "correct", "kind")
        return {k: getattr(self, k) for k in keys}


def attributed_area(attribution: torch.Tensor) -> float:
    """Fraction of pixels whose value is above half the map's maximum (0 for a map with no positive value)."""
    a = attribution.float()
    peak = float(a.max())
    if peak <= 0:
        return 0.0
    return float((a > 0.5 * peak).float().mean())


def suggest(id_score: float, area: float, settings: TriageSettings = TriageSettings()) -> tuple[bool, str, str]:
    """(is a failure, suggested category, the reason in words)."""
    if id_score > settings.threshold:
        return False, "none", f"ID {id_score:.3f} is above the threshold {settings.threshold:.3f}: not a failure."
    pct = f"{area:.0%} of the image is attributed"
    if area < settings.small_area:
        return True, "IA", f"{pct} (< {settings.small_area:.0%}): the map covers too little."
    if area > settings.large_area:
        return True, "OA", f"{pct} (> {settings.large_area:.0%}): the map covers too much."
    return True, "WA", (f"{pct}, an ordinary size, yet ID {id_score:.3f} is low: "
                        "relevance probably sits on the wrong region.")


WRONG, RIGHT_LOW_ID, RIGHT = "wrong prediction", "right, low ID", "right"


def with_truth(items: TriageItems, dataset: Any, class_names: Sequence[str]) -> TriageItems:
    """Attach each item's true label from a labelled :class:`~explainers.datasets.Dataset` (matched by file
    name), so the review shows correctness.  Unknown labels raise one :class:`InvalidDataset` naming them."""
    targets = dataset.targets(class_names)
    for it in items:
        label = dataset.label_of(it.name)
        it.true_label = label
        it.true_target = targets.get(label) if label is not None else None
    return items


def table_d_by_class(items: Sequence[TriageItem], labels: Sequence[Any]) -> dict[str, dict[str, int]]:
    """Table D per true class: counts of each label category (and of each failure kind) for the items shown.

    ``labels``: stored labels (``.image_hash``, ``.target``, ``.label``) of one method."""
    by_key = {(lab.image_hash, lab.target): lab.label for lab in labels}
    out: dict[str, dict[str, int]] = {}
    for it in items:
        row = out.setdefault(it.true_label or "(unlabelled)",
                             {"images": 0, WRONG: 0, RIGHT_LOW_ID: 0, "IA": 0, "OA": 0, "WA": 0, "none": 0})
        row["images"] += 1
        if it.kind in (WRONG, RIGHT_LOW_ID):
            row[it.kind] += 1
        label = by_key.get((it.image_hash, it.target))
        if label is not None:
            row[label] = row.get(label, 0) + 1
    return dict(sorted(out.items()))


class TriageItems(list):
    """The triaged items (a list, worst first) plus ``skipped``: (name, reason) of each image that could
    not be decoded, so a folder with one broken file still gives every other result and says which."""

    def __init__(self, items: Sequence[TriageItem] = (), skipped: Sequence[tuple[str, str]] = ()):
        super().__init__(items)
        self.skipped: list[tuple[str, str]] = list(skipped)


def triage(bundle: ModelBundle, images: Sequence[tuple[str, bytes]], method: str,
           options: Mapping[str, Any] | None = None, settings: TriageSettings = TriageSettings(),
           batch_size: int | None = None) -> TriageItems:
    """Explain each image's predicted class, score it, and suggest a failure category.

    Runs through the batched dataset pipeline (:mod:`explainers.pipeline`, with no store: the maps and curves
    are kept for display).  Returns items sorted by ascending ID score (worst first).
    Images that cannot be decoded are skipped and listed in ``.skipped`` with their reason (never a crash).
    """
    from . import pipeline
    from .quality import Settings

    metric = "insdel" if settings.ties == "together" else "insdel-strict"
    cols = ("insertion", "deletion") if metric == "insdel" else ("insertion_strict", "deletion_strict")
    out = pipeline.run(bundle, images, [method], [metric, "area"], Settings(pixels_per_step=settings.pixels_per_step),
                       store=None, options={method: dict(options or {})}, batch_size=batch_size, keep=True)
    items: list[TriageItem] = []
    classes = bundle.class_names
    kept = [out.kept[k] for k in sorted(out.kept)]  # item order, as the rows (no store: every row is computed)
    for row, c in zip(out.rows, kept):
        ins, dele = row.values[cols[0]], row.values[cols[1]]
        area = row.values["attributed_area"]
        failure, category, reason = suggest(ins - dele, area, settings)
        fr, ic, dc = c.curves[settings.ties]
        items.append(TriageItem(
            name=row.image, image_hash=row.image_hash, target=row.target, target_name=classes[row.target],
            score=row.score, insertion=ins, deletion=dele, id_score=ins - dele, attributed_area=area,
            failure=failure, suggestion=category, reason=reason,
            attribution=c.raw, fractions=fr, insertion_curve=ic, deletion_curve=dc,
        ))
    report(1.0, "done" if not out.skipped else f"done; {len(out.skipped)} undecodable file(s) skipped")
    return TriageItems(sorted(items, key=lambda item: item.id_score), out.skipped)


def resuggest(items: Sequence[TriageItem], settings: TriageSettings) -> TriageItems:
    """The same measurements under other thresholds: moving a threshold never recomputes a map."""
    out = []
    for item in items:
        failure, category, reason = suggest(item.id_score, item.attributed_area, settings)
        out.append(replace(item, failure=failure, suggestion=category, reason=reason))
    return TriageItems(out, getattr(items, "skipped", ()))


def table_d(labels: Sequence[Any]) -> dict[str, dict[str, int]]:
    """Counts per category per method, like the paper's Table D (labels: objects with .method and .label)."""
    out: dict[str, dict[str, int]] = {}
    for lab in labels:
        row = out.setdefault(lab.method, {"IA": 0, "OA": 0, "WA": 0, "none": 0})
        row[lab.label] = row.get(lab.label, 0) + 1
    return out
