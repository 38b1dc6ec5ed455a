"""``--engine ray``: the dataset pipeline on Ray Data, for more than one device or machine (issue 14).

file list -> ``map_batches`` with one actor per device (``num_gpus=1`` each on GPUs; CPU actors otherwise) ->
rows written as Parquet shards -> merged into the :class:`~explainers.store.Store`.  Each actor loads the model
itself (from a :class:`ModelRef`, so nothing heavy is pickled) and runs the same per-batch code as the local
engine (:func:`explainers.pipeline.compute_batch`), so the numbers are the same.

Failure handling: actors are restartable and their tasks retried (``max_restarts``/``max_task_retries``), so a
worker that dies mid-run costs its batch, which Ray runs again.  A shard is only a shard once Ray has written it
whole; the merge keys rows by the store key (``INSERT OR REPLACE``), so a retried batch cannot duplicate a row.
Before computing, the engine merges shards left by an earlier run that crashed before its merge and asks the
store which keys are missing: a rerun after a crash recomputes only those.

Ray is imported only here, and this module only when ``--engine ray`` is asked for.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import ExplainerError
from .images import image_hash
from .quality import METRICS, Settings, parse_metrics
from .store import Store, canonical


class RayUnavailable(ExplainerError):
    """``--engine ray`` without Ray installed."""


@dataclass(frozen=True)
class ModelRef:
    """What an actor needs to load the model itself (see :func:`explainers.models.load_model`)."""

    name: str
    weights: str = "default"
    seed: int = 0
    labels: str | None = None
    num_classes: int | None = None

    def load(self, device: str | None = None):
        from .models import load_model

        return load_model(self.name, device=device, weights=self.weights, seed=self.seed, labels=self.labels,
                          num_classes=self.num_classes)


class _Worker:
    """One Ray actor: the model on its device, the per-batch pipeline code, rows out."""

    def __init__(self, ref: dict, settings: dict, metrics: list[str], options: dict, fault: str | None = None):
        import torch

        gpu = torch.cuda.is_available() and os.environ.get("CUDA_VISIBLE_DEVICES", "") != ""
        if not gpu:
            torch.set_num_threads(1)  # one CPU per actor: no oversubscription between actors
        self.bundle = ModelRef(**ref).load("cuda" if gpu else "cpu")
        self.settings = Settings(**settings)
        self.metrics, self.options, self.fault = metrics, options, fault

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        import numpy as np
        import torch

        from . import pipeline

        if self.fault and os.path.exists(self.fault):  # tests: die once, mid-run, as a crashed worker would
            os.remove(self.fault)
            os._exit(1)
        prep = pipeline._Prep(self.bundle.prep)
        from .images import load_image

        out: dict[str, list] = {k: [] for k in ("image_hash", "image_name", "method", "options", "metric",
                                                "settings", "value", "target", "score")}
        paths, names, hashes, methods = (list(batch[k]) for k in ("path", "name", "image_hash", "method"))
        for method in dict.fromkeys(methods):
            idx = [i for i, m in enumerate(methods) if m == method]
            xs = torch.stack([prep(load_image(paths[i], name=names[i])) for i in idx]).to(self.bundle.device)
            opts = self.options[method]
            computed = pipeline.compute_batch(self.bundle, xs, method, opts, self.metrics, self.settings)
            for i, c in zip(idx, computed):
                for metric in self.metrics:
                    for col in METRICS[metric]:
                        v = c.values.get(col)
                        out["image_hash"].append(hashes[i])
                        out["image_name"].append(names[i])
                        out["method"].append(method)
                        out["options"].append(canonical(opts))
                        out["metric"].append(col)
                        out["settings"].append(canonical(self.settings.for_metric(metric)))
                        out["value"].append(np.nan if v is None else float(v))
                        out["target"].append(int(c.target))
                        out["score"].append(float(c.score))
        return {k: np.asarray(v) for k, v in out.items()}


def _ray():
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailable("--engine ray needs Ray: pip install -r requirements-ray.txt.") from exc
    return ray


def merge_shards(folder: Path, store: Store, model: str, delete: bool = True) -> int:
    """Every Parquet shard under ``folder`` into the store (one transaction per file); returns the rows merged.
    Merged files are deleted (``delete``), so a crash between two files merges only the rest on the next run."""
    import pyarrow.parquet as pq

    n = 0
    for path in sorted(folder.rglob("*.parquet")) if folder.is_dir() else []:
        table = pq.read_table(path).to_pylist()
        rows = [(r["image_hash"], model, r["method"], json.loads(r["options"]), r["metric"],
                 None if r["value"] != r["value"] else r["value"], json.loads(r["settings"]),
                 {"target": int(r["target"]), "score": float(r["score"])}, r["image_name"]) for r in table]
        store.put_many(rows)
        if delete:
            path.unlink()
        n += len(rows)
    return n


@dataclass
class RayStats:
    total: int  # image x method items asked for
    computed: int  # items sent to the actors
    cached: int  # items already in the store
    merged_rows: int  # store rows merged from the shards (this run's and a crashed run's)
    seconds: float
    actors: int
    shard_files: int


def run(ref: ModelRef, items: Any, methods: Sequence[str], metrics: Sequence[str] = ("insdel", "sparseness"),
        settings: Settings = Settings(), store: Store | None = None,
        options: Mapping[str, Mapping[str, Any]] | None = None, batch_size: int = 8, actors: int | None = None,
        address: str | None = None, shards: str | Path | None = None, num_cpus: int | None = None,
        fault_file: str | None = None, keep_shards: bool = False) -> RayStats:
    """Compute what the store lacks on Ray Data and merge it into the store.

    ``address``: an existing cluster (``ray://...`` or ``auto``); None starts a local Ray (``num_cpus``).
    ``actors``: one per GPU by default, else one per CPU of the cluster.  ``shards``: where the Parquet
    shards go (default: ``ray-shards/`` next to the store's database); ``keep_shards``: leave this run's
    shards in place after the merge (to inspect them).  ``fault_file``: tests only, an actor that finds this
    file deletes it and dies.
    """
    from .pipeline import as_items
    from .registry import get_method

    ray = _ray()
    store = store or Store()
    metrics = parse_metrics(list(metrics))
    resolved = {m: get_method(m).resolve_options(dict((options or {}).get(m, {}))) for m in methods}
    start = time.perf_counter()
    driver = ref.load("cpu")  # the weights fingerprint keys the store
    key = driver.fingerprint
    folder = Path(shards) if shards else store.path.parent / "ray-shards" / key
    merged = merge_shards(folder, store, key)  # what a crashed run wrote but never merged (kept shards too)
    rows = []
    items = as_items(items)
    hashes = [image_hash(it.source if isinstance(it.source, bytes) else Path(it.source).read_bytes())
              for it in items]
    for method in methods:
        hit = store.get_many(hashes, key, method, resolved[method])
        for it, h in zip(items, hashes):
            if any(hit.get((h, col, canonical(settings.for_metric(m)))) is None for m in metrics for col in METRICS[m]):
                if isinstance(it.source, bytes):
                    raise ExplainerError("--engine ray reads images from files; give a dataset or folder.")
                rows.append({"path": str(it.source), "name": it.name, "image_hash": h, "method": method})
    total = len(items) * len(methods)
    n_files = 0
    if rows:
        if not ray.is_initialized():
            env = {"PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH", ""), os.getcwd(),
                                                           str(Path(__file__).resolve().parents[1])) if p)}
            ray.init(address=address, num_cpus=num_cpus if address is None else None, runtime_env={"env_vars": env},
                     include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
        res = ray.cluster_resources()
        gpus = int(res.get("GPU", 0))
        n = actors or (gpus if gpus else max(1, int(res.get("CPU", 1))))
        per = {"num_gpus": 1} if gpus else {"num_cpus": 1}
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        run_dir = folder / f"run-{uuid.uuid4().hex[:8]}"
        # every actor gets work: with fewer rows than actors x batch, smaller batches (24 rows, batch 16 and
        # 2 actors made one block, so one actor ran while the other waited: 1.7 img/s against 9.1 locally)
        batch_size = max(1, min(batch_size, math.ceil(len(rows) / n)))
        ds = ray.data.from_items(rows, override_num_blocks=math.ceil(len(rows) / batch_size))
        # Ray Data's actor pools restart dead actors and retry their tasks by default (max_restarts=-1,
        # max_task_retries=-1): a killed worker costs its batch, not the run.
        ds = ds.map_batches(
            _Worker, batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=n),
            fn_constructor_kwargs={"ref": asdict(ref), "settings": asdict(settings), "metrics": list(metrics),
                                   "options": resolved, "fault": fault_file}, **per)
        ds.write_parquet(str(run_dir))
        n_files = len(list(run_dir.rglob("*.parquet")))
        merged += merge_shards(run_dir, store, key, delete=not keep_shards)
        if not keep_shards:
            shutil.rmtree(run_dir, ignore_errors=True)
    else:
        n = 0
    return RayStats(total=total, computed=len(rows), cached=total - len(rows), merged_rows=merged,
                    seconds=time.perf_counter() - start, actors=n, shard_files=n_files)


def shutdown() -> None:
    if "ray" in sys.modules:
        import ray

        ray.shutdown()


__all__ = ["ModelRef", "RayStats", "RayUnavailable", "merge_shards", "run", "shutdown"]
