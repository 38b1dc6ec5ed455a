"""Metrics: insertion/deletion curves, AUCs and ID of the selected methods on the current image, the other
metrics in a table, and the quality benchmark on the gallery.  Computation lives in ``explainers.metrics``
and ``explainers.quality``; this page reads widgets, calls them (cached) and renders.
"""

import json

import plotly.graph_objects as go
import streamlit as st
import torch

from explainers import METHODS, get_method, quality
from explainers.metrics import (
    attribution_localisation,
    box_mask,
    insertion_deletion,
    pointing_game,
    sparseness,
    tie_protocols,
)
from explainers.progress import progress_callback
from explainers.store import Store
from views import common

ctx = common.require_context()
bundle = ctx.bundle

st.title("Metrics")
st.caption("Insertion / Deletion / ID (resnet-lrp App. A.0.3): pixels ranked by the map are revealed from a "
           "black (or blurred) image, or removed to black; the curves are the softmax probability of the "
           "explained class; areas by the trapezoid rule; ID = Insertion - Deletion.")

chosen, options = common.method_picker(bundle, "metrics_methods")

c1, c2, c3 = st.columns(3)
pixels_per_step = c1.select_slider("Pixels per step", [250, 500, 1000, 2500, 5000], value=500, key="metrics_pps",
                                   help="500: 0 px + the authors' 101 points at 224x224; larger is faster.")
start = c2.radio("Insertion starts from", ["black", "blurred"], horizontal=True, key="metrics_start")
slow = c3.checkbox("Fidelity and stability (slower)", value=False, key="metrics_slow",
                   help="Fidelity: 100 forward passes; stability: 5 extra maps per method.")

if not chosen:
    st.info("Pick one or more methods above.")
    st.stop()


@st.cache_data(max_entries=64, show_spinner=False)
def cached_insdel(image_key: str, model_key: str, method: str, target: int, options_json: str, ties: str,
                  pps: int, start_: str, _bundle, _x: torch.Tensor, _shown: torch.Tensor,
                  _raw: torch.Tensor) -> dict:
    """Curves as plain lists (cache_data pickles; nothing on the GPU)."""
    r = insertion_deletion(_bundle, _x, _shown[None], [target], ties=ties, start=start_, pixels_per_step=pps,
                           raw=_raw[None])
    return {"fractions": r.fractions.tolist(), "insertion": r.insertion[0].tolist(),
            "deletion": r.deletion[0].tolist(), "ins": float(r.insertion_auc[0]),
            "del": float(r.deletion_auc[0]), "id": float(r.id_score[0])}


@st.cache_data(max_entries=64, show_spinner=False)
def cached_slow(image_key: str, model_key: str, method: str, target: int, options_json: str,
                _bundle, _x: torch.Tensor) -> dict:
    values, _ = quality.evaluate(_bundle, _x, method, json.loads(options_json), ["fidelity", "stability"],
                                 target=target)
    return values


curves: dict[tuple[str, str], dict] = {}
table, other, errors = [], [], {}
progress = st.progress(0.0, text="Computing maps and curves ...")
for i, method in enumerate(chosen):
    spec = get_method(method)
    progress.progress(i / len(chosen), text=f"{spec.name} ({i + 1}/{len(chosen)}) ...")
    try:
        opts = spec.resolve_options(options.get(method, {}))
        res = common.explanation(ctx, method, opts)
        raw = res.attribution.float()
        shown = spec.display_map(raw, opts).float()
        protocols = tie_protocols(shown, raw)  # both where they can differ (library decides)
        key = json.dumps(opts, sort_keys=True, default=str)
        for ties in protocols:
            r = cached_insdel(ctx.image_hash, ctx.model_key, method, ctx.target, key, ties, pixels_per_step, start,
                              _bundle=bundle, _x=ctx.x, _shown=shown, _raw=raw)
            curves[(method, ties)] = r
            table.append({"method": spec.name, "ties": ties, "Insertion ↑": r["ins"], "Deletion ↓": r["del"],
                          "ID ↑": r["id"]})
        row = {"method": spec.name, "sparseness (Gini) ↑": float(sparseness(shown[None])[0])}
        if slow:
            vals = cached_slow(ctx.image_hash, ctx.model_key, method, ctx.target, key, _bundle=bundle, _x=ctx.x)
            row.update({"fidelity ↑": vals.get("fidelity"), "stability ↓": vals.get("stability")})
        row["_shown"] = shown
        other.append(row)
    except Exception as exc:  # noqa: BLE001 - one failing method does not hide the others
        errors[method] = exc
progress.empty()

for method, exc in errors.items():
    st.markdown(f"**{METHODS[method].name}**")
    common.show_error(exc)

