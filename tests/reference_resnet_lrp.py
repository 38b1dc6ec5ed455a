"""A hand-written transcription of the released LRP-for-ResNet code (keio-smilab24/LRP-for-ResNet, ``src/lrp.py``,
``src/lrp_layers.py``) for torchvision-style ResNets, as docs/notes/released-code-resnet-lrp-zennit.md records it.

Plain torch, one function per layer type, the code's own 4-step gradient trick
(``z = layer(a) + eps; s = (r / z).data; (z * s).sum().backward(); r = a * a.grad``); it shares no code with
``explainers`` (no traced graph, no term machinery), so ``resnet-lrp preset=released-code`` can be checked
against it.  Handles what the tests use: conv1 / bn1 / relu / maxpool / layer* of BasicBlocks or Bottlenecks /
avgpool / fc.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

EPS = 1e-5


def _grad_trick(forward, a: torch.Tensor, r: torch.Tensor, eps: float) -> torch.Tensor:
    a = a.detach().requires_grad_(True)
    with torch.enable_grad():
        z = forward(a) + eps
        s = (r / z).data
        (z * s).sum().backward()
    return (a * a.grad).data


def conv_zplus(conv: nn.Conv2d, a: torch.Tensor, r: torch.Tensor, eps: float) -> torch.Tensor:
    """RelevancePropagationConv2d, mode z_plus: the weight clamped >= 0, the bias kept."""
    layer = copy.deepcopy(conv)
    layer.weight = nn.Parameter(layer.weight.clamp(min=0.0))
    return _grad_trick(layer, a, r, eps)


def linear_zplus(fc: nn.Linear, a: torch.Tensor, r: torch.Tensor, eps: float) -> torch.Tensor:
    """RelevancePropagationLinear: W clamped >= 0, bias zeroed; c = s @ W+, r = a * c."""
    w = fc.weight.clamp(min=0.0)
    z = a @ w.t() + eps
    return a * ((r / z) @ w)


def avgpool_z(pool, a: torch.Tensor, r: torch.Tensor, eps: float) -> torch.Tensor:
    return _grad_trick(pool, a, r, eps)


def block(blk: nn.Module, a: torch.Tensor, r: torch.Tensor, skip_type: str, eps: float) -> torch.Tensor:
    """RelevancePropagationBasicBlock / Bottleneck and their Simple / FlowsPureSkip variants."""
    if isinstance(blk, BasicBlock):
        layers = [blk.conv1, blk.bn1, blk.relu, blk.conv2, blk.bn2]
    else:
        assert isinstance(blk, Bottleneck)
        layers = [blk.conv1, blk.bn1, blk.relu, blk.conv2, blk.bn2, blk.relu, blk.conv3, blk.bn3]
    with torch.no_grad():
        acts = [a]
        for layer in layers:
            acts.append(layer(acts[-1].clone()))  # clone: torchvision's ReLU is in place
        shortcut = blk.downsample(a) if blk.downsample is not None else a
    mainstream = acts[-1]
    identity = blk.downsample is None
    if skip_type in ("latest", "simple") and identity:
        ratio = torch.ones_like(mainstream)
    elif skip_type in ("simple", "flows_skip_simple"):
        ratio = torch.full_like(mainstream, 0.5)
    else:  # latest at a projection skip, flows_skip everywhere
        ratio = mainstream.abs() / (shortcut.abs() + mainstream.abs())
    r_main, r_short = ratio * r, (1 - ratio) * r
    for layer, act in zip(reversed(layers), reversed(acts[:-1])):
        if isinstance(layer, nn.Conv2d):
            r_main = conv_zplus(layer, act, r_main, eps)
        # BatchNorm2d and ReLU: RelevancePropagationBatchNorm2d / ReLU pass relevance unchanged
    if not identity:
        r_short = conv_zplus(blk.downsample[0], a, r_short, eps)  # the downsample BN is ignored
    return r_main + r_short


def released_lrp(model: nn.Module, x: torch.Tensor, skip_type: str = "latest", eps: float = EPS) -> torch.Tensor:
    """LRPModel.forward with topk=1 for one image: the [H, W] map (channel sum of the input relevance)."""
    model = model.eval()
    blocks = [b for name in ("layer1", "layer2", "layer3", "layer4") if hasattr(model, name)
              for b in getattr(model, name)]
    with torch.no_grad():
        acts = [torch.ones_like(x)]  # "Replace image with ones avoids using image information"
        h = model.conv1(x)
        acts.append(h)
        h = model.relu(model.bn1(h))
        acts.append(h)  # maxpool input
        h = model.maxpool(h)
        block_inputs = []
        for b in blocks:
            block_inputs.append(h)
            h = b(h)
        pooled_in = h
        flat = torch.flatten(model.avgpool(h), 1)
        logits = model.fc(flat)
    prob = torch.softmax(logits, -1)
    r = torch.zeros_like(prob)
    top = prob.argmax(-1)
    r[0, top] = prob[0, top]
    r = linear_zplus(model.fc, flat, r, eps)
    r = r.view(pooled_in.shape[0], -1, 1, 1)
    r = avgpool_z(model.avgpool, pooled_in, r, eps)
    for b, a in zip(reversed(blocks), reversed(block_inputs)):
        r = block(b, a, r, skip_type, eps)
    r = avgpool_z(nn.AvgPool2d(kernel_size=(2, 2)), acts[2], r, eps)  # MaxPool2d, mode "avg"
    # relu and bn1 pass; the stem conv sees the all-ones input
    r = conv_zplus(model.conv1, acts[0], r, eps)
    return r.sum(1)[0]


class ToyResNet(nn.Module):
    """Two BasicBlocks (the second with a 1x1 projection skip) after a torchvision-style stem with a max pool."""

    def __init__(self, width: int = 8, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        down = nn.Sequential(nn.Conv2d(width, 2 * width, 1, stride=2, bias=False), nn.BatchNorm2d(2 * width))
        self.layer1 = nn.Sequential(BasicBlock(width, width), BasicBlock(width, 2 * width, stride=2, downsample=down))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def randomise_bn(net: nn.Module, seed: int) -> nn.Module:
    """Seeded running statistics and affine parameters for every BatchNorm (so none is the identity)."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
    return net

