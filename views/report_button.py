"""The Compare page's "Report" popover: the maps on the page as a self-contained HTML file and a PDF
(explainers/report.py), so a result shown in a meeting can be reproduced later.

Nothing is built while the page reruns: the files are built when the user clicks "Build report", and kept in a
small server-wide cache keyed by everything the report shows, so a rerun (or a second session on the same maps)
costs a lookup.
"""

from __future__ import annotations

import json
from typing import Any

import streamlit as st

from explainers import Explanation
from explainers.cache import ByteLRU
from explainers.redact import public
from explainers.report import build_report, report_filename

MIME = {"html": "text/html", "pdf": "application/pdf"}


@st.cache_resource
def _cache() -> ByteLRU:
    """Built reports, shared by every session; a report of a few maps is about 0.5 MB per format."""
    return ByteLRU(64 * 2**20, max_entries=32)


def _builder(ctx, results: dict[str, Explanation], options: dict[str, dict[str, Any]], settings: dict[str, Any],
             kind: str, key: tuple):
    """A no-argument callable for ``st.download_button``: the report's bytes, built once per key."""
    cache = _cache()
    explanations = list(results.values())

    def build() -> bytes:
        report = build_report(ctx.bundle, ctx.image, explanations, image_name=ctx.image_name,
                              image_hash=ctx.image_hash, top5=ctx.top5, options=options, **settings)
        # a remote reader learns file names, never the server's folders (issue 17)
        report.model["weights source"] = public(report.model["weights source"])
        return report.html().encode("utf-8") if kind == "html" else report.pdf()

    return lambda: cache.get_or_compute((kind, *key), build)


def show(ctx, results: dict[str, Explanation], options: dict[str, dict[str, Any]], display: dict[str, Any]) -> None:
    """A "Report" popover with an HTML and a PDF download of the maps in ``results`` (method -> Explanation;
    ``options``: method -> the options set on the page, display-only ones included; ``display``: the page's
    display settings as :func:`explainers.report.build_report` takes them (view, opacity, clip, cmap, signed_cmap,
    and ``views``: each map's own view), so the report draws the maps as they were shown).

    Nothing is built until the user asks: "Build report" builds both files once (cached by everything they show);
    later reruns with the same maps and settings find them in the cache.  A deferred ``st.download_button``
    callable was tried first, but the Compare page then reran after every map download (the tiles' PNG buttons
    no longer rerun it), and a click that still held the previous run's callable id was refused by the server
    ("Deferred file ... not found").
    """
    if not results:
        return
    settings = dict(display)
    used = {m: options.get(m, {}) for m in results}
    key = (ctx.image_hash, ctx.model_key, ctx.target, ctx.image_name,
           json.dumps(used, sort_keys=True, default=str), json.dumps(settings, sort_keys=True, default=str))
    name = ctx.bundle.name
    with st.popover("Report", icon=":material/description:",
                    help="Every map on this page with its method, options and seconds, the model (fingerprint, "
                         "trained or not), the top-5 and the library versions: to reproduce it later."):
        st.caption(f"{len(results)} map(s) of {ctx.image_name} on {ctx.bundle.label}")
        ready = all((kind, *key) in _cache() for kind in MIME)
        if not ready and not st.button("Build report", key="report_build", icon=":material/build:"):
            return
        for kind, label in (("html", "HTML report"), ("pdf", "PDF report")):
            st.download_button(label, _builder(ctx, results, used, settings, kind, key)(),
                               file_name=report_filename(ctx.image_hash, name, kind), mime=MIME[kind],
                               on_click="ignore", key=f"report_{kind}", icon=":material/download:")
