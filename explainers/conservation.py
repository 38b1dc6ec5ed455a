"""Conservation over many images (resnet-lrp paper Sec. 4.4, Fig. 7), computed here so pages only plot it.

Fig. 7 plots, for each image, the relevance total at the network input, at the first residual block's input
and at the last block's input against the predicted probability of the image's top class (the relevance
placed at the output when the start is the probability).  Conservation holds where the points lie on y = x.
The totals come from the engine's trace (``Explanation.trace``), not from a second computation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from .errors import ExplainerError
from .models import ModelBundle
from .progress import report
from .registry import Explanation, explain_batch, get_method

CHECKPOINTS = ("input", "first_block", "last_block")


@dataclass(frozen=True)
class ConservationPoint:
    """One image of the Fig. 7 scatter; block totals are NaN on a model without residual blocks."""

    name: str
    target: int
    probability: float  # x of Fig. 7: the start relevance under start = probability
    input: float
    first_block: float
    last_block: float

    def relative_error(self, which: str = "input") -> float:
        """|total - probability| / probability at a checkpoint: 0 when conservation holds exactly."""
        return abs(getattr(self, which) - self.probability) / max(self.probability, 1e-12)


@dataclass(frozen=True)
class Sweep:
    points: tuple[ConservationPoint, ...]
    skipped: tuple[tuple[str, str], ...]  # (image name, one-line reason) for images the method could not explain


def sweep_options(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options the sweep computes with: display-only options dropped, start forced to the probability.

    Fig. 7's x axis is the predicted probability, so the sweep needs the output relevance to be it whatever
    start the user picked for the single-image views.  The result is also the sweep's cache key: a
    display-only option (heat-quantisation bins) never changes it, so moving one never reruns the sweep.
    """
    spec = get_method(method)
    compute, _ = spec.split_options(spec.resolve_options(options))
    if any(o.name == "start" for o in spec.options):
        compute["start"] = "probability"
    return compute


def _point(name: str, res: Explanation) -> ConservationPoint:
    t = res.trace
    return ConservationPoint(name=name, target=res.target, probability=res.score,
                             **{which: float(t.total_at(which)) for which in CHECKPOINTS})


def conservation_sweep(bundle: ModelBundle, images: Sequence[tuple[str, Image.Image | torch.Tensor]], method: str,
                       options: dict[str, Any] | None = None, batch_size: int = 8) -> Sweep:
    """Fig. 7 points for ``images`` (name, PIL image or preprocessed 1x3xHxW) under ``method``.

    Images are explained ``batch_size`` at a time for their own top class.  A batch that fails with a user
    error (e.g. a non-finite map) is retried image by image so one bad image is skipped, not the sweep;
    progress is reported through :func:`explainers.progress.report`.
    """
    if get_method(method).family != "lrp":
        raise ExplainerError(f"{get_method(method).name} keeps no per-node trace; use a propagation method.")
    opts = sweep_options(method, options or {})
    xs = [(name, img if isinstance(img, torch.Tensor) else bundle.preprocess(img)) for name, img in images]
    points: list[ConservationPoint] = []
    skipped: list[tuple[str, str]] = []
    for start in range(0, len(xs), batch_size):
        chunk = xs[start:start + batch_size]
        report(start / max(len(xs), 1), f"{chunk[0][0]} ({start + 1}/{len(xs)})")
        try:
            results = explain_batch(bundle, torch.cat([x for _, x in chunk]), method, **opts)
            points += [_point(name, r) for (name, _), r in zip(chunk, results)]
        except ExplainerError:
            for name, x in chunk:
                try:
                    points.append(_point(name, explain_batch(bundle, x, method, **opts)[0]))
                except ExplainerError as exc:
                    skipped.append((name, str(exc)))
    report(1.0, "done")
    return Sweep(points=tuple(points), skipped=tuple(skipped))
