"""Cold start of the real app: seconds from launching the server to the first heatmap in Chromium.

Usage: python scripts/bench_app_start.py [--repeat 3] [--plain] [--image KEY] [--delay S]

Each repeat starts a fresh server with the README's command, `python scripts/serve.py` (its warm-up prepares the
default view while the browser loads; `--plain`: `streamlit run app.py`, no warm-up), so nothing is cached: model
load, class names, first Grad-CAM all count.  It opens the app in Debian's /usr/bin/chromium through Playwright, in
a fresh tab (its own browser context: no cache, no cookies) made before the server is launched
(`--image coffee`: a link to another gallery image, `/?image=coffee`, whose map the warm-up has not made) and waits
for the Compare page's first map (`--delay 9`: the browser opens 9 s after the server answered, as when the
server is started before a demo, and the time counts from opening the page): the image in Grad-CAM's tile, or on
pages without tiles its "native 7x7" caption.  Prints the time until the health endpoint answers, the time until the
first heatmap is on screen, and the load average (issue 15 asks for <= 5 s on a quiet machine).  Each run also
prints two probes (:func:`cpu_probe`: seconds of a fixed pure-Python loop, and of ``import torch``, each in a fresh
interpreter, taken just before the run): this machine's speed drifts by 20-40 % within an hour (a shared
hypervisor), at times far more for imports than for the loop, and the cold start is nearly all single-threaded
Python under one GIL, so the probes say which runs are comparable.
A benchmark, not a test.  scripts/bench_app_grid.py reuses :func:`serve` for a warm server.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.browser_kit import CHROMIUM, FLAGS, LAUNCHER, PLAIN, app_server, offline_env  # noqa: E402


@contextlib.contextmanager
def serve(log: Path | None = None, plain: bool = True) -> Iterator[tuple[str, float]]:
    """A fresh server on a free port (offline, a temporary store): `streamlit run app.py` (``plain``), else
    `python scripts/serve.py` with its warm-up.  Yields (url, seconds from launch until the health endpoint
    answered); the server is stopped afterwards."""
    with tempfile.TemporaryDirectory() as tmp, (log.open("w") if log else contextlib.nullcontext()) as out, \
            app_server(offline_env(Path(tmp) / "store.sqlite"), PLAIN if plain else LAUNCHER, out) as (url, up, _):
        yield url, up


def first_map(page):
    """The locator of the default Grad-CAM map: its tile's image (the progressive Compare page), else the
    caption under it."""
    tile = page.locator(".st-key-tile-gradcam [data-testid='stImage'] img")
    return tile.or_(page.get_by_text("native 7x7")).first


def one_cold_start(browser, plain: bool, image: str | None, delay: float = 0.0) -> tuple[float, float]:
    # The tab exists before the server starts, as a user's browser is open already: creating a Playwright
    # context and page takes ~0.35 s on this CPU, which counted as app time until session 9.
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    page.set_default_timeout(300_000)
    t0 = time.perf_counter()
    with serve(plain=plain) as (url, healthy):
        if delay:
            time.sleep(delay)
            t0 = time.perf_counter()
        page.goto(f"{url}/?image={image}" if image else url)
        first_map(page).wait_for()
        shown = time.perf_counter() - t0
        page.close()
    return healthy, shown


PROBE = ("import time\nt = time.perf_counter()\ns = 0\nfor i in range(10_000_000):\n    s += i\n"
         "print(time.perf_counter() - t)")


IMPORT_PROBE = "import time\nt = time.perf_counter()\nimport torch\nprint(time.perf_counter() - t)"


def cpu_probe() -> tuple[float, float]:
    """Seconds of 10 million pure-Python additions in a fresh interpreter (0.6-1.3 s on this 2-core CPU in
    sessions 10-11), and of ``import torch`` in another (1.0-1.3 s at this machine's usual speed, 3-4 s in session
    11's slow hour, when the additions took no longer): how fast the machine runs a cold start's work right now."""
    import subprocess

    def seconds(code: str) -> float:
        return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                    cwd=ROOT / "scripts").stdout)

    return seconds(PROBE), seconds(IMPORT_PROBE)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def write_bytecode() -> str:
    """The project's own bytecode, written once before the runs, as Python does on a user's first start: with
    PYTHONDONTWRITEBYTECODE set (this sandbox sets it) every server would compile explainers/ and views/ again
    (0.1-0.2 s of its start).  The libraries' bytecode was written when pip installed them."""
    import compileall

    ok = all(compileall.compile_dir(str(ROOT / d), quiet=1) for d in ("explainers", "views", "scripts"))
    ok = compileall.compile_file(str(ROOT / "app.py"), quiet=1) and ok
    flag = " (PYTHONDONTWRITEBYTECODE is set)" if os.environ.get("PYTHONDONTWRITEBYTECODE") else ""
    return f"bytecode of the project {'written' if ok else 'NOT all written'}{flag}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--plain", action="store_true", help="`streamlit run app.py` (no warm-up)")
    parser.add_argument("--image", help="open a link to this gallery image instead of the default view")
    parser.add_argument("--delay", type=float, default=0.0, help="open the page this many seconds after the "
                        "server answered; the time then counts from opening it")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    compiled = write_bytecode()
    opened = f", page opened {args.delay:g} s after the server answered" if args.delay else ""
    print(f"{'streamlit run app.py' if args.plain else 'scripts/serve.py (warm-up)'}, "
          f"{'/?image=' + args.image if args.image else 'default view'}{opened}; "
          f"load average before: {load()} ({os.cpu_count()} CPUs); {compiled}")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        runs, probes = [], []
        for _ in range(args.repeat):
            probes.append(cpu_probe())
            runs.append(one_cold_start(browser, args.plain, args.image, args.delay))
        browser.close()
    for i, ((healthy, first), probe) in enumerate(zip(runs, probes), 1):
        print(f"run {i}: server healthy {healthy:.1f} s, first heatmap {first:.1f} s "
              f"(cpu probe {probe[0]:.2f} s, import torch {probe[1]:.2f} s)")
    print(f"median: server healthy {statistics.median(r[0] for r in runs):.1f} s, "
          f"first heatmap {statistics.median(r[1] for r in runs):.1f} s")
    print(f"load average after: {load()}")


if __name__ == "__main__":
    main()
