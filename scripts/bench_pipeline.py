"""`bench quality` images/s: the batched pipeline vs the per-image path (issue 14), on generated images.

    PYTHONPATH=. python scripts/bench_pipeline.py --images 1000 --model efficientnet_lite0 --method gradcam

Prints `uptime` first: on a shared machine the figures depend on the load.  Only the quality comparison is
here so far; the per-method batch-1 vs pipeline-batch and local vs Ray figures of the issue are not yet.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

from explainers import quality
from explainers.datasets import open_dataset
from explainers.models import load_model
from explainers.store import Store
from tests.pipeline_models import make_dataset


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--weights", default="untrained")
    ap.add_argument("--method", default="gradcam")
    ap.add_argument("--metrics", default="insdel,sparseness")
    ap.add_argument("--pixels-per-step", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=None)
    args = ap.parse_args()
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    bundle = load_model(args.model, device="cpu", weights=args.weights)
    settings = quality.Settings(pixels_per_step=args.pixels_per_step)
    with tempfile.TemporaryDirectory() as tmp:
        data = open_dataset(make_dataset(Path(tmp) / "ds", per_class=-(-args.images // 3)), limit=args.images)
        images = [(s.name, s.path.read_bytes()) for s in data.samples]
        for label, per_image in (("per-image", True), ("pipeline", False)):
            store = Store(Path(tmp) / f"{label}.sqlite")
            t = time.perf_counter()
            quality.run_quality(bundle, images, [args.method], args.metrics.split(","), settings, store,
                                per_image=per_image, batch_size=args.batch_size)
            dt = time.perf_counter() - t
            print(f"{label}: {len(images)} images in {dt:.1f} s = {len(images) / dt:.2f} img/s")
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
