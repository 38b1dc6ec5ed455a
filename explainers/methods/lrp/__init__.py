"""The LRP family: ``lrp`` (composites of layer rules) and ``resnet-lrp`` (Otsuki et al., ECCV'24).

- :mod:`.rules`: every layer rule as (input modifier, parameter modifier) terms, and the table of rule names;
- :mod:`.composites`: which rule each layer gets, as data (one row per composite);
- :mod:`.released`: ``resnet-lrp preset=released-code`` (the authors' code);
- :mod:`.options`: the option panels; :mod:`.method`: registers both methods (importing this package does).

The rule set itself (:class:`~explainers.propagation.rules.LRPRules`) and the term machinery live with the
walker in :mod:`explainers.propagation`.
"""

from . import method as _method  # noqa: F401  (registers the methods)
from .composites import COMPOSITES, INPUT_RULES, make_composite
from .method import rule_params, rule_set
from .released import SKIP_TYPES, released_code_rules
from .rules import RULES, RuleParams

__all__ = ["COMPOSITES", "INPUT_RULES", "RULES", "SKIP_TYPES", "RuleParams", "make_composite",
           "released_code_rules", "rule_params", "rule_set"]
