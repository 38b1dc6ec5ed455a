"""A four-pixel classifier whose insertion / deletion curves can be worked out by hand.

logit_0 = sum_p a_p * sum_c x_{c,p} with a = [[2, 1], [0.5, -0.25]], logit_1 = 0, on an all-white image
(16x16, resized to 2x2) with identity normalisation (mean 0, std 1, so black is 0).  Saliency (|gradient| summed over
the colour channels) is then 3 |a_p| = [6, 3, 1.5, 0.75]: pixels enter in the order p0, p1, p2, p3,
without ties.
"""

from __future__ import annotations

import io
import math

import torch
from PIL import Image
from torch import nn

from explainers.models import ModelBundle, Preprocessing

A = (2.0, 1.0, 0.5, -0.25)  # the pixel weights, in the order of the saliency ranking


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("a", torch.tensor(A).view(2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x.sum(1) * self.a).flatten(1).sum(1)
        return torch.stack([s, torch.zeros_like(s)], 1)


def toy_bundle() -> ModelBundle:
    return ModelBundle(model=Toy().eval(), name="toy", family="resnet", class_names=("zero", "one"),
                       device=torch.device("cpu"), trained=True, weights_source="test",
                       prep=Preprocessing(2, 2, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)))


def white_png() -> bytes:
    buf = io.BytesIO()
    # 16 px: the image loader's minimum side; the toy preprocessing shrinks it to 2x2 (still all 1.0)
    Image.new("RGB", (16, 16), (255, 255, 255)).save(buf, format="PNG")
    return buf.getvalue()


def _p(logit: float) -> float:
    return 1.0 / (1.0 + math.exp(-logit))  # softmax of [logit, 0], class 0


def _trapezoid(ys: list[float]) -> float:
    return sum((a + b) / 2 for a, b in zip(ys, ys[1:])) / (len(ys) - 1)


def hand_curves() -> tuple[list[float], list[float], float, float]:
    """(insertion curve, deletion curve, insertion area, deletion area) at one pixel per step.

    Point n (n = 0..4) has the first n pixels of the ranking inserted into black (logit 3 * sum of their
    a) or deleted from the white image (logit 3 * sum of the others' a); the curves start at 0 pixels (the
    black image, the image itself), and the areas are the trapezoid rule on [0, 1] with spacing 1/4."""
    ins = [_p(3 * sum(A[:n])) for n in range(0, 5)]
    dele = [_p(3 * sum(A[n:])) for n in range(0, 5)]
    return ins, dele, _trapezoid(ins), _trapezoid(dele)
