"""How long a display-only change takes on Compare with a 5-map grid at 224 px (issue 15: <= 150 ms).

Two figures: (1) the rendering work alone (explainers.render: view + colour bar + limits for 5 noisy maps, plus
the encoding: PNG for maps alone, JPEG for overlays; the page caches encoded images, so this is the uncached
worst case), median of 30; (2) a whole Compare rerun in Streamlit's AppTest after the
opacity slider moves, with the 5 maps already cached (sidebar, widgets, rendering, no recomputation), median of 5,
as CPU time of the process (wall time on a shared machine measures the other processes too).

    python scripts/bench_render.py
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RELEVANCE_EXPLORER_OFFLINE", "1")

from explainers import render  # noqa: E402

METHODS = ["gradcam", "gradcam++", "saliency", "input-x-gradient", "guided-backprop"]


def render_grid(image: Image.Image, maps: list[tuple[np.ndarray, bool]], kind: str) -> None:
    for arr, signed in maps:
        cmap = render.DIVERGING[0] if signed else render.SEQUENTIAL[0]
        rgb = render.view(kind, image, arr, signed=signed, cmap=cmap, clip=99.5, opacity=0.5)
        render.colorbar(cmap, signed=signed)
        render.colorbar_labels(render.limit(arr, signed, 99.5), signed, "relevance", 99.5)
        render.encode(rgb, lossless=kind != "overlay")  # what the page sends (before its cache of encoded images)


def library_ms() -> dict[str, float]:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8))
    maps = [(rng.normal(size=(224, 224)).astype(np.float32), i % 2 == 1) for i in range(5)]
    out = {}
    for kind in ("heatmap", "overlay", "side by side"):
        wall, cpu = [], []
        for _ in range(30):
            t, c = time.perf_counter(), time.process_time()
            render_grid(image, maps, kind)
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        out[kind] = (1000 * statistics.median(wall), 1000 * statistics.median(cpu))
    return out


def page_ms(memo_topk: bool = False) -> tuple[float, float]:
    """``memo_topk``: the sidebar's top-5 prediction (a model forward pass on every rerun, views/common.py) is
    memoised, to show the Compare page's own share of a display rerun."""
    from streamlit.testing.v1 import AppTest

    if memo_topk:
        from explainers.models import ModelBundle

        original, memo = ModelBundle.topk, {}

        def topk(self, x, k=5):
            key = (id(self), hash(x.cpu().numpy().tobytes()), k)
            if key not in memo:
                memo[key] = original(self, x, k)
            return memo[key]

        ModelBundle.topk = topk

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600).run()
    at.multiselect(key="compare_methods").set_value(METHODS).run()
    assert not at.exception, at.exception
    times = []
    for i in range(6):
        at.slider(key="compare_opacity").set_value(0.3 + 0.1 * (i % 2))
        c = time.process_time()
        at.run()
        times.append(time.process_time() - c)
    views = []
    for kind in ("heatmap", "side by side", "overlay", "auto"):
        at.selectbox(key="compare_view").set_value(kind)
        c = time.process_time()
        at.run()
        views.append(time.process_time() - c)
    assert not at.exception, at.exception
    return 1000 * statistics.median(times[1:]), 1000 * statistics.median(views)


if __name__ == "__main__":
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for kind, (wall, cpu) in library_ms().items():
        print(f"render 5 maps at 224 px, {kind}: {wall:.1f} ms wall, {cpu:.1f} ms CPU (median of 30)")
    for memo in (False, True):
        opacity, view = page_ms(memo)
        note = " (sidebar's top-5 forward pass memoised)" if memo else ""
        print(f"Compare rerun after an opacity change, 5 cached maps: {opacity:.0f} ms CPU (median of 5){note}")
        print(f"Compare rerun after a View change, 5 cached maps: {view:.0f} ms CPU (median of 4){note}")
