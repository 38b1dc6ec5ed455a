"""The Dataset page in Chromium: the project fixture's `fruit` dataset with the untrained `fruitnet`, Run, the
clusters of a class, and a cluster member opened in Compare (its own server, started with the project file)."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.browser_kit import CHROMIUM, FLAGS, app_server, offline_env, wait_idle
from tests.project import make_project
from tests.test_browser import no_exception

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (apt install chromium)"),
]


@pytest.fixture
def project_url(tmp_path):
    env = offline_env(tmp_path / "store.sqlite", RELEVANCE_EXPLORER_CONFIG=str(make_project(tmp_path / "project")))
    with (tmp_path / "server.log").open("w") as out, app_server(env, log=out) as (url, _, _proc):
        yield url


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
