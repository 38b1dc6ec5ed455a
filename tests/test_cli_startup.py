"""The CLI starts without torch and its optional stacks (issue 15, point 9): `import explainers`, building the
parser, `--help` and argument errors must not import torch, pytorch-grad-cam, captum, zennit, scikit-learn or
matplotlib (torch alone is ~2 s and 650 MB RSS here); `models` lists the zoo without torch, torchvision or timm;
`methods` lists the stored catalogue without torch (and the catalogue equals the registry); the registry itself
needs torch but none of the optional stacks; the app's default gallery image loads without SciPy.
Not timed tests: they check what was imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "pytorch_grad_cam", "captum", "zennit", "sklearn", "matplotlib", "torchvision", "timm", "scipy")
OPTIONAL = ("pytorch_grad_cam", "captum", "zennit", "sklearn", "matplotlib", "torchvision", "timm", "scipy", "cv2")

PROBE = f"""
import contextlib, io, json, sys
import explainers
from explainers.cli import build_parser, main
parser = build_parser()
for argv in (["--help"], ["explain", "--help"], ["bench", "gpu", "--help"], ["explain", "no-such-file.png"],
             ["bench", "speed", "--repeat", "0"], ["nonsense"]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            main(argv)
        except SystemExit:
            pass
print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))
"""


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_parsing_and_user_errors_import_no_heavy_stack():
    out = run("-c", PROBE)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_help_and_error_exit_codes():
    helped = run("-m", "explainers", "--help")
    assert helped.returncode == 0 and "usage: python -m explainers" in helped.stdout
    bad = run("-m", "explainers", "explain", "no-such-file.png")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "does not exist" in bad.stderr


def test_lazy_package_keeps_every_public_name():
    probe = ("import explainers, json; names = explainers.__all__; "
             "print(json.dumps([n for n in names if getattr(explainers, n, None) is None]), "
             "len(explainers.METHODS) >= 20)")
    out = run("-c", probe)
    assert out.returncode == 0, out.stderr
    missing, enough = out.stdout.split()
    assert json.loads(missing) == [] and enough == "True"


def imported_after(code: str, modules: tuple[str, ...]) -> list[str]:
    """Which of ``modules`` a fresh interpreter has imported after running ``code`` (stdout silenced)."""
    probe = (f"import contextlib, io, json, sys\nwith contextlib.redirect_stdout(io.StringIO()):\n"
             f"    {code}\nprint(json.dumps(sorted(m for m in {modules!r} if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "RELEVANCE_EXPLORER_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_models_listing_imports_no_torch():
    # the weights' locations are static data of the zoo (torchvision file names, timm hub ids): no library needed
    assert imported_after("from explainers.cli import main; main(['models']); main(['models', '--json'])",
                          HEAVY) == []


def test_listing_the_zoo_with_an_empty_hub_cache_imports_not_the_hub_client(tmp_path):
    """The app's sidebar lists the zoo on every cold start: with no Hub download cached (this machine, a fresh
    install) that must not import huggingface_hub's file_download / HTTP stack (0.07-0.09 s)."""
    code = (f"import os; os.environ['HF_HUB_CACHE'] = {str(tmp_path)!r}; from explainers.models import list_models; "
            "rows = list_models(); assert any(not r.available and 'models--' in r.where for r in rows)")
    assert imported_after(code, ("huggingface_hub.file_download", "huggingface_hub.hf_api", "httpx", "httpx2")) == []


