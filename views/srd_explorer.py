"""SRD Explorer: Sharing Ratio Decomposition maps, and what a pointwise feature vector (PFV) stands for.

1. SRD maps at low (encoder output), high (stride 8) and input (pixel) resolution, side by side.
2. Pick a PFV: a layer and a grid position (click the grid, or the row/column inputs).
3. Its effective receptive field (App. C), its nearest PFVs over the gallery and this session's uploads,
   or over a registered dataset (index cached on disk), each shown as the image region of its ERF's
   bounding box, enlarged (App. A, Fig. 5 top), and its sub-concepts: the PFVs of the
   previous non-linear layer with the largest sharing ratios, each explorable in turn (Fig. 5 bottom).
All computation is in ``explainers.methods.srd``; this page reads widgets, caches and renders.
"""

from __future__ import annotations

import functools

import numpy as np
import plotly.graph_objects as go
import streamlit as st
import torch

from explainers import ExplainerError, render
from explainers.images import image_hash
from explainers.methods import srd
from explainers.methods.srd import BIAS_SHARES, STARTS
from views import common, sources

ctx = common.require_context()
bundle = ctx.bundle

st.title("SRD Explorer")
st.caption("Sharing Ratio Decomposition (Han et al., ICLR 2024): relevance moves between pointwise feature vectors "
           "(the channel vector at one position) by how much each contributes to the next, "
           "mu = <v_hat_i->j, v_j> / |v_j|^2, starting from a Grad-CAM-like map at the encoder output.")
try:
    srd.check_supported(bundle)
except ExplainerError as exc:
    common.show_error(exc)
    st.stop()
common.untrained_warning(bundle, "These maps and concepts describe")


# --------------------------------------------------------------------------- cached computations


@st.cache_resource(max_entries=2, show_spinner=False)
def _pass(image_key: str, model_key: str, _bundle, _x) -> srd.Pass:
    """One kept forward pass per image and model (its ERF walks and stencils are reused)."""
    return srd.forward_pass(_bundle, _x)


@st.cache_data(max_entries=64, show_spinner=False)
def _maps(image_key: str, model_key: str, target: int, start: str, bias_share: str, layers: tuple[str, ...],
          _bundle, _x) -> dict[str, tuple[str, np.ndarray]]:
    res = srd.srd_maps(_bundle, _x, target, start=start, bias_share=bias_share, layers=layers)
    return {k: (res.layer_names[k], res.maps[k][0].float().cpu().numpy()) for k in layers}


@st.cache_data(max_entries=8, show_spinner=False)
def _layers(model_key: str, _bundle) -> list[srd.LayerInfo]:
    return srd.layers(_bundle)


@st.cache_data(max_entries=256, show_spinner=False)
def _erfs(image_key: str, model_key: str, layer: str, positions: tuple[tuple[int, int], ...], bias_share: str,
          _p: srd.Pass) -> np.ndarray:
    return _p.erf(layer, list(positions), bias_share).float().cpu().numpy()


@st.cache_data(max_entries=256, show_spinner=False)
def _subconcepts(image_key: str, model_key: str, layer: str, pos: tuple[int, int], bias_share: str,
                 _p: srd.Pass) -> list[srd.SubConcept]:
    return _p.subconcepts(layer, pos, top=0, bias_share=bias_share)


def _with_progress(text: str, build):  # noqa: ANN001, ANN202
    """``build(progress)`` under a progress bar that is removed afterwards, whatever happens."""
    bar = st.progress(0.0, text=text)
    try:
        return build(lambda f, t: bar.progress(f, text=t))
    finally:
        bar.empty()


@st.cache_resource(max_entries=8, show_spinner=False)
def _index(model_key: str, layer: str, keys: tuple[str, ...], _bundle, _items) -> srd.PFVIndex:
    return _with_progress(f"Indexing PFVs of {layer} over {len(_items)} images ...",
                          lambda progress: srd.build_index(_bundle, layer, _items, progress=progress))


