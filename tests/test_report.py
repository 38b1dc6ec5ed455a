"""The stakeholder report (explainers/report.py, ``python -m explainers report``, views/report_button.py).

What a reader of the report relies on is checked from the file itself: the HTML is parsed, its embedded PNGs are
decoded and compared pixel for pixel with maps drawn here from the raw attributions with ``render`` (the Compare
page's drawing), and the PDF's pages, images and text are read back from its bytes.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import re
import struct
import zlib
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from explainers import METHODS as REGISTRY
from explainers import explain, load_model, render
from explainers.cli import main
from explainers.images import GALLERY
from explainers.report import build_report, library_versions, pdf_pages, report_filename

METHODS = ("gradcam", "saliency", "lrp")
OPTIONS = {"lrp": {"bins": 4}}  # a display-only option: the report must draw the quantised map


# --------------------------------------------------------------------------- reading the files back


class _Doc(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs: list[dict] = []  # the input and the maps
        self.bars: list[dict] = []  # each map's colour bar
        self.maps: list[str] = []
        self.text: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            (self.bars if attrs.get("class") == "bar" else self.imgs).append(attrs)
        if tag == "figure" and attrs.get("class") == "map":
            self.maps.append(attrs["data-method"])

    def handle_data(self, data):
        self.text.append(data)


def parse(text: str) -> _Doc:
    doc = _Doc()
    doc.feed(text)
    doc.close()
    return doc


def decode_png(uri: str) -> np.ndarray:
    assert uri.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))


def _streams(pdf: bytes):
    """(object header, compressed bytes, decompressed bytes) of every Flate stream."""
    for m in re.finditer(rb"stream\r?\n", pdf):
        d = zlib.decompressobj()
        try:
            out = d.decompress(pdf[m.end():])
        except zlib.error:
            continue
        raw = pdf[m.end():len(pdf) - len(d.unused_data)]
        yield pdf[pdf.rfind(b" obj", 0, m.start()):m.start()], raw, out


def _indexed_palette(head: bytes) -> bytes | None:
    """The RGB palette of an ``/Indexed /DeviceRGB n (...)`` colour space (a PDF literal string), else None."""
    m = re.search(rb"/Indexed /DeviceRGB (\d+)\s*\(", head)
    if m is None:
        return None
    escapes = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("b"): b"\b", ord("f"): b"\f"}
    out, i, want = bytearray(), m.end(), 3 * (int(m.group(1)) + 1)
    while len(out) < want:
        c = head[i]
        if c == ord("\\"):
            n = head[i + 1]
            if ord("0") <= n <= ord("7"):
                digits = re.match(rb"[0-7]{1,3}", head[i + 1:i + 4]).group(0)
                out.append(int(digits, 8) & 255)
                i += 1 + len(digits)
                continue
            out += escapes.get(n, bytes([n]))
            i += 2
            continue
        out.append(c)
        i += 1
    return bytes(out)


def pdf_images(pdf: bytes) -> list[np.ndarray]:
    """The RGB image XObjects, top row first.  matplotlib writes them Flate-compressed with the PNG predictor,
    which is exactly a PNG's IDAT stream: wrapped in a PNG header, Pillow decodes them."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    out = []
    for head, raw, _ in _streams(pdf):
        if b"/Subtype /Image" not in head:
            continue
        assert b"/Predictor 10" in head and b"/DeviceRGB" in head
        w, h = (int(re.search(rb"/%s (\d+)" % k, head).group(1)) for k in (b"Width", b"Height"))
        bits = int(re.search(rb"/BitsPerComponent (\d+)", head).group(1))  # < 8 for a palette of few colours
        palette = _indexed_palette(head)  # matplotlib writes a map of <= 256 colours as an indexed image
        colour = b"" if palette is None else chunk(b"PLTE", palette)
        png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bits, 2 if palette is None else 3,
                                                                    0, 0, 0))
               + colour + chunk(b"IDAT", raw) + chunk(b"IEND", b""))
        # stored bottom row first: the page draws it through a flipping matrix ("w 0 0 -h 0 h cm")
        out.append(np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))[::-1])
    return out


