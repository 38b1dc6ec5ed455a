"""LRP (composites of layer rules) and LRP for ResNet (Otsuki et al., ECCV'24) over one engine.

Both methods are the propagation engine (explainers/propagation) with different rule sets:
``resnet-lrp`` is the paper's configuration as a preset (z+ everywhere, BN pass, Ratio-Based
Relevance Splitting including identity skips, start = predicted probability, 8 heat-quantisation
bins); every option stays switchable so Table 2 (i)-(iv) and Table 3 can be reproduced:
(i) residual=symmetric, include_identity=False; (ii) symmetric, True; (iii) ratio, False;
(iv) ratio, True; Table 3: bins 0 vs 8.
"""

from __future__ import annotations

from typing import Any

import torch

from ..guard import model_guard
from ..models import ModelBundle
from ..propagation import COMPOSITES, INPUT_RULES, RESIDUAL_RULES, LRPRules, make_composite, propagate
from ..registry import MethodOutput, MethodSpec, Option, register
from ..render import postprocess


def rule_set(bundle: ModelBundle | None, opts: dict[str, Any]) -> LRPRules:
    """The engine's rule set for validated ``lrp``/``resnet-lrp`` options."""
    stabilizer = float(opts.get("stabilizer", 1e-9))
    bounds = None
    if bundle is not None:
        mean = torch.tensor(bundle.prep.mean)
        std = torch.tensor(bundle.prep.std)
        bounds = ((0 - mean) / std, (1 - mean) / std)  # pixel range [0, 1] after normalisation (for z^B)
    composite = make_composite(opts["rule"], eps=float(opts["eps"]), stabilizer=stabilizer,
                               input_rule=opts.get("input_rule", "composite"), bounds=bounds)
    return LRPRules(layer=composite, residual=RESIDUAL_RULES[opts["residual"]](stabilizer),
                   include_identity=bool(opts["include_identity"]), bn=opts["bn"], maxpool=opts["maxpool"],
                   stabilizer=stabilizer, start=opts["start"])


def _run(bundle: ModelBundle, x: torch.Tensor, targets: torch.Tensor, opts: dict[str, Any]) -> MethodOutput:
    rules = rule_set(bundle, opts)
    with model_guard(bundle, requires_grad=False) as model:
        prop = propagate(model, x, targets, rules, model_name=bundle.label)
    # The map is the channel sum of the input relevance (resnet-lrp paper Sec. 4.4, alpha_R).
    attribution = prop.relevance.sum(1)
    return MethodOutput(attribution=attribution, native_resolution=tuple(attribution.shape[-2:]),
                        layers=prop.layers(), trace=prop.traces(),
                        extras={"start": prop.start.detach().cpu().tolist()}, logits=prop.logits)


def _options(rule: str, bn: str, residual: str, include_identity: bool, start: str, maxpool: str,
             bins: int) -> tuple[Option, ...]:
    return (
        Option("rule", "choice", rule, choices=COMPOSITES,
               help="Composite of layer rules: epsilon, z+ (alpha1-beta0), alpha2-beta1, zennit's "
                    "EpsilonPlusFlat, or the resnet-lrp paper's mixture (epsilon after the 8th block, z+ before)."),
        Option("input_rule", "choice", "composite", choices=INPUT_RULES,
               help="Rule for the first (pixel) layer; 'composite' keeps the composite's choice."),
        Option("bn", "choice", bn, choices=("pass", "merge"),
               help="BatchNorm: pass relevance unchanged, or merge into the preceding conv (as zennit)."),
        Option("residual", "choice", residual, choices=tuple(RESIDUAL_RULES),
               help="Residual add: signed proportional split (plain LRP / zennit), symmetric R/2 (Eq. 4), "
                    "or ratio of |h_s| and |h_m| (Eq. 5)."),
        Option("include_identity", "bool", include_identity,
               help="Split relevance into identity skips too; off sends it all through the main branch "
                    "(projection skips always split)."),
        Option("start", "choice", start, choices=("probability", "logit", "one"),
               help="Relevance at the target output: softmax probability (paper), logit, or 1."),
        Option("maxpool", "choice", maxpool, choices=("winner", "avg"),
               help="Max pool: winner-take-all, or the released resnet-lrp code's 2x2 average pool."),
        Option("eps", "float", 1e-6, min=0.0, max=10.0, step=1e-6, help="Epsilon of the epsilon rule."),
        Option("bins", "int", bins, min=0, max=64, display=True,
               help="Heat Quantization levels (paper Eq. 8; 0 = off). Display only: no recomputation."),
    )


register(MethodSpec(
    id="lrp", name="LRP", family="lrp", fn=_run,
    options=_options("epsilon-plus-flat", "merge", "proportional", True, "logit", "winner", 0),
    signed=True, postprocess=postprocess, own_forward=True,
    description="Layer-wise Relevance Propagation with a composite of rules (Bach et al. 2015; "
                "Montavon et al. 2019), on our propagation engine; defaults match zennit's EpsilonPlusFlat.",
))

register(MethodSpec(
    id="resnet-lrp", name="ResNet-LRP", family="lrp", fn=_run,
    options=_options("zplus", "pass", "ratio", True, "probability", "winner", 8),
    # z+ maps are non-negative (every contribution is), so the preset renders with a sequential colormap.
    signed=False, postprocess=postprocess, own_forward=True,
    description="LRP for ResNet (Otsuki et al. 2024): z+ rule, Ratio-Based Relevance Splitting at skip "
                "junctions, start at the predicted probability, Heat Quantization (8 bins).",
))
