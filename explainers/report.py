"""A stakeholder report: one self-contained HTML file (images embedded) and a PDF of the same content.

What a result shown in a meeting needs so that someone can reproduce it later: the input, every map with its
method, options and seconds, the model (name, weights fingerprint, trained or not), the top-5, the versions
of the libraries that computed it, and the command line that recomputes it.  Rendering only: the maps are the
``Explanation`` objects the caller already has, drawn exactly as the Compare page draws them
(:func:`draw_map`), so the report shows what the meeting saw.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import platform
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import render
from .models import ModelBundle
from .registry import METHODS, Explanation

# Distributions whose versions decide the numbers in a map (PyPI names).
LIBRARIES = ("relevance-explorer", "torch", "torchvision", "timm", "grad-cam", "captum", "zennit", "numpy",
             "pillow", "matplotlib", "streamlit")

MAPS_PER_PAGE = 6  # PDF: a 3 x 2 grid of maps per A4 page, after one page of facts


ROOT = Path(__file__).resolve().parents[1]


def library_versions() -> dict[str, str]:
    """PyPI name -> installed version ("not installed" where absent), plus Python itself; this project's own
    entry says which code made the report, installed or not (:func:`project_version`)."""
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["relevance-explorer"] = project_version(out["relevance-explorer"])
    return out


def project_version(installed: str = "not installed") -> str:
    """This project's version: the installed one, else pyproject.toml's (the app usually runs from a checkout,
    where the package is not installed), plus the git commit when the code is a git checkout and whether it
    has uncommitted changes to tracked files."""
    version = installed
    if installed == "not installed":
        toml = ROOT / "pyproject.toml"
        found = re.search(r'^version\s*=\s*"([^"]+)"', toml.read_text(), re.M) if toml.is_file() else None
        version = f"{found.group(1)} (checkout)" if found else "checkout"
    commit, changed = _checkout_state()
    if commit:
        version += f", commit {commit}" + (" with local changes" if changed else "")
    return version


@functools.cache
def _checkout_state() -> tuple[str, bool]:
    """(commit, whether tracked files differ from it), read once per process: the code a server runs is the
    code it imported at its start, whatever the checkout holds later."""
    return _git("rev-parse", "--short=12", "HEAD"), bool(_git("status", "--porcelain", "-uno"))


def _git(*args: str) -> str:
    """git's output in this project's folder, "" when there is no git or no repository (an installed wheel)."""
    if not (ROOT / ".git").exists():
        return ""
    try:
        done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=5,
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


@dataclass
class ReportMap:
    """One rendered map and what produced it."""

    method: str  # method id
    name: str  # display name
    options: dict[str, Any]  # every option as used: compute options and display options (e.g. bins)
    seconds: float
    target: int
    target_name: str
    score: float
    signed: bool
    native_resolution: tuple[int, int] | None
    rgb: np.ndarray  # HxWx3 uint8, the map as drawn
    colorbar: np.ndarray  # the colour scale's strip (render.colorbar), as under a Compare tile
    scale: str  # its labels: the ends, the unit and where the limit comes from (render.colorbar_labels)


@dataclass
class Report:
    title: str
    created: str  # ISO 8601, UTC
    image_name: str
    image_hash: str
    image_rgb: np.ndarray  # the input as the model sees it (resized + cropped)
    model: dict[str, Any]  # name, label, fingerprint, trained, weights source, seed, device, preprocessing
    top5: list[tuple[int, str, float]]
    maps: list[ReportMap]
    display: dict[str, Any]  # opacity, colour limit, colormaps
    command: str  # the CLI line that recomputes this report
    versions: dict[str, str] = field(default_factory=library_versions)

    def html(self) -> str:
        return _html(self)

    def pdf(self) -> bytes:
        return _pdf(self)

    def filename(self, ext: str) -> str:
        return report_filename(self.image_hash, self.model["name"], ext)


def report_filename(image_hash: str, model: str, ext: str) -> str:
    """``report_<imagehash>_<model>.<ext>`` with anything but letters, digits, dot, dash and underscore replaced
    (a model name such as ``timm:vit_tiny`` or ``pkg.mod:fn`` must not make a path or an odd file name)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", f"report_{image_hash}_{model}").strip("._") or "report"
    return f"{safe[:120]}.{ext}"


