"""`bench gpu`'s configuration and command-line arguments, without torch (see :mod:`explainers.gpu_check`).

Split from gpu_check so that building the CLI parser (``python -m explainers --help``) imports no torch.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

DEFAULT_MODELS = ("efficientnet_lite0", "resnet50", "vgg16", "vit_small_patch16_224")
THROUGHPUT_METHODS = ("forward", "gradcam", "resnet-lrp", "lrp", "abslrp", "srd", "integrated-gradients", "insdel")
DEFAULT_BATCHES = (1, 16, 64)


@dataclass
class Config:
    device: str = "cuda"
    models: tuple[str, ...] = DEFAULT_MODELS
    methods: tuple[str, ...] | None = None  # None: every registered method the model supports
    check_batch: int = 2
    throughput_models: tuple[str, ...] = ("resnet50",)
    throughput_methods: tuple[str, ...] = THROUGHPUT_METHODS
    batches: tuple[int, ...] = DEFAULT_BATCHES
    largest: bool = True  # also search the largest batch that fits (doubling from the largest in ``batches``)
    max_batch: int = 1024
    max_call_s: float = 10.0  # stop growing the batch once the next call would take longer (calls double)
    repeat: int = 3
    size: int | None = None  # input side for CNNs (smaller = faster CPU tests); ViTs keep their own
    insdel_pixels_per_step: int = 500
    tf32_throughput: bool = False
    budget_s: float = 540.0
    equality_budget_s: float = 240.0  # the equality part's share, so the throughput part always gets its turn
    out: str = "gpu_check.json"
    parts: tuple[str, ...] = ("equality", "syncs", "throughput")



def add_arguments(p: argparse.ArgumentParser) -> None:
    d = Config()
    p.add_argument("--device", default=d.device, choices=["cuda", "cpu"],
                   help="device under test; 'cpu' compares cpu with cpu (tests the machinery)")
    p.add_argument("--models", default=",".join(d.models), help="models for the equality part")
    p.add_argument("--methods", default="", help="methods for the equality part (default: all the model supports)")
    p.add_argument("--check-batch", type=int, default=d.check_batch, help="images per equality comparison")
    p.add_argument("--throughput-models", default=",".join(d.throughput_models))
    p.add_argument("--throughput-methods", default=",".join(d.throughput_methods),
                   help="'forward', 'insdel' (Insertion/Deletion of a Grad-CAM map) or method ids")
    p.add_argument("--batches", default=",".join(map(str, d.batches)))
    p.add_argument("--no-largest", action="store_true", help="skip the search for the largest batch that fits")
    p.add_argument("--max-batch", type=int, default=d.max_batch)
    p.add_argument("--max-call-s", type=float, default=d.max_call_s)
    p.add_argument("--repeat", type=int, default=d.repeat)
    p.add_argument("--size", type=int, default=None, help="input side for CNNs (default: the model's own)")
    p.add_argument("--pixels-per-step", type=int, default=d.insdel_pixels_per_step)
    p.add_argument("--tf32", action="store_true", help="allow TF32 in the throughput part (never in equality)")
    p.add_argument("--budget-s", type=float, default=d.budget_s, help="skip what is left after this many seconds")
    p.add_argument("--equality-budget-s", type=float, default=d.equality_budget_s,
                   help="the equality part's share of the budget")
    p.add_argument("--parts", default=",".join(d.parts), help="equality,syncs,throughput")
    p.add_argument("--out", default=d.out, help="JSON report path")
