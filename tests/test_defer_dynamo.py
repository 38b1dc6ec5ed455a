"""explainers/defer_dynamo.py: building and explaining a model no longer imports TorchDynamo (issue 15: 1-2 s of the
cold start), and nothing that uses it is changed.  Each probe runs in a fresh interpreter, since this test
process may have imported TorchDynamo already."""

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

out = {"after_imports": "torch._dynamo" in sys.modules}
bundle = load_model("efficientnet_lite0", device="cpu")
x = torch.rand(1, 3, 224, 224)
explainers.explain(bundle, x, method="gradcam")
explainers.explain(bundle, x, method="lrp")
out["after_explain"] = "torch._dynamo" in sys.modules
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
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_models_and_methods_run_without_importing_dynamo_and_dynamo_still_works_afterwards():
    out = probe()
    assert out["after_imports"] is False and out["after_explain"] is False and out["after_roi_align"] is False
    # the box (0,0)-(3,3), aligned (shifted by half a pixel), one bin: 3x3 samples on the pixel centres 0, 1, 2 of the
    # ramp 4 * row + col, whose mean is 4 * 1 + 1
    assert out["roi_align"] == pytest.approx(5.0, abs=1e-6)
    assert out["disable_compiler"] == "explainers.defer_dynamo.lazy_disable"
    assert out["real_utils"] and not out["stand_in_left"] and out["compiles"]


@pytest.mark.slow
def test_the_opt_out_imports_dynamo_as_timm_and_torchvision_do():
    """The environment variable restores the libraries' own behaviour (and shows the probe can see the import)."""
    out = probe(RELEVANCE_EXPLORER_IMPORT_DYNAMO="1")
    assert out["after_imports"] is True
    assert out["disable_compiler"] == "torch.compiler.disable"
    assert out["roi_align"] == pytest.approx(5.0, abs=1e-6) and out["compiles"]


def test_lazy_disable_applies_the_real_decorator_once_on_first_call(monkeypatch):
    import torch

    from explainers.defer_dynamo import lazy_disable

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


def test_install_is_a_no_op_once_dynamo_is_imported():
    done = subprocess.run(
        [sys.executable, "-c", "import torch._dynamo, sys; from explainers import defer_dynamo as d; "
                               "print(d.install(), d._FINDER in sys.meta_path)"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "False"]