def test_hub_cache_lookup_equals_the_librarys(tmp_path, monkeypatch):
    """Independent check of the shortcut: on a hand-built Hub cache, the lookup agrees with
    ``huggingface_hub.try_to_load_from_cache`` for a missing repository, a cached file at main, a cached
    'does not exist' marker with the fallback file present, and a repository folder with no snapshot."""
    from huggingface_hub import constants, try_to_load_from_cache

    from explainers.models import MODEL_SPECS, _hf_cached_file

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    specs = [s for s in MODEL_SPECS.values() if s.source not in ("embedded", "torchvision")][:4]
    assert len(specs) == 4
    commit = "0123456789abcdef0123456789abcdef01234567"

    def repo(spec):
        return tmp_path / ("models--" + spec.hf_hub_id.replace("/", "--"))

    # specs[0]: nothing cached.  specs[1]: model.safetensors at main.  specs[2]: model.safetensors cached as
    # missing, pytorch_model.bin present.  specs[3]: the folder and refs exist, no snapshot.
    for spec, files in ((specs[1], ["model.safetensors"]), (specs[2], ["pytorch_model.bin"]), (specs[3], [])):
        (repo(spec) / "refs").mkdir(parents=True)
        (repo(spec) / "refs" / "main").write_text(commit)
        for name in files:
            (repo(spec) / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
            (repo(spec) / "snapshots" / commit / name).write_bytes(b"x")
    (repo(specs[2]) / ".no_exist" / commit).mkdir(parents=True)
    (repo(specs[2]) / ".no_exist" / commit / "model.safetensors").write_bytes(b"")

    def library(spec):
        for name in ("model.safetensors", "pytorch_model.bin"):
            hit = try_to_load_from_cache(spec.hf_hub_id, name, cache_dir=str(tmp_path))
            if isinstance(hit, str):
                return Path(hit)
        return None

    got = [_hf_cached_file(s) for s in specs]
    assert got == [library(s) for s in specs]
    assert got[0] is None and got[1].name == "model.safetensors" and got[2].name == "pytorch_model.bin"
    assert got[3] is None


def test_methods_listing_imports_no_torch_and_the_registry_no_optional_stack():
    assert imported_after("from explainers.cli import main; main(['methods'])", HEAVY) == []
    assert imported_after("import explainers; explainers.get_method('gradcam')", OPTIONAL) == []


def test_stored_method_catalogue_equals_the_registry():
    """`methods` prints explainers/method_catalogue.json; a method added or changed without
    `python -m explainers methods --refresh` fails here."""
    from explainers import method_catalogue

    assert json.loads(method_catalogue.PATH.read_text()) == method_catalogue.registry_rows()
    out = subprocess.run([sys.executable, "-m", "explainers", "methods"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert out.returncode == 0 and out.stdout.splitlines() == method_catalogue.lines(method_catalogue.registry_rows())


def test_default_gallery_image_loads_without_scipy():
    assert imported_after("from explainers.images import GALLERY; GALLERY['chelsea'].png_bytes()", HEAVY) == []


def test_gallery_images_equal_the_libraries_pixels():
    """The Pillow fast path for scikit-image's plain files gives exactly the library's loader's pixels."""
    import numpy as np
    import skimage.data
    from PIL import Image

    from explainers.images import GALLERY, _gallery_image, _skimage_pixels, to_rgb

    fast = 0
    for key, item in GALLERY.items():
        entry = json.loads((ROOT / "assets" / "gallery.json").read_text())["images"]
        entry = next(e for e in entry if e["key"] == key)
        if item.source != "scikit-image":
            continue
        fast += _skimage_pixels(entry["name"]) is not None
        ref = getattr(skimage.data, entry["name"])()
        ref = ref[entry["item"]] if "item" in entry else ref
        if ref.dtype == bool:
            ref = ref.astype(np.uint8) * 255
        expected = np.asarray(to_rgb(Image.fromarray(np.ascontiguousarray(ref))))
        assert np.array_equal(np.asarray(_gallery_image(key)), expected), key
    assert fast >= 4  # chelsea, coffee, rocket, astronaut, camera take the fast path


def test_static_weight_locations_match_the_libraries():
    """The zoo's weights_file / hf_hub_id (listing without torchvision and timm) are what the libraries say."""
    import os.path

    import timm
    import torchvision

    from explainers.models import MODEL_SPECS

    for spec in MODEL_SPECS.values():
        if spec.source == "torchvision":
            url = torchvision.models.get_model_weights(spec.arch).DEFAULT.url
            assert spec.weights_file == os.path.basename(url), spec.name
        elif spec.source == "timm":
            assert spec.hf_hub_id == timm.models.get_pretrained_cfg(spec.arch).hf_hub_id, spec.name


def test_torch_hub_dir_without_torch_matches_torch(monkeypatch, tmp_path):
    import torch

    from explainers import models

    for env in ({}, {"TORCH_HOME": str(tmp_path / "th")}, {"XDG_CACHE_HOME": str(tmp_path / "xdg")}):
        monkeypatch.delenv("TORCH_HOME", raising=False)
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        expected = torch.hub.get_dir()
        with monkeypatch.context() as m:
            m.delitem(sys.modules, "torch")
            assert str(models._torch_hub_dir()) == expected


def test_topk_runs_one_forward_per_distinct_input():
    """A page rerun asks for the same image's top-5 again: answered from the bundle's memo, no forward pass;
    another input (or the same values in another tensor) gets its own, correct answer."""
    import torch

    from tests.toy_bundle import toy_bundle

    bundle = toy_bundle()
    calls = []
    bundle.model.register_forward_hook(lambda *a: calls.append(1))
    x = torch.ones(1, 3, 2, 2)
    first = bundle.topk(x, 2)
    assert bundle.topk(x.clone(), 2) == first and len(calls) == 1
    other = bundle.topk(-x, 2)  # logit_0 = -3.25 * 3 < 0: class 'one' wins
    assert len(calls) == 2 and other[0][1] == "one" and first[0][1] == "zero"
    assert abs(first[0][2] - float(torch.softmax(bundle.model(x), -1)[0, 0])) < 1e-6
