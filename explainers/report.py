"""A stakeholder report: one self-contained HTML file (images embedded) and a PDF of the same content.

What a result shown in a meeting needs so that someone can reproduce it later: the input, every map with its
method, options and seconds, the model (name, weights fingerprint, trained or not), the top-5, and the versions
of the libraries that computed it.  Rendering only: the maps are the ``Explanation`` objects the caller already has.
"""

from __future__ import annotations

import base64
import html
import io
import platform
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

import numpy as np
from PIL import Image

from . import render
from .models import ModelBundle
from .registry import METHODS, Explanation

# Distributions whose versions decide the numbers in a map (PyPI names).
LIBRARIES = ("relevance-explorer", "torch", "torchvision", "timm", "grad-cam", "captum", "zennit", "numpy",
             "streamlit", "pillow", "matplotlib")


def library_versions() -> dict[str, str]:
    """PyPI name -> installed version ("not installed" where absent), plus Python itself."""
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


@dataclass
class ReportMap:
    """One rendered map and what produced it."""

    method: str  # method id
    name: str  # display name
    options: dict[str, Any]
    seconds: float
    target: int
    target_name: str
    score: float
    native_resolution: tuple[int, int] | None
    rgb: np.ndarray  # HxWx3 uint8, the map as drawn


@dataclass
class Report:
    title: str
    created: str  # ISO 8601, UTC
    image_name: str
    image_rgb: np.ndarray
    model: dict[str, Any]  # name, label, fingerprint, trained, weights source, device, input size
    top5: list[tuple[int, str, float]]
    maps: list[ReportMap]
    versions: dict[str, str] = field(default_factory=library_versions)

    def html(self) -> str:
        return _html(self)

    def pdf(self) -> bytes:
        return _pdf(self)


def draw_map(explanation: Explanation, image: Image.Image, size: tuple[int, int], opacity: float = 0.5,
             clip: float = 99.5, cmap: str | None = None) -> np.ndarray:
    """The map as the Compare page draws it: upsampled to the input, signed maps on their own with symmetric
    limits, positive maps over the image."""
    att = render.upsample(explanation.attribution, size)
    if explanation.signed:
        return render.colorize(att, signed=True, cmap=cmap, clip=clip)
    return render.overlay(image, att, opacity=opacity, signed=False, cmap=cmap, clip=clip)


def build_report(bundle: ModelBundle, image: Image.Image, explanations: list[Explanation], image_name: str = "image",
                 top5: list[tuple[int, str, float]] | None = None, opacity: float = 0.5, clip: float = 99.5,
                 title: str = "Relevance Explorer report") -> Report:
    """Collect everything a reader needs from maps already computed for ``image`` on ``bundle``."""
    x = bundle.preprocess(image)
    shown = bundle.denormalize(x)[0].permute(1, 2, 0).numpy()
    shown_rgb = (shown * 255).round().astype(np.uint8)
    shown_img = Image.fromarray(shown_rgb)
    size = shown_rgb.shape[:2]
    maps = []
    for e in explanations:
        spec = METHODS.get(e.method)
        maps.append(ReportMap(
            method=e.method, name=spec.name if spec else e.method, options=dict(e.options), seconds=float(e.seconds),
            target=int(e.target), target_name=bundle.class_names[int(e.target)], score=float(e.score),
            native_resolution=e.native_resolution, rgb=draw_map(e, shown_img, size, opacity, clip)))
    model = {
        "name": bundle.name, "label": bundle.label, "fingerprint": bundle.fingerprint,
        "trained": bool(bundle.trained), "weights source": bundle.weights_source, "device": str(bundle.device),
        "input size": bundle.input_size,
    }
    return Report(title=title, created=datetime.now(UTC).replace(microsecond=0).isoformat(),
                  image_name=image_name, image_rgb=shown_rgb, model=model,
                  top5=top5 if top5 is not None else bundle.topk(x, 5), maps=maps)


# --------------------------------------------------------------------------- HTML


