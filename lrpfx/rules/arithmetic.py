"""Element-wise add, sub, mul and div of tensors (either operand may be a constant or a number).

absLRP (DESIGN.md §4.1), ``ha`` the same op on absolute operands:

- ``y = a + b``: ``VJP_a = (1 + sign a) s``, i.e. ``R_a = 2 a⁺ s`` (and likewise for b);
- ``y = a − b``: ``VJP_a = (1 + sign a) s``, ``VJP_b = −(1 + sign b) s``;
- ``y = a · b``: ``VJP_a = (b + sign(a) |b|) s``, i.e. ``R_a = 2 (a b)⁺ s``;
- ``y = a / b`` (``b`` a tensor; ``ha = |a| / |b|``): ``VJP_a = (1/b + sign(a)/|b|) s``, i.e.
  ``R_a = 2 (a/b)⁺ s``, and ``VJP_b = −(a + sign(b)|a|)/b² s``, i.e. ``R_b = −2 (a/b)⁺ s``
  (a divisor that carries relevance gets it negated: growing it shrinks the output).

Each relevance-carrying operand is then normalised on its own, so the two inputs of a residual
add each leave with ``Σ|R| = 1`` (DESIGN.md §4.2). Constants and numbers get no relevance.
Broadcast operands have their VJP summed back to their own shape.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lrpfx.rules.abslrp import ABSLRP, AbsLRPFunction, keep_positive, stabilised_ratio
from lrpfx.rules.base import PlainVJP, RuleCall, RuleSpec


def _add_masks(sign_other: float):
    def masks(call: RuleCall, inputs: dict[str, Tensor], r: Tensor) -> dict[str, Tensor]:
        # (1 + sign a) ⊙ s, s = G ⊙ r (r = y/(|y|+ε)): 2 [a > 0] r G (negated for b in a − b)
        factors = {}
        for i, name in enumerate(call.relevant):
            last = i + 1 == len(call.relevant)  # the last one may reuse r in place
            f = keep_positive(r, inputs[name], inplace=last)
            factors[name] = f.neg_() if sign_other < 0 and name != "input" else f
        return factors

    return masks


def _add_spec(op: str, sign_other: float) -> RuleSpec:
    masks = _add_masks(sign_other)

    def plain_vjp(call: RuleCall, values: dict[str, Tensor], g: Tensor) -> dict[str, Tensor]:
        # a ± b: g and ±g (summed back to each operand's shape by the replay)
        return {k: g if k == "input" or sign_other > 0 else -g for k in call.relevant}

    return RuleSpec(op, AbsLRPFunction, None, relevance_args=("input", "other"), masks=masks,
                    diag=lambda call, inputs, out: masks(call, inputs, stabilised_ratio(out)),
                    plain_vjp=PlainVJP((), plain_vjp))


def _mul_plain_vjp(call: RuleCall, values: dict[str, Tensor], g: Tensor) -> dict[str, Tensor]:
    # a ⊙ b: g ⊙ b and g ⊙ a (a constant or number operand from the call)
    args = call.arguments(values)
    other = {"input": "other", "other": "input"}
    return {k: g * args[other[k]] for k in call.relevant}


def _mul_diag(call: RuleCall, inputs: dict[str, Tensor], out: Tensor) -> dict[str, Tensor]:
    # (b + sign(a)|b|) ⊙ s = 2 b [a b > 0] ⊙ s
    args = call.arguments(inputs)
    sgn = stabilised_ratio(out)
    factors = {}
    for name in call.relevant:
        x = inputs[name]
        other = args["other" if name == "input" else "input"]
        if not isinstance(other, Tensor):
            other = torch.as_tensor(other, dtype=out.dtype, device=out.device)
        factors[name] = keep_positive(sgn * other, x * other, inplace=True)
    return factors


def _div_diag(call: RuleCall, inputs: dict[str, Tensor], out: Tensor) -> dict[str, Tensor]:
    # (1/b + sign(a)/|b|) s = 2 [a b > 0] / b ⊙ s;  −(a + sign(b)|a|)/b² s = −2 [a b > 0] a/b² ⊙ s
    args = call.arguments(inputs)
    a, b = args["input"], args["other"]
    if not isinstance(a, Tensor):
        a = torch.as_tensor(a, dtype=out.dtype, device=out.device)
    if not isinstance(b, Tensor):
        b = torch.as_tensor(b, dtype=out.dtype, device=out.device)
    sgn = stabilised_ratio(out)
    kept = keep_positive(sgn, a * b, inplace=True)
    factors = {}
    if "input" in call.relevant:
        factors["input"] = kept / b
    if "other" in call.relevant:
        factors["other"] = -kept * a / (b * b)
    return factors


ABSLRP.register(_add_spec("add", 1.0))
ABSLRP.register(_add_spec("sub", -1.0))
ABSLRP.register(RuleSpec("mul", AbsLRPFunction, None, diag=_mul_diag,
                         relevance_args=("input", "other"),
                         plain_vjp=PlainVJP(("input", "other"), _mul_plain_vjp)))
ABSLRP.register(RuleSpec("div", AbsLRPFunction, None, diag=_div_diag,
                         relevance_args=("input", "other")))
