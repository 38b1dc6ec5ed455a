"""absLRP (Vukadin et al., "Relative Absolute Magnitude LRP", abslrp-gae Sec. 3.1) on the propagation engine.

The rules live in :mod:`explainers.propagation.abslrp`; this module registers the method, runs the
contrastive variants and defines what the map shows.  The raw map is the signed channel sum of the input
relevance (with ``renormalise="sign"`` it carries the start's total; with ``"off"`` it is scaled to max
|value| 1) or, for ``contrast="clrp"``, the difference of two unit-mass maps.  The display shows its
positive part unless the ``signed`` display option is on (the paper's and GAE's view: relevance for the
target; negative values are evidence for the other classes).
"""

from __future__ import annotations

from typing import Any

import torch

from ..guard import model_guard
from ..models import ModelBundle
from ..propagation import propagate
from ..propagation.abslrp import CONTRASTS, RENORMALISE, AbsLRPRules
from ..registry import CNN_FAMILIES, VIT_FAMILIES, MethodOutput, MethodSpec, Option, register


def _unit_mass(r: torch.Tensor) -> torch.Tensor:
    """Scale each image's map to L1 mass 1 (cLRP's normalisation); an all-zero map stays zero."""
    mass = r.flatten(1).abs().sum(1).clamp_min(torch.finfo(r.dtype).tiny)
    return r / mass.view(-1, *([1] * (r.dim() - 1)))


def _unit_peak(r: torch.Tensor) -> torch.Tensor:
    """Scale each image's map to max |value| 1 (the released code's MAX_TO_ONE).  Eq. 12 is not conservative, so
    the map's absolute scale carries no meaning and can leave float32's range; the engine propagates it in a
    rescaled unit (``Propagation.log_scale``) and the true totals stay in the trace."""
    peak = r.flatten(1).abs().amax(1).clamp_min(torch.finfo(r.dtype).tiny)
    return r / peak.view(-1, *([1] * (r.dim() - 1)))


def _run(bundle: ModelBundle, x: torch.Tensor, targets: torch.Tensor, opts: dict[str, Any]) -> MethodOutput:
    rules = AbsLRPRules(eps=float(opts["eps"]), contrast=opts["contrast"], renormalise=opts["renormalise"])
    n = x.shape[0]
    with model_guard(bundle, requires_grad=False) as model:
        if opts["contrast"] == "clrp":
            # Target map and dual map in one doubled batch (AbsLRPRules.start_relevance), then
            # R_t / |R_t| - R_d / |R_d| as contrastive LRP (Gu et al. 2019) does.
            prop = propagate(model, torch.cat([x, x]), torch.cat([targets, targets]), rules, model_name=bundle.label)
            both = prop.relevance.sum(1)
            attribution = _unit_mass(both[:n]) - _unit_mass(both[n:])
        else:
            prop = propagate(model, x, targets, rules, model_name=bundle.label)
            attribution = prop.relevance.sum(1)  # signed channel sum
            if opts["renormalise"] == "off":
                attribution = _unit_peak(attribution)
    # For clrp the layers and trace are those of the target pass (the first n rows).
    return MethodOutput(attribution=attribution, native_resolution=tuple(attribution.shape[-2:]),
                        layers=prop.layers()[:n], trace=prop.traces()[:n],
                        extras={"contrast": opts["contrast"]}, logits=prop.logits[:n])


def postprocess(attribution: torch.Tensor, display: dict[str, Any]) -> torch.Tensor:
    """Display-only: the positive part of the map (default) or the signed map; never recomputes relevance."""
    return attribution if display.get("signed") else attribution.clamp(min=0)


register(MethodSpec(
    id="abslrp", name="absLRP", family="lrp", fn=_run,
    options=(
        Option("contrast", "choice", "abslrp", choices=CONTRASTS,
               help="Start relevance: 'abslrp' = 1 at the target and -1/N at the other N classes, one signed pass "
                    "(paper); 'none' = the target alone; 'clrp' = target map minus the map of all other classes, "
                    "each scaled to unit mass (contrastive LRP)."),
        Option("renormalise", "choice", "sign", choices=RENORMALISE,
               help="'sign': every layer keeps the mass of the positive and of the negative relevance (the authors' "
                    "code; needed for contrastive maps); 'off': Eq. 12 exactly as printed (not conservative; the "
                    "map is then scaled to max |value| 1)."),
        Option("eps", "float", 1e-9, min=0.0, max=1.0, step=1e-9,
               help="Stabiliser of |z| + eps in the rule's denominator (Algorithm 1 uses 1e-9)."),
        Option("signed", "bool", False, display=True,
               help="Show the signed map (negative = evidence for other classes) instead of its positive part. "
                    "Display only: no recomputation."),
    ),
    model_families=CNN_FAMILIES | VIT_FAMILIES, signed=True, postprocess=postprocess, own_forward=True,
    description="Relative Absolute Magnitude LRP (Vukadin et al. 2024): positive contributions over the absolute "
                "pre-activation (Eq. 12), contrastive start; CNNs and Vision Transformers, pixel-level maps.",
))
