"""Dataset: one method over (the first N images of) a registered dataset through the batched pipeline; metric
distributions per true class, the worst images first, the mean map per class, and SpRAy strategy clusters per
class.  Every shown image opens in Compare or Failure review.  Analysis lives in ``explainers.dataset_view``.
"""

import json

import pandas as pd
import plotly.express as px
import streamlit as st

from explainers import METHODS, ExplainerError, methods_for, pipeline, render
from explainers import dataset_view as dv
from explainers.by_class import truth_by_name
from explainers.images import load_image
from explainers.quality import Settings
from views import common, sources

PAGES = {"compare": "views/compare.py", "review": "views/failure_review.py"}

ctx = common.require_context()
goto = st.session_state.pop("dv_goto", None)
if goto:  # set by an "open" button's callback; the sidebar above already drew the picked image
    st.switch_page(PAGES[goto])
bundle = ctx.bundle
st.title("Dataset")
st.caption("One method over a registered dataset: metrics per true class, the worst images first, the mean map "
           "per class, and strategy clusters per class (SpRAy, Lapuschkin et al. 2019: spectral clustering of "
           "downsampled normalised maps, t-SNE for display). A cluster whose maps sit on a watermark, a border "
           "or the background is a \"Clever Hans\" strategy.")

dataset = sources.choose_dataset("dv_dataset")
if dataset is None or not len(dataset):
    st.stop()
methods = [m.id for m in methods_for(bundle)]
c1, c2 = st.columns(2)
method = c1.selectbox("Method", methods, key="dv_method", format_func=lambda m: METHODS[m].name,
                      index=methods.index("gradcam") if "gradcam" in methods else 0)
count = int(c2.number_input(f"Images (first N of {len(dataset)})", 1, len(dataset), min(len(dataset), 64),
                            key="dv_count"))
with st.expander("Method options"):
    options = common.option_widgets(METHODS[method], "dv")
samples = dataset.page(0, count)
items = pipeline.as_items(samples)
key = (bundle.fingerprint, dataset.name, method, json.dumps(options, sort_keys=True), tuple(s.name for s in samples))
cache = st.session_state.setdefault("dv_cache", {})


def _open(target: str, name: str) -> None:
    """Button callback: set the sidebar (and Failure review) to this image, then switch on the rerun."""
    common.set_sidebar(**dv.compare_state(dataset, name, sources.PAGE_SIZE))  # survives the page switch
    if target == "review":
        st.session_state.update(dv.review_state(dataset.name, dataset.label_of(name)))
    st.session_state["dv_goto"] = target


if st.button(f"Run {METHODS[method].name} on {len(items)} images", key="dv_run", type="primary"):
    bar = st.progress(0.0, text="Explaining and scoring ...")
    try:
        # store=None and keep=True: the maps of every image stay in memory for the plots below (bounded by N)
        result = pipeline.run(bundle, items, [method], ("insdel", "sparseness"), Settings(), None,
                              {method: options}, keep=True,
                              progress=lambda f, text: bar.progress(min(f, 1.0), text=text))
        truth = truth_by_name(dataset, bundle.class_names) if dataset.labelled else {}
    except ExplainerError as exc:
        common.show_error(exc)
        st.stop()
    bar.empty()
    cache[key] = (dv.records(result, items, method, truth), result.skipped, result.stats)
    while len(cache) > 2:
        cache.pop(next(iter(cache)))
if key not in cache:
    st.stop()
recs, skipped, stats = cache[key]
st.caption(f"{stats.done} images in {stats.seconds:.1f} s ({stats.images_per_s:.1f} images/s, batch "
           f"{stats.batch_size}).")
if skipped:
    st.warning(f"Skipped {len(skipped)} file(s) that could not be decoded: "
               + "; ".join(f"{n}: {why}" for n, why in skipped[:10]), icon=":material/warning:")
if not recs:
    st.info("None of these files could be decoded.")
    st.stop()

