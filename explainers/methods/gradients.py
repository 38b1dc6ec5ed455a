"""Gradient baselines through captum: Saliency, Input x Gradient, Integrated Gradients, SmoothGrad,
Guided Backprop and DeepLift.

We adapt captum rather than reimplement it: the map is captum's own ``attribute(...)`` result
for the same settings, summed over the colour channels to one [H, W] map (signed methods stay
signed).  What we add: baselines expressed in pixel space (black, blurred) for a normalised model,
a seeded per-image SmoothGrad so cached maps are reproducible, and a private hook-clean view of the
shared model per method (:func:`model_guard` with ``view_key``; captum's GuidedBackprop/DeepLift register
hooks), so no captum run touches the model other sessions use.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch

from ..capabilities import CONV_MAP, DISTINCT_ACTIVATIONS
from ..guard import model_guard
from ..models import ModelBundle
from ..progress import ForwardProgress, report
from ..registry import MethodOutput, MethodSpec, Option, register

BASELINE_OPTION = Option("baseline", "choice", "black", choices=("black", "blurred"),
                         help="Reference image: black (all-zero pixels) or a Gaussian-blurred copy of the input.")
BLUR_SIGMA = 10.0  # pixels; removes object detail at 224x224 but keeps global colour (Sturmfels et al. 2020)


def baseline_tensor(bundle: ModelBundle, x: torch.Tensor, kind: str) -> torch.Tensor:
    """The baseline in the model's input space: black is 0 in pixel space, i.e. -mean/std after normalisation."""
    if kind == "black":
        mean = torch.tensor(bundle.prep.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(bundle.prep.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return ((0 - mean) / std).expand_as(x).contiguous()
    if kind == "blurred":
        # Blurring commutes with the per-channel affine normalisation (the kernel sums to 1), so we blur x as is.
        from torchvision.transforms.functional import gaussian_blur

        size = int(2 * round(3 * BLUR_SIGMA) + 1)
        return gaussian_blur(x, kernel_size=[size, size], sigma=[BLUR_SIGMA, BLUR_SIGMA])
    raise ValueError(kind)


def run_captum(bundle: ModelBundle, x: torch.Tensor, make, view: str | None = None, key: str | None = None,
               passes: tuple[int, str] | None = None, **attribute_kwargs: Any) -> MethodOutput:
    """``make(model).attribute(x, target=targets, **kwargs)`` on a private view, channel-summed.

    ``key``: which private view (default: the name of ``make``); ``view``: the library-view form (for the
    methods whose rules captum attaches by exact module type: Guided Backprop "guided", DeepLift
    "rescale"; see library_view.py); ``passes``: (forward passes expected, text) to report progress by
    (explainers.progress: a progress bar, and where a Stop ends the work)."""
    key = key or getattr(make, "__name__", "captum")
    with model_guard(bundle, view_key=f"captum:{key}", form=view) as model:
        counting = ForwardProgress(model, *passes) if passes else contextlib.nullcontext()
        with counting:
            attr = make(model).attribute(x.detach().clone().requires_grad_(True), **attribute_kwargs)
    return MethodOutput(attribution=attr.detach().sum(1), native_resolution=tuple(x.shape[-2:]))


def _saliency(bundle, x, targets, opts):
    from captum.attr import Saliency

    return run_captum(bundle, x, Saliency, target=targets, abs=True)


def _input_x_gradient(bundle, x, targets, opts):
    from captum.attr import InputXGradient

    return run_captum(bundle, x, InputXGradient, target=targets)


def _integrated_gradients(bundle, x, targets, opts):
    from captum.attr import IntegratedGradients

    # captum splits the steps x images into chunks of at most internal_batch_size inputs: one forward pass each
    per_pass = max(1, opts["internal_batch_size"] // x.shape[0])
    passes = (math.ceil(opts["steps"] / per_pass), "Integrated Gradients passes")
    return run_captum(bundle, x, IntegratedGradients, target=targets, n_steps=opts["steps"],
                      baselines=baseline_tensor(bundle, x, opts["baseline"]),
                      internal_batch_size=opts["internal_batch_size"], passes=passes)


def smoothgrad_noise(x_i: torch.Tensor, samples: int, noise_level: float, seed: int) -> torch.Tensor:
    """The ``samples`` noise images SmoothGrad adds to one image ``x_i`` (1x3xHxW), on the CPU.

    Smilkov et al. 2017, Sec. 3: ``M_hat(x) = 1/n sum_k M(x + N(0, sigma^2))`` with sigma a fraction
    (``noise_level``, they use 10-20%) of the input's range, ``max(x) - min(x)``.  Both are taken per
    image and the noise comes from a generator seeded with ``seed`` for each image, so an image gets the
    same map alone (``explain``) as in any batch (``explain_batch``), and no global RNG is touched."""
    stdev = float(noise_level) * float(x_i.max() - x_i.min())
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randn((samples, *x_i.shape[1:]), generator=gen, dtype=x_i.dtype) * stdev


def _smoothgrad(bundle, x, targets, opts):
    from captum.attr import Saliency

    n, step = opts["samples"], opts["batch_size"]
    maps, done, chunks = [], 0, x.shape[0] * math.ceil(n / step)
    with model_guard(bundle, view_key="captum:SmoothGrad") as model:
        saliency = Saliency(model)
        for i in range(x.shape[0]):  # one image's noisy copies per pass: rows never mix
            x_i = x[i:i + 1].detach()
            noise = smoothgrad_noise(x_i, n, opts["noise_level"], opts["seed"]).to(x.device)
            total = torch.zeros_like(x_i[0])
            for s in range(0, n, step):
                noisy = (x_i + noise[s:s + step]).requires_grad_(True)
                total += saliency.attribute(noisy, target=int(targets[i]), abs=False).detach().sum(0)
                done += 1
                report(done / chunks, f"SmoothGrad noisy copies {min(s + step, n) + i * n}/{n * x.shape[0]}")
            maps.append(total.sum(0) / n)  # channel sum of the mean gradient (signed)
    return MethodOutput(attribution=torch.stack(maps), native_resolution=tuple(x.shape[-2:]))


def _guided_backprop(bundle, x, targets, opts):
    from captum.attr import GuidedBackprop

    return run_captum(bundle, x, GuidedBackprop, view="guided", target=targets)


def _deeplift(bundle, x, targets, opts):
    from captum.attr import DeepLift

    return run_captum(bundle, x, DeepLift, view="rescale", target=targets,
                      baselines=baseline_tensor(bundle, x, opts["baseline"]))


register(MethodSpec(
    id="saliency", name="Saliency", family="gradient", fn=_saliency,
    description="Absolute input gradient of the target logit (Simonyan et al. 2014) via captum; unsigned.",
))
register(MethodSpec(
    id="input-x-gradient", name="Input x Gradient", family="gradient", fn=_input_x_gradient,
    signed=True,
    description="Input times its gradient (Shrikumar et al. 2016) via captum; signed.",
))
register(MethodSpec(
    id="integrated-gradients", name="Integrated Gradients", family="gradient", fn=_integrated_gradients,
    options=(Option("steps", "int", 50, min=2, max=1000, step=10, help="Riemann steps from the baseline to the input."),
             BASELINE_OPTION,
             Option("internal_batch_size", "int", 16, min=1, max=1024, step=8,
                    help="Interpolated images per forward pass (memory vs speed).")),
    signed=True,
    description="Path integral of gradients from a baseline (Sundararajan et al. 2017) via captum; signed.",
))
register(MethodSpec(
    id="smoothgrad", name="SmoothGrad", family="gradient", fn=_smoothgrad,
    options=(Option("samples", "int", 25, min=1, max=500, step=5, help="Noisy copies averaged."),
             Option("noise_level", "float", 0.15, min=0.0, max=1.0, step=0.05,
                    help="Noise std as a fraction of the input's value range."),
             Option("batch_size", "int", 25, min=1, max=500, step=5,
                    help="Noisy copies of one image per forward pass."),
             Option("seed", "int", 0, min=0, max=2**31 - 1, help="Noise seed (maps are reproducible).")),
    signed=True,
    description="Input gradient averaged over noisy copies (Smilkov et al. 2017) via captum's Saliency; noise level "
                "and seeded noise per image; signed.",
))
register(MethodSpec(
    id="guided-backprop", name="Guided Backprop", family="gradient", fn=_guided_backprop,
    needs=CONV_MAP, signed=True,
    description="Gradient with only positive signals through ReLUs (Springenberg et al. 2015) via captum; signed. "
                "EfficientNet-Lite's ReLU6 is guided as ReLU then clamp at 6 (captum guides nn.ReLU only).",
))
register(MethodSpec(
    id="deeplift", name="DeepLift", family="gradient", fn=_deeplift, options=(BASELINE_OPTION,),
    needs=DISTINCT_ACTIVATIONS, signed=True,
    description="Rescale-rule difference-from-reference attribution (Shrikumar et al. 2017) via captum; signed. "
                "EfficientNet and VGG only: captum's DeepLift needs each nonlinearity as its own module, and "
                "torchvision ResNets reuse one ReLU module per block (captum raises on them). EfficientNet-Lite's "
                "ReLU6 gets the Rescale rule as 6 - relu(6 - relu(x)) (captum's table has no ReLU6).",
))
