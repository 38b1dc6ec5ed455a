"""What an input or an option costs in memory, against what the device has: refuse (or downscale) before allocating.

Pixel counts and aspect limits (:mod:`explainers.images`) are proxies; this module counts the bytes the steps
actually allocate, so a limit follows the machine it runs on:

- :func:`load_bytes`: decoding a frame with Pillow and turning it into RGB (:func:`explainers.images.load_image`).
- :func:`preprocess_bytes`: torchvision's resize of the short side on a PIL image (Pillow's two-pass resampling
  with its coefficient tables), the centre crop and the float tensor (:meth:`ModelBundle.to_tensor01`).
- :func:`method_bytes`: a method's simultaneous model copies (Integrated Gradients' ``internal_batch_size``,
  SmoothGrad's and Score-/Ablation-CAM's ``batch_size``, or the batch's images) times a per-sample cost measured
  from the model's own activation shapes, plus SmoothGrad's noise tensor.

The budget (:func:`budget_bytes`) is half of what the device has free now (``MemAvailable`` and the cgroup's
limit on the CPU, ``torch.cuda.mem_get_info`` on CUDA), capped by ``$RELEVANCE_EXPLORER_MEMORY_MB`` when set.
Import-light: no torch or PIL at import time (images.py imports this lazily too).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

FRACTION = 0.5  # of the free memory: the rest is for the model, the caches, other sessions and the allocator
ENV_CAP = "RELEVANCE_EXPLORER_MEMORY_MB"

# Pillow's storage per pixel: 8-bit modes take 1 byte, I;16 2 bytes, every other mode a 32-bit word (RGB is RGBX).
_PIL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La", "P")  # P may carry transparency: counted as the alpha path
_NUMERIC = ("I", "F", "I;16", "I;16L", "I;16B", "I;16N")
# Pillow's filter supports (Resample.c): bilinear 1, bicubic 2.
_SUPPORT = {"bilinear": 1.0, "bicubic": 2.0}
# Methods whose option sets how many copies of the model's activations are alive at once.
COPIES_OPTION = {"integrated-gradients": "internal_batch_size", "smoothgrad": "batch_size",
                 "scorecam": "batch_size", "ablationcam": "batch_size"}
# Per sample: the bytes of all leaf modules' outputs x 1.25.  Measured peak RSS per sample of a forward + backward
# at batch 8 on the CPU (two runs): EfficientNet-Lite0 76-80 MB, ResNet-50 89-104 MB, ViT-S/16 68-69 MB, against
# 126, 145 and 149 MB estimated (1.4-2.2x): autograd keeps about one copy of the activations.
ACTIVATION_FACTOR = 1.25


def pil_bytes_per_pixel(mode: str) -> int:
    return _PIL_BYTES.get(mode, 4)


def load_bytes(width: int, height: int, mode: str) -> int:
    """Peak bytes of :func:`~explainers.images.load_image` for one ``width x height`` frame in ``mode``.

    The decoded frame and an EXIF-transposed copy (2 x the mode's bytes), plus the conversion to RGB:
    nothing for RGB; RGBA, background, composite and RGB result (4 x 4 bytes) for alpha modes; for 16/32-bit
    integer and float modes the float64 array, the finite values, ``nan_to_num``, the scaled and clipped arrays
    (5 x 8), the finite mask, the uint8 array and the L image (3 x 1) and the RGB image (4); 4 bytes otherwise."""
    n = width * height
    own = pil_bytes_per_pixel(mode)
    if mode == "RGB":
        convert = 0
    elif mode in _NUMERIC:
        convert = 5 * 8 + 3 + 4
    elif mode in _ALPHA:
        convert = 4 * 4
    else:
        convert = 4
    return n * (2 * own + convert)


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """torchvision's ``resize(img, size)`` for an int ``size``: the short side becomes ``size``, the long side
    ``int(size * long / short)``."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def _ksize(in_size: int, out_size: int, support: float) -> int:
    """Pillow's taps per output pixel (Resample.c ``precompute_coeffs``): ``ceil(support * scale) * 2 + 1``,
    the scale ``in / out`` when shrinking, 1 when enlarging."""
    scale = max(in_size / out_size, 1.0)
    return int(math.ceil(support * scale)) * 2 + 1


def resize_bytes(width: int, height: int, size: int, interpolation: str = "bilinear") -> int:
    """Peak bytes of Pillow's resize of an RGB ``width x height`` image to torchvision's ``resized_size``.

    Pillow resamples horizontally into a temporary ``new_w x height`` image, then vertically into the
    ``new_w x new_h`` result (4 bytes a pixel each), with both passes' coefficient tables (``out x ksize``
    doubles) and bounds (2 ints per output pixel) allocated up front."""
    new_w, new_h = resized_size(width, height, size)
    support = _SUPPORT.get(interpolation, 2.0)
    temp = new_w * height * 4 if new_w != width else 0
    out = new_w * new_h * 4
    coeffs = (new_w * _ksize(width, new_w, support) + new_h * _ksize(height, new_h, support)) * 8
    bounds = (new_w + new_h) * 2 * 4
    return temp + out + coeffs + bounds


def preprocess_bytes(width: int, height: int, resize: int = 256, crop: int = 224,
                     interpolation: str = "bilinear") -> int:
    """Peak bytes of :meth:`ModelBundle.to_tensor01` on an RGB image: the ``convert("RGB")`` copy (4 bytes a
    pixel), the resize, and the crop (4 bytes a pixel), its uint8 array (3) and float tensor (12)."""
    return width * height * 4 + resize_bytes(width, height, resize, interpolation) + crop * crop * (4 + 3 + 12)


# --------------------------------------------------------------------------- what the device has


def _cpu_available() -> int:
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            avail = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = 4 << 30
    try:  # a container's cgroup (v2) limit binds before the host's free memory
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            avail = min(avail, max(int(limit) - used, 0))
    except (OSError, ValueError):
        pass
    return avail


def available_bytes(device: Any = None) -> int:
    """Free memory on ``device`` now: CUDA's free bytes for a CUDA device, else the CPU's available memory."""
    if device is not None and getattr(device, "type", str(device).split(":")[0]) == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(device)[0])
    return _cpu_available()


