"""Model zoo: the embedded model is really trained, weights are never invented."""

from __future__ import annotations

import pickle

import pytest
import torch

from explainers import (
    ExplainerError,
    InvalidCheckpoint,
    UnknownClass,
    UnknownModel,
    WeightsUnavailable,
    list_models,
    load_model,
)
from explainers.classes import find_classes, imagenet_class_names, resolve_target
from explainers.images import GALLERY
from explainers.models import MODEL_SPECS, _embedded_lite0_path

CAT_CLASSES = {281, 282, 285}  # tabby, tiger cat, Egyptian cat


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """No torch hub and no Hugging Face cache: as on a fresh offline machine."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda *a, **k: None)
    return tmp_path


def test_lite0_predicts_cat_and_espresso(lite0, gallery_x):
    assert lite0.trained and lite0.label == "efficientnet_lite0"
    assert lite0.topk(gallery_x["chelsea"], 1)[0][0] in CAT_CLASSES
    assert lite0.topk(gallery_x["coffee"], 1)[0][0] == 967  # espresso


def test_lite0_weights_map_order_wise_with_matching_shapes(lite0):
    src = torch.load(_embedded_lite0_path(), map_location="cpu", weights_only=True)
    dst = lite0.model.state_dict()
    assert len(src) == len(dst) == 296
    for (sk, sv), (dk, dv) in zip(src.items(), dst.items()):
        assert sv.shape == dv.shape, (sk, dk)
        assert torch.equal(sv, dv.cpu()), (sk, dk)


def test_list_models_reports_availability(empty_caches):
    rows = {r.name: r for r in list_models()}
    assert set(rows) == set(MODEL_SPECS)
    assert rows["efficientnet_lite0"].available
    assert not rows["resnet18"].available
    assert str(empty_caches / "hub" / "checkpoints") in rows["resnet18"].where
    assert "vit_tiny_patch16_224" in rows["vit_tiny_patch16_224"].where


@pytest.mark.parametrize("name", ["resnet18", "vgg16", "vit_tiny_patch16_224"])
def test_missing_weights_raise_clear_error(empty_caches, name):
    with pytest.raises(WeightsUnavailable, match="untrained") as info:
        load_model(name, device="cpu")
    assert "Put the file at" in str(info.value)


def test_cached_torchvision_weights_are_found(empty_caches, untrained):
    rows = {r.name: r for r in list_models()}
    target = empty_caches / "hub" / "checkpoints"
    target.mkdir(parents=True)
    torch.save(untrained("resnet18").model.state_dict(), rows["resnet18"].where)
    assert {r.name: r for r in list_models()}["resnet18"].available
    bundle = load_model("resnet18", device="cpu")
    assert bundle.trained and str(target) in bundle.weights_source


def test_untrained_is_labelled(untrained):
    bundle = untrained("resnet18")
    assert bundle.trained is False
    assert "untrained" in bundle.label and "untrained" in bundle.weights_source


def test_checkpoint_file_round_trip(tmp_path, untrained):
    src = untrained("resnet18")
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": src.model.state_dict()}, path)
    bundle = load_model("resnet18", device="cpu", weights=str(path))
    assert bundle.trained and "checkpoint" in bundle.weights_source
    for a, b in zip(src.model.state_dict().values(), bundle.model.state_dict().values()):
        assert torch.equal(a, b)


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_checkpoint_that_is_not_a_state_dict_is_refused(tmp_path, untrained):
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(InvalidCheckpoint, match="weights_only"):
        load_model("resnet18", device="cpu", weights=str(evil))
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(InvalidCheckpoint):
        load_model("resnet18", device="cpu", weights=str(text))
    wrong = tmp_path / "vgg.pth"
    torch.save(untrained("vgg16").model.state_dict(), wrong)
    with pytest.raises(InvalidCheckpoint, match="does not fit"):
        load_model("resnet18", device="cpu", weights=str(wrong))
    with pytest.raises(InvalidCheckpoint, match="does not exist"):
        load_model("resnet18", device="cpu", weights=str(tmp_path / "missing.pth"))


def test_unknown_model_and_missing_cuda():
    with pytest.raises(UnknownModel, match="Known models"):
        load_model("resnet9000")
    if not torch.cuda.is_available():
        with pytest.raises(ExplainerError, match="CUDA"):
            load_model("efficientnet_lite0", device="cuda")


def test_preprocess_shape_and_denormalize(lite0):
    img = GALLERY["coffee"].image()
    x = lite0.preprocess(img)
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    back = lite0.denormalize(x)[0]
    assert torch.allclose(back, lite0.to_tensor01(img), atol=1e-5)


def test_class_lookup():
    names = imagenet_class_names()
    assert len(names) == 1000 and names[285] == "Egyptian cat"
    assert resolve_target("espresso", names) == 967
    assert resolve_target("285", names) == 285
    assert resolve_target(None, names) is None
    assert find_classes("tabby", names)[0] == 281
    with pytest.raises(UnknownClass, match="out of range"):
        resolve_target(1000, names)
    with pytest.raises(UnknownClass, match="out of range"):
        resolve_target(-1, names)
    with pytest.raises(UnknownClass, match="No class matches"):
        resolve_target("zzzzqq", names)