def pdf_text(pdf: bytes) -> str:
    """The text of every TJ array (matplotlib writes one per line, kerning between single characters)."""
    lines = []
    for _, _, out in _streams(pdf):
        for array in re.findall(rb"\[(.*?)\]\s*TJ", out, re.S):
            parts = re.findall(rb"\(((?:\\.|[^\\)])*)\)", array)
            lines.append(b"".join(re.sub(rb"\\(.)", rb"\1", p) for p in parts).decode("latin-1"))
    return "\n".join(lines)


def pdf_page_count(pdf: bytes) -> int:
    return len(re.findall(rb"/Type\s*/Page\b", pdf))  # not /Pages


# --------------------------------------------------------------------------- the report of three maps


@pytest.fixture(scope="module")
def chelsea():
    return GALLERY["chelsea"].image()


@pytest.fixture(scope="module")
def maps(lite0, chelsea):
    x = lite0.preprocess(chelsea)
    return [explain(lite0, x, m) for m in METHODS]


@pytest.fixture(scope="module")
def report(lite0, chelsea, maps):
    return build_report(lite0, chelsea, maps, image_name="chelsea.png", image_hash="0123abcd", options=OPTIONS,
                        opacity=0.6, clip=99.0)


def shown_input(bundle, image) -> np.ndarray:
    """The input as the app's sidebar makes ``ctx.display`` (views/common.py)."""
    return bundle.to_tensor01(image).permute(1, 2, 0).mul(255).round().byte().numpy()


def test_html_holds_input_maps_model_top5_and_versions(report, lite0, maps):
    text = report.html()
    doc = parse(text)
    assert doc.tags[0] == "html" and "script" not in doc.tags and "link" not in doc.tags
    assert len(doc.imgs) == 1 + len(METHODS) and doc.maps == list(METHODS)
    assert all(i["src"].startswith("data:image/png;base64,") for i in doc.imgs)  # nothing to fetch
    body = " ".join(doc.text)
    for e in maps:
        spec = REGISTRY[e.method]
        assert spec.name in body and f"{e.seconds:.3f} s" in body
    assert "bins=4" in body and "rule=epsilon-plus-flat" in body  # options as used, display ones included
    assert lite0.fingerprint in body and re.search(r"trained\s+True", body)
    for i, name, p in lite0.topk(lite0.preprocess(GALLERY["chelsea"].image()), 5):
        assert f"{i}" in body and name in body and f"{p:.4f}" in body
    for lib, version in library_versions().items():
        assert lib in body and version in body
    assert "python -m explainers report chelsea.png --model efficientnet_lite0 --weights default" in body
    assert "UNTRAINED" not in body


def test_embedded_pngs_are_the_maps_compare_draws(report, lite0, chelsea, maps):
    imgs = [decode_png(i["src"]) for i in parse(report.html()).imgs]
    display = shown_input(lite0, chelsea)
    assert np.array_equal(imgs[0], display)
    gradcam, saliency, lrp = maps
    # the page's "auto" view: Grad-CAM over the image, pixel-level saliency and LRP as heatmaps alone
    expected = [
        render.overlay(display, gradcam.attribution, opacity=0.6, signed=False, clip=99.0),
        render.heatmap(saliency.attribution, signed=False, clip=99.0),
        render.heatmap(render.heat_quantize(lrp.attribution, 4), signed=True, clip=99.0),
    ]
    for got, want in zip(imgs[1:], expected):
        assert np.array_equal(got, want)
    # the bins made a difference:
    assert not np.array_equal(imgs[3], render.heatmap(lrp.attribution, signed=True, clip=99.0))


def test_every_map_carries_its_colour_bar_and_scale(report, maps):
    """A reader of the report tells a strong map from a faint one as on Compare: each map has the tile's colour
    bar and its labels (ends, unit, where the limit comes from), computed from the map as drawn."""
    doc = parse(report.html())
    assert len(doc.bars) == len(maps)
    body = " ".join(doc.text)
    gradcam, saliency, lrp = maps
    shown = {"gradcam": gradcam.attribution, "saliency": saliency.attribution,
             "lrp": render.heat_quantize(lrp.attribution, 4)}  # bins=4: the scale of the quantised map
    for e, bar, m in zip(maps, doc.bars, report.maps):
        want = render.colorbar_labels(render.limit(shown[e.method], e.signed, 99.0), e.signed,
                                      render.unit(REGISTRY[e.method].family), 99.0)
        assert m.scale == want and want in body
        cmap = render.DIVERGING[0] if e.signed else render.SEQUENTIAL[0]
        assert np.array_equal(decode_png(bar["src"]), render.colorbar(cmap, signed=e.signed))
    assert "relevance" in report.maps[2].scale and "CAM activation" in report.maps[0].scale