spec = METHODS[method]
images = dict(dataset.read([s for s in samples if s.name in {r.name for r in recs}])[0])


def _pixels(name: str):
    return bundle.display_image(load_image(images[name], name=name))


def _tile(col, rec: dv.Record, where: str) -> None:
    col.image(render.overlay(_pixels(rec.name), rec.map, 0.5, signed=spec.shown_signed(options)), width="stretch",
              caption=f"{rec.name} · ID " + ("n/a" if rec.values.get("id") is None else f"{rec.values['id']:.3f}")
              + ("" if rec.correct is None else (" · right" if rec.correct else " · WRONG")))
    a, b = col.columns(2)
    a.button("Compare", key=f"dv_cmp_{where}_{rec.name}", on_click=_open, args=("compare", rec.name))
    b.button("Review", key=f"dv_rev_{where}_{rec.name}", on_click=_open, args=("review", rec.name))


frame = pd.DataFrame(dv.table(recs, bundle.class_names))
st.subheader("Metrics per true class")
tabs = st.tabs(["ID", "insertion", "deletion", "sparseness", "correctness"])
for tab, col in zip(tabs, [*dv.METRIC_COLUMNS, "correct"]):
    if col == "correct":
        acc = frame.dropna(subset=["correct"]).groupby("true class")["correct"].mean().reset_index()
        fig = px.bar(acc, x="true class", y="correct", labels={"correct": "share predicted right"})
    else:
        fig = px.box(frame, x="true class", y=col, points="all", hover_data=["name"])
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=10, b=10))
    tab.plotly_chart(fig, width="stretch", key=f"dv_plot_{col}")

st.subheader("Worst first")
order = st.selectbox("Order by", ["id", "insertion", "-deletion", "sparseness"], key="dv_order",
                     format_func=lambda m: "deletion (highest first)" if m == "-deletion" else f"{m} (lowest first)")
worst = dv.worst_first(recs, order)
n_worst = min(8, len(worst))
cols = st.columns(4)
for i, rec in enumerate(worst[:n_worst]):
    _tile(cols[i % 4], rec, "worst")
with st.expander("All images (worst first)"):
    st.dataframe(pd.DataFrame(dv.table(worst, bundle.class_names)), hide_index=True, width="stretch")

st.subheader("Mean map per true class")
means = dv.mean_maps(recs)
cols = st.columns(max(len(means), 1))
for col, (label, m) in zip(cols, means.items()):
    col.image(render.colorize(m), caption=f"{label} ({sum((r.label or '(unlabelled)') == label for r in recs)})",
              width="stretch")

st.subheader("Strategies per class (SpRAy)")
s1, s2 = st.columns(2)
cls = s1.selectbox("True class", list(means), key="dv_class")
k = int(s2.number_input("Clusters (0: by eigengap)", 0, 8, 0, key="dv_k"))
found = dv.class_clusters(recs, cls, n_clusters=k or None)
st.caption(f"{found.n_clusters} cluster(s) among {len(found.names)} maps of {cls}.")
pts = pd.DataFrame(found.points())
fig = px.scatter(pts, x="x", y="y", color="cluster", hover_data=["name"])
fig.update_layout(height=360, margin=dict(l=10, r=10, t=10, b=10), xaxis_title="t-SNE 1", yaxis_title="t-SNE 2")
st.plotly_chart(fig, width="stretch", key="dv_tsne")
by_name = {r.name: r for r in recs}
for c in range(found.n_clusters):
    names = found.members(c)
    with st.expander(f"Cluster {c}: {len(names)} images", expanded=c < 2):
        head = st.columns(5)
        head[0].image(render.colorize(found.mean_maps[c]), caption="mean map", width="stretch")
        cols = head[1:]
        for i, name in enumerate(names[:16]):
            if i and i % 4 == 0:
                cols = st.columns(5)[1:]
            _tile(cols[i % 4], by_name[name], f"c{c}")