if curves:
    left, right = st.columns(2)
    for col, kind, title in ((left, "insertion", "Insertion"), (right, "deletion", "Deletion")):
        fig = go.Figure()
        for (method, ties), r in curves.items():
            fig.add_trace(go.Scatter(x=r["fractions"], y=r[kind], mode="lines",
                                     name=f"{METHODS[method].name} ({ties})",
                                     line={"dash": "dash" if ties == "strict" else "solid"}))
        fig.update_layout(title=f"{title} curve", xaxis_title="fraction of pixels", yaxis_title="probability",
                          height=420, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                          # below the axis title, not on it (a horizontal legend's default y overlaps it)
                          legend={"orientation": "h", "yanchor": "top", "y": -0.22, "x": 0})
        col.plotly_chart(fig, key=f"metrics_{kind}_chart")
    st.subheader("Areas under the curves")
    st.dataframe(table, hide_index=True, column_config={k: st.column_config.NumberColumn(format="%.3f")
                                                        for k in ("Insertion ↑", "Deletion ↓", "ID ↑")})
    if any(t == "strict" for _, t in curves):
        st.caption("'together' inserts every pixel tied at the current threshold at once (the authors' code); "
                   "after heat quantization most pixels share one level, which inflates Insertion and deflates "
                   "Deletion. 'strict' orders ties by the raw map, then a seeded random tiebreak.")

with st.expander("Localisation against an object box", expanded=False):
    use_box = st.checkbox("Score pointing game and attribution localisation", key="metrics_use_box")
    size = int(ctx.x.shape[-1])
    bx = st.slider("x range", 0, size, (size // 4, 3 * size // 4), key="metrics_box_x")
    by = st.slider("y range", 0, size, (size // 4, 3 * size // 4), key="metrics_box_y")
    if use_box:
        for row in other:
            mask = box_mask((bx[0], by[0], bx[1], by[1]), *row["_shown"].shape)
            row["pointing game ↑"] = float(pointing_game(row["_shown"][None], mask, tolerance=15)[0])
            row["attribution localisation ↑"] = float(attribution_localisation(row["_shown"][None], mask)[0])

if other:
    st.subheader("Other metrics")
    st.dataframe([{k: v for k, v in r.items() if k != "_shown"} for r in other], hide_index=True)

st.divider()
st.subheader("Quality benchmark")
st.caption("Insertion/Deletion/ID (both tie protocols) and sparseness for every image of a set and the selected "
           "methods; results are stored in SQLite, so a rerun is instant and an interrupted run resumes. On a "
           "labelled dataset the results are also given per true class, split into correct and wrong predictions.")
bench_source = st.radio("On", ["Gallery", "Dataset"], horizontal=True, key="metrics_bench_source")
bench_images, truth, unreadable = None, {}, []
if bench_source == "Dataset":
    from explainers.by_class import truth_by_name
    from views import sources

    dataset = sources.choose_dataset("metrics_dataset")
    if dataset is not None and len(dataset):
        count = int(st.number_input(f"Images (first N of {len(dataset)})", 1, len(dataset), min(len(dataset), 24),
                                    key="metrics_ds_count"))
        try:
            bench_images, unreadable = dataset.read(dataset.page(0, count))
            truth = truth_by_name(dataset, bundle.class_names) if dataset.labelled else {}
        except Exception as exc:  # noqa: BLE001 - e.g. labels that match no class of the model
            common.show_error(exc)
else:
    bench_images = quality.quality_images("gallery")
if bench_images and st.button("Run quality benchmark", key="metrics_bench", icon=":material/play_arrow:"):
    bar = st.progress(0.0, text="Starting ...")
    try:
        with progress_callback(lambda f, t: bar.progress(f, text=t or "...")):
            rows = quality.run_quality(bundle, bench_images, chosen,
                                       ["insdel", "insdel-strict", "sparseness"],
                                       quality.Settings(pixels_per_step=pixels_per_step, start=start), Store(),
                                       options={m: options.get(m, {}) for m in chosen})
        bar.empty()
        st.session_state["metrics_bench_summary"] = quality.summary(rows)
        st.session_state["metrics_bench_markdown"] = quality.markdown(rows, bundle.label, str(bundle.device))
        if truth:
            from explainers.by_class import per_class

            st.session_state["metrics_bench_classes"] = per_class(rows, truth)
        else:
            st.session_state.pop("metrics_bench_classes", None)
    except Exception as exc:  # noqa: BLE001
        bar.empty()
        common.show_error(exc)
for _name, why in unreadable:
    st.warning(why, icon=":material/warning:")
if "metrics_bench_summary" in st.session_state:
    st.dataframe(st.session_state["metrics_bench_summary"], hide_index=True)
    st.download_button("Download summary (markdown)", st.session_state["metrics_bench_markdown"],
                       file_name="quality_summary.md", key="metrics_bench_md")
if st.session_state.get("metrics_bench_classes"):
    st.markdown("**Per true class, correct vs wrong predictions** (means)")
    st.dataframe(st.session_state["metrics_bench_classes"], hide_index=True)
