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

from lrpfx.rules.abslrp import ABSLRP, AbsLRPFunction, stabilised_ratio
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
        if "input" in call.nonneg:  # 2 W⁺ᵀ s, the constant 2 dropped
            return {"input": transpose(call, x, s, call.derived("pos_weight"))}
        plain = transpose(call, x, s, weight(call))
        absolute = transpose(call, x, s, call.derived("abs_weight"))
        return {"input": torch.addcmul(plain, torch.sign(x), absolute)}

    ABSLRP.register(RuleSpec(op, AbsLRPFunction, vjp, derive=derive))


def _bn_diag(call: RuleCall, inputs: dict[str, Tensor], out: Tensor) -> dict[str, Tensor]:
    # (a + sign(x)|a|) ⊙ s, s = G ⊙ y/(|y|+ε): 2 a [x a > 0] y/(|y|+ε) G
    x = inputs["input"]
    a = _bn_scale(call).reshape(1, -1, *[1] * (x.dim() - 2))
    return {"input": stabilised_ratio(out).mul_(a).masked_fill_((x * a) <= 0, 0)}


_linear_family("conv", _conv_transpose, _weight)
_linear_family("linear", _linear_transpose, _weight)
ABSLRP.register(RuleSpec("batch_norm", AbsLRPFunction, None, diag=_bn_diag))
