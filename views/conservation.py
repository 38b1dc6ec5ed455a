"""Conservation: where relevance goes during propagation (resnet-lrp paper Sec. 4.3-4.4, Fig. 7).

1. Relevance total at every node from output to input, checkpoints highlighted, start value as reference.
2. For residual models, the share each block sends through its skip connection vs its main branch.
3. Fig. 7: input / first-block / last-block totals against the predicted probability over the gallery
   (and this session's uploads); points lie on y = x when conservation holds.
The numbers come from the engine's trace (``Explanation.trace``); the sweep is ``explainers.conservation``;
this page only renders them.
"""

import json

import plotly.graph_objects as go
import streamlit as st

from explainers import METHODS, get_method, methods_for
from explainers.cache import ByteLRU
from explainers.conservation import Sweep, conservation_sweep, sweep_options
from explainers.images import image_hash
from explainers.progress import progress_callback
from explainers.propagation import PropagationTrace
from views import common

ctx = common.require_context()
bundle = ctx.bundle

st.title("Conservation")
st.caption("Relevance propagation should neither create nor lose relevance: the total at each checkpoint "
           "(network input, each residual block's input and output, the classifier input) should equal the "
           "relevance placed at the output.")
common.untrained_warning(bundle, "These totals describe")

ids = [m.id for m in methods_for(bundle) if m.family == "lrp"]
if not ids:
    st.info(f"No propagation method supports {bundle.family} models yet.")
    st.stop()
method = st.selectbox("Method", ids, index=ids.index("resnet-lrp") if "resnet-lrp" in ids else 0,
                      key="conservation_method", format_func=lambda m: METHODS[m].name)
spec = get_method(method)
with st.expander("Method options", expanded=False):
    options = common.option_widgets(spec, "conservation")

try:
    res = common.explanation(ctx, method, options)
except Exception as exc:  # noqa: BLE001 - shown as a friendly message; the page stays usable
    common.show_error(exc)
    st.stop()
trace: PropagationTrace = res.trace

# --------------------------------------------------------------------------- 1. totals per node
st.subheader("Relevance total at every node")
names = [n.name for n in trace.nodes]
totals = [n.total for n in trace.nodes]
fig = go.Figure()
fig.add_trace(go.Scatter(x=list(range(len(names))), y=totals, mode="lines", name="total", text=names,
                         hovertemplate="%{text}<br>%{y:.6g}<extra></extra>"))
cp = [(i, n) for i, n in enumerate(trace.nodes) if n.checkpoint]
fig.add_trace(go.Scatter(x=[i for i, _ in cp], y=[n.total for _, n in cp], mode="markers", name="checkpoint",
                         marker={"size": 9, "color": "crimson"}, text=[n.name for _, n in cp],
                         hovertemplate="%{text}<br>%{y:.6g}<extra></extra>"))
for branch, colour, label in (("main", "darkorange", "inside a block's main branch"),
                              ("skip", "seagreen", "inside a projection skip")):
    inside = [(i, n) for i, n in enumerate(trace.nodes) if n.branch and n.branch[1] == branch]
    if inside:
        fig.add_trace(go.Scatter(x=[i for i, _ in inside], y=[n.total for _, n in inside], mode="markers",
                                 name=label, marker={"size": 5, "color": colour},
                                 text=[f"{n.name}<br>{branch} branch of {n.branch[0]}" for _, n in inside],
                                 hovertemplate="%{text}<br>%{y:.6g}<extra></extra>"))
fig.add_hline(y=trace.start, line_dash="dash", annotation_text=f"start {trace.start:.4g}")
fig.update_layout(xaxis_title="node (output → input)", yaxis_title="relevance total", height=380,
                  margin={"t": 30, "b": 40})
st.plotly_chart(fig, key="conservation_nodes")
if any(n.branch for n in trace.nodes):
    st.caption("Inside a residual block the relevance splits: nodes on the main branch (orange) carry only the "
               "main branch's share and nodes on a projection skip (green) only the skip's, so the line dips "
               "there by design. Only the checkpoints (red) carry the whole relevance; compare those with the "
               "start value.")
