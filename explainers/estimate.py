"""A rough time estimate before starting a method, so the app and the CLI can warn about slow ones.

Score-CAM and Ablation-CAM run one forward pass per channel of the target layer (thousands on a
CPU); everything else costs a handful of forward/backward passes.  We time one real forward pass
of the model on the selected device and multiply by the number of passes the method will make;
that is accurate to within a factor of about two, which is what a "this will take ~N s" note needs.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any
from weakref import WeakKeyDictionary

import torch

from .capabilities import capabilities_of
from .guard import model_guard
from .layers import default_cam_layer, named_layer
from .models import ModelBundle
from .registry import get_method

# Cost of one explanation in forward-pass equivalents (a backward pass counts about 2).
_PASSES = {"gradient": 3.0, "cam": 3.0}
_FIXED = {"eigencam": 1.0, "fullgrad": 3.0, "guided-gradcam": 6.0, "deeplift": 6.0}


# Timed once per model object, device and batch size: every estimate of a model derives from one measurement
# (the Compare page asks for one per method; each timing costs two forward passes, which on a server's first
# visit competed with the first map).  The lock also makes concurrent callers wait for that one timing.
_TIMED: WeakKeyDictionary = WeakKeyDictionary()
_TIMED_LOCK = threading.Lock()


def forward_seconds(bundle: ModelBundle, batch: int = 1) -> float:
    """Seconds of one forward pass of ``batch`` images on the bundle's device (one warm-up pass, untimed);
    measured once per model, device and batch size."""
    with _TIMED_LOCK:
        timed = _TIMED.setdefault(bundle.model, {})
        key = (str(bundle.device), int(batch), int(bundle.input_size))
        if key not in timed:
            timed[key] = _time_forward(bundle, batch)
        return timed[key]


def _time_forward(bundle: ModelBundle, batch: int) -> float:
    x = torch.zeros(batch, 3, bundle.input_size, bundle.input_size, device=bundle.device)
    cuda = bundle.device.type == "cuda"
    with bundle.lock, torch.no_grad():
        bundle.model(x[:1])
        if cuda:  # the warm-up's kernels are still queued: without this they would be timed too
            torch.cuda.synchronize(bundle.device)
        start = time.perf_counter()
        bundle.model(x)
        if cuda:  # kernels run asynchronously: wait for them before reading the clock
            torch.cuda.synchronize(bundle.device)
        return time.perf_counter() - start


def layer_channels(bundle: ModelBundle, layer: str) -> int:
    """Channels of a layer's output (one probe forward pass; tokens x C for ViTs gives C)."""
    shapes: list[torch.Size] = []
    x = torch.zeros(1, 3, bundle.input_size, bundle.input_size, device=bundle.device)
    with model_guard(bundle, requires_grad=False) as model, torch.no_grad():
        handle = named_layer(model, layer or default_cam_layer(bundle)).register_forward_hook(
            lambda _m, _i, out: shapes.append(out.shape))
        try:
            model(x)
        finally:
            handle.remove()
    shape = shapes[0]
    return int(shape[-1] if capabilities_of(bundle).tokens else shape[1])


def estimate_seconds(bundle: ModelBundle, method: str, options: dict[str, Any] | None = None,
                     images: int = 1) -> float:
    """Expected seconds for ``images`` images with ``method`` and ``options`` on the bundle's device."""
    from .methods.cams import resolve_top_k

    spec = get_method(method)
    opts = spec.resolve_options(options or {})
    aug = 6.0 if opts.get("aug_smooth") else 1.0  # the library's test-time augmentation: 6 variants
    if method in ("scorecam", "ablationcam"):
        channels = layer_channels(bundle, opts.get("layer", ""))
        top_k = resolve_top_k(opts["top_k"], bundle.device)
        k = channels if top_k is None else min(top_k, channels)
        batch = int(opts["batch_size"])
        per_batch = forward_seconds(bundle, batch)
        return images * aug * math.ceil(k / batch) * per_batch + images * 3 * forward_seconds(bundle, 1)
    passes = _FIXED.get(method, _PASSES.get(spec.family, 3.0))
    if method == "integrated-gradients":
        passes = 3.0 * opts["steps"]
    elif method == "smoothgrad":
        passes = 3.0 * opts["samples"]
    one = forward_seconds(bundle, 1)
    return images * aug * passes * one


def describe_estimate(seconds: float) -> str:
    """'about 40 s' / 'about 3 min' for a UI note."""
    if seconds < 60:
        return f"about {max(seconds, 0.1):.0f} s" if seconds >= 1 else "under a second"
    return f"about {seconds / 60:.0f} min"
