"""Compare's grid in the real app: seconds from an upload to the first map and to the whole grid, and what a
display-only change (opacity, colormap) costs.

Usage: python scripts/bench_app_grid.py [--image coffee] [--repeat 2]

Starts `streamlit run app.py` (as scripts/bench_app_start.py does), opens Compare in Debian's
/usr/bin/chromium, picks Grad-CAM, ResNet-LRP, absLRP, SRD and LRP on the default EfficientNet-Lite0 and
waits for the grid (setup, not timed).  Then, per repeat, it uploads a gallery image the server has not seen
(the first repeat the given one, then others; so nothing is cached) and times each tile
(``.st-key-tile-<id>``) until its image changes; then moves the opacity slider one step and picks another
colormap, and times until the last tile changed (a short rerun ends before Streamlit shows its status widget, so
the run's own end is not observable in the page).  The times are taken in the page
(``performance.now()``, polled every 20 ms), so Playwright's own waits do not add to them.  A benchmark, not a
test; prints a table and the load average.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts import browser_kit  # noqa: E402
from scripts.bench_app_start import first_map, load, serve  # noqa: E402
from scripts.browser_kit import CHROMIUM, FLAGS, choose_methods  # noqa: E402

DEFAULT_METHODS = "gradcam,resnet-lrp,abslrp,srd,lrp"

# Installed in the page: records, per tile, the first time (ms, performance.now()) its image differs from
# the one it showed when armed.  window.__bench = {armed, times: {id: ms}, last: ms of the latest change}.
ARM = """ids => {
  const src = id => { const i = document.querySelector(`.st-key-tile-${id} [data-testid="stImage"] img`);
                      return i ? i.src : null; };
  const before = Object.fromEntries(ids.map(id => [id, src(id)]));
  if (window.__benchTimer) clearInterval(window.__benchTimer);
  window.__bench = {armed: performance.now(), times: {}, last: null, seen: {...before}};
  window.__benchTimer = setInterval(() => {
    const b = window.__bench;
    for (const id of ids) {
      const now = src(id);
      if (now && now !== b.seen[id]) {
        b.seen[id] = now; b.last = performance.now();
        if (!(id in b.times)) b.times[id] = b.last;
      }
    }
  }, 20);
  return window.__bench.armed;
}"""


def tile_id(method: str) -> str:
    return re.sub(r"[^a-z0-9]", "-", method.lower())


def wait_idle(page) -> None:
    """Until the run is over, checked twice 0.3 s apart (the timings below subtract those two pauses)."""
    browser_kit.wait_idle(page, checks=2, timeout_ms=600_000)


def tile_images(page, ids: list[str]):
    return [page.locator(f".st-key-tile-{i} [data-testid='stImage'] img").first for i in ids]


def timed(page, ids: list[str], action, expect: int, quiet_ms: int = 1500, limit_s: float = 900) -> dict:
    """Arm the in-page recorder, run ``action``, wait until ``expect`` tiles changed (or, with expect=0, the
    tiles were quiet for ``quiet_ms`` after the run ended); returns {id: seconds} plus '_last' and '_idle'."""
    armed = page.evaluate(ARM, ids)
    action()
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        bench = page.evaluate("window.__bench")
        if expect and len(bench["times"]) >= expect:
            break
        if not expect and page.locator('[data-testid="stStatusWidget"]').count() == 0:
            last = bench["last"] or armed
            if page.evaluate("performance.now()") - last > quiet_ms:
                break
        page.wait_for_timeout(50)
    wait_idle(page)
    bench = page.evaluate("window.__bench")
    idle = page.evaluate("performance.now()")
    out = {i: (t - armed) / 1000 for i, t in bench["times"].items()}
    out["_last"] = ((bench["last"] or armed) - armed) / 1000
    out["_idle"] = (idle - armed) / 1000 - 0.6  # less wait_idle's two settle pauses
    return out


def upload(page, path: Path) -> None:
    page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(path))


def pick_colormap(page) -> None:
    """Switch the (sequential) Colormap selectbox between viridis and magma."""
    box = page.locator('[data-testid="stMain"] [data-testid="stSelectbox"]').filter(
        has=page.get_by_text("Colormap", exact=True)).first
    field = box.locator("input").first
    name = "magma" if field.input_value() == "viridis" else "viridis"  # (the box's text is only its label)
    field.click()
    page.keyboard.type(name)
    page.keyboard.press("Enter")


def press_opacity(page) -> None:
    """One ArrowRight on the Opacity slider (a thumb with role=slider, or a range input in newer Streamlit)."""
    box = page.locator('[data-testid="stMain"] [data-testid="stSlider"]').filter(
        has=page.get_by_text("Opacity", exact=True)).first
    box.locator('[role="slider"], input[type="range"]').first.focus()
    page.keyboard.press("ArrowRight")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="coffee", help="gallery key uploaded first (a new image each repeat)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--methods", default=DEFAULT_METHODS, help="comma-separated method ids; Grad-CAM first")
    parser.add_argument("--shots", type=Path, default=None, help="save a screenshot per step into this folder")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from explainers import METHODS as SPECS
    from explainers.images import GALLERY

    METHODS = {m: SPECS[m].name for m in args.methods.split(",")}
    if next(iter(METHODS)) != "gradcam":
        raise SystemExit("--methods must start with gradcam (the page's default method)")
    keys = [args.image] + [k for k in GALLERY if k not in (args.image, "chelsea")]
    if args.repeat > len(keys):
        raise SystemExit(f"at most {len(keys)} repeats (one unseen gallery image each)")
    ids = [tile_id(m) for m in METHODS]
    print(f"load average before: {load()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp, serve() as (url, _), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1700, "height": 1300})
        page.set_default_timeout(600_000)
        page.goto(url)

        def shot(name: str) -> None:
            if args.shots:
                args.shots.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.shots / f"{name}.png"), full_page=True)

        first_map(page).wait_for()
        wait_idle(page)
        choose_methods(page, [n for m, n in METHODS.items() if m != "gradcam"])
        for image in tile_images(page, ids):
            image.wait_for()
        wait_idle(page)
        page.get_by_text("Upload", exact=True).click()
        wait_idle(page)
        for key in keys[:args.repeat]:
            path = Path(tmp) / f"{key}.png"
            path.write_bytes(GALLERY[key].png_bytes())
            grid = timed(page, ids, lambda path=path: upload(page, path), expect=len(ids))
            shot(f"{key}-grid")
            page.set_default_timeout(60_000)  # the controls are there at once; a missing one fails fast
            opacity = timed(page, ids, lambda: press_opacity(page), expect=0)
            shot(f"{key}-opacity")
            cmap = timed(page, ids, lambda: pick_colormap(page), expect=0)
            shot(f"{key}-colormap")
            page.set_default_timeout(600_000)
            rows.append((key, grid, opacity, cmap))
        browser.close()

    print(f"\nCompare, EfficientNet-Lite0, {len(ids)} methods; seconds after the action\n")
    print("| image | first map | " + " | ".join(METHODS.values()) + " | whole grid | opacity step | colormap |")
    print("|---" * (len(ids) + 5) + "|")
    for key, grid, opacity, cmap in rows:
        per = [grid.get(i) for i in ids]
        first, whole = min(t for t in per if t is not None), max(t for t in per if t is not None)

        def display(d):  # the last tile change (the run itself ends unseen: no status widget on a short run)
            changed = [d[i] for i in ids if i in d]
            return f"{max(changed):.2f} ({len(changed)} tiles)" if changed else "no tile changed"

        print(f"| {key} | {first:.2f} | " + " | ".join(f"{t:.2f}" if t is not None else "-" for t in per)
              + f" | {whole:.2f} | {display(opacity)} | {display(cmap)} |")
    if len(rows) > 1:
        firsts = [min(g[i] for i in ids if i in g) for _, g, _, _ in rows]
        wholes = [max(g[i] for i in ids if i in g) for _, g, _, _ in rows]
        print(f"\nmedian: first map {statistics.median(firsts):.2f} s, whole grid {statistics.median(wholes):.2f} s")
    print(f"load average after: {load()}")


if __name__ == "__main__":
    main()
