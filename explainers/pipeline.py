"""One streaming pipeline for dataset work: ``bench quality``, failure triage, the Dataset page (issue 14).

Images are decoded and preprocessed in torch ``DataLoader`` workers, batched on the bundle's device, explained
and scored a whole batch at a time (the insertion/deletion steps of all the batch's images share forward
batches, see :mod:`explainers.metrics.insdel`), and written to the :class:`~explainers.store.Store` as each batch
finishes, in ONE transaction per batch.  Results are keyed by image hash + weights fingerprint + method + method
options + metric settings (the store's key), so a rerun, or a run after a crash or Ctrl-C, computes only what
is missing.  Optionally the raw maps are saved (``save_maps``: float16 at the model's input resolution, one
``.npz`` file per batch shard) so pages can show them without recomputing.

The per-batch work (:func:`process_batch`) is shared with the Ray engine (:mod:`explainers.ray_engine`), which
runs it in actors and writes its rows to Parquet shards instead of SQLite.

Profiling note (2 cores, Lite0, gradcam, insdel with 11 points): per-item transactions cost ~4 ms each with
WAL + synchronous=NORMAL, i.e. ~7 columns x ~4 ms per image when each column is its own ``put_result``; one
``executemany`` per batch makes the store cost negligible.  The per-image lookups (one connection per column)
were the other overhead; :meth:`Store.get_many` reads a batch's keys in one query.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import InvalidImage
from .images import image_hash, load_image
from .metrics import fidelity, insertion_deletion, method_explain_fn, sparseness, stability
from .models import ModelBundle
from .progress import report
from .quality import METRICS, Row, Settings, has_ties, parse_metrics
from .registry import explain_batch, get_method
from .store import Store, canonical

ProgressFn = Callable[[float, str], None]


@dataclass(frozen=True)
class Item:
    """One image to process: a name (what tables show), its bytes or a file path, and its true label."""

    name: str
    source: bytes | Path
    label: str | None = None


def as_items(images: Any) -> list[Item]:
    """Items from a :class:`~explainers.datasets.Dataset`, its samples, (name, bytes) pairs, or items."""
    samples = getattr(images, "samples", None)
    if samples is not None:
        images = samples
    out = []
    for it in images:
        if isinstance(it, Item):
            out.append(it)
        elif hasattr(it, "path") and hasattr(it, "label"):  # a datasets.Sample
            out.append(Item(it.name, Path(it.path), it.label))
        else:
            out.append(Item(str(it[0]), it[1], it[2] if len(it) > 2 else None))
    return out


# --------------------------------------------------------------------------- decoding (DataLoader workers)


class _Prep:
    """The bundle's preprocessing without its model (cheap to send to a worker); the same code as the bundle's."""

    to_tensor01 = ModelBundle.to_tensor01
    _mean = ModelBundle._mean
    _std = ModelBundle._std

    def __init__(self, prep):
        self.prep = prep

    def __call__(self, image) -> torch.Tensor:
        return self.to_tensor01(image).sub(self._mean()).div(self._std())


class _Decode(torch.utils.data.Dataset):
    def __init__(self, items: Sequence[Item], prep):
        self.items, self.prep = list(items), _Prep(prep)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, str | None, torch.Tensor | None, str | None]:
        it = self.items[i]
        try:
            data = it.source if isinstance(it.source, bytes | bytearray) else Path(it.source).read_bytes()
            x = self.prep(load_image(data, name=it.name))
        except InvalidImage as exc:
            return i, None, None, str(exc)
        except OSError as exc:  # vanished or unreadable between listing and decoding
            return i, None, None, f"{it.name} could not be read ({type(exc).__name__})."
        return i, image_hash(bytes(data)), x, None


def _keep(batch):  # module level: a DataLoader collate function must be picklable
    return batch


# --------------------------------------------------------------------------- batch size


def auto_batch_size(bundle: ModelBundle, override: int | None = None) -> int:
    """Images per batch: ``override``, else what fits half the device's free memory (a rough estimate).

    On CUDA a forward + backward of one image is measured (peak allocation); on the CPU the estimate is
    400 input-sized float tensors per image (activations kept for a backward pass of a ResNet-50-sized net)
    against MemAvailable, capped at 16 because CPU throughput stops growing well before that.
    """
    if override:
        return max(1, int(override))
    size = bundle.input_size
    if bundle.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(bundle.device)
        torch.cuda.reset_peak_memory_stats(bundle.device)
        before = torch.cuda.memory_allocated(bundle.device)
        x = torch.zeros(1, 3, size, size, device=bundle.device, requires_grad=True)
        bundle.model(x).sum().backward()
        per_image = max(torch.cuda.max_memory_allocated(bundle.device) - before, 1) * 2  # + insdel chunks
        del x
        return int(max(1, min(256, 0.5 * free // per_image)))
    try:
        with open("/proc/meminfo") as fh:
            avail = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("MemAvailable"))
    except (OSError, StopIteration):
        avail = 4 << 30
    return cpu_batch_size(size, avail)


def cpu_batch_size(input_size: int, available: int) -> int:
    """The CPU estimate: 400 input-sized float32 tensors per image against half of ``available`` bytes, 1 to 16."""
    per_image = 400 * 3 * input_size * input_size * 4
    return int(max(1, min(16, 0.5 * available // per_image)))


def default_workers(n_batches: int) -> int:
    """Decoding workers: none for one or two batches (a worker's start-up costs more), else up to 4."""
    return 0 if n_batches <= 2 else max(1, min(4, (os.cpu_count() or 2) - 1))


# --------------------------------------------------------------------------- per-batch work


@dataclass
class Computed:
    """One image x method, freshly computed."""

    target: int
    score: float
    values: dict[str, float | None]
    raw: torch.Tensor  # [H, W] float32 on the CPU: the method's map
    shown: torch.Tensor  # the map as displayed (post-processing applied), what the metrics score
    curves: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict)


