"""The Dataset page (AppTest, on the project fixture's `fruit` dataset and untrained `fruitnet`) and the analysis
behind it (explainers/dataset_view.py): records from a pipeline run, worst-first order, mean maps per class,
strategy clusters per class and the sidebar state that opens one image in Compare."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score
from streamlit.testing.v1 import AppTest

from explainers import dataset_view as dv
from explainers.datasets import Dataset, Sample
from tests.project import CLASSES, PER_CLASS, make_project

APP = str(Path(__file__).resolve().parents[1] / "app.py")


# --------------------------------------------------------------------------- dataset_view


def _rec(name, label, target, correct, id_=None, m=None):
    return dv.Record(name, label, target, correct, {"id": id_, "insertion": None, "deletion": None,
                                                    "sparseness": None}, np.zeros((8, 8)) if m is None else m)


def test_worst_first_puts_wrong_then_low_values_then_undefined():
    recs = [_rec("a", "x", 0, True, 0.5), _rec("b", "x", 1, False, 0.9), _rec("c", "x", 0, True, -0.2),
            _rec("d", "x", 0, True, None), _rec("e", "x", 0, True, float("nan")), _rec("f", "x", 1, False, 0.1)]
    assert [r.name for r in dv.worst_first(recs)] == ["f", "b", "c", "a", "d", "e"]
    assert [r.name for r in dv.worst_first(recs, wrong_first=False)] == ["c", "f", "a", "b", "d", "e"]
    recs2 = [dv.Record(n, "x", 0, True, {"deletion": v}, np.zeros((2, 2))) for n, v in [("p", 0.1), ("q", 0.7)]]
    assert [r.name for r in dv.worst_first(recs2, "-deletion")] == ["q", "p"]


def test_mean_maps_weigh_each_image_equally():
    a = np.zeros((8, 8))
    a[:4, :4] = 100.0  # large mass, top-left
    b = np.zeros((8, 8))
    b[4:, 4:] = 1.0  # small mass, bottom-right
    means = dv.mean_maps([_rec("1", "x", 0, True, m=a), _rec("2", "x", 0, True, m=b),
                          _rec("3", None, 0, None, m=b)], size=2)
    assert set(means) == {"x", "(unlabelled)"}
    # unit mass per map: the two quadrants get 0.5 each whatever the raw scale
    np.testing.assert_allclose(means["x"], [[0.5, 0.0], [0.0, 0.5]], atol=1e-12)
    np.testing.assert_allclose(means["(unlabelled)"], [[0.0, 0.0], [0.0, 1.0]], atol=1e-12)


def test_class_clusters_separate_two_planted_map_shapes():
    rng = np.random.default_rng(0)
    recs, truth = [], []
    for i in range(16):
        m = rng.random((16, 16)) * 0.01  # noise mass ~1.3 against 16 in the shape
        corner = i % 2 == 1
        if corner:
            m[:4, :4] += 1.0
        else:
            m[6:10, 6:10] += 1.0
        recs.append(_rec(f"img{i:02d}", "bird", 0, True, m=m))
        truth.append(int(corner))
    recs.append(_rec("other", "cat", 0, True, m=rng.random((16, 16))))
    found = dv.class_clusters(recs, "bird", size=8)
    assert found.names == [f"img{i:02d}" for i in range(16)]  # only the class's images
    assert found.n_clusters == 2
    assert adjusted_rand_score(truth, found.labels) == 1.0
    assert sorted(sum((found.members(k) for k in range(2)), [])) == found.names
    pts = found.points()
    assert len(pts) == 16 and {p["cluster"] for p in pts} == {"cluster 0", "cluster 1"}
    corner_k = int(found.labels[1])
    # expected corner share 16.04 / (16 + 1.28) = 0.93 of the unit mass (the rest is the noise)
    assert found.mean_maps[corner_k][:2, :2].sum() > 0.9 * found.mean_maps[corner_k].sum()


def test_identical_maps_make_one_cluster_without_crashing():
    recs = [_rec(f"z{i}", "x", 0, True, m=np.zeros((8, 8))) for i in range(5)]
    found = dv.class_clusters(recs, "x", size=4)
    assert found.n_clusters == 1 and found.members(0) == [f"z{i}" for i in range(5)]
    assert np.isfinite(found.embedding).all()


def test_compare_state_finds_page_and_position():
    root = Path("/nowhere")
    samples = [Sample(root / f"{c}_{i}.png", c, f"{c}/{c}_{i}.png") for c in ("a", "b") for i in range(10)]
    ds = Dataset("toy", root, "imagefolder", samples)
    st = dv.compare_state(ds, "b/b_9.png", page_size=8)
    assert st == {"image_source": "Dataset", "ds_name": "toy", "ds_true": "b", "ds_pred": "(all)", "ds_page": 2,
                  "ds_pick": 1}
    unl = Dataset("u", root, "folder", [Sample(root / f"{i}.png", None, f"{i}.png") for i in range(9)])
    assert dv.compare_state(unl, "8.png", 8)["ds_true"] == "(all)"
    assert dv.compare_state(unl, "8.png", 8)["ds_page"] == 2
    with pytest.raises(KeyError):
        dv.compare_state(ds, "missing.png", 8)


def test_records_from_a_pipeline_run_match_per_image_explain(tmp_path):
    from explainers import explain, load_model
    from explainers.by_class import truth_by_name
    from explainers.datasets import open_dataset
    from explainers.images import load_image
    from explainers.pipeline import as_items, run

    toml = make_project(tmp_path / "p")
    import os

    os.environ["RELEVANCE_EXPLORER_CONFIG"] = str(toml)
    try:
        bundle = load_model("fruitnet", weights="untrained")
        ds = open_dataset(toml.parent / "data" / "fruit")
        items = as_items(ds.samples)
        result = run(bundle, items, ["gradcam"], ("insdel", "sparseness"), keep=True, workers=0)
        recs = dv.records(result, items, "gradcam", truth_by_name(ds, bundle.class_names))
    finally:
        del os.environ["RELEVANCE_EXPLORER_CONFIG"]
    assert len(recs) == len(CLASSES) * PER_CLASS  # the corrupt file is skipped, not recorded
    assert {r.label for r in recs} == set(CLASSES)
    by_name = {s.name: s for s in ds.samples}
    for r in recs[:3]:
        x = bundle.preprocess(load_image(by_name[r.name].path))
        e = explain(bundle, x, "gradcam")
        assert r.target == e.target
        assert r.correct == (e.target == CLASSES.index(r.label))
        np.testing.assert_allclose(r.map, e.attribution.float().numpy(), atol=1e-5)  # gradcam: no post-processing


# --------------------------------------------------------------------------- the page


def test_dataset_page_clusters_a_class_and_opens_a_member_in_compare(project):
    at = AppTest.from_file(APP, default_timeout=300)
    at.session_state["model"] = "fruitnet"
    at.session_state["weights_choice"] = "untrained (architecture only)"
    at.session_state["dv_dataset"] = "fruit"
    at.session_state["dv_method"] = "input-x-gradient"  # the untrained net's Grad-CAMs are all zero
    at.run()
    at.switch_page("views/dataset.py").run()
    assert not at.exception, at.exception
    at.button(key="dv_run").click().run()
    assert not at.exception, at.exception
    assert any("broken.png" in w.value for w in at.warning)
    assert any("images/s" in c.value for c in at.caption)
    at.selectbox(key="dv_class").set_value("cherry")
    at.number_input(key="dv_k").set_value(2).run()
    assert not at.exception, at.exception
    assert any("2 cluster(s) among 4 maps of cherry" in c.value for c in at.caption)
    expanders = [e.label for e in at.expander if e.label.startswith("Cluster ")]
    assert len(expanders) == 2 and sum(int(e.split(": ")[1].split()[0]) for e in expanders) == PER_CLASS
    # open the first member of cluster 1 in Compare
    button = next(b for b in at.button if b.key and b.key.startswith("dv_cmp_c1_"))
    name = button.key[len("dv_cmp_c1_"):]
    assert name.startswith("cherry/")
    button.click().run()
    assert not at.exception, at.exception
    assert at.session_state["ds_true"] == "cherry"
    picks = at.sidebar.selectbox(key="ds_pick")
    assert name.split("/")[1] in picks.options[picks.value]
    assert at.session_state["ctx"].image_name == name  # Compare explains exactly that image
    assert [t.value for t in at.title] == ["Compare attribution methods"]
    # back on the Dataset page the run is kept; the worst image opens in Failure review on this dataset
    at.switch_page("views/dataset.py").run()
    assert not at.exception, at.exception
    review = next(b for b in at.button if b.key and b.key.startswith("dv_rev_worst_"))
    review.click().run()
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == ["Failure review"]
    assert at.radio(key="fr_source").value == "Dataset" and at.selectbox(key="fr_dataset").value == "fruit"
