"""absLRP (Vukadin et al., abslrp-gae Sec. 3.1): its rule sets, options and registry adapter.

- :mod:`.rules`: ``preset="paper"``, Eq. 12 and the paper's rules per operation (:class:`AbsLRPRules`);
- :mod:`.released`: ``preset="released-code"``, what the authors' released code computes
  (:class:`ReleasedCodeRules`);
- :mod:`.common`: the small free functions both use (Eq. 12 through a layer, pools, structure);
- :mod:`.options`: the option values and the panel the app builds;
- :mod:`.method`: registers the ``abslrp`` method (importing this package registers it).
"""

from . import method as _method  # noqa: F401  (registers the method)
from .options import CONTRASTS, PRESETS, RENORMALISE
from .released import ReleasedCodeRules
from .rules import AbsLRPRules

__all__ = ["CONTRASTS", "PRESETS", "RENORMALISE", "AbsLRPRules", "ReleasedCodeRules"]
