"""Element-wise activations and eval-mode dropout.

absLRP (DESIGN.md §4.1): ``ha = f(|x|)``, so ``VJP_x(h + ha; s) = f'(x) s + sign(x) f'(|x|) s``.
For ReLU this is ``([x > 0] + sign(x)) s``, i.e. ``R_x = 2 x⁺ s``; for dropout (the identity in
eval mode, a compute op in the reference semantics) ``(1 + sign(x)) s``; with ``s = G ⊙ y/(|y|+ε)``
both are ``2 G ⊙ x⁺/(|x|+ε)`` (a factor computed once). Other
activations use the formula by local autograd.
"""

from __future__ import annotations

from torch import Tensor

from lrpfx.rules.abslrp import ABSLRP, AbsLRPFunction, abs_branch_vjp, stabilised_ratio
from lrpfx.rules.base import RuleCall, RuleSpec


def _relu_diag(call: RuleCall, inputs: dict[str, Tensor], out: Tensor) -> dict[str, Tensor]:
    # ([x>0] + sign x) ⊙ y/(|y|+ε) G = 2 y/(|y|+ε) G, as y = 0 wherever x <= 0
    return {"input": stabilised_ratio(out, nonneg=True)}


def _identity_diag(call: RuleCall, inputs: dict[str, Tensor], out: Tensor) -> dict[str, Tensor]:
    # (1 + sign x) ⊙ x/(|x|+ε) G = 2 x⁺/(|x|+ε) G
    return {"input": stabilised_ratio(out).clamp_(min=0)}


ABSLRP.register(RuleSpec("relu", AbsLRPFunction, None, diag=_relu_diag))
ABSLRP.register(RuleSpec("dropout", AbsLRPFunction, None, diag=_identity_diag))
for _op in (
    "leaky_relu", "hardtanh", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid",
    "elu", "softplus", "mish", "pow",
):
    ABSLRP.register(RuleSpec(_op, AbsLRPFunction, abs_branch_vjp))
