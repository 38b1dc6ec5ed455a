"""A user's own model and labelled dataset, registered in relevance-explorer.toml, through the app (AppTest):
the sidebar picks them, Compare explains a dataset image with the model's own labels, and the Failure review
shows correctness against the true labels; a typed server path is refused without --allow-server-paths."""

from __future__ import annotations

from pathlib import Path

import torch
from streamlit.testing.v1 import AppTest

from tests.project import CLASSES, PER_CLASS

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def open_app(**state) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=300)
    at.session_state["model"] = "fruitnet"
    at.session_state["weights_choice"] = "untrained (architecture only)"
    for k, v in state.items():
        at.session_state[k] = v
    at.run()
    assert not at.exception, at.exception
    return at


def test_compare_on_a_registered_dataset_and_model(project):
    at = open_app(image_source="Dataset", ds_name="fruit", ds_true="banana")
    assert any(o.startswith("fruitnet (project)") for o in at.sidebar.selectbox(key="model").options)
    assert at.sidebar.selectbox(key="ds_name").options == ["fruit", "fruit-csv"]
    # the filter by true class leaves the banana folder: 4 images and the corrupt one, paged
    assert len(at.sidebar.selectbox(key="ds_pick").options) == PER_CLASS + 1
    picks = at.sidebar.selectbox(key="ds_pick")
    first = picks.options[0]
    assert "banana" in first
    # top-5 in the model's own names (3 classes: three choices), and the true label against the prediction
    top = at.sidebar.radio(key="target_top5")
    assert len(top.options) == 3 and all(any(c in o for c in CLASSES) for o in top.options)
    assert any("True class **banana**" in m.value for m in list(at.sidebar.success) + list(at.sidebar.error))
    at.multiselect(key="compare_methods").set_value(["gradcam", "resnet-lrp", "srd"]).run()
    assert not at.exception, at.exception
    captions = {c for img in at.image for c in img.captions}
    assert {"Grad-CAM", "ResNet-LRP", "SRD"} <= captions, captions
    # the corrupt file: one clear message, the page stays usable
    broken = next(i for i, o in enumerate(picks.options) if "broken" in o)
    at.sidebar.selectbox(key="ds_pick").set_value(broken).run()
    assert not at.exception
    assert any("broken.png" in e.value for e in at.sidebar.error)


def test_failure_review_against_true_labels(project):
    from explainers import load_model
    from explainers.datasets import open_registered

    at = open_app()
    at.session_state["fr_method"] = "gradcam"
    at.session_state["fr_source"] = "Dataset"
    at.session_state["fr_dataset"] = "fruit"
    at.switch_page("views/failure_review.py").run()
    assert not at.exception, at.exception
    assert "Folder" not in at.radio(key="fr_source").options  # no typed server paths without the flag
    at.button(key="fr_run").click().run()
    assert not at.exception, at.exception
    assert any("broken.png" in w.value for w in at.warning)  # reported and skipped
    table = at.dataframe[0].value
    assert len(table) == len(CLASSES) * PER_CLASS
    # correctness, recomputed independently: the model's argmax against the folder's class
    bundle = load_model("fruitnet", weights="untrained")
    ds = open_registered("fruit")
    by_name = {s.name: s for s in ds.samples}
    for _, row in table.iterrows():
        sample = by_name[row["name"]]
        from explainers.images import load_image

        pred = int(bundle.predict(bundle.preprocess(load_image(sample.path))).argmax())
        assert row["true_label"] == sample.label
        assert bool(row["correct"]) == (pred == CLASSES.index(sample.label)), row["name"]
        assert row["kind"] in ("wrong prediction", "right, low ID", "right")
    per_class = at.dataframe[1].value
    assert list(per_class.index) == list(CLASSES) and (per_class["images"] == PER_CLASS).all()
    assert int(per_class["wrong prediction"].sum()) == int((~table["correct"].astype(bool)).sum())


def test_typed_server_paths_need_the_flag(project, monkeypatch, tmp_path):
    at = open_app()
    at.switch_page("views/mosaics.py").run()
    assert not at.exception, at.exception
    assert "Folder" not in at.radio(key="mosaic_source").options
    assert not [t for t in at.text_input if t.key == "mosaic_folder"]
    # started with the flag: the folder box is offered
    monkeypatch.setenv("RELEVANCE_EXPLORER_ALLOW_SERVER_PATHS", "1")
    at = open_app()
    at.switch_page("views/failure_review.py").run()
    assert "Folder" in at.radio(key="fr_source").options


def test_mosaic_quadrants_from_distinct_true_classes(project):
    at = open_app()
    at.session_state["mosaic_source"] = "Dataset"
    at.session_state["mosaic_dataset"] = "fruit"
    at.switch_page("views/mosaics.py").run()
    assert not at.exception, at.exception
    picks = [at.selectbox(key=f"mosaic_pick_{q}").value for q in range(4)]
    assert len(picks) == 4 and all(p.split("/")[0] in CLASSES for p in picks)
    assert torch.is_tensor(torch.zeros(1))


def test_the_sidebar_follows_the_user_across_pages(project):
    """Model, image source, dataset image and target stay as chosen when the user moves between pages."""
    at = open_app(image_source="Dataset", ds_name="fruit", ds_true="cherry")
    at.sidebar.selectbox(key="ds_pick").set_value(2).run()
    radio = at.sidebar.radio(key="target_top5")
    second = next(i for i in range(3) if i != radio.value)  # a class that is not the predicted one
    radio.set_value(second).run()
    chosen = (at.sidebar.selectbox(key="model").value, at.sidebar.selectbox(key="ds_true").value,
              at.sidebar.selectbox(key="ds_pick").value, at.sidebar.radio(key="target_top5").value)
    assert chosen == ("fruitnet", "cherry", 2, second)
    for page in ("views/metrics.py", "views/mosaics.py", "views/compare.py", "views/conservation.py",
                 "views/metrics.py"):
        at.switch_page(page).run()
        assert not at.exception, (page, at.exception)
        now = (at.sidebar.selectbox(key="model").value, at.sidebar.selectbox(key="ds_true").value,
               at.sidebar.selectbox(key="ds_pick").value, at.sidebar.radio(key="target_top5").value)
        assert now == chosen, page
