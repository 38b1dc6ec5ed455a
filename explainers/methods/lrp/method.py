"""The ``lrp`` and ``resnet-lrp`` methods: the walker with the LRP rule set their options describe.

``resnet-lrp`` (Otsuki et al., ECCV'24) is the paper's configuration as the default (z+ everywhere, BN pass,
Ratio-Based Relevance Splitting including identity skips, start = predicted probability, 8 heat-quantisation
bins); every option stays switchable so Table 2 (i)-(iv) and Table 3 can be reproduced: (i) residual=symmetric,
include_identity=False; (ii) symmetric, True; (iii) ratio, False; (iv) ratio, True; Table 3: bins 0 vs 8.
``preset=released-code`` is the authors' code instead (:mod:`.released`).
"""

from __future__ import annotations

from typing import Any

import torch

from ...errors import InvalidOption
from ...guard import model_guard
from ...models import ModelBundle
from ...propagation import propagate
from ...propagation.rules import RESIDUAL_RULES, LRPRules
from ...registry import MethodOutput, MethodSpec, register
from ...render import postprocess
from .composites import make_composite
from .options import FIXED_BY_RELEASED_CODE, LRP_OPTIONS, RESNET_LRP_OPTIONS
from .released import released_code_rules
from .rules import RuleParams


def rule_params(bundle: ModelBundle | None, opts: dict[str, Any]) -> RuleParams:
    """The rules' numbers from the options; z^B's bounds are the pixel range [0, 1] after normalisation."""
    low = high = None
    if bundle is not None:
        mean, std = torch.tensor(bundle.prep.mean), torch.tensor(bundle.prep.std)
        low, high = (0 - mean) / std, (1 - mean) / std
    return RuleParams(eps=float(opts["eps"]), stabilizer=float(opts.get("stabilizer", 1e-9)),
                      gamma=float(opts.get("gamma", 0.25)), low=low, high=high)


def rule_set(bundle: ModelBundle | None, opts: dict[str, Any]) -> LRPRules:
    """The walker's rule set for validated ``lrp`` / ``resnet-lrp`` options."""
    if opts.get("preset", "paper") == "released-code":
        defaults = {o.name: o.default for o in RESNET_LRP_OPTIONS}
        changed = [k for k in FIXED_BY_RELEASED_CODE if k in opts and opts[k] != defaults[k]]
        if changed:
            raise InvalidOption(f"Option {changed[0]!r} applies to preset 'paper' only; preset 'released-code' "
                                "fixes it to the released code's choice.")
        return released_code_rules(opts["residual"], bool(opts["include_identity"]))
    params = rule_params(bundle, opts)
    return LRPRules(layer=make_composite(opts["rule"], params, opts.get("input_rule", "composite")),
                    residual=RESIDUAL_RULES[opts["residual"]](params.stabilizer),
                    include_identity=bool(opts["include_identity"]), bn=opts["bn"], maxpool=opts["maxpool"],
                    stabilizer=params.stabilizer, start=opts["start"])


def _run(bundle: ModelBundle, x: torch.Tensor, targets: torch.Tensor, opts: dict[str, Any]) -> MethodOutput:
    rules = rule_set(bundle, opts)
    with model_guard(bundle, requires_grad=False) as model:
        prop = propagate(model, x, targets, rules, model_name=bundle.label)
    # The map is the channel sum of the input relevance (resnet-lrp paper Sec. 4.4, alpha_R; the released code too).
    attribution = prop.relevance.sum(1)
    return MethodOutput(attribution=attribution, native_resolution=tuple(attribution.shape[-2:]),
                        layers=prop.layers(), trace=prop.traces(),
                        extras={"start": prop.start.detach().cpu().tolist()}, logits=prop.logits)


def _register(mid: str, name: str, options, signed: bool, description: str) -> None:
    register(MethodSpec(id=mid, name=name, family="lrp", fn=_run, options=options,
                        signed=signed, postprocess=postprocess, own_forward=True, description=description))


_register("lrp", "LRP", LRP_OPTIONS, True,
          "Layer-wise Relevance Propagation with a composite of rules (Bach et al. 2015; Montavon et al. 2019), on "
          "our propagation engine; the composites equal zennit's of the same name, the default is EpsilonPlusFlat.")
# z+ maps are non-negative (every contribution is), so resnet-lrp renders with a sequential colormap.
_register("resnet-lrp", "ResNet-LRP", RESNET_LRP_OPTIONS, False,
          "LRP for ResNet (Otsuki et al. 2024): z+ rule, Ratio-Based Relevance Splitting at skip junctions, start "
          "at the predicted probability, Heat Quantization (8 bins); preset=released-code reproduces the "
          "authors' code.")
