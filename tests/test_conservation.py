"""The Fig. 7 sweep (explainers.conservation): totals from the trace, against the model's own probabilities."""

from __future__ import annotations

import math

import pytest
import torch

from explainers import explain
from explainers.conservation import conservation_sweep, sweep_options
from explainers.errors import ExplainerError
from explainers.images import GALLERY


def test_sweep_options_drop_display_options_and_force_the_probability_start():
    opts = sweep_options("resnet-lrp", {"bins": 3, "start": "logit", "include_identity": False})
    assert "bins" not in opts  # display-only: moving it must not change the sweep's cache key
    assert opts["start"] == "probability" and opts["include_identity"] is False
    assert sweep_options("resnet-lrp", {"bins": 3}) == sweep_options("resnet-lrp", {"bins": 12})


def test_sweep_points_are_the_models_probabilities_and_the_traced_totals(lite0):
    names = list(GALLERY)[:3]
    images = [(n, GALLERY[n].image()) for n in names]
    sweep = conservation_sweep(lite0, images, "resnet-lrp", {"start": "logit"}, batch_size=2)  # 2 + 1 batches
    assert [p.name for p in sweep.points] == names and not sweep.skipped
    for (_, img), p in zip(images, sweep.points):
        x = lite0.preprocess(img)
        with torch.no_grad():
            probs = lite0.model(x).softmax(-1)[0]
        assert p.target == int(probs.argmax())
        # same float32 forward on another batch composition: a few ulps
        assert p.probability == pytest.approx(float(probs.max()), rel=1e-5)
        # the input total is the map's sum (independent route: the returned attribution, not the trace)
        res = explain(lite0, x, "resnet-lrp", start="probability")
        assert p.input == pytest.approx(float(res.attribution.double().sum()), rel=1e-4)
        # z+ with ratio splitting conserves: the page's claim, float32 rounding over ~100 nodes
        assert p.relative_error("input") < 1e-3 and p.relative_error("first_block") < 1e-3
        assert not math.isnan(p.last_block)


def test_sweep_refuses_a_method_without_a_trace(lite0):
    with pytest.raises(ExplainerError, match="trace"):
        conservation_sweep(lite0, [], "gradcam")
