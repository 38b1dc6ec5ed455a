"""Failure review (resnet-lrp App. D.4): rank images by ID score, look at the worst, label them IA / OA / WA."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from explainers import METHODS, ExplainerError, methods_for, render
from explainers.failures import (
    CATEGORIES,
    PAPER_THRESHOLD,
    RIGHT_LOW_ID,
    WRONG,
    TriageSettings,
    resuggest,
    table_d,
    table_d_by_class,
    triage,
    with_truth,
)
from explainers.images import load_image
from explainers.progress import progress_callback
from explainers.quality import quality_images
from explainers.redact import public
from explainers.store import MAX_NOTE, MAX_WHO, Store, default_db_path
from views import common, sources

LABEL_CHOICES = {"IA": "IA: Insufficiently Attended", "OA": "OA: Over-Attended", "WA": "WA: Wrongly Attended",
                 "none": "not a failure"}

ctx = common.require_context()
bundle = ctx.bundle
st.title("Failure review")
st.caption("resnet-lrp App. D.4: a map fails when its ID score (Insertion - Deletion) is not above the best "
           f"baseline's, {PAPER_THRESHOLD} there. Suggested categories come from the attributed area "
           "(pixels above half the map's maximum); you decide.")


@st.cache_resource(max_entries=4)
def _store(path: str) -> Store:
    return Store(path)


def store() -> Store:
    """One Store per database file (a changed RELEVANCE_EXPLORER_DB gets its own)."""
    return _store(str(default_db_path()))


def run_triage(key: tuple, images: list[tuple[str, bytes]], method: str, options: dict, settings: TriageSettings):
    """Triage results for this exact selection, kept in the session (the last 4) so moving
    between images or labelling never recomputes; a progress bar while it runs."""
    cache = st.session_state.setdefault("fr_cache", {})
    if key not in cache:
        bar = st.progress(0.0, text="Explaining and scoring ...")
        with progress_callback(lambda f, text: bar.progress(f, text=f"Explaining and scoring {text}")):
            cache[key] = triage(bundle, images, method, options, settings)
        bar.empty()
        while len(cache) > 4:
            cache.pop(next(iter(cache)))
    return cache[key]


methods = [m.id for m in methods_for(bundle)]
c1, c2 = st.columns([1, 2])
method = c1.selectbox("Method", methods, key="fr_method", format_func=lambda m: METHODS[m].name,
                      index=methods.index("resnet-lrp") if "resnet-lrp" in methods else 0)  # the paper's method
kinds = ["Gallery", "Uploads in this session", "Dataset"] + (["Folder"] if sources.server_paths_allowed() else [])
source = c2.radio("Images", kinds, horizontal=True, key="fr_source",
                  help="Dataset: a dataset registered in relevance-explorer.toml, with true labels. A folder on the "
                       "server can be typed only when the app was started with --allow-server-paths.")
with st.expander("Method options and thresholds"):
    options = common.option_widgets(METHODS[method], "fr")
    t1, t2, t3 = st.columns(3)
    threshold = t1.number_input("ID threshold (failure when ID <= this)", -1.0, 1.0, PAPER_THRESHOLD, 0.01,
                                key="fr_threshold")
    small = t2.slider("IA: attributed area below", 0.0, 1.0, 0.10, 0.01, key="fr_small")
    large = t3.slider("OA: attributed area above", 0.0, 1.0, 0.50, 0.01, key="fr_large")

dataset = None
unreadable: list[tuple[str, str]] = []
try:
    if source == "Gallery":
        images = common.gallery_images()
    elif source == "Uploads in this session":
        images = list(common.session_uploads().values())
    elif source == "Dataset":
        dataset = sources.choose_dataset("fr_dataset")
        images = []
        if dataset is not None and len(dataset):
            d1, d2 = st.columns(2)
            if dataset.labelled:
                cls = d1.selectbox("True class", ["(all)", *dataset.classes], key="fr_ds_class")
                dataset = dataset if cls == "(all)" else dataset.filter(cls)
            count = int(d2.number_input(f"Images (first N of {len(dataset)})", 1, max(len(dataset), 1),
                                        min(len(dataset), 24), key="fr_ds_count"))
            images, unreadable = dataset.read(dataset.page(0, count))
    else:  # only offered with --allow-server-paths
        folder = st.text_input("Folder with images", key="fr_folder", placeholder="/path/to/images")
        images = quality_images(Path(folder).expanduser(), limit=200) if folder.strip() else []
except (ExplainerError, OSError) as exc:
    common.show_error(exc)
    st.stop()
if not images:
    st.info("No images in this set yet: upload some in the sidebar, or type a folder.")
    st.stop()

settings = TriageSettings(threshold=threshold, small_area=small, large_area=large)
# Thresholds only change the suggestions (resuggest), so they are not part of the key.
key = (ctx.bundle.fingerprint, method, json.dumps(options, sort_keys=True), settings.pixels_per_step, settings.ties,
       tuple(common.image_hash(d) for _, d in images))
clicked = st.button(f"Review {len(images)} images with {METHODS[method].name}", key="fr_run", type="primary")
if not clicked and key not in st.session_state.get("fr_cache", {}):
    st.stop()
compute, _ = METHODS[method].split_options(options)
try:
    items = resuggest(run_triage(key, images, method, options, settings), settings)
    if dataset is not None and dataset.labelled:
        items = with_truth(items, dataset, bundle.class_names)
except ExplainerError as exc:
    common.show_error(exc)
    st.stop()
skipped = unreadable + list(items.skipped)
if skipped:
    st.warning(f"Skipped {len(skipped)} file(s) that could not be decoded: "
               + public("; ".join(f"{name}: {why}" for name, why in skipped[:10])), icon=":material/warning:")
if not items:
    st.info("None of these files could be decoded.")
    st.stop()

try:
    db = store()
except ExplainerError as exc:  # e.g. a database from before weights fingerprints, a locked or read-only file
    common.show_error(exc)
    st.stop()
if db.notice and not st.session_state.get("fr_notice_seen"):  # a damaged store was moved aside on open
    st.warning(public(db.notice), icon=":material/warning:")
    st.session_state["fr_notice_seen"] = True
# Labels and stored metrics belong to these exact weights, never to a display name (a second checkpoint
# of the same architecture must not inherit them).
model_name = bundle.fingerprint
labels = {(lab.image_hash, lab.target): lab for lab in db.current_labels(model=model_name, method=method)
          if lab.options == json.dumps(compute, sort_keys=True, separators=(",", ":"))}
table = pd.DataFrame([{**it.row(), "label": labels.get((it.image_hash, it.target)).label
                       if (it.image_hash, it.target) in labels else ""} for it in items])
n_fail = int(table["failure"].sum())
truth = dataset is not None and dataset.labelled
if truth:
    n_wrong = sum(it.kind == WRONG for it in items)
    n_low = sum(it.kind == RIGHT_LOW_ID for it in items)
    st.subheader(f"{n_wrong} wrong predictions, {n_low} right for the wrong reasons (ID <= {threshold:.3f}), "
                 f"of {len(items)}")
    f1, f2, f3 = st.columns(3)
    show_kind = f1.selectbox("Show", ["all", WRONG, RIGHT_LOW_ID, "right"], key="fr_kind")
    show_class = f2.selectbox("True class", ["(all)", *sorted({it.true_label or "" for it in items})],
                              key="fr_class")
    lo, hi = f3.slider("ID between", -1.0, 1.0, (-1.0, 1.0), 0.01, key="fr_id_range")
    keep = [(show_kind == "all" or it.kind == show_kind) and (show_class == "(all)" or it.true_label == show_class)
            and lo <= it.id_score <= hi for it in items]
    table = table[keep]
    items = [it for it, k in zip(items, keep) if k]
    if not items:
        st.info("No image matches these filters.")
        st.stop()
    columns = ["name", "true_label", "target_name", "correct", "kind", "id_score", "insertion", "deletion",
               "attributed_area", "suggestion", "label"]
else:
    st.subheader(f"{n_fail} of {len(items)} maps fail (ID <= {threshold:.3f})")
    columns = ["name", "target_name", "id_score", "insertion", "deletion", "attributed_area", "failure",
               "suggestion", "label"]
st.dataframe(table[columns], hide_index=True, width="stretch",
             column_config={"id_score": st.column_config.NumberColumn("ID", format="%.3f"),
                            "target_name": st.column_config.TextColumn("predicted" if truth else "target"),
                            "true_label": st.column_config.TextColumn("true"),
                            "attributed_area": st.column_config.NumberColumn("area", format="%.2f")})

names = [f"{it.name} · ID {it.id_score:.3f}" + (" · FAIL" if it.failure else "") for it in items]
pick = st.selectbox("Inspect", range(len(items)), key="fr_pick", format_func=lambda i: names[i])
item = items[pick]
raw_images = dict((common.image_hash(d), (n, d)) for n, d in images)
name, data = raw_images[item.image_hash]
shown = bundle.display_image(load_image(data, name=name))
spec = METHODS[method]
col_a, col_b, col_c = st.columns([1, 1, 2])
truth_note = f" · true {item.true_label} ({'right' if item.correct else 'wrong'})" if item.true_label else ""
col_a.image(shown, caption=f"{name}: {item.target_name} ({item.score:.1%}){truth_note}", width="stretch")
col_b.image(render.overlay(shown, spec.display_map(item.attribution, options), 0.5,
                           signed=spec.shown_signed(options)),
            caption=spec.name, width="stretch")
fig = go.Figure()
fig.add_scatter(x=item.fractions.numpy(), y=item.insertion_curve.numpy(), name=f"insertion {item.insertion:.3f}")
fig.add_scatter(x=item.fractions.numpy(), y=item.deletion_curve.numpy(), name=f"deletion {item.deletion:.3f}")
fig.update_layout(height=300, margin=dict(l=10, r=10, t=30, b=10), title=f"ID = {item.id_score:.3f}",
                  xaxis_title="fraction of pixels", yaxis_title="p(class)")
col_c.plotly_chart(fig, width="stretch")

if item.failure:
    st.warning(f"Suggested: **{item.suggestion} ({CATEGORIES[item.suggestion]})**. {item.reason}")
else:
    st.success(item.reason)
current = labels.get((item.image_hash, item.target))
if current:
    st.info(f"Current label: **{LABEL_CHOICES[current.label]}** by {current.who or 'someone'}"
            + (f" — {current.note}" if current.note else ""), icon=":material/label:")

item_key = f"{item.image_hash}_{item.target}"  # per-item widget keys: each image's form shows its own label
with st.form(key=f"fr_label_{item_key}"):
    choice = st.radio("Label", list(LABEL_CHOICES), horizontal=True, format_func=LABEL_CHOICES.get,
                      index=list(LABEL_CHOICES).index(current.label if current else
                                                      (item.suggestion if item.failure else "none")),
                      key=f"fr_label_choice_{item_key}")
    note = st.text_input("Note", value=current.note if current else "", key=f"fr_label_note_{item_key}",
                         max_chars=MAX_NOTE)
    # No default from the server (its OS user would be shown to every remote viewer): empty until typed.
    who = st.text_input("Your name", value=st.session_state.get("fr_who", ""), key=f"fr_label_who_{item_key}",
                        max_chars=MAX_WHO)
    if st.form_submit_button("Save label", key=f"fr_label_save_{item_key}"):
        st.session_state["fr_who"] = who
        try:
            db.add_label(item.image_hash, model_name, method, item.target, choice, note=note, who=who,
                         options=compute)
            db.put_results(item.image_hash, model_name, method, compute,
                           {"insertion": item.insertion, "deletion": item.deletion, "id": item.id_score,
                            "attributed_area": item.attributed_area}, image_name=item.name)
        except ExplainerError as exc:
            common.show_error(exc)
            st.stop()
        st.rerun()

st.subheader("Summary (as the paper's Table D)")
all_labels = db.current_labels(model=model_name)
if truth:
    per_class = table_d_by_class(items, [lab for lab in all_labels if lab.method == method])
    st.caption(f"Per true class, {METHODS[method].name}: failure kinds and your labels for the images shown")
    st.dataframe(pd.DataFrame(per_class).T.rename_axis("true class"), width="stretch")
counts = table_d(all_labels)
if counts:
    st.dataframe(pd.DataFrame(counts).T.rename_axis("method"), width="stretch")
    st.download_button("Export all labels with metrics (CSV)", db.labels_csv(model=model_name),
                       file_name="failure_labels.csv", mime="text/csv", key="fr_csv")
else:
    st.caption("No labels yet.")

with st.expander("Back up and restore labels"):  # issue 17: labels are the user's work; nothing is lost
    b1, b2 = st.columns(2)
    b1.download_button("Export every label (JSON, for restoring)", db.export_labels(fmt="json"),
                       file_name="failure_labels_backup.json", mime="application/json", key="fr_export_json")
    if b2.button("Back up the store now", key="fr_backup"):
        try:
            b2.success(f"Backup written: {db.backup().name}")
        except ExplainerError as exc:
            common.show_error(exc)
    restore = st.file_uploader("Import labels (merges: labels already here are not added twice)",
                               type=["json", "csv"], key="fr_import")
    if restore is not None and st.button("Import", key="fr_import_run"):
        try:
            added, present = db.import_labels(restore.getvalue(), name=restore.name)
            st.success(f"{added} label rows added, {present} already present.")
        except ExplainerError as exc:
            common.show_error(exc)
