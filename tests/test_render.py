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
