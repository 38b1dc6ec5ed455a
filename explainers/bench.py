"""Speed benchmark: median seconds per image per method, and the ratio to one forward pass.

Run ``python -m explainers bench speed --model efficientnet_lite0 --methods gradcam --repeat 5``;
options per method inline: ``--methods "scorecam@top_k=64+batch_size=32,scorecam@top_k=-1"``;
a family name times every method of it the model supports: ``--methods cam,gradient``.
Measured here, not in a timed test, so CI stays deterministic.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .images import GALLERY
from .models import ModelBundle
from .registry import explain_batch


@dataclass
class SpeedRow:
    method: str
    batch: int
    seconds_per_image: float
    forward_seconds_per_image: float

    @property
    def ratio(self) -> float:
        return self.seconds_per_image / self.forward_seconds_per_image


def median_seconds(fn: Callable[[], object], repeat: int, warmup: int = 1) -> float:
    """Median wall seconds of ``fn`` after ``warmup`` untimed calls.

    CUDA runs kernels asynchronously: the device is synchronised before the timer starts (else the warm-up's
    or the previous call's queued kernels are billed to this one) and before it is read (else only the
    launches are timed).
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        _sync()
        start = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def sample_batch(bundle: ModelBundle, batch: int) -> torch.Tensor:
    items = list(GALLERY.values())
    return torch.cat([bundle.preprocess(items[i % len(items)].image()) for i in range(batch)])


def forward_seconds(bundle: ModelBundle, x: torch.Tensor, repeat: int) -> float:
    def run():
        with torch.no_grad():
            bundle.model(x)

    return median_seconds(run, repeat) / x.shape[0]


def parse_method_options(text: str) -> tuple[str, dict[str, str]]:
    """``"scorecam@top_k=64+batch_size=32"`` -> ("scorecam", {"top_k": "64", "batch_size": "32"}).

    Lets one speed run compare settings of the same method (e.g. Score-CAM with all channels vs top-k);
    values are strings, validated by the method's options.
    """
    name, _, rest = text.partition("@")
    opts = dict(item.split("=", 1) for item in rest.split("+") if "=" in item)
    return name, opts


def expand_methods(tokens: list[str], bundle: ModelBundle) -> list[str]:
    """Method ids from ``--methods`` tokens: an id (with inline options) stays as given; a method family
    (``cam``, ``gradient``, ``lrp``, ``srd``) or ``all`` becomes every registered method of that family that
    runs on ``bundle``'s model, in registry order, so one command times a whole family."""
    from .registry import METHODS

    families = {spec.family for spec in METHODS.values()}
    out: list[str] = []
    for token in tokens:
        if token == "all" or token in families:
            out += [m for m, spec in METHODS.items()
                    if (token == "all" or spec.family == token) and spec.supports(bundle) and m not in out]
        elif token not in out:
            out.append(token)
    return out


def speed(bundle: ModelBundle, methods: list[str], repeat: int = 5, batch: int = 1,
          options: dict[str, dict] | None = None) -> list[SpeedRow]:
    x = sample_batch(bundle, batch)
    fwd = forward_seconds(bundle, x, repeat)
    rows = []
    for method in methods:
        name, inline = parse_method_options(method)
        opts = {**(options or {}).get(method, {}), **inline}
        sec = median_seconds(lambda m=name, o=opts: explain_batch(bundle, x, m, **o), repeat) / batch
        rows.append(SpeedRow(method, batch, sec, fwd))
    return rows


def markdown(rows: list[SpeedRow], model: str, device: str) -> str:
    lines = [f"model {model} on {device}", "",
             "| method | batch | s / image | x forward |", "|---|---|---|---|"]
    if rows:
        lines.append(f"| forward | {rows[0].batch} | {rows[0].forward_seconds_per_image:.4f} | 1.0 |")
    lines += [f"| {r.method} | {r.batch} | {r.seconds_per_image:.4f} | {r.ratio:.1f} |" for r in rows]
    return "\n".join(lines)


def erf_speed(bundle: ModelBundle, positions: int = 49, layer: str = "low", repeat: int = 3,
              method: str = "auto") -> str:
    """Seconds for the SRD ERFs of ``positions`` PFVs of one layer of one image, end to end (forward pass,
    sharing-ratio stencils, the batched maps), against one forward pass; a markdown table."""
    from .methods import srd

    x = sample_batch(bundle, 1)
    fwd = forward_seconds(bundle, x, repeat)
    p = srd.forward_pass(bundle, x)
    h, w = p.grid(layer)
    side = max(1, round(positions ** 0.5))
    grid = [(min(h - 1, r * h // side), min(w - 1, c * w // side)) for r in range(side) for c in range(side)]
    grid = grid[:positions]
    sec = median_seconds(lambda: srd.forward_pass(bundle, x).erf(layer, grid, method=method), repeat)
    name = p.info.names[p.node(layer)]
    return "\n".join([f"model {bundle.label} on {bundle.device}", "",
                      "| ERFs | layer | grid | method | seconds | x forward |", "|---|---|---|---|---|---|",
                      f"| {len(grid)} | {name} | {h}x{w} | {method} | {sec:.3f} | {sec / fwd:.1f} |"])


def zennit_reference_seconds(bundle: ModelBundle, x: torch.Tensor, repeat: int) -> float | None:
    """Seconds per image of zennit's EpsilonPlusFlat (BN merged; ResNetCanonizer for torchvision ResNets),
    the field's reference LRP implementation, on a private copy of the model (its canonizers and hooks
    modify the module).  None when zennit is not installed or cannot handle the model."""
    import copy

    try:
        from zennit.attribution import Gradient
        from zennit.canonizers import SequentialMergeBatchNorm
        from zennit.composites import EpsilonPlusFlat
        from zennit.torchvision import ResNetCanonizer
    except ImportError:
        return None
    model = copy.deepcopy(bundle.model).eval()
    canonizers = [ResNetCanonizer()] if bundle.family == "resnet" else [SequentialMergeBatchNorm()]
    composite = EpsilonPlusFlat(canonizers=canonizers)
    with torch.no_grad():
        logits = model(x)
    onehot = torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(x.dtype)
    try:
        with Gradient(model, composite) as attributor:
            return median_seconds(lambda: attributor(x, onehot), repeat) / x.shape[0]
    except Exception:  # noqa: BLE001 - a reference we cannot run is reported as missing, not as a crash
        return None


def speed_with_reference(bundle: ModelBundle, methods: list[str], repeat: int = 5, batch: int = 1) -> str:
    """The speed table plus, when an LRP-family method is benchmarked, the ratio to zennit measured in the same run."""
    from .registry import get_method

    rows = speed(bundle, methods, repeat=repeat, batch=batch)
    table = markdown(rows, bundle.label, str(bundle.device))
    if not any(get_method(parse_method_options(m)[0]).family == "lrp" for m in methods):
        return table
    ref = zennit_reference_seconds(bundle, sample_batch(bundle, batch), repeat)
    if ref is None:
        return table + "\n\nzennit reference: unavailable"
    fwd = rows[0].forward_seconds_per_image
    lines = [table, "", f"| zennit EpsilonPlusFlat | {batch} | {ref:.4f} | {ref / fwd:.1f} |", "",
             "| method | batch | x zennit |", "|---|---|---|"]
    lines += [f"| {r.method} | {r.batch} | {r.seconds_per_image / ref:.2f} |" for r in rows]
    return "\n".join(lines)
