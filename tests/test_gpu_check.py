"""The GPU check's machinery on the CPU (cpu vs cpu), and its equality part on CUDA where there is one.

The ``cuda`` tests need a GPU and are skipped, with the reason printed (``-ra``), everywhere else; the CPU
tests run the script end to end on a tiny configuration so the code path a CUDA run takes is exercised here.
"""

from __future__ import annotations

import json
import time
import traceback
import warnings

import pytest
import torch

from explainers import gpu_check
from explainers.bench import median_seconds
from explainers.cli import main as cli_main

TINY = ["--device", "cpu", "--models", "efficientnet_lite0", "--methods", "gradcam,resnet-lrp,saliency",
        "--size", "64", "--check-batch", "2", "--throughput-models", "efficientnet_lite0",
        "--throughput-methods", "forward,resnet-lrp,insdel", "--batches", "1,2", "--repeat", "1",
        "--pixels-per-step", "512", "--max-batch", "4", "--max-call-s", "1e9"]

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA absent: the GPU check's CUDA part cannot run")


@pytest.mark.slow  # ~15 s on the 2-core CPU, most of it importing pytorch-grad-cam and loading the model twice
def test_cpu_run_writes_json_prints_tables_and_says_cuda_is_absent(tmp_path, capsys):
    out = tmp_path / "check.json"
    assert gpu_check.main(TINY + ["--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "CUDA ABSENT" in text and "| efficientnet_lite0 | resnet-lrp |" in text and "images/s" in text
    report = json.loads(out.read_text())
    env = report["environment"]
    assert env["date"] and env["torch"] == torch.__version__ and env["device"] == "cpu" and env["gpu"] is None
    rows = {r["method"]: r for r in report["equality"]}
    assert set(rows) == {"gradcam", "resnet-lrp", "saliency"}
    for r in rows.values():
        # cpu vs cpu: same weights, same kernels, same order of sums -> bitwise equal maps
        assert r["rel_diff"] == 0.0 and r["ok"] is True, r
    # resnet-lrp (z+, ratio splitting) conserves relevance up to float32 rounding; the others keep no trace
    assert rows["resnet-lrp"]["conservation_cpu"] < 1e-5 and rows["gradcam"]["conservation_cpu"] is None
    tp = [(r["method"], r["batch"], r["largest"]) for r in report["throughput"]]
    # batches 1 and 2, then the largest-batch search doubles to --max-batch 4 and keeps that row
    assert tp == [(m, b, b == 4) for m in ("forward", "resnet-lrp", "insdel") for b in (1, 2, 4)]
    for r in report["throughput"]:
        assert r["images_per_s"] > 0 and r["peak_mib"] is None  # no GPU memory to report
        forward = next(f for f in report["throughput"] if f["method"] == "forward" and f["batch"] == r["batch"])
        assert r["x_forward"] == pytest.approx(forward["images_per_s"] / r["images_per_s"], rel=1e-9)
    assert any("not measured" in n for n in report["notes"])  # host syncs need CUDA


def test_a_device_that_disagrees_fails_the_check(tmp_path, monkeypatch, capsys):
    """The comparison can fail: a 'device' copy with weights off by 1 % must exceed every tolerance."""
    real = gpu_check.on_device

    def perturbed(bundle, device):
        other = real(bundle, device)
        with torch.no_grad():
            for p in other.model.parameters():
                p.mul_(1.01)
        return other

    monkeypatch.setattr(gpu_check, "on_device", perturbed)
    out = tmp_path / "bad.json"
    rc = gpu_check.main(["--device", "cpu", "--models", "efficientnet_lite0", "--methods", "resnet-lrp,saliency",
                         "--size", "64", "--parts", "equality", "--out", str(out)])
    assert rc == 1
    rows = json.loads(out.read_text())["equality"]
    assert all(r["ok"] is False and r["rel_diff"] > r["tolerance"] for r in rows), rows
    assert "2 of 2 rows failed" in capsys.readouterr().out


def test_a_conservation_leak_on_the_device_fails_the_row(tmp_path, monkeypatch):
    """ResNet-LRP must conserve on the device: with the threshold at 0, float32 rounding (~2e-7) is a 'leak'."""
    monkeypatch.setitem(gpu_check.CONSERVING, "resnet-lrp", 0.0)
    out = tmp_path / "leak.json"
    assert gpu_check.main(["--device", "cpu", "--models", "efficientnet_lite0", "--methods", "resnet-lrp",
                           "--size", "64", "--parts", "equality", "--out", str(out)]) == 1
    (row,) = json.loads(out.read_text())["equality"]
    assert row["rel_diff"] == 0.0 and row["ok"] is False and "conservation" in row["note"]


def test_cli_bench_gpu_runs_the_same_check(tmp_path, capsys):
    out = tmp_path / "cli.json"
    assert cli_main(["bench", "gpu", "--device", "cpu", "--models", "efficientnet_lite0", "--methods", "gradcam",
                     "--size", "64", "--parts", "equality", "--out", str(out)]) == 0
    assert "CUDA ABSENT" in capsys.readouterr().out
    assert [r["method"] for r in json.loads(out.read_text())["equality"]] == ["gradcam"]


def test_asking_for_cuda_without_one_says_so():
    if torch.cuda.is_available():
        pytest.skip("CUDA is present here")
    with pytest.raises(SystemExit, match="CUDA was requested but is not available"):
        gpu_check.main(["--device", "cuda", "--parts", "equality"])


def test_call_sites_are_classified_engine_or_not():
    root = gpu_check._project_root()
    lib = traceback.FrameSummary("/usr/lib/python3/site-packages/torch/functional.py", 10, "norm")
    engine = traceback.FrameSummary(f"{root}/explainers/propagation/engine.py", 200, "propagate")
    registry = traceback.FrameSummary(f"{root}/explainers/registry.py", 230, "explain_batch")
    # the innermost frame of the project's own code names the site, even when torch code is deeper
    assert gpu_check.call_site([registry, engine, lib]) == ("explainers/propagation/engine.py:200 (propagate)", True)
    assert gpu_check.call_site([registry, lib]) == ("explainers/registry.py:230 (explain_batch)", False)
    assert gpu_check.call_site([lib]) == (lib.filename + ":10 (norm)", False)
    # handing the totals to the caller after the walk is not a sync inside the propagation
    result = traceback.FrameSummary(f"{root}/explainers/propagation/engine.py", 96, "traces")
    assert gpu_check.call_site([registry, result, lib])[1] is False
    srd = traceback.FrameSummary(f"{root}/explainers/methods/srd/explore.py", 300, "erf")
    assert gpu_check.call_site([srd, lib])[1] is True


def test_sync_recorder_counts_sync_warnings_by_site_and_passes_others_through():
    def sync_here():
        warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=1)

    with gpu_check.SyncRecorder(enable_debug_mode=False) as rec:
        for _ in range(3):
            sync_here()
    assert rec.total == 3 and rec.in_engine == 0
    ((site, engine),) = rec.sites
    assert site.startswith("tests/test_gpu_check.py:") and site.endswith("(sync_here)") and not engine
    with pytest.warns(UserWarning, match="unrelated"), gpu_check.SyncRecorder(enable_debug_mode=False) as rec2:
        warnings.warn("unrelated", UserWarning, stacklevel=1)
    assert rec2.total == 0


@pytest.mark.parametrize("timer", [lambda fn: gpu_check.timed(fn, torch.device("cpu"), repeat=3),
                                   lambda fn: median_seconds(fn, repeat=3)])
def test_timers_exclude_the_warm_up_call(timer):
    calls = []

    def fn():
        time.sleep(0.3 if not calls else 0.01)  # a slow first call, like CUDA's lazy init and autotuning
        calls.append(1)

    sec = timer(fn)
    assert len(calls) == 4 and sec < 0.1  # 3 timed calls of 10 ms; the 300 ms warm-up is not among them


@pytest.mark.cuda
@cuda
def test_cuda_maps_equal_cpu_maps_and_the_engine_never_syncs(tmp_path):
    """The equality part on a small batch: propagation methods to 1e-4, library methods to their tolerance,
    no host sync inside the engine."""
    out = tmp_path / "cuda.json"
    cfg = gpu_check.Config(device="cuda", models=("resnet18", "efficientnet_lite0"),
                           methods=("resnet-lrp", "lrp", "abslrp", "srd", "gradcam", "saliency",
                                    "integrated-gradients"),
                           check_batch=2, parts=("equality", "syncs"), out=str(out), budget_s=300)
    report = gpu_check.run(cfg)
    assert report.equality and all(r.ok for r in report.equality), gpu_check.equality_table(report.equality)
    assert sum(s["in_engine"] for s in report.sync_runs) == 0, gpu_check.sync_table(report)
    for r in report.equality:
        if r.method == "resnet-lrp":
            assert r.conservation_device < 1e-4  # z+ conserves on the GPU as on the CPU (float32 rounding)
    assert json.loads(out.read_text())["environment"]["gpu"]


def test_goal_line_reads_the_resnet50_batch_64_row():
    report = gpu_check.Report(config={}, environment={"device": "cuda:0"})
    assert gpu_check.goal_line(report) is None  # nothing measured: no claim
    row = gpu_check.ThroughputRow("resnet50", "resnet-lrp", 64, 600.0, 2.5, 900.0)
    report.throughput = [gpu_check.ThroughputRow("resnet50", "resnet-lrp", 16, 100.0, 9.0, 1.0), row]
    assert gpu_check.goal_line(report).endswith("600 images/s, 2.50x forward -> met")
    row.x_forward = 3.2  # fast enough, but more than 3 forward passes
    assert gpu_check.goal_line(report).endswith("NOT met")
