"""Evaluation metrics for attribution maps, batched in torch on the model's device.

* :mod:`.insdel` - Insertion, Deletion, ID score (resnet-lrp App. A.0.3), two tie protocols.
* :mod:`.localisation` - pointing game, attribution localisation, sparseness (srd App. E).
* :mod:`.faithfulness` - fidelity, stability (srd App. E).
* :mod:`.gae` - Focus (abslrp-gae Sec. 2.3), GAE = local consistency x contrastiveness (Sec. 3.2).
"""

from .faithfulness import fidelity, method_explain_fn, pearson, stability
from .gae import LocalConsistency, contrastiveness, focus, gae, local_consistency, quadrant_masks, scoring_map
from .insdel import (
    InsDelResult,
    auc,
    insertion_deletion,
    insertion_deletion_curves,
    insertion_masks,
    schedule,
    tie_protocols,
)
from .localisation import attribution_localisation, box_mask, dilate, pointing_game, sparseness

__all__ = [
    "InsDelResult", "LocalConsistency", "attribution_localisation", "auc", "box_mask", "contrastiveness", "dilate",
    "fidelity", "focus", "gae", "insertion_deletion", "insertion_deletion_curves", "insertion_masks",
    "local_consistency", "method_explain_fn", "pearson", "pointing_game", "quadrant_masks", "schedule",
    "scoring_map", "sparseness", "stability", "tie_protocols",
]
