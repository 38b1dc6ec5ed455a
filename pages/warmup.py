"""Server warm-up (issue 15): the default view prepared once per server, while the first browser loads the page.

``scripts/serve.py`` (the README's way to start the app) calls :func:`start` before it starts Streamlit's server;
the work runs in a background thread, through the same cached functions the pages use, so nothing is computed
twice and a browser that arrives early simply waits on the same caches (Streamlit's cache and the map cache both
compute a value once while other callers wait):

1. the imports a page needs (torch, torchvision, timm, the method registry, Streamlit's caching): about 3 s of the
   ~6 s a cold first page took on a 2-core CPU;
2. then, once Streamlit's runtime exists (its caches need it), the default model on the default device
   (``common.get_bundle``), its graph analysis (which methods it supports), the first gallery image decoded and its
   top-5, and the default Compare view's map (Grad-CAM for the top class, default options) in the map cache; this
   is also the first forward and backward pass, which costs ~10x a later one (allocator, thread pool, kernels).

``streamlit run app.py`` works without it: the first session then pays these steps itself.  A failed step is
logged and ends the warm-up; the app behaves as it would have without one.
"""

from __future__ import annotations

import json
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

    import explainers  # first: it defers TorchDynamo's import (explainers/defer_dynamo.py), timm's and torchvision's

    assert explainers.defer_dynamo  # (a statement, so that no import sorter puts timm above explainers)
    import timm  # noqa: F401 - with torch and torchvision: most of the import time, and no Streamlit needed

    from explainers.images import GALLERY, image_hash
    from explainers.models import DEFAULT_MODEL, available_devices
    from pages import common

    explainers.METHODS  # noqa: B018 - the registry: every method module (imports torch's optional stacks they use)
    step("imports")
    if wait_for_runtime and not _wait_for_runtime():
        raise RuntimeError("Streamlit's runtime did not start")
    step("runtime")
    device = available_devices()[0]
    bundle = common.get_bundle(DEFAULT_MODEL, "default", device)
    common.model_table()
    step("model")
    supported = {m.id for m in explainers.methods_for(bundle)}
    step("analysis")
    key = next(iter(GALLERY))
    data, name = GALLERY[key].png_bytes(), f"{key}.png"
    image = common.decode(data, name)
    x = bundle.preprocess(image)
    target = bundle.topk(x, 5)[0][0]
    step("image")
    model_key = f"{bundle.fingerprint}|{device}"
    for method in methods or common.DEFAULT_METHODS:
        if method not in supported:
            continue
        spec = explainers.get_method(method)
        compute, _ = spec.split_options({o.name: o.default for o in spec.options})
        common.cached_explanation(image_hash(data), model_key, method, target, json.dumps(compute, sort_keys=True),
                                  _bundle=bundle, _x=x)
    step("maps")
    return steps


def _run() -> None:
    t0 = time.perf_counter()
    try:
        steps = default_view()
    except Exception as exc:  # noqa: BLE001 - a courtesy: the pages compute everything themselves anyway
        _log(f"stopped after {time.perf_counter() - t0:.1f} s ({type(exc).__name__}: {exc})")
        return
    _log(f"ready in {time.perf_counter() - t0:.1f} s ({', '.join(f'{k} {v:.2f} s' for k, v in steps.items())})")


def start() -> threading.Thread:
    """Start the warm-up in a daemon thread (it never delays the server's own start or its shutdown)."""
    thread = threading.Thread(target=_run, name="relevance-explorer-warm-up", daemon=True)
    thread.start()
    return thread