@st.cache_resource(max_entries=8, show_spinner=False)
def _dataset_index(model_key: str, layer: str, dataset_name: str, files_key: str, _bundle, _dataset) -> srd.PFVIndex:
    """The index over a registered dataset: on disk per weights fingerprint + layer + file list (``files_key``)."""
    return _with_progress(f"Indexing PFVs of {layer} over {len(_dataset)} files of {dataset_name} ...",
                          lambda progress: srd.build_dataset_index(_bundle, layer, _dataset, progress=progress))


@st.cache_data(max_entries=256, show_spinner=False)
def _neighbour_views(model_key: str, neighbours: tuple[srd.Neighbour, ...], bias_share: str, _bundle,
                     _images) -> list[np.ndarray]:
    return [v.crop for v in srd.neighbour_views(_bundle, list(neighbours), _images, bias_share)]


def _clip(arr: np.ndarray) -> np.ndarray:
    """Display only: clip at the 99.5th percentile of |R| so a few extreme pixels do not wash the map out."""
    m = float(np.quantile(np.abs(arr), 0.995)) if arr.size else 0.0
    return np.clip(arr, -m, m) if m > 0 else arr


def _overlay(arr: np.ndarray, opacity: float, kind: str = "overlay", signed: bool | None = None) -> np.ndarray:
    """The map upsampled to the shown image: over it (``kind`` "overlay") or alone ("heatmap"); ``signed``
    (None: from the map) picks the diverging or the sequential colormap."""
    size = (ctx.display.height, ctx.display.width)
    up = render.upsample(torch.from_numpy(_clip(arr)), size)
    signed = render.has_negative_relevance(arr) if signed is None else signed
    return render.view(kind, ctx.display, up, signed=signed, opacity=opacity)


# --------------------------------------------------------------------------- 1. maps at three resolutions

c1, c2, c3 = st.columns(3)
start = c1.selectbox("Start (Eq. 4)", STARTS, key="srd_start",
                     help="contrastive: max(Phi_c - mean over classes, 0) (paper); spatial-mean: released code; "
                          "plain: Grad-CAM weights x activations")
bias_share = c2.selectbox("Bias share", BIAS_SHARES, key="srd_bias_share",
                          help="norm: by PFV norms in the receptive field (paper App. B); contribution: by the norms "
                               "of the weighted contributions (released code)")
opacity = c3.slider("Opacity", 0.0, 1.0, 0.55, 0.05, key="srd_opacity")

try:
    maps = _maps(ctx.image_hash, ctx.model_key, ctx.target, start, bias_share, ("low", "high", "input"),
                 _bundle=bundle, _x=ctx.x)
    infos = _layers(ctx.model_key, _bundle=bundle)
    p = _pass(ctx.image_hash, ctx.model_key, _bundle=bundle, _x=ctx.x)
except Exception as exc:  # noqa: BLE001 - shown as a friendly message; the page stays usable
    common.show_error(exc)
    st.stop()

st.markdown(f"Explaining **{ctx.target}: {bundle.class_names[ctx.target]}**")
cols = st.columns(3)
for col, key in zip(cols, ("low", "high", "input")):
    name, arr = maps[key]
    # as on Compare: a map at the image's resolution alone (pixel-level relevance reads as speckle over a photo),
    # coarser ones over the image
    signed = render.has_negative_relevance(arr)  # the colormap, and the colour bar of that scale (as on Compare)
    kind = render.default_view("srd", signed, tuple(arr.shape), (ctx.display.height, ctx.display.width))
    col.image(_overlay(arr, opacity, kind, signed), width="stretch",
              caption=f"SRD-{key}: {name} ({arr.shape[0]}x{arr.shape[1]}, {kind})")
    bar, labels = render.colour_scale(arr, signed, "relevance", clip=99.5)  # 99.5: the percentile _clip uses
    col.image(bar, width="stretch", output_format="PNG")
    col.caption(labels)

# --------------------------------------------------------------------------- 2. pick a PFV

