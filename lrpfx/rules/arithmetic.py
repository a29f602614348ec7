"""Element-wise add, sub and mul of tensors (either operand may be a constant or a number).

absLRP (DESIGN.md §4.1), ``ha`` the same op on absolute operands:

- ``y = a + b``: ``VJP_a = (1 + sign a) s``, i.e. ``R_a = 2 a⁺ s`` (and likewise for b);
- ``y = a − b``: ``VJP_a = (1 + sign a) s``, ``VJP_b = −(1 + sign b) s``;
- ``y = a · b``: ``VJP_a = (b + sign(a) |b|) s``, i.e. ``R_a = 2 (a b)⁺ s``.

Each relevance-carrying operand is then normalised on its own, so the two inputs of a residual
add each leave with ``Σ|R| = 1`` (DESIGN.md §4.2). Constants and numbers get no relevance.
Broadcast operands have their VJP summed back to their own shape.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lrpfx.rules.abslrp import ABSLRP, AbsLRPFunction
from lrpfx.rules.base import RuleCall, RuleSpec, reduce_to


def _add_vjp(sign_other: float):
    def vjp(call: RuleCall, inputs: dict[str, Tensor], s: Tensor, out: Tensor
) -> dict[str, Tensor]:
        grads = {}
        for name in call.relevant:
            x = inputs[name]
            factor = 1.0 if name == "input" else sign_other
            grads[name] = reduce_to(factor * (1 + torch.sign(x)) * s, x)
        return grads

    return vjp


def _mul_vjp(call: RuleCall, inputs: dict[str, Tensor], s: Tensor, out: Tensor
) -> dict[str, Tensor]:
    args = call.arguments(inputs)
    grads = {}
    for name in call.relevant:
        x = inputs[name]
        other = args["other" if name == "input" else "input"]
        if not isinstance(other, Tensor):
            other = torch.as_tensor(other, dtype=s.dtype, device=s.device)
        grads[name] = reduce_to((other + torch.sign(x) * other.abs()) * s, x)
    return grads


ABSLRP.register(RuleSpec("add", AbsLRPFunction, _add_vjp(1.0), relevance_args=("input", "other")))
ABSLRP.register(RuleSpec("sub", AbsLRPFunction, _add_vjp(-1.0),
                         relevance_args=("input", "other")))
ABSLRP.register(RuleSpec("mul", AbsLRPFunction, _mul_vjp, relevance_args=("input", "other")))
