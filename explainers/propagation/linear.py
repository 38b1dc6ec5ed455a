"""The transposed linear map ``W^T S`` of a conv or dense layer: the one helper every rule that
redistributes through a layer uses (LRP's modified VJPs, absLRP's Eq. 12, SRD's sharing ratios).

Written out instead of ``torch.autograd.grad`` because the rules already have the forward output they
need; the transpose alone is then one kernel with no autograd graph.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def output_padding(in_size: tuple[int, ...], out_size: tuple[int, ...], kernel: tuple[int, int],
                   stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, int]:
    """The ``output_padding`` that makes a transposed conv return exactly ``in_size`` (strided convs drop rows)."""
    pads = []
    for k in range(2):
        full = (out_size[k] - 1) * stride[k] - 2 * padding[k] + dilation[k] * (kernel[k] - 1) + 1
        pads.append(in_size[k] - full)
    return pads[0], pads[1]


def conv_transpose(g: Tensor, weight: Tensor, stride: Any, padding: Any, dilation: Any, groups: int,
                   size: tuple[int, int], weight_t: Tensor | None = None) -> Tensor:
    """W^T g for a conv whose input had spatial ``size`` (the VJP with respect to the input).

    Two CPU fast paths, same numbers: a 1x1 conv's transpose is a 1x1 conv with the transposed weight
    (PyTorch's transposed-conv kernel is several times slower there), and depthwise transposes run in
    channels-last layout (2-3x faster with oneDNN)."""
    stride, padding, dilation = pair(stride), pair(padding), pair(dilation)
    kernel = (weight.shape[-2], weight.shape[-1])
    if kernel == (1, 1) and padding == (0, 0) and groups == 1:
        y = F.conv2d(g, weight.transpose(0, 1) if weight_t is None else weight_t)
        if stride == (1, 1) and tuple(y.shape[-2:]) == size:
            return y
        out = g.new_zeros(g.shape[0], weight.shape[1], *size)
        out[..., : y.shape[-2] * stride[0] : stride[0], : y.shape[-1] * stride[1] : stride[1]] = y
        return out
    if groups > 1 and groups == weight.shape[0] and g.is_floating_point():
        g = g.contiguous(memory_format=torch.channels_last)
    pad = output_padding(size, tuple(g.shape[-2:]), kernel, stride, padding, dilation)
    return F.conv_transpose2d(g, weight, None, stride, padding, pad, groups, dilation)


def linear_transpose(g: Tensor, weight: Tensor) -> Tensor:
    """W^T g for a dense layer (``g`` [..., out] -> [..., in])."""
    return g @ weight


def transpose(g: Tensor, weight: Tensor, conv: dict[str, Any] | None, size: tuple[int, int] | None = None) -> Tensor:
    """W^T g for a layer described by its weight and conv parameters (None: dense); ``size``: the conv's
    input spatial size."""
    if conv is None:
        return linear_transpose(g, weight)
    assert size is not None, "a conv transpose needs the input's spatial size"
    return conv_transpose(g, weight, conv["stride"], conv["padding"], conv["dilation"], conv["groups"], size)