def budget_bytes(device: Any = None) -> int:
    """What one input or one call may use: :data:`FRACTION` of the free memory, capped by ``$ENV_CAP`` MB."""
    budget = int(FRACTION * available_bytes(device))
    cap = os.environ.get(ENV_CAP, "").strip()
    if cap:
        try:
            budget = min(budget, int(float(cap) * 2**20))
        except ValueError:
            pass
    return budget


def fmt(n: float) -> str:
    """Bytes for a person, in binary units as ``$RELEVANCE_EXPLORER_MEMORY_MB`` is: '50.2 GB', '312 MB'."""
    if n >= 2**30:
        return f"{n / 2**30:.1f} GB"
    return f"{n / 2**20:.0f} MB" if n >= 2**20 else f"{n / 2**10:.0f} KB"


# --------------------------------------------------------------------------- images


def check_image(width: int, height: int, mode: str, name: str = "the image", *, device: Any = None) -> None:
    """Refuse a frame whose decoding plus a standard preprocessing (256 / 224) would exceed the budget."""
    from .errors import InvalidImage

    need = load_bytes(width, height, mode) + preprocess_bytes(width, height)
    budget = budget_bytes(device)
    if need > budget:
        raise InvalidImage(f"{name} is {width}x{height} pixels: decoding and resizing it would need about "
                           f"{fmt(need)} of memory, more than the {fmt(budget)} this server can spare. "
                           "Please downscale it first.")


