"""Ops linear in their input with a constant weight: convolution, linear (dense), batch norm.

absLRP (DESIGN.md §4.1): with ``T_W`` the transposed op (the input-VJP of the op with weight W),

    VJP_x(h + ha; s) = T_W(s) + sign(x) ⊙ T_|W|(s)          (general x)
                     = 2 T_{W⁺}(s)                          (x ≥ 0 known from the graph)

so ``R_x = x ⊙ (Wᵀs + sign(x) ⊙ |W|ᵀs)``, Eq. 12 of the paper up to a factor 2 that the
normalisation removes. Biases and batch-norm shifts do not enter the VJP. |W| or W⁺ (whichever
the graph needs) is computed once, at compile time. Batch norm in eval mode is the affine map
``x · γ/√(σ²+ε) + const`` per channel.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from lrpfx.rules.abslrp import ABSLRP, AbsLRPFunction
from lrpfx.rules.base import RuleCall, RuleSpec

Transpose = Callable[[RuleCall, Tensor, Tensor, Tensor], Tensor]


def _conv_transpose(call: RuleCall, x: Tensor, s: Tensor, weight: Tensor) -> Tensor:
    st = call.static
    n = len(st["stride"])
    return torch.ops.aten.convolution_backward(
        s, x, weight, None, st["stride"], st["padding"], st["dilation"], False, [0] * n,
        st["groups"], [True, False, False],
    )[0]


def _linear_transpose(call: RuleCall, x: Tensor, s: Tensor, weight: Tensor) -> Tensor:
    return s @ weight


def _bn_transpose(call: RuleCall, x: Tensor, s: Tensor, scale: Tensor) -> Tensor:
    return s * scale.reshape(1, -1, *[1] * (x.dim() - 2))


def _weight(call: RuleCall) -> Tensor:
    return call.constant("weight")


def _bn_scale(call: RuleCall) -> Tensor:
    var = call.constant("running_var")
    scale = torch.rsqrt(var + call.static["eps"])
    weight = call.constant("weight")
    return scale if weight is None else weight * scale


def _linear_family(op: str, transpose: Transpose, weight: Callable[[RuleCall], Tensor]) -> None:
    def derive(call: RuleCall) -> dict[str, Tensor]:
        w = weight(call)
        if "input" in call.nonneg:
            return {"pos_weight": w.clamp(min=0)}
        return {"abs_weight": w.abs()}

    def vjp(call: RuleCall, inputs: dict[str, Tensor], s: Tensor, out: Tensor
) -> dict[str, Tensor]:
        x = inputs["input"]
        if "input" in call.nonneg:
            return {"input": 2 * transpose(call, x, s, call.derived("pos_weight"))}
        plain = transpose(call, x, s, weight(call))
        return {"input": plain + torch.sign(x) * transpose(call, x, s, call.derived("abs_weight"))}

    ABSLRP.register(RuleSpec(op, AbsLRPFunction, vjp, derive=derive))


_linear_family("conv", _conv_transpose, _weight)
_linear_family("linear", _linear_transpose, _weight)
_linear_family("batch_norm", _bn_transpose, _bn_scale)
