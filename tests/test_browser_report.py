"""The Compare page's report, downloaded through the real app in Chromium (server and browser as in
tests/test_browser.py, whose fixtures and helpers this file imports).

What a user gets is the downloaded file: it must open (parse) and hold one embedded image for every map the page
shows, each equal, pixel for pixel, to the PNG the map's own PNG download button gives.
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_browser import (  # noqa: F401 - app_url, page and project are fixtures used by name
    CHROMIUM,
    app_url,
    choose_methods,
    no_exception,
    page,
    project,
    tile_key,
    wait_idle,
    wait_map,
)
from tests.test_report import parse

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (apt install chromium)"),
]

MAPS = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++"}  # two cheap methods


def download(page, button) -> bytes:  # noqa: F811 - a Playwright page, not the fixture
    with page.expect_download() as info:
        button.click()
    return Path(info.value.path()).read_bytes()


def png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_report_download_holds_every_map_shown(page):  # noqa: F811 - the fixture
    page.get_by_text("native 7x7").first.wait_for()  # the default page: Grad-CAM on the embedded model
    choose_methods(page, [MAPS["gradcam++"]])
    for method in MAPS:
        wait_map(page, method)
    wait_idle(page)
    no_exception(page)
    # tiles showing a picture (a map tile also holds its colour bar image, so count tiles, not images)
    shown = page.locator("[class*='st-key-tile-']:has([data-testid='stImage'] img)").count()
    assert shown == 1 + len(MAPS)  # the input and the maps

    tiles = {m: png(download(page, page.locator(f".st-key-{tile_key(m)} [data-testid='stDownloadButton'] button")))
             for m in MAPS}
    scales = {m: page.locator(f".st-key-{tile_key(m)}").get_by_text(re.compile(r"\(limit = ")).first.inner_text()
              for m in MAPS}  # the colour bar's labels under each tile
    wait_idle(page)

    page.locator('[data-testid="stPopover"] button').first.click()
    page.get_by_role("button", name=re.compile("Build report")).click()
    wait_idle(page)
    html_button = page.get_by_role("button", name=re.compile("HTML report"))
    html_button.wait_for()
    report = download(page, html_button).decode("utf-8")
    doc = parse(report)
    assert doc.maps == list(MAPS) and len(doc.imgs) == shown
    assert all(i["src"].startswith("data:image/png;base64,") for i in doc.imgs)
    embedded = [png(base64.b64decode(i["src"].split(",", 1)[1])) for i in doc.imgs[1:]]
    for method, got in zip(MAPS, embedded):
        assert np.array_equal(got, tiles[method]), method  # the map as the page drew it
    body = " ".join(doc.text)
    assert all(name in body for name in MAPS.values()) and "efficientnet_lite0-" in body  # name + fingerprint
    assert len(doc.bars) == len(MAPS) and all(scales[m].strip() in body for m in MAPS), scales  # as on the page

    pdf = download(page, page.get_by_role("button", name=re.compile("PDF report")))
    assert pdf.startswith(b"%PDF-") and len(re.findall(rb"/Type\s*/Page\b", pdf)) == 2
    no_exception(page)