def test_user_strings_are_escaped(lite0, chelsea, maps):
    names = list(lite0.class_names)
    names[maps[0].target] = "<script>alert('class')</script>"
    bundle = dataclasses.replace(lite0, class_names=tuple(names))
    text = build_report(bundle, chelsea, maps[:1], image_name='<img src=x onerror="alert(1)">.png',
                        options={"gradcam": {"layer": "</td><script>"}}, title="<b>meeting</b>").html()
    doc = parse(text)
    assert "script" not in doc.tags and len(doc.imgs) == 2 and "&lt;b&gt;meeting&lt;/b&gt;" in text
    body = " ".join(doc.text)
    assert "<script>alert('class')</script>" in body  # shown as text, not run
    assert '<img src=x onerror="alert(1)">.png' in body and "&lt;script&gt;" in text


def test_pdf_has_the_pages_maps_and_text(report, lite0):
    pdf = report.pdf()
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    assert pdf_page_count(pdf) == pdf_pages(3) == 2
    images = pdf_images(pdf)
    assert len(images) == 1 + 2 * 3  # the input, then each map and its colour bar
    assert np.array_equal(images[0], report.image_rgb)  # embedded pixel for pixel (interpolation="none")
    for got, bar, m in zip(images[1::2], images[2::2], report.maps):
        assert np.array_equal(got, m.rgb) and np.array_equal(bar, m.colorbar)
    text = pdf_text(pdf)
    for needle in ("Grad-CAM", "Saliency", "bins=4", lite0.fingerprint, "tabby", "torch " + library_versions()["torch"],
                   "python -m explainers report"):
        assert needle in text, needle


def test_pdf_pages_grow_with_the_maps(lite0, chelsea, maps):
    pdf = build_report(lite0, chelsea, maps * 3, image_name="x.png").pdf()  # 9 maps: 1 + 2 pages
    assert pdf_page_count(pdf) == pdf_pages(9) == 3 and len(pdf_images(pdf)) == 1 + 2 * 9  # maps + bars


def test_file_names_are_sanitized():
    assert report_filename("ab12", "efficientnet_lite0", "html") == "report_ab12_efficientnet_lite0.html"
    name = report_filename("ab12", "../pkg.mod:fn /x", "pdf")
    assert "/" not in name and ":" not in name and " " not in name and name.endswith(".pdf")


# --------------------------------------------------------------------------- the command line


