"""An independent transcription of the released absLRP code (davor10105/relative-absolute-magnitude-propagation,
HEAD 130e4e1, ``abslrp_gae/abslrp``), as shared/notes/released-code-abslrp-gae.md Sec. 1 records it.  Plain
torch with forward hooks, the way that code works; it shares no code with ``explainers`` (no traced graph, no
closed forms), so ``abslrp preset=released-code`` can be checked against it.

What it does, step by step (the notes' wording in quotes):

- every leaf module gets one generic step: "deep-copies each leaf module ..., sets weight=|w|, bias=|b|, and
  runs the copy on |x|", then ``R_x = x * grad(h + h_abs, x, R / (|h| + 1e-9))``;
- "each input's map is renormalised to L1 mass 1 (SUM_TO_ONE)";
- "composite modules call their children in reverse order" (here: the recorded call order, reversed);
- a ResNet block's residual add ``x += shortcut`` is one step over both inputs, "each branch is renormalised to
  mass 1, propagated, and the two are summed";
- start: "positive start: one-hot(y); negative start: all other classes at 1/(N-1). Relevance = R_pos - R_neg";
  the map shown is the channel sum scaled to max |value| 1 (``visualize_batch``).

Only leaf modules and timm ResNet blocks (``BasicBlock`` / ``Bottleneck``) are handled: what the tests use.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

EPS = 1e-9
BLOCKS = ("BasicBlock", "Bottleneck")


def sum_to_one(r: torch.Tensor) -> torch.Tensor:
    mass = r.flatten(1).abs().sum(1).view(-1, *([1] * (r.dim() - 1)))
    return torch.where(mass > 0, r / torch.where(mass > 0, mass, torch.ones_like(mass)), torch.zeros_like(r))


def abs_copy(m: nn.Module) -> nn.Module:
    c = copy.deepcopy(m)
    with torch.no_grad():
        for p in c.parameters(recurse=False):
            p.copy_(p.abs())
    if hasattr(c, "inplace"):
        c.inplace = False
    return c


def plain_copy(m: nn.Module) -> nn.Module:
    c = copy.deepcopy(m)
    if hasattr(c, "inplace"):
        c.inplace = False
    return c


def leaf_step(m: nn.Module, x: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """The generic rule (rules/base.py): x * grad(h + h_abs) with upstream R / (|h| + 1e-9), then SUM_TO_ONE."""
    with torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        h = plain_copy(m)(xg)
        h_abs = abs_copy(m)(xg.abs())
        (g,) = torch.autograd.grad(h + h_abs, xg, R / (h.detach().abs() + EPS))
    return sum_to_one(xg.detach() * g)


@dataclass
class Call:
    module: nn.Module
    name: str
    x: torch.Tensor
    out: torch.Tensor | None = None
    calls: list[Call] = field(default_factory=list)  # a block's own leaf calls


def record(model: nn.Module, x: torch.Tensor) -> list[Call]:
    """Run the model once; the top-level leaf calls and blocks in call order, inputs and outputs cloned (the
    model's ReLUs and ``x += shortcut`` are in place)."""
    top: list[Call] = []
    stack: list[Call] = []
    handles = []

    def pre(name):
        def hook(m, args):
            c = Call(m, name, args[0].detach().clone())
            (stack[-1].calls if stack else top).append(c)
            if type(m).__name__ in BLOCKS:
                stack.append(c)
        return hook

    def post(name):
        def hook(m, args, out):
            if type(m).__name__ in BLOCKS:
                stack.pop().out = out.detach().clone()
            else:
                (stack[-1].calls if stack else top)[-1].out = out.detach().clone()
        return hook

    for name, m in model.named_modules():
        if type(m).__name__ in BLOCKS or (not list(m.children()) and name):
            handles += [m.register_forward_pre_hook(pre(name)), m.register_forward_hook(post(name))]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return top


def block_step(block: Call, R: torch.Tensor) -> torch.Tensor:
    """A timm ResNet block: act after ``x += shortcut``; the add is one step over both inputs, each unit mass."""
    prefix = block.name + ".downsample."
    main = [c for c in block.calls if not c.name.startswith(prefix)]
    down = [c for c in block.calls if c.name.startswith(prefix)]
    act, main = main[-1], main[:-1]
    R = leaf_step(act.module, act.x, R)
    a = main[-1].out
    s = down[-1].out if down else block.x
    with torch.enable_grad():
        ag, sg = a.clone().requires_grad_(True), s.clone().requires_grad_(True)
        h = ag + sg
        ga, gs = torch.autograd.grad(h + (ag.abs() + sg.abs()), (ag, sg), R / (h.detach().abs() + EPS))
    r_main, r_skip = sum_to_one(a * ga), sum_to_one(s * gs)
    for c in reversed(main):
        r_main = leaf_step(c.module, c.x, r_main)
    for c in reversed(down):
        r_skip = leaf_step(c.module, c.x, r_skip)
    return r_main + r_skip


def explain(calls: list[Call], start: torch.Tensor) -> torch.Tensor:
    R = start
    for c in reversed(calls):
        R = block_step(c, R) if c.calls else leaf_step(c.module, c.x, R)
    return R


def released_map(model: nn.Module, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """relevancy_methods.py's contrastive map, as ``visualize_batch`` shows it: [B, H, W], max |value| 1."""
    calls = record(model, x)
    logits = model(x).detach()
    y = logits.argmax(-1) if target is None else target
    n = logits.shape[-1]
    onehot = torch.nn.functional.one_hot(y, n).to(x.dtype)
    r_pos = sum_to_one(explain(calls, onehot))
    r_neg = sum_to_one(explain(calls, (1 - onehot) / (n - 1)))
    m = (r_pos - r_neg).sum(1)
    return m / m.flatten(1).abs().amax(1).view(-1, 1, 1)
