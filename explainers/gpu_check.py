"""The GPU check (issue 16): do the maps on CUDA equal the maps on the CPU, does the engine stay on the device,
and how fast is each method at batch 1 / 16 / 64 / the largest batch that fits.

Run ``python scripts/gpu_check.py`` (or ``python -m explainers bench gpu``) on a CUDA machine; ``--device cpu``
runs the same machinery with the CPU as both devices (the comparison is then cpu vs cpu) and says clearly that
CUDA is absent, so the code path is tested where no GPU is.  Three parts, each a table, all written to JSON:

1. Equality: for each model and every registered method that supports it, the map of a small batch on the
   device vs the map of the same batch on the CPU (a deep copy of the same weights, the CPU run's targets),
   as max|diff| / max|map|.  Propagation methods (our engine, float32) must agree to 1e-4; the library
   methods to their library's tolerance (:data:`TOLERANCE`).  TF32 is switched off for this part: cuDNN
   convolutions use TF32 by default, whose 10-bit mantissa alone gives ~1e-3 relative error.
   LRP conservation (input total vs the start relevance) is reported on both devices.
2. Host syncs: each method runs once under ``torch.cuda.set_sync_debug_mode("warn")``; every synchronising
   call is recorded with its call site, and sites inside the engine (:data:`ENGINE_PATHS`) are flagged.
3. Throughput: images/s of the forward pass and each method, warm-up excluded, the device synchronised before
   the timer starts and before it is read; ratio to the forward pass at the same batch; peak GPU memory.

A ``--budget-s`` deadline (default 540 s, inside a 10-minute slot) skips what is left and still writes the
JSON, so a slow method cannot lose the whole run.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import gc
import json
import os
import platform
import statistics
import threading
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

# Config and the CLI arguments live in a torch-free module, so `python -m explainers --help` needs no torch.
from .gpu_check_config import DEFAULT_BATCHES, DEFAULT_MODELS, THROUGHPUT_METHODS, Config, add_arguments  # noqa: F401

# max|diff| / max|map| a method must stay under, by family.  Our propagation engine (lrp family: lrp,
# resnet-lrp, abslrp; srd): float32 sums reordered by the device, 1e-4 (issue 16).  captum (gradient family):
# its own test suite compares attributions with delta = 1e-4 (tests/helpers: assertTensorAlmostEqual).
# pytorch-grad-cam (cam family) states no tolerance; its maps are min-max scaled to [0, 1] and shown at 8 bits,
# so 1e-3 (a quarter of one 8-bit level) is the tightest difference a viewer could ever see.
TOLERANCE = {"lrp": 1e-4, "srd": 1e-4, "gradient": 1e-4, "cam": 1e-3}
# Methods whose map depends on random numbers drawn on the device: CPU and CUDA generators differ, so their
# maps are compared and reported but cannot be held to a tolerance.
DEVICE_RANDOM = frozenset({"smoothgrad"})
# Options pinned for the equality part only: the CPU reference must fit the budget (Score-/Ablation-CAM run one
# forward pass per channel, IG one per step) and both devices must run the same thing (top_k = 0 means
# "all channels on CUDA, a few on the CPU").
EQUALITY_OPTIONS = {"scorecam": {"top_k": 32}, "ablationcam": {"top_k": 32}, "integrated-gradients": {"steps": 16},
                    "smoothgrad": {"samples": 4, "batch_size": 4}}
# Methods whose rule set conserves relevance exactly (ResNet-LRP: z+ everywhere, ratio splitting, probability
# start): on the device, |input total - start| / start must stay under this, or the row fails.  On the CPU it is
# <= 2.2e-7 on EfficientNet-Lite0, ResNet-50 and VGG-16 (float32 rounding over ~100 nodes); 1e-4 leaves room
# for the device's different summation order and is still far below any real leak.
CONSERVING = {"resnet-lrp": 1e-4}
# Where a host sync counts as "inside the engine": a value read on the host mid-propagation (the walker, the
# rule sets, SRD's sharing ratios).  The engine's result accessors (``Propagation.traces`` / ``layers``, run
# once after the walk to hand the totals to the caller) and the method modules' packaging are listed too but
# not flagged: copying the result to the host is the point of the call.
ENGINE_PATHS = (os.path.join("explainers", "propagation", ""), os.path.join("explainers", "methods", "srd", ""))
RESULT_FUNCTIONS = frozenset({"traces", "layers"})
SYNC_MESSAGE = "synchronizing CUDA operation"  # torch's warning text in sync debug mode "warn"


# --------------------------------------------------------------------------- config and rows


@dataclass
class EqualityRow:
    model: str
    method: str
    family: str
    rel_diff: float | None  # max|map_dev - map_cpu| / max|map_cpu|
    tolerance: float | None
    ok: bool | None  # None: not held to a tolerance (device random numbers) or not run
    conservation_cpu: float | None = None  # |input total - start| / |start|, mean over the batch
    conservation_device: float | None = None
    note: str = ""


@dataclass
class SyncSite:
    method: str
    model: str
    site: str  # file:line (function) of the innermost project frame, else of the innermost frame
    count: int
    in_engine: bool


@dataclass
class ThroughputRow:
    model: str
    method: str
    batch: int
    images_per_s: float | None
    x_forward: float | None  # method cost in forward passes: forward images/s / method images/s
    peak_mib: float | None
    largest: bool = False
    note: str = ""


@dataclass
class Report:
    config: dict[str, Any]
    environment: dict[str, Any]
    equality: list[EqualityRow] = field(default_factory=list)
    syncs: list[SyncSite] = field(default_factory=list)
    sync_runs: list[dict[str, Any]] = field(default_factory=list)  # per (model, method): total syncs, engine ones
    throughput: list[ThroughputRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {"config": self.config, "environment": self.environment,
                "equality": [dataclasses.asdict(r) for r in self.equality],
                "syncs": [dataclasses.asdict(s) for s in self.syncs], "sync_runs": self.sync_runs,
                "throughput": [dataclasses.asdict(r) for r in self.throughput],
                "notes": self.notes, "elapsed_s": round(self.elapsed_s, 1)}


def environment(device: torch.device) -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    return {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "torch": torch.__version__, "cuda_available": cuda, "cuda_version": torch.version.cuda,
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "device": str(device), "host": platform.node(), "cpu_threads": torch.get_num_threads()}


# --------------------------------------------------------------------------- timing and memory


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeat: int, warmup: int = 1) -> float:
    """Median seconds of ``fn``: warm-up calls excluded, the device idle before each timer starts and synchronised
    before it is read (CUDA kernels run asynchronously; reading the clock without a sync times the launch)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(repeat, 1)):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def free_memory(device: torch.device, collect: bool = False) -> None:
    """Between methods and models: drop cached blocks so one method's peak does not count against the next.

    Tensors die by reference count; a full ``gc.collect`` (for cycles, e.g. a model copy) costs ~0.7 s with
    this many modules loaded, so it runs only when a model is dropped (``collect=True``).
    """
    if collect:
        gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None


