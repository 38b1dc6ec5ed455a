"""One run through the real app in Chromium (Debian's /usr/bin/chromium driven by Playwright).

Starts ``streamlit run app.py`` on a free localhost port, then does what a user
does and fails on any Streamlit exception box.  Screenshots go to a temp folder
(or to $RELEVANCE_EXPLORER_SCREENSHOTS, which is how the README's tour images are made).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from explainers.images import GALLERY
from scripts.browser_kit import CHROMIUM, FLAGS, app_server, choose_methods, offline_env, wait_idle

__all__ = ["CHROMIUM", "choose_methods", "wait_idle"]  # the other browser tests import these from here

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (apt install chromium)"),
]


SERVER: dict = {}  # the running server's process and log, for the idle-CPU check
PAGE_TITLES = ["Compare", "Metrics", "Mosaics", "Conservation", "Failure review", "Dataset", "SRD Explorer"]


def first_visit(page, app_url: str, path: str) -> dict:
    """A fresh server's first visit to a sub-page link (as after a server restart): the navigation it shows (each
    link's text is its icon's ligature name, then its title) and the URL it settled on."""
    page.goto(f"{app_url}/{path}")
    nav = page.locator('[data-testid="stSidebarNav"]')
    nav.locator("a").first.wait_for()
    seen = {"nav": [t.strip().splitlines()[-1].strip() for t in nav.locator("a").all_inner_texts()], "url": page.url}
    wait_idle(page)
    return seen


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A user's project (tests/project.py: the factory CNN 'fruitnet', the labelled 'fruit' dataset with one
    corrupt file) plus a 'review' dataset of two gallery pictures; the server reads it from its project file."""
    from tests.project import make_project

    toml = make_project(tmp_path_factory.mktemp("project"))
    review = toml.parent / "data" / "review"
    review.mkdir(parents=True)
    for key in ("coffee", "chelsea"):
        (review / f"{key}.png").write_bytes(GALLERY[key].png_bytes())
    toml.write_text(toml.read_text() + '\n[datasets.review]\npath = "data/review"\n')
    return toml


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, project):
    log = tmp_path_factory.mktemp("streamlit") / "server.log"
    env = offline_env(tmp_path_factory.mktemp("db") / "store.sqlite", RELEVANCE_EXPLORER_CONFIG=str(project))
    with log.open("w") as out, app_server(env, log=out) as (url, _, proc):
        SERVER.update(proc=proc, log=log)
        yield url


@pytest.fixture(scope="module")
def page(request, app_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1400})
        page.set_default_timeout(120_000)
        first = getattr(request.module, "FIRST_VISIT", None)  # a module that asks for it (test_browser_state)
        if first is not None:
            first.update(first_visit(page, app_url, first["path"]))
        page.goto(app_url)
        page.goto(app_url)
        yield page
        browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    target = os.environ.get("RELEVANCE_EXPLORER_SCREENSHOTS")
    path = Path(target) if target else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; fields 14 and 15 of stat, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def no_exception(page) -> None:
    boxes = page.locator('[data-testid="stException"]')
    assert boxes.count() == 0, boxes.first.inner_text()


def tile_key(method: str) -> str:
    return "tile-" + re.sub(r"[^a-z0-9]", "-", method.lower())


def wait_map(page, method: str, timeout: float = 480_000) -> None:
    """Wait until the Compare tile of ``method`` shows its map (the image a user sees, not a hidden label)."""
    page.locator(f".st-key-{tile_key(method)} [data-testid='stImage'] img").first.wait_for(timeout=timeout)


# (sidebar link, a selector for the page's main element, screenshot file)
PAGES = [
    ("Conservation", '[data-testid="stPlotlyChart"]', "conservation.png"),
    ("SRD Explorer", '[data-testid="stImage"]', "srd-explorer.png"),
    ("Mosaics", '[data-testid="stImage"]', "mosaics.png"),
    ("Metrics", '[data-testid="stPlotlyChart"]', "metrics.png"),
    ("Failure review", '[data-testid="stButton"]', "failure-review-start.png"),
]


def press_slider(page, label: str, steps: int) -> None:
    """Move a slider with the keyboard, as a user would, and wait for the rerun."""
    thumb = page.locator(f'[data-testid="stSlider"] [role="slider"][aria-label="{label}"]')
    if thumb.count() == 0:
        thumb = page.locator(f'[data-testid="stSlider"] input[type="range"][aria-label="{label}"]')
    thumb.first.focus()
    for _ in range(steps):
        page.keyboard.press("ArrowRight")
    wait_idle(page)


def open_page(page, title: str) -> None:
    page.locator('[data-testid="stSidebarNav"]').get_by_text(title, exact=True).click()
    page.get_by_role("heading", name=title).first.wait_for()


def select(page, scope: str, label: str, option: str) -> None:
    """Pick ``option`` in the selectbox labelled ``label`` inside ``scope`` (a CSS selector), as a user does."""
    box = page.locator(f'{scope} [data-testid="stSelectbox"]').filter(has=page.get_by_text(label, exact=True))
    box.first.click()
    page.get_by_role("option", name=option).first.click()
    wait_idle(page)


MAIN, SIDEBAR = '[data-testid="stMain"]', '[data-testid="stSidebar"]'


def review_dataset(page, dataset: str, count: int) -> None:
    """Failure review on a registered dataset (no server path is typed: the app was started without the flag)."""
    main = page.locator(MAIN)
    assert main.get_by_text("Folder", exact=True).count() == 0
    main.locator('[data-testid="stRadio"]').get_by_text("Dataset", exact=True).click()
    wait_idle(page)
    select(page, MAIN, "Dataset", dataset)
    page.get_by_role("button", name=f"Review {count} images", exact=False).click()
    wait_idle(page)


