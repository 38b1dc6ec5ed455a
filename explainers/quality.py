"""The quality benchmark: metric values per image and method, resumable through the SQLite store.

``python -m explainers bench quality --images gallery --model efficientnet_lite0 --methods gradcam``
runs :func:`run_quality`.  Every (image, method, metric) value is written to
:class:`~explainers.store.Store` as soon as it is known, keyed by image hash +
model + method + options + metric settings, so an interrupted run resumes
where it stopped and a rerun only reads the database.

Maps are scored as the user sees them (the method's display post-processing,
e.g. heat quantization, applied); the raw map is the strict protocol's
secondary ranking key (see :mod:`explainers.metrics.insdel`).
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import ExplainerError, InvalidImage
from .images import GALLERY, image_hash, load_image
from .metrics import fidelity, insertion_deletion, method_explain_fn, sparseness, stability
from .metrics.insdel import SCHEDULE as INSDEL_SCHEDULE
from .models import ModelBundle
from .progress import report
from .registry import explain, get_method
from .store import Store

# metric name -> the columns it produces
METRICS: dict[str, tuple[str, ...]] = {
    "insdel": ("insertion", "deletion", "id"),
    "insdel-strict": ("insertion_strict", "deletion_strict", "id_strict"),
    "sparseness": ("sparseness",),
    "fidelity": ("fidelity",),
    "stability": ("stability",),
    "area": ("attributed_area",),  # fraction of pixels above half the map's maximum (failure triage)
}
DEFAULT_METRICS = ("insdel", "insdel-strict", "sparseness")


@dataclass(frozen=True)
class Settings:
    """Metric settings; the defaults are the papers' (0 px + 101 points of 500 px, 100 x 200-px subsets, 5 x 0.1)."""

    pixels_per_step: int = 500
    start: str = "black"
    fidelity_runs: int = 100
    fidelity_subset: int = 200
    stability_samples: int = 5
    stability_sigma: float = 0.1
    seed: int = 0
    batch_size: int = 32

    def for_metric(self, metric: str) -> dict[str, Any]:
        """The settings that change a metric's value (part of its store key)."""
        if metric.startswith("insdel"):
            return {"pixels_per_step": self.pixels_per_step, "start": self.start, "seed": self.seed,
                    "schedule": INSDEL_SCHEDULE}
        if metric == "fidelity":
            return {"runs": self.fidelity_runs, "subset": self.fidelity_subset, "seed": self.seed}
        if metric == "stability":
            return {"samples": self.stability_samples, "sigma": self.stability_sigma, "seed": self.seed}
        return {}


@dataclass
class Row:
    """One image x method: its metric values (``None`` where undefined) and whether they came from the store."""

    image: str
    image_hash: str
    method: str
    target: int
    values: dict[str, float | None] = field(default_factory=dict)
    cached: bool = False
    label: str | None = None  # the image's true label, when the dataset has one
    score: float | None = None  # the model's probability of ``target``


class Rows(list):
    """Quality rows plus ``skipped``: (name, reason) of each image that could not be decoded."""

    def __init__(self, rows=()):
        super().__init__(rows)
        self.skipped: list[tuple[str, str]] = []


