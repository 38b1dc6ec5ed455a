"""The server warm-up (pages/warmup.py, issue 15): it prepares exactly what a first visit to Compare asks for, so
that visit computes no map; scripts/serve.py starts it (the launcher's own run is in tests/test_server_hosts.py)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st
from streamlit.testing.v1 import AppTest

import explainers

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def test_first_visit_after_the_warm_up_computes_no_map(monkeypatch):
    from pages import common, warmup

    st.cache_resource.clear()  # no model, no map cache left by other tests: the warm-up alone fills them
    steps = warmup.default_view(wait_for_runtime=False)
    assert list(steps) == ["imports", "runtime", "model", "analysis", "image", "maps"]
    assert len(common.map_cache()) == 1  # the default view's Grad-CAM

    calls = []
    original = explainers.explain
    monkeypatch.setattr(explainers, "explain", lambda b, x, method, **kw: calls.append(method) or
                        original(b, x, method, **kw))
    at = AppTest.from_file(APP, default_timeout=300).run()
    assert not at.exception, at.exception
    assert "Grad-CAM" in [c for img in at.image for c in img.captions]  # the map is on the page ...
    assert calls == []  # ... from the warm-up's cache entry (same image, model, target and options key)

    at.sidebar.selectbox(key="gallery").set_value("coffee").run()  # a view the warm-up did not prepare
    assert calls == ["gradcam"]


def test_a_failed_warm_up_is_one_log_line(monkeypatch, capsys):
    from pages import warmup

    def broken(*a, **k):
        raise OSError("disk on fire")

    monkeypatch.setattr(warmup, "default_view", broken)
    warmup.start().join(timeout=60)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and err[0].startswith("warm-up: stopped after") and "OSError: disk on fire" in err[0]
