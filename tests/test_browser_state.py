"""The view follows the user, in Chromium (issue #15 items 4 and 6): an uploaded image and a target class stay put
while every page is visited twice; a gallery view's URL reopens the same model, image, target, methods and page;
and a click on a cell of the SRD Explorer's PFV grid picks exactly that cell of the shown layer.

Reuses tests/test_browser.py's server, browser and helpers.  Heavy pages are not waited for: only their heading,
which is drawn after the sidebar (so the sidebar seen then is the new page's).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from explainers.images import GALLERY
from tests import test_browser as tb
from tests.test_browser import CHROMIUM, MAIN, SIDEBAR, choose_methods, select, wait_idle, wait_map

project, app_url, page = tb.project, tb.app_url, tb.page  # the same server and browser fixtures (module scope)
# This module's fresh server is first visited through a link to a sub-page (the page fixture does it): Streamlit
# ran a pages/ folder beside app.py as a legacy multipage app until the server's first st.navigation call, so that
# visit ran the page file alone and listed every module of the folder (common, warmup, ...) as pages.  Failure
# review computes nothing until asked, so nothing is left running when the browser moves on.
FIRST_VISIT = {"path": "failure_review"}

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,  # 75 s and 22 s on the 2-core machine (one server for both)
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (apt install chromium)"),
]

HEADINGS = {"Compare": "Compare attribution methods", "Conservation": "Conservation", "SRD Explorer": "SRD Explorer",
            "Mosaics": "Mosaics", "Metrics": "Metrics", "Failure review": "Failure review", "Dataset": "Dataset"}


def go(page, title: str) -> None:
    """Open a page from the sidebar's navigation and wait for its heading (not for its maps)."""
    page.locator('[data-testid="stSidebarNav"]').get_by_text(title, exact=True).click()
    page.get_by_role("heading", name=HEADINGS[title]).first.wait_for(timeout=240_000)


def explain_radio(page):
    return page.locator(f'{SIDEBAR} [data-testid="stRadio"]').filter(has_text="Explain")


def chosen_target(page) -> str:
    """The checked option of the sidebar's "Explain" radio, as shown (e.g. "cup (6.9%)")."""
    return explain_radio(page).locator('label:has(input[type="radio"]:checked)').inner_text().strip()


def pick_target(page, n: int) -> str:
    """Click the n-th class of the top-5 and wait until the rerun shows it chosen (a rerun can start after
    wait_idle's first look at the status widget)."""
    label = explain_radio(page).locator('label:has(input[type="radio"])').nth(n)
    want = label.inner_text().strip()
    label.click()
    for _ in range(240):
        if chosen_target(page) == want:
            break
        page.wait_for_timeout(250)
    wait_idle(page)
    assert chosen_target(page) == want
    return want


def no_exception(page) -> None:
    boxes = page.locator('[data-testid="stException"]')
    assert boxes.count() == 0, boxes.first.inner_text()