def _data_uri(rgb: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(render.png_bytes(rgb)).decode("ascii")


def _options_text(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(options.items())) or "defaults"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; font-size: 0.9em; }
.grid { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; width: 260px; }
figure img { width: 256px; height: auto; image-rendering: pixelated; border: 1px solid #ccc; }
figcaption { font-size: 0.8em; }
.warn { color: #a00; font-weight: bold; }
"""


def _html(r: Report) -> str:
    e = html.escape
    rows = "".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in r.model.items())
    top = "".join(f"<tr><td>{i}</td><td>{e(n)}</td><td>{p:.4f}</td></tr>" for i, n, p in r.top5)
    figs = [f'<figure class="map" data-method="{e(m.method)}"><img alt="{e(m.name)}" src="{_data_uri(m.rgb)}">'
            f"<figcaption><b>{e(m.name)}</b> ({e(m.method)})<br>target {m.target} {e(m.target_name)} "
            f"(p = {m.score:.4f})<br>{m.seconds:.2f} s"
            + (f", native {m.native_resolution[0]}x{m.native_resolution[1]}" if m.native_resolution else "")
            + f"<br>options: {e(_options_text(m.options))}</figcaption></figure>" for m in r.maps]
    versions = "".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in r.versions.items())
    warn = "" if r.model["trained"] else '<p class="warn">UNTRAINED model: random weights; the maps say nothing ' \
                                          "about a trained network.</p>"
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(r.title)}</title><style>{_CSS}</style>"
            f"</head><body><h1>{e(r.title)}</h1><p>Created {e(r.created)} (UTC)</p>{warn}"
            f"<h2>Model</h2><table>{rows}</table>"
            f"<h2>Input</h2><figure><img alt='input' src='{_data_uri(r.image_rgb)}'>"
            f"<figcaption>{e(r.image_name)}, as the model sees it</figcaption></figure>"
            f"<h2>Top-5</h2><table><tr><th>index</th><th>class</th><th>probability</th></tr>{top}</table>"
            f"<h2>Maps</h2><div class='grid'>{''.join(figs)}</div>"
            f"<h2>Versions</h2><table>{versions}</table></body></html>")


# --------------------------------------------------------------------------- PDF


def _pdf(r: Report) -> bytes:
    """An A4 PDF through matplotlib (already a dependency): a title page, then the maps, six per page."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    buf = io.BytesIO()
    a4 = (8.27, 11.69)
    with PdfPages(buf, metadata={"Title": r.title, "CreationDate": None}) as pdf:
        fig = plt.figure(figsize=a4)
        lines = [r.title, f"Created {r.created} (UTC)", ""]
        if not r.model["trained"]:
            lines.append("UNTRAINED model: random weights.")
        lines += [f"{k}: {v}" for k, v in r.model.items()] + ["", f"Input: {r.image_name}", "", "Top-5:"]
        lines += [f"  {i:>5}  {n}  {p:.4f}" for i, n, p in r.top5] + ["", "Versions:"]
        lines += [f"  {k} {v}" for k, v in r.versions.items()]
        fig.text(0.08, 0.95, "\n".join(lines), va="top", family="monospace", fontsize=9)
        ax = fig.add_axes((0.55, 0.62, 0.38, 0.3))
        ax.imshow(r.image_rgb)
        ax.set_axis_off()
        pdf.savefig(fig)
        plt.close(fig)
        per_page = 6
        for start in range(0, len(r.maps), per_page):
            fig, axes = plt.subplots(3, 2, figsize=a4)
            for ax, m in zip(axes.flat, r.maps[start:start + per_page] + [None] * per_page):
                ax.set_axis_off()
                if m is None:
                    continue
                ax.imshow(m.rgb, interpolation="nearest")
                ax.set_title(f"{m.name}: {m.target_name} (p={m.score:.3f})\n{m.seconds:.2f} s; "
                             f"{_options_text(m.options)[:90]}", fontsize=7)
            pdf.savefig(fig)
            plt.close(fig)
    return buf.getvalue()
