"""Softmax and matrix products of activations (the parts of attention).

absLRP (DESIGN.md §4.1, reference semantics):

- softmax: the max shift and the denominator are constants, in both branches (the absolute
  branch's denominator comes from ``|x|``), so ``VJP_x(h + ha; s) = s ⊙ (h + sign(x) ⊙ ha)``
  with ``ha = softmax(|x|)``. Masked positions (``-inf`` after the mask) stay masked in the
  absolute branch and get no relevance.
- ``y = A @ B`` with both operands activations: each operand gets its own pass with the other
  held as a weight: ``VJP_A = s Bᵀ + sign(A) ⊙ s |B|ᵀ``, ``VJP_B = Aᵀ s + sign(B) ⊙ |A|ᵀ s``,
  each normalised on its own. ``scaled_dot_product_attention`` reaches these rules decomposed
  into scale, ``q @ kᵀ``, masked softmax, ``@ v`` (see ``passes/attention.py``).
  Two-operand ``einsum`` follows the same rule, through local autograd.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lrpfx.core import ops
from lrpfx.rules.abslrp import ABSLRP, AbsLRPFunction, abs_branch_vjp, stabilised_ratio
from lrpfx.rules.base import RuleCall, RuleSpec, reduce_to


def _softmax_diag(call: RuleCall, inputs: dict[str, Tensor], out: Tensor
                  ) -> dict[str, Tensor]:
    # s ⊙ (h + sign(x) ⊙ ha) with s = G ⊙ h/(|h|+ε): one factor per forward
    x = inputs["input"]
    dim = call.static["dim"]
    add = ops.additive_mask(x, call.arguments(inputs).get("mask"),
                            call.static.get("causal", False))
    ha = ops.softmax(x.abs(), dim, add)  # 0 on rows the mask leaves nothing in, as the forward
    sign = torch.sign(x)
    if add is not None:  # masked positions: -inf + finite; keep them out of 0 * inf
        sign = sign.masked_fill(torch.isinf(add.expand_as(x)), 0)
    return {"input": stabilised_ratio(out, nonneg=True).mul_(ha.mul_(sign).add_(out))}


def _softmax_plain(call: RuleCall, args: dict) -> Tensor:
    # max shift and denominator held constant: the Jacobian is diag(h)
    add = ops.additive_mask(args["input"], args.get("mask"), call.static.get("causal", False))
    z = args["input"] if add is None else args["input"] + add
    dim = call.static["dim"]
    z, dead = ops.dead_rows(z, dim)  # rows the mask leaves nothing in: 0, as the forward
    e = (z - z.amax(dim, keepdim=True).detach()).exp()
    return (e / e.sum(dim, keepdim=True).detach()).masked_fill(dead, 0.0)


def _matmul_prepare(call: RuleCall, inputs: dict[str, Tensor], out: Tensor
                    ) -> dict[str, Tensor]:
    """Per forward, for ``y = a @ b`` with ``a: (…, M, K)``, ``b: (…, K, N)``: the operands of
    each VJP laid out so that both of its products are one (``[b; |b|]`` stacked on K), or a
    single product where an operand is known non-negative (attention probabilities). Falls back
    to keeping ``a`` and ``b`` when batch dimensions broadcast."""
    args = call.arguments(inputs)
    a, b = args["input"], args["other"]
    if a.dim() < 2 or b.dim() < 2 or a.shape[:-2] != b.shape[:-2]:
        return {"input": a, "other": b}
    kept = {}
    if "input" in call.relevant:  # VJP_a = s bᵀ + sign(a) ⊙ s |b|ᵀ
        if "input" in call.nonneg:
            kept["a_pos_bt"] = b.clamp(min=0).transpose(-1, -2).contiguous()
        else:
            kept["a_cat_bt"] = torch.cat([b, b.abs()], dim=-2).transpose(-1, -2).contiguous()
            kept["a_sign"] = torch.sign(a)
    if "other" in call.relevant:  # VJP_b = aᵀ s + sign(b) ⊙ |a|ᵀ s
        if "other" in call.nonneg:
            kept["b_pos_at"] = a.clamp(min=0).transpose(-1, -2).contiguous()
        elif "input" in call.nonneg:  # |a| = a: aᵀ s ⊙ (1 + sign b)
            kept["b_at"] = a.transpose(-1, -2).contiguous()
            kept["b_one_plus_sign"] = torch.sign(b).add_(1)
        else:
            kept["b_cat_at"] = torch.cat([a, a.abs()], dim=-1).transpose(-1, -2).contiguous()
            kept["b_sign"] = torch.sign(b)
    return kept


def _matmul_vjp(call: RuleCall, inputs: dict[str, Tensor], s: Tensor, out: Tensor
                ) -> dict[str, Tensor]:
    if "input" in inputs:  # broadcasting or 1-D operands: the formula on the inputs
        return _matmul_vjp_general(call, inputs, s, out)
    grads = {}
    if "a_pos_bt" in inputs:  # 2 s (b⁺)ᵀ, the constant 2 dropped
        grads["input"] = s @ inputs["a_pos_bt"]
    elif "a_cat_bt" in inputs:
        both = s @ inputs["a_cat_bt"]
        plain, absolute = both.split(both.shape[-1] // 2, dim=-1)
        grads["input"] = torch.addcmul(plain, inputs["a_sign"], absolute)
    if "b_pos_at" in inputs:
        grads["other"] = inputs["b_pos_at"] @ s
    elif "b_at" in inputs:
        grads["other"] = (inputs["b_at"] @ s).mul_(inputs["b_one_plus_sign"])
    elif "b_cat_at" in inputs:
        both = inputs["b_cat_at"] @ s
        plain, absolute = both.split(both.shape[-2] // 2, dim=-2)
        grads["other"] = torch.addcmul(plain, inputs["b_sign"], absolute)
    return grads


def _matmul_vjp_general(call: RuleCall, inputs: dict[str, Tensor], s: Tensor, out: Tensor
                        ) -> dict[str, Tensor]:
    args = call.arguments(inputs)
    a, b = args["input"], args["other"]
    if a.dim() < 2 or b.dim() < 2:
        return abs_branch_vjp(call, inputs, s, out)
    grads = {}
    if "input" in call.relevant:
        v = s @ b.transpose(-1, -2) + torch.sign(a) * (s @ b.abs().transpose(-1, -2))
        grads["input"] = reduce_to(v, a)
    if "other" in call.relevant:
        v = a.transpose(-1, -2) @ s + torch.sign(b) * (a.abs().transpose(-1, -2) @ s)
        grads["other"] = reduce_to(v, b)
    return grads


ABSLRP.register(RuleSpec("softmax", AbsLRPFunction, None, diag=_softmax_diag,
                         relevance_args=("input",), plain=_softmax_plain))
# einsum: the same two-operand rule, by local autograd on the formula (no closed form per
# equation)
ABSLRP.register(RuleSpec("einsum", AbsLRPFunction, abs_branch_vjp,
                         relevance_args=("input", "other")))
ABSLRP.register(RuleSpec("matmul", AbsLRPFunction, _matmul_vjp,
                         relevance_args=("input", "other"), prepare=_matmul_prepare))