st.subheader("Pick a pointwise feature vector")
by_name = {i.name: i for i in infos}
names = list(by_name)
default_layer = next(i.name for i in infos if i.alias == "low")
if st.session_state.get("srd_layer") not in by_name:
    st.session_state["srd_layer"] = default_layer
left, right = st.columns([3, 2])
layer = right.selectbox("Layer", names, key="srd_layer", format_func=lambda n: by_name[n].label,
                        help="Non-linear layers of the encoder, input to output; [low] is where SRD starts.")
try:
    layer_map = maps["low"][1] if layer == maps["low"][0] else _maps(
        ctx.image_hash, ctx.model_key, ctx.target, start, bias_share, (layer,), _bundle=bundle, _x=ctx.x)[layer][1]
except Exception as exc:  # noqa: BLE001
    common.show_error(exc)
    st.stop()
h, w = layer_map.shape

# A new image or layer: start at the PFV with the most relevance (unless a sub-concept button chose one).
if st.session_state.get("srd_grid_of") != (ctx.image_hash, ctx.model_key, layer):
    if not st.session_state.pop("srd_keep_pos", False):
        r0, c0 = np.unravel_index(int(np.argmax(layer_map)), layer_map.shape)
        st.session_state["srd_row"], st.session_state["srd_col"] = int(r0), int(c0)
    st.session_state["srd_grid_of"] = (ctx.image_hash, ctx.model_key, layer)


def _grid_clicked(chart_key: str, shown_layer: str, grid: tuple[int, int], display: tuple[int, int]) -> None:
    """The grid's on_select callback (runs before the rerun, so it may set the Row/Column widgets): the clicked
    cell of the layer the chart shows becomes the PFV.  The chart then gets a fresh key, so no selection lingers:
    plotly toggles a selected point off when it is clicked again, and the next click, even on the same marker,
    is a new selection (with one kept selection, a click on it "did nothing")."""
    event = st.session_state.get(chart_key)
    selection = getattr(event, "selection", None) if not isinstance(event, dict) else event.get("selection")
    points = (selection.get("points") if isinstance(selection, dict) else getattr(selection, "points", None)) or []
    click = srd.grid_click(list(points), shown_layer, grid, display)
    if click is None or st.session_state.get("srd_layer") != shown_layer:
        return
    st.session_state["srd_row"], st.session_state["srd_col"] = click[1], click[2]
    st.session_state["srd_clicks"] = st.session_state.get("srd_clicks", 0) + 1


# The clickable grid: the layer's SRD map over the image, one marker per PFV (hover shows its row and column).
H, W = ctx.display.height, ctx.display.width
fig = go.Figure(go.Image(z=_overlay(layer_map, opacity), hoverinfo="skip"))
rr, cc = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
gx, gy = srd.grid_centres((h, w), (H, W))  # plotly puts pixel centres at integers: cell centres sit at -0.5
fig.add_trace(go.Scatter(x=gx, y=gy, mode="markers",
                         marker={"size": max(3, min(14, int(360 / max(h, w)))), "opacity": 0.25, "color": "white"},
                         customdata=np.stack([rr.flatten(), cc.flatten()], 1),
                         hovertemplate="row %{customdata[0]}, col %{customdata[1]}<extra></extra>"))
# The chosen PFV's cell, outlined (the Row/Column widgets below hold it; they are drawn after the chart).
sel_r = min(max(int(st.session_state.get("srd_row", 0) or 0), 0), h - 1)
sel_c = min(max(int(st.session_state.get("srd_col", 0) or 0), 0), w - 1)
fig.add_shape(type="rect", x0=sel_c * W / w - 0.5, x1=(sel_c + 1) * W / w - 0.5, y0=sel_r * H / h - 0.5,
              y1=(sel_r + 1) * H / h - 0.5, line={"color": "cyan", "width": 2}, layer="above")
