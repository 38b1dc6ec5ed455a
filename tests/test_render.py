"""Rendering: zero is the centre of diverging maps, opacity blends, PNG round-trips."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from PIL import Image

from explainers import NonFiniteAttribution, render


def test_signed_scale_is_symmetric_around_zero():
    a = torch.tensor([[-2.0, 0.0], [1.0, 2.0]])
    s = render.scale(a, signed=True)
    assert s[0, 1] == pytest.approx(0.5) and s[0, 0] == pytest.approx(0.0) and s[1, 1] == pytest.approx(1.0)
    assert s[1, 0] == pytest.approx(0.75)


def test_positive_scale_clips_negatives():
    s = render.scale(torch.tensor([[-5.0, 0.0], [2.0, 4.0]]), signed=False)
    assert s.tolist() == [[0.0, 0.0], [0.5, 1.0]]
    assert render.scale(torch.zeros(3, 3), signed=False).max() == 0


def test_colorize_uses_the_chosen_colormap():
    a = np.array([[-1.0, 0.0, 1.0]], dtype=np.float32)
    rgb = render.colorize(a, signed=True, cmap="RdBu_r")
    centre = (np.array(colormaps["RdBu_r"](0.5)[:3]) * 255).round()
    assert np.abs(rgb[0, 1].astype(int) - centre).max() <= 1
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 3, 3)
    assert not np.array_equal(render.colorize(a, cmap="jet"), render.colorize(a, cmap="gray"))


def test_overlay_opacity_extremes():
    img = Image.fromarray(np.full((8, 8, 3), 100, np.uint8))
    a = np.random.default_rng(0).random((8, 8)).astype(np.float32)
    assert np.array_equal(render.overlay(img, a, opacity=0.0), np.asarray(img))
    assert np.array_equal(render.overlay(img, a, opacity=1.0), render.colorize(a))


def test_overlay_resizes_image_to_map():
    img = Image.new("RGB", (300, 200), (10, 20, 30))
    assert render.overlay(img, np.zeros((32, 32), np.float32)).shape == (32, 32, 3)


def test_png_round_trip():
    rgb = render.colorize(np.arange(16, dtype=np.float32).reshape(4, 4))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(render.png_bytes(rgb)))), rgb)


def test_non_finite_maps_are_reported_not_drawn():
    a = torch.ones(4, 4)
    a[1, 1] = float("nan")
    with pytest.raises(NonFiniteAttribution, match="1 NaN/Inf"):
        render.colorize(a)


def test_upsample_bilinear_to_input_size():
    up = render.upsample(torch.ones(7, 7), (224, 224))
    assert up.shape == (224, 224) and torch.allclose(up, torch.ones(224, 224))


def test_percentile_clip_makes_a_map_with_one_outlier_visible():
    rng = np.random.default_rng(0)
    arr = rng.normal(0, 1, (64, 64)).astype(np.float32)
    arr[0, 0] = 1000.0  # one extreme pixel, as in raw gradient maps
    by_max = render.scale(arr, signed=True)
    clipped = render.scale(arr, signed=True, clip=99.0)
    assert np.abs(by_max - 0.5).mean() < 0.002  # almost everything at the centre colour: looks blank
    assert np.abs(clipped - 0.5).mean() > 0.1
    assert clipped.min() >= 0 and clipped.max() == 1.0 and clipped[0, 0] == 1.0  # the outlier saturates
    assert abs(float(render.scale(np.zeros((4, 4)), signed=True, clip=99.0).mean()) - 0.5) < 1e-9
    # zero stays the centre colour, whatever the clip
    assert render.scale(np.array([[-1.0, 0.0, 3.0]]), signed=True, clip=50.0)[0, 1] == 0.5
    # a sparse positive map whose percentile is 0 falls back to its maximum
    sparse = np.zeros((10, 10), np.float32)
    sparse[3, 3] = 2.0
    assert render.scale(sparse, signed=False, clip=99.0).max() == 1.0
    with pytest.raises(ValueError):
        render.scale(arr, signed=True, clip=0)


def test_heat_quantize_lives_with_rendering_and_equals_hand_computation():
    from explainers.render import heat_quantize, postprocess

    a = torch.arange(9.0)  # min 0, max 8, Q = 4 -> Delta = 2 (resnet-lrp Eq. 8), the max stays in the top bin
    assert heat_quantize(a, 4).tolist() == [0, 0, 2, 2, 4, 4, 6, 6, 6]
    assert postprocess(a, {"bins": 4}).tolist() == [0, 0, 2, 2, 4, 4, 6, 6, 6]
    assert torch.equal(postprocess(a, {"bins": 0}), a) and torch.equal(postprocess(a, {}), a)


@pytest.mark.parametrize("name", [*render.DIVERGING, *render.SEQUENTIAL])
def test_lookup_tables_equal_matplotlib_within_one_level(name):
    """The shipped tables (no matplotlib at render time) colour like matplotlib's own colormaps: within 1/255."""
    x = np.concatenate([np.random.default_rng(1).random(4000), np.linspace(0, 1, 513)]).astype(np.float32)
    ours = render.lut(name)[render.index(x)].astype(int)
    theirs = (colormaps[name](x)[:, :3] * 255).round().astype(int)
    assert np.abs(ours - theirs).max() <= 1


