"""Element-wise activations and eval-mode dropout.

absLRP (DESIGN.md §4.1): ``ha = f(|x|)``, so ``VJP_x(h + ha; s) = f'(x) s + sign(x) f'(|x|) s``.
For ReLU this is ``([x > 0] + sign(x)) s``, i.e. ``R_x = 2 x⁺ s``; for dropout (the identity in
eval mode, a compute op in the reference semantics) ``(1 + sign(x)) s``. Other activations use
the formula by local autograd.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lrpfx.rules.abslrp import ABSLRP, AbsLRPFunction, abs_branch_vjp
from lrpfx.rules.base import RuleCall, RuleSpec


def _relu_vjp(call: RuleCall, inputs: dict[str, Tensor], s: Tensor, out: Tensor
) -> dict[str, Tensor]:
    x = inputs["input"]
    return {"input": ((x > 0).to(s.dtype) + torch.sign(x)) * s}


def _identity_vjp(call: RuleCall, inputs: dict[str, Tensor], s: Tensor, out: Tensor
) -> dict[str, Tensor]:
    x = inputs["input"]
    return {"input": (1 + torch.sign(x)) * s}


ABSLRP.register(RuleSpec("relu", AbsLRPFunction, _relu_vjp))
ABSLRP.register(RuleSpec("dropout", AbsLRPFunction, _identity_vjp))
for _op in (
    "leaky_relu", "hardtanh", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid",
    "elu", "softplus", "mish", "pow",
):
    ABSLRP.register(RuleSpec(_op, AbsLRPFunction, abs_branch_vjp))