# The axes span exactly the image (constrain="domain" shrinks the plot area instead of padding the range), so
# the plot area is the image: a click there is on a cell, and a test can compute where a cell is drawn.
fig.update_layout(height=380, margin={"t": 10, "b": 10, "l": 10, "r": 10}, showlegend=False, clickmode="event+select",
                  hovermode="closest", dragmode=False,
                  xaxis={"visible": False, "range": [-0.5, W - 0.5], "constrain": "domain"},
                  yaxis={"visible": False, "range": [H - 0.5, -0.5], "constrain": "domain", "scaleanchor": "x"})
chart_key = f"srd_grid_{layer}_{h}x{w}_{st.session_state.get('srd_clicks', 0)}"  # per layer, grid and click
with left:
    st.plotly_chart(fig, key=chart_key, selection_mode="points", config={"displayModeBar": False},  # it hid row 0
                    on_select=functools.partial(_grid_clicked, chart_key, layer, (h, w), (H, W)))
row = right.number_input("Row", min_value=0, max_value=h - 1, step=1, key="srd_row")
col = right.number_input("Column", min_value=0, max_value=w - 1, step=1, key="srd_col")
pos = (int(row), int(col))
right.caption(f"Grid {h}x{w}; relevance here R = {layer_map[pos]:.4g} "
              f"({layer_map[pos] / (layer_map.sum() or 1):.1%} of this layer's total).")
path = st.session_state.setdefault("srd_path", [])


def _back() -> None:
    """Button callback (runs before the next rerun, so it may set the widgets' values)."""
    prev = st.session_state["srd_path"].pop()
    st.session_state["srd_keep_pos"] = True
    st.session_state["srd_layer"], st.session_state["srd_row"], st.session_state["srd_col"] = prev


if path:
    right.button("Back to the previous PFV", key="srd_back", on_click=_back)

# --------------------------------------------------------------------------- 3. ERF, neighbours, sub-concepts

items = common.gallery_images() + list(common.session_uploads().values())
images = {image_hash(data): (name, data) for name, data in items}
shown = bundle.to_tensor01(ctx.image)

try:
    erf_map = _erfs(ctx.image_hash, ctx.model_key, layer, (pos,), bias_share, _p=p)[0]
    box = p.box(layer, pos)
except Exception as exc:  # noqa: BLE001
    common.show_error(exc)
    st.stop()

st.subheader(f"PFV {layer} ({pos[0]}, {pos[1]})")
a, b = st.columns([1, 2])
a.image(_overlay(erf_map, opacity), caption=f"ERF of {layer} ({pos[0]}, {pos[1]})", width="stretch")
a.caption(f"Receptive field rows {box[0]}-{box[1]}, columns {box[2]}-{box[3]}; the ERF sums to "
          f"{erf_map.sum():.4f} (relevance 1 placed on this PFV).")
with b:
    st.markdown("**Nearest PFVs** (cosine similarity of pre-activation vectors)")
    k1, k2 = st.columns(2)
    k = k1.slider("Neighbours", 1, 8, 3, key="srd_k")
    others = k2.checkbox("Other images only", value=True, key="srd_others",
                         help="Paper App. A looks at other samples' PFVs.")
    over = st.radio("Search over", ["Gallery and uploads", "A registered dataset"], key="srd_over",
                    horizontal=True)
    dataset = sources.choose_dataset("srd_dataset") if over == "A registered dataset" else None

    def _index_for(lname: str) -> srd.PFVIndex:
        if dataset is None:
            return _index(ctx.model_key, lname, tuple(images), _bundle=bundle, _items=list(images.values()))
        return _dataset_index(ctx.model_key, lname, dataset.name, srd.file_list_key(dataset), _bundle=bundle,
                              _dataset=dataset)

    def _images_for(nbs: list[srd.Neighbour]) -> dict[str, tuple[str, bytes]]:
        return images if dataset is None else srd.dataset_images(dataset, nbs)

    try:
        index = _index_for(layer)
        if index.failures:
            with st.expander(f"{len(index.failures)} file(s) of {dataset.name if dataset else 'the images'} "
                             "could not be decoded and were skipped"):
                st.table([{"file": n, "reason": r} for n, r in index.failures])
        neighbours = index.nearest_pfvs(p.vector(layer, pos), k, exclude_image=ctx.image_hash if others else None)
        crops = _neighbour_views(ctx.model_key, tuple(neighbours), bias_share, _bundle=bundle,
                                 _images=_images_for(neighbours))
    except Exception as exc:  # noqa: BLE001
        common.show_error(exc)
        neighbours, crops = [], []
    if neighbours:
        ncols = st.columns(max(len(neighbours), 3))
        for nc, nb, crop in zip(ncols, neighbours, crops):
            nc.image(crop, caption=f"{nb.image_name} ({nb.position[0]}, {nb.position[1]}) cos {nb.similarity:.3f}",
                     width="stretch")
    else:
        st.info("No other image is indexed yet: upload one, or untick 'Other images only'.")

