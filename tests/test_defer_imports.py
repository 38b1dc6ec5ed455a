"""explainers/defer_imports.py: building and explaining a model no longer imports TorchDynamo (issue 15: 1-2 s of the
cold start), huggingface_hub's API (0.17 s) or, in the app's warm-up, torch's Python meta kernels (0.37 s), and
nothing that uses them is changed.  Each probe runs in a fresh
interpreter, since this test process may have imported TorchDynamo already."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, sys
import explainers
import timm, torch, torchvision
from explainers.models import load_model

out = {"after_imports": "torch._dynamo" in sys.modules, "hub_api": "huggingface_hub.hf_api" in sys.modules}
bundle = load_model("efficientnet_lite0", device="cpu")
x = torch.rand(1, 3, 224, 224)
explainers.explain(bundle, x, method="gradcam")
explainers.explain(bundle, x, method="lrp")
out["after_explain"] = "torch._dynamo" in sys.modules
out["hub_api_after_explain"] = "huggingface_hub.hf_api" in sys.modules
from timm.models import _hub
out["has_hub"] = _hub._has_hf_hub


def error(fn):
    try:
        fn()
    except Exception as exc:
        return f"{type(exc).__module__}.{type(exc).__name__}"


# offline (HF_HUB_OFFLINE): the error a download meets, directly and through timm's pretrained loading
out["download"] = error(lambda: _hub.hf_hub_download("timm/resnet18.a1_in1k", "config.json"))
out["create"] = error(lambda: timm.create_model("hf-hub:timm/resnet18.a1_in1k", pretrained=True))
import huggingface_hub, huggingface_hub.utils
hub_of = lambda n: huggingface_hub.utils if n.endswith("Error") else huggingface_hub
out["real_names"] = all(getattr(_hub, n) is getattr(hub_of(n), n)
                        for n in ("HfApi", "model_info", "EntryNotFoundError", "RepositoryNotFoundError"))
out["download_partial"] = [_hub.hf_hub_download.func is huggingface_hub.hf_hub_download,
                           _hub.hf_hub_download.keywords.get("library_name")]
out["hub_module"] = hasattr(sys.modules["huggingface_hub"], "__path__")  # the real package, not a stand-in
from torchvision.ops import roi_align
boxes = torch.tensor([[0.0, 0.0, 0.0, 3.0, 3.0]])
grid = torch.arange(16.0).reshape(1, 1, 4, 4)
out["roi_align"] = roi_align(grid, boxes, (1, 1), aligned=True).item()  # mean of the 3x3 box's samples
out["after_roi_align"] = "torch._dynamo" in sys.modules
from timm.layers import disable_compiler
out["disable_compiler"] = disable_compiler.__module__ + "." + disable_compiler.__name__
import torch._dynamo.utils
out["real_utils"] = torch._dynamo.utils.__file__ is not None and hasattr(torch._dynamo.utils, "counters")
out["stand_in_left"] = sys.modules["torch._dynamo.utils"] is not torch._dynamo.utils
compiled = torch.compile(lambda t: torch.sin(t) * 2, backend="eager")
out["compiles"] = torch.allclose(compiled(torch.ones(3)), torch.sin(torch.ones(3)) * 2)
print(json.dumps(out))
"""


def probe(**env: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
                               "HF_HOME": str(ROOT / ".pytest_cache" / "hf-offline"), **env})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_models_and_methods_run_without_importing_dynamo_and_dynamo_still_works_afterwards():
    out = probe()
    assert out["after_imports"] is False and out["after_explain"] is False and out["after_roi_align"] is False
    # the box (0,0)-(3,3), aligned (shifted by half a pixel), one bin: 3x3 samples on the pixel centres 0, 1, 2 of the
    # ramp 4 * row + col, whose mean is 4 * 1 + 1
    assert out["roi_align"] == pytest.approx(5.0, abs=1e-6)
    assert out["disable_compiler"] == "explainers.defer_imports.lazy_disable"
    assert out["real_utils"] and not out["stand_in_left"] and out["compiles"]
    assert out["hub_api"] is False and out["hub_api_after_explain"] is False and out["has_hub"] is True
    # offline, a Hub download fails as it does without the stand-ins (the opt-out test below), and afterwards timm
    # holds huggingface_hub's own names
    assert out["download"] == out["create"] == "huggingface_hub.errors.LocalEntryNotFoundError"
    assert out["real_names"] and out["download_partial"] == [True, "timm"] and out["hub_module"]


@pytest.mark.slow
def test_the_opt_out_imports_dynamo_as_timm_and_torchvision_do():
    """The environment variable restores the libraries' own behaviour (and shows the probe can see the import)."""
    out = probe(RELEVANCE_EXPLORER_EAGER_IMPORTS="1")
    assert out["after_imports"] is True and out["hub_api"] is True
    assert out["disable_compiler"] == "torch.compiler.disable"
    assert out["download"] == out["create"] == "huggingface_hub.errors.LocalEntryNotFoundError"
    assert out["real_names"] and out["download_partial"] == [True, "timm"]
    assert out["roi_align"] == pytest.approx(5.0, abs=1e-6) and out["compiles"]