@contextmanager
def precision(tf32: bool) -> Iterator[None]:
    """TF32 on or off for cuDNN convolutions and cuBLAS matmuls, restored afterwards."""
    old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


# --------------------------------------------------------------------------- host syncs


def _project_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def call_site(stack: Sequence[traceback.FrameSummary]) -> tuple[str, bool]:
    """The innermost frame of the project's own code (else the innermost frame) as ``file:line (function)``,
    and whether it lies inside the engine."""
    root = _project_root()
    here = os.path.abspath(__file__)  # the recorder's own frames are never the site
    own = [f for f in stack if os.path.abspath(f.filename).startswith(root) and os.path.abspath(f.filename) != here]
    frame = own[-1] if own else stack[-1]
    rel = os.path.relpath(frame.filename, root) if own else frame.filename
    engine = own != [] and frame.name not in RESULT_FUNCTIONS and any(rel.startswith(p) for p in ENGINE_PATHS)
    return f"{rel}:{frame.lineno} ({frame.name})", engine


class SyncRecorder:
    """Counts synchronising CUDA calls by call site while active.

    torch reports each one as a ``UserWarning`` in sync debug mode "warn"; a ``showwarning`` hook runs inside
    the ``warnings.warn`` call, so ``traceback.extract_stack`` there still holds the frame that synchronised.
    ``enable_debug_mode=False`` records whatever sync warnings are raised without touching CUDA (the CPU tests).
    """

    def __init__(self, enable_debug_mode: bool = True):
        self.enable = enable_debug_mode
        self.sites: Counter[tuple[str, bool]] = Counter()

    def __enter__(self) -> SyncRecorder:
        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("always")
        previous = warnings.showwarning

        def hook(message, category, filename, lineno, file=None, line=None):
            if SYNC_MESSAGE in str(message):
                self.sites[call_site(traceback.extract_stack()[:-1])] += 1
            else:
                previous(message, category, filename, lineno, file, line)

        warnings.showwarning = hook
        if self.enable:
            torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc) -> None:
        if self.enable:
            torch.cuda.set_sync_debug_mode("default")
        self._catch.__exit__(*exc)

    @property
    def total(self) -> int:
        return sum(self.sites.values())

    @property
    def in_engine(self) -> int:
        return sum(n for (_, engine), n in self.sites.items() if engine)


