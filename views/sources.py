"""Where images and models come from in the app: the zoo plus the project file's models, and registered datasets
(paged, with a thumbnail strip and filters by true and predicted class).

Security: the browser only ever picks *names* registered in relevance-explorer.toml (or uploads files).  A typed
server path is accepted only when the app was started with ``--allow-server-paths`` (``streamlit run app.py --
--allow-server-paths``, or ``RELEVANCE_EXPLORER_ALLOW_SERVER_PATHS=1``), so a remote user cannot list or read
files outside the registered datasets.
"""

from __future__ import annotations

import io
import os
import sys
from dataclasses import dataclass

import streamlit as st
import torch

import explainers
from explainers import ExplainerError
from explainers.datasets import Dataset, open_dataset, open_registered, registered_datasets

PAGE_SIZE = 8
THUMB = 96  # px, longer side
ALLOW_FLAG = "--allow-server-paths"
ALLOW_ENV = "RELEVANCE_EXPLORER_ALLOW_SERVER_PATHS"


def server_paths_allowed() -> bool:
    """Typed server paths are allowed only when the server was started with the explicit flag."""
    return ALLOW_FLAG in sys.argv or os.environ.get(ALLOW_ENV, "").strip().lower() in ("1", "true", "yes")


def _config_key() -> str:
    """Which project file applies now (the caches below are per file, and re-read every 30 s)."""
    from explainers.config import find_config

    try:
        found = find_config()
    except ExplainerError as exc:
        return f"error:{exc}"
    return f"{found}:{found.stat().st_mtime_ns}" if found is not None and found.exists() else ""


def project_models() -> dict[str, bool]:
    """Models of relevance-explorer.toml: name -> whether it names a checkpoint."""
    return _project_models(_config_key())


def dataset_names() -> list[str]:
    return _dataset_names(_config_key())


@st.cache_data(ttl=30, show_spinner=False)
def _project_models(config_key: str) -> dict[str, bool]:
    from explainers.config import load_config

    try:
        return {name: e.checkpoint is not None for name, e in load_config().models.items()}
    except ExplainerError:
        return {}


@st.cache_data(ttl=30, show_spinner=False)
def _dataset_names(config_key: str) -> list[str]:
    try:
        return registered_datasets()
    except ExplainerError:
        return []


def listed(name: str) -> Dataset:
    """The listing of a registered dataset (no decoding); re-listed after 5 minutes or when the file changes."""
    return _listed(name, _config_key())


@st.cache_data(max_entries=8, ttl=300, show_spinner=False)
def _listed(name: str, config_key: str) -> Dataset:
    return open_registered(name)


@st.cache_data(max_entries=8, ttl=300, show_spinner=False)
def listed_path(path: str) -> Dataset:
    """A typed folder or manifest (only reachable with ``--allow-server-paths``)."""
    return open_dataset(path)


@st.cache_data(max_entries=512, show_spinner=False)
def thumbnail(path: str, mtime: float) -> bytes | None:
    """A small PNG of one file (None when it cannot be decoded); cached per file version."""
    from explainers.images import load_image

    try:
        image = load_image(path, name=os.path.basename(path))
    except ExplainerError:
        return None
    image.thumbnail((THUMB, THUMB))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def predictions(bundle: explainers.ModelBundle, dataset: Dataset, model_key: str) -> dict[str, int] | None:
    """Each file's predicted class, once the user asked for them (computed in batches with a progress bar,
    kept for the session per weights fingerprint and file list)."""
    cache = st.session_state.setdefault("dataset_predictions", {})
    key = (model_key, dataset.name, len(dataset), dataset.samples[0].name if len(dataset) else "")
    if key in cache:
        return cache[key]
    if not st.button(f"Predict all {len(dataset)} images", key=f"predict_{dataset.name}",
                     help="Runs the model over the dataset (in batches) so you can filter by predicted class."):
        return None
    bar = st.progress(0.0, text="Predicting ...")
    out: dict[str, int] = {}
    done = 0
    for batch in dataset.batches(16):
        if batch.images:
            x = torch.cat([bundle.preprocess(im) for im in batch.images])
            with torch.no_grad():
                top = bundle.predict(x).argmax(-1).tolist()
            out.update({s.name: int(t) for s, t in zip(batch.samples, top)})
        done += len(batch.samples) + len(batch.failures)
        bar.progress(min(done / max(len(dataset), 1), 1.0), text=f"Predicting {done}/{len(dataset)}")
    bar.empty()
    cache[key] = out
    while len(cache) > 4:
        cache.pop(next(iter(cache)))
    return out


