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
from lrpfx.rules.base import PlainVJP, RuleCall, RuleSpec, reduce_to


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


def _matmul_vjp(call: RuleCall, inputs: dict[str, Tensor], s: Tensor, out: Tensor
                ) -> dict[str, Tensor]:
    """For ``y = a @ b`` (``a: (…, M, K)``, ``b: (…, K, N)``) each VJP's two products as one,
    with ``[b; |b|]`` stacked on K, or a single product where an operand is known non-negative
    (attention probabilities). The operands themselves are what the forward keeps: the stacked
    and signed forms are built per backward pass, since the operands are kept anyway (by the
    total derivative's replay, by the ops around them) and the copies would double that."""
    args = call.arguments(inputs)
    a, b = args["input"], args["other"]
    if a.dim() < 2 or b.dim() < 2:
        return abs_branch_vjp(call, inputs, s, out)
    grads = {}
    if "input" in call.relevant:  # VJP_a = s bᵀ + sign(a) ⊙ s |b|ᵀ
        if "input" in call.nonneg:  # 2 s (b⁺)ᵀ, the constant 2 dropped
            v = s @ b.clamp(min=0).transpose(-1, -2)
        else:
            both = s @ torch.cat([b, b.abs()], dim=-2).transpose(-1, -2)
            plain, absolute = both.split(both.shape[-1] // 2, dim=-1)
            v = torch.addcmul(plain, torch.sign(a), absolute)
        grads["input"] = reduce_to(v, a)
    if "other" in call.relevant:  # VJP_b = aᵀ s + sign(b) ⊙ |a|ᵀ s
        if "other" in call.nonneg:
            v = a.clamp(min=0).transpose(-1, -2) @ s
        elif "input" in call.nonneg:  # |a| = a: aᵀ s ⊙ (1 + sign b)
            v = (a.transpose(-1, -2) @ s).mul_(torch.sign(b).add_(1))
        else:
            both = torch.cat([a, a.abs()], dim=-1).transpose(-1, -2) @ s
            plain, absolute = both.split(both.shape[-2] // 2, dim=-2)
            v = torch.addcmul(plain, torch.sign(b), absolute)
        grads["other"] = reduce_to(v, b)
    return grads


def _softmax_plain_vjp(call: RuleCall, values: dict[str, Tensor], g: Tensor
                       ) -> dict[str, Tensor]:
    # the Jacobian of _softmax_plain is diag(h): masked positions and dead rows have h = 0
    return {"input": g * values["out"]}


def _matmul_plain_vjp(call: RuleCall, values: dict[str, Tensor], g: Tensor
                      ) -> dict[str, Tensor]:
    # y = a @ b: VJP_a = g bᵀ, VJP_b = aᵀ g (batched, broadcast dimensions summed back)
    args = call.arguments(values)
    a, b = args["input"], args["other"]
    if a.dim() < 2 or b.dim() < 2:  # vector operands: the product's own derivative
        with torch.enable_grad():
            leaves = {k: args[k].detach().requires_grad_(True) for k in call.relevant}
            out = torch.matmul(*[leaves.get(k, args[k]) for k in ("input", "other")])
            return dict(zip(leaves, torch.autograd.grad(out, list(leaves.values()), g)))
    grads = {}
    if "input" in call.relevant:
        grads["input"] = reduce_to(g @ b.transpose(-1, -2), a)
    if "other" in call.relevant:
        grads["other"] = reduce_to(a.transpose(-1, -2) @ g, b)
    return grads


ABSLRP.register(RuleSpec("softmax", AbsLRPFunction, None, diag=_softmax_diag,
                         relevance_args=("input",), plain=_softmax_plain,
                         plain_vjp=PlainVJP(("out",), _softmax_plain_vjp)))
# einsum: the same two-operand rule, by local autograd on the formula (no closed form per
# equation)
ABSLRP.register(RuleSpec("einsum", AbsLRPFunction, abs_branch_vjp,
                         relevance_args=("input", "other")))
ABSLRP.register(RuleSpec("matmul", AbsLRPFunction, _matmul_vjp,
                         relevance_args=("input", "other"),
                         plain_vjp=PlainVJP(("input", "other"), _matmul_plain_vjp)))
