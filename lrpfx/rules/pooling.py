"""Pooling and reductions: max/avg/adaptive-avg pooling, mean, sum, and every op found linear
with non-negative coefficients (``positive_linear``: upsampling, reflection padding, ...).

absLRP (DESIGN.md §4.1): ``VJP_x(f(x) + f(|x|); s)`` by local autograd. Average pooling, mean
and sum are linear with non-negative weights, so this is ``(1 + sign x) T(s)``. Max pooling
follows the reference, which does **not** divide by ``|h|`` (``s = R_y``): at the winning
positions ``R_x = 2 x R_y`` before normalisation. (The reference's timm ResNet rules do divide;
the rule set option ``max_pool_divide=True`` reproduces them.)

``positive_linear`` is any op ``y = T x`` with ``T ≥ 0`` (DESIGN.md §4.1 with ``ha = f(|x|)``):
``f(|x|) = T|x|``, so ``VJP_x(h + ha; s) = (1 + sign x) ⊙ Tᵀs`` and ``R_x = 2 x⁺ ⊙ Tᵀs``, i.e.
Eq. 12 of the paper with weights ``t_ij ≥ 0``. One VJP of the op itself by local autograd.

``selection`` is any op that picks each output among its input's elements by value (``amax``,
``max`` over a dim): the formula by local autograd (``T_h(s) + sign(x) T_ha(s)``, the winners
at ``x`` and at ``|x|``), with max pooling's ``s = R_y`` (option ``max_pool_divide``).
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


def _pool_args(call: RuleCall) -> tuple:
    st = call.static
    return st["kernel_size"], st["stride"], st["padding"], st["dilation"], st["ceil_mode"]


def _max_pool_forward(call: RuleCall, arguments: dict) -> tuple[Tensor, dict[str, Tensor]]:
    # the output and its winners from one kernel call
    n = len(call.static["kernel_size"])
    if n not in _POOL:
        return call.op(**arguments), {}
    out, winners = _POOL[n](arguments["input"], *_pool_args(call), return_indices=True)
    return out, {"winners": winners}


def _max_pool_prepare(call: RuleCall, inputs: dict[str, Tensor], out: Tensor
                      ) -> dict[str, Tensor]:
    # the winners at x (and at |x| for mixed signs), found once per forward
    x = inputs["input"]
    if "winners" not in inputs:
        return {"input": x}
    kept = {"input": x, "winners": inputs["winners"]}
    if "input" not in call.nonneg:
        kept["sign"] = torch.sign(x)
        pool = _POOL[len(call.static["kernel_size"])]
        kept["abs_winners"] = pool(x.abs(), *_pool_args(call), return_indices=True)[1]
    return kept


def _max_pool_vjp(call: RuleCall, inputs: dict[str, Tensor], s: Tensor, out: Tensor
                  ) -> dict[str, Tensor]:
    # T_h(s) + sign(x) T_ha(s), T the routing of max pooling at x and at |x| (= 2 T_h(s) for
    # x >= 0, the 2 dropped): the same winners as autograd's, without a second forward
    x = inputs["input"]
    if "winners" not in inputs:
        return abs_branch_vjp(call, inputs, s, out)
    backward = _POOL_BACKWARD[len(call.static["kernel_size"])]
    routed = backward(s, x, *_pool_args(call), inputs["winners"])
    if "sign" not in inputs:
        return {"input": routed}
    return {"input": torch.addcmul(
        routed, inputs["sign"], backward(s, x, *_pool_args(call), inputs["abs_winners"]))}


ABSLRP.register(RuleSpec(
    "max_pool", AbsLRPFunction, _max_pool_vjp, divide=False, prepare=_max_pool_prepare,
    forward_with=_max_pool_forward,
    # option max_pool_divide: the reference's ResNet rules do divide (see get_ruleset)
    configure=lambda spec, options: replace(spec, divide=bool(options["max_pool_divide"])),
))


def _nonneg_linear_prepare(call: RuleCall, inputs: dict[str, Tensor], out: Tensor
                           ) -> dict[str, Tensor]:
    # 1 + sign x, once per forward (none for x >= 0 known from the graph)
    x = inputs["input"]
    if "input" in call.nonneg:
        return {"input": x}
    return {"input": x, "factor": torch.sign(x).add_(1)}


def _op_vjp(call: RuleCall, x: Tensor, s: Tensor) -> Tensor:
    """``Tᵀs``: the op's own VJP at ``x`` (linear in ``x``, so its value does not matter)."""
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        (t,) = torch.autograd.grad(call.op(**call.arguments({"input": leaf})), leaf, s)
    return t


def _nonneg_linear_vjp(call: RuleCall, inputs: dict[str, Tensor], s: Tensor, out: Tensor
                       ) -> dict[str, Tensor]:
    # ops linear in x with weights >= 0 (average pooling, mean, sum, positive_linear): f(|x|) =
    # T|x|, so VJP_x(h + ha; s) = Tᵀs + sign(x) Tᵀs = (1 + sign x) ⊙ Tᵀs, and 2 Tᵀs for x >= 0
    # (the 2 dropped): one VJP of the op, not one of h + ha
    x = inputs["input"]
    t = _op_vjp(call, x, s)
    if "input" in call.nonneg:
        return {"input": t}
    # 1 + sign x from the forward where the rule prepares it, else per pass
    factor = inputs["factor"] if "factor" in inputs else torch.sign(x).add_(1)
    # pooling's backward kernels return a new tensor; other ops' VJPs may be views of s
    fresh = call.spec.op in ("avg_pool", "adaptive_avg_pool") and t.is_contiguous()
    return {"input": t.mul_(factor) if fresh else t * factor}


for _op in ("avg_pool", "adaptive_avg_pool", "mean", "sum"):
    ABSLRP.register(RuleSpec(_op, AbsLRPFunction, _nonneg_linear_vjp,
                             prepare=_nonneg_linear_prepare))


# ops found linear with weights >= 0 by lrpfx.passes.decompose: the same rule, with 1 + sign x
# computed per pass (no tensor kept; the pooling ops above keep it for speed)
ABSLRP.register(RuleSpec("positive_linear", AbsLRPFunction, _nonneg_linear_vjp))
ABSLRP.register(RuleSpec(
    "selection", AbsLRPFunction, abs_branch_vjp, divide=False,
    configure=lambda spec, options: replace(spec, divide=bool(options["max_pool_divide"])),
))
