"""The SRD Explorer page through Streamlit's AppTest: maps, PFV picking, ERF, neighbours, sub-concepts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")


@pytest.fixture
def explorer(tmp_path, monkeypatch) -> AppTest:
    monkeypatch.setenv("RELEVANCE_EXPLORER_CACHE", str(tmp_path))  # the PFV index goes to a temporary folder
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    at.switch_page("views/srd_explorer.py").run()
    assert not at.exception, at.exception
    return at


def _captions(at: AppTest) -> list[str]:
    return [c for img in at.image for c in img.captions]


def test_explorer_renders_maps_erf_neighbours_and_subconcepts(explorer, tmp_path):
    at = explorer
    assert at.sidebar.selectbox(key="model").value == "efficientnet_lite0"
    caps = _captions(at)
    # coarse maps over the image, the input-resolution one alone (as Compare's default views)
    assert "SRD-low: bn2.act (7x7, overlay)" in caps
    assert any(c.startswith("SRD-high:") and c.endswith("(28x28, overlay)") for c in caps)
    assert "SRD-input: input (224x224, heatmap)" in caps
    assert at.selectbox(key="srd_layer").value == "bn2.act"
    assert len(at.get("plotly_chart")) == 1  # the clickable PFV grid
    assert any(c.startswith("ERF of bn2.act") for c in caps)
    assert sum(" cos " in c for c in caps) >= 3  # nearest neighbours (and theirs for sub-concepts)
    assert any("mu = " in c for c in caps)
    assert any("ratios sum to 1.000000" in c.value for c in at.caption)
    assert list(tmp_path.rglob("*.pt"))  # the index was cached on disk
    assert not at.error


def test_picking_a_pfv_and_exploring_a_subconcept(explorer):
    at = explorer
    at.selectbox(key="srd_layer").set_value("blocks.6.0.bn2.act").run()
    at.number_input(key="srd_row").set_value(2).run()
    at.number_input(key="srd_col").set_value(3).run()
    assert not at.exception, at.exception
    caps = _captions(at)
    assert "ERF of blocks.6.0.bn2.act (2, 3)" in caps
    # the grid outlines the chosen cell (7x7 cells of 32 px on the 224 px image; pixel centres at integers)
    shapes = json.loads(at.get("plotly_chart")[0].proto.spec)["layout"]["shapes"]
    assert [(s["x0"], s["x1"], s["y0"], s["y1"]) for s in shapes] == [(95.5, 127.5, 63.5, 95.5)]
    assert any(c.startswith("blocks.6.0.bn1.act (") and "mu = " in c for c in caps)  # a 3x3 window of sub-concepts
    first = next(c for c in caps if c.startswith("blocks.6.0.bn1.act ("))
    at.button(key="srd_sub_0").click().run()
    assert not at.exception, at.exception
    assert at.selectbox(key="srd_layer").value == "blocks.6.0.bn1.act"
    r, c = at.session_state["srd_row"], at.session_state["srd_col"]
    assert first.startswith(f"blocks.6.0.bn1.act ({r}, {c})")
    assert f"ERF of blocks.6.0.bn1.act ({r}, {c})" in _captions(at)
    assert any(cap.value.startswith("Path: blocks.6.0.bn2.act (2, 3)") for cap in at.caption)
    at.button(key="srd_back").click().run()
    assert (at.selectbox(key="srd_layer").value, at.session_state["srd_row"], at.session_state["srd_col"]) == \
        ("blocks.6.0.bn2.act", 2, 3)
    assert not at.error


def test_neighbours_over_a_registered_dataset(tmp_path, monkeypatch):
    """Issue #13 pt 5: the index over a registered dataset (progress, cached on disk, the corrupt file reported),
    its neighbours shown as enlarged crops of their ERF's bounding box."""
    from tests.project import make_project

    monkeypatch.setenv("RELEVANCE_EXPLORER_CONFIG", str(make_project(tmp_path / "project")))
    monkeypatch.setenv("RELEVANCE_EXPLORER_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RELEVANCE_EXPLORER_ALLOW_SERVER_PATHS", raising=False)
    at = AppTest.from_file(APP, default_timeout=300)
    at.session_state["srd_over"] = "A registered dataset"
    at.session_state["srd_dataset"] = "fruit"
    at.session_state["srd_top"] = 1
    at.run()
    at.switch_page("views/srd_explorer.py").run()
    assert not at.exception, at.exception
    assert at.radio(key="srd_over").value == "A registered dataset"
    nbs = [(c, img) for img in at.image for c in img.captions if " cos " in c]
    assert len(nbs) >= 3 and all(c.split(" ")[0].split("/")[0] in {"apple", "banana", "cherry"} for c, _ in nbs)
    assert any("could not be decoded" in e.label for e in at.expander)
    assert "banana/broken.png" in str([t.value for t in at.table])
    assert list((tmp_path / "cache").rglob("dataset-*.pt"))
    assert not at.error
