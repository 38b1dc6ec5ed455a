"""The command line: explain writes a heatmap and names the class; user errors exit 2 without a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from explainers.cli import main
from explainers.images import GALLERY

ROOT = Path(__file__).resolve().parents[1]
CAT_CLASSES = {281, 282, 285}


def test_explain_end_to_end_in_a_subprocess(tmp_path):
    image = tmp_path / "chelsea.png"
    image.write_bytes(GALLERY["chelsea"].png_bytes())
    out = tmp_path / "x.png"
    env = {**os.environ, "RELEVANCE_EXPLORER_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "explainers", "explain", str(image), "--model", "efficientnet_lite0",
         "--method", "gradcam", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "top-5 predictions" in proc.stdout and "cat" in proc.stdout.split("top-5 predictions:")[1].splitlines()[1]
    heat = np.asarray(Image.open(out))
    assert heat.shape == (224, 224, 3) and heat.std() > 5


def test_explain_json_with_target_name(tmp_path, capsys):
    image = tmp_path / "coffee.png"
    image.write_bytes(GALLERY["coffee"].png_bytes())
    assert main(["explain", str(image), "--method", "gradcam", "--target-name", "tabby", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["top5"][0]["index"] == 967
    assert summary["target"] == 281 and summary["trained"] is True
    assert summary["native_resolution"] == [7, 7]


def test_untrained_model_is_flagged(tmp_path, capsys):
    image = tmp_path / "chelsea.png"
    image.write_bytes(GALLERY["chelsea"].png_bytes())
    assert main(["explain", str(image), "--model", "resnet18", "--weights", "untrained"]) == 0
    out = capsys.readouterr().out
    assert "UNTRAINED" in out and "resnet18 (untrained)" in out


def test_user_errors_exit_2_with_one_line(tmp_path, capsys, monkeypatch):
    fake = tmp_path / "notes.png"
    fake.write_text("this is not an image")
    assert main(["explain", str(fake)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "not an image" in err and "Traceback" not in err

    real = tmp_path / "cat.png"
    real.write_bytes(GALLERY["chelsea"].png_bytes())
    assert main(["explain", str(real), "--target", "1000"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["explain", str(real), "--option", "nonsense=1"]) == 2
    assert "has no option" in capsys.readouterr().err

    monkeypatch.setattr("torch.hub.get_dir", lambda: str(tmp_path / "hub"))
    assert main(["explain", str(real), "--model", "resnet50"]) == 2
    assert "Trained weights for resnet50" in capsys.readouterr().err


def test_models_listing(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("efficientnet_lite0"))
    assert "available" in line
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} >= {"resnet50", "vgg16_bn", "vit_base_patch16_224"}


def test_bench_speed_family_selectors_expand_to_supported_methods(lite0, untrained):
    from explainers.bench import expand_methods
    from explainers.registry import METHODS

    resnet, vgg, vit = (untrained(n) for n in ("resnet18", "vgg16", "vit_tiny_patch16_224"))
    cams = expand_methods(["cam"], lite0)
    assert cams and all(METHODS[m].family == "cam" for m in cams)
    assert {"gradcam", "scorecam", "ablationcam", "fullgrad"} <= set(cams)
    # DeepLift is not offered on ResNets, so the gradient family there leaves it out
    assert "deeplift" in expand_methods(["gradient"], lite0)
    assert "deeplift" not in expand_methods(["gradient"], resnet)
    # ids and inline options stay as given, in order, without duplicates
    assert expand_methods(["scorecam@top_k=32", "gradcam", "cam"], vgg)[:2] == ["scorecam@top_k=32", "gradcam"]
    assert len(set(expand_methods(["gradcam", "cam"], vgg))) == len(expand_methods(["gradcam", "cam"], vgg))
    assert set(expand_methods(["all"], vit)) == {m for m, s in METHODS.items() if s.supports(vit)}


def test_bench_speed_prints_a_table(capsys):
    assert main(["bench", "speed", "--methods", "saliency,guided-backprop", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "| forward | 1 |" in out and "| saliency | 1 |" in out and "| guided-backprop | 1 |" in out


def test_your_own_model_and_dataset_on_the_command_line(tmp_path, capsys, monkeypatch):
    """--model with a factory and --labels, a registered model, bench quality per true class, and a project file
    with a wrong class count: one line, exit 2."""
    from tests.project import CLASSES, make_project

    toml = make_project(tmp_path / "project")
    monkeypatch.setenv("RELEVANCE_EXPLORER_CONFIG", str(toml))
    monkeypatch.setenv("RELEVANCE_EXPLORER_DB", str(tmp_path / "q.sqlite"))
    monkeypatch.syspath_prepend(str(toml.parent))
    img = toml.parent / "data" / "fruit" / "apple" / "apple_0.png"
    labels = toml.parent / "fruit.txt"
    assert main(["explain", str(img), "--model", "mymodels:build", "--weights", "untrained", "--labels", str(labels),
                 "--method", "resnet-lrp", "--json", "--out", str(tmp_path / "a.png")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["target_name"] in CLASSES
    assert main(["bench", "quality", "--model", "fruitnet", "--weights", "untrained", "--images", "fruit",
                 "--methods", "gradcam", "--metrics", "sparseness"]) == 0
    captured = capsys.readouterr()
    text = captured.out
    assert "skipped banana/broken.png" in captured.err  # reported; the other 12 images are scored
    assert "per true class" in text and all(f"| gradcam | {c} |" in text for c in CLASSES)
    assert "accuracy per true class" in text
    toml.write_text(toml.read_text().replace('labels = "fruit.txt"', 'labels = "fruit.txt"\nnum_classes = 5'))
    assert main(["explain", str(img), "--model", "fruitnet", "--weights", "untrained"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and "3" in err and "5" in err


def _bad_argument_cases(tmp_path):
    image = tmp_path / "cat.png"
    image.write_bytes(GALLERY["chelsea"].png_bytes())
    folder = tmp_path / "a_folder"
    folder.mkdir()
    img = str(image)
    return [
        (["explain", img, "--out", str(tmp_path / "missing" / "x.png")], "does not exist"),
        (["explain", img, "--out", str(folder)], "is a folder"),
        (["explain", img, "--opacity", "nan"], "[0, 1]"),
        (["explain", img, "--opacity", "1.5"], "[0, 1]"),
        (["explain", img, "--opacity", "half"], "expected a number"),
        (["explain", str(tmp_path / "nope.png")], "does not exist"),
        (["explain", str(folder)], "is a folder"),
        (["explain", img, "--target", "-3"], "at least 0"),
        (["explain", img, "--num-classes", "0"], "at least 1"),
        (["explain", img, "--weights", str(tmp_path / "none.pt")], "does not exist"),
        (["explain", img, "--labels", str(tmp_path / "none.txt")], "does not exist"),
        (["explain", img, "--option", "layer=classifier"], "gradcam"),
        (["explain", img, "--method", "scorecam", "--option", "layer=classifier"], "scorecam"),
        (["bench", "quality", "--pixels-per-step", "0"], "at least 1"),
        (["bench", "quality", "--limit", "-1"], "at least 1"),
        (["bench", "quality", "--images", str(tmp_path / "no_folder")], "neither 'gallery'"),
        (["bench", "quality", "--out", str(folder)], "is a folder"),
        (["bench", "speed", "--repeat", "0"], "at least 1"),
        (["bench", "speed", "--batch", "0"], "at least 1"),
        (["bench", "erf", "--positions", "-1"], "at least 1"),
        (["bench", "erf", "--repeat", "x"], "whole number"),
        (["explain"], "required"),
        (["no-such-command"], "invalid choice"),
    ]


def test_every_bad_argument_is_one_error_line_and_exit_2(tmp_path, capsys):
    """Each case once ended in a traceback or a silent wrong result (issue 17, point 4)."""
    for argv, expected in _bad_argument_cases(tmp_path):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's path
            code = exc.code
        err = capsys.readouterr().err
        assert code == 2, (argv, code, err)
        lines = err.strip().splitlines()  # a slow method's time estimate may come first, on its own line
        errors = [ln for ln in lines if ln.startswith("error:")]
        assert len(errors) == 1 and lines[-1] == errors[0], (argv, err)
        assert expected in errors[0], (argv, errors[0])
        assert "Traceback" not in err