def _clean(v: float | None) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def compute_batch(bundle: ModelBundle, x: torch.Tensor, method: str, options: Mapping[str, Any],
                  metrics: Sequence[str], settings: Settings = Settings()) -> list[Computed]:
    """Explain a batch ``[B, 3, H, W]`` (each image's predicted class) and score it: the batched counterpart of
    :func:`explainers.quality.evaluate` with the same functions, so the values agree to float rounding."""
    spec = get_method(method)
    opts = spec.resolve_options(dict(options))
    exps = explain_batch(bundle, x, method, None, **opts)
    raw = torch.stack([e.attribution.float() for e in exps])
    shown = torch.stack([spec.display_map(r, opts).float() for r in raw])
    targets = [e.target for e in exps]
    b = len(exps)
    values: list[dict[str, float | None]] = [{} for _ in range(b)]
    curves: list[dict] = [{} for _ in range(b)]
    common = dict(pixels_per_step=settings.pixels_per_step, start=settings.start, seed=settings.seed,
                  batch_size=settings.batch_size)
    tied = [has_ties(s) for s in shown]
    together = None
    if "insdel" in metrics or ("insdel-strict" in metrics and not all(tied)):
        together = insertion_deletion(bundle, x, shown, targets, ties="together", raw=raw, **common)
        if "insdel" in metrics:
            for i in range(b):
                values[i].update(insertion=float(together.insertion_auc[i]), deletion=float(together.deletion_auc[i]),
                                 id=float(together.id_score[i]))
                curves[i]["together"] = (together.fractions, together.insertion[i], together.deletion[i])
    if "insdel-strict" in metrics:
        # without ties the strict order is the same set at every point: reuse the computed curves
        idx = [i for i in range(b) if tied[i]]
        strict = insertion_deletion(bundle, x[idx], shown[idx], [targets[i] for i in idx], ties="strict",
                                    raw=raw[idx], **common) if idx else None
        for i in range(b):
            res, j = (strict, idx.index(i)) if tied[i] else (together, i)
            values[i].update(insertion_strict=float(res.insertion_auc[j]), deletion_strict=float(res.deletion_auc[j]),
                             id_strict=float(res.id_score[j]))
            curves[i]["strict"] = (res.fractions, res.insertion[j], res.deletion[j])
    if "sparseness" in metrics:
        for i, v in enumerate(sparseness(shown)):
            values[i]["sparseness"] = float(v)
    if "area" in metrics:
        from .failures import attributed_area

        for i in range(b):
            values[i]["attributed_area"] = attributed_area(shown[i])
    if "fidelity" in metrics or "stability" in metrics:  # per image: their random draws follow the batch order
        dev_x = x.to(bundle.device)
        fn = method_explain_fn(bundle, method, opts, display=True) if "stability" in metrics else None
        for i in range(b):
            if "fidelity" in metrics:
                values[i]["fidelity"] = float(fidelity(bundle.model, dev_x[i:i + 1], shown[i:i + 1], [targets[i]],
                                                       subset=settings.fidelity_subset, runs=settings.fidelity_runs,
                                                       seed=settings.seed, batch_size=settings.batch_size)[0])
            if fn is not None:
                values[i]["stability"] = float(stability(fn, dev_x[i:i + 1], [targets[i]],
                                                         sigma=settings.stability_sigma,
                                                         samples=settings.stability_samples, seed=settings.seed,
                                                         reference=shown[i:i + 1])[0])
    return [Computed(targets[i], float(exps[i].score), {k: _clean(v) for k, v in values[i].items()}, raw[i],
                     shown[i], curves[i]) for i in range(b)]


