"""The ``abslrp`` method: runs the rule set the ``preset`` names, the contrastive variants, and defines what
the map shows.

- ``preset="paper"`` (:class:`~.rules.AbsLRPRules`): the raw map is the signed channel sum of the input
  relevance (with ``renormalise="sign"`` it carries the start's total; with ``"off"`` it is scaled to max
  |value| 1) or, for ``contrast="clrp"``, the difference of two unit-mass maps.
- ``preset="released-code"`` (:class:`~.released.ReleasedCodeRules`): the released code's map, target pass
  minus other-classes pass (each of unit mass), channel sum scaled to max |value| 1 (its ``visualize_batch``).

The display shows the positive part unless the ``signed`` display option is on (the paper's and GAE's view:
relevance for the target; negative values are evidence for the other classes).
"""

from __future__ import annotations

from typing import Any

import torch

from ...capabilities import ABSLRP, capabilities_of
from ...errors import InvalidOption, UnsupportedModel
from ...guard import model_guard
from ...models import ModelBundle
from ...propagation import propagate
from ...registry import MethodOutput, MethodSpec, register
from .options import OPTIONS
from .released import ReleasedCodeRules
from .rules import AbsLRPRules


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


def _rules(bundle: ModelBundle, opts: dict[str, Any]) -> AbsLRPRules | ReleasedCodeRules:
    if opts["preset"] == "paper":
        return AbsLRPRules(eps=float(opts["eps"]), contrast=opts["contrast"], renormalise=opts["renormalise"])
    if capabilities_of(bundle).tokens:
        raise UnsupportedModel("absLRP preset 'released-code' reproduces the authors' CNN code only; "
                               "use preset 'paper' for Vision Transformers.")
    if opts["renormalise"] != "sign":
        raise InvalidOption("Option 'renormalise' applies to preset 'paper' only; the released code rescales "
                            "every layer input to unit mass.")
    return ReleasedCodeRules(eps=float(opts["eps"]), contrast=opts["contrast"])


def _run(bundle: ModelBundle, x: torch.Tensor, targets: torch.Tensor, opts: dict[str, Any]) -> MethodOutput:
    rules = _rules(bundle, opts)
    released = isinstance(rules, ReleasedCodeRules)
    n = x.shape[0]
    with model_guard(bundle, requires_grad=False) as model:
        if opts["contrast"] == "clrp" or (released and rules.two_passes):
            # Target map and dual map in one doubled batch (the rule sets' start_relevance), then
            # R_t / |R_t| - R_d / |R_d| as contrastive LRP (Gu et al. 2019) and the released code do.
            prop = propagate(model, torch.cat([x, x]), torch.cat([targets, targets]), rules, model_name=bundle.label)
            if released:  # relevancy_methods.py: difference of the C x H x W maps, then visualize_batch's sum
                both = _unit_mass(prop.relevance)
                attribution = (both[:n] - both[n:]).sum(1)
            else:
                both = prop.relevance.sum(1)
                attribution = _unit_mass(both[:n]) - _unit_mass(both[n:])
        else:
            prop = propagate(model, x, targets, rules, model_name=bundle.label)
            attribution = prop.relevance.sum(1)  # signed channel sum
        if released or opts["renormalise"] == "off":
            attribution = _unit_peak(attribution)
    # With two passes the layers and trace are those of the target pass (the first n rows).
    return MethodOutput(attribution=attribution, native_resolution=tuple(attribution.shape[-2:]),
                        layers=prop.layers()[:n], trace=prop.traces()[:n],
                        extras={"contrast": opts["contrast"], "preset": opts["preset"]}, logits=prop.logits[:n])


def postprocess(attribution: torch.Tensor, display: dict[str, Any]) -> torch.Tensor:
    """Display-only: the positive part of the map (default) or the signed map; never recomputes relevance."""
    return attribution if display.get("signed") else attribution.clamp(min=0)


register(MethodSpec(
    id="abslrp", name="absLRP", family="lrp", fn=_run, options=OPTIONS,
    needs=ABSLRP, signed=True, postprocess=postprocess, own_forward=True,
    display_signed=lambda display: bool(display.get("signed")),
    description="Relative Absolute Magnitude LRP (Vukadin et al. 2024): positive contributions over the absolute "
                "pre-activation (Eq. 12), contrastive start; CNNs and Vision Transformers, pixel-level maps. "
                "preset=released-code reproduces the authors' code.",
))
