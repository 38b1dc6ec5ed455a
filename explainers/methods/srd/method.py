"""SRD, Sharing Ratio Decomposition (Han, Kim, Kwak, ICLR 2024), as an ``explain()`` method.

The computation lives in this package (``rules``: the rule set of the one walker; ``stencils``; ``explore``:
maps at any layer, ERFs, sub-concepts; ``index``: nearest PFVs).  Here: options and the
map at the chosen resolution, upsampled bilinearly to the input size for display; the raw grid is kept in
``extras['grid']`` and ``native_resolution``.
"""

from __future__ import annotations

from typing import Any

import torch

from ...models import ModelBundle
from ...registry import MethodOutput, MethodSpec, Option, register
from . import explore as srd
from .rules import BIAS_SHARES, STARTS


def _run(bundle: ModelBundle, x: torch.Tensor, targets: torch.Tensor, opts: dict[str, Any]) -> MethodOutput:
    layer = opts["layer"].strip() or opts["resolution"]
    res = srd.srd_maps(bundle, x, targets, start=opts["start"], bias_share=opts["bias_share"], layers=[layer])
    grid = res.maps[layer]
    size = (x.shape[-2], x.shape[-1])
    attribution = res.upsampled(layer, size)
    B = x.shape[0]
    prop = res.propagation  # every node's relevance total, computed by the walker
    layers, traces = prop.layers(), prop.traces()
    return MethodOutput(
        attribution=attribution, native_resolution=(int(grid.shape[-2]), int(grid.shape[-1])), layers=layers,
        trace=traces, logits=res.logits,
        extras={"grid": [grid[b].detach().float().cpu() for b in range(B)], "layer": res.layer_names[layer],
                "start_total": res.start_total.detach().double().cpu().tolist()},
    )


register(MethodSpec(
    id="srd", name="SRD", family="srd", fn=_run,
    options=(
        Option("resolution", "choice", "input", choices=srd.RESOLUTIONS,
               help="Where the map is read: input (pixels, the RGB vector as the PFV), high (the stride-8 stage, "
                    "28x28 at 224 px) or low (the encoder output, e.g. 7x7). Paper Sec. 4."),
        Option("layer", "str", "",
               help="A non-linear layer by name (see the SRD Explorer); overrides resolution when given."),
        Option("start", "choice", "contrastive", choices=STARTS,
               help="Eq. 4 start: contrastive = max(Phi_c - mean over classes, 0) (paper); spatial-mean = Phi_c "
                    "minus its spatial mean (released code); plain = Phi_c (Grad-CAM weights x activations)."),
        Option("bias_share", "choice", "norm", choices=BIAS_SHARES,
               help="How a conv's bias is shared among the PFVs of its receptive field: by their norms (paper "
                    "App. B Eq. 11) or by the norms of their weighted contributions (released code)."),
    ),
    signed=True, own_forward=True,
    description="Sharing Ratio Decomposition (Han et al., ICLR 2024): relevance shared between pointwise feature "
                "vectors by their sharing ratios, from a Grad-CAM-like start at the encoder output down to any "
                "layer or the pixels.",
))
