"""Dataset-pipeline throughput (issue 14), on generated images; a benchmark, not a test.

    # bench quality: the batched pipeline vs the per-image path
    PYTHONPATH=. python scripts/bench_pipeline.py quality --images 1000 --per-image-images 200
    # images/s per model x method: batch 1 vs the pipeline's batch, local vs Ray with 2 CPU actors
    PYTHONPATH=. python scripts/bench_pipeline.py table --images 24

``quality`` runs the per-image path on ``--per-image-images`` of the images (all of them by default): its
images/s does not depend on how many images it sees, and on this 2-core CPU 1,000 images one by one take
most of an hour.  ``table`` scores the sparseness of each map (so it measures the explanation, not the
metric); its "insdel" row is Grad-CAM + insertion/deletion.  Each figure is one run in a fresh store; `uptime`
is printed before and after because on a shared machine the figures depend on the load.
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


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def dataset(root: Path, n: int, size: tuple[int, int] = (224, 224)):
    return open_dataset(make_dataset(root, per_class=-(-n // 3), size=size), limit=n)


def bench_quality(args) -> None:
    bundle = load_model(args.model, device="cpu", weights=args.weights)
    settings = quality.Settings(pixels_per_step=args.pixels_per_step)
    with tempfile.TemporaryDirectory() as tmp:
        data = dataset(Path(tmp) / "ds", args.images)
        images = [(s.name, s.path.read_bytes()) for s in data.samples]
        per_image_n = min(args.per_image_images or len(images), len(images))
        rates = {}
        for label, per_image, subset in (("per-image", True, images[:per_image_n]), ("pipeline", False, images)):
            store = Store(Path(tmp) / f"{label}.sqlite")
            t = time.perf_counter()
            quality.run_quality(bundle, subset, [args.method], args.metrics.split(","), settings, store,
                                per_image=per_image, batch_size=args.batch_size)
            dt = time.perf_counter() - t
            rates[label] = len(subset) / dt
            print(f"{label}: {len(subset)} images in {dt:.1f} s = {rates[label]:.2f} img/s", flush=True)
        print(f"pipeline / per-image = {rates['pipeline'] / rates['per-image']:.2f}x")


def bench_table(args) -> None:
    from explainers import pipeline, ray_engine

    settings = quality.Settings(pixels_per_step=args.pixels_per_step)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = dataset(Path(tmp) / "ds", args.images)
        files = [(s.name, s.path) for s in data.samples]
        if args.ray:
            import ray

            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        for model in args.models.split(","):
            bundle = load_model(model, device="cpu", weights="untrained")
            batch = pipeline.auto_batch_size(bundle, args.batch_size)
            for method in args.methods.split(","):
                name, metrics = (("gradcam", ["insdel"]) if method == "insdel" else (method, ["sparseness"]))
                figures = {}
                for label, bs in (("batch 1", 1), (f"batch {batch}", batch)):
                    store = Store(Path(tmp) / f"{model}-{method}-{bs}.sqlite")
                    t = time.perf_counter()
                    pipeline.run(bundle, files, [name], metrics, settings, store, batch_size=bs)
                    figures[label] = len(files) / (time.perf_counter() - t)
                if args.ray:
                    store = Store(Path(tmp) / f"{model}-{method}-ray.sqlite")
                    t = time.perf_counter()
                    ray_engine.run(ray_engine.ModelRef(model, weights="untrained"), files, [name], metrics,
                                   settings, store, batch_size=batch, actors=2)
                    figures["ray 2 actors"] = len(files) / (time.perf_counter() - t)
                rows.append((model, method, figures))
                print(model, method, "  ".join(f"{k}: {v:.2f} img/s" for k, v in figures.items()), flush=True)
    print("\n| model | method | " + " | ".join(rows[0][2]) + " |")
    print("|---|---|" + "---|" * len(rows[0][2]))
    for model, method, figures in rows:
        print(f"| {model} | {method} | " + " | ".join(f"{v:.2f}" for v in figures.values()) + " |")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="what", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--images", type=int, default=1000)
    q.add_argument("--per-image-images", type=int, default=None)
    q.add_argument("--model", default="efficientnet_lite0")
    q.add_argument("--weights", default="untrained")
    q.add_argument("--method", default="gradcam")
    q.add_argument("--metrics", default="insdel,sparseness")
    q.add_argument("--pixels-per-step", type=int, default=500)
    q.add_argument("--batch-size", type=int, default=None)
    t = sub.add_parser("table")
    t.add_argument("--images", type=int, default=24)
    t.add_argument("--models", default="efficientnet_lite0,resnet50")
    t.add_argument("--methods", default="resnet-lrp,gradcam,srd,insdel")
    t.add_argument("--pixels-per-step", type=int, default=500)
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--no-ray", dest="ray", action="store_false")
    args = ap.parse_args()
    print(uptime(), flush=True)
    (bench_quality if args.what == "quality" else bench_table)(args)
    print(uptime())


if __name__ == "__main__":
    main()
