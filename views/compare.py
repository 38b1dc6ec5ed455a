"""Compare: the input and one map per chosen method, side by side.

Every tile is laid out first (a placeholder in the grid), then the maps are computed cheapest first (by
explainers.estimate) and each tile is filled the moment its map is ready.  A slow method (estimate over 3 s)
shows its estimate, a progress bar and a Stop button.  Stop works through Streamlit itself: the click reruns
the script, which interrupts the computation at its next progress update; the click's callback remembers the
method as stopped (per image, model, target and options), so the rerun shows "Stopped" with a Run button
instead of starting it again.  The map cache stores only finished maps, so nothing partial is ever kept.

Display controls (view, opacity, colormaps, colour limit, bins) only re-render cached maps.
"""

import hashlib
import json
import re
from typing import Any

import streamlit as st

from explainers import METHODS, render
from explainers.cache import ByteLRU
from explainers.classes import short_name
from explainers.estimate import describe_estimate, estimate_seconds
from explainers.progress import Cancelled, progress_callback
from views import common, report_button

# Estimates above this get a Stop button (and are named above the grid).  3 s, not 5: an estimate can be short
# by a quarter on a busy machine (Score-CAM, top 128 channels: "about 4 s", 5.0 s measured).
SLOW_SECONDS = 3.0
STOPPED, DONE = "compare_stopped", "compare_done"
VIEW_HELP = ("auto: pixel-level maps (LRP family, SRD at input resolution, gradients) as a heatmap alone, CAMs and "
             "coarse maps over the image. Each tile can override it. Display only: nothing is recomputed.")

ctx = common.require_context()
bundle = ctx.bundle

st.title("Compare attribution methods")
common.untrained_warning(bundle)
chosen, options = common.method_picker(bundle, "compare_methods")

c0, c1, c2, c3, c4, c5 = st.columns([2, 2, 2, 2, 2, 2])
view = c0.selectbox("View", render.VIEWS, key="compare_view", help=VIEW_HELP)
opacity = c1.slider("Opacity", 0.0, 1.0, 0.5, 0.05, key="compare_opacity", help="Overlay view only.")
seq_cmap = c2.selectbox("Colormap", render.SEQUENTIAL, key="compare_cmap",
                        help="inferno, viridis, magma, cividis: perceptually uniform. jet: not (kept for habit).")
div_cmap = c3.selectbox("Colormap (signed maps)", render.DIVERGING, key="compare_cmap_signed",
                        help="berlin, vanimo, managua: perceptually uniform diverging maps (dark zero); RdBu_r: "
                             "light zero. Zero is always the centre colour.")
clip = c4.slider("Colour limit (percentile)", 90.0, 100.0, 99.5, 0.5, key="compare_clip",
                 help="The colour scale ends at this percentile of |relevance|; larger values saturate. "
                      "100 = the maximum. Pixel-level gradient maps look blank at 100 because of a few "
                      "extreme pixels. Display only: nothing is recomputed.")
per_row = c5.slider("Maps per row", 2, 5, 4, key="compare_per_row")

preds = " · ".join(f"**{short_name(n)}** {p:.1%}" for _, n, p in ctx.top5)
st.markdown(f"Top-5: {preds}  \nExplaining **{ctx.target}: {bundle.class_names[ctx.target]}**")

if not chosen:
    st.info("Pick one or more methods above.")
    st.stop()


@st.cache_data(show_spinner=False, max_entries=256)
def _estimate(model_key: str, method: str, options_json: str, _bundle) -> float | None:
    """Expected seconds for one map (explainers.estimate); cached so display-only reruns cost nothing."""
    try:
        return estimate_seconds(_bundle, method, json.loads(options_json))
    except Exception:  # noqa: BLE001 - an estimate is a courtesy; the computation reports real errors
        return None


@st.cache_resource
def _encoded_images() -> ByteLRU:
    """Encoded tile images, shared by sessions (32 MB): a heatmap that a display change leaves as it was (e.g. the
    opacity slider) is not encoded again; PNG encoding was most of a display rerun's time."""
    return ByteLRU(32 * 2**20)


def encoded(rgb, lossless: bool) -> bytes:
    key = (hashlib.blake2b(rgb.tobytes(), digest_size=16).hexdigest(), rgb.shape, lossless)
    return _encoded_images().get_or_compute(key, lambda: render.encode(rgb, lossless))


@st.cache_resource
def _shown_maps() -> ByteLRU:
    """Maps after their display post-processing (e.g. heat quantisation, 9 ms per 224 px map), per map and
    display options, shared by sessions (64 MB): an opacity or colormap change does not quantise them again."""
    return ByteLRU(64 * 2**20)


