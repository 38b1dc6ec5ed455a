"""What a rule set must say to the walker (DESIGN.md, "One engine, many rules").

A rule set is the whole difference between LRP, ResNet-LRP, absLRP and SRD.  The walker
(:func:`~explainers.propagation.engine.walk`, through :func:`~explainers.propagation.engine.propagate`) asks it
these things and nothing else:

- ``seeds(graph, env, logits, targets)``: where the walk starts and with what relevance; by default
  ``start_relevance(logits, targets)`` at the logits (SRD places its Eq. 4 map at the encoder output instead);
- ``backward(op, R)``: the relevance of each data input of one node from the relevance of its output
  (the default dispatches to ``rule_<kind>``: conv, linear, bn, act, pass, maxpool, avgpool, mean,
  reshape, add, and the transformer kinds);
- ``keeps(graph)``: forward values the rules read beyond the graph's own needs;
- ``rescale_kinds``: node kinds after which the walker may rescale relevance per image (rule sets that are
  linear in R but not conservative); empty for conservative rules.

The LRP, absLRP and SRD rule sets are siblings under :class:`RuleSet`; none carries another's fields.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .graph import PropGraph, UnsupportedOperation, run_node

Tensor = torch.Tensor


def stabilize(z: Tensor, eps: float, nonneg: bool = False) -> Tensor:
    """z + eps * sign(z) with sign(0) = +1 (as zennit's ``stabilize``); eps = 0 only guards exact zeros.

    ``nonneg``: z is known to be >= 0 (z+ denominators), which saves three elementwise passes."""
    if nonneg:
        return z + eps if eps > 0 else z.clamp_min(torch.finfo(z.dtype).tiny)
    if eps > 0:
        return z + eps * (z.sign() + (z == 0).to(z.dtype))
    return torch.where(z == 0, torch.ones_like(z), z)


@dataclass
class OpContext:
    """What a rule may look at for one node."""

    graph: PropGraph
    node: fx.Node
    kind: str
    inputs: list[Tensor]  # the node's data inputs (activations), in graph.data_inputs order
    env: dict[fx.Node, Any]  # every value of the forward pass still alive (for rules like SRD)
    name: str = ""
    # Relevance a rule assigns to constants rather than to data inputs (absLRP: a ViT's class token and
    # position embedding), as (label, per-image total [B]); the walker records them in the trace.
    sinks: list[tuple[str, Tensor]] = field(default_factory=list)

    @property
    def x(self) -> Tensor:
        return self.inputs[0]

    @property
    def module(self) -> nn.Module | None:
        return self.graph.module.get_submodule(str(self.node.target)) if self.node.op == "call_module" else None

    def rerun(self, *new_inputs: Tensor) -> Tensor:
        """The node's own operation applied to other data inputs (for VJPs of parameter-free ops)."""
        env = dict(self.env)
        for n, v in zip(self.graph.data_inputs[self.node], new_inputs):
            env[n] = v
        for n in self.node.all_input_nodes:
            if n not in env:
                raise UnsupportedOperation(f"{self.name}: an input of this node is no longer available")
        return run_node(self.graph.module, self.node, env, new_inputs[0])


def layer_params(op: OpContext) -> tuple[Tensor, Tensor | None, dict[str, Any] | None]:
    """(weight, bias, conv parameters or None for a dense layer) of a conv / linear node, in the activations' dtype:
    what every rule set's layer rule starts from."""
    m = op.module
    if not isinstance(m, (nn.Conv2d, nn.Linear)):
        raise UnsupportedOperation(f"{op.name}: only nn.Conv2d / nn.Linear modules are supported as layers")
    weight = m.weight if m.weight.dtype == op.x.dtype else m.weight.detach().to(op.x.dtype)
    bias = m.bias.detach().to(op.x.dtype) if m.bias is not None else None
    conv = None
    if isinstance(m, nn.Conv2d):
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise UnsupportedOperation(f"{op.name}: padding {m.padding!r}/{m.padding_mode} is not supported")
        conv = {"stride": m.stride, "padding": m.padding, "dilation": m.dilation, "groups": m.groups}
    return weight, bias, conv


class RuleSet(abc.ABC):
    """The interface every propagation method's rule set implements (see the module docstring)."""

    rescale_kinds: frozenset[str] = frozenset()
    # The walker may drop each forward value once its node is walked; False for rule sets whose rules read
    # values of nodes already walked (SRD divides a conv's relevance by its folded BN's output).
    releases_values: bool = True

    @abc.abstractmethod
    def start_relevance(self, logits: Tensor, targets: Tensor) -> Tensor:
        """[B, classes] relevance placed at the output for these targets."""

    def seeds(self, graph: PropGraph, env: dict[fx.Node, Any], logits: Tensor,
              targets: Tensor) -> dict[fx.Node, Tensor]:
        """node -> relevance of its value where the walk starts (after one forward, ``env``).  Default: the
        start relevance at the logits."""
        return {graph.output: self.start_relevance(logits, targets).to(logits.dtype)}

    def keeps(self, graph: PropGraph) -> frozenset[fx.Node]:
        """Forward values this rule set reads beyond ``graph.keep``; the forward keeps them alive and out of
        in-place activations.  Default: none."""
        return frozenset()

    def backward(self, op: OpContext, R: Tensor) -> list[Tensor | None]:
        """Relevance of each data input of ``op.node`` (None: none reaches it)."""
        handler = getattr(self, f"rule_{op.kind}", None)
        if handler is None:
            raise UnsupportedOperation(f"no rule for {op.kind} nodes ({op.name})")
        return handler(op, R)