def parse_metrics(text: str | Sequence[str] | None) -> list[str]:
    names = [m.strip() for m in (text.split(",") if isinstance(text, str) else (text or DEFAULT_METRICS))
             if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise ExplainerError(f"Unknown metric(s) {', '.join(unknown)}; available: {', '.join(METRICS)}.")
    return names


def quality_images(source: str | Path, limit: int | None = None) -> list[tuple[str, bytes]]:
    """(name, bytes) of the gallery (``"gallery"``), of a dataset registered in relevance-explorer.toml, or of a
    folder (ImageFolder or plain, recursive) / CSV-Parquet manifest, in listing order; unreadable files are
    skipped here and undecodable ones later, each reported by name."""
    if str(source) == "gallery":
        items = [(f"{k}.png", g.png_bytes()) for k, g in GALLERY.items()]
        return items[:limit] if limit else items
    from .datasets import resolve_dataset

    dataset = resolve_dataset(str(source))
    if not len(dataset):
        raise ExplainerError(f"No image files in {dataset.name!r}.")
    items, _unreadable = dataset.read(dataset.page(0, limit or len(dataset)))
    return items


def has_ties(attribution: torch.Tensor) -> bool:
    """True when some pixels share a value (then the two tie protocols can differ)."""
    flat = attribution.flatten()
    return torch.unique(flat).numel() < flat.numel()


def evaluate(bundle: ModelBundle, x: torch.Tensor, method: str, options: Mapping[str, Any],
             metrics: Sequence[str], settings: Settings = Settings(), target: int | None = None,
             explanation: Any = None) -> tuple[dict[str, float | None], int]:
    """Compute ``metrics`` (names of :data:`METRICS`) for one image and method; returns (values, target)."""
    spec = get_method(method)
    opts = spec.resolve_options(dict(options))
    res = explanation if explanation is not None else explain(bundle, x, method, target=target, **opts)
    raw = res.attribution.float()
    shown = spec.display_map(raw, opts).float()
    out: dict[str, float | None] = {}
    common = dict(pixels_per_step=settings.pixels_per_step, start=settings.start, seed=settings.seed,
                  batch_size=settings.batch_size, raw=raw[None])
    together = None
    tied = has_ties(shown)
    if "insdel" in metrics or ("insdel-strict" in metrics and not tied):
        together = insertion_deletion(bundle, x, shown[None], [res.target], ties="together", **common)
    if "insdel" in metrics:
        out.update(insertion=float(together.insertion_auc[0]), deletion=float(together.deletion_auc[0]),
                   id=float(together.id_score[0]))
    if "insdel-strict" in metrics:
        # without ties the strict order is the same set at every point: reuse the computed curves
        strict = together if (together is not None and not tied) else insertion_deletion(
            bundle, x, shown[None], [res.target], ties="strict", **common)
        out.update(insertion_strict=float(strict.insertion_auc[0]), deletion_strict=float(strict.deletion_auc[0]),
                   id_strict=float(strict.id_score[0]))
    if "sparseness" in metrics:
        out["sparseness"] = float(sparseness(shown[None])[0])
    if "area" in metrics:
        from .failures import attributed_area

        out["attributed_area"] = attributed_area(shown)
    if "fidelity" in metrics:
        def model(batch: torch.Tensor) -> torch.Tensor:
            return bundle.model(batch)  # read-only use of the shared model (see guard.py)

        out["fidelity"] = float(fidelity(model, x.to(bundle.device), shown[None], [res.target],
                                         subset=settings.fidelity_subset, runs=settings.fidelity_runs,
                                         seed=settings.seed, batch_size=settings.batch_size)[0])
    if "stability" in metrics:
        fn = method_explain_fn(bundle, method, opts, display=True)
        out["stability"] = float(stability(fn, x.to(bundle.device), [res.target], sigma=settings.stability_sigma,
                                           samples=settings.stability_samples, seed=settings.seed,
                                           reference=shown[None])[0])
    return {k: (None if v is None or (isinstance(v, float) and math.isnan(v)) else v) for k, v in out.items()}, \
        int(res.target)


def run_quality(bundle: ModelBundle, images: Sequence[tuple[str, bytes]], methods: Sequence[str],
                metrics: Sequence[str] = DEFAULT_METRICS, settings: Settings = Settings(),
                store: Store | None = None, options: Mapping[str, Mapping[str, Any]] | None = None,
                on_row: Callable[[Row], None] | None = None, per_image: bool = False,
                batch_size: int | None = None, workers: int | None = None, stop: Any = None) -> Rows:
    """Every image x method; values already in ``store`` are read, the others computed and stored at once.

    By default through the batched dataset pipeline (:func:`explainers.pipeline.run`: one transaction per
    batch, a Ctrl-C keeps the finished batches and raises KeyboardInterrupt after).  ``per_image``: the
    image-by-image path (the reference the pipeline is benchmarked and tested against).
    Progress goes through :func:`explainers.progress.report` (tqdm in the CLI,
    st.progress in the app).  ``on_row`` is called after each finished item (per batch in the pipeline).
    """
    store = store or Store()
    metrics = parse_metrics(list(metrics))
    for m in methods:
        spec = get_method(m)
        if not spec.supports(bundle):
            raise ExplainerError(spec.why_unsupported(bundle))
    if not per_image:
        from . import pipeline

        def on_batch(_stats, batch_rows: list[Row]) -> None:
            for r in batch_rows:
                on_row(r)

        out = pipeline.run(bundle, images, methods, metrics, settings, store, options, batch_size=batch_size,
                           workers=workers, stop=stop, on_batch=on_batch if on_row else None)
        if out.stats.stopped and (stop is None or not stop.is_set()):
            raise KeyboardInterrupt  # Ctrl-C: the finished batches are stored; the caller says so
        rows = Rows(out.rows)
        rows.skipped = list(out.skipped)
        return rows
    rows = Rows()
    total = len(images) * len(methods)
    done = 0
    for name, data in images:
        key = image_hash(data)
        x = None
        for method in methods:
            report(done / max(total, 1), f"{name} · {method}")
            opts = get_method(method).resolve_options(dict((options or {}).get(method, {})))
            values: dict[str, float | None] = {}
            missing = []
            target = None
            for metric in metrics:
                for col in METRICS[metric]:
                    hit = store.get_result(key, bundle.fingerprint, method, opts, col,
                                           settings.for_metric(metric))
                    if hit is None:
                        missing.append(metric)
                        break
                    values[col] = hit[0]
                    target = hit[1].get("target", target)
            if missing:
                if x is None:
                    try:
                        x = bundle.preprocess(load_image(data, name=name))
                    except InvalidImage as exc:  # one broken file is reported; the other images go on
                        rows.skipped.append((name, str(exc)))
                        done += len(methods)
                        break
                computed, target = evaluate(bundle, x, method, opts, missing, settings)
                values.update(computed)
                for metric in missing:
                    for col in METRICS[metric]:
                        store.put_result(key, bundle.fingerprint, method, opts, col, computed.get(col),
                                         settings.for_metric(metric), extra={"target": target}, image_name=name)
            row = Row(name, key, method, int(target) if target is not None else -1,
                      {c: values.get(c) for m in metrics for c in METRICS[m]}, cached=not missing)
            rows.append(row)
            done += 1
            report(done / max(total, 1), f"{name} · {method}")
            if on_row:
                on_row(row)
    return rows


def summary(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Mean and (sample) standard deviation per method and metric column, NaN/None values left out."""
    out = []
    methods = list(dict.fromkeys(r.method for r in rows))
    columns = list(dict.fromkeys(c for r in rows for c in r.values))
    for method in methods:
        for col in columns:
            vals = [r.values[col] for r in rows if r.method == method and r.values.get(col) is not None]
            mean = statistics.fmean(vals) if vals else float("nan")
            std = statistics.stdev(vals) if len(vals) > 1 else 0.0 if vals else float("nan")
            out.append({"method": method, "metric": col, "mean": mean, "std": std, "n": len(vals)})
    return out


def markdown(rows: Sequence[Row], model: str = "", device: str = "") -> str:
    """Summary table, one line per method, 'mean ± std' per metric column."""
    stats = summary(rows)
    columns = list(dict.fromkeys(s["metric"] for s in stats))
    methods = list(dict.fromkeys(s["method"] for s in stats))
    n_images = len({r.image_hash for r in rows})
    lines = [f"quality on {n_images} image(s), model {model} on {device}".strip(), "",
             "| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for method in methods:
        cells = []
        for col in columns:
            s = next(s for s in stats if s["method"] == method and s["metric"] == col)
            cells.append("n/a" if s["n"] == 0 else f"{s['mean']:.3f} ± {s['std']:.3f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(rows: Sequence[Row], path: str | Path) -> None:
    """Per image x method values (one column per metric)."""
    columns = list(dict.fromkeys(c for r in rows for c in r.values))
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "image_hash", "method", "target", *columns])
        for r in rows:
            w.writerow([r.image, r.image_hash, r.method, r.target,
                        *("" if r.values.get(c) is None else f"{r.values[c]:.6g}" for c in columns)])


def write_summary_csv(rows: Sequence[Row], path: str | Path) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["method", "metric", "mean", "std", "n"])
        w.writeheader()
        w.writerows(summary(rows))


def summary_path(out: str | Path) -> Path:
    """``results.csv`` -> ``results_summary.csv`` (the summary next to the per-image file)."""
    p = Path(out)
    return p.with_name(f"{p.stem}_summary{p.suffix or '.csv'}")


__all__ = ["DEFAULT_METRICS", "METRICS", "Row", "Settings", "evaluate", "markdown", "parse_metrics",
           "quality_images", "run_quality", "summary", "summary_path", "write_csv", "write_summary_csv"]
