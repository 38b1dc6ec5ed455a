"""The Compare page, driven through Streamlit's AppTest (no browser)."""

from __future__ import annotations

from pathlib import Path

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
    assert at.button(key="report_build").label == "Build report"  # the report (pages/report_button.py)
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


def test_friendly_error_for_a_non_image_upload():
    at = start()
    at.sidebar.radio(key="image_source").set_value("Upload").run()
    at.sidebar.get("file_uploader")[0].upload("cat.png", b"plain text, not a picture", "image/png").run()
    assert not at.exception
    assert any("not an image" in e.value for e in at.sidebar.error)
    assert any("not an image" in e.value and "still works" in e.value for e in at.main.error)


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
