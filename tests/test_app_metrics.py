"""The Metrics and Mosaics pages, driven through Streamlit's AppTest (no browser)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")


@pytest.fixture
def db(tmp_path, monkeypatch):
    monkeypatch.setenv("RELEVANCE_EXPLORER_DB", str(tmp_path / "app.sqlite"))
    return tmp_path / "app.sqlite"


def start(page: str, **state) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=300).run()
    assert not at.exception, at.exception
    for key, value in state.items():
        at.session_state[key] = value
    return at.switch_page(page).run()


def test_metrics_page_shows_curves_aucs_and_both_tie_protocols(db):
    # 5000 px per step (11 points) keeps the CPU test short; the page's default is the authors' 500
    at = start("views/metrics.py", metrics_pps=5000)
    assert not at.exception, at.exception
    assert at.title[0].value == "Metrics"
    assert at.multiselect(key="metrics_methods").value == ["gradcam"]
    charts = at.get("plotly_chart")
    assert len(charts) == 2
    frames = at.dataframe
    aucs = frames[0].value
    assert list(aucs["ties"]) == ["together", "strict"]  # Grad-CAM's ReLU leaves ties at 0
    assert {"Insertion ↑", "Deletion ↓", "ID ↑"} <= set(aucs.columns)
    # the plotted curves: x runs from 0 px to all pixels; both curves hold the full image's own score at the
    # ends where it is shown whole (deletion at 0 px, insertion at 100 %), the same forward pass in float32
    ins, dele = (json.loads(c.proto.spec)["data"] for c in charts)
    for curve in ins + dele:
        assert curve["x"][0] == 0.0 and curve["x"][-1] == 1.0
    assert abs(dele[0]["y"][0] - ins[0]["y"][-1]) < 1e-6
    assert "sparseness (Gini) ↑" in frames[1].value.columns
    # localisation against a box adds two columns
    at.checkbox(key="metrics_use_box").check().run()
    assert not at.exception, at.exception
    assert "pointing game ↑" in at.dataframe[1].value.columns


def test_metrics_page_runs_the_gallery_benchmark(db, monkeypatch):
    from explainers import quality

    real = quality.quality_images
    monkeypatch.setattr(quality, "quality_images", lambda source, limit=None: real(source, 1))  # one image in CI
    at = start("views/metrics.py", metrics_pps=5000)
    at.button(key="metrics_bench").click().run()
    assert not at.exception, at.exception
    summary = at.dataframe[-1].value
    assert set(summary["metric"]) >= {"insertion", "id", "insertion_strict", "sparseness"}
    assert db.exists()
    from explainers.store import Store

    assert Store(db).count_results() == 7  # 3 + 3 insertion/deletion values and the sparseness


def test_mosaics_page_builds_explains_and_scores(db):
    at = start("views/mosaics.py")
    assert not at.exception, at.exception
    assert at.title[0].value == "Mosaics"
    picks = [at.selectbox(key=f"mosaic_pick_{q}").value for q in range(4)]
    assert len(set(picks)) == 4
    captions = [c for img in at.image for c in img.captions]
    assert any(c.startswith("Mosaic") for c in captions)
    assert any("Contrastiveness scoring map" in c for c in captions)
    assert any(c.startswith("Grad-CAM: Focus") for c in captions)
    scores = at.dataframe[0].value
    assert 0 <= scores["Focus ↑"][0] <= 1 and 0 <= scores["Contrastiveness ↑"][0] <= 1
    at.radio(key="mosaic_quadrant").set_value(2).run()
    assert not at.exception, at.exception
    at.button(key="mosaic_random").click().run()
    assert not at.exception, at.exception
    at.checkbox(key="mosaic_gae").check().run()
    assert not at.exception, at.exception
    gae = at.dataframe[0].value
    assert {"LC ↑", "GAE ↑"} <= set(gae.columns) and 0 <= gae["GAE ↑"][0] <= 1