def test_a_user_session_through_the_app(page, shots, tmp_path):
    # 1. the default page renders a heatmap for the embedded model
    page.get_by_text("native 7x7").first.wait_for()
    no_exception(page)

    # 1b. once the page has loaded, the server idles: under 5 % of one core over 10 s (a file watcher on a
    # virtual environment inside the checkout, as CI's .venv-ci, costs far more), and no watchdog warnings
    wait_idle(page)
    pid = SERVER["proc"].pid
    before, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(10)
    idle = (cpu_seconds(pid) - before) / (time.monotonic() - t0)
    assert idle < 0.05, f"server used {idle:.1%} of a core while idle"
    log = SERVER["log"].read_text()
    assert "watchdog" not in log.lower(), log[-2000:]

    # 2. upload a gallery image through the file chooser
    page.get_by_text("Upload", exact=True).click()
    coffee = tmp_path / "coffee.png"
    coffee.write_bytes(GALLERY["coffee"].png_bytes())
    page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(coffee))
    page.get_by_text("Input (coffee.png)").wait_for()
    wait_idle(page)
    assert page.get_by_text("espresso").count() > 0
    no_exception(page)

    # 3. more methods side by side, when they are registered
    from explainers import METHODS

    # (CI once timed out on get_by_text("Saliency", exact=True).first: the first match in the page's order can
    # be a hidden label, e.g. inside the folded "Method options" expander; so wait on the tile's image instead)
    extra_ids = [m for m in ("resnet-lrp", "gradcam++", "saliency") if m in METHODS]
    extra = [METHODS[m].name for m in extra_ids]
    if extra:
        choose_methods(page, extra)
        for method in extra_ids:
            wait_map(page, method)
    no_exception(page)

    # 4. display-only controls: the opacity slider and the heat-quantisation bins of ResNet-LRP
    press_slider(page, "Opacity", 4)
    if "resnet-lrp" in METHODS:
        page.get_by_text("Method options").click()
        press_slider(page, "bins", 3)
        page.get_by_text("Method options").click()  # fold the options again so the screenshot shows the maps
    wait_idle(page)
    page.get_by_text(re.compile(r"native \d+x\d+")).nth(len(extra)).wait_for()  # Grad-CAM + the extra maps
    wait_idle(page)
    no_exception(page)
    page.screenshot(path=str(shots / "compare.png"), full_page=True)

    # 5. a text file renamed .png gets a friendly message, and the app stays usable
    fake = tmp_path / "notes.png"
    fake.write_text("this is a text file, not a picture")
    page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(fake))
    page.get_by_text("is not an image we can read").first.wait_for()
    no_exception(page)
    page.screenshot(path=str(shots / "bad-upload.png"), full_page=True)
    page.get_by_text("Gallery", exact=True).click()
    page.get_by_text("native 7x7").first.wait_for()
    wait_idle(page)
    no_exception(page)

    # 6. every other page shows its main element
    for title, main, shot in PAGES:
        if title == "SRD Explorer" and "srd" not in METHODS:
            continue
        open_page(page, title)
        page.locator(main).first.wait_for(timeout=480_000)
        wait_idle(page)
        no_exception(page)
        page.screenshot(path=str(shots / shot), full_page=True)

    # 7. failure review on a registered dataset of two pictures: label the worst image, reload, and the label is
    # still there
    open_page(page, "Failure review")
    review_dataset(page, "review", 2)
    wait_idle(page)
    page.get_by_text("Current label").or_(page.get_by_text("Save label")).first.wait_for(timeout=480_000)
    no_exception(page)
    page.get_by_text("WA: Wrongly Attended", exact=True).click()
    page.get_by_label("Note").fill("browser test label")
    page.get_by_role("button", name="Save label").click()
    wait_idle(page)
    page.get_by_text("browser test label").first.wait_for()
    page.screenshot(path=str(shots / "failure-review.png"), full_page=True)

    page.reload()
    page.get_by_role("heading", name="Failure review").wait_for()
    review_dataset(page, "review", 2)
    wait_idle(page)
    page.get_by_text("browser test label").first.wait_for(timeout=480_000)
    no_exception(page)

    # 8. a registered custom model on a registered labelled dataset: Compare with its own labels and the true class,
    # then the Failure review with correctness against the true labels (the corrupt file reported and skipped)
    select(page, SIDEBAR, "Model", "fruitnet (project)")
    page.get_by_text("UNTRAINED model", exact=False).first.wait_for()
    page.locator(f'{SIDEBAR} [data-testid="stRadio"]').get_by_text("Dataset", exact=True).click()  # not the nav link
    wait_idle(page)
    page.locator(SIDEBAR).get_by_text("True class", exact=False).first.wait_for()
    open_page(page, "Compare")
    wait_map(page, "gradcam")
    sidebar = page.locator(SIDEBAR)
    assert sidebar.get_by_text(re.compile(r"(apple|banana|cherry) \(\d+\.\d%\)")).count() == 3  # its own top-3
    truth = sidebar.get_by_text(re.compile(r"True class apple"))
    truth.first.wait_for()  # (counted at once it raced the sidebar's rerun under CI load: 0 >= 1 once)
    assert truth.count() >= 1
    no_exception(page)
    page.screenshot(path=str(shots / "own-model-dataset.png"), full_page=True)
    open_page(page, "Failure review")
    review_dataset(page, "fruit", 13)
    page.get_by_text(re.compile(r"\d+ wrong predictions, \d+ right for the wrong reasons")).first.wait_for(
        timeout=480_000)
    assert page.get_by_text("broken.png", exact=False).count() >= 1
    no_exception(page)
    page.screenshot(path=str(shots / "failure-review-dataset.png"), full_page=True)