def columns(metrics: Sequence[str]) -> list[tuple[str, str]]:
    """(metric name, column) pairs the metrics produce."""
    return [(m, c) for m in metrics for c in METRICS[m]]


def store_rows(bundle_key: str, method: str, opts: Mapping[str, Any], metrics: Sequence[str], settings: Settings,
               hashes: Sequence[str], names: Sequence[str], computed: Sequence[Computed]) -> list[tuple]:
    """The store rows (:meth:`Store.put_many` tuples) of computed items."""
    out = []
    for h, name, c in zip(hashes, names, computed):
        extra = {"target": c.target, "score": c.score}
        for metric, col in columns(metrics):
            out.append((h, bundle_key, method, opts, col, c.values.get(col), settings.for_metric(metric), extra, name))
    return out


# --------------------------------------------------------------------------- saved maps


def maps_dir(root: str | Path, fingerprint: str, method: str, options: Mapping[str, Any]) -> Path:
    import hashlib

    tag = hashlib.sha256(canonical(options).encode()).hexdigest()[:10]
    return Path(root) / fingerprint / f"{method}-{tag}"


def save_shard(folder: Path, hashes: Sequence[str], maps: Sequence[torch.Tensor]) -> Path:
    """One shard: ``hashes`` and ``maps`` (float16 ``[N, H, W]``), written atomically (tmp file + rename)."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"shard-{hashes[0]}-{len(hashes)}-{os.getpid()}-{time.time_ns()}.npz"
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, hashes=np.asarray(list(hashes)), maps=torch.stack(list(maps)).half().numpy())
    os.replace(tmp, path)
    return path


def saved_hashes(folder: Path) -> set[str]:
    import numpy as np

    out: set[str] = set()
    for p in sorted(folder.glob("shard-*.npz")) if folder.is_dir() else []:
        if p.name.endswith(".tmp.npz"):
            continue
        with np.load(p) as z:
            out.update(str(h) for h in z["hashes"])
    return out


def load_maps(folder: Path, wanted: set[str] | None = None) -> dict[str, Any]:
    """image hash -> float16 map (numpy) from every shard in ``folder`` (only ``wanted`` hashes when given)."""
    import numpy as np

    out: dict[str, Any] = {}
    for p in sorted(folder.glob("shard-*.npz")) if folder.is_dir() else []:
        if p.name.endswith(".tmp.npz"):
            continue
        with np.load(p) as z:
            hashes = [str(h) for h in z["hashes"]]
            if wanted is not None and not wanted.intersection(hashes):
                continue
            maps = z["maps"]
            for h, m in zip(hashes, maps):
                if wanted is None or h in wanted:
                    out[h] = m
    return out


# --------------------------------------------------------------------------- the run


@dataclass
class Stats:
    total: int = 0  # images
    done: int = 0  # images finished (computed, read or skipped)
    computed: int = 0  # image x method items computed
    cached: int = 0  # image x method items read from the store
    seconds: float = 0.0
    stopped: bool = False  # a stop event or Ctrl-C ended the run early (what was done is stored)
    batch_size: int = 0
    workers: int = 0

    @property
    def images_per_s(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class RunResult:
    rows: list[Row]
    skipped: list[tuple[str, str]]  # (name, reason) of undecodable images
    stats: Stats
    kept: dict[tuple[int, str], Computed] = field(default_factory=dict)  # (item index, method) when keep=True


def _progress_text(stats: Stats, start: float) -> str:
    el = time.perf_counter() - start
    rate = stats.done / el if el > 0 else 0.0
    eta = (stats.total - stats.done) / rate if rate > 0 else float("nan")
    eta_s = "?" if math.isnan(eta) else f"{eta:.0f} s"
    return f"{stats.done}/{stats.total} images · {rate:.1f} img/s · ETA {eta_s}"


def run(bundle: ModelBundle, images: Any, methods: Sequence[str], metrics: Sequence[str] = ("insdel", "sparseness"),
        settings: Settings = Settings(), store: Store | None = None,
        options: Mapping[str, Mapping[str, Any]] | None = None, batch_size: int | None = None,
        workers: int | None = None, save_maps: str | Path | None = None, progress: ProgressFn | None = None,
        stop: threading.Event | None = None, keep: bool = False,
        on_batch: Callable[[Stats, list[Row]], None] | None = None) -> RunResult:
    """Every image x method through the batched pipeline; values in ``store`` are read, not recomputed.

    ``store`` None: nothing is read or written (e.g. triage of a few uploads).  ``keep``: keep each computed
    item's maps and curves in :attr:`RunResult.kept`.  ``progress`` (and :func:`explainers.progress.report`)
    get (fraction, "n/N images · x img/s · ETA") after each batch; ``stop`` (an Event) or Ctrl-C ends the run
    after the current batch is stored.  ``on_batch(stats, rows)`` is called after each stored batch with
    that batch's rows.
    """
    items = as_items(images)
    metrics = parse_metrics(list(metrics))
    resolved = {m: get_method(m).resolve_options(dict((options or {}).get(m, {}))) for m in methods}
    bs = auto_batch_size(bundle, batch_size)
    n_workers = default_workers(math.ceil(len(items) / bs)) if workers is None else workers
    stats = Stats(total=len(items), batch_size=bs, workers=n_workers)
    cols = columns(metrics)
    key = bundle.fingerprint
    shard_dirs = {m: maps_dir(save_maps, key, m, resolved[m]) for m in methods} if save_maps else {}
    have_maps = {m: saved_hashes(d) for m, d in shard_dirs.items()}
    rows: dict[tuple[int, str], Row] = {}
    kept: dict[tuple[int, str], Computed] = {}
    skipped: list[tuple[str, str]] = []
    loader = torch.utils.data.DataLoader(_Decode(items, bundle.prep), batch_size=bs, num_workers=n_workers,
                                         collate_fn=_keep, shuffle=False)
    start = time.perf_counter()

    def tell() -> None:
        text = _progress_text(stats, start)
        frac = stats.done / max(stats.total, 1)
        report(frac, text)
        if progress is not None:
            progress(frac, text)

    try:
        for batch in loader:
            if stop is not None and stop.is_set():
                stats.stopped = True
                break
            before = set(rows)
            ok = [(i, h, x) for i, h, x, err in batch if err is None]
            skipped += [(items[i].name, err) for i, _, _, err in batch if err is not None]
            pending: list[tuple] = []
            shard_maps: dict[str, tuple[list[str], list[torch.Tensor]]] = {}
            for method in methods:
                opts = resolved[method]
                hit = store.get_many([h for _, h, _ in ok], key, method, opts) if store is not None else {}
                groups: dict[tuple[str, ...], list[tuple[int, str, torch.Tensor, dict]]] = {}
                for i, h, x in ok:
                    found = {col: hit.get((h, col, canonical(settings.for_metric(m)))) for m, col in cols}
                    missing = tuple(m for m in metrics if any(found[c] is None for c in METRICS[m]))
                    if save_maps and h not in have_maps[method]:
                        missing = tuple(metrics)  # the map itself is wanted: recompute the item whole
                    if not missing:
                        extra = next(iter(found.values()))[1] if found else {}
                        rows[(i, method)] = Row(items[i].name, h, method, int(extra.get("target", -1)),
                                                {col: f[0] for col, f in found.items()}, cached=True,
                                                label=items[i].label, score=extra.get("score"))
                        stats.cached += 1
                    else:
                        groups.setdefault(missing, []).append((i, h, x, found))
                for missing, group in groups.items():  # only the missing metrics (e.g. a newly asked one)
                    xb = torch.stack([x for _, _, x, _ in group]).to(bundle.device)
                    computed = compute_batch(bundle, xb, method, opts, missing, settings)
                    stats.computed += len(group)
                    pending += store_rows(key, method, opts, missing, settings, [h for _, h, _, _ in group],
                                          [items[i].name for i, _, _, _ in group], computed)
                    for (i, h, _, found), c in zip(group, computed):
                        values = {col: (c.values.get(col) if m in missing else found[col][0]) for m, col in cols}
                        rows[(i, method)] = Row(items[i].name, h, method, c.target, values, cached=False,
                                                label=items[i].label, score=c.score)
                        if keep:
                            kept[(i, method)] = c
                        if save_maps:
                            shard_maps.setdefault(method, ([], []))
                            shard_maps[method][0].append(h)
                            shard_maps[method][1].append(c.raw)
            for method, (hashes, maps) in shard_maps.items():  # maps first: a stored row then always has its map
                save_shard(shard_dirs[method], hashes, maps)
            if store is not None and pending:
                store.put_many(pending)  # ONE transaction for the whole batch
            stats.done += len(batch)
            stats.seconds = time.perf_counter() - start
            tell()
            if on_batch is not None:
                on_batch(stats, [rows[k] for k in sorted(set(rows) - before)])
    except KeyboardInterrupt:
        stats.stopped = True  # every finished batch is already committed; the current one is dropped whole
    stats.seconds = time.perf_counter() - start
    ordered = [rows[(i, m)] for i in range(len(items)) for m in methods if (i, m) in rows]
    return RunResult(ordered, skipped, stats, kept)


__all__ = ["Computed", "Item", "RunResult", "Stats", "as_items", "auto_batch_size", "compute_batch", "cpu_batch_size",
           "load_maps", "maps_dir", "run", "save_shard"]