@dataclass
class Picked:
    """An image picked from a dataset."""

    data: bytes
    name: str
    true_label: str | None
    dataset: str


def choose_dataset(key: str, label: str = "Dataset") -> Dataset | None:
    """A registered dataset (or, with ``--allow-server-paths``, a typed folder / manifest), listed lazily."""
    names = dataset_names()
    typed = server_paths_allowed()
    if not names and not typed:
        st.info("No dataset registered. Add a [datasets.NAME] table to relevance-explorer.toml "
                "(see the README, \"Your own model and data\").", icon=":material/info:")
        return None
    options = names + (["(a folder or manifest on the server)"] if typed else [])
    choice = st.selectbox(label, options, key=key)
    try:
        if typed and choice == options[-1]:
            path = st.text_input("Folder or manifest on the server", key=f"{key}_path")
            return listed_path(path.strip()) if path.strip() else None
        return listed(choice)
    except ExplainerError as exc:
        st.error(str(exc), icon=":material/error:")
        return None


def dataset_image(bundle: explainers.ModelBundle, model_key: str) -> Picked | None:
    """The sidebar's dataset source: filters by true / predicted class, pages of ``PAGE_SIZE`` files with
    thumbnails (only the shown page is decoded), and a pick."""
    dataset = choose_dataset("ds_name")
    if dataset is None:
        return None
    if not len(dataset):
        st.info(f"{dataset.name} has no images.")
        return None
    view = dataset
    if dataset.labelled:
        true = st.selectbox("True class", ["(all)", *dataset.classes], key="ds_true")
        if true != "(all)":
            view = dataset.filter(true)
    predicted = predictions(bundle, view, model_key)
    if predicted is not None:
        classes = sorted({predicted[s.name] for s in view.samples if s.name in predicted})
        pick = st.selectbox("Predicted class", ["(all)", *classes], key="ds_pred",
                            format_func=lambda c: c if c == "(all)" else bundle.class_names[c])
        if pick != "(all)":
            view = Dataset(view.name, view.root, view.kind, [s for s in view.samples if predicted.get(s.name) == pick],
                           view.truncated, view.mapping)
    if not len(view):
        st.info("No image matches these filters.")
        return None
    pages = (len(view) - 1) // PAGE_SIZE + 1
    page = int(st.number_input(f"Page (of {pages}; {len(view)} images)", 1, pages, 1, key="ds_page")) - 1
    shown = view.page(page * PAGE_SIZE, PAGE_SIZE)
    cols = st.columns(4)
    for i, s in enumerate(shown):
        try:
            thumb = thumbnail(str(s.path), s.path.stat().st_mtime)
        except OSError:
            thumb = None
        with cols[i % 4]:
            if thumb is None:
                st.caption(f"{i + 1}: unreadable")
            else:
                st.image(thumb, caption=str(i + 1), width="stretch")
    names = [s.name for s in shown]
    chosen = st.selectbox("Image", range(len(shown)), key="ds_pick",
                          format_func=lambda i: f"{i + 1}: {names[i]}" + (f" ({shown[i].label})" if shown[i].label
                                                                          else ""))
    sample = shown[min(chosen, len(shown) - 1)]
    data, failures = dataset.read([sample])
    if failures:
        st.error(failures[0][1], icon=":material/error:")
        return None
    return Picked(data[0][1], sample.name, sample.label, dataset.name)
