"""``--engine ray`` (issue 14) on a local Ray with 2 CPUs started here: the local engine's numbers, no row lost
or duplicated when a worker dies mid-run, and a rerun computes only the missing keys."""

from __future__ import annotations

from pathlib import Path

import pytest

ray = pytest.importorskip("ray")  # CI installs requirements-ray.txt; elsewhere these tests are skipped

from explainers import pipeline, quality, ray_engine  # noqa: E402
from explainers.datasets import open_dataset  # noqa: E402
from explainers.store import Store  # noqa: E402
from tests.pipeline_models import SPEC, load, make_dataset  # noqa: E402

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
REF = ray_engine.ModelRef(SPEC, weights="untrained", seed=0, num_classes=3)
METHODS = ["saliency", "gradcam"]
METRICS = ["insdel", "sparseness"]
SETTINGS = quality.Settings(pixels_per_step=64, batch_size=40)
COLUMNS = 4  # insertion, deletion, id, sparseness


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})  # the actors import tests.pipeline_models
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return open_dataset(make_dataset(tmp_path_factory.mktemp("rayds") / "three"))


def _values(store: Store) -> dict[tuple, float | None]:
    return {(r["image_hash"], r["method"], r["metric"]): r["value"] for r in store.results()}


def test_ray_equals_local_and_a_killed_worker_loses_and_duplicates_nothing(local_ray, data, tmp_path):
    import pyarrow.parquet as pq

    fault = tmp_path / "die-once"
    fault.write_text("the first actor call that sees this file deletes it and exits")
    store = Store(tmp_path / "ray.sqlite")
    shards = tmp_path / "shards"
    stats = ray_engine.run(REF, data, METHODS, METRICS, SETTINGS, store, batch_size=4, shards=shards,
                           fault_file=str(fault), keep_shards=True)
    assert not fault.exists()  # a worker did die mid-run
    assert stats.actors == 2 and stats.computed == 48 and stats.cached == 0
    # the shards Ray wrote hold every row exactly once (the dead worker's batch was retried, not doubled)
    rows = [r for p in sorted(shards.rglob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    keys = [(r["image_hash"], r["method"], r["metric"]) for r in rows]
    assert len(keys) == 24 * len(METHODS) * COLUMNS == len(set(keys))
    ray_values = _values(store)
    assert len(ray_values) == len(keys)
    # the same numbers as the local engine
    local = Store(tmp_path / "local.sqlite")
    pipeline.run(load(), data, METHODS, METRICS, SETTINGS, local, batch_size=6, workers=0)
    local_values = _values(local)
    assert local_values.keys() == ray_values.keys()
    worst = max(abs(local_values[k] - ray_values[k]) for k in local_values)
    assert worst <= 1e-5, worst
    # a driver that crashed after the actors wrote their shards but before the merge: the rerun merges the
    # shards and computes nothing
    fresh = Store(tmp_path / "after-crash.sqlite")
    again = ray_engine.run(REF, data, METHODS, METRICS, SETTINGS, fresh, batch_size=4, shards=shards)
    assert again.computed == 0 and again.merged_rows == len(keys) and _values(fresh) == ray_values


def test_rerun_recomputes_only_missing_keys(local_ray, data, tmp_path):
    store = Store(tmp_path / "half.sqlite")
    first = ray_engine.run(REF, data.samples[:12], ["saliency"], METRICS, SETTINGS, store, batch_size=4,
                           shards=tmp_path / "s")
    assert first.computed == 12
    second = ray_engine.run(REF, data, ["saliency"], METRICS, SETTINGS, store, batch_size=4, shards=tmp_path / "s")
    assert (second.computed, second.cached) == (12, 12)
    assert len({r["image_hash"] for r in store.results()}) == 24 and store.count_results() == 24 * COLUMNS
