"""Many users at once (issue 17): concurrent sessions of the real app through Compare, for a bounded number of rounds.

Usage: python scripts/soak.py [--sessions 4] [--rounds 20] [--cache-mb 64]

Each session is a Streamlit AppTest of app.py running in its own thread (one server process, shared model and
caches, as with several browsers on one server), with its own methods; every round moves it to another gallery
image and another of the top-3 classes, so new maps are computed while the other sessions compute theirs.
Checks: no exception in any session; every map equals the same map computed alone afterwards (max |diff|);
the process's resident memory after the rounds (RSS, from /proc) against the bound

    RSS(after) - RSS(after the warm-up round) <= map-cache budget + decode-cache budget + SLACK_MB

and the growth per round over the second half (a leak keeps growing after the caches are full).
Prints one JSON object; tests/test_soak.py runs a short version in CI.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import sys
import threading
import time
from contextlib import ExitStack, nullcontext
from pathlib import Path
from unittest import mock
from unittest.mock import MagicMock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RELEVANCE_EXPLORER_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Different methods per session (gradient, CAM, propagation families); cheap enough for a CPU.
METHOD_SETS = [["gradcam", "saliency"], ["gradcam++", "input-x-gradient"], ["xgradcam", "guided-backprop"],
               ["layercam", "lrp"], ["hirescam", "deeplift"], ["eigencam", "srd"]]
IMAGES = ["chelsea", "coffee", "astronaut", "rocket"]
SLACK_MB = 96  # allocator slack, AppTest's element trees, torch's per-thread workspaces (measured: see README)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _trim() -> None:
    """Collect garbage and hand freed heap pages back to the OS, so RSS measures what is still held."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def soak(sessions: int = 4, rounds: int = 3, cache_mb: int = 64, log=print) -> dict:
    os.environ["RELEVANCE_EXPLORER_MAP_CACHE_MB"] = str(cache_mb)
    import streamlit.testing.v1.app_test as app_test_module
    import torch
    from streamlit.runtime import Runtime
    from streamlit.runtime.scriptrunner.script_cache import ScriptCache
    from streamlit.testing.v1 import AppTest
    from streamlit.testing.v1.util import patch_config_options

    import explainers
    from explainers.images import GALLERY

    images = [k for k in IMAGES if k in GALLERY] or list(GALLERY)[:4]
    app = str(ROOT / "app.py")
    maps: dict[tuple, torch.Tensor] = {}  # (image, method, target, options) -> map, from every computation
    inputs: dict[str, torch.Tensor] = {}
    errors: list[str] = []
    lock = threading.Lock()
    original = explainers.explain

    def recording_explain(bundle, x, method, target=None, **options):
        res = original(bundle, x, method, target=target, **options)
        key_x = hashlib.sha256(x.detach().cpu().numpy().tobytes()).hexdigest()[:16]
        with lock:
            inputs.setdefault(key_x, x.detach().cpu().clone())
            maps[(key_x, method, res.target, json.dumps(options, sort_keys=True))] = res.attribution.clone()
        return res

    explainers.explain = recording_explain
    rss: list[list[float]] = []
    seconds: list[float] = []
    # AppTest.run patches streamlit's process-wide config (global.appTest) with unittest.mock for the length of
    # each run. Runs in several threads enter and leave that patch out of order, which puts the real get_option
    # back while another session's script is still running; that script's widgets then skip the format function
    # AppTest keeps for them, and its next run fails with KeyError '$$ID-...' (a harness race: a real server has
    # no AppTest). So: one patch for the whole soak, none per run.
    patches = ExitStack()
    patches.enter_context(patch_config_options({"global.appTest": True}))
    patches.enter_context(mock.patch.object(app_test_module, "patch_config_options", lambda overrides: nullcontext()))
    # A second harness race: a real server has one ScriptCache, whose lock compiles each page once; every AppTest
    # has its own, so the sessions parsed the same page at once, and CPython 3.11's AST construction is not
    # thread-safe (its recursion counter is shared: "SystemError: AST constructor recursion depth mismatch",
    # python/cpython#106905; seen once in CI, round 1).  One lock across the sessions' caches, as on a server.
    compile_lock = threading.Lock()
    get_bytecode = ScriptCache.get_bytecode

    def get_bytecode_serialised(cache, script_path):
        with compile_lock:
            return get_bytecode(cache, script_path)

    patches.enter_context(mock.patch.object(ScriptCache, "get_bytecode", get_bytecode_serialised))
    # A third: each AppTest.run makes its own mock Runtime streamlit's singleton and sets the singleton back to None
    # when it ends, so a session that finished first took the Runtime from under one still running, whose next
    # st.image raised "Runtime hasn't been created!" (CI, session 10: a session with 0 maps in round 3).  A server
    # has one Runtime: one stand-in for the whole soak, and AppTest's own assignments go to a class nobody reads.
    shared = MagicMock(spec=Runtime)
    shared.media_file_mgr = app_test_module.MediaFileManager(app_test_module.MemoryMediaFileStorage("/mock/media"))
    shared.dataframe_source_mgr = app_test_module.DataframeSourceManager()
    shared.cache_storage_manager = app_test_module.MemoryCacheStorageManager()
    shared.bidi_component_registry = app_test_module.BidiComponentManager()
    shared.bidi_component_registry.discover_and_register_components(start_file_watching=False)
    patches.enter_context(mock.patch.object(Runtime, "_instance", shared))
    patches.enter_context(mock.patch.object(app_test_module, "Runtime", type("RuntimeSlot", (), {"_instance": None})))
    try:
        from views.common import get_bundle

        bundle = get_bundle(explainers.DEFAULT_MODEL, "default", "cpu")  # the sessions' shared model
        top3 = {k: [i for i, _, _ in bundle.topk(bundle.preprocess(GALLERY[k].image()), 3)] for k in images}
        tests = []
        for k in range(sessions):
            at = AppTest.from_file(app, default_timeout=900)
            at.session_state["compare_methods"] = METHOD_SETS[k % len(METHOD_SETS)]
            tests.append(at)

        def one_round(k: int, r: int) -> None:
            at = tests[k]
            try:
                if r == 0:
                    at.run()
                else:
                    image = images[(k + r) % len(images)]
                    at.sidebar.selectbox(key="gallery").set_value(image).run()
                    at.sidebar.radio(key="target_top5").set_value(top3[image][(k + r) % 3]).run()
                if at.exception:
                    errors.append(f"session {k} round {r}: {at.exception[0].value}")
                # one "<s> s · native HxW · p=..." caption under each rendered map (AppTest's image list under
                # threads occasionally misses an image element's caption; the tile caption is the same tile)
                shown = [c.value for c in at.caption if " · native " in c.value]
                wanted = METHOD_SETS[k % len(METHOD_SETS)]
                if len(shown) != len(wanted) or at.error:
                    errors.append(f"session {k} round {r}: {len(shown)} maps of {wanted}; "
                                  f"errors: {[e.value for e in at.error]}; warnings: "
                                  f"{[w.value for w in at.warning]}; captions: {[c.value for c in at.caption]}")
            except Exception as exc:  # noqa: BLE001 - reported
                errors.append(f"session {k} round {r}: {type(exc).__name__}: {exc}")

        for r in range(rounds):
            t0 = time.perf_counter()
            threads = [threading.Thread(target=one_round, args=(k, r)) for k in range(sessions)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            seconds.append(time.perf_counter() - t0)
            _trim()
            rss.append([rss_mb()])
            log(f"round {r + 1}/{rounds}: {seconds[-1]:.1f} s, RSS {rss[-1][0]:.0f} MB, "
                f"{len(maps)} distinct maps, errors {len(errors)}")
    finally:
        explainers.explain = original
        patches.close()

    # Solo: every map again, one at a time, on the same shared model, with no other session running.
    from views.common import map_cache

    worst = 0.0
    for (key_x, method, target, opts), concurrent in maps.items():
        solo = explainers.explain(bundle, inputs[key_x], method, target=target, **json.loads(opts)).attribution
        worst = max(worst, float((solo - concurrent).abs().max()))
    cache = map_cache()
    flat = [v[0] for v in rss]
    half = flat[len(flat) // 2:]
    per_round = (half[-1] - half[0]) / max(len(half) - 1, 1) if len(half) > 1 else 0.0
    bound = cache_mb + 256 + SLACK_MB
    return {
        "sessions": sessions, "rounds": rounds, "maps": len(maps), "errors": errors,
        "max_abs_diff_vs_solo": worst, "rss_mb_after_warmup": round(flat[0], 1), "rss_mb_after": round(flat[-1], 1),
        "rss_growth_mb": round(flat[-1] - flat[0], 1), "rss_mb_per_round_second_half": round(per_round, 2),
        "rss_bound_mb": bound, "map_cache_mb": round(cache.bytes / 2**20, 1), "map_cache_entries": len(cache),
        "map_cache_evictions": cache.evictions, "round_seconds": [round(s, 1) for s in seconds],
        "load": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--cache-mb", type=int, default=64)
    args = parser.parse_args()
    report = soak(args.sessions, args.rounds, args.cache_mb, log=lambda m: print(m, file=sys.stderr))
    print(json.dumps(report, indent=1))
    ok = not report["errors"] and report["max_abs_diff_vs_solo"] <= 1e-6 and \
        report["rss_growth_mb"] <= report["rss_bound_mb"]
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
