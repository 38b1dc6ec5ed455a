"""The view follows the user (issue #15 items 4 and 6): a link's query string reopens model, image, target and
methods (validated: nothing but registered names is ever looked up), the URL follows the user's changes, and the
sidebar and methods survive visiting other pages.  Through Streamlit's AppTest (no browser)."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from views.link import parse

APP = str(Path(__file__).resolve().parents[1] / "app.py")

MODELS, GALLERY_KEYS, DATASETS, METHOD_IDS = ["m1", "m2"], ["coffee", "chelsea"], ["fruit"], ["gradcam", "saliency"]
FILES = {"fruit": ["apple/a0.png", "banana/b1.png"]}


def _parse(params: dict[str, str], calls: list | None = None):
    def dataset_state(name: str, image: str) -> dict:
        if calls is not None:
            calls.append((name, image))
        if image not in FILES[name]:
            raise KeyError(image)
        return {"image_source": "Dataset", "ds_name": name, "ds_pick": FILES[name].index(image)}

    return parse(params, MODELS, GALLERY_KEYS, DATASETS, METHOD_IDS, dataset_state)


def test_a_valid_link_becomes_widget_values():
    p = _parse({"model": "m2", "image": "coffee", "target": "967", "methods": "saliency,gradcam,saliency"})
    assert p.state == {"model": "m2", "image_source": "Gallery", "gallery": "coffee"}
    assert (p.target, p.methods, p.problems) == (967, ["saliency", "gradcam"], [])
    p = _parse({"dataset": "fruit", "image": "banana/b1.png"})
    assert p.state == {"image_source": "Dataset", "ds_name": "fruit", "ds_pick": 1} and not p.problems
    assert _parse({"methods": ""}).methods == []  # a view with no method chosen


@pytest.mark.parametrize("params, problem", [
    ({"model": "/etc/passwd"}, "unknown model '/etc/passwd'"),
    ({"image": "../../secret.png"}, "unknown gallery image '../../secret.png'"),
    ({"dataset": "/data/private", "image": "x.png"}, "unknown dataset '/data/private'"),
    ({"dataset": "fruit", "image": "../../../etc/passwd"}, "fruit has no image '../../../etc/passwd'"),
    ({"dataset": "fruit"}, "no image named for dataset 'fruit'"),
    ({"target": "-3"}, "target '-3' is not a class index"),
    ({"target": "1e9"}, "target '1e9' is not a class index"),
    ({"target": "99999999999"}, "not a class index"),
    ({"methods": "gradcam,rm -rf"}, "unknown method 'rm -rf'"),
    ({"model": "x" * 500}, "..."),  # a long value is shortened in the message
])
def test_a_bad_value_is_one_problem_line_and_sets_nothing(params, problem):
    calls: list = []
    p = _parse(params, calls)
    assert len(p.problems) == 1 and problem in p.problems[0], p.problems
    assert len(p.problems[0]) < 120
    assert p.state == {} and p.target is None
    assert p.methods in (None, ["gradcam"])
    assert all(name in DATASETS for name, _ in calls)  # only a registered dataset's listing is ever consulted


def _captions(at: AppTest) -> list[str]:
    return [c for img in at.image for c in img.captions]


@pytest.mark.slow  # 18-20 s on the loaded 2-core machine (two maps, the app's first run)
def test_a_link_reopens_its_view_and_the_url_follows_changes():
    at = AppTest.from_file(APP, default_timeout=300)
    at.query_params.update(model="efficientnet_lite0", image="coffee", target="967", methods="gradcam,saliency")
    at.run()
    assert not at.exception, at.exception
    assert not at.warning
    assert at.sidebar.selectbox(key="model").value == "efficientnet_lite0"
    assert at.sidebar.selectbox(key="gallery").value == "coffee"
    assert at.sidebar.radio(key="target_top5").value == 967
    assert at.multiselect(key="compare_methods").value == ["gradcam", "saliency"]
    assert {"Input (coffee.png)", "Grad-CAM", "Saliency"} <= set(_captions(at))
    assert at.query_params == {"model": "efficientnet_lite0", "image": "coffee", "target": "967",
                               "methods": "gradcam,saliency"}
    # the URL follows the user; the link is read once, so it never overrides a later choice
    at.sidebar.selectbox(key="gallery").set_value("chelsea").run()
    at.multiselect(key="compare_methods").set_value(["saliency"]).run()
    assert at.sidebar.selectbox(key="gallery").value == "chelsea"
    assert at.query_params["image"] == "chelsea" and at.query_params["methods"] == "saliency"
    assert at.query_params["target"] == str(at.sidebar.radio(key="target_top5").value)


def test_an_upload_has_no_url_so_the_link_keeps_model_and_methods():
    from explainers.images import GALLERY

    at = AppTest.from_file(APP, default_timeout=300).run()
    assert at.query_params["image"] == "chelsea"
    at.sidebar.radio(key="image_source").set_value("Upload").run()
    at.sidebar.get("file_uploader")[0].upload("mine.png", GALLERY["rocket"].png_bytes(), "image/png").run()
    assert "Input (mine.png)" in _captions(at)
    assert at.query_params == {"model": "efficientnet_lite0", "methods": "gradcam"}


def test_a_bad_link_warns_once_and_opens_the_defaults():
    at = AppTest.from_file(APP, default_timeout=300)
    at.query_params.update(model="../../etc/passwd", image="/root/.ssh/id_rsa", target="espresso",
                           methods="gradcam,nonsense")
    at.run()
    assert not at.exception, at.exception
    assert len(at.warning) == 1
    text = at.warning[0].value
    for part in ("unknown model", "unknown gallery image", "not a class index", "unknown method 'nonsense'"):
        assert part in text, text
    assert at.sidebar.selectbox(key="model").value == "efficientnet_lite0"
    assert at.sidebar.selectbox(key="gallery").value == "chelsea"
    assert at.multiselect(key="compare_methods").value == ["gradcam"]
    assert at.query_params["image"] == "chelsea" and at.query_params["methods"] == "gradcam"
    at.run()
    assert not at.warning  # one line, once


def test_a_link_to_a_page_with_a_target_outside_the_top5(project):
    """The page is the URL's path; a target that is not in the top-5 opens as a class search."""
    at = AppTest.from_file(APP, default_timeout=300)
    at.query_params.update(image="coffee", target="5")
    at.switch_page("views/dataset.py").run()
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == ["Dataset"]
    assert at.sidebar.radio(key="target_mode").value == "Search"
    assert at.sidebar.selectbox(key="target_match").value == 5
    assert at.query_params["target"] == "5" and at.query_params["image"] == "coffee"
    at2 = AppTest.from_file(APP, default_timeout=300)
    at2.query_params.update(image="coffee", target="100000")  # more than the model's classes
    at2.switch_page("views/dataset.py").run()
    assert not at2.exception, at2.exception
    assert any("not one of this model's 1000 classes" in w.value for w in at2.warning)


