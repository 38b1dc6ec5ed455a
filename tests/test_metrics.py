"""Metrics: toy models with known answers, quantus cross-checks, and the heat-quantization tie artifact."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from explainers.metrics import (
    attribution_localisation,
    auc,
    box_mask,
    contrastiveness,
    dilate,
    fidelity,
    focus,
    insertion_deletion,
    insertion_deletion_curves,
    local_consistency,
    pointing_game,
    quadrant_masks,
    schedule,
    scoring_map,
    sparseness,
    stability,
    tie_protocols,
)
from explainers.render import heat_quantize


class RegionMean(torch.nn.Module):
    """Logit of class 0 = 10 x mean of a known region; class 1 = 0: the region is all that matters."""

    def __init__(self, rows: slice, cols: slice):
        super().__init__()
        self.rows, self.cols = rows, cols

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = 10 * x[:, :, self.rows, self.cols].mean((1, 2, 3))
        return torch.stack([v, torch.zeros_like(v)], 1)


# --------------------------------------------------------------------------- insertion / deletion


def test_schedule_starts_at_zero_pixels_then_authors_steps():
    counts = schedule(224 * 224, 500)
    # the authors' 101 points (500, 1000, ..., 50000, 50176) behind a leading 0
    assert counts.numel() == 102 and counts[0] == 0 and counts[1] == 500 and counts[-2] == 50000
    assert counts[-1] == 224 * 224
    assert torch.allclose(auc(torch.ones(3, 11)), torch.ones(3))
    # without fractions: (sum - a0/2 - a_end/2) / (n - 1), as patch_insdel.py
    y = torch.rand(7, dtype=torch.float64)
    assert torch.isclose(auc(y), (y.sum() - y[0] / 2 - y[-1] / 2) / 6)
    # with fractions: y = x on uneven points has area 1/2 (trapezoids are exact on lines; 1e-15 = float64 rounding)
    x = torch.tensor([0.0, 0.25, 0.5, 0.9, 1.0], dtype=torch.float64)
    assert float(auc(x, x)) == pytest.approx(0.5, abs=1e-15)


class RowLogit(torch.nn.Module):
    """Two classes on a 4x4 image: logit_0 = sum_{c, i, j} x[c, i, j] a_i / 12 (row i carries a_i), logit_1 = 0.

    On an all-ones image each row adds exactly a_i to logit_0 whatever its columns; the black baseline
    (mean 0, std 1) adds nothing.  So p_0 = sigmoid(sum of the a_i of the rows present), by hand.
    """

    def __init__(self, a: list[float]):
        super().__init__()
        self.register_buffer("w", torch.tensor(a, dtype=torch.float32)[:, None].expand(4, 4) / 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = (x * self.w).sum((1, 2, 3))
        return torch.stack([v, torch.zeros_like(v)], 1)


# a_i chosen so every partial sum is the log of a simple odds ratio: ln 3, ln 3, -ln 9, -ln 3
ROW_A = [math.log(3), math.log(3), -math.log(9), -math.log(3)]
ROW_MAP = torch.tensor([[4.0 - r + 0.1 * c for c in range(4)] for r in range(4)])  # row 0 first, no ties


def test_insertion_deletion_curves_and_areas_equal_hand_computation():
    x = torch.ones(1, 3, 4, 4)
    r = insertion_deletion_curves(RowLogit(ROW_A), x, ROW_MAP[None], [0], pixels_per_step=4)
    assert r.fractions.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    # insertion: rows present 0, {0}, {0,1}, {0,1,2}, all -> logit 0, ln 3, ln 9, 0, -ln 3
    # -> p = 1/2, 3/4, 9/10, 1/2, 1/4 (p = odds / (1 + odds))
    ins = [1 / 2, 3 / 4, 9 / 10, 1 / 2, 1 / 4]
    # deletion: rows left all, {1,2,3}, {2,3}, {3}, none -> logit -ln 3, -ln 9, -ln 27, -ln 3, 0
    dele = [1 / 4, 1 / 10, 1 / 28, 1 / 4, 1 / 2]
    # float32 logits and softmax: a few ulps of values <= 1, so 1e-6 absolute holds and is tight
    assert torch.allclose(r.insertion[0], torch.tensor(ins), atol=1e-6, rtol=0)
    assert torch.allclose(r.deletion[0], torch.tensor(dele), atol=1e-6, rtol=0)
    # trapezoids of width 1/4: ins (1/2 + 2 (3/4 + 9/10 + 1/2) + 1/4) / 8 = 5.05 / 8
    assert float(r.insertion_auc[0]) == pytest.approx(5.05 / 8, abs=1e-6)
    # del (1/4 + 2 (1/10 + 1/28 + 1/4) + 1/2) / 8 = (3/4 + 27/35) / 8
    assert float(r.deletion_auc[0]) == pytest.approx((3 / 4 + 27 / 35) / 8, abs=1e-6)
    assert float(r.id_score[0]) == pytest.approx(5.05 / 8 - (3 / 4 + 27 / 35) / 8, abs=2e-6)
    # the curve starts at 0 pixels: the image's own score for deletion, the baseline's for insertion
    own = RowLogit(ROW_A)(x).softmax(-1)[0, 0]
    assert torch.isclose(r.deletion[0, 0], own) and torch.isclose(r.insertion[0, -1], own)


def test_tie_protocols_on_a_tied_map_equal_hand_computation():
    """Rows 1-3 tied at 0: 'together' inserts all 12 tied pixels once the rank reaches them; 'strict' with the
    row-ranked map as secondary key inserts them row by row, i.e. exactly the untied curve above."""
    x = torch.ones(1, 3, 4, 4)
    tied = torch.zeros(4, 4)
    tied[0] = 1.0
    kw = dict(pixels_per_step=4)
    together = insertion_deletion_curves(RowLogit(ROW_A), x, tied[None], [0], ties="together", **kw)
    strict = insertion_deletion_curves(RowLogit(ROW_A), x, tied[None], [0], ties="strict", raw=ROW_MAP[None], **kw)
    # together, from n = 8 on every row is in: logit -ln 3 (insertion 1/4) / nothing left (deletion 1/2)
    assert torch.allclose(together.insertion[0], torch.tensor([1 / 2, 3 / 4, 1 / 4, 1 / 4, 1 / 4]), atol=1e-6)
    assert torch.allclose(together.deletion[0], torch.tensor([1 / 4, 1 / 10, 1 / 2, 1 / 2, 1 / 2]), atol=1e-6)
    assert torch.allclose(strict.insertion[0], torch.tensor([1 / 2, 3 / 4, 9 / 10, 1 / 2, 1 / 4]), atol=1e-6)
    assert torch.allclose(strict.deletion[0], torch.tensor([1 / 4, 1 / 10, 1 / 28, 1 / 4, 1 / 2]), atol=1e-6)
    # which protocols a page should show: both only where they can differ
    assert tie_protocols(tied) == ("together", "strict")
    assert tie_protocols(ROW_MAP) == ("together",)
    assert tie_protocols(heat_quantize(ROW_MAP, 64), ROW_MAP) == ("together", "strict")  # post-processed
    assert tie_protocols(ROW_MAP, ROW_MAP.clone()) == ("together",)


def test_region_first_map_beats_its_reverse_and_protocols_agree_without_ties():
    model = RegionMean(slice(0, 8), slice(0, 8))
    x = torch.full((1, 3, 16, 16), 1.0)
    gen = torch.Generator().manual_seed(0)
    good = torch.rand(16, 16, generator=gen)
    good[:8, :8] += 2.0  # the region ranks first; all values distinct
    kwargs = dict(pixels_per_step=16)
    fwd = insertion_deletion_curves(model, x, good[None], [0], **kwargs)
    rev = insertion_deletion_curves(model, x, -good[None], [0], **kwargs)
    assert float(fwd.id_score[0]) > float(rev.id_score[0]) + 0.3
    assert float(fwd.insertion_auc[0]) > float(rev.insertion_auc[0])
    assert float(fwd.deletion_auc[0]) < float(rev.deletion_auc[0])
    strict = insertion_deletion_curves(model, x, good[None], [0], ties="strict", **kwargs)
    assert torch.allclose(strict.insertion, fwd.insertion) and torch.allclose(strict.deletion, fwd.deletion)
    # batched = one by one; blurred start runs too
    both = insertion_deletion_curves(model, x.repeat(2, 1, 1, 1), torch.stack([good, -good]), [0, 0], **kwargs)
    assert torch.allclose(both.id_score, torch.cat([fwd.id_score, rev.id_score]))
    blurred = insertion_deletion_curves(model, x, good[None], [0], start="blurred", **kwargs)
    assert blurred.insertion.shape == fwd.insertion.shape


def test_together_inserts_ties_at_once_strict_does_not():
    model = RegionMean(slice(0, 8), slice(0, 8))
    x = torch.ones(1, 3, 16, 16)
    tied = torch.zeros(16, 16)
    tied[8:, 8:] = 1.0  # region of the model sits in the big tie at 0
    together = insertion_deletion_curves(model, x, tied[None], [0], pixels_per_step=16, ties="together")
    strict = insertion_deletion_curves(model, x, tied[None], [0], pixels_per_step=16, ties="strict")
    # after the 64 top pixels, 'together' shows the whole image at once
    assert torch.allclose(together.insertion[0, 5:], together.insertion[0, -1].expand(12))  # point 0 = 0 px
    assert float(together.insertion_auc[0]) > float(strict.insertion_auc[0])


def test_heat_quantized_lite0_map_together_inflates_insertion(lite0, gallery_x):
    """The tie artifact is real on a real model: 'together' > 'strict' Insertion after 8-level quantization.

    The map is lite0's gradient x input (channel sum), heavy-tailed like the LRP maps heat
    quantization was designed for, so most pixels fall into the lowest level.
    """
    x = gallery_x["chelsea"].clone().requires_grad_(True)
    logits = lite0.model(x)
    target = int(logits.argmax())
    (grad,) = torch.autograd.grad(logits[0, target], x)
    raw = (x * grad).sum(1)[0].detach()
    quantized = heat_quantize(raw, 8)
    lowest = (quantized == quantized.min()).float().mean()
    share = torch.stack([(quantized == v).float().mean() for v in quantized.unique()]).max()
    x = x.detach()
    kw = dict(pixels_per_step=2500, raw=raw[None], batch_size=16)
    together = insertion_deletion(lite0, x, quantized[None], [target], ties="together", **kw)
    strict = insertion_deletion(lite0, x, quantized[None], [target], ties="strict", **kw)
    print(f"largest level holds {float(share):.2f} of the pixels (lowest {float(lowest):.2f}); "
          f"insertion together {float(together.insertion_auc[0]):.3f} strict {float(strict.insertion_auc[0]):.3f}; "
          f"deletion together {float(together.deletion_auc[0]):.3f} strict {float(strict.deletion_auc[0]):.3f}")
    assert share > 0.5  # most pixels share one level
    assert float(together.insertion_auc[0]) > float(strict.insertion_auc[0]) + 0.05


# --------------------------------------------------------------------------- localisation, sparseness


def _random_case(seed: int = 0):
    rng = np.random.default_rng(seed)
    a = (rng.random((4, 1, 32, 32)) - 0.3).astype(np.float32)
    x = rng.random((4, 3, 32, 32)).astype(np.float32)
    s = np.zeros((4, 1, 32, 32), np.float32)
    s[0, :, 2:10, 3:12] = 1
    s[1, :, 20:30, 20:31] = 1
    s[2, :, 0:32, 0:5] = 1
    s[3, :, 12:14, 12:14] = 1
    a[1, 0, 25, 25] = 5.0  # a clear hit
    a[3, 0, 0, 31] = 5.0  # a clear miss, far from the 2x2 mask
    return a, x, s


def test_pointing_game_equals_quantus_with_dilated_mask():
    quantus = pytest.importorskip("quantus")
    a, x, s = _random_case()
    tol = 3
    ours = pointing_game(torch.from_numpy(a[:, 0]), torch.from_numpy(s[:, 0]).bool(), tolerance=tol)
    grown = dilate(torch.from_numpy(s[:, 0]).bool(), tol).numpy()[:, None].astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = quantus.PointingGame(disable_warnings=True, normalise=False, abs=False)(
            model=None, x_batch=x, y_batch=np.zeros(4, int), a_batch=a.copy(), s_batch=grown)
    assert ours.tolist() == [float(t) for t in theirs]
    assert ours[1] == 1.0 and ours[3] == 0.0
    # tolerance 15 px: a maximum 10 px off the box still counts
    m = torch.zeros(64, 64)
    m[35, 40] = 1  # 6 px below and 11 px right of the box: 12.5 px away
    assert pointing_game(m[None], box_mask((10, 10, 30, 30), 64, 64), tolerance=15)[0] == 1.0
    assert pointing_game(m[None], box_mask((10, 10, 30, 30), 64, 64), tolerance=5)[0] == 0.0


def test_attribution_localisation_equals_quantus():
    quantus = pytest.importorskip("quantus")
    a, x, s = _random_case(1)
    ours = attribution_localisation(torch.from_numpy(a[:, 0]), torch.from_numpy(s[:, 0]).bool())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = quantus.AttributionLocalisation(disable_warnings=True, normalise=False, abs=False,
                                                 positive_attributions=True)(
            model=None, x_batch=x, y_batch=np.zeros(4, int), a_batch=a.copy(), s_batch=s)
    np.testing.assert_allclose(ours.numpy(), np.asarray(theirs, dtype=np.float64), rtol=1e-5, atol=1e-6)


def test_sparseness_equals_quantus_and_known_values():
    quantus = pytest.importorskip("quantus")
    a, x, _ = _random_case(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = quantus.Sparseness(disable_warnings=True, normalise=False, abs=True)(
            model=None, x_batch=x, y_batch=np.zeros(4, int), a_batch=a.copy())
    ours = sparseness(torch.from_numpy(a[:, 0]).double(), eps=1e-7)
    np.testing.assert_allclose(ours.numpy(), np.asarray(theirs), rtol=1e-6, atol=1e-9)
    one_hot = torch.zeros(1, 10, 10)
    one_hot[0, 3, 3] = 1
    assert torch.isclose(sparseness(one_hot)[0], torch.tensor(0.99))  # (d - 1) / d
    assert torch.isclose(sparseness(torch.ones(1, 10, 10))[0], torch.tensor(0.0), atol=1e-6)


def test_focus_equals_quantus_and_indicator_map_scores_one():
    quantus = pytest.importorskip("quantus")
    rng = np.random.default_rng(3)
    a = (rng.random((3, 1, 32, 32)) - 0.4).astype(np.float32)
    flags = [(1, 1, 0, 0), (0, 1, 0, 1), (1, 0, 0, 1)]
    metric = quantus.Focus(disable_warnings=True, normalise=False, abs=False)
    # quantus needs a model to run __call__; its batch step is the formula, so call it directly
    theirs = metric.evaluate_batch(a_batch=a.copy(), c_batch=flags)
    ours = focus(torch.from_numpy(a[:, 0]), flags)
    np.testing.assert_allclose(ours.numpy(), np.asarray(theirs), rtol=1e-5)
    # a map that is 1 on the target quadrants (TL and BR) only has Focus 1
    q = quadrant_masks(32, 32)
    indicator = (q[0] | q[3]).float()
    assert focus(indicator[None], (1, 0, 0, 1))[0] == pytest.approx(1.0)
    assert focus(indicator[None], (0, 1, 1, 0))[0] == pytest.approx(0.0)


# --------------------------------------------------------------------------- GAE


def test_contrastiveness_constant_map_is_zero_and_perfect_map_is_one():
    probs = torch.zeros(10)
    probs[[2, 5, 7, 9]] = torch.tensor([0.8, 0.05, 0.05, 0.1])
    s = scoring_map(32, 32, positive=1, quadrant_classes=[5, 2, 7, 9], positive_probs=probs)
    q = quadrant_masks(32, 32)
    assert torch.all(s[q[1]] == 1.0)
    assert torch.allclose(s[q[0]], torch.tensor(2 * 0.05 / 0.8 - 1))
    assert contrastiveness(torch.ones(1, 32, 32), s)[0] == 0.0  # the paper's tables: constant maps score 0
    assert contrastiveness(q[1].float()[None], s)[0] == pytest.approx(1.0)
    assert contrastiveness(torch.zeros(1, 32, 32), s)[0] == 0.0
    # by hand: 1 on the positive quadrant, 1/2 on TL (S = 2 * 0.05 / 0.8 - 1 = -7/8), 0 elsewhere; per quadrant
    # of |q| pixels, C = (1 * 1 + 1/2 * (-7/8)) |q| / ((1 + 1/2) |q|) = (9/16) / (3/2) = 3/8
    partial = q[1].float() + 0.5 * q[0].float()
    assert float(contrastiveness(partial[None], s)[0]) == pytest.approx(3 / 8, abs=1e-6)  # float32 sums of 0.5s
    # a negative whose class is as likely as the positive's scores like the positive
    same = scoring_map(32, 32, positive=0, quadrant_classes=[2, 2, 7, 9], positive_probs=probs)
    assert torch.all(same[q[1]] == 1.0)


def test_local_consistency_toy_model_symmetric_schedule():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x = torch.randn(2, 3, 16, 16)
    seen = []

    def input_x_gradient(inp: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        seen.append(inp.detach().clone())
        inp = inp.detach().requires_grad_(True)
        out = model(inp).gather(1, targets[:, None]).sum()
        (g,) = torch.autograd.grad(out, inp)
        return (inp * g).sum(1).detach()

    lc = local_consistency(model, input_x_gradient, x, [0, 1], steps=5)
    assert lc.score.shape == (2,) and torch.all((lc.score >= 0) & (lc.score <= 1))
    assert torch.all(lc.robustness.abs() <= 1 + 1e-6) and torch.all(lc.faithfulness.abs() <= 1 + 1e-6)
    # MoRF and LeRF zero the same cumulative fraction t / T at every step (unlike the released code)
    inputs = seen[0].reshape(2, 2, 5, 3, 16, 16)
    zero_frac = (inputs == 0).flatten(3).float().mean(-1)
    expected = torch.arange(5).float() / 5
    assert torch.allclose(zero_frac, expected.expand(2, 2, 5), atol=1e-3)


# --------------------------------------------------------------------------- fidelity, stability


def test_fidelity_exact_contributions_correlate_perfectly():
    torch.manual_seed(0)
    w = torch.randn(3, 12, 12)

    def linear(x: torch.Tensor) -> torch.Tensor:
        v = (x * w).flatten(1).sum(1)
        return torch.stack([v, -v], 1)

    x = torch.randn(1, 3, 12, 12)
    exact = (x[0] * w).sum(0)  # the logit drop of zeroing a subset is exactly its summed contribution
    assert fidelity(linear, x, exact[None], [0], subset=20, runs=30)[0] == pytest.approx(1.0, abs=1e-5)
    noise = torch.randn(12, 12)
    assert fidelity(linear, x, noise[None], [0], subset=20, runs=30)[0] < 0.9


def test_stability_of_a_constant_explainer_is_zero():
    x = torch.randn(2, 3, 8, 8)
    const = torch.rand(8, 8)
    s = stability(lambda inp, t: const.expand(inp.shape[0], 8, 8), x, [0, 0], samples=3)
    assert torch.allclose(s, torch.zeros(2))
    s2 = stability(lambda inp, t: inp.sum(1), x, [0, 0], samples=3)
    assert torch.all(s2 > 0)


def test_cpu_insertion_deletion_in_channels_last_chunks_equals_the_plain_forward(lite0, gallery_x):
    """The bundle path's CPU forward (chunks of 8, channels_last private view) gives the curves of the shared model
    run plainly (batch 32, contiguous) to float rounding, and leaves the shared model as it was."""
    from explainers.guard import views_of
    from explainers.metrics.insdel import insertion_deletion, insertion_deletion_curves

    x = torch.cat([gallery_x["chelsea"], gallery_x["coffee"]])
    maps = torch.rand(2, 224, 224, generator=torch.Generator().manual_seed(0))
    before = [p.data_ptr() for p in lite0.model.parameters()]
    fast = insertion_deletion(lite0, x, maps, [281, 967], pixels_per_step=4000)
    plain = insertion_deletion_curves(lite0.model, x, maps, [281, 967], mean=lite0.prep.mean, std=lite0.prep.std,
                                      pixels_per_step=4000, batch_size=32)
    # probabilities in [0, 1]; 2e-5 covers another convolution algorithm's float32 rounding through 5M weights
    assert torch.allclose(fast.insertion, plain.insertion, atol=2e-5) and torch.allclose(fast.deletion,
                                                                                          plain.deletion, atol=2e-5)
    assert [p.data_ptr() for p in lite0.model.parameters()] == before
    assert all(p.is_contiguous() for p in lite0.model.parameters())
    assert any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
               for v in views_of(lite0) for p in v.model.parameters())  # the private view was converted


def test_cpu_insertion_deletion_falls_back_for_a_model_that_cannot_run_channels_last():
    import dataclasses

    from explainers.metrics.insdel import _CONTIGUOUS_ONLY, insertion_deletion, insertion_deletion_curves
    from tests.toy_bundle import toy_bundle

    class Viewing(torch.nn.Module):  # .view on a 4D input fails for channels_last strides
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 2, 1)

        def forward(self, x):
            return self.conv(x).view(x.shape[0], -1)[:, :2]

    bundle = dataclasses.replace(toy_bundle(), model=Viewing().eval())
    x, maps = torch.rand(1, 3, 2, 2), torch.rand(1, 2, 2)
    got = insertion_deletion(bundle, x, maps, [0], pixels_per_step=1)
    want = insertion_deletion_curves(bundle.model, x, maps, [0], pixels_per_step=1)
    assert torch.allclose(got.insertion, want.insertion, atol=1e-6)
    assert id(bundle.model) in _CONTIGUOUS_ONLY  # it did fail, and is remembered
