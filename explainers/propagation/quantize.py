"""Heat Quantization (resnet-lrp paper, Eq. 8), applied at display time to the raw channel-summed map."""

from __future__ import annotations

import torch


def heat_quantize(attribution: torch.Tensor, bins: int) -> torch.Tensor:
    """Quantise a map to exactly ``bins`` levels (fewer only when the map has fewer distinct values).

    Otsuki et al., Eq. 8: Delta = (max - min) / Q, A_q = min + floor((A - min) / Delta) * Delta
    (the paper prints "... floor(.) Q"; the factor must be Delta for the levels to lie in the map's
    range).  The maximum itself would land in an extra level Q, so it is kept in the top bin
    (index Q - 1): exactly Q levels, monotone in the raw map.

    The authors' released code differs: it floors on ``np.linspace(min, max, Q)``, i.e. with
    Delta = (max - min) / (Q - 1), so only Q - 1 steps and the top level holds only the maximum
    pixel(s).  We implement the paper.
    """
    if bins <= 0:
        return attribution
    a = attribution
    lo, hi = a.amin(), a.amax()
    if not bool(hi > lo):
        return a.clone()
    delta = (hi - lo) / bins
    # Paper Eq. 8 (resnet-lrp), with the top bin closed so that max maps to bin Q-1.
    index = torch.floor((a - lo) / delta).clamp(0, bins - 1)
    return lo + index * delta


def postprocess(attribution: torch.Tensor, display: dict) -> torch.Tensor:
    """``MethodSpec.postprocess`` for the LRP methods: heat quantisation with the ``bins`` display option."""
    return heat_quantize(attribution, int(display.get("bins", 0) or 0))
