"""The view in the URL: model, image (a gallery picture or a registered dataset's image), target class and methods
are kept in the query string, so a reload or a link sent to a colleague reopens the same view.  The page itself is
the URL's path (``st.navigation`` puts it there: ``/srd_explorer?model=...``).

Read once, on a session's first run; every value is checked against what is registered (model names, gallery
keys, registered dataset names and the image names *listed* in them, method ids, class indices), so a URL can
never make the server open a path: a value that is not registered is ignored with one warning line.  Uploads have
no URL: their view keeps only the model and methods.  Written after every run, setting only the keys that changed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import streamlit as st

KEYS = ("model", "image", "dataset", "target", "methods")
_READ = "link_read"  # session flag: the URL has been applied
_METHODS = "link_methods"  # the link's methods: the first default of every methods picker this session
_TARGET = "link_target"  # the link's class index, applied by the target picker once top-5 is known


@dataclass
class Parsed:
    """What a link asks for, validated: sidebar widget values, the target and methods to apply later, and one
    line per ignored value."""

    state: dict[str, Any] = field(default_factory=dict)
    target: int | None = None
    methods: list[str] | None = None
    problems: list[str] = field(default_factory=list)


def _shown(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:40] + "...")


def parse(params: Mapping[str, str], models: list[str], gallery: list[str], datasets: list[str],
          methods: list[str], dataset_state: Callable[[str, str], dict[str, Any]]) -> Parsed:
    """Validate a query string's values against the registered names (pure: no Streamlit, no files).

    ``dataset_state(name, image)`` gives the sidebar values that pick ``image`` of registered dataset ``name``
    and raises ``KeyError`` when the dataset lists no such image (the name is only looked up in its listing).
    """
    out = Parsed()
    model = params.get("model")
    if model is not None:
        if model in models:
            out.state["model"] = model
        else:
            out.problems.append(f"unknown model {_shown(model)}")
    image, dataset = params.get("image"), params.get("dataset")
    if dataset is not None:
        if dataset not in datasets:
            out.problems.append(f"unknown dataset {_shown(dataset)}")
        elif image is None:
            out.problems.append(f"no image named for dataset {_shown(dataset)}")
        else:
            try:
                out.state.update(dataset_state(dataset, image))
            except KeyError:
                out.problems.append(f"{dataset} has no image {_shown(image)}")
    elif image is not None:
        if image in gallery:
            out.state.update(image_source="Gallery", gallery=image)
        else:
            out.problems.append(f"unknown gallery image {_shown(image)}")
    target = params.get("target")
    if target is not None:
        if target.strip().isdigit() and len(target.strip()) < 7:
            out.target = int(target)
        else:
            out.problems.append(f"target {_shown(target)} is not a class index")
    chosen = params.get("methods")
    if chosen is not None:
        ids = [m for m in chosen.split(",") if m]
        unknown = [m for m in ids if m not in methods]
        if unknown:
            out.problems.append(f"unknown method{'s' if len(unknown) > 1 else ''} "
                                + ", ".join(_shown(m) for m in unknown))
        out.methods = list(dict.fromkeys(m for m in ids if m in methods))
    return out


def warn(problems: list[str]) -> None:
    if problems:
        st.warning("This link's " + "; ".join(problems) + ": ignored.", icon=":material/link_off:")


def read_once(models: list[str], datasets: list[str]) -> None:
    """On the session's first run: apply the URL's view to the sidebar's widgets (before they are drawn)."""
    if st.session_state.get(_READ):
        return
    st.session_state[_READ] = True
    params = {k: st.query_params.get(k) for k in KEYS if k in st.query_params}
    if not params:
        return
    from explainers import METHODS, ExplainerError
    from explainers.dataset_view import compare_state
    from explainers.images import GALLERY
    from views import sources

    def dataset_state(name: str, image: str) -> dict[str, Any]:
        try:
            listing = sources.listed(name)
        except ExplainerError as exc:  # the dataset cannot be listed now: treated as not having the image
            raise KeyError(image) from exc
        return compare_state(listing, image, sources.PAGE_SIZE)

    parsed = parse(params, models, list(GALLERY), datasets, list(METHODS), dataset_state)
    st.session_state.update(parsed.state)
    if parsed.target is not None:
        st.session_state[_TARGET] = parsed.target
    if parsed.methods is not None:
        st.session_state[_METHODS] = parsed.methods
    warn(parsed.problems)


def pending_target(n_classes: int) -> int | None:
    """The link's target class, once (None when there is none or it is out of range, with a warning)."""
    target = st.session_state.pop(_TARGET, None)
    if target is not None and not 0 <= target < n_classes:
        warn([f"target {target} is not one of this model's {n_classes} classes"])
        return None
    return target


def default_methods() -> list[str] | None:
    return st.session_state.get(_METHODS)


def write(values: Mapping[str, str | None]) -> None:
    """Bring the URL's view keys to ``values`` (None: remove the key), touching only keys that changed."""
    qp = st.query_params
    for key, value in values.items():
        if value is None:
            if key in qp:
                del qp[key]
        elif qp.get(key) != value:
            qp[key] = value