@dataclass
class DrawnMap:
    """A map drawn as Compare draws it, with the colour bar and scale labels under its tile."""

    rgb: np.ndarray
    colorbar: np.ndarray
    scale: str
    signed: bool  # drawn as a signed map (absLRP's default display, its positive part, is not)


def draw_map(explanation: Explanation, display: Image.Image, options: dict[str, Any] | None = None,
             opacity: float = 0.5, clip: float = 99.5, cmap: str | None = None,
             signed_cmap: str | None = None, view: str = "auto") -> DrawnMap:
    """The map as the Compare page draws it: the method's display post-processing (e.g. heat quantisation with
    ``bins``), then the page's view (``auto``: heatmap alone for pixel-level maps, over the input for CAMs and
    coarse maps; diverging colormap for signed maps), and its colour scale: without it a reader of the report
    could not tell a strong map from a faint one (every map spans the whole colormap)."""
    spec = METHODS[explanation.method]
    opts = {**explanation.options, **(options or {})}
    shown = render.upsample(spec.display_map(explanation.attribution, opts), (display.height, display.width))
    signed = spec.shown_signed(opts)
    cmap = (signed_cmap or render.DIVERGING[0]) if signed else (cmap or render.SEQUENTIAL[0])
    kind = (render.default_view(spec.family, signed, explanation.native_resolution, tuple(shown.shape))
            if view == "auto" else view)
    bar, scale = render.colour_scale(shown, signed, render.unit(spec.family), cmap, clip)
    return DrawnMap(render.view(kind, display, shown, signed=signed, opacity=opacity, clip=clip, cmap=cmap),
                    bar, scale, signed)


def _methods_arg(maps: list[ReportMap]) -> str:
    """``--methods`` of the report command: ``id@k=v+k=v`` per map, every option spelled out."""
    return ",".join(m.method + ("@" + "+".join(f"{k}={v}" for k, v in sorted(m.options.items()))
                                if m.options else "") for m in maps)


def build_report(bundle: ModelBundle, image: Image.Image, explanations: list[Explanation], *,
                 image_name: str = "image", image_hash: str = "", top5: list[tuple[int, str, float]] | None = None,
                 options: dict[str, dict[str, Any]] | None = None, opacity: float = 0.5, clip: float = 99.5,
                 cmap: str | None = None, signed_cmap: str | None = None, weights: str | None = None,
                 view: str = "auto", views: dict[str, str] | None = None,
                 title: str = "Relevance Explorer report") -> Report:
    """Collect everything a reader needs from maps already computed for ``image`` (the original picture) on
    ``bundle``.  ``options``: method -> the options the user set, display-only ones included (the explanation
    records the compute options it ran with).  ``view``: the page's view; ``views``: method -> a map's own view
    (a Compare tile's override), where it has one.  ``weights``: what ``--weights`` reproduces the model ('default',
    'untrained' or a file); guessed from the bundle when not given."""
    display = bundle.display_image(image)  # exactly as the app's sidebar makes ``ctx.display``
    maps = []
    for e in explanations:
        spec = METHODS[e.method]
        used = spec.resolve_options({**e.options, **(options or {}).get(e.method, {})})
        drawn = draw_map(e, display, used, opacity, clip, cmap, signed_cmap, (views or {}).get(e.method) or view)
        maps.append(ReportMap(
            method=e.method, name=spec.name, options=used, seconds=float(e.seconds), target=int(e.target),
            target_name=bundle.class_names[int(e.target)], score=float(e.score), signed=drawn.signed,
            native_resolution=tuple(e.native_resolution) if e.native_resolution else None,
            rgb=drawn.rgb, colorbar=drawn.colorbar, scale=drawn.scale))
    own = [f"{METHODS[e.method].name}: {(views or {})[e.method]}" for e in explanations if (views or {}).get(e.method)]
    p = bundle.prep
    model = {
        "name": bundle.name, "label": bundle.label, "fingerprint": bundle.fingerprint, "trained": bool(bundle.trained),
        "weights source": bundle.weights_source, "seed": bundle.seed, "device": str(bundle.device),
        "preprocessing": f"resize {p.resize_size} ({p.interpolation}), centre crop {p.crop_size}, "
                         f"mean {tuple(p.mean)}, std {tuple(p.std)}",
        "classes": len(bundle.class_names),
    }
    if weights is None:
        weights = "default" if bundle.trained else "untrained"
    targets = sorted({m.target for m in maps})
    command = ["python", "-m", "explainers", "report", image_name, "--model", bundle.name, "--weights", weights]
    if len(targets) == 1:
        command += ["--target", str(targets[0])]
    command += ["--methods", _methods_arg(maps), "--opacity", f"{opacity:g}", "--clip", f"{clip:g}"]
    return Report(
        title=title, created=datetime.now(UTC).replace(microsecond=0).isoformat(), image_name=image_name,
        image_hash=image_hash, image_rgb=np.asarray(display), model=model,
        top5=top5 if top5 is not None else bundle.topk(bundle.preprocess(image), 5), maps=maps,
        display={"view": view, **({"own views": ", ".join(own)} if own else {}), "opacity": opacity,
                 "colour limit (percentile)": clip,
                 "colormap": cmap or render.SEQUENTIAL[0],
                 "colormap (signed maps)": signed_cmap or render.DIVERGING[0]},
        command=shlex.join(command))


