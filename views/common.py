"""What every page shares: the sidebar (device, model, image, target), cached model
loading, cached explanations, option widgets built from a method's spec, and
friendly error display.  Pages stay thin: they read widgets, call these helpers
and ``explainers``, and render.
"""

from __future__ import annotations

import gc
import json
import os
import sys
from dataclasses import dataclass
from typing import Any

import streamlit as st
import torch
from PIL import Image

import explainers
from explainers import ExplainerError, Explanation, MethodSpec, Option
from explainers.cache import ByteLRU
from explainers.classes import find_classes, resolve_target, short_name
from explainers.images import GALLERY, image_hash, load_image
from explainers.models import DEFAULT_MODEL, MODEL_SPECS, available_devices
from explainers.redact import public
from views import link

if gc.isenabled():  # (paused: scripts/serve.py's warm-up is importing this; it freezes them itself afterwards)
    # Once per process, after the imports above (Streamlit, torch, torchvision, explainers: ~480,000 objects that
    # live as long as the server): collect once, then keep them out of every later full pass.  Streamlit runs a
    # full pass after every script run (runner.postScriptGC): 0.17 s per rerun over them, ~5 ms once frozen.
    gc.collect()
    gc.freeze()

UNTRAINED = "untrained (architecture only)"
DEFAULT_METHODS = ("gradcam",)  # what Compare (and every methods picker) starts with


@dataclass
class Context:
    """The current selection, as every page sees it."""

    bundle: explainers.ModelBundle
    model_key: str  # weights fingerprint|device: part of every cache key (never a display name)
    image: Image.Image  # the decoded RGB image (original size)
    image_name: str
    image_hash: str
    x: torch.Tensor  # 1x3xHxW normalised, on the bundle's device
    display: Image.Image  # the resized + cropped image the model sees
    top5: list[tuple[int, str, float]]
    target: int  # class to explain
    true_label: str | None = None  # when the image comes from a labelled dataset
    dataset: str | None = None


# --------------------------------------------------------------------------- caches


@st.cache_resource(max_entries=4, show_spinner="Loading model ...")
def get_bundle(name: str, weights: str, device: str) -> explainers.ModelBundle:
    """One model per (name, weights, device), shared by every session: read-only use is lock-free and
    hook-registering methods run on private views (see explainers/guard.py)."""
    return explainers.load_model(name, device=device, weights=weights)


@st.cache_data(max_entries=4, ttl=60)
def model_table() -> list[dict[str, Any]]:
    return [r.__dict__ for r in explainers.list_models()]


@st.cache_data(max_entries=32, max_size="256MB")  # bytes, not only entries: one 50 MP upload decodes to 150 MB
def decode(data: bytes, name: str) -> Image.Image:
    return load_image(data, name=name)


@st.cache_resource
def _prepared_inputs() -> ByteLRU:
    """Decoded images and what the model sees of them, for the server (256 MB, 16 entries)."""
    return ByteLRU(256 * 2**20, max_entries=16)


def prepared_input(data: bytes, name: str, ihash: str, bundle: explainers.ModelBundle,
                   model_key: str) -> tuple[Image.Image, torch.Tensor, Image.Image]:
    """(decoded image, model input x, the resized and cropped picture the maps are drawn over), once per image,
    model and preprocessing: every rerun (a display change, a page switch) used to decode the file again
    through st.cache_data (which unpickles a copy per hit: 75 MB for a 25 MP upload) and resize it twice.
    Read-only: no method changes its input in place.  A file that fails to decode is not kept."""
    def make() -> tuple[Image.Image, torch.Tensor, Image.Image]:
        image = load_image(data, name=name)
        return (image, *bundle.prepare(image))

    return _prepared_inputs().get_or_compute((ihash, model_key, repr(bundle.prep)), make)


MAP_CACHE_MB = int(os.environ.get("RELEVANCE_EXPLORER_MAP_CACHE_MB", "256"))


@st.cache_resource
def map_cache() -> ByteLRU:
    """One byte-bounded map cache for the server (explainers/cache.py), shared by every session."""
    return ByteLRU(MAP_CACHE_MB * 2**20)


