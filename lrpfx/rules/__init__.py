"""Rules, one op family a file; importing this package registers them all."""

from lrpfx.rules import (  # noqa: F401
    arithmetic,
    attention,
    elementwise,
    gradient,
    linear,
    lrp,
    normalization,
    pooling,
)
from lrpfx.rules.base import EPS, RuleCall, RuleSet, RuleSpec
from lrpfx.rules.composite import composite
from lrpfx.rules.registry import RULESETS, get_ruleset

__all__ = ["EPS", "RULESETS", "RuleCall", "RuleSet", "RuleSpec", "composite", "get_ruleset"]
