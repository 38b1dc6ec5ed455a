"""The option panels of ``lrp`` and ``resnet-lrp`` (declared once, read by the method specs)."""

from __future__ import annotations

from ...propagation.rules import RESIDUAL_RULES
from ...registry import Option
from .composites import COMPOSITES, INPUT_RULES

PRESETS = ("paper", "released-code")
# Options a preset other than 'paper' fixes (each must stay at its default there).
FIXED_BY_RELEASED_CODE = ("rule", "input_rule", "bn", "start", "maxpool", "eps", "stabilizer", "gamma")


def options(rule: str, bn: str, residual: str, start: str, stabilizer: float, bins: int,
            preset: bool = False) -> tuple[Option, ...]:
    """The options of one method with its defaults (``preset``: add the resnet-lrp preset choice)."""
    head = (Option(
        "preset", "choice", "paper", choices=PRESETS,
        help="'paper': the options below (the resnet-lrp paper by default); 'released-code': the authors' "
             "LRP-for-ResNet code (z+ with W+ and a plain eps 1e-5, first conv on an all-ones input, BN passed, "
             "max pool as a 2x2 average pool, softmax start); only 'residual' and 'include_identity' stay free "
             "(its skip types: latest = ratio/off, simple = symmetric/off, flows_skip = ratio/on, "
             "flows_skip_simple = symmetric/on)."),) if preset else ()
    return head + (
        Option("rule", "choice", rule, choices=tuple(COMPOSITES),
               help="Composite of layer rules: epsilon; z+ (alpha1-beta0); zennit's EpsilonAlpha2Beta1 "
                    "(alpha2beta1), EpsilonPlus, EpsilonPlusFlat, EpsilonAlpha2Beta1Flat, EpsilonGammaBox; the "
                    "resnet-lrp paper's mixture (epsilon after the 8th block, z+ before); the released resnet-lrp "
                    "code's z+ rules."),
        Option("input_rule", "choice", "composite", choices=INPUT_RULES,
               help="Rule for the first (pixel) layer; 'composite' keeps the composite's choice."),
        Option("bn", "choice", bn, choices=("pass", "merge"),
               help="BatchNorm: pass relevance unchanged, or merge into the preceding conv (as zennit)."),
        Option("residual", "choice", residual, choices=tuple(RESIDUAL_RULES),
               help="Residual add: signed proportional split (plain LRP / zennit), symmetric R/2 (Eq. 4), "
                    "or ratio of |h_s| and |h_m| (Eq. 5)."),
        Option("include_identity", "bool", True,
               help="Split relevance into identity skips too; off sends it all through the main branch "
                    "(projection skips always split)."),
        Option("start", "choice", start, choices=("probability", "logit", "one"),
               help="Relevance at the target output: softmax probability (paper), logit, or 1."),
        Option("maxpool", "choice", "winner", choices=("winner", "avg"),
               help="Max pool: winner-take-all, or the released resnet-lrp code's 2x2 average pool."),
        Option("eps", "float", 1e-6, min=0.0, max=10.0, step=1e-6, help="Epsilon of the epsilon rule."),
        Option("stabilizer", "float", stabilizer, min=0.0, max=1.0, step=1e-9,
               help="Stabiliser of every other rule's denominator (z+, alpha-beta, gamma, flat, pools, sums); "
                    "zennit uses 1e-6."),
        Option("gamma", "float", 0.25, min=0.0, max=10.0, step=0.05, help="Gamma of the gamma rule."),
        Option("bins", "int", bins, min=0, max=64, display=True,
               help="Heat Quantization levels (paper Eq. 8; 0 = off). Display only: no recomputation."),
    )


LRP_OPTIONS = options("epsilon-plus-flat", "merge", "proportional", "logit", 1e-6, 0)
RESNET_LRP_OPTIONS = options("zplus", "pass", "ratio", "probability", 1e-9, 8, preset=True)