def test_upload_and_target_follow_every_page_and_a_link_reopens_the_view(page, app_url, tmp_path):
    t0 = time.monotonic()
    page.goto(app_url)
    page.get_by_text("native 7x7").first.wait_for()
    wait_idle(page)
    # an upload on Compare, and the second class of its top-5
    page.locator(SIDEBAR).get_by_text("Upload", exact=True).click()
    mine = tmp_path / "my-coffee.png"
    mine.write_bytes(GALLERY["coffee"].png_bytes())
    page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(mine))
    page.get_by_text("Input (my-coffee.png)").wait_for()
    wait_idle(page)
    target = pick_target(page, 1)
    assert target.startswith("cup"), target
    page.locator(MAIN).get_by_text("968: ").first.wait_for()  # Compare explains the class picked
    assert "image=" not in page.url and "target=" not in page.url  # an upload has no URL

    # every page twice, in two orders: the same image and target each time
    first = ["Conservation", "SRD Explorer", "Mosaics", "Metrics", "Failure review", "Dataset", "Compare"]
    second = ["Dataset", "Metrics", "Compare", "Failure review", "SRD Explorer", "Mosaics", "Conservation"]
    for title in first + second:
        go(page, title)
        sidebar = page.locator(SIDEBAR)
        assert sidebar.get_by_text("my-coffee.png", exact=False).count() >= 1, title
        assert chosen_target(page) == target, title
        no_exception(page)
    go(page, "Compare")
    page.get_by_text("Input (my-coffee.png)").wait_for()
    wait_idle(page)
    no_exception(page)
    visits = time.monotonic() - t0

    # a gallery view with two methods, on the Dataset page: its URL reopens model, image, target, methods, page
    page.locator(SIDEBAR).get_by_text("Gallery", exact=True).click()
    wait_idle(page)
    page.get_by_text("Input (chelsea.png)").wait_for()
    select(page, SIDEBAR, "Sample image", GALLERY["coffee"].label)
    page.get_by_text("Input (coffee.png)").wait_for()
    wait_idle(page)
    target = pick_target(page, 2)
    choose_methods(page, ["Saliency"])
    wait_map(page, "saliency")
    go(page, "Dataset")
    wait_idle(page)
    url = page.url
    parts = urlparse(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert parts.path.rstrip("/").endswith("/dataset"), url
    assert query == {"model": "efficientnet_lite0", "image": "coffee", "target": query.get("target"),
                     "methods": "gradcam,saliency"}, url
    page.goto(app_url)  # a new session on the default view first, so the reopened view cannot be left over
    page.get_by_text("native 7x7").first.wait_for()
    page.goto(url)
    page.get_by_role("heading", name="Dataset").first.wait_for()
    wait_idle(page)
    assert chosen_target(page) == target
    go(page, "Compare")
    wait_map(page, "saliency")
    page.get_by_text("Input (coffee.png)").wait_for()
    box = page.locator('[data-testid="stMultiSelect"]').first
    assert box.get_by_text("Grad-CAM", exact=True).count() and box.get_by_text("Saliency", exact=True).count()
    assert chosen_target(page) == target
    no_exception(page)
    print(f"visits of 14 pages took {visits:.1f} s; in all {time.monotonic() - t0:.1f} s")


def _cell_centre(page, row: int, col: int, grid: tuple[int, int]) -> tuple[float, float]:
    """Where the centre of a grid cell is drawn: the plot area (plotly's ``.nsewdrag``) is exactly the image
    (the page fixes the axes to the image with constrain="domain")."""
    area = page.locator(f'{MAIN} [data-testid="stPlotlyChart"] .nsewdrag').first.bounding_box()
    h, w = grid
    return area["x"] + (col + 0.5) * area["width"] / w, area["y"] + (row + 0.5) * area["height"] / h


def _click_cell(page, row: int, col: int, grid: tuple[int, int]) -> None:
    """Hover the cell's marker (its tooltip names the cell), then click it, as a user does."""
    tip = page.locator(".hoverlayer").get_by_text(f"row {row}, col {col}", exact=True)
    for attempt in range(4):  # the chart may still be re-drawn by the last rerun: measure again and hover again
        x, y = _cell_centre(page, row, col, grid)
        page.mouse.move(x - 3, y - 3)
        page.mouse.move(x, y)
        try:
            tip.wait_for(timeout=5_000)
            break
        except Exception:  # noqa: BLE001 - playwright's TimeoutError
            if attempt == 3:
                raise
            page.mouse.move(0, 0)
            wait_idle(page)
    page.mouse.click(x, y)
    wait_idle(page)


def _picked(page) -> tuple[str, int, int]:
    """The PFV the page shows: its heading's layer and position, which the Row and Column inputs agree with."""
    heading = page.get_by_role("heading", name=re.compile(r"^PFV \S+ \(\d+, \d+\)")).first
    heading.wait_for()
    m = re.match(r"PFV (\S+) \((\d+), (\d+)\)", heading.inner_text())
    row = int(page.get_by_label("Row", exact=True).input_value())
    col = int(page.get_by_label("Column", exact=True).input_value())
    assert (int(m.group(2)), int(m.group(3))) == (row, col)
    return m.group(1), row, col


def _wait_picked(page, expected: tuple[str, int, int], timeout: float = 60) -> tuple[str, int, int]:
    """The shown PFV once it is ``expected`` (or what is shown after ``timeout`` seconds): the rerun a click
    starts may begin after the status widget was checked."""
    end = time.monotonic() + timeout
    while True:
        try:
            got = _picked(page)
        except AssertionError:  # heading and inputs seen mid-rerun
            got = None
        if got == expected or time.monotonic() > end:
            return got
        page.wait_for_timeout(250)


def test_srd_grid_clicks_pick_the_clicked_cell_of_the_shown_layer(page, app_url):
    t0 = time.monotonic()
    page.goto(app_url)
    page.get_by_text("native 7x7").first.wait_for()
    go(page, "SRD Explorer")
    page.locator(f'{MAIN} [data-testid="stPlotlyChart"] .nsewdrag').first.wait_for(timeout=480_000)
    wait_idle(page)
    assert _picked(page)[0] == "bn2.act"
    # the clicks: (1, 3), then (4, 2); then (4, 2) again after moving away by the inputs, and a corner
    for row, col in [(1, 3), (4, 2), (6, 0)]:
        _click_cell(page, row, col, (7, 7))
        assert _wait_picked(page, ("bn2.act", row, col)) == ("bn2.act", row, col)
        no_exception(page)
    page.get_by_label("Row", exact=True).fill("0")
    page.get_by_label("Row", exact=True).press("Enter")
    wait_idle(page)
    assert _wait_picked(page, ("bn2.act", 0, 0)) == ("bn2.act", 0, 0)
    _click_cell(page, 6, 0, (7, 7))  # the marker clicked last: picked again, not toggled off
    assert _wait_picked(page, ("bn2.act", 6, 0)) == ("bn2.act", 6, 0)
    # another layer and grid size: the click picks a cell of the layer shown, never another layer
    layer = page.locator(f'{MAIN} [data-testid="stSelectbox"]').filter(has=page.get_by_text("Layer", exact=True))
    layer.first.click()
    page.keyboard.type("blocks.4.2.bn2")  # the long list is virtual: filter it first
    page.get_by_role("option", name="blocks.4.2.bn2.act (14x14x672)").first.click()
    page.get_by_role("heading", name=re.compile(r"^PFV blocks\.4\.2\.bn2\.act ")).first.wait_for()
    wait_idle(page)
    page.locator(f'{MAIN} [data-testid="stPlotlyChart"] .nsewdrag').first.wait_for()
    _click_cell(page, 9, 5, (14, 14))
    assert _wait_picked(page, ("blocks.4.2.bn2.act", 9, 5)) == ("blocks.4.2.bn2.act", 9, 5)
    no_exception(page)
    print(f"SRD grid clicks took {time.monotonic() - t0:.1f} s")


def test_a_link_to_a_sub_page_on_a_fresh_server_opens_the_app(page):
    assert FIRST_VISIT["nav"] == tb.PAGE_TITLES, FIRST_VISIT
    assert urlparse(FIRST_VISIT["url"]).path.rstrip("/").endswith("/failure_review")
