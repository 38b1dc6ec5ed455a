"""Composites: which layer rule each conv / linear node gets (zennit's notion, over our graph)."""

from __future__ import annotations

import torch
import torch.fx as fx

from .graph import PropGraph
from .rules import AlphaBeta, Composite, Epsilon, Flat, LayerRule, ZBox, ZPlus

COMPOSITES = ("epsilon", "zplus", "alpha2beta1", "epsilon-plus-flat", "mixture")
INPUT_RULES = ("composite", "flat", "zbox", "zplus", "epsilon")


def make_composite(name: str, eps: float = 1e-6, stabilizer: float = 1e-9, input_rule: str = "composite",
                   bounds: tuple[torch.Tensor, torch.Tensor] | None = None, mixture_blocks: int = 8) -> Composite:
    """Build the per-node rule picker.

    - ``epsilon`` / ``zplus`` / ``alpha2beta1``: one rule for every layer.
    - ``epsilon-plus-flat``: flat at the first layer, z+ for convs, epsilon for dense layers: zennit's
      ``EpsilonPlusFlat`` (its z+ keeps the positive bias in the denominator, so ours does here too).
    - ``mixture``: resnet-lrp paper App. D.3: epsilon for layers after the 8th bottleneck block, alpha1-beta0
      (= z+) before.
    ``input_rule`` overrides the rule of the first layer (``flat`` or ``zbox`` for pixels).
    """
    eps_rule = Epsilon(eps)
    zplus = ZPlus(stabilizer, bias=False)
    zplus_bias = ZPlus(stabilizer, bias=True, fallback=False)  # exactly zennit's ZPlus
    ab = AlphaBeta(2.0, 1.0, stabilizer)
    flat = Flat(max(stabilizer, 1e-12))
    first_rules: dict[str, LayerRule] = {"flat": flat, "zplus": zplus, "epsilon": eps_rule}
    if bounds is not None:
        first_rules["zbox"] = ZBox(bounds[0], bounds[1], max(stabilizer, 1e-12))
    elif input_rule == "zbox":
        first_rules["zbox"] = ZBox(stabilizer=max(stabilizer, 1e-12))

    def base(graph: PropGraph, node: fx.Node) -> LayerRule:
        dense = graph.kind[node] == "linear"
        if name == "epsilon":
            return eps_rule
        if name == "zplus":
            return zplus
        if name == "alpha2beta1":
            return ab
        if name == "epsilon-plus-flat":
            if node is graph.first_layer:
                return flat
            return eps_rule if dense else zplus_bias
        if name == "mixture":
            return eps_rule if graph.blocks_before(node) >= mixture_blocks else zplus
        raise ValueError(f"unknown composite {name!r}")

    def pick(graph: PropGraph, node: fx.Node) -> LayerRule:
        if input_rule != "composite" and node is graph.first_layer:
            return first_rules[input_rule]
        return base(graph, node)

    return pick
