"""The Conservation page through Streamlit's AppTest: all three plots render for the default model."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def test_conservation_page_renders_three_plots_for_default_model():
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    at.switch_page("pages/conservation.py").run()
    assert not at.exception, at.exception
    assert at.sidebar.selectbox(key="model").value == "efficientnet_lite0"
    assert at.selectbox(key="conservation_method").value == "resnet-lrp"
    charts = at.get("plotly_chart")
    assert len(charts) == 3, [c.proto.id for c in charts]
    errors = at.dataframe[0].value["relative error"].abs()
    assert (errors < 1e-3).all()  # float32 model: conserved up to rounding
    assert not at.error


def test_conservation_page_toggling_identity_changes_block_shares():
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    at.switch_page("pages/conservation.py").run()
    at.checkbox(key="conservation:resnet-lrp:include_identity").set_value(False).run()
    assert not at.exception, at.exception
    assert len(at.get("plotly_chart")) == 3
