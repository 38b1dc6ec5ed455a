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


def test_trace_marks_branch_nodes_and_their_totals_are_the_branch_shares():
    """Issue 15: the node plot dips inside residual blocks because those nodes carry one branch's share.
    The trace says which nodes those are (graph.branches, a walk back from each branch end to the block
    input); the node ending each main branch holds exactly what the block's add sent that way."""
    import torchvision

    from explainers.models import ModelBundle, Preprocessing

    torch.manual_seed(0)
    bundle = ModelBundle(model=torchvision.models.resnet18(num_classes=5).eval(), name="resnet18", family="resnet",
                         class_names=tuple("abcde"), device=torch.device("cpu"), trained=False,
                         weights_source="test", prep=Preprocessing(64, 64, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)))
    trace = explain(bundle, torch.rand(1, 3, 64, 64), "resnet-lrp").trace
    marked = [n for n in trace.nodes if n.branch]
    assert {n.branch[1] for n in marked} == {"main", "skip"}  # resnet18 has projection skips
    assert not any(n.branch for n in trace.checkpoints)  # checkpoints carry the whole relevance
    blocks = {b.name: b for b in trace.blocks}
    assert {n.branch[0] for n in marked} == set(blocks)
    for name, block in blocks.items():
        # output -> input order: the first main-branch node of a block is the main branch's end; its total is
        # the same float64 sum the block share records, so they agree to rounding
        first = next(n for n in trace.nodes if n.branch == (name, "main"))
        assert first.total == pytest.approx(block.main, rel=1e-9, abs=1e-12)