st.markdown("**Sub-concepts**: the PFVs this one is made of, by sharing ratio (paper App. A, Fig. 5 bottom)")
top = st.slider("Sub-concepts shown", 1, 9, 4, key="srd_top")
try:
    subs = _subconcepts(ctx.image_hash, ctx.model_key, layer, pos, bias_share, _p=p)
except Exception as exc:  # noqa: BLE001
    common.show_error(exc)
    st.stop()
total = sum(s.mu for s in subs)
plural = "s" if len(subs) != 1 else ""
st.caption(f"{len(subs)} contributor{plural} from {', '.join(sorted({s.layer for s in subs}))}; their ratios sum "
           f"to {total:.6f}.")


def _explore(sub: srd.SubConcept) -> None:
    """Button callback: remember where we were and make the sub-concept the chosen PFV."""
    st.session_state["srd_path"].append((layer, pos[0], pos[1]))
    st.session_state["srd_keep_pos"] = True
    st.session_state["srd_layer"] = sub.layer
    st.session_state["srd_row"], st.session_state["srd_col"] = sub.position


chosen = subs[:top]
if chosen:
    by_layer: dict[str, list[int]] = {}
    for i, s in enumerate(chosen):
        by_layer.setdefault(s.layer, []).append(i)
    sub_erfs: dict[int, np.ndarray] = {}
    for lname, ids in by_layer.items():
        if lname == "input":
            continue
        arr = _erfs(ctx.image_hash, ctx.model_key, lname, tuple(chosen[i].position for i in ids), bias_share, _p=p)
        sub_erfs.update({i: e for i, e in zip(ids, arr)})
    scols = st.columns(max(len(chosen), 4))  # at least 4 columns, so a single sub-concept is not page-wide
    for i, (sc, s) in enumerate(zip(scols, chosen)):
        with sc:
            if s.layer == "input":
                st.markdown(f"pixel ({s.position[0]}, {s.position[1]})  \nmu = {s.mu:.4f}")
                continue
            e = torch.from_numpy(sub_erfs[i])
            st.image(srd.erf_view(shown, e), caption=f"{s.layer} ({s.position[0]}, {s.position[1]})  mu = {s.mu:.3f}",
                     width="stretch")
            st.button("Explore", key=f"srd_sub_{i}", on_click=_explore, args=(s,))
            try:
                sub_index = _index_for(s.layer)
                nbs = sub_index.nearest_pfvs(p.vector(s.layer, s.position), 2,
                                             exclude_image=ctx.image_hash if others else None)
                for nb, crop in zip(nbs, _neighbour_views(ctx.model_key, tuple(nbs), bias_share, _bundle=bundle,
                                                          _images=_images_for(nbs))):
                    st.image(crop, caption=f"{nb.image_name} cos {nb.similarity:.2f}", width="stretch")
            except Exception as exc:  # noqa: BLE001
                common.show_error(exc)
if path:
    st.caption("Path: " + " → ".join(f"{lay} ({r}, {c})" for lay, r, c in path) + f" → {layer} {pos}")
