"""Compare: the input and one heatmap per chosen method, side by side."""

import json
import re

import streamlit as st

from explainers import METHODS, render
from explainers.classes import short_name
from explainers.estimate import describe_estimate, estimate_seconds
from explainers.progress import progress_callback
from pages import common, report_button

ctx = common.require_context()
bundle = ctx.bundle

st.title("Compare attribution methods")
common.untrained_warning(bundle)
chosen, options = common.method_picker(bundle, "compare_methods")

c1, c2, c3, c4, c5 = st.columns([2, 2, 2, 2, 2])
opacity = c1.slider("Opacity", 0.0, 1.0, 0.5, 0.05, key="compare_opacity")
seq_cmap = c2.selectbox("Colormap", render.SEQUENTIAL, key="compare_cmap")
div_cmap = c3.selectbox("Colormap (signed maps)", render.DIVERGING, key="compare_cmap_signed")
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


try:  # Streamlit internals: see ``within`` below; without them progress updates are simply recorded
    from streamlit.runtime.caching.cached_message_replay import in_cached_function as _in_cached_function
except ImportError:  # pragma: no cover - other Streamlit versions
    _in_cached_function = None


@st.cache_data(show_spinner=False, max_entries=256)
def _estimate(model_key: str, method: str, options_json: str, _bundle) -> float | None:
    """Expected seconds for one map (explainers.estimate); cached so display-only reruns cost nothing."""
    try:
        return estimate_seconds(_bundle, method, json.loads(options_json))
    except Exception:  # noqa: BLE001 - an estimate is a courtesy; the computation reports real errors
        return None


slow = []
for method in chosen:
    compute, _ = METHODS[method].split_options(options.get(method, {}))
    seconds = _estimate(ctx.model_key, method, json.dumps(compute, sort_keys=True, default=str), bundle)
    if seconds is not None and seconds > 5:
        slow.append(f"{METHODS[method].name} {describe_estimate(seconds)}")
if slow:
    st.caption(f"Expected time on {bundle.device} (first run; cached afterwards): {'; '.join(slow)}. "
               "Score-CAM/Ablation-CAM use only the top-k channels on a CPU by default (option top k).")

results, errors = {}, {}
progress = st.progress(0.0, text="Computing maps ...")
for i, method in enumerate(chosen):
    label = f"{METHODS[method].name} ({i + 1}/{len(chosen)})"
    progress.progress(i / len(chosen), text=f"{label} ...")

    def within(fraction: float, text: str, i: int = i, label: str = label) -> None:
        """Progress reported by a slow method (explainers.progress.report) moves this method's share of the bar.

        It runs inside ``st.cache_data``, which records element updates to replay them on a cache hit; a replayed
        update of this bar (created outside the cached function) would fail, so the update is not recorded.
        """
        token = _in_cached_function.set(False) if _in_cached_function is not None else None
        try:
            progress.progress(min((i + fraction) / len(chosen), 1.0), text=f"{label}: {text or '...'}")
        finally:
            if token is not None:
                _in_cached_function.reset(token)

    try:
        with progress_callback(within):
            results[method] = common.explanation(ctx, method, options.get(method, {}))
    except Exception as exc:  # noqa: BLE001 - shown per method; the other maps still render
        errors[method] = exc
progress.empty()

tiles = ["__input__", *chosen]
for start in range(0, len(tiles), per_row):
    cols = st.columns(per_row)
    for col, tile in zip(cols, tiles[start:start + per_row]):
        # a keyed container per tile ("st-key-tile-<id>"): what the browser test waits on is the map a user sees
        with col, st.container(key="tile-" + re.sub(r"[^a-z0-9]", "-", tile.lower())):
            if tile == "__input__":
                st.image(ctx.display, caption=f"Input ({ctx.image_name})", width="stretch")
                continue
            spec = METHODS[tile]
            if tile in errors:
                st.markdown(f"**{spec.name}**")
                common.show_error(errors[tile])
                continue
            res = results[tile]
            try:
                shown = spec.display_map(res.attribution, options.get(tile, {}))
                rgb = render.overlay(ctx.display, shown, opacity=opacity, signed=res.signed,
                                     cmap=div_cmap if res.signed else seq_cmap, clip=clip)
            except Exception as exc:  # noqa: BLE001
                common.show_error(exc)
                continue
            native = "x".join(map(str, res.native_resolution)) if res.native_resolution else "?"
            st.image(rgb, caption=spec.name, width="stretch")
            st.caption(f"{res.seconds:.2f} s · native {native} · p={res.score:.3f}")
            st.download_button("Download PNG", render.png_bytes(rgb), file_name=f"{ctx.image_hash}_{tile}.png",
                               mime="image/png", key=f"dl_{tile}")
report_button.show(ctx, results, options)
