"""``resnet-lrp preset=released-code``: the rules of the authors' LRP-for-ResNet code (keio-smilab24/LRP-for-ResNet,
``src/lrp.py`` + ``src/lrp_layers.py``), as docs/notes/released-code-resnet-lrp-zennit.md records them:

- start: the softmax probability of the top-1 class (``relevance = softmax(logits)`` with ``topk=1``);
- every conv and the linear layer: z+ with W clamped >= 0 and a plain additive eps = 1e-5 (``z = layer(a) + eps``);
  the linear layer's bias is zeroed, a conv keeps its (unclamped) bias (torchvision ResNets have none);
- the first conv sees ``activations[0] = ones``: z = sum W+ + eps over the (zero-padded) window, a flat rule on W+;
- BatchNorm, ReLU and dropout pass relevance unchanged (BN is not merged);
- max pool is replaced by ``AvgPool2d(2)`` under the z-rule, adaptive average pooling is the z-rule (both + eps);
- residual blocks: ``--skip-connection-prop-type`` (:data:`SKIP_TYPES`) maps onto our ``residual`` x
  ``include_identity``; the released ratio |h_m| / (|h_s| + |h_m|) for the main branch is our Ratio split;
- the map is the channel sum of the input relevance.

Relevance it does not conserve, by design: the eps of every layer absorbs R * eps / (z + eps), and the 2x2 average
pool drops the relevance of pooled outputs whose 2x2 window is all zero (the max pool's 3x3 window saw a positive
value there, so the block above gave them relevance).  tests/test_resnet_lrp_reference.py accounts for both.
"""

from __future__ import annotations

from ...propagation.rules import RESIDUAL_RULES, LRPRules
from .composites import make_composite
from .rules import RuleParams

EPS = 1e-5  # the released code's eps for every layer
# --skip-connection-prop-type -> (residual, include_identity)
SKIP_TYPES: dict[str, tuple[str, bool]] = {
    "latest": ("ratio", False),  # the code's default: ratio at projection skips, identity skips get 0
    "simple": ("symmetric", False),  # 0.5 at projection skips, identity skips get 0
    "flows_skip": ("ratio", True),  # ratio at every skip (the README's "ours", Table 2 (iv))
    "flows_skip_simple": ("symmetric", True),  # 0.5 at every skip
}


def released_code_rules(residual: str = "ratio", include_identity: bool = True, eps: float = EPS) -> LRPRules:
    """The released code's rule set (module docstring); ``eps`` = 0 switches its stabiliser off (tests)."""
    return LRPRules(layer=make_composite("released-code", RuleParams(eps=eps, stabilizer=eps)),
                    residual=RESIDUAL_RULES[residual](eps), include_identity=include_identity, bn="pass",
                    maxpool="avg", stabilizer=eps, start="probability")
