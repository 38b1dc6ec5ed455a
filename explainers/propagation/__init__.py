"""Backward relevance propagation: one engine over a traced graph, rules as strategies.

Used by ``lrp`` and ``resnet-lrp`` (explainers/methods/lrp/), absLRP and SRD.  How to add a method:

- subclass :class:`RuleSet` (``ruleset.py``, the walker's interface) and implement ``rule_<kind>``
  for the node kinds whose rule differs
  (kinds: conv, linear, bn, act, pass, maxpool, avgpool, mean, reshape, add); each gets an
  :class:`OpContext` (node, its data inputs, ``env`` with the forward values) and the relevance of the
  node's output, and returns the relevance of each data input;
- conv/linear rules are :class:`LayerRule` objects; a :class:`ModifiedRule` is any rule written as groups of
  (input modifier, parameter modifier) :class:`Term` s, as zennit writes them; ``LRPRules.layer_context``
  gives BN-merged parameters;
- BN as affine steps: :func:`~explainers.propagation.graph.batch_norm_params` gives (scale, shift) for
  module and functional BN;
- a custom start (absLRP's contrastive 1 / -1/N) is ``propagate(..., start=tensor[B, classes])``;
- rules that read values other than a node's own inputs (SRD's pre-activation PFVs) call
  ``propagate(..., keep_activations=True)``: the forward then keeps every value in ``env``.
"""

from .engine import BlockShare, NodeTotal, Propagation, PropagationTrace, forward, propagate
from .graph import PropGraph, Residual, UnsupportedOperation, build_graph
from .rules import (
    RESIDUAL_RULES,
    Group,
    LayerContext,
    LayerRule,
    LRPRules,
    Mod,
    ModifiedRule,
    Proportional,
    Ratio,
    ResidualContext,
    ResidualRule,
    Symmetric,
    Term,
    start_relevance,
)
from .ruleset import OpContext, RuleSet, stabilize

__all__ = [
    "RESIDUAL_RULES", "BlockShare", "Group", "LayerContext", "LayerRule", "LRPRules", "Mod", "ModifiedRule",
    "NodeTotal", "OpContext", "PropGraph", "Propagation", "PropagationTrace", "Proportional", "Ratio", "Residual",
    "ResidualContext", "ResidualRule", "RuleSet", "Symmetric", "Term", "UnsupportedOperation", "build_graph",
    "forward", "propagate", "stabilize", "start_relevance",
]