# --------------------------------------------------------------------------- models and inputs


def load_bundle(name: str):
    """On the CPU (the reference): EfficientNet-Lite0 with its embedded trained weights, every other model
    untrained with seed 0 (no downloads on the check machine)."""
    from .models import load_model

    torch.manual_seed(0)
    weights = "default" if name == "efficientnet_lite0" else "untrained"
    return load_model(name, device="cpu", weights=weights)


def on_device(bundle, device: torch.device):
    """The same weights on another device: a deep copy, so the CPU bundle stays the reference."""
    if device.type == "cpu":
        model = copy.deepcopy(bundle.model)
    else:
        model = copy.deepcopy(bundle.model).to(device)
    return dataclasses.replace(bundle, model=model.eval(), device=device, lock=threading.RLock())


def inputs(bundle, batch: int, size: int | None) -> torch.Tensor:
    """``batch`` gallery images (repeated as needed), resized to ``size`` for CNNs when asked, on the CPU."""
    from .bench import sample_batch

    x = sample_batch(bundle, batch).cpu()
    if size and bundle.family != "vit" and size != x.shape[-1]:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x


def methods_for_model(bundle, wanted: Sequence[str] | None) -> list[str]:
    from .registry import METHODS

    return [m for m, spec in METHODS.items() if spec.supports(bundle) and (wanted is None or m in wanted)]


def _conservation(results) -> float | None:
    errs = []
    for r in results:
        t = r.trace
        if t is None or not getattr(t, "nodes", None):
            return None
        errs.append(abs(t.total_at("input") - t.start) / max(abs(t.start), 1e-12))
    return float(sum(errs) / len(errs)) if errs else None


# --------------------------------------------------------------------------- the three parts


class Deadline:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def passed(self) -> bool:
        return self.left() <= 0


