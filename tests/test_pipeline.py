"""The dataset pipeline (issue 14): batched results equal the per-image path, and a killed run resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from explainers import pipeline, quality
from explainers.datasets import open_dataset
from explainers.images import load_image
from explainers.registry import explain, get_method
from explainers.store import Store
from tests.pipeline_models import CLASSES, SPEC, load, make_dataset

REPO = Path(__file__).resolve().parents[1]
METHODS = ("gradcam", "saliency")
METRICS = ("insdel", "insdel-strict", "sparseness", "area")
# 32x32 inputs: 1024 pixels, 64 per step -> 17 curve points (0 px first)
SETTINGS = quality.Settings(pixels_per_step=64, batch_size=40)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return open_dataset(make_dataset(tmp_path_factory.mktemp("ds") / "three"))


@pytest.fixture(scope="module")
def bundle():
    return load()


@pytest.fixture
def counted(monkeypatch):
    """Images computed per method by the pipeline's batch step."""
    calls: list[str] = []
    real = pipeline.compute_batch

    def wrapper(bundle, x, method, *args, **kwargs):
        calls.extend([method] * x.shape[0])
        return real(bundle, x, method, *args, **kwargs)

    monkeypatch.setattr(pipeline, "compute_batch", wrapper)
    return calls


def per_image(bundle, data) -> dict[tuple[str, str], tuple[int, dict]]:
    """The independent path: explain + quality.evaluate, one image at a time."""
    out = {}
    for s in data.samples:
        x = bundle.preprocess(load_image(s.path, name=s.name))
        for m in METHODS:
            values, target = quality.evaluate(bundle, x, m, {}, METRICS, SETTINGS)
            out[(s.name, m)] = (target, values)
    return out


def test_pipeline_equals_per_image_explain_and_metrics(bundle, data, tmp_path):
    assert len(data) == 24 and data.classes == tuple(sorted(CLASSES))
    store = Store(tmp_path / "p.sqlite")
    seen = []
    # batch 5 does not divide 24 (a short last batch); 2 decoding workers
    res = pipeline.run(bundle, data, METHODS, METRICS, SETTINGS, store, batch_size=5, workers=2,
                       save_maps=tmp_path / "maps", progress=lambda f, t: seen.append((f, t)))
    ref = per_image(bundle, data)
    assert len(res.rows) == 24 * len(METHODS) and not res.skipped
    worst = 0.0
    for r in res.rows:
        target, values = ref[(r.image, r.method)]
        assert r.target == target and r.label == r.image.split("/")[0]
        assert set(r.values) == set(values)
        for k, v in values.items():
            worst = max(worst, abs(r.values[k] - v))
    # float32 forwards of differently composed batches: rounding only (~1e-7); 1e-5 is the bound
    assert worst <= 1e-5, worst
    # the values vary (not a constant the two paths could share by accident)
    assert len({round(r.values["id"], 6) for r in res.rows}) > 10
    # progress: monotone fractions ending at 1, with a rate and an ETA
    assert [f for f, _ in seen] == sorted(f for f, _ in seen) and seen[-1][0] == 1.0
    assert "img/s" in seen[-1][1] and "ETA" in seen[-1][1] and "24/24" in seen[-1][1]
    # the saved maps (float16, input resolution, one file per batch shard) are the explain maps
    for m in METHODS:
        folder = pipeline.maps_dir(tmp_path / "maps", bundle.fingerprint, m, get_method(m).resolve_options({}))
        assert len(list(folder.glob("shard-*.npz"))) == 5  # ceil(24 / 5)
        maps = pipeline.load_maps(folder)
        assert len(maps) == 24
        s = data.samples[7]
        row = next(r for r in res.rows if r.image == s.name and r.method == m)
        want = explain(bundle, bundle.preprocess(load_image(s.path)), m).attribution
        got = torch.from_numpy(maps[row.image_hash].astype(np.float32))
        assert maps[row.image_hash].dtype == np.float16 and got.shape == want.shape == (32, 32)
        assert torch.allclose(got, want, rtol=1e-3, atol=1e-3 * float(want.abs().max()))
    # a rerun reads everything from the store
    again = pipeline.run(bundle, data, METHODS, METRICS, SETTINGS, store, batch_size=5, workers=0)
    assert again.stats.computed == 0 and again.stats.cached == 48
    assert [r.values for r in again.rows] == [r.values for r in res.rows]