def cached_explanation(image_key: str, model_key: str, method: str, target: int, options_json: str,
                       _bundle: explainers.ModelBundle, _x: torch.Tensor) -> Explanation:
    """Relevance is computed once per image hash + model + method + target + options.

    Display-only controls (opacity, colormap, quantisation bins) are not part of
    the key, so moving them re-renders from this cached raw map.  The cache is bounded in bytes
    (not st.cache_data: that pickles a copy per hit and counted only entries) and shares one
    read-only result between sessions; sessions asking for the same map at once compute it once.
    """
    return map_cache().get_or_compute(
        (image_key, model_key, method, target, options_json),
        lambda: explainers.explain(_bundle, _x, method, target=target, **json.loads(options_json)))


def explanation(ctx: Context, method: str, options: dict[str, Any], target: int | None = None) -> Explanation:
    """The cached explanation; display-only options (e.g. ``bins``) are left out of the key."""
    compute, _ = explainers.get_method(method).split_options(options)
    return cached_explanation(ctx.image_hash, ctx.model_key, method, ctx.target if target is None else target,
                              json.dumps(compute, sort_keys=True), _bundle=ctx.bundle, _x=ctx.x)


# --------------------------------------------------------------------------- widgets


def option_widget(opt: Option, key: str) -> Any:
    """One widget for one option, derived from its spec (so new methods need no page code)."""
    label = opt.name.replace("_", " ")
    if opt.kind == "bool":
        return st.checkbox(label, value=bool(opt.default), help=opt.help, key=key)
    if opt.kind == "choice":
        return st.selectbox(label, opt.choices, index=list(opt.choices).index(opt.default), help=opt.help, key=key)
    if opt.kind == "int" and opt.display and opt.min is not None and opt.max is not None:
        # display-only controls (e.g. heat-quantisation bins) are sliders: moving them only re-renders
        return int(st.slider(label, int(opt.min), int(opt.max), int(opt.default), int(opt.step or 1), help=opt.help,
                             key=key))
    if opt.kind == "int":
        return int(st.number_input(label, min_value=int(opt.min) if opt.min is not None else None,
                                   max_value=int(opt.max) if opt.max is not None else None,
                                   value=int(opt.default), step=int(opt.step or 1), help=opt.help, key=key))
    if opt.kind == "float":
        return float(st.number_input(label, min_value=opt.min, max_value=opt.max, value=float(opt.default),
                                     step=opt.step, format="%g", help=opt.help, key=key))
    return st.text_input(label, value=str(opt.default), help=opt.help, key=key)


def option_widgets(spec: MethodSpec, key_prefix: str) -> dict[str, Any]:
    return {o.name: option_widget(o, f"{key_prefix}:{spec.id}:{o.name}") for o in spec.options}


