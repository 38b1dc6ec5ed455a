"""``bench quality``: values per image and method, stored in SQLite; an interrupted run resumes."""

from __future__ import annotations

import csv

import pytest

from explainers import quality
from explainers.cli import main
from explainers.images import GALLERY
from explainers.store import Store
from tests.toy_bundle import hand_curves, toy_bundle, white_png

FAST = quality.Settings(pixels_per_step=5000, batch_size=16)  # 11 curve points instead of 101, for CI


@pytest.fixture
def counted(monkeypatch):
    """One entry (method, metrics) per image computed by the pipeline's batch step."""
    from explainers import pipeline

    calls = []
    real = pipeline.compute_batch

    def wrapper(bundle, x, method, options, metrics, *args, **kwargs):
        calls.extend([(method, tuple(metrics))] * x.shape[0])
        return real(bundle, x, method, options, metrics, *args, **kwargs)

    monkeypatch.setattr(pipeline, "compute_batch", wrapper)
    return calls


def test_resume_after_interruption_recomputes_nothing_finished(lite0, tmp_path, counted):
    store = Store(tmp_path / "q.sqlite")
    images = quality.quality_images("gallery", limit=2)
    metrics = ["insdel", "insdel-strict", "sparseness"]

    def interrupt(row):
        raise KeyboardInterrupt  # as if Ctrl-C arrived right after the first item was stored

    with pytest.raises(KeyboardInterrupt):
        quality.run_quality(lite0, images, ["gradcam"], metrics, FAST, store, on_row=interrupt, batch_size=1)
    assert len(counted) == 1
    rows = quality.run_quality(lite0, images, ["gradcam"], metrics, FAST, store)
    assert len(counted) == 2  # only the second image was computed
    assert [r.cached for r in rows] == [True, False]
    again = quality.run_quality(lite0, images, ["gradcam"], metrics, FAST, store)
    assert len(counted) == 2 and all(r.cached for r in again)  # a rerun is instant
    assert [r.values for r in again] == [r.values for r in rows]
    v = rows[0].values
    assert set(v) == {"insertion", "deletion", "id", "insertion_strict", "deletion_strict", "id_strict", "sparseness"}
    # Grad-CAM maps hold ties, so the strict protocol is computed, not copied
    assert v["insertion_strict"] != v["insertion"]
    # a new metric only computes that metric
    quality.run_quality(lite0, images[:1], ["gradcam"], ["sparseness", "fidelity"],
                        quality.Settings(fidelity_runs=8, batch_size=16), store)
    assert counted[-1] == ("gradcam", ("fidelity",))
    table = quality.markdown(again, "lite0", "cpu")
    assert "| gradcam |" in table and "±" in table


def test_cli_bench_quality_writes_tables_and_resumes(lite0, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for k in ("coffee", "rocket"):
        (folder / f"{k}.png").write_bytes(GALLERY[k].png_bytes())
    db, out = tmp_path / "cli.sqlite", tmp_path / "results.csv"
    argv = ["bench", "quality", "--images", str(folder), "--model", "efficientnet_lite0", "--methods", "gradcam",
            "--limit", "1", "--metrics", "sparseness", "--device", "cpu", "--db", str(db), "--out", str(out)]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "| method | sparseness |" in first and "0 read from" in first
    with open(out) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and rows[0]["image"] == "coffee.png" and 0 <= float(rows[0]["sparseness"]) <= 1
    with open(quality.summary_path(out)) as fh:
        summary = list(csv.DictReader(fh))
    assert summary[0]["method"] == "gradcam" and summary[0]["metric"] == "sparseness"
    assert main(argv) == 0
    assert "1 read from" in capsys.readouterr().out
    assert main([*argv[:-6], "--metrics", "nope", "--db", str(db)]) == 2
    assert "Unknown metric" in capsys.readouterr().err


def test_stored_values_equal_hand_computed_curves_on_a_toy_model(tmp_path):
    """What the benchmark stores and rereads is the closed-form value (toy_bundle.py), not just consistent."""
    store = Store(tmp_path / "toy.sqlite")
    bundle = toy_bundle()
    settings = quality.Settings(pixels_per_step=1)
    _, _, ins_auc, del_auc = hand_curves()
    for cached in (False, True):
        [row] = quality.run_quality(bundle, [("white.png", white_png())], ["saliency"], ["insdel", "sparseness"],
                                    settings, store)
        assert row.cached is cached and row.target == 0
        # float32 forwards vs float64 hand values: ~1e-7
        assert row.values["insertion"] == pytest.approx(ins_auc, abs=1e-6)
        assert row.values["deletion"] == pytest.approx(del_auc, abs=1e-6)
        assert row.values["id"] == pytest.approx(ins_auc - del_auc, abs=2e-6)
        # srd App. E Eq. 26 on v = [0.75, 1.5, 3, 6]: sum (2k - 5) v_k / (4 * 11.25) = 17.25 / 45
        assert row.values["sparseness"] == pytest.approx(17.25 / 45, abs=1e-6)
