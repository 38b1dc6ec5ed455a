"""Composites as data: which rule (a name in :data:`~.rules.RULES`) each conv / dense layer gets, by position.

A composite maps positions to rule names; a layer takes the rule of the first position that applies to it,
in the order of :data:`POSITIONS`:

- ``first``: the network's first conv / dense layer (the pixel layer; zennit's ``SpecialFirstLayerMapComposite``
  picks the first ``Linear``-type module, which is the same layer in every model we support);
- ``late``: a layer after the 8th residual block (the resnet-lrp paper's mixture, App. D.3);
- ``conv`` / ``dense``: every other conv / linear layer.

A new composite is a new row here, nothing else.
"""

from __future__ import annotations

import torch.fx as fx

from ...propagation.graph import PropGraph
from ...propagation.rules import Composite, LayerRule
from .rules import RULES, RuleParams

POSITIONS = ("first", "late", "conv", "dense")
MIXTURE_BLOCKS = 8  # resnet-lrp App. D.3: epsilon for the layers after the 8th bottleneck block

COMPOSITES: dict[str, dict[str, str]] = {
    "epsilon": {"conv": "epsilon", "dense": "epsilon"},
    "zplus": {"conv": "zplus", "dense": "zplus"},  # the resnet-lrp paper: z+ everywhere, biases ignored
    "alpha2beta1": {"conv": "alpha2beta1", "dense": "epsilon"},  # = zennit EpsilonAlpha2Beta1
    "epsilon-plus": {"conv": "zplus-bias", "dense": "epsilon"},  # = zennit EpsilonPlus
    "epsilon-plus-flat": {"first": "flat", "conv": "zplus-bias", "dense": "epsilon"},  # = zennit EpsilonPlusFlat
    "epsilon-alpha2beta1-flat": {"first": "flat", "conv": "alpha2beta1", "dense": "epsilon"},  # = zennit's
    "epsilon-gamma-box": {"first": "zbox", "conv": "gamma", "dense": "epsilon"},  # = zennit EpsilonGammaBox
    "mixture": {"late": "epsilon", "conv": "zplus", "dense": "zplus"},  # resnet-lrp App. D.3
    # the released LRP-for-ResNet code (resnet-lrp preset=released-code; docs/notes/released-code-resnet-lrp-zennit.md)
    "released-code": {"first": "released-ones", "conv": "released", "dense": "released-dense"},
}
INPUT_RULES = ("composite", "flat", "zbox", "zplus", "epsilon", "wsquare")


def positions(graph: PropGraph, node: fx.Node) -> tuple[str, ...]:
    """The positions of a conv / linear node, most specific first."""
    out = ["first"] if node is graph.first_layer else []
    if graph.blocks_before(node) >= MIXTURE_BLOCKS:
        out.append("late")
    out.append("dense" if graph.kind[node] == "linear" else "conv")
    return tuple(out)


def make_composite(name: str | dict[str, str], params: RuleParams | None = None,
                   input_rule: str = "composite") -> Composite:
    """The per-node rule picker for composite ``name`` (or a table of the same form); ``input_rule`` overrides
    the first layer's rule."""
    params = params or RuleParams()
    table = dict(COMPOSITES[name] if isinstance(name, str) else name)
    if input_rule != "composite":
        table["first"] = input_rule
    rules: dict[str, LayerRule] = {pos: RULES[rule](params) for pos, rule in table.items()}

    def pick(graph: PropGraph, node: fx.Node) -> LayerRule:
        return next(rules[pos] for pos in positions(graph, node) if pos in rules)

    return pick
