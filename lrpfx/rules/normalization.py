"""Layer norm.

absLRP (DESIGN.md §4.1, reference semantics): mean and variance are constants (detached); the
absolute branch recomputes them from ``|x|``::

    h  = (x − μ(x)) / σ(x) · γ + β           σ(x) = sqrt(var(x) + ε), biased variance
    ha = (|x| − μ(|x|)) / σ(|x|) · |γ| + |β|
    VJP_x(h + ha; s) = s ⊙ (γ / σ(x) + sign(x) ⊙ |γ| / σ(|x|))

|γ| is computed once at compile time.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lrpfx.rules.abslrp import ABSLRP, AbsLRPFunction
from lrpfx.rules.base import RuleCall, RuleSpec


def _sigma(x: Tensor, ndim: int, eps: float) -> Tensor:
    dims = tuple(range(-ndim, 0))
    return torch.sqrt(x.var(dims, unbiased=False, keepdim=True) + eps)


def _layer_norm_derive(call: RuleCall) -> dict[str, Tensor]:
    weight = call.constant("weight")
    return {} if weight is None else {"abs_weight": weight.abs()}


def _layer_norm_vjp(call: RuleCall, inputs: dict[str, Tensor], s: Tensor, out: Tensor
                    ) -> dict[str, Tensor]:
    x = inputs["input"]
    ndim, eps = len(call.static["normalized_shape"]), call.static["eps"]
    weight = call.constant("weight")
    plain = s / _sigma(x, ndim, eps)
    absolute = torch.sign(x) * s / _sigma(x.abs(), ndim, eps)
    if weight is not None:
        plain = plain * weight
        absolute = absolute * call.derived("abs_weight")
    return {"input": plain + absolute}


ABSLRP.register(RuleSpec("layer_norm", AbsLRPFunction, _layer_norm_vjp,
                         derive=_layer_norm_derive))