st.dataframe(
    [{"checkpoint": name, "total": total, "relative error": err} for name, total, err in trace.checkpoint_errors()],
    hide_index=True,  # errors of 1e-7 in scientific notation ("-0.00000007" was hard to read), totals to 6 places
    column_config={"total": st.column_config.NumberColumn(format="%.6g"),
                   "relative error": st.column_config.NumberColumn(format="%.1e")},
)

# --------------------------------------------------------------------------- 2. skip vs main per block
if trace.blocks:
    st.subheader("Skip vs main branch, per residual block")
    blocks = [b.name + (" (id)" if b.identity else " (proj)") for b in trace.blocks]
    bar = go.Figure()
    bar.add_trace(go.Bar(x=blocks, y=[b.skip for b in trace.blocks], name="skip connection"))
    bar.add_trace(go.Bar(x=blocks, y=[b.main for b in trace.blocks], name="main branch"))
    bar.update_layout(barmode="stack", yaxis_title="relevance", height=360, margin={"t": 30, "b": 40})
    st.plotly_chart(bar, key="conservation_blocks")
    st.caption("'id' = identity skip, 'proj' = projection (downsample) skip. Try residual = symmetric / ratio and "
               "include identity on / off in the method options (paper Table 2, rows i-iv).")
else:
    st.caption("This model has no residual blocks.")

# --------------------------------------------------------------------------- 3. Fig. 7 over the gallery
st.subheader("Conservation over images (paper Fig. 7)")
st.caption("Start = predicted probability of each image's top class; totals at the input, the first residual "
           "block's input and the last block's input. On y = x, relevance is conserved.")
compute = sweep_options(method, options)  # display-only options are not part of it: moving them never reruns


@st.cache_resource
def _sweeps() -> ByteLRU:
    """Finished Fig. 7 sweeps for the server (16 at most; each holds a few numbers per image).

    Not st.cache_data around the sweep: that records the Streamlit calls made inside the cached function and
    replays them on a hit, and the sweep's progress updates go to a bar made outside it, so every hit after
    the first visit raised CacheReplayClosureError (and the bar stayed).  This cache records nothing; a sweep
    interrupted by a rerun stores nothing."""
    return ByteLRU(64 * 2**20, max_entries=16)


def cached_sweep(model_key: str, method_: str, compute_json: str, image_keys: tuple[str, ...],
                 bundle_, images_: list) -> Sweep:
    """The Fig. 7 sweep, keyed by what it depends on: model, method, compute options, the images' hashes."""
    return _sweeps().get_or_compute((model_key, method_, compute_json, image_keys),
                                    lambda: conservation_sweep(bundle_, images_, method_, json.loads(compute_json)))


images, keys = [], []
for name, data in common.gallery_images() + list(common.session_uploads().values()):
    try:
        images.append((name, common.decode(data, name)))
        keys.append(image_hash(data))
    except Exception as exc:  # noqa: BLE001 - an unreadable upload is skipped, not fatal
        common.show_error(exc)
bar = st.progress(0.0, text="Propagating over the gallery ...")
try:
    with progress_callback(lambda f, t: bar.progress(f, text=t or "...")):
        sweep = cached_sweep(ctx.model_key, method, json.dumps(compute, sort_keys=True), tuple(keys),
                             bundle, images)
except Exception as exc:  # noqa: BLE001 - shown as a friendly message; the page stays usable
    common.show_error(exc)
    st.stop()
bar.empty()
for name, reason in sweep.skipped:
    st.warning(f"{name}: {reason}")
points = [(p.name, p.probability, p.input, p.first_block, p.last_block) for p in sweep.points]
scatter = go.Figure()
for col, label in ((2, "input"), (3, "first block input"), (4, "last block input")):
    pts = [p for p in points if p[col] == p[col]]  # drop NaN (no residual blocks)
    if pts:
        scatter.add_trace(go.Scatter(x=[p[1] for p in pts], y=[p[col] for p in pts], mode="markers", name=label,
                                     text=[p[0] for p in pts], hovertemplate="%{text}<br>p=%{x:.4f}, R=%{y:.4f}"))
scatter.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="y = x", line={"dash": "dot", "color": "gray"}))
scatter.update_layout(xaxis_title="predicted probability", yaxis_title="relevance total", height=420,
                      margin={"t": 30, "b": 40})
st.plotly_chart(scatter, key="conservation_fig7")
