"""The absLRP backward (Vukadin et al., ACM TIST 2024, Eq. 12 and Algorithm 1).

For a node ``h = f(x; θ)`` with ``ha = f(|x|; |θ|)`` (DESIGN.md §4.1)::

    s   = R_y / (|h| + EPS)                      (s = R_y for max pooling)
    R_x = x ⊙ VJP_x(h + ha; s),   then   R_x ← R_x / (Σ|R_x| + EPS)   per example, per input

Under the gradient×input contract the rule receives ``G_y`` (so ``R_y = h ⊙ G_y``) and returns
``G_x = VJP_x(h + ha; s) / (Σ|x ⊙ VJP_x(h + ha; s)| + EPS)``, whose product with ``x`` is the
normalised ``R_x`` without ever dividing by ``x``. Each op family supplies ``VJP_x(h + ha; s)``
as a closed form (see ``linear.py``, ``arithmetic.py``, ...) or through :func:`abs_branch_vjp`.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from lrpfx.rules.base import EPS, RuleCall, per_example_l1
from lrpfx.rules.registry import RULESETS

ABSLRP = RULESETS["abslrp"]


class AbsLRPFunction(torch.autograd.Function):
    """Forward: the op unchanged. Backward: absLRP for every relevance-carrying input."""

    @staticmethod
    def forward(ctx, call: RuleCall, *inputs: Tensor) -> Tensor:  # type: ignore[override]
        out = call.op(**call.arguments(inputs))
        ctx.call = call
        ctx.save_for_backward(*inputs, out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        *inputs, out = ctx.saved_tensors
        call: RuleCall = ctx.call
        r = out * grad
        s = r / (out.abs() + EPS) if call.spec.divide else r
        named = dict(zip(call.relevant + call.runtime, inputs))
        vjps = call.spec.vjp(call, named, s, out)
        grads = []
        for name in call.relevant:
            v = vjps[name]
            grads.append(v / (per_example_l1(named[name] * v) + EPS))
        return (None, *grads, *[None] * len(call.runtime))


def abs_branch_vjp(call: RuleCall, inputs: dict[str, Tensor], s: Tensor, out: Tensor
) -> dict[str, Tensor]:
    """``VJP_x(f(x; θ) + f(|x|; |θ|); s)`` by local autograd: the formula itself, for ops with
    no cheaper closed form (non-linear activations, max pooling, ...)."""
    with torch.enable_grad():
        leaves = {k: inputs[k].detach().requires_grad_(True) for k in call.relevant}
        runtime = {k: inputs[k] for k in call.runtime}  # masks: used as they are, not |·|
        h = call.op(**call.arguments({**leaves, **runtime}))
        abs_args = call.arguments({**{k: v.abs() for k, v in leaves.items()}, **runtime})
        for k in call.constant_names:
            if abs_args[k] is not None:
                abs_args[k] = abs_args[k].abs()
        ha = call.op(**abs_args)
        grads = torch.autograd.grad(h + ha, list(leaves.values()), s)
    return dict(zip(leaves, grads))
