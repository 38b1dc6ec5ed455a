"""absLRP's option values and the option panel the app builds (declared once, read by the method spec)."""

from __future__ import annotations

from ...registry import Option

PRESETS = ("paper", "released-code")
CONTRASTS = ("abslrp", "none", "clrp")
RENORMALISE = ("sign", "off")

OPTIONS = (
    Option("preset", "choice", "paper", choices=PRESETS,
           help="'paper': abslrp-gae Eq. 12 with two-step BatchNorm and residual shares kept (the rules below); "
                "'released-code': what the authors' released code computes (one generic step per layer, "
                "BatchNorm as one layer, every layer input and each residual branch rescaled to unit mass, "
                "target pass minus other-classes pass). CNNs only."),
    Option("contrast", "choice", "abslrp", choices=CONTRASTS,
           help="Start relevance: 'abslrp' = 1 at the target and -1/N at the other N classes, one signed pass "
                "(paper; with preset=released-code: the code's two passes, target map minus the map of the "
                "other classes, each of unit mass); 'none' = the target alone; 'clrp' = target map minus the map "
                "of all other classes, each scaled to unit mass (contrastive LRP)."),
    Option("renormalise", "choice", "sign", choices=RENORMALISE,
           help="preset=paper only. 'sign': every layer keeps the mass of the positive and of the negative "
                "relevance (needed for contrastive maps); 'off': Eq. 12 exactly as printed (not conservative; "
                "the map is then scaled to max |value| 1)."),
    Option("eps", "float", 1e-9, min=0.0, max=1.0, step=1e-9,
           help="Stabiliser of |z| + eps in the rule's denominator (Algorithm 1 uses 1e-9)."),
    Option("signed", "bool", False, display=True,
           help="Show the signed map (negative = evidence for other classes) instead of its positive part. "
                "Display only: no recomputation."),
)
