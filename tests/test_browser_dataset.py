"""The Dataset page in Chromium: the project fixture's `fruit` dataset with the untrained `fruitnet`, Run, the
clusters of a class, and a cluster member opened in Compare (its own server, started with the project file)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.project import make_project
from tests.test_browser import CHROMIUM, FLAGS, ROOT, free_port, no_exception, wait_idle

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (apt install chromium)"),
]


@pytest.fixture
def project_url(tmp_path):
    toml = make_project(tmp_path / "project")
    port = free_port()
    env = {**os.environ, "RELEVANCE_EXPLORER_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "RELEVANCE_EXPLORER_CONFIG": str(toml), "RELEVANCE_EXPLORER_DB": str(tmp_path / "store.sqlite")}
    env.pop("RELEVANCE_EXPLORER_ALLOW_SERVER_PATHS", None)
    log = tmp_path / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                                 "--server.headless", "true", "--server.address", "127.0.0.1"],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(120):
                try:
                    urllib.request.urlopen(f"{url}/_stcore/health", timeout=1)
                    break
                except OSError:
                    time.sleep(0.5)
            else:
                pytest.fail(f"streamlit did not start: {log.read_text()[-2000:]}")
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def test_dataset_page_in_the_browser(project_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1400})
        page.set_default_timeout(180_000)
        page.goto(f"{project_url}/dataset")
        page.get_by_role("heading", name="Dataset").first.wait_for()
        wait_idle(page)
        # the project's model, untrained
        page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').filter(has_text="Model").click()
        page.get_by_role("option", name="fruitnet (project)", exact=False).click()
        wait_idle(page)
        page.get_by_text("untrained (architecture only)", exact=True).click()
        wait_idle(page)
        # a method whose maps are not all zero on an untrained net
        page.locator('[data-testid="stMain"] [data-testid="stSelectbox"]').filter(has_text="Method").first.click()
        page.keyboard.type("Input")
        page.get_by_role("option", name="Input", exact=False).first.click()
        wait_idle(page)
        page.get_by_role("button", name="Run ", exact=False).click()
        wait_idle(page)
        no_exception(page)
        page.get_by_text("cluster(s) among 4 maps of apple", exact=False).wait_for()
        page.locator('[data-testid="stPlotlyChart"]').first.wait_for()
        cluster0 = page.locator('[data-testid="stExpander"]').filter(has_text="Cluster 0:")
        buttons = cluster0.get_by_role("button", name="Compare", exact=True)
        buttons.first.wait_for()  # (the members render after the scatter: counting at once raced it under load)
        assert buttons.count() >= 1
        # the first member's caption names it ("apple/apple_K.png · ID ..."): the mean map's tile comes first
        first = cluster0.locator('[data-testid="stImageCaption"]').nth(1).inner_text().split(" · ")[0]
        assert first.startswith("apple/"), first
        buttons.first.click()
        page.get_by_role("heading", name="Compare attribution methods").first.wait_for()
        wait_idle(page)
        no_exception(page)
        # the sidebar picked that very dataset image
        side = page.locator('[data-testid="stSidebar"]').inner_text()
        assert "True class apple" in side and "fruitnet" in side, side[:600]
        page.get_by_text(f"Input ({first})").first.wait_for()  # Compare's input caption names the picked file
        browser.close()