META_PROBE = """
import hashlib, json, sys
import explainers
from explainers import defer_imports
out = {"deferred": defer_imports.defer_meta_registrations() if "defer" in sys.argv else False}
import timm, torch
from explainers.models import load_model

out["decomp_after_import"] = "torch._decomp" in sys.modules
out["generator"] = torch.Generator().manual_seed(3).initial_seed()  # needs torch._prims.rng_prims imported
out["meta_after_import"] = "torch._meta_registrations" in sys.modules or hasattr(torch, "_meta_registrations")
torch.manual_seed(0)
bundle = load_model("efficientnet_lite0", device="cpu")
x = torch.rand(1, 3, 224, 224)
maps = {m: explainers.explain(bundle, x, method=m).attribution for m in ("gradcam", "lrp", "srd")}
with torch.no_grad():
    maps["logits"] = bundle.model(x)
out["digest"] = {k: hashlib.sha256(v.detach().contiguous().numpy().tobytes()).hexdigest() for k, v in maps.items()}
out["decomp_after_explain"] = "torch._decomp" in sys.modules


def histc():
    try:
        return list(torch.empty(5, device="meta").histc(bins=7).shape)
    except RuntimeError as exc:  # torch's "no fake impl or Meta kernel registered" error
        return "no meta kernel" if "Meta" in str(exc) else repr(exc)


out["histc_before"] = histc()
if "compile" in sys.argv:  # TorchDynamo and fake tensors import the real kernels themselves
    compiled = torch.compile(lambda t: torch.sin(t) * 2, backend="eager")
    out["compiles"] = torch.allclose(compiled(torch.ones(3)), torch.sin(torch.ones(3)) * 2)
out["imported_now"] = defer_imports.import_meta_registrations()
out["histc_after"] = histc()
out["real_meta"] = hasattr(sys.modules["torch._meta_registrations"], "activate_meta")
out["finder_left"] = defer_imports._FINDER in sys.meta_path
print(json.dumps(out))
"""


def meta_probe(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", META_PROBE, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_torch_without_its_meta_kernels_computes_the_same_bits_and_gets_them_back():
    plain, deferred, compiled = meta_probe(), meta_probe("defer"), meta_probe("defer", "compile")
    assert plain["deferred"] is False and plain["decomp_after_import"] and plain["meta_after_import"]
    assert deferred["deferred"] is True and deferred["generator"] == plain["generator"] == 3
    assert not deferred["decomp_after_import"] and not deferred["meta_after_import"]  # the 0.2-0.3 s not spent
    assert not deferred["decomp_after_explain"]  # no method needs them
    assert deferred["digest"] == plain["digest"]  # the same logits and maps, bit for bit (eager CPU kernels)
    # a Python-only shape function: missing while deferred, back after import_meta_registrations()
    assert deferred["histc_before"] == "no meta kernel" and plain["histc_before"] == [7]
    assert deferred["imported_now"] is True and plain["imported_now"] is False
    assert deferred["histc_after"] == [7] and deferred["real_meta"] and not deferred["finder_left"]
    # torch.compile in the deferred state imports the real kernels by itself (through torch._decomp)
    assert compiled["compiles"] is True and compiled["imported_now"] is False and compiled["histc_after"] == [7]


def test_meta_registrations_are_not_deferred_once_torch_is_imported():
    import torch  # noqa: F401 - imported by this test process in any case

    from explainers import defer_imports as d

    assert d.defer_meta_registrations() is False and d.import_meta_registrations() is False
    assert d.TORCH not in d._FINDER.pending


def test_lazy_disable_applies_the_real_decorator_once_on_first_call(monkeypatch):
    import torch

    from explainers.defer_imports import lazy_disable

    applied = []

    def spy(fn, recursive=True, *, reason=None):
        applied.append((fn.__name__, recursive, reason))
        return fn

    monkeypatch.setattr(torch.compiler, "disable", spy)

    class Block:
        scale = 3

        @lazy_disable
        def forward(self, x):
            """doc"""
            return x * self.scale

        @lazy_disable(recursive=False, reason="why")
        def other(self, x):
            return x + 1

    assert applied == []  # decorating applies nothing (and imports nothing)
    block = Block()
    assert block.forward(2) == 6 and block.forward(3) == 9 and block.other(1) == 2
    assert applied == [("forward", True, None), ("other", False, "why")]
    assert Block.forward.__doc__ == "doc" and Block.forward.__name__ == "forward"


def test_install_defers_only_what_is_not_imported_yet():
    code = ("import sys; {pre}; from explainers import defer_imports as d; "
            "print(d.install(), d._FINDER in sys.meta_path, sorted(d._FINDER.pending))")
    runs = {}
    for pre in ("import torch._dynamo", "import torch._dynamo, huggingface_hub.hf_api"):
        done = subprocess.run([sys.executable, "-c", code.format(pre=pre)], cwd=ROOT, capture_output=True, text=True,
                              timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT),
                                                "RELEVANCE_EXPLORER_EAGER_IMPORTS": "1"})  # install() by hand
        assert done.returncode == 0, done.stderr[-2000:]
        runs[pre] = done.stdout.strip()
    assert runs["import torch._dynamo"] == "True True ['timm.models._hub']"
    assert runs["import torch._dynamo, huggingface_hub.hf_api"].startswith("False False")