def test_rendering_does_not_import_matplotlib():
    import subprocess
    import sys

    code = ("import sys, numpy as np; from explainers import render; "
            "render.overlay(np.zeros((8, 8, 3), np.uint8), np.eye(8, dtype=np.float32), signed=True); "
            "render.colorbar('inferno'); print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _lightness(rgb: np.ndarray) -> np.ndarray:
    """CIE L* of sRGB uint8 colours (D65), to check the defaults' perceptual claim independently of the tables."""
    c = rgb.astype(float) / 255
    c = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    y = c @ np.array([0.2126, 0.7152, 0.0722])
    f = np.where(y > 216 / 24389, np.cbrt(y), (24389 / 27 * y + 16) / 116)
    return 116 * f - 16


def test_default_colormaps_are_perceptually_ordered():
    """Sequential default: lightness rises monotonically; diverging default: falls to the centre, then rises,
    the two halves alike.  jet and bwr, still offered, fail this (which is why they are not defaults)."""
    seq = _lightness(render.lut(render.SEQUENTIAL[0])[::8])
    assert np.all(np.diff(seq) > 0)
    div = _lightness(render.lut(render.DIVERGING[0]))
    left, right = div[:128:8], div[255:127:-8]
    assert np.all(np.diff(left) < 0) and np.all(np.diff(right) < 0)
    assert np.abs(left - right).max() < 12  # L* units; berlin's ends differ by ~6
    assert not np.all(np.diff(_lightness(render.lut("jet")[::8])) > 0)


def test_heatmap_view_has_no_image_pixels_and_side_by_side_has_both():
    img = Image.fromarray(np.random.default_rng(2).integers(0, 255, (16, 16, 3), dtype=np.uint8))
    a = np.random.default_rng(3).normal(size=(16, 16)).astype(np.float32)
    heat = render.colorize(a, signed=True)
    for opacity in (0.0, 0.3, 1.0):  # opacity is irrelevant for a heatmap
        assert np.array_equal(render.view("heatmap", img, a, signed=True, opacity=opacity), heat)
    both = render.view("side by side", img, a, signed=True)
    assert both.shape == (16, 16 + 4 + 16, 3)
    assert np.array_equal(both[:, :16], np.asarray(img)) and np.array_equal(both[:, 20:], heat)
    assert np.array_equal(render.view("overlay", img, a, signed=True, opacity=0.0), np.asarray(img))
    with pytest.raises(ValueError, match="Unknown view"):
        render.view("auto", img, a)


@pytest.mark.parametrize(("family", "signed", "native", "expected"), [
    ("cam", False, (7, 7), "overlay"),  # Grad-CAM
    ("cam", False, (224, 224), "overlay"),  # FullGrad: a CAM, read against the image
    ("cam", True, (224, 224), "heatmap"),  # Guided Grad-CAM: pixel level
    ("lrp", True, (224, 224), "heatmap"),
    ("gradient", True, (224, 224), "heatmap"),
    ("srd", True, (224, 224), "heatmap"),
    ("srd", True, (14, 14), "overlay"),  # SRD started at an inner layer
    ("gradient", False, None, "heatmap"),
])
def test_auto_view_per_map(family, signed, native, expected):
    assert render.default_view(family, signed, native, (224, 224)) == expected


def test_colorbar_strip_and_labels():
    bar = render.colorbar("inferno", width=64, height=6, signed=True)
    assert bar.shape == (6, 64, 3) and bar.dtype == np.uint8
    assert np.array_equal(bar[0], render.lut("inferno")[render.index(np.linspace(0, 1, 64))])
    assert (bar[3:, [0, 32, 63]] == 0).all()  # tick marks at min, 0 and max
    text = render.colorbar_labels(0.01234, signed=True, what="relevance", clip=99.5)
    assert text.startswith("-0.0123 · 0 · 0.0123 relevance") and "99.5th percentile of |relevance|" in text
    assert render.colorbar_labels(2.0, signed=False, what="CAM activation").startswith("0 · 2 CAM activation")
    assert render.colorbar_labels(0.0, signed=False, what="CAM activation").startswith("zero everywhere: no CAM")
    assert render.limit(np.array([[-4.0, 1.0]]), signed=True) == 4.0
    assert render.unit("lrp") == "relevance" and render.unit("gradient") == "attribution"


def test_enlarge_keeps_pixels_sharp():
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    big = render.enlarge(rgb, at_least=7)
    assert big.shape == (6, 9, 3) and np.array_equal(big[::3, ::3], rgb)


def test_unknown_colormap_is_one_clear_line():
    with pytest.raises(ValueError, match="Unknown colormap 'nope'"):
        render.colorize(np.ones((2, 2)), cmap="nope")


def test_negative_relevance_counts_beyond_rounding():
    ramp = np.linspace(0.005, 0.4, 49).reshape(7, 7)  # an SRD-low-like map: non-negative
    assert not render.has_negative_relevance(ramp)
    assert not render.has_negative_relevance(ramp - 1e-4)  # rounding-level negatives (0.025 % of the peak)
    assert render.has_negative_relevance(ramp - 0.05)  # 11 % of the peak below zero
    assert render.has_negative_relevance(torch.tensor([[-1.0, 0.5]]))
    assert not render.has_negative_relevance(np.zeros((3, 3))) and not render.has_negative_relevance(np.empty((0,)))
    assert not render.has_negative_relevance(np.full((2, 2), np.nan))