def method_picker(bundle: explainers.ModelBundle, key: str,
                  default: tuple[str, ...] = DEFAULT_METHODS) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The methods multiselect plus one options panel per chosen method (widgets from each spec).

    Methods the current model does not support are offered nowhere; ones picked earlier for another model
    are dropped with a note, so switching models never leaves a stale selection behind.
    """
    from explainers import METHODS, methods_for

    ids = [m.id for m in methods_for(bundle)]
    kept = st.session_state.setdefault("methods_kept", {})
    if key not in st.session_state and key in kept:  # Streamlit dropped the widget on another page: restore it
        st.session_state[key] = kept[key]
    if key in st.session_state:
        dropped = [m for m in st.session_state[key] if m not in ids]
        st.session_state[key] = [m for m in st.session_state[key] if m in ids]
        if dropped:
            st.info(f"Not available for {bundle.label}, so removed: "
                    f"{', '.join(METHODS[m].name for m in dropped)}.", icon=":material/info:")
    first = default if link.default_methods() is None else link.default_methods()  # a link's: every picker's
    if key not in st.session_state and [m for m in first if m not in ids]:
        st.info(f"Not available for {bundle.label}, so not chosen: "
                f"{', '.join(METHODS[m].name for m in first if m not in ids)}.", icon=":material/info:")
    chosen = st.multiselect("Methods", ids, default=None if key in st.session_state else
                            [m for m in first if m in ids], key=key, format_func=lambda m: METHODS[m].name)
    kept[key] = list(chosen)
    st.session_state["link_methods_shown"] = ",".join(chosen)  # pages without a picker keep these in their URL
    link.write({"methods": st.session_state["link_methods_shown"]})
    unsupported = [m for m in METHODS.values() if m.id not in ids]
    if unsupported:
        with st.expander(f"Not available for {bundle.label}: {len(unsupported)} methods"):
            for m in unsupported:
                st.caption(m.why_unsupported(bundle))
    options: dict[str, dict[str, Any]] = {}
    if chosen:
        with st.expander("Method options", expanded=False):
            cols = st.columns(min(len(chosen), 3))
            for i, method in enumerate(chosen):
                with cols[i % len(cols)]:
                    st.markdown(f"**{METHODS[method].name}**")
                    options[method] = option_widgets(METHODS[method], key)
    return chosen, options


def untrained_warning(bundle: explainers.ModelBundle, what: str = "These maps explain") -> None:
    if not bundle.trained:
        st.warning(f"{bundle.label}: random weights. {what} an untrained network.", icon=":material/science:")


def show_error(exc: Exception) -> None:
    """A user-caused error as a friendly message; anything else as a short error with details folded."""
    # public(): a remote browser sees file names, never the server's absolute paths
    if isinstance(exc, ExplainerError):
        st.error(public(str(exc)), icon=":material/error:")
    else:
        st.error(public(f"Something went wrong: {type(exc).__name__}: {exc}"), icon=":material/bug_report:")


# --------------------------------------------------------------------------- sidebar


def _fail(exc: Exception) -> None:
    """Show a sidebar problem in the sidebar and remember that there was one (the page's main area says where)."""
    show_error(exc)
    st.session_state["ctx_problem"] = True
    return None


def _model_label(row: dict[str, Any]) -> str:
    return row["name"] + ("" if row["available"] else "  (weights missing)")


# The sidebar's widgets live in the page scripts, and Streamlit forgets a page's widget values when the user
# switches pages; their values are copied to plain session keys after every run and restored before the next,
# so model, device, image and target follow the user across pages.
SIDEBAR_KEYS = ("device", "model", "weights_choice", "image_source", "gallery", "ds_name", "ds_true", "ds_pred",
                "ds_page", "ds_pick", "target_mode", "target_top5", "target_query", "target_match")
_KEPT = "sidebar_kept"


def _restore_sidebar() -> None:
    """After a page switch (or when a value was dropped), the last run's sidebar values come back; within one
    page the widgets' own state wins, so a user's change is never overwritten."""
    kept = st.session_state.get(_KEPT, {})
    switched = kept.get("_page") != st.session_state.get("sidebar_page")
    for key, value in kept.items():
        if key != "_page" and (switched or key not in st.session_state):
            st.session_state[key] = value


def set_sidebar(**values: Any) -> None:
    """Set sidebar values from a page (e.g. "open this dataset image in Compare") so that they survive the page
    switch that follows."""
    st.session_state.update(values)
    st.session_state.setdefault(_KEPT, {}).update(values)


def _keep_sidebar() -> None:
    kept = {k: st.session_state[k] for k in SIDEBAR_KEYS if k in st.session_state}
    kept["_page"] = st.session_state.get("sidebar_page")
    st.session_state[_KEPT] = kept


def sidebar() -> Context | None:
    """Render the shared sidebar and store the resulting :class:`Context` for the page."""
    _restore_sidebar()
    try:
        return _sidebar()
    finally:
        _keep_sidebar()


def _sidebar() -> Context | None:
    st.session_state["ctx"] = None
    st.session_state["ctx_problem"] = False
    with st.sidebar:
        st.header("Relevance Explorer")
        devices = available_devices()
        device = st.selectbox("Device", devices, key="device", help="cuda when a GPU is present, else cpu")

        from views import sources

        rows = {r["name"]: r for r in model_table()}
        project = sources.project_models()  # relevance-explorer.toml's models, next to the zoo
        rows.update({n: {"name": f"{n} (project)", "available": ckpt, "where": ""} for n, ckpt in project.items()})
        names = list(MODEL_SPECS) + [n for n in project if n not in MODEL_SPECS]
        link.read_once(names, sources.dataset_names())  # a session's first run: the URL's view, validated
        name = st.selectbox("Model", names, index=names.index(DEFAULT_MODEL), key="model",
                            format_func=lambda n: _model_label(rows[n]))
        row = rows[name]
        weights = "default"
        if not row["available"] and (name not in MODEL_SPECS or MODEL_SPECS[name].source != "embedded"):
            if name in MODEL_SPECS:
                st.warning(f"No trained weights for {name} on this machine (expected at `{public(row['where'])}`; "
                           "a download is tried when online).", icon=":material/warning:")
            else:
                st.warning(f"{name}: relevance-explorer.toml names no checkpoint for it.", icon=":material/warning:")
            choice = st.radio("Weights", ["try trained weights", UNTRAINED], key="weights_choice", index=1)
            weights = "untrained" if choice == UNTRAINED else "default"
        try:
            bundle = get_bundle(name, weights, device)
        except ExplainerError as exc:
            return _fail(exc)
        if not bundle.trained:
            st.error("UNTRAINED model: random weights, architecture only. Its predictions and maps "
                     "say nothing about a trained network.", icon=":material/science:")
        else:
            st.caption(f"Weights: {public(bundle.weights_source)}")

        kinds = ["Gallery", "Upload"] + (["Dataset"] if sources.dataset_names() or sources.server_paths_allowed()
                                         else [])
        source = st.radio("Image", kinds, horizontal=True, key="image_source")
        true_label = dataset = None
        url_image: dict[str, str | None] = {"image": None, "dataset": None}  # an upload has no URL
        if source == "Dataset":
            picked = sources.dataset_image(bundle, f"{bundle.fingerprint}|{device}")
            if picked is None:
                return None
            data, image_name, true_label, dataset = picked.data, picked.name, picked.true_label, picked.dataset
            if dataset in sources.dataset_names():  # registered by name (a typed server path is never put in a URL)
                url_image = {"image": picked.name, "dataset": dataset}
            remember = False
        elif source == "Upload":
            upload = st.file_uploader("Upload an image", type=None, key="upload",
                                      help="PNG, JPEG, WebP, BMP, TIFF or GIF; up to 50 megapixels")
            if upload is not None:
                data, image_name = upload.getvalue(), upload.name
                st.session_state["last_upload"] = (image_name, data)
            elif "last_upload" in st.session_state:  # the uploader is empty on another page: keep the image
                image_name, data = st.session_state["last_upload"]
                st.caption(f"Showing {image_name}, uploaded earlier in this session.")
            else:
                st.info("Upload an image, or pick one from the gallery.")
                return None
            remember = True
        else:
            keys = list(GALLERY)
            key = st.selectbox("Sample image", keys, key="gallery", format_func=lambda k: GALLERY[k].label)
            data, image_name = GALLERY[key].png_bytes(), f"{key}.png"
            url_image = {"image": key, "dataset": None}
            remember = False
        ihash = image_hash(data)
        try:
            image, x, display = prepared_input(data, image_name, ihash, bundle, f"{bundle.fingerprint}|{device}")
        except ExplainerError as exc:
            return _fail(exc)
        if remember:
            session_uploads()[ihash] = (image_name, data)

        top5 = bundle.topk(x, 5)
        if true_label is not None:
            _truth_caption(bundle, dataset, true_label, top5)
        target = _target_picker(bundle, top5)
        if target is None:
            return None
        ctx = Context(bundle=bundle, model_key=f"{bundle.fingerprint}|{device}", image=image, image_name=image_name,
                      image_hash=ihash, x=x, display=display, top5=top5, target=target,
                      true_label=true_label, dataset=dataset)
    # (a page switch clears the query string; a page without a methods picker keeps the last one's methods)
    link.write({"model": name, **url_image, "target": str(target) if url_image["image"] else None,
                **({"methods": st.session_state["link_methods_shown"]} if "link_methods_shown" in st.session_state
                   else {})})
    st.session_state["ctx"] = ctx
    return ctx


def _truth_caption(bundle: explainers.ModelBundle, dataset: str | None, true_label: str,
                   top5: list[tuple[int, str, float]]) -> None:
    """True label vs prediction, for an image of a labelled dataset."""
    from views import sources

    try:  # the cached listing: a rerun never lists the dataset again
        truth = sources.listed(dataset).targets(bundle.class_names).get(true_label) if dataset else None
    except ExplainerError as exc:
        st.warning(str(exc), icon=":material/warning:")
        return
    if truth is None:
        st.caption(f"True class: **{true_label}**")
    elif truth == top5[0][0]:
        st.success(f"True class **{true_label}**: predicted correctly.", icon=":material/check:")
    else:
        st.error(f"True class **{true_label}**, predicted **{short_name(top5[0][1])}**: wrong.",
                 icon=":material/close:")


def _target_picker(bundle: explainers.ModelBundle, top5: list[tuple[int, str, float]]) -> int | None:
    wanted = link.pending_target(len(bundle.class_names))  # a link's target: top-5 when it is there, else search
    if wanted is not None:
        if wanted in [i for i, _, _ in top5]:
            st.session_state.update(target_mode="Top-5", target_top5=wanted)
        else:
            st.session_state.update(target_mode="Search", target_query=str(wanted), target_match=wanted)
    mode = st.radio("Target class", ["Top-5", "Search"], horizontal=True, key="target_mode")
    if mode == "Top-5":
        options = [i for i, _, _ in top5]
        probs = {i: p for i, _, p in top5}
        return st.radio("Explain", options, key="target_top5",
                        format_func=lambda i: f"{short_name(bundle.class_names[i])}"
                        + ("" if probs.get(i) is None else f" ({probs.get(i):.1%})"))
    query = st.text_input("Class name or index", key="target_query", placeholder="e.g. espresso or 967")
    if not query.strip():
        st.info("Type a class name or index.")
        return None
    try:
        hits = [resolve_target(query, bundle.class_names)] if query.strip().isdigit() \
            else find_classes(query, bundle.class_names)
    except ExplainerError as exc:
        return _fail(exc)
    if not hits:
        st.error(f"No class matches {query!r}. Try a shorter part of the name.", icon=":material/error:")
        return None
    return st.selectbox("Matches", hits[:50], key="target_match",
                        format_func=lambda i: f"{i}: {bundle.class_names[i]}")


def session_uploads() -> dict[str, tuple[str, bytes]]:
    """Images uploaded (and decoded fine) in this browser session: hash -> (name, bytes).

    Bounded to the 32 most recent so a long session does not grow without limit.
    """
    uploads = st.session_state.setdefault("uploads", {})
    while len(uploads) > 32:
        uploads.pop(next(iter(uploads)))
    return uploads


def gallery_images() -> list[tuple[str, bytes]]:
    return [(f"{k}.png", item.png_bytes()) for k, item in GALLERY.items()]


def current() -> Context | None:
    """The context of this run, once :func:`require_context` has drawn the sidebar."""
    return st.session_state.get("ctx")


def require_context() -> Context:
    """Draw the shared sidebar and return its context; stop the page with a hint when incomplete."""
    # which page script is running (the caller): the sidebar restores its values when this changes
    st.session_state["sidebar_page"] = sys._getframe(1).f_globals.get("__file__", "")
    ctx = sidebar()
    if ctx is None:
        if st.session_state.get("ctx_problem"):  # its message is in the sidebar, beside the choice: said once
            st.warning("Nothing to show yet: a choice in the sidebar could not be used (the message is there). "
                       "The rest of the app still works: pick another file, a gallery image or another model.",
                       icon=":material/arrow_back:")
        else:
            st.info("Choose a model, an image and a target class in the sidebar.")
        st.stop()
    return ctx