class _Loader:
    """A loader that runs ``source`` as the module (counting the runs)."""

    def __init__(self, source: str) -> None:
        self.source, self.runs = source, 0

    def get_source(self, name: str) -> str:
        return self.source

    def exec_module(self, module) -> None:
        self.runs += 1
        exec(self.source, module.__dict__)


HUB_SOURCE = """
from functools import partial
try:
    from huggingface_hub import HfApi, hf_hub_download, model_info
    from huggingface_hub.utils import EntryNotFoundError, RepositoryNotFoundError
{extra}    hf_hub_download = partial(hf_hub_download, library_name="timm")
    _has_hf_hub = True
except ImportError:
    hf_hub_download = None
    _has_hf_hub = False
"""


def _pretend_api_unimported(monkeypatch, d) -> None:
    """Run the stand-in path even when this test process has imported huggingface_hub's API already (the
    marker module it checks for is then one that never exists); sys.modules itself is not touched."""
    monkeypatch.setattr(d, "HUB_API", "huggingface_hub._never_imported_marker")


def test_the_hub_stand_ins_give_way_to_the_real_names_on_first_use(monkeypatch):
    import types

    import huggingface_hub
    import huggingface_hub.utils

    from explainers import defer_imports as d

    _pretend_api_unimported(monkeypatch, d)
    own = (huggingface_hub.__dict__["__getattr__"], huggingface_hub.utils.__dict__["__getattr__"])
    module, loader = types.ModuleType(d.TIMM_HUB), _Loader(HUB_SOURCE.format(extra=""))
    d._run_timm_hub(loader, module)
    assert loader.runs == 1 and module._has_hf_hub is True
    # the packages' own lazy lookups are back
    assert (huggingface_hub.__dict__["__getattr__"], huggingface_hub.utils.__dict__["__getattr__"]) == own
    assert module.HfApi.__module__ == d.__name__ and module.EntryNotFoundError.__module__ == d.__name__
    api = module.HfApi(endpoint="http://127.0.0.1:9")  # no request is made by the constructor
    assert isinstance(api, huggingface_hub.HfApi) and module.HfApi is huggingface_hub.HfApi
    assert module.model_info is huggingface_hub.model_info
    assert module.EntryNotFoundError is huggingface_hub.utils.EntryNotFoundError
    assert module.RepositoryNotFoundError is huggingface_hub.utils.RepositoryNotFoundError
    assert module.hf_hub_download.func is huggingface_hub.hf_hub_download
    assert module.hf_hub_download.keywords == {"library_name": "timm"}


def test_other_threads_get_the_real_names_while_timm_hub_runs(monkeypatch):
    """The stand-ins answer the importing thread only: a page thread that asks huggingface_hub for the same names
    while the warm-up thread is inside timm's _hub.py gets the real ones."""
    import types

    import huggingface_hub
    import huggingface_hub.utils

    from explainers import defer_imports as d

    _pretend_api_unimported(monkeypatch, d)
    source = HUB_SOURCE.format(extra="") + """
import threading
seen = {}
def other():
    from huggingface_hub import HfApi as api
    from huggingface_hub.utils import EntryNotFoundError as error
    seen.update(api=api, error=error)
t = threading.Thread(target=other)
t.start()
t.join()
"""
    module = types.ModuleType(d.TIMM_HUB)
    d._run_timm_hub(_Loader(source), module)
    assert module.seen["api"] is huggingface_hub.HfApi
    assert module.seen["error"] is huggingface_hub.utils.EntryNotFoundError
    assert module.EntryNotFoundError is not huggingface_hub.utils.EntryNotFoundError  # this thread's stand-in


def test_a_timm_that_imports_more_names_gets_them_from_the_real_package(monkeypatch):
    import types

    import huggingface_hub

    from explainers import defer_imports as d

    _pretend_api_unimported(monkeypatch, d)
    module = types.ModuleType(d.TIMM_HUB)
    loader = _Loader(HUB_SOURCE.format(extra="    from huggingface_hub import snapshot_download\n"))
    d._run_timm_hub(loader, module)
    assert loader.runs == 1 and module._has_hf_hub is True
    assert module.snapshot_download is huggingface_hub.snapshot_download
    assert module.HfApi.__module__ == d.__name__


def test_a_timm_without_those_lines_runs_unchanged(monkeypatch):
    import types

    import huggingface_hub

    from explainers import defer_imports as d

    _pretend_api_unimported(monkeypatch, d)
    module, loader = types.ModuleType(d.TIMM_HUB), _Loader("from huggingface_hub import HfApi\n_has_hf_hub = True\n")
    d._run_timm_hub(loader, module)
    assert loader.runs == 1 and module.HfApi is huggingface_hub.HfApi
