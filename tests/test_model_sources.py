"""Models from anywhere: timm / torchvision names, checkpoints with their own head and labels, user factories,
and the project file that names them."""

from __future__ import annotations

import textwrap

import pytest
import torch

from explainers.config import load_config
from explainers.errors import ConfigError, InvalidCheckpoint, InvalidLabels, UnknownModel
from explainers.model_sources import load_source, parse_source
from tests.project import USER_CNN


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "mymodels.py").write_text(USER_CNN)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "mymodels:build"


@pytest.fixture
def lite0_200(tmp_path, lite0):
    """EfficientNet-Lite0's trained backbone with a new 200-class head, saved as a checkpoint, and 200 labels."""
    import timm

    model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=200)
    backbone = {k: v for k, v in lite0.model.state_dict().items() if not k.startswith("classifier.")}
    missing, _ = model.load_state_dict(backbone, strict=False)
    assert sorted(missing) == ["classifier.bias", "classifier.weight"]
    torch.manual_seed(1)
    torch.nn.init.normal_(model.classifier.weight, std=0.05)
    ckpt = tmp_path / "birds.pt"
    torch.save(model.state_dict(), ckpt)
    labels = tmp_path / "birds.txt"
    labels.write_text("".join(f"bird species {i:03d}\n" for i in range(200)))
    return ckpt, labels


def test_parse_source():
    assert parse_source("timm:resnet18").kind == "timm"
    assert parse_source("torchvision:resnet50").name == "resnet50"
    assert parse_source("mymodels:build").kind == "factory"
    assert parse_source("factory:pkg.sub:make").name == "pkg.sub:make"
    assert parse_source("resnet50").kind == "zoo"
    for bad in ("timm:", "a b:c", "mod:fn:extra"):
        with pytest.raises(ConfigError):
            parse_source(bad)


def test_checkpoint_with_its_own_head_and_labels(lite0_200, gallery_x):
    ckpt, labels = lite0_200
    bundle = load_source("timm:efficientnet_lite0", device="cpu", weights=str(ckpt), labels=str(labels))
    assert len(bundle.class_names) == 200 and bundle.trained
    top5 = bundle.topk(gallery_x["chelsea"], 5)
    assert all(name.startswith("bird species ") for _, name, _ in top5)
    # the head size is read from the checkpoint when no labels say it
    assert len(load_source("timm:efficientnet_lite0", device="cpu", weights=str(ckpt)).class_names) == 200


def test_checkpoint_mismatches_name_the_offending_keys(lite0_200, tmp_path):
    ckpt, labels = lite0_200
    short = tmp_path / "short.txt"
    short.write_text("a\nb\n")
    with pytest.raises(InvalidLabels, match="name 2 classes but the model has 200 outputs"):
        load_source("timm:efficientnet_lite0", device="cpu", weights=str(ckpt), labels=str(short), num_classes=200)
    with pytest.raises(InvalidCheckpoint, match=r"shape mismatch .* classifier.weight \(200, 1280\) vs \(10, 1280\)"):
        load_source("timm:efficientnet_lite0", device="cpu", weights=str(ckpt), num_classes=10)
    state = torch.load(ckpt, weights_only=True)
    state.pop("conv_stem.weight")
    torch.save(state, tmp_path / "cut.pt")
    with pytest.raises(InvalidCheckpoint, match="missing conv_stem.weight"):
        load_source("timm:efficientnet_lite0", device="cpu", weights=str(tmp_path / "cut.pt"))


def test_user_factory_model(user_module, tmp_path):
    labels = tmp_path / "three.txt"
    labels.write_text("apple\nbanana\ncherry\n")
    bundle = load_source(user_module, device="cpu", weights="untrained", labels=str(labels))
    assert bundle.class_names == ("apple", "banana", "cherry") and not bundle.trained
    assert bundle.family == "resnet"  # a display label only
    x = torch.rand(1, 3, 64, 64)
    assert {n for _, n, _ in bundle.topk(x, 3)} == {"apple", "banana", "cherry"}
    with pytest.raises(UnknownModel, match="returned a str, not a torch.nn.Module"):
        load_source("mymodels:not_a_model", device="cpu", weights="untrained")
    with pytest.raises(UnknownModel, match="has no function 'nope'"):
        load_source("mymodels:nope", device="cpu", weights="untrained")
    from explainers.errors import WeightsUnavailable

    with pytest.raises(WeightsUnavailable, match="factory model has no library weights"):
        load_source(user_module, device="cpu")


def test_library_names_and_their_preprocessing():
    b = load_source("timm:resnet18", device="cpu", weights="untrained")
    assert len(b.class_names) == 1000 and b.class_names[285] == "Egyptian cat"
    assert b.prep.crop_size == 224 and b.prep.interpolation == "bicubic"  # timm's pretrained cfg
    t = load_source("torchvision:mobilenet_v3_small", device="cpu", weights="untrained", num_classes=5)
    assert t.class_names == tuple(f"class {i}" for i in range(5))
    assert (t.prep.resize_size, t.prep.crop_size) == (256, 224)
    with pytest.raises(UnknownModel, match="timm has no model 'resnet_nope'"):
        load_source("timm:resnet_nope", device="cpu", weights="untrained")
    with pytest.raises(UnknownModel, match="torchvision has no classification model"):
        load_source("torchvision:fasterrcnn_resnet50_fpn", device="cpu", weights="untrained")