def run(argv: list[str]) -> int:
    """The exit status, whether ``main`` returns it or argparse raises it (a bad argument)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def test_cli_report_on_an_untrained_model(tmp_path, capsys):
    image = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(image)
    code = main(["report", str(image), "--model", "resnet18", "--weights", "untrained", "--methods",
                 "gradcam,saliency", "--out-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "UNTRAINED" in out
    html_file, pdf_file = sorted(tmp_path.glob("report_*_resnet18.*"))
    assert html_file.suffix == ".html" and pdf_file.suffix == ".pdf"
    doc = parse(html_file.read_text(encoding="utf-8"))
    body = " ".join(doc.text)
    assert len(doc.imgs) == 3 and doc.maps == ["gradcam", "saliency"]
    fingerprint = load_model("resnet18", device="cpu", weights="untrained").fingerprint  # seeded: reproducible
    assert fingerprint in body and "UNTRAINED model" in body and re.search(r"trained\s+False", body)
    assert pdf_file.read_bytes().startswith(b"%PDF") and pdf_page_count(pdf_file.read_bytes()) == 2


@pytest.mark.parametrize("args, says", [
    (["--methods", ""], "--methods"),
    (["--methods", "gradcam@layer"], "METHOD@NAME=VALUE"),
    (["--methods", "nope,gradcam"], "Unknown method 'nope'"),
    (["--methods", "gradcam@nonsense=1"], "no option 'nonsense'"),
    (["--out-dir", "/no/such/folder"], "does not exist"),
    (["--clip", "0"], "(0, 100]"),
    (["--clip", "nan"], "(0, 100]"),
    (["--opacity", "-1"], "[0, 1]"),
    (["--target", "1000"], "out of range"),
    (["--weights", "missing.pt"], "does not exist"),
])
def test_cli_report_bad_arguments_exit_2_with_one_line(tmp_path, capsys, args, says):
    image = tmp_path / "cat.png"
    image.write_bytes(GALLERY["chelsea"].png_bytes())
    where = [] if "--out-dir" in args else ["--out-dir", str(tmp_path)]
    assert run(["report", str(image), *where, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and says in err and err.count("\n") == 1, err
    assert not list(tmp_path.glob("report_*"))


def test_cli_report_on_a_missing_image(capsys):
    assert run(["report", "no-such-image.png"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "does not exist" in err and err.count("\n") == 1


# --------------------------------------------------------------------------- the Compare page's buttons


def test_download_is_built_once_then_cached(lite0, chelsea, maps, monkeypatch):
    from views import report_button

    calls = []
    real = report_button.build_report
    monkeypatch.setattr(report_button, "build_report", lambda *a, **k: calls.append(1) or real(*a, **k))
    ctx = SimpleNamespace(bundle=lite0, image=chelsea, image_name="chelsea.png", image_hash="feedbeef",
                          top5=lite0.topk(lite0.preprocess(chelsea), 5), target=maps[0].target, model_key="k")
    results = dict(zip(METHODS, maps))
    settings = {"opacity": 0.5, "clip": 99.5, "cmap": None, "signed_cmap": None}
    key = ("feedbeef", "k", "test-key")
    html = report_button._builder(ctx, results, OPTIONS, settings, "html", key)
    first = html()
    assert parse(first.decode()).maps == list(METHODS)
    assert html() is first and calls == [1]  # a second click costs nothing
    pdf = report_button._builder(ctx, results, OPTIONS, settings, "pdf", key)()
    assert pdf.startswith(b"%PDF") and calls == [1, 1]


def test_report_path_is_redacted_for_a_remote_reader(lite0, chelsea, maps):
    from views import report_button

    bundle = dataclasses.replace(lite0, weights_source="checkpoint /home/alice/secret/weights.pt")
    ctx = SimpleNamespace(bundle=bundle, image=chelsea, image_name="chelsea.png", image_hash="redact01",
                          top5=[(0, "x", 1.0)], target=maps[0].target, model_key="k2")
    settings = {"opacity": 0.5, "clip": 99.5, "cmap": None, "signed_cmap": None}
    text = report_button._builder(ctx, {"gradcam": maps[0]}, {}, settings, "html", ("redact01",))().decode()
    assert "weights.pt" in text and "/home/alice" not in text


def test_readme_mentions_the_report():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "python -m explainers report" in readme


def test_compare_page_builds_the_report_only_when_asked(monkeypatch):
    from streamlit.testing.v1 import AppTest

    from views import report_button

    calls = []
    real = report_button.build_report
    monkeypatch.setattr(report_button, "build_report", lambda *a, **k: calls.append(1) or real(*a, **k))
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=300).run()
    assert not at.exception and calls == []  # a page run builds nothing
    at.button(key="report_build").click().run()
    assert not at.exception and len(calls) == 2  # HTML and PDF
    keys = {b.key for b in at.get("download_button")}
    assert {"report_html", "report_pdf"} <= keys
    at.run()  # a rerun finds both files in the cache
    assert len(calls) == 2 and {"report_html", "report_pdf"} <= {b.key for b in at.get("download_button")}


def test_a_tiles_own_view_reaches_the_report(lite0, chelsea, maps, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from views import report_button

    gradcam = maps[0]
    own = build_report(lite0, chelsea, [gradcam], views={"gradcam": "heatmap"}, opacity=0.6, clip=99.0)
    assert np.array_equal(own.maps[0].rgb, render.heatmap(gradcam.attribution, signed=False, clip=99.0))
    assert "Grad-CAM: heatmap" in own.html()  # said next to the page's view

    seen = []
    real = report_button.build_report
    monkeypatch.setattr(report_button, "build_report", lambda *a, **k: seen.append(k) or real(*a, **k))
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=300).run()
    at.button_group(key="view_gradcam").set_value("side by side").run()
    at.slider(key="compare_opacity").set_value(0.8).run()
    at.button(key="report_build").click().run()
    assert not at.exception and len(seen) == 2
    assert seen[0]["views"] == {"gradcam": "side by side"} and seen[0]["opacity"] == 0.8
    assert seen[0]["view"] == "auto"