def test_a_link_to_a_registered_dataset_image(project):
    from explainers.datasets import open_registered

    name = open_registered("fruit").samples[5].name
    at = AppTest.from_file(APP, default_timeout=300)
    at.query_params.update(model="fruitnet", dataset="fruit", image=name)
    at.session_state["weights_choice"] = "untrained (architecture only)"
    at.switch_page("views/dataset.py").run()
    assert not at.exception, at.exception
    assert not [w.value for w in at.warning if "link" in w.value]
    assert at.sidebar.radio(key="image_source").value == "Dataset"
    pick = at.sidebar.selectbox(key="ds_pick")
    assert name in pick.options[pick.index]
    assert at.query_params["dataset"] == "fruit" and at.query_params["image"] == name
    # a path outside the listing is refused, not read
    at2 = AppTest.from_file(APP, default_timeout=300)
    at2.query_params.update(dataset="fruit", image=str(project))
    at2.switch_page("views/dataset.py").run()
    assert not at2.exception, at2.exception
    assert any("fruit has no image" in w.value for w in at2.warning)
    assert at2.sidebar.radio(key="image_source").value == "Gallery"


def test_sidebar_and_methods_survive_other_pages():
    at = AppTest.from_file(APP, default_timeout=300).run()
    at.sidebar.selectbox(key="gallery").set_value("coffee").run()
    at.multiselect(key="compare_methods").set_value(["gradcam", "saliency"]).run()
    target = at.session_state["ctx"].top5[1][0]  # the second of the top-5, not the default
    at.sidebar.radio(key="target_top5").set_value(target).run()
    for page in ("views/dataset.py", "views/compare.py", "views/dataset.py", "views/dataset.py",
                 "views/compare.py"):
        at.switch_page(page).run()
        assert not at.exception, (page, at.exception)
        assert at.sidebar.selectbox(key="gallery").value == "coffee", page
        assert at.sidebar.radio(key="target_top5").value == target, page
    assert at.multiselect(key="compare_methods").value == ["gradcam", "saliency"]
    assert at.query_params["methods"] == "gradcam,saliency"