def test_project_file(tmp_path, lite0_200, user_module):
    ckpt, labels = lite0_200
    (tmp_path / "data" / "val" / "a").mkdir(parents=True)
    cfg = tmp_path / "relevance-explorer.toml"
    cfg.write_text(textwrap.dedent(f"""
        [models.birds]
        source = "timm:efficientnet_lite0"
        checkpoint = "{ckpt.name}"
        labels = "{labels.name}"
        num_classes = 200
        [models.birds.preprocessing]
        crop = 224
        interpolation = "bicubic"

        [models.mine]
        source = "{user_module}"

        [datasets.val]
        path = "data/val"
        sample = 10
        [datasets.val.classes]
        a = "bird species 000"
    """))
    conf = load_config(cfg)
    assert conf.models["birds"].checkpoint == ckpt.resolve() and conf.models["birds"].num_classes == 200
    assert conf.models["mine"].source == user_module
    assert conf.datasets["val"].classes == {"a": "bird species 000"} and conf.datasets["val"].sample == 10

    def broken(text: str, match: str) -> None:
        cfg.write_text(textwrap.dedent(text))
        with pytest.raises(ConfigError, match=match) as info:
            load_config(cfg)
        assert "\n" not in str(info.value)

    broken(f'[models.b]\nsource = "timm:x"\nlabels = "{labels.name}"\nnum_classes = 100\n',
           r"\[models.b\].*name 200 classes but the model has 100 outputs")
    broken('[models.b]\nsource = "timm:x"\ncheckpont = "x.pt"\n', "unknown key 'checkpont'")
    broken('[models.b]\nsource = "timm:x"\ncheckpoint = "nope.pt"\n', "checkpoint file 'nope.pt' does not exist")
    broken('[datasets.d]\npath = "missing"\n', r"\[datasets.d\]: path 'missing' does not exist")
    broken('[datasets.d]\npath = "data"\nlimit = 0\n', "'limit' must be at least 1")
    broken('[model.b]\nsource = "x"\n', "unknown table 'model'")
    broken('[models.b]\nsource = 3\n', "'source' must be str, not int")
    broken('[models.b\n', "not valid TOML")


# --------------------------------------------------------------------------- methods on models of your own

USER_METHODS = ("resnet-lrp", "srd", "abslrp", "gradcam", "integrated-gradients")


def test_every_method_kind_runs_on_a_user_cnn_and_lrp_conserves(user_module, tmp_path):
    """Support comes from the graph (a traceable CNN with residual adds), not from a family name."""
    from explainers import METHODS, explain, methods_for
    from explainers.capabilities import capabilities_of

    labels = tmp_path / "three.txt"
    labels.write_text("apple\nbanana\ncherry\n")
    bundle = load_source(user_module, device="cpu", weights="untrained", labels=str(labels))
    caps = capabilities_of(bundle)
    assert caps.propagation and caps.residual and caps.cam_layer == "block2"
    offered = {m.id for m in methods_for(bundle)}
    assert set(USER_METHODS) <= offered
    assert "deeplift" not in offered  # the user's blocks reuse one ReLU module, as torchvision's do
    from explainers.images import GALLERY

    x = bundle.preprocess(GALLERY["chelsea"].image())
    for method in USER_METHODS:
        res = explain(bundle, x, method)
        assert res.attribution.shape == x.shape[-2:] and torch.isfinite(res.attribution).all(), method
        assert res.target_name in bundle.class_names
    # LRP (z+ everywhere, identity skips included) carries the whole probability to the input: float32 sums
    res = explain(bundle, x, "resnet-lrp", start="probability")
    assert abs(float(res.attribution.sum()) - res.score) < 1e-5 * res.score
    assert METHODS["resnet-lrp"].supports(bundle)


def test_checkpoint_model_with_its_own_head_runs_every_kind(lite0_200, gallery_x):
    from explainers import explain

    ckpt, labels = lite0_200
    bundle = load_source("timm:efficientnet_lite0", device="cpu", weights=str(ckpt), labels=str(labels))
    for method in USER_METHODS:
        res = explain(bundle, gallery_x["chelsea"], method)
        assert torch.isfinite(res.attribution).all(), method
        assert res.target_name.startswith("bird species "), method


def test_an_untraceable_model_names_the_operation_and_keeps_cams_and_gradients(tmp_path, monkeypatch):
    (tmp_path / "wild.py").write_text(textwrap.dedent('''
        import torch

        from tests.test_capabilities import Untraceable  # data-dependent control flow: fx cannot trace it

        def build():
            torch.manual_seed(0)
            return Untraceable()
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    from explainers import UnsupportedModel, explain, methods_for

    bundle = load_source("wild:build", device="cpu", weights="untrained")
    offered = {m.id for m in methods_for(bundle)}
    assert {"gradcam", "integrated-gradients", "saliency"} <= offered
    assert not offered & {"lrp", "resnet-lrp", "abslrp", "srd"}
    x = torch.rand(1, 3, 32, 32)
    assert torch.isfinite(explain(bundle, x, "gradcam").attribution).all()
    with pytest.raises(UnsupportedModel, match="cannot be traced") as err:
        explain(bundle, x, "resnet-lrp")
    assert "\n" not in str(err.value)