def jpeg_draft_scale(width: int, height: int, mode: str, min_side: int) -> int:
    """The smallest JPEG decode scale (1, 2, 4 or 8: libjpeg's DCT scaling) whose cost fits the budget, or 0."""
    budget = budget_bytes()
    for scale in (1, 2, 4, 8):
        w, h = -(-width // scale), -(-height // scale)
        if min(w, h) < min_side:
            return 0
        if load_bytes(w, h, mode) + preprocess_bytes(w, h) <= budget:
            return scale
    return 0


def check_preprocess(width: int, height: int, resize: int, crop: int, interpolation: str,
                     name: str = "the image") -> None:
    """Refuse an RGB image whose resize to the model's input would exceed the budget (e.g. a 200000x16 strip
    that skipped :func:`~explainers.images.load_image`: its resize alone needs ~3 GB)."""
    from .errors import InvalidImage

    need = preprocess_bytes(width, height, resize, crop, interpolation)
    budget = budget_bytes()
    if need > budget:
        raise InvalidImage(f"{name} is {width}x{height} pixels: resizing its short side to {resize} px would need "
                           f"about {fmt(need)} of memory, more than the {fmt(budget)} this server can spare. "
                           "Please crop or downscale it first.")


# --------------------------------------------------------------------------- methods


_ACTS: WeakKeyDictionary = WeakKeyDictionary()  # model -> elements of its leaf modules' outputs at its input size


def _activation_elements(bundle: Any) -> int:
    hit = _ACTS.get(bundle.model)
    if hit is None:
        from .capabilities import capabilities_of

        leaves = {n for n, m in bundle.model.named_modules() if n and next(m.children(), None) is None}
        shapes = capabilities_of(bundle).layer_shapes
        hit = _ACTS[bundle.model] = sum(math.prod(s) for n, s in shapes.items() if n in leaves)
    return hit


def per_sample_bytes(bundle: Any, height: int, width: int) -> int:
    """One sample's cost in a forward + backward pass: the bytes of every leaf module's output at the model's
    input size (from the capability analysis, no extra forward pass), scaled to ``height x width``, times
    :data:`ACTIVATION_FACTOR`, plus the input and its gradient."""
    acts = _activation_elements(bundle)
    size = bundle.input_size
    acts = acts * (height * width) / (size * size)
    return int(ACTIVATION_FACTOR * 4 * acts + 2 * 4 * 3 * height * width)


def _noise_bytes(method: str, opts: dict[str, Any], input_bytes: int) -> int:
    return int(opts.get("samples", 0)) * input_bytes if method == "smoothgrad" else 0


def method_bytes(method: str, opts: dict[str, Any], images: int, per_sample: int, input_bytes: int) -> int:
    """Peak bytes of one call: the copies alive at once (the copies option, at least the batch's images) times
    ``per_sample``, plus SmoothGrad's ``samples`` noise images of ``input_bytes`` each."""
    copies = max(int(opts.get(COPIES_OPTION.get(method, ""), 1)), images)
    return copies * per_sample + _noise_bytes(method, opts, input_bytes)


def check_method(spec: Any, opts: dict[str, Any], bundle: Any, x: Any) -> None:
    """Refuse options (or a batch) whose memory exceeds the device's budget, naming the largest value that fits."""
    from .errors import InvalidOption

    if x.dim() != 4:
        return
    b, _, h, w = x.shape
    per = per_sample_bytes(bundle, h, w)
    input_bytes = 3 * h * w * x.element_size()
    need = method_bytes(spec.id, opts, b, per, input_bytes)
    budget = budget_bytes(bundle.device)
    if need <= budget:
        return
    where = f"{fmt(budget)} can be spared on {bundle.device}"
    noise = _noise_bytes(spec.id, opts, input_bytes)
    if noise > budget // 2:
        raise InvalidOption(f"{spec.name} with samples={opts['samples']} needs {fmt(noise)} for its noise images "
                            f"alone but {where}; use samples <= {max(budget // 2 // input_bytes, 1)}.")
    fits = int((budget - noise) // max(per, 1))
    option = COPIES_OPTION.get(spec.id)
    if option and int(opts.get(option, 1)) >= b:
        raise InvalidOption(f"{spec.name} with {option}={opts[option]} needs about {fmt(need)} of memory "
                            f"({fmt(per)} per copy) but {where}; "
                            + (f"use {option} <= {fits}." if fits else "the model is too large for this device."))
    raise InvalidOption(f"{spec.name} on {b} images at {h}x{w} needs about {fmt(need)} of memory but {where}; "
                        + (f"use batches of at most {fits} images." if fits else
                           "the model is too large for this device."))