def shown_map(method: str, res, method_opts: dict[str, Any]):
    spec = METHODS[method]
    _, display = spec.split_options(spec.resolve_options(method_opts))
    key = (signature(method), json.dumps(display, sort_keys=True, default=str))
    return _shown_maps().get_or_compute(key, lambda: spec.display_map(res.attribution, method_opts))


def tile_key(tile: str) -> str:
    """The tile container's key ("st-key-tile-<id>" in the page): what the browser test waits on."""
    return "tile-" + re.sub(r"[^a-z0-9]", "-", tile.lower())


def signature(method: str) -> str:
    """What a map depends on (image, model, target, compute options): a stop holds until one of these changes."""
    compute, _ = METHODS[method].split_options(options.get(method, {}))
    return json.dumps([ctx.image_hash, ctx.model_key, ctx.target, method, compute], sort_keys=True, default=str)


def _stop(sig: str) -> None:
    """Stop button callback: runs before the rerun the click causes (that rerun interrupted the computation)."""
    st.session_state.setdefault(STOPPED, set()).add(sig)


def _run_again(sig: str) -> None:
    st.session_state.setdefault(STOPPED, set()).discard(sig)


def _remember_done(sig: str) -> None:
    """Maps finished in this session: a Stop clicked after its map was done does not hide the map."""
    done = st.session_state.setdefault(DONE, {})
    done[sig] = True
    while len(done) > 512:
        done.pop(next(iter(done)))


@st.dialog("Full resolution", width="large")
def _enlarged(title: str, rgb, bar, labels: str) -> None:
    st.image(render.enlarge(rgb), caption=f"{title} ({rgb.shape[1]}x{rgb.shape[0]} px, each shown as a block)",
             output_format="PNG")
    st.image(bar, width="stretch")
    st.caption(labels)


# Short labels for a tile's own view: "heatmap | overlay | side by side" took two lines at four tiles a row on
# a 1500 px wide window; the values (and the page's View choice, the caption, the URL) keep the full names.
TILE_VIEW_LABELS = {"heatmap": "map", "overlay": "overlay", "side by side": "pair"}


def draw_map(tile: str, res, method_opts: dict[str, Any]) -> str | None:
    """One finished map: its view (the tile's own choice, else the page's), colour bar with units, buttons.
    Returns the tile's own view (None: it follows the page's), for the report."""
    spec = METHODS[tile]
    shown = shown_map(tile, res, method_opts)
    signed = spec.shown_signed(method_opts)  # absLRP's positive part (its default) is drawn as unsigned
    cmap = div_cmap if signed else seq_cmap
    auto = render.default_view(spec.family, signed, res.native_resolution, tuple(shown.shape))
    own = st.segmented_control("View of this map", ("heatmap", "overlay", "side by side"), key=f"view_{tile}",
                               format_func=TILE_VIEW_LABELS.get, label_visibility="collapsed",
                               help=f"map: the map alone; overlay: over the image; pair: the map beside the image. "
                                    f"None chosen: the page's view ({view}; auto = {auto})")
    kind = own or (auto if view == "auto" else view)
    rgb = render.view(kind, ctx.display, shown, signed=signed, cmap=cmap, clip=clip, opacity=opacity)
    bar, labels = render.colour_scale(shown, signed, render.unit(spec.family), cmap, clip)
    # maps alone exact (PNG), overlays as JPEG (mostly a photo); both encoded once per distinct picture
    exact = kind != "overlay"  # (output_format: "auto" would turn the PNG bytes into a JPEG)
    st.image(encoded(rgb, exact), caption=spec.name, width="stretch", output_format="PNG" if exact else "JPEG")
    st.image(encoded(bar, lossless=True), width="stretch", output_format="PNG")
    st.caption(labels)
    native = "x".join(map(str, res.native_resolution)) if res.native_resolution else "?"
    st.caption(f"{res.seconds:.2f} s · native {native} · p={res.score:.3f} · {kind}")
    b1, b2 = st.columns(2)
    # the PNG is made only when the button is pressed (a callable), so a display rerun does not encode 5 PNGs
    # ("PNG", not "Download PNG": four tiles a row left "Downloa..." on a 1500 px wide window)
    b1.download_button("PNG", lambda rgb=rgb: render.png_bytes(rgb), file_name=f"{ctx.image_hash}_{tile}.png",
                       mime="image/png", key=f"dl_{tile}", icon=":material/download:",
                       on_click="ignore")  # no rerun: a second tile's click during it found its file gone (CI)
    if b2.button("Enlarge", key=f"zoom_{tile}", icon=":material/zoom_in:"):
        _enlarged(spec.name, rgb, bar, labels)
    return own