# --------------------------------------------------------------------------- HTML


def _data_uri(rgb: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(render.png_bytes(rgb)).decode("ascii")


def options_text(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(options.items())) or "none"


def _native(m: ReportMap) -> str:
    return "x".join(map(str, m.native_resolution)) if m.native_resolution else "?"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; font-size: 0.9em; vertical-align: top; }
.grid { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; width: 260px; }
figure img { width: 256px; height: auto; border: 1px solid #ccc; }
figure img.bar { height: 10px; border: none; display: block; margin-top: 2px; }
.scale { color: #555; }
figcaption { font-size: 0.8em; overflow-wrap: anywhere; }
code { font-size: 0.85em; overflow-wrap: anywhere; }
.warn { color: #a00; font-weight: bold; }
"""


def _rows(items) -> str:
    e = html.escape
    return "".join(f"<tr><th>{e(str(k))}</th><td>{e(str(v))}</td></tr>" for k, v in items)


def _figure(m: ReportMap) -> str:
    """One map: the picture, its colour bar and scale (as under a Compare tile), what made it."""
    e = html.escape
    return (f'<figure class="map" data-method="{e(m.method)}"><img alt="{e(m.name)}" src="{_data_uri(m.rgb)}">'
            f'<img class="bar" alt="colour scale of {e(m.name)}" src="{_data_uri(m.colorbar)}">'
            f"<figcaption><span class='scale'>{e(m.scale)}</span><br><b>{e(m.name)}</b> ({e(m.method)})<br>"
            f"target {m.target} "
            f"{e(m.target_name)} (p = {m.score:.4f})<br>{m.seconds:.3f} s, native {_native(m)}"
            f"{', signed' if m.signed else ''}<br>options: {e(options_text(m.options))}</figcaption></figure>")


def _html(r: Report) -> str:
    """Every user-controlled string (image name, class names, options, paths) goes through ``html.escape``."""
    e = html.escape
    top = "".join(f"<tr><td>{i}</td><td>{e(n)}</td><td>{p:.4f}</td></tr>" for i, n, p in r.top5)
    figs = "".join(_figure(m) for m in r.maps)
    warn = "" if r.model["trained"] else ('<p class="warn">UNTRAINED model: random weights; these maps say nothing '
                                          "about a trained network.</p>")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{e(r.title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{e(r.title)}</h1><p>Created {e(r.created)} (UTC)</p>{warn}"
            f"<h2>Input</h2><figure class='input'><img alt='input' src='{_data_uri(r.image_rgb)}'>"
            f"<figcaption>{e(r.image_name)} (sha256 {e(r.image_hash or '?')}), as the model sees it"
            f"</figcaption></figure>"
            f"<h2>Model</h2><table>{_rows(r.model.items())}</table>"
            f"<h2>Top-5</h2><table><tr><th>index</th><th>class</th><th>probability</th></tr>{top}</table>"
            f"<h2>Maps</h2><div class='grid'>{figs}</div>"
            f"<h2>Display</h2><table>{_rows(r.display.items())}</table>"
            f"<h2>Reproduce</h2><p><code>{e(r.command)}</code></p>"
            f"<h2>Versions</h2><table>{_rows(r.versions.items())}</table></body></html>")


# --------------------------------------------------------------------------- PDF


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width, break_long_words=True, subsequent_indent="    ")) or text


def pdf_pages(n_maps: int) -> int:
    """Pages of the PDF: one page of facts (input, model, top-5, versions), then the maps six to a page."""
    return 1 + -(-n_maps // MAPS_PER_PAGE)


def pdf_figures(r: Report) -> list:
    """The PDF's pages as matplotlib ``Figure`` objects (A4), without pyplot: a ``Figure`` holds no global state,
    so a Streamlit server can build reports on several threads at once."""
    from matplotlib.figure import Figure

    a4 = (8.27, 11.69)
    fig = Figure(figsize=a4)
    lines = [r.title, f"Created {r.created} (UTC)", ""]
    if not r.model["trained"]:
        lines.append("UNTRAINED model: random weights.")
    lines += [f"Input: {r.image_name}", f"sha256 {r.image_hash or '?'}", "", "Model:"]
    lines += [_wrap(f"  {k}: {v}", 95) for k, v in r.model.items()] + ["", "Top-5:"]
    lines += [f"  {i:>5}  {p:.4f}  {n}" for i, n, p in r.top5] + ["", "Display:"]
    lines += [f"  {k}: {v}" for k, v in r.display.items()] + ["", "Reproduce:", _wrap("  " + r.command, 95)]
    lines += ["", "Versions:"] + [f"  {k} {v}" for k, v in r.versions.items()]
    fig.text(0.06, 0.97, "\n".join(lines), va="top", family="monospace", fontsize=7.5)
    ax = fig.add_axes((0.6, 0.04, 0.32, 0.22))  # bottom right: the text above never reaches it
    ax.imshow(r.image_rgb, interpolation="none")
    ax.set_axis_off()
    figures = [fig]
    for start in range(0, len(r.maps), MAPS_PER_PAGE):
        fig = Figure(figsize=a4)
        axes = fig.subplots(3, 2)
        chunk = r.maps[start:start + MAPS_PER_PAGE]
        for ax, m in zip(axes.flat, chunk + [None] * (MAPS_PER_PAGE - len(chunk))):
            ax.set_axis_off()
            if m is None:
                continue
            ax.imshow(m.rgb, interpolation="none")  # vector output: the map embedded pixel for pixel
            caption = (f"{m.name} ({m.method})\ntarget {m.target} {m.target_name} (p={m.score:.4f})\n"
                       f"{m.seconds:.3f} s, native {_native(m)}\n" + _wrap(f"options: {options_text(m.options)}", 60)
                       + "\n" + _wrap(f"scale: {m.scale}", 60))
            bar = ax.inset_axes((0.0, -0.06, 1.0, 0.03))  # the colour bar under the map, as on Compare
            bar.imshow(m.colorbar, aspect="auto", interpolation="none")
            bar.set_axis_off()
            ax.set_title(caption, fontsize=6.5, loc="left")
        fig.subplots_adjust(hspace=0.75, top=0.89, bottom=0.05)  # room for 8-line captions and the bars
        figures.append(fig)
    return figures


def _pdf(r: Report) -> bytes:
    """An A4 PDF through matplotlib (already a dependency): the pages of :func:`pdf_figures`."""
    from matplotlib.backends.backend_pdf import PdfPages

    buf = io.BytesIO()
    with PdfPages(buf, metadata={"Title": r.title, "Subject": f"{r.image_name} on {r.model['label']}"}) as pdf:
        for fig in pdf_figures(r):
            pdf.savefig(fig)
    return buf.getvalue()
