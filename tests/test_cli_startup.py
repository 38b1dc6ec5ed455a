"""The CLI starts without torch and its optional stacks (issue 15, point 9): `import explainers`, building the
parser, `--help` and argument errors must not import torch, pytorch-grad-cam, captum, zennit, scikit-learn or
matplotlib (torch alone is ~2 s and 650 MB RSS here).  Not a timed test: it checks what was imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "pytorch_grad_cam", "captum", "zennit", "sklearn", "matplotlib", "torchvision", "timm")

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
