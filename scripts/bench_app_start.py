"""Cold start of the real app: seconds from `streamlit run app.py` to the first heatmap in Chromium.

Usage: python scripts/bench_app_start.py [--repeat 3]

Each repeat starts a fresh Streamlit server (so nothing is cached: model load, class names,
first Grad-CAM all count), opens it in Debian's /usr/bin/chromium through Playwright and waits
for the Compare page's first map (the image in Grad-CAM's tile, or on pages without tiles its
"native 7x7" caption).  Prints the time until the health endpoint answers, the time until the
first heatmap is on screen, and the load average (issue 15 asks for <= 5 s on a quiet machine).
A benchmark, not a test.  scripts/bench_app_grid.py reuses :func:`serve` for a warm server.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(log: Path | None = None) -> Iterator[tuple[str, float]]:
    """A fresh `streamlit run app.py` on a free port (offline, a temporary store): yields (url, seconds from
    launch until the health endpoint answered); the server is stopped afterwards."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "RELEVANCE_EXPLORER_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
               "RELEVANCE_EXPLORER_DB": str(Path(tmp) / "store.sqlite")}
        out = log.open("w") if log else subprocess.DEVNULL
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
             "--server.headless", "true", "--server.address", "127.0.0.1"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
        try:
            while True:
                try:
                    urllib.request.urlopen(f"{url}/_stcore/health", timeout=1)
                    break
                except OSError:
                    if proc.poll() is not None or time.perf_counter() - t0 > 120:
                        raise SystemExit("streamlit did not answer its health check") from None
                    time.sleep(0.05)
            yield url, time.perf_counter() - t0
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            if log:
                out.close()


def first_map(page):
    """The locator of the default Grad-CAM map: its tile's image (the progressive Compare page), else the
    caption under it."""
    tile = page.locator(".st-key-tile-gradcam [data-testid='stImage'] img")
    return tile.or_(page.get_by_text("native 7x7")).first


def one_cold_start(browser) -> tuple[float, float]:
    t0 = time.perf_counter()
    with serve() as (url, healthy):
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        page.set_default_timeout(300_000)
        page.goto(url)
        first_map(page).wait_for()
        shown = time.perf_counter() - t0
        page.close()
    return healthy, shown


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    print(f"load average before: {load()} ({os.cpu_count()} CPUs)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        runs = [one_cold_start(browser) for _ in range(args.repeat)]
        browser.close()
    for i, (healthy, first) in enumerate(runs, 1):
        print(f"run {i}: server healthy {healthy:.1f} s, first heatmap {first:.1f} s")
    print(f"median: server healthy {statistics.median(r[0] for r in runs):.1f} s, "
          f"first heatmap {statistics.median(r[1] for r in runs):.1f} s")
    print(f"load average after: {load()}")


if __name__ == "__main__":
    main()