def check_equality(cpu_bundle, dev_bundle, methods: Sequence[str], x: torch.Tensor, report: Report,
                   deadline: Deadline, syncs: bool) -> None:
    """Part 1 (and 2): each method's map on the device against the CPU map of the same batch."""
    from .registry import explain_batch, get_method

    device = dev_bundle.device
    for method in methods:
        spec = get_method(method)
        if deadline.passed():
            report.equality.append(EqualityRow(cpu_bundle.name, method, spec.family, None, None, None,
                                               note="skipped: budget"))
            continue
        opts = EQUALITY_OPTIONS.get(method, {})
        try:
            ref = explain_batch(cpu_bundle, x, method, **opts)
            targets = [r.target for r in ref]
            with precision(False):
                got = explain_batch(dev_bundle, x, method, target=targets, **opts)
            a = torch.stack([r.attribution for r in ref]).double()
            b = torch.stack([r.attribution for r in got]).double()
            scale = float(a.abs().max())
            rel = float((a - b).abs().max()) / scale if scale > 0 else float((a - b).abs().max())
            tol = None if method in DEVICE_RANDOM else TOLERANCE.get(spec.family)
            note = "device random numbers: reported, not held to a tolerance" if method in DEVICE_RANDOM else ""
            if scale == 0:
                note = (note + "; " if note else "") + "map is all zeros"
            ok = None if tol is None else rel <= tol
            cons = _conservation(got)
            if method in CONSERVING and cons is not None and cons > CONSERVING[method]:
                ok = False
                note = (note + "; " if note else "") + f"conservation {cons:.1e} > {CONSERVING[method]:.0e}"
            report.equality.append(EqualityRow(cpu_bundle.name, method, spec.family, rel, tol, ok,
                                               conservation_cpu=_conservation(ref), conservation_device=cons,
                                               note=note))
            if syncs and device.type == "cuda":
                with SyncRecorder() as rec, precision(False):
                    explain_batch(dev_bundle, x, method, target=targets, **opts)
                report.sync_runs.append({"model": cpu_bundle.name, "method": method, "total": rec.total,
                                         "in_engine": rec.in_engine})
                report.syncs += [SyncSite(method, cpu_bundle.name, site, n, engine)
                                 for (site, engine), n in sorted(rec.sites.items(), key=lambda kv: -kv[1])]
        except Exception as exc:  # noqa: BLE001 - one failing method is a row of the report, not the end of it
            report.equality.append(EqualityRow(cpu_bundle.name, method, spec.family, None, None, False,
                                               note=_error(exc)))
        finally:
            free_memory(device)


def _error(exc: BaseException) -> str:
    first = (str(exc).splitlines() or [""])[0]
    return f"error: {type(exc).__name__}: {first[:200]}"


def _runner(bundle, method: str, x: torch.Tensor, pixels_per_step: int) -> Callable[[], object]:
    """What one throughput call runs: the forward pass, a registered method, or Insertion/Deletion of a map."""
    from .registry import explain_batch

    if method == "forward":
        def fwd():
            with torch.no_grad():
                return bundle.model(x)
        return fwd
    if method == "insdel":
        from .metrics import insertion_deletion

        res = explain_batch(bundle, x, "gradcam")
        maps = torch.stack([r.attribution for r in res])
        targets = [r.target for r in res]
        return lambda: insertion_deletion(bundle, x, maps, targets, pixels_per_step=pixels_per_step, batch_size=256)
    return lambda: explain_batch(bundle, x, method)


def check_throughput(cpu_bundle, dev_bundle, cfg: Config, report: Report, deadline: Deadline) -> None:
    """Part 3: images/s per method and batch, and the ratio to the forward pass at that batch."""
    from .registry import METHODS

    device = dev_bundle.device
    wanted = [m for m in cfg.throughput_methods
              if m in ("forward", "insdel") or (m in METHODS and METHODS[m].supports(dev_bundle))]
    forward_ips: dict[int, float] = {}

    def measure(method: str, batch: int, largest: bool = False, repeat: int | None = None) -> float | None:
        if deadline.passed():
            report.throughput.append(ThroughputRow(cpu_bundle.name, method, batch, None, None, None, largest,
                                                   note="skipped: budget"))
            return None
        free_memory(device)
        try:
            x = inputs(cpu_bundle, batch, cfg.size).to(device)
            with precision(cfg.tf32_throughput):
                sec = timed(_runner(dev_bundle, method, x, cfg.insdel_pixels_per_step), device,
                            repeat or cfg.repeat)
        except torch.cuda.OutOfMemoryError:
            free_memory(device)
            raise
        ips = batch / sec
        if method == "forward":
            forward_ips[batch] = ips
        fwd = forward_ips.get(batch)
        report.throughput.append(ThroughputRow(cpu_bundle.name, method, batch, ips,
                                               fwd / ips if fwd else None, peak_mib(device), largest))
        return sec

    for method in ["forward"] + [m for m in wanted if m != "forward"]:  # forward first: the ratios need it
        try:
            for batch in cfg.batches:
                measure(method, batch)
            if cfg.largest:
                batch, best = max(cfg.batches), None
                last = next((r.images_per_s for r in reversed(report.throughput)
                             if r.method == method and r.batch == batch and r.images_per_s), None)
                sec = batch / last if last else None
                # doubling the batch about doubles a call: stop before one would exceed max_call_s
                while batch * 2 <= cfg.max_batch and sec is not None and 2 * sec <= cfg.max_call_s:
                    batch *= 2
                    try:
                        sec = measure(method, batch, largest=True, repeat=1)
                    except torch.cuda.OutOfMemoryError:
                        report.notes.append(f"{method}: out of memory at batch {batch}")
                        break
                    if sec is not None:
                        best = batch
                # keep only the largest successful search row (the others were stepping stones)
                rows = [r for r in report.throughput if r.method == method and r.largest]
                for r in rows:
                    if r.batch != best:
                        report.throughput.remove(r)
        except Exception as exc:  # noqa: BLE001 - a failing method is a row, not the end of the run
            report.throughput.append(ThroughputRow(cpu_bundle.name, method, 0, None, None, None, note=_error(exc)))
        finally:
            free_memory(device)


