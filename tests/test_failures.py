"""Failure triage (resnet-lrp App. D.4): the ID threshold and the attributed-area categories."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from explainers.failures import (
    PAPER_THRESHOLD,
    TriageSettings,
    attributed_area,
    resuggest,
    suggest,
    table_d,
    triage,
)
from explainers.images import GALLERY
from tests.toy_bundle import hand_curves, toy_bundle, white_png


def test_attributed_area_is_the_fraction_above_half_the_maximum():
    a = torch.zeros(10, 10)
    a[:2, :5] = 1.0  # 10 pixels at the max
    a[5, 5] = 0.4  # below half: not counted
    assert attributed_area(a) == pytest.approx(0.10)
    assert attributed_area(-torch.ones(4, 4)) == 0.0


@pytest.mark.parametrize("id_score, area, failure, category", [
    (0.50, 0.05, False, "none"),
    (PAPER_THRESHOLD, 0.05, True, "IA"),  # "not greater than 0.371" is a failure
    (0.10, 0.80, True, "OA"),
    (0.10, 0.30, True, "WA"),
])
def test_suggestions(id_score, area, failure, category):
    got_failure, got_category, reason = suggest(id_score, area)
    assert (got_failure, got_category) == (failure, category)
    assert reason


def test_thresholds_are_editable_without_recomputing(lite0):
    items = triage(lite0, [("coffee.png", GALLERY["coffee"].png_bytes())], "gradcam",
                   settings=TriageSettings(pixels_per_step=5000))
    strict = resuggest(items, TriageSettings(threshold=1.0, small_area=0.0, large_area=0.0))
    assert strict[0].failure and strict[0].suggestion == "OA"
    lenient = resuggest(items, TriageSettings(threshold=-1.0))
    assert not lenient[0].failure and lenient[0].suggestion == "none"
    assert strict[0].attribution is items[0].attribution  # same measurement, new verdict


def test_triage_ranks_by_id_and_measures_curves(lite0):
    images = [(f"{k}.png", GALLERY[k].png_bytes()) for k in ("chelsea", "coffee", "horse")]
    items = triage(lite0, images, "gradcam", settings=TriageSettings(pixels_per_step=5000))
    assert [it.id_score for it in items] == sorted(it.id_score for it in items)
    for it in items:
        assert it.insertion_curve.shape == it.deletion_curve.shape == it.fractions.shape
        assert it.fractions[-1] == pytest.approx(1.0)
        assert 0.0 <= it.attributed_area <= 1.0
        assert it.failure == (it.id_score <= PAPER_THRESHOLD)
    coffee = next(it for it in items if it.name == "coffee.png")
    assert coffee.target == 967


def test_triage_curves_and_area_equal_hand_computed_values_and_skips_undecodable_files():
    """On the four-pixel toy model every number triage reports is known in closed form (toy_bundle.py)."""
    images = [("broken.png", b"\x89PNG not really"), ("white.png", white_png()), ("empty.png", b"")]
    items = triage(toy_bundle(), images, "saliency", settings=TriageSettings(pixels_per_step=1, threshold=0.0))
    ins, dele, ins_auc, del_auc = hand_curves()
    [it] = items
    assert it.name == "white.png" and it.target == 0
    # float32 forwards of logits up to 10.5: the probabilities agree with the float64 hand values to ~1e-7
    assert it.insertion_curve.tolist() == pytest.approx(ins, abs=1e-6)
    assert it.deletion_curve.tolist() == pytest.approx(dele, abs=1e-6)
    assert it.fractions.tolist() == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])  # curves start at 0 pixels
    assert (it.insertion, it.deletion) == (pytest.approx(ins_auc, abs=1e-6), pytest.approx(del_auc, abs=1e-6))
    assert it.id_score == pytest.approx(ins_auc - del_auc, abs=2e-6)
    assert it.attributed_area == 0.25  # map 3|a| = [6, 3, 1.5, 0.75]: only 6 is above half the maximum (3)
    assert not it.failure  # ID > threshold 0
    assert [name for name, _ in items.skipped] == ["broken.png", "empty.png"]
    assert all(reason for _, reason in items.skipped)
    assert resuggest(items, TriageSettings()).skipped == items.skipped


def test_table_d_counts_per_method_and_category():
    labels = [SimpleNamespace(method="gradcam", label=lab) for lab in ("IA", "IA", "WA", "none")]
    labels.append(SimpleNamespace(method="lrp", label="OA"))
    assert table_d(labels) == {"gradcam": {"IA": 2, "OA": 0, "WA": 1, "none": 1},
                               "lrp": {"IA": 0, "OA": 1, "WA": 0, "none": 0}}
