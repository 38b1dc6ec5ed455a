"""Server warm-up (issue 15): the default view prepared once per server, while the first browser loads the page.

``scripts/serve.py`` (the README's way to start the app) calls :func:`start` before it starts Streamlit's server;
the work runs in a background thread, through the same cached functions the pages use, so nothing is computed
twice and a browser that arrives early simply waits on the same caches (Streamlit's cache and the map cache both
compute a value once while other callers wait):

1. the imports a page needs (torch, torchvision, timm, the method registry, Streamlit's caching): about 3 s of the
   ~6 s a cold first page took on a 2-core CPU, with the garbage collector paused (:func:`pause_collector`) and
   torch's Python meta kernels, which no page uses, left until :data:`META_DELAY_S` after the warm-up
   (``explainers.defer_imports.defer_meta_registrations``: 0.2-0.3 s);
2. then, once Streamlit's runtime exists (its caches need it), in the order a first visit to Compare asks for
   them (so that a browser arriving early waits for each instead of computing it beside the warm-up: both
   compete for one interpreter): the model table and the default model on the default device
   (``common.get_bundle``), the first gallery image decoded and its top-5, the model's graph analysis (which
   methods it supports), the timed forward pass the time estimates use (kept per model), and the default Compare
   view's map (Grad-CAM for the top class, default options) in the map cache; this is also the first forward and
   backward pass, which costs ~10x a later one (allocator, thread pool, kernels).

``streamlit run app.py`` works without it: the first session then pays these steps itself.  A failed step is
logged and ends the warm-up; the app behaves as it would have without one.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
import threading
import time


def _log(message: str) -> None:
    print(f"warm-up: {message}", file=sys.stderr, flush=True)


def _wait_for_runtime(timeout: float = 60.0) -> bool:
    from streamlit import runtime

    end = time.monotonic() + timeout
    while not runtime.exists():
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


_paused = False


def pause_collector() -> None:
    """Turn Python's cyclic garbage collector off until the warm-up's imports are done (scripts/serve.py calls
    this first thing).  Importing Streamlit, torch, torchvision and timm creates ~480,000 long-lived objects, and
    the collector ran five full passes over them meanwhile: 0.4-1.3 s of a cold start on a 2-core CPU."""
    global _paused
    gc.disable()
    _paused = True


def resume_collector() -> None:
    """After :func:`pause_collector`: move every object alive now (modules, classes, functions: they live as
    long as the server) to the collector's permanent generation, then turn it back on.  Later full passes,
    which Streamlit runs after every script run (``runner.postScriptGC``), then scan only what the sessions
    create: ~5 ms instead of ~0.17 s per rerun.  A no-op when the collector was not paused here."""
    global _paused
    if _paused:
        gc.freeze()
        gc.enable()
        _paused = False


def default_view(methods: tuple[str, ...] | None = None, wait_for_runtime: bool = True) -> dict[str, float]:
    """Load and run what a first visit to Compare shows; returns seconds per step.  ``wait_for_runtime=False``
    (tests: AppTest has no runtime) uses Streamlit's caches as they are."""
    steps: dict[str, float] = {}
    t = time.perf_counter()

    def step(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        steps[name] = round(now - t, 3)
        t = now

    import explainers  # first: it defers imports of timm's and torchvision's (explainers/defer_imports.py)

    # and torch's Python meta kernels, which no page uses, until after the first map (:func:`_run`); also a statement,
    # so that no import sorter puts timm above explainers
    explainers.defer_imports.defer_meta_registrations()
    import timm  # noqa: F401 - with torch and torchvision: most of the import time, and no Streamlit needed

    from explainers.estimate import estimate_seconds
    from explainers.images import GALLERY, image_hash
    from explainers.models import DEFAULT_MODEL, available_devices
    from views import common

    explainers.METHODS  # noqa: B018 - the registry: every method module (imports torch's optional stacks they use)
    resume_collector()
    step("imports")
    if wait_for_runtime and not _wait_for_runtime():
        raise RuntimeError("Streamlit's runtime did not start")
    step("runtime")
    device = available_devices()[0]  # the page's order, so that a page arriving early waits instead of
    common.model_table()  # computing the same thing beside the warm-up (both compete for one interpreter)
    bundle = common.get_bundle(DEFAULT_MODEL, "default", device)
    step("model")
    key = next(iter(GALLERY))
    data, name = GALLERY[key].png_bytes(), f"{key}.png"
    model_key = f"{bundle.fingerprint}|{device}"
    _, x, _ = common.prepared_input(data, name, image_hash(data), bundle, model_key)  # the sidebar's own cache
    target = bundle.topk(x, 5)[0][0]
    step("image")
    supported = {m.id for m in explainers.methods_for(bundle)}
    step("analysis")
    chosen = [m for m in methods or common.DEFAULT_METHODS if m in supported]
    computes = {}
    for method in chosen:
        spec = explainers.get_method(method)
        computes[method], _ = spec.split_options({o.name: o.default for o in spec.options})
        estimate_seconds(bundle, method, computes[method])  # its forward pass's timing, kept per model
    step("estimates")
    for method in chosen:
        common.cached_explanation(image_hash(data), model_key, method, target,
                                  json.dumps(computes[method], sort_keys=True), _bundle=bundle, _x=x)
    step("maps")
    return steps


def _run() -> None:
    t0 = time.perf_counter()
    try:
        steps = default_view()
    except Exception as exc:  # noqa: BLE001 - a courtesy: the pages compute everything themselves anyway
        resume_collector()  # (stopped before the end of its imports)
        _log(f"stopped after {time.perf_counter() - t0:.1f} s ({type(exc).__name__}: {exc})")
    else:
        _log(f"ready in {time.perf_counter() - t0:.1f} s ({', '.join(f'{k} {v:.2f} s' for k, v in steps.items())})")
    time.sleep(META_DELAY_S)
    _import_meta_registrations()


META_DELAY_S = 5.0  # after the warm-up: a browser that came during it has its first page drawn by then


def _import_meta_registrations() -> None:
    """torch's Python meta kernels, which the warm-up's ``import torch`` skipped (0.2-0.3 s on a 2-core CPU): imported
    once the first page is drawn, so that from then on torch is the same as in any other process."""
    from explainers import defer_imports

    t = time.perf_counter()
    try:
        if defer_imports.import_meta_registrations():
            _log(f"torch's meta kernels imported in {time.perf_counter() - t:.2f} s")
    except Exception as exc:  # noqa: BLE001 - whoever needs them imports them (torch._decomp does)
        _log(f"torch's meta kernels not imported ({type(exc).__name__}: {exc})")


THREAD_NAME = "relevance-explorer-warm-up"


class _NoContextWarning(logging.Filter):
    """Drops Streamlit's "missing ScriptRunContext" warning for the warm-up thread: it uses Streamlit's caches
    outside any session on purpose (the warning is meant for user threads that draw elements)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.threadName == THREAD_NAME and "missing ScriptRunContext" in record.getMessage())


def start() -> threading.Thread:
    """Start the warm-up in a daemon thread (it never delays the server's own start or its shutdown)."""
    logging.getLogger("streamlit.runtime.scriptrunner_utils.script_run_context").addFilter(_NoContextWarning())
    thread = threading.Thread(target=_run, name=THREAD_NAME, daemon=True)
    thread.start()
    return thread
