"""The Compare page, driven through Streamlit's AppTest (no browser)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def start() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=300)
    return at.run()


def test_compare_renders_a_heatmap_for_the_default_model():
    at = start()
    assert not at.exception, at.exception
    assert at.sidebar.selectbox(key="model").value == "efficientnet_lite0"
    assert at.sidebar.selectbox(key="gallery").value == "chelsea"
    images = [c for img in at.image for c in img.captions]
    assert "Grad-CAM" in images and any(c.startswith("Input") for c in images)
    buttons = [b.key for b in at.get("download_button")]
    assert [k for k in buttons if k.startswith("dl_")] == ["dl_gradcam"]  # one PNG per map
    # the report (views/report_button.py): "Build report", or its downloads when another test already built it
    assert any(b.key == "report_build" and b.label == "Build report" for b in at.button) or \
        "report_html" in buttons
    assert any("native 7x7" in c.value for c in at.caption)
    assert "tabby" in " ".join(m.value for m in at.markdown)


def test_display_controls_do_not_recompute(monkeypatch):
    import explainers.registry as registry

    at = start()
    calls = []
    original = registry.explain_batch
    monkeypatch.setattr(registry, "explain_batch", lambda *a, **k: calls.append(1) or original(*a, **k))
    at.slider(key="compare_opacity").set_value(0.9).run()
    at.selectbox(key="compare_cmap").set_value("inferno").run()
    at.slider(key="compare_clip").set_value(95.0).run()
    assert not at.exception
    assert calls == []


def test_display_controls_neither_decode_preprocess_nor_quantise_again(monkeypatch):
    """A display rerun draws from what the first run prepared: the decoded input and the model's view of it
    (views/common.prepared_input) and each map after its display post-processing (heat quantisation)."""
    from explainers import images, render
    from explainers.models import ModelBundle

    at = start()
    at.multiselect(key="compare_methods").set_value(["gradcam", "resnet-lrp"]).run()
    assert not at.exception, at.exception
    calls = []
    for owner, name in ((images, "load_image"), (ModelBundle, "preprocess"), (render, "heat_quantize")):
        original = getattr(owner, name)
        monkeypatch.setattr(owner, name, lambda *a, _n=name, _o=original, **k: calls.append(_n) or _o(*a, **k))
    at.slider(key="compare_opacity").set_value(0.8).run()
    at.selectbox(key="compare_cmap").set_value("viridis").run()
    assert not at.exception and calls == []
    at.slider(key="compare_methods:resnet-lrp:bins").set_value(4).run()  # its own display option: quantised again
    assert not at.exception and calls == ["heat_quantize"]


def test_friendly_error_for_a_non_image_upload():
    at = start()
    at.sidebar.radio(key="image_source").set_value("Upload").run()
    at.sidebar.get("file_uploader")[0].upload("cat.png", b"plain text, not a picture", "image/png").run()
    assert not at.exception
    assert any("not an image" in e.value for e in at.sidebar.error)
    # said once: the main area points to the sidebar instead of repeating the message
    assert [e.value for e in at.error] == [e.value for e in at.sidebar.error]
    assert any("still works" in w.value and "sidebar" in w.value for w in at.main.warning)


def test_untrained_model_is_labelled():
    at = start()
    at.sidebar.selectbox(key="model").set_value("resnet18").run()
    assert not at.exception
    assert any("UNTRAINED" in e.value for e in at.sidebar.error)
    assert any("untrained" in w.value for w in at.warning)


def test_switching_to_a_model_a_method_does_not_support():
    import torch

    from explainers import METHODS, MethodSpec
    from explainers.capabilities import Requirement
    from explainers.registry import MethodOutput, register

    register(MethodSpec(id="test-vit-only", name="ViT-only test method", family="test",
                        fn=lambda b, x, t, o: MethodOutput(attribution=torch.rand(x.shape[0], 224, 224)),
                        needs=Requirement("tokens", lambda c: c.tokens, "patch tokens")))
    try:
        at = AppTest.from_file(APP, default_timeout=300)
        at.session_state["model"] = "vit_tiny_patch16_224"
        at.run()
        assert not at.exception
        at.multiselect(key="compare_methods").set_value(["gradcam", "test-vit-only"]).run()
        assert any(c.captions == ["ViT-only test method"] for c in at.image)
        at.sidebar.selectbox(key="model").set_value("efficientnet_lite0").run()
        assert not at.exception
        assert at.multiselect(key="compare_methods").value == ["gradcam"]
        assert any("removed: ViT-only test method" in i.value for i in at.info)
    finally:
        METHODS.pop("test-vit-only")


# --------------------------------------------------------------------------- views, colour bars, progressive tiles


@pytest.fixture
def media(monkeypatch):
    """The bytes behind every image URL the app emits (AppTest keeps them in a mock media store): url id -> bytes."""
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    stored: dict[str, bytes] = {}
    original = MemoryMediaFileStorage.load_and_get_id

    def keep(self, path_or_data, mimetype, kind, filename=None):
        file_id = original(self, path_or_data, mimetype, kind, filename)
        stored[file_id] = path_or_data
        return file_id

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", keep)
    return stored


def pixels(at, media, caption: str) -> np.ndarray:
    url = next(img.value[0] for img in at.image if img.captions == [caption])
    return np.asarray(Image.open(io.BytesIO(media[url.rsplit("/", 1)[1].split(".")[0]])).convert("RGB"))


def test_views_colour_bars_and_heatmaps_without_image_pixels(media):
    from explainers import render

    at = start()
    at.multiselect(key="compare_methods").set_value(["gradcam", "input-x-gradient"]).run()
    assert not at.exception, at.exception
    captions = [c.value for c in at.caption]
    # auto: the CAM over the image, the pixel-level gradient map alone
    assert any("native 7x7" in c and c.endswith("· overlay") for c in captions)
    assert any("native 224x224" in c and c.endswith("· heatmap") for c in captions)
    # a colour bar with min / 0 / max and the map's unit under each map
    assert any(c.startswith("0 · ") and "CAM activation" in c for c in captions)
    assert any(c.startswith("-") and " · 0 · " in c and "attribution" in c and "99.5th percentile" in c
               for c in captions)
    heat = pixels(at, media, "Input x Gradient")
    lut = {tuple(row) for row in render.lut(render.DIVERGING[0])}
    assert {tuple(p) for p in heat.reshape(-1, 3)} <= lut  # every pixel a colormap colour: no image blended in
    cam = pixels(at, media, "Grad-CAM")

    at.slider(key="compare_opacity").set_value(0.9).run()
    assert np.array_equal(pixels(at, media, "Input x Gradient"), heat)  # opacity is irrelevant for a heatmap
    assert not np.array_equal(pixels(at, media, "Grad-CAM"), cam)  # and changes the overlay

    # one tile side by side: the image, a white gap, the same heatmap
    groups = [g for g in at.get("button_group") if g.key == "view_input-x-gradient"]
    groups[0].set_value("side by side").run()
    assert not at.exception, at.exception
    both = pixels(at, media, "Input x Gradient")
    assert both.shape == (224, 224 + 4 + 224, 3)
    assert np.array_equal(both[:, 228:], heat) and (both[:, 224:228] == 255).all()
    assert {tuple(p) for p in both[:, :224].reshape(-1, 3)} - lut  # the left part is the photo

    # the page's View applies where a tile has no choice of its own
    at.selectbox(key="compare_view").set_value("heatmap").run()
    captions = [c.value for c in at.caption]
    assert any("native 7x7" in c and c.endswith("· heatmap") for c in captions)
    assert any("native 224x224" in c and c.endswith("· side by side") for c in captions)


def test_cheap_first_and_a_stopped_method_stays_stopped_until_run(monkeypatch):
    """A slow method stopped mid-way (explainers.progress.Cancelled at a progress report) leaves a Stopped tile
    with a Run button, keeps the cheap map, caches nothing partial and is not restarted by a display rerun."""
    import explainers.estimate as estimate
    from explainers import METHODS, MethodSpec
    from explainers.progress import Cancelled, report
    from explainers.registry import MethodOutput, register

    calls: list[str] = []
    stop_next = [True]

    def dear(b, x, t, o):
        calls.append("dear")
        report(0.5, "half way")
        if stop_next[0]:
            stop_next[0] = False
            raise Cancelled("Stopped on request.")
        return MethodOutput(attribution=torch.rand(x.shape[0], 224, 224), native_resolution=(224, 224))

    def cheap(b, x, t, o):
        calls.append("cheap")
        return MethodOutput(attribution=torch.rand(x.shape[0], 224, 224), native_resolution=(224, 224))

    register(MethodSpec(id="test-dear", name="Dear test method", family="gradient", fn=dear))
    register(MethodSpec(id="test-cheap", name="Cheap test method", family="gradient", fn=cheap))
    monkeypatch.setattr(estimate, "estimate_seconds",
                        lambda b, m, o=None, images=1: {"test-dear": 90.0, "test-cheap": 0.2}.get(m, 1.0))
    try:
        at = start()
        at.multiselect(key="compare_methods").set_value(["test-dear", "test-cheap"]).run()
        assert not at.exception, at.exception
        assert calls == ["cheap", "dear"]  # the cheap one first, though chosen second
        assert any("Dear test method about 2 min" in c.value for c in at.caption)  # the honest estimate
        assert any(img.captions == ["Cheap test method"] for img in at.image)
        assert any("Stopped" in w.value for w in at.warning)
        assert not any(img.captions == ["Dear test method"] for img in at.image)
        assert len(at.get("download_button")) == 1

        at.slider(key="compare_opacity").set_value(0.8).run()  # a display rerun does not restart it
        assert calls == ["cheap", "dear"] and any("Stopped" in w.value for w in at.warning)

        at.button(key="run_test-dear").click().run()  # Run: computed afresh (nothing partial was cached)
        assert not at.exception, at.exception
        assert calls == ["cheap", "dear", "dear"]
        assert any(img.captions == ["Dear test method"] for img in at.image) and not at.warning
        assert len(at.get("download_button")) == 2
    finally:
        METHODS.pop("test-dear", None)
        METHODS.pop("test-cheap", None)


def test_enlarge_shows_the_map_at_full_resolution():
    at = start()
    at.button(key="zoom_gradcam").click().run()
    assert not at.exception, at.exception
    assert any(c.endswith("(224x224 px, each shown as a block)") for img in at.image for c in img.captions)