def draw_stopped(tile: str, sig: str) -> None:
    st.markdown(f"**{METHODS[tile].name}**")
    st.warning("Stopped. Nothing of it was kept; the other maps are unaffected.", icon=":material/stop_circle:")
    st.button("Run", key=f"run_{tile}", on_click=_run_again, args=(sig,), icon=":material/play_arrow:")


# 1. the grid, every tile a placeholder in its place
slots: dict[str, Any] = {}
tiles = ["__input__", *chosen]
note = st.empty()
for start in range(0, len(tiles), per_row):
    cols = st.columns(per_row)
    for col, tile in zip(cols, tiles[start:start + per_row]):
        with col, st.container(key=tile_key(tile)):
            if tile == "__input__":
                w0, h0 = ctx.image.size
                p = bundle.prep  # what the model sees: say so, the upload may be larger or another shape
                st.image(ctx.display, caption=f"Input ({ctx.image_name})", width="stretch")
                st.caption(f"{w0}x{h0} px, resized to {p.resize_size} and centre-cropped to {p.crop_size}x"
                           f"{p.crop_size}: what the model sees")
                continue
            slots[tile] = st.empty()
            slots[tile].caption(f"**{METHODS[tile].name}** · waiting ...")

# 2. estimates (one timed forward pass per model, cached), then the cheapest first; no estimate: chosen order
sigs = {m: signature(m) for m in chosen}
seconds = {}
for method in chosen:
    compute, _ = METHODS[method].split_options(options.get(method, {}))
    seconds[method] = _estimate(ctx.model_key, method, json.dumps(compute, sort_keys=True, default=str), bundle)
order = sorted(chosen, key=lambda m: (seconds[m] is None, seconds[m] or 0.0))
slow = [f"{METHODS[m].name} {describe_estimate(seconds[m])}" for m in chosen if (seconds[m] or 0) > SLOW_SECONDS]
if slow:
    note.caption(f"Expected time on {bundle.device} (first run; cached afterwards): {'; '.join(slow)}. "
                 "Score-CAM/Ablation-CAM use only the top-k channels on a CPU by default (option top k).")

results: dict = {}  # method -> Explanation, for the report
own_views: dict[str, str | None] = {}  # method -> its tile's own view (None: the page's), for the report
stopped = st.session_state.setdefault(STOPPED, set())
done = st.session_state.setdefault(DONE, {})

# 3. fill each tile in place as soon as its map is ready
for method in order:
    slot, sig, spec = slots[method], sigs[method], METHODS[method]
    if sig in stopped and sig not in done:
        with slot.container():
            draw_stopped(method, sig)
        continue
    estimate, bar = seconds[method], None
    if sig not in done:  # (a map this session has seen is in the cache: no "computing" flash on display reruns)
        with slot.container():
            st.markdown(f"**{spec.name}**")
            bar = st.progress(0.0, text=f"Computing ({describe_estimate(estimate)}) ..." if estimate
                              else "Computing ...")
            if (estimate or 0) > SLOW_SECONDS:
                st.button("Stop", key=f"stop_{method}", on_click=_stop, args=(sig,), icon=":material/stop:",
                          help="Ends this computation; the maps already shown stay.")

    def within(fraction: float, text: str, bar=bar) -> None:
        """Progress a slow method reports (explainers.progress.report) moves its tile's bar.  This element update
        is also where a rerun (the Stop click) interrupts the computation."""
        if bar is not None:
            bar.progress(fraction, text=text or "...")

    try:
        with progress_callback(within):
            res = common.explanation(ctx, method, options.get(method, {}))
        _remember_done(sig)
        results[method] = res
    except Cancelled:  # stopped through explainers.progress's flag (a driver other than a click)
        _stop(sig)
        with slot.container():
            draw_stopped(method, sig)
        continue
    except Exception as exc:  # noqa: BLE001 - shown per method; the other maps still render
        with slot.container():
            st.markdown(f"**{spec.name}**")
            common.show_error(exc)
        continue
    with slot.container():
        try:
            own_views[method] = draw_map(method, res, options.get(method, {}))
        except Exception as exc:  # noqa: BLE001
            common.show_error(exc)

report_button.show(ctx, {m: results[m] for m in chosen if m in results}, options,  # in the grid's order
                   {"view": view, "opacity": opacity, "clip": clip, "cmap": seq_cmap, "signed_cmap": div_cmap,
                    "views": own_views})
