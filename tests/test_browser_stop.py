"""Stop on Compare in the real app (Chromium): the click's rerun interrupts a long Score-CAM at its next progress
update, the server stops computing, the tile says Stopped with a Run button, the finished map stays, and Run
starts it again.  (AppTest runs a script to its end, so it cannot click mid-run; tests/test_app_compare.py covers
the Stopped state itself.)"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from tests.test_browser import (  # noqa: F401 - fixtures: the server with the test project, and the page
    SERVER,
    app_url,
    choose_methods,
    cpu_seconds,
    no_exception,
    page,
    project,
    tile_key,
    wait_idle,
    wait_map,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def thread_seconds(pid: int) -> dict[str, float]:
    """CPU seconds per thread of a process (Linux /proc), by "name/tid", to say which thread is busy."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[f"{name}/{task.name}"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def test_stop_ends_a_long_method_and_keeps_the_page(page):  # noqa: F811 - the imported fixture
    page.get_by_text("native 7x7").first.wait_for()  # Grad-CAM, the default map
    wait_idle(page)
    choose_methods(page, ["Score-CAM"])
    wait_map(page, "scorecam")

    # every channel, 8 at a time: 160 forward passes, far longer than a click takes
    page.get_by_text("Method options").click()
    for label, value in (("batch size", "8"), ("top k", "-1")):
        box = page.locator(f'[data-testid="stNumberInput"] input[aria-label="{label}"]')
        box.fill(value)
        box.press("Enter")
        if label == "batch size":  # (the batch size alone: the top 128 channels, 16 passes, runs to its end)
            wait_idle(page)
            wait_map(page, "scorecam")
    tile = page.locator(f".st-key-{tile_key('scorecam')}")
    stop = tile.get_by_role("button", name="Stop")
    stop.wait_for(timeout=120_000)
    tile.get_by_text(re.compile(r"forward passes \d+/160")).wait_for(timeout=120_000)  # it is under way
    stop.click()

    tile.get_by_text("Stopped", exact=False).wait_for(timeout=120_000)
    wait_idle(page)
    no_exception(page)
    tile.get_by_role("button", name="Run").wait_for()
    wait_map(page, "gradcam", timeout=30_000)  # the finished map is still shown

    # the computation really ends: Streamlit runs the rerun in a new thread at once and the old one stops at its
    # next progress update (one forward pass of 8 images), after which the server idles
    pid, t_stop, busy = SERVER["proc"].pid, time.monotonic(), []
    while time.monotonic() - t_stop < 60:
        before, threads, t0 = cpu_seconds(pid), thread_seconds(pid), time.monotonic()
        time.sleep(2)
        busy.append((cpu_seconds(pid) - before) / (time.monotonic() - t0))
        if busy[-1] < 0.3:
            break
    after = thread_seconds(pid)
    hot = sorted(((after[k] - threads.get(k, 0.0), k) for k in after), reverse=True)[:3]
    assert busy[-1] < 0.3, f"the server kept computing after Stop: {busy} of a core; busiest threads {hot}"
    print(f"idle {time.monotonic() - t_stop:.1f} s after Stop (CPU per 2 s window: {busy})")

    # Run starts it afresh (nothing partial was cached), and it can be stopped again
    tile.get_by_role("button", name="Run").click()
    stop.wait_for(timeout=120_000)
    page.wait_for_timeout(1_000)
    stop.click()
    tile.get_by_text("Stopped", exact=False).wait_for(timeout=120_000)
    wait_idle(page)
    no_exception(page)
