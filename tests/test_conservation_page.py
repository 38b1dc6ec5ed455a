"""The Conservation page through Streamlit's AppTest: all three plots render for the default model."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def test_conservation_page_renders_three_plots_for_default_model():
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    at.switch_page("views/conservation.py").run()
    assert not at.exception, at.exception
    assert at.sidebar.selectbox(key="model").value == "efficientnet_lite0"
    assert at.selectbox(key="conservation_method").value == "resnet-lrp"
    charts = at.get("plotly_chart")
    assert len(charts) == 3, [c.proto.id for c in charts]
    # Lite0's inverted-residual blocks: the node plot marks the nodes that carry one branch's share
    assert "inside a block's main branch" in charts[0].proto.spec
    assert any("main branch's share" in c.value for c in at.caption)
    errors = at.dataframe[0].value["relative error"].abs()
    assert (errors < 1e-3).all()  # float32 model: conserved up to rounding
    assert not at.error


def test_conservation_page_toggling_identity_changes_block_shares():
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    at.switch_page("views/conservation.py").run()
    at.checkbox(key="conservation:resnet-lrp:include_identity").set_value(False).run()
    assert not at.exception, at.exception
    assert len(at.get("plotly_chart")) == 3


def test_conservation_sweep_reruns_for_compute_options_only(monkeypatch):
    """Issue 15: the Fig. 7 sweep is cached by model, method, compute options and images; a display-only
    option (heat-quantisation bins) re-renders without propagating the gallery again."""
    import streamlit as st

    from explainers import conservation

    calls = []
    real = conservation.conservation_sweep

    def counting(*args, **kwargs):
        calls.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(conservation, "conservation_sweep", counting)
    st.cache_resource.clear()  # the page keeps finished sweeps in a server-wide cache_resource
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    at.switch_page("views/conservation.py").run()
    assert not at.exception, at.exception
    assert len(calls) == 1
    at.slider(key="conservation:resnet-lrp:bins").set_value(3).run()
    assert not at.exception, at.exception
    assert len(calls) == 1  # display only: the cached sweep is reused ...
    assert len(at.get("plotly_chart")) == 3 and not at.error  # ... and drawn (a hit used to fail, below)
    at.checkbox(key="conservation:resnet-lrp:include_identity").set_value(False).run()
    assert len(calls) == 2  # a compute option: the sweep reruns
    assert len(at.get("plotly_chart")) == 3


def test_a_second_visitor_gets_the_cached_sweep_drawn():
    """The sweep's cache is the server's: a later session (another visitor, a reload) is a hit.  With
    st.cache_data around the sweep every hit raised CacheReplayClosureError (the progress updates went to a bar
    made outside the cached function): the Fig. 7 plot was missing and the bar stayed on the page."""
    first = AppTest.from_file(APP, default_timeout=300)
    first.run()
    first.switch_page("views/conservation.py").run()
    assert len(first.get("plotly_chart")) == 3
    second = AppTest.from_file(APP, default_timeout=300)
    second.run()
    second.switch_page("views/conservation.py").run()
    assert not second.exception, second.exception
    assert not second.error, [e.value for e in second.error]
    assert len(second.get("plotly_chart")) == 3
    assert not second.get("progress")  # the bar is removed once the sweep is there
