"""What the browser benchmarks (scripts/bench_app_*.py) and the browser tests (tests/test_browser*.py) share: the
Chromium they drive, a fresh app server on a free port, and the two page helpers every walk needs (wait until a
run is over; pick methods in the multiselect as a user does).

Debian's /usr/bin/chromium through Playwright (the system browser; Playwright downloads none here).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
PLAIN = ["-m", "streamlit", "run", "app.py"]  # `streamlit run app.py`
LAUNCHER = ["scripts/serve.py", "--address", "127.0.0.1"]  # the README's launcher, with its warm-up


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def offline_env(store: Path, **extra: str) -> dict[str, str]:
    """This environment, offline (no weight downloads), with its own store; ``extra`` on top.  A project's server
    never inherits the flag that lets a browser name server paths."""
    env = {**os.environ, "RELEVANCE_EXPLORER_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "RELEVANCE_EXPLORER_DB": str(store), **extra}
    env.pop("RELEVANCE_EXPLORER_ALLOW_SERVER_PATHS", None)
    return env


@contextlib.contextmanager
def app_server(env: Mapping[str, str], launch: list[str] = PLAIN, log: IO | None = None,
               timeout: float = 120.0) -> Iterator[tuple[str, float, subprocess.Popen]]:
    """A server (``launch``: arguments after the Python executable) on a free localhost port, headless.  Yields
    (url, seconds from launch until its health endpoint answered, the process); stopped afterwards.  Fails with
    the end of its log when it exits or does not answer within ``timeout``."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *launch, "--server.port", str(port), "--server.headless", "true",
                             "--server.address", "127.0.0.1"], cwd=ROOT, env=dict(env),
                            stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        while True:
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.perf_counter() - t0 > timeout:
                    tail = Path(log.name).read_text()[-2000:] if log is not None and hasattr(log, "name") else ""
                    raise RuntimeError(f"streamlit did not answer its health check\n{tail}") from None
                time.sleep(0.05)
        yield url, time.perf_counter() - t0, proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def wait_idle(page, settle_ms: int = 300, checks: int = 1, timeout_ms: int = 240_000) -> None:
    """Until Streamlit's run is over: its status widget gone, ``checks`` times ``settle_ms`` apart (two: a rerun
    that starts right after the first check is waited for too)."""
    status = page.locator('[data-testid="stStatusWidget"]')
    for _ in range(checks):
        page.wait_for_timeout(settle_ms)
        status.wait_for(state="detached", timeout=timeout_ms)


def choose_methods(page, names: list[str]) -> None:
    """Pick methods in the Methods multiselect as a user does: type to filter, click the (scrolled-in) option,
    and wait until the chosen chip shows in the box.  Retried: on a slow machine (CI) a pick made while the
    previous pick's rerun redraws the box can be lost."""
    box = page.locator('[data-testid="stMultiSelect"]').first
    for name in names:
        chip = box.get_by_text(name, exact=True)
        for _ in range(3):
            if chip.count():
                break
            wait_idle(page)
            box.click()
            page.keyboard.type(name)
            option = page.get_by_role("option", name=name, exact=True)
            option.scroll_into_view_if_needed()
            option.click()
            page.keyboard.press("Escape")
            wait_idle(page)
        chip.first.wait_for()
    wait_idle(page)
