"""The server warm-up (views/warmup.py, issue 15): it prepares exactly what a first visit to Compare asks for, so
that visit computes no map; scripts/serve.py starts it (the launcher's own run is in tests/test_server_hosts.py)."""

from __future__ import annotations

import copy
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import streamlit as st
from streamlit.testing.v1 import AppTest

import explainers

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")


def fresh(bundle):
    """The same model as a new object with empty memos: nothing another test timed or predicted is reused."""
    return replace(bundle, model=copy.deepcopy(bundle.model), _probs_memo={})


def forward_batches(bundle) -> list[int]:
    calls: list[int] = []
    bundle.model.register_forward_hook(lambda _m, inp, _o: calls.append(int(inp[0].shape[0])))
    return calls


def test_first_visit_after_the_warm_up_computes_no_map(monkeypatch):
    from views import common, warmup

    st.cache_resource.clear()  # no model, no map cache left by other tests: the warm-up alone fills them
    resumed = []
    monkeypatch.setattr(warmup, "resume_collector", lambda: resumed.append(True))
    steps = warmup.default_view(wait_for_runtime=False)
    assert resumed == [True]  # the collector comes back once the imports are done
    assert list(steps) == ["imports", "runtime", "model", "image", "analysis", "estimates", "maps"]
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
    from views import warmup

    def broken(*a, **k):
        raise OSError("disk on fire")

    resumed, meta = [], []
    monkeypatch.setattr(warmup, "default_view", broken)
    monkeypatch.setattr(warmup, "resume_collector", lambda: resumed.append(True))
    monkeypatch.setattr(warmup, "META_DELAY_S", 0.0)
    monkeypatch.setattr(warmup, "_import_meta_registrations", lambda: meta.append(True))
    warmup.start().join(timeout=60)
    assert resumed == [True]  # a paused collector is never left off
    assert meta == [True]  # nor torch's meta kernels (deferred before its import) left out
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and err[0].startswith("warm-up: stopped after") and "OSError: disk on fire" in err[0]


def test_the_estimates_forward_pass_is_timed_once_per_model_and_batch(lite0):
    """Compare asks for one estimate per method; they share one timing (two passes: untimed, timed), and callers
    that arrive together wait for it instead of timing beside it (as a page did beside the warm-up)."""
    from explainers.estimate import estimate_seconds, forward_seconds

    bundle = fresh(lite0)
    calls = forward_batches(bundle)
    barrier = threading.Barrier(3)
    seconds: list[float] = []

    def ask(method):
        barrier.wait()
        seconds.append(estimate_seconds(bundle, method))

    threads = [threading.Thread(target=ask, args=(m,)) for m in ("gradcam", "saliency", "lrp")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [1, 1]
    assert len(set(seconds)) == 1 and seconds[0] > 0  # three passes each, from the one timing
    forward_seconds(bundle, 4)
    assert calls == [1, 1, 1, 4]  # another batch size is timed on its own


def test_a_top5_asked_for_twice_at_once_costs_one_forward_pass(lite0, gallery_x):
    bundle = fresh(lite0)
    calls = forward_batches(bundle)
    barrier = threading.Barrier(2)
    tops: list = []

    def ask():
        barrier.wait()
        tops.append(bundle.topk(gallery_x["chelsea"], 5))

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [1] and tops[0] == tops[1] and len(tops[0]) == 5


def test_the_collector_pauses_for_the_imports_and_comes_back_frozen():
    """scripts/serve.py pauses the cyclic garbage collector; the warm-up turns it back on after its imports, with
    everything then alive in the permanent generation (so Streamlit's full pass after each run stays cheap)."""
    code = (f"import gc, sys; sys.path.insert(0, {str(ROOT)!r}); from views import warmup\n"
            "warmup.resume_collector(); assert gc.isenabled() and gc.get_freeze_count() == 0  # not paused: no-op\n"
            "warmup.pause_collector(); assert not gc.isenabled()\n"
            "import torch\n"
            "assert gc.get_count()[0] > 1000  # nothing was collected meanwhile\n"
            "warmup.resume_collector(); assert gc.isenabled() and gc.get_freeze_count() > 100_000\n"
            "frozen = gc.get_freeze_count(); warmup.resume_collector(); assert gc.get_freeze_count() == frozen\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]


def test_plain_streamlit_run_freezes_the_import_time_objects_once():
    """Without the launcher (`streamlit run app.py`) the first page's import of views.common collects once and
    freezes what the imports made; under the launcher's paused collector it leaves that to the warm-up."""
    code = (f"import gc, sys; sys.path.insert(0, {str(ROOT)!r})\n"
            "from views import warmup; warmup.pause_collector()\n"
            "from views import common\n"
            "assert not gc.isenabled() and gc.get_freeze_count() == 0  # the warm-up's job\n"
            "warmup.resume_collector(); assert gc.get_freeze_count() > 100_000\n"
            "print('ok')")
    plain = (f"import gc, sys; sys.path.insert(0, {str(ROOT)!r})\n"
             "from views import common\n"
             "assert gc.isenabled() and gc.get_freeze_count() > 100_000\n"
             "print('ok')")
    for source in (code, plain):
        out = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=120)
        assert out.stdout.strip() == "ok", out.stderr[-2000:]