def test_stop_event_keeps_finished_batches(bundle, data, tmp_path, counted):
    store = Store(tmp_path / "s.sqlite")
    stop = threading.Event()

    def after(stats, rows):
        assert len(rows) == 4  # the rows of this batch only
        if stats.done >= 8:
            stop.set()

    res = pipeline.run(bundle, data, ["saliency"], ["insdel"], SETTINGS, store, batch_size=4, workers=0,
                       stop=stop, on_batch=after)
    assert res.stats.stopped and res.stats.done == 8 and len(counted) == 8
    rest = pipeline.run(bundle, data, ["saliency"], ["insdel"], SETTINGS, store, batch_size=4, workers=0)
    assert len(counted) == 24 and rest.stats.cached == 8 and rest.stats.computed == 16


KILLED = textwrap.dedent("""
    import sys, time
    from explainers import pipeline, quality
    from explainers.datasets import open_dataset
    from explainers.store import Store
    from tests.pipeline_models import load

    def after(stats, rows):
        print("stored", stats.done, flush=True)
        time.sleep(0.4)  # slow enough that the parent's SIGKILL lands mid-run

    pipeline.run(load(), open_dataset(sys.argv[1]), ["saliency"], ["insdel", "sparseness"],
                 quality.Settings(pixels_per_step=64, batch_size=40), Store(sys.argv[2]), batch_size=3,
                 workers=1, on_batch=after)
    print("finished", flush=True)
""")


def test_sigkill_at_half_then_rerun_computes_only_the_rest(bundle, data, tmp_path, counted):
    db = tmp_path / "k.sqlite"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(data.root), str(db)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("stored") and int(line.split()[1]) >= 12:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    store = Store(db)
    rows = store.results(method="saliency")
    done = {r["image_hash"] for r in rows}
    # whole batches only: 4 columns per image (insertion, deletion, id, sparseness), never half an image,
    # and the kill came before the end
    assert len(rows) == 4 * len(done) and 12 <= len(done) < 24 and len(done) % 3 == 0
    res = pipeline.run(bundle, data, ["saliency"], ["insdel", "sparseness"], SETTINGS, store, batch_size=3,
                       workers=0)
    assert len(counted) == 24 - len(done) == res.stats.computed and res.stats.cached == len(done)
    assert {r.image_hash for r in res.rows if not r.cached}.isdisjoint(done)
    fresh = pipeline.run(bundle, data, ["saliency"], ["insdel", "sparseness"], SETTINGS, None, batch_size=8,
                         workers=0)
    for a, b in zip(res.rows, fresh.rows):
        assert a.image == b.image and max(abs(a.values[k] - b.values[k]) for k in a.values) <= 1e-5


def test_undecodable_files_are_skipped_and_reported(bundle, tmp_path):
    root = make_dataset(tmp_path / "broken", per_class=2)
    (root / CLASSES[0] / "zz.png").write_bytes(b"\x89PNG not really")
    res = pipeline.run(bundle, open_dataset(root), ["saliency"], ["sparseness"], SETTINGS, None, batch_size=4)
    assert len(res.rows) == 6 and [n for n, _ in res.skipped] == [f"{CLASSES[0]}/zz.png"]


def test_auto_batch_size_and_override(bundle):
    assert pipeline.auto_batch_size(bundle, 7) == 7
    # the CPU estimate by hand: one 224 px image needs 400 * 3 * 224 * 224 * 4 = 240,844,800 bytes, half the
    # available memory is the budget, and the result is clamped to 1..16
    assert pipeline.cpu_batch_size(224, 1 << 30) == 2  # 536,870,912 // 240,844,800
    assert pipeline.cpu_batch_size(224, 10 * 240_844_800) == 5
    assert pipeline.cpu_batch_size(224, 100 << 20) == 1  # less than one image fits: still 1
    assert pipeline.cpu_batch_size(224, 64 << 30) == 16  # capped
    assert pipeline.cpu_batch_size(64, 1 << 30) == 16  # 19,660,800 bytes per 64 px image: 27 fit, capped
    assert SPEC.endswith(":build")


def test_cli_dataset_scores_per_class_and_resumes(data, tmp_path, capsys):
    from explainers.cli import main

    argv = ["dataset", "--images", str(data.root), "--model", SPEC, "--weights", "untrained", "--methods",
            "saliency", "--metrics", "insdel,sparseness", "--pixels-per-step", "64", "--batch-size", "6",
            "--workers", "0", "--device", "cpu", "--db", str(tmp_path / "cli.sqlite")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert all(f"| saliency | {c} | 8 |" in out for c in CLASSES) and "24 computed, 0 read" in out
    assert main(argv) == 0
    assert "0 computed, 24 read" in capsys.readouterr().out
