"""Pooling and reductions: max/avg/adaptive-avg pooling, mean, sum.

absLRP (DESIGN.md §4.1): ``VJP_x(f(x) + f(|x|); s)`` by local autograd. Average pooling, mean
and sum are linear with non-negative weights, so this is ``(1 + sign x) T(s)``. Max pooling
follows the reference, which does **not** divide by ``|h|`` (``s = R_y``): at the winning
positions ``R_x = 2 x R_y`` before normalisation. (The reference's timm ResNet rules do divide;
the rule set option ``max_pool_divide=True`` reproduces them.)
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor

from lrpfx.rules.abslrp import ABSLRP, AbsLRPFunction, abs_branch_vjp
from lrpfx.rules.base import RuleCall, RuleSpec

_POOL = {2: F.max_pool2d, 3: F.max_pool3d}
_POOL_BACKWARD = {2: torch.ops.aten.max_pool2d_with_indices_backward,
                  3: torch.ops.aten.max_pool3d_with_indices_backward}


def _max_pool_vjp(call: RuleCall, inputs: dict[str, Tensor], s: Tensor, out: Tensor
                  ) -> dict[str, Tensor]:
    # T_h(s) + sign(x) T_ha(s), T the routing of max pooling at x and at |x| (= 2 T_h(s) for
    # x >= 0, the 2 dropped): the same winners as autograd's, without a second forward
    x = inputs["input"]
    st = call.static
    n = len(st["kernel_size"])
    if n not in _POOL:
        return abs_branch_vjp(call, inputs, s, out)
    args = (st["kernel_size"], st["stride"], st["padding"], st["dilation"], st["ceil_mode"])

    def route(t: Tensor) -> Tensor:
        _, idx = _POOL[n](t, *args, return_indices=True)
        return _POOL_BACKWARD[n](s, t, *args, idx)

    if "input" in call.nonneg:
        return {"input": route(x)}
    return {"input": torch.addcmul(route(x), torch.sign(x), route(x.abs()))}


ABSLRP.register(RuleSpec(
    "max_pool", AbsLRPFunction, _max_pool_vjp, divide=False,
    # option max_pool_divide: the reference's ResNet rules do divide (see get_ruleset)
    configure=lambda spec, options: replace(spec, divide=bool(options["max_pool_divide"])),
))
for _op in ("avg_pool", "adaptive_avg_pool", "mean", "sum"):
    ABSLRP.register(RuleSpec(_op, AbsLRPFunction, abs_branch_vjp))