def run(cfg: Config, echo: Callable[[str], None] = print) -> Report:
    """Run the check; tables go to ``echo`` as they complete and the JSON to ``cfg.out``."""
    t0 = time.monotonic()
    deadline = Deadline(cfg.budget_s)
    want = torch.device(cfg.device)
    cuda = torch.cuda.is_available()
    if want.type == "cuda" and not cuda:
        raise SystemExit("CUDA was requested but is not available here; rerun with --device cpu to test the "
                         "machinery (cpu vs cpu).")
    report = Report(config=dataclasses.asdict(cfg), environment=environment(want))
    if want.type != "cuda":
        report.notes.append("CUDA ABSENT: this run compares cpu with cpu to exercise the machinery; "
                            "it says nothing about GPU correctness or speed."
                            if not cuda else "device cpu chosen: cpu vs cpu; CUDA was available but not used.")
        echo(report.notes[-1])
    if want.type == "cuda":
        echo(f"GPU: {report.environment['gpu']}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    equality_deadline = Deadline(min(cfg.budget_s, cfg.equality_budget_s))
    for name in cfg.models:
        if "equality" not in cfg.parts:
            break
        if equality_deadline.passed():
            report.notes.append(f"{name}: skipped (budget)")
            continue
        cpu_bundle = load_bundle(name)
        dev_bundle = on_device(cpu_bundle, want)
        x = inputs(cpu_bundle, cfg.check_batch, cfg.size)
        check_equality(cpu_bundle, dev_bundle, methods_for_model(cpu_bundle, cfg.methods), x, report,
                       equality_deadline, syncs="syncs" in cfg.parts)
        echo(equality_table([r for r in report.equality if r.model == name]))
        del dev_bundle
        free_memory(want, collect=True)
    if "throughput" in cfg.parts:
        for name in cfg.throughput_models:
            cpu_bundle = load_bundle(name)
            dev_bundle = on_device(cpu_bundle, want)
            check_throughput(cpu_bundle, dev_bundle, cfg, report, deadline)
            echo(throughput_table([r for r in report.throughput if r.model == name]))
            del dev_bundle
            free_memory(want, collect=True)
    goal = goal_line(report)
    if goal:
        report.notes.append(goal)
        echo(goal)
    if report.syncs or report.sync_runs:
        echo(sync_table(report))
    elif "syncs" in cfg.parts and want.type != "cuda":
        report.notes.append("host syncs: not measured (sync debug mode needs CUDA)")
        echo(report.notes[-1])
    report.elapsed_s = time.monotonic() - t0
    write_json(report, cfg.out)
    echo(f"wrote {cfg.out} ({report.elapsed_s:.0f} s)")
    return report


def goal_line(report: Report) -> str | None:
    """Issue 16's goal on one GPU: resnet-lrp on ResNet-50 >= 500 images/s at batch 64, within 3x of the forward."""
    row = next((r for r in report.throughput if r.model == "resnet50" and r.method == "resnet-lrp"
                and r.batch == 64 and not r.largest and r.images_per_s), None)
    if row is None:
        return None
    met = row.images_per_s >= 500 and row.x_forward is not None and row.x_forward <= 3
    device = report.environment["device"]
    return (f"goal (resnet-lrp, ResNet-50, batch 64: >= 500 images/s and <= 3x forward, on {device}): "
            f"{row.images_per_s:.0f} images/s, {_fmt(row.x_forward, '.2f')}x forward -> {'met' if met else 'NOT met'}")


def write_json(report: Report, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(report.as_json(), f, indent=1)


# --------------------------------------------------------------------------- tables


def _fmt(v: float | None, spec: str = ".2e") -> str:
    return "-" if v is None else format(v, spec)


def equality_table(rows: Sequence[EqualityRow]) -> str:
    lines = ["| model | method | max diff / max map | tolerance | ok | conservation cpu | conservation device | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ok = "-" if r.ok is None else ("yes" if r.ok else "NO")
        lines.append(f"| {r.model} | {r.method} | {_fmt(r.rel_diff)} | {_fmt(r.tolerance, '.0e')} | {ok} | "
                     f"{_fmt(r.conservation_cpu)} | {_fmt(r.conservation_device)} | {r.note} |")
    return "\n".join(lines)


def throughput_table(rows: Sequence[ThroughputRow]) -> str:
    lines = ["| model | method | batch | images/s | x forward | peak MiB | note |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        batch = f"{r.batch} (largest)" if r.largest else str(r.batch)
        lines.append(f"| {r.model} | {r.method} | {batch} | {_fmt(r.images_per_s, '.1f')} | "
                     f"{_fmt(r.x_forward, '.2f')} | {_fmt(r.peak_mib, '.0f')} | {r.note} |")
    return "\n".join(lines)


def sync_table(report: Report) -> str:
    lines = ["| model | method | host syncs | inside the engine |", "|---|---|---|---|"]
    lines += [f"| {s['model']} | {s['method']} | {s['total']} | {s['in_engine']} |" for s in report.sync_runs]
    lines += ["", "| model | method | call site | count | in engine |", "|---|---|---|---|---|"]
    lines += [f"| {s.model} | {s.method} | {s.site} | {s.count} | {'YES' if s.in_engine else 'no'} |"
              for s in report.syncs]
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line


def _csv(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def config_from_args(args: argparse.Namespace) -> Config:
    return Config(device=args.device, models=_csv(args.models), methods=_csv(args.methods) or None,
                  check_batch=args.check_batch, throughput_models=_csv(args.throughput_models),
                  throughput_methods=_csv(args.throughput_methods),
                  batches=tuple(int(b) for b in _csv(args.batches)), largest=not args.no_largest,
                  max_batch=args.max_batch, max_call_s=args.max_call_s, repeat=args.repeat, size=args.size,
                  insdel_pixels_per_step=args.pixels_per_step, tf32_throughput=args.tf32, budget_s=args.budget_s,
                  equality_budget_s=args.equality_budget_s,
                  parts=_csv(args.parts), out=args.out)


def verdict(report: Report) -> tuple[str, int]:
    """One closing line and the exit status: 1 when a comparison failed or the engine synchronised the host."""
    failed = [r for r in report.equality if r.ok is False]
    engine_syncs = sum(s["in_engine"] for s in report.sync_runs)
    on_cuda = report.environment["device"].startswith("cuda")
    syncs = str(engine_syncs) if on_cuda else "not measured (no CUDA)"
    text = f"equality: {len(failed)} of {len(report.equality)} rows failed; host syncs inside the engine: {syncs}"
    if not on_cuda:
        text += ". CUDA ABSENT: cpu vs cpu only; no GPU result."
    return text, 1 if failed or engine_syncs else 0


def run_from_args(args: argparse.Namespace) -> int:
    report = run(config_from_args(args))
    text, rc = verdict(report)
    print(text)
    return rc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run_from_args(p.parse_args(argv))
