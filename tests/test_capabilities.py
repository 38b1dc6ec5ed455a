"""Method support from what the graph contains: residual adds, attention, depthwise convs, a spatial map for CAMs."""

from __future__ import annotations

import torch
from torch import nn

from explainers.capabilities import capabilities
from explainers.guard import count_hooks


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        h = self.conv(x)
        if h.sum() > 0:
            h = h.relu()
        return self.fc(h.mean((2, 3)))


def test_torchvision_resnet(untrained):
    m = untrained("resnet18").model
    hooks = count_hooks(m)
    caps = capabilities(m)
    assert caps.propagation and caps.residual and not caps.attention and not caps.depthwise
    assert caps.cam_layer == "layer4" and not caps.tokens
    assert count_hooks(m) == hooks  # the probe ran on a private copy
    assert capabilities(m) is caps  # once per model


def test_lite0_is_depthwise(lite0):
    caps = capabilities(lite0.model)
    assert caps.depthwise and caps.residual and caps.propagation and caps.cam_layer is not None


def test_vit_has_attention_and_tokens(untrained):
    caps = capabilities(untrained("vit_tiny_patch16_224").model)
    assert caps.attention and caps.tokens and caps.cam_layer is None


def test_plain_cnn_and_an_untraceable_one():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    caps = capabilities(plain, input_size=32)
    assert caps.propagation and not caps.residual and caps.cam_layer == "3"  # the last ReLU, 32x32
    bad = capabilities(Untraceable(), input_size=32)
    assert not bad.propagation and bad.cam_layer == "conv"
    assert "cannot be traced" in bad.reason
