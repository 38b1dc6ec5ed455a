"""``python -m explainers dataset ...``: score a whole dataset through the pipeline (issue 14).

Kept in its own module (registered by one line in cli.py) so the CLI's start-up stays light: nothing here
is imported until the subcommand runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("dataset", help="explain and score a dataset (batched, resumable; local or Ray)")
    p.add_argument("--images", required=True, help="a dataset of relevance-explorer.toml, a folder or a manifest")
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--weights", default="default")
    p.add_argument("--methods", default="gradcam", help="comma-separated method ids")
    p.add_argument("--metrics", default="insdel,sparseness,area")
    p.add_argument("--pixels-per-step", type=int, default=500)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="default: what fits the device's free memory")
    p.add_argument("--workers", type=int, default=None, help="DataLoader decoding workers")
    p.add_argument("--engine", default="local", choices=["local", "ray"])
    p.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: start a local one)")
    p.add_argument("--save-maps", default=None, help="folder for float16 map shards")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"])
    p.add_argument("--db", default=None)
    p.set_defaults(func=cmd_dataset)


def _open(images: str, limit: int | None):
    from .config import load_config
    from .datasets import open_dataset

    entry = load_config().datasets.get(images)
    if entry is not None:
        return open_dataset(entry.path, name=entry.name, limit=limit or entry.limit, sample=entry.sample,
                            seed=entry.seed, classes=entry.classes, layout=entry.layout)
    return open_dataset(images, limit=limit)


def cmd_dataset(args: argparse.Namespace) -> int:
    from . import quality
    from .store import Store

    data = _open(args.images, args.limit)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    metrics = quality.parse_metrics(args.metrics)
    settings = quality.Settings(pixels_per_step=args.pixels_per_step)
    store = Store(args.db)
    if args.engine == "ray":
        from . import ray_engine

        ref = ray_engine.ModelRef(args.model, args.weights)
        st = ray_engine.run(ref, data, methods, metrics, settings, store, batch_size=args.batch_size or 8,
                            address=args.ray_address)
        print(f"ray: {st.computed} computed, {st.cached} read, {st.actors} actor(s), {st.seconds:.1f} s")
        return 0
    from . import pipeline
    from .models import load_model

    bundle = load_model(args.model, device=args.device, weights=args.weights)
    try:
        from tqdm import tqdm

        bar = tqdm(total=len(data), desc="dataset", unit="img")
    except ImportError:  # pragma: no cover
        bar = None

    def progress(fraction: float, text: str) -> None:
        if bar is not None:
            bar.n = round(fraction * len(data))
            bar.set_postfix_str(text.split(" · ", 1)[-1])
            bar.refresh()

    res = pipeline.run(bundle, data, methods, metrics, settings, store, batch_size=args.batch_size,
                       workers=args.workers, save_maps=args.save_maps, progress=progress)
    if bar is not None:
        bar.close()
    for name, reason in res.skipped:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    cols = [c for m in metrics for c in quality.METRICS[m]]
    print("| method | class | n | " + " | ".join(cols) + " |")
    for method in methods:
        for label in sorted({r.label or "" for r in res.rows}):
            rs = [r for r in res.rows if r.method == method and (r.label or "") == label]
            cells = []
            for c in cols:
                vals = [r.values[c] for r in rs if r.values.get(c) is not None]
                cells.append(f"{statistics.fmean(vals):.3f}" if vals else "n/a")
            print(f"| {method} | {label or '-'} | {len(rs)} | " + " | ".join(cells) + " |")
    st = res.stats
    print(f"{st.computed} computed, {st.cached} read from {store.path}; {st.images_per_s:.1f} img/s, "
          f"batch {st.batch_size}" + (" (stopped early; rerun to resume)" if st.stopped else ""))
    return 130 if st.stopped else 0
