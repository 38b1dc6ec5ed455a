"""Speed benchmark: median seconds per image per method, and the ratio to one forward pass.

Run ``python -m explainers bench speed --model efficientnet_lite0 --methods gradcam --repeat 5``.
Measured here, not in a timed test, so CI stays deterministic.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .images import GALLERY
from .models import ModelBundle
from .registry import explain_batch


@dataclass
class SpeedRow:
    method: str
    batch: int
    seconds_per_image: float
    forward_seconds_per_image: float

    @property
    def ratio(self) -> float:
        return self.seconds_per_image / self.forward_seconds_per_image


def median_seconds(fn: Callable[[], object], repeat: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sample_batch(bundle: ModelBundle, batch: int) -> torch.Tensor:
    items = list(GALLERY.values())
    return torch.cat([bundle.preprocess(items[i % len(items)].image()) for i in range(batch)])


def forward_seconds(bundle: ModelBundle, x: torch.Tensor, repeat: int) -> float:
    def run():
        with torch.no_grad():
            bundle.model(x)

    return median_seconds(run, repeat) / x.shape[0]


def speed(bundle: ModelBundle, methods: list[str], repeat: int = 5, batch: int = 1,
          options: dict[str, dict] | None = None) -> list[SpeedRow]:
    x = sample_batch(bundle, batch)
    fwd = forward_seconds(bundle, x, repeat)
    rows = []
    for method in methods:
        opts = (options or {}).get(method, {})
        sec = median_seconds(lambda m=method, o=opts: explain_batch(bundle, x, m, **o), repeat) / batch
        rows.append(SpeedRow(method, batch, sec, fwd))
    return rows


def markdown(rows: list[SpeedRow], model: str, device: str) -> str:
    lines = [f"model {model} on {device}", "",
             "| method | batch | s / image | x forward |", "|---|---|---|---|"]
    if rows:
        lines.append(f"| forward | {rows[0].batch} | {rows[0].forward_seconds_per_image:.4f} | 1.0 |")
    lines += [f"| {r.method} | {r.batch} | {r.seconds_per_image:.4f} | {r.ratio:.1f} |" for r in rows]
    return "\n".join(lines)
