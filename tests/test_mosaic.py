"""2x2 mosaics: layout, per-quadrant predictions, random picks with distinct classes, explaining a quadrant."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from explainers.errors import ExplainerError
from explainers.images import GALLERY
from explainers.metrics import quadrant_masks
from explainers.mosaic import (
    build_mosaic,
    explain_quadrant,
    load_folder,
    predicted_classes,
    random_selection,
)

KEYS = ["chelsea", "coffee", "rocket", "flower"]


@pytest.fixture(scope="module")
def mosaic(lite0):
    return build_mosaic(lite0, [GALLERY[k].image() for k in KEYS], names=KEYS)


def test_layout_and_predictions(lite0, mosaic, gallery_x):
    assert mosaic.x.shape == (1, 3, 224, 224) and mosaic.pixels.shape == (3, 224, 224)
    singles = torch.cat([gallery_x[k] for k in KEYS])
    assert mosaic.classes == lite0.predict(singles).argmax(1).tolist()
    assert "cat" in lite0.class_names[mosaic.classes[0]]
    assert torch.allclose(mosaic.probs.sum(1), torch.ones(4), atol=1e-4)
    # the top-left tile is the chelsea image downsized to 112x112
    cat = torch.nn.functional.interpolate(lite0.to_tensor01(GALLERY["chelsea"].image())[None], size=(112, 112),
                                          mode="bilinear", antialias=True, align_corners=False)[0]
    assert torch.allclose(mosaic.pixels[:, :112, :112], cat.clamp(0, 1), atol=1e-5)
    assert mosaic.image().size == (224, 224)
    assert len(mosaic.quadrant_labels(lite0.class_names)) == 4
    assert len(mosaic.mosaic_top5) == 5


def test_explain_quadrant_focus_and_contrastiveness(lite0, mosaic):
    res = explain_quadrant(lite0, mosaic, 0, "gradcam")
    assert res.target == mosaic.classes[0]
    f = mosaic.focus(res.attribution, res.target)
    c = mosaic.contrastiveness(res.attribution, 0)
    assert 0.0 <= f <= 1.0 and 0.0 <= c <= 1.0
    # an ideal map (only the positive quadrant) is perfect on both
    ideal = quadrant_masks(224, 224)[0].float()
    assert mosaic.focus(ideal, mosaic.classes[0]) == pytest.approx(1.0)
    assert mosaic.contrastiveness(ideal, 0) == pytest.approx(1.0)
    s = mosaic.scoring(0)
    assert s.shape == (224, 224) and float(s.max()) == 1.0 and float(s.min()) >= -1.0
    with pytest.raises(ExplainerError):
        mosaic.focus(ideal, 999 if 999 not in mosaic.classes else 998)


def test_random_selection_distinct_classes():
    classes = {"a": 1, "b": 1, "c": 2, "d": 3, "e": 4, "f": 4}
    for seed in range(5):
        picked = random_selection(classes, 4, seed=seed)
        assert len(picked) == 4 and len({classes[p] for p in picked}) == 4
    with pytest.raises(ExplainerError):
        random_selection({"a": 1, "b": 1, "c": 2}, 4)
    assert len(random_selection({"a": 1, "b": 1, "c": 2, "d": 2}, 4, distinct=False)) == 4


def test_gallery_has_four_distinct_predictions_and_folder_loading(lite0, tmp_path):
    pool = {k: GALLERY[k].image() for k in GALLERY}
    classes = predicted_classes(lite0, pool)
    assert len(set(classes.values())) >= 4
    for k in ("chelsea", "coffee"):
        (tmp_path / f"{k}.png").write_bytes(GALLERY[k].png_bytes())
    (tmp_path / "notes.png").write_bytes(b"not an image")
    loaded = load_folder(tmp_path)
    assert sorted(loaded) == ["chelsea.png", "coffee.png"]
    with pytest.raises(ExplainerError):
        load_folder(tmp_path / "missing")
    with pytest.raises(ExplainerError):
        build_mosaic(lite0, [pool["chelsea"]] * 3)


def test_gae_score_end_to_end(lite0, mosaic):
    from explainers.mosaic import gae_score

    images = [GALLERY[k].image() for k in KEYS]
    score = gae_score(lite0, mosaic, images, 0, "gradcam", steps=3)
    assert 0.0 <= score.local_consistency <= 1.0 and 0.0 <= score.contrastiveness <= 1.0
    assert -1.0 <= score.robustness <= 1.0 and -1.0 <= score.faithfulness <= 1.0
    # Contrastiveness recomputed by hand (abslrp-gae Sec. 3.2, Eq. 17) in numpy from the mosaic's own map and
    # the positive image's softmax: S = 1 on the positive quadrant, clamp(2 p[c_q] / p[c_p] - 1, -1, 1) elsewhere.
    from explainers import explain

    c = mosaic.classes
    a = explain(lite0, mosaic.x, "gradcam", target=c[0]).attribution.numpy().astype(np.float64).clip(0, None)
    a /= a.max()
    p = lite0.predict(lite0.preprocess(images[0]))[0].double().numpy()
    s = np.empty_like(a)
    h, w = a.shape[0] // 2, a.shape[1] // 2
    for q, (rows, cols) in enumerate([(slice(0, h), slice(0, w)), (slice(0, h), slice(w, None)),
                                      (slice(h, None), slice(0, w)), (slice(h, None), slice(w, None))]):
        s[rows, cols] = 1.0 if q == 0 else min(1.0, max(-1.0, 2 * p[c[q]] / p[c[0]] - 1))
    assert score.contrastiveness == pytest.approx(max(0.0, (a * s).sum() / a.sum()), abs=1e-5)
