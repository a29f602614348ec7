"""Pooling and reductions: max/avg/adaptive-avg pooling, mean, sum.

absLRP (DESIGN.md §4.1): ``VJP_x(f(x) + f(|x|); s)`` by local autograd. Average pooling, mean
and sum are linear with non-negative weights, so this is ``(1 + sign x) T(s)``. Max pooling
follows the reference, which does **not** divide by ``|h|`` (``s = R_y``): at the winning
positions ``R_x = 2 x R_y`` before normalisation. (The reference's timm ResNet rules do divide;
the rule set option ``max_pool_divide=True`` reproduces them.)
"""

from __future__ import annotations

from dataclasses import replace

from lrpfx.rules.abslrp import ABSLRP, AbsLRPFunction, abs_branch_vjp
from lrpfx.rules.base import RuleSpec

ABSLRP.register(RuleSpec(
    "max_pool", AbsLRPFunction, abs_branch_vjp, divide=False,
    # option max_pool_divide: the reference's ResNet rules do divide (see get_ruleset)
    configure=lambda spec, options: replace(spec, divide=bool(options["max_pool_divide"])),
))
for _op in ("avg_pool", "adaptive_avg_pool", "mean", "sum"):
    ABSLRP.register(RuleSpec(_op, AbsLRPFunction, abs_branch_vjp))
