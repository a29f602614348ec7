"""The absLRP backward (Vukadin et al., ACM TIST 2024, Eq. 12 and Algorithm 1).

For a node ``h = f(x; θ)`` with ``ha = f(|x|; |θ|)`` (DESIGN.md §4.1)::

    s   = R_y / (|h| + EPS)                      (s = R_y for max pooling)
    R_x = x ⊙ VJP_x(h + ha; s),   then   R_x ← R_x / (Σ|R_x| + EPS)   per example, per input

Under the gradient×input contract the rule receives ``G_y`` (so ``R_y = h ⊙ G_y``) and
returns ``G_x = VJP_x(h + ha; s) / (Σ|x ⊙ VJP_x| + EPS)``,
whose product with ``x`` is the normalised ``R_x`` without ever dividing by ``x``. Each op
family supplies ``VJP_x(h + ha; s)`` as a closed form (``linear.py``, ``arithmetic.py``, ...),
through :func:`abs_branch_vjp`, or, for element-wise rules, as a factor ``F`` with
``VJP_x ∝ F ⊙ G_y`` computed once and reused by both backward passes of a contrastive map.

Two exact shortcuts keep the backward close to the cost of a gradient:

- every rule is linear in ``G_y`` and the normalisation only rescales each example by a
  positive number, so along a chain the normalisations cancel: an input is normalised only where
  relevance from several readers is summed (``RuleCall.normalize``, set by the rewrite pass);
  ``explain`` normalises the final map. Positive constant factors (the 2 of ``2 x⁺ s``) are
  dropped for the same reason.
- ``s = R_y / (|h| + EPS) = G_y ⊙ h / (|h| + EPS)``: the ratio is computed once per forward
  and shared by both backward passes.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from lrpfx.rules.base import EPS, RuleCall, safe_l1
from lrpfx.rules.registry import RULESETS

ABSLRP = RULESETS["abslrp"]


class AbsLRPFunction(torch.autograd.Function):
    """Forward: the op unchanged. Backward: absLRP for every relevance-carrying input."""

    @staticmethod
    def forward(ctx, call: RuleCall, *inputs: Tensor) -> Tensor:  # type: ignore[override]
        out = call.op(**call.arguments(inputs))
        ctx.call = call
        if not any(ctx.needs_input_grad[1:]):
            return out  # a plain forward: nothing to prepare
        spec = call.spec
        named = dict(zip(call.relevant + call.runtime, inputs))
        ctx.shapes = {k: named[k].shape for k in call.relevant}
        # computed once here, shared by both backward passes of a contrastive map; only what
        # the backward reads is kept
        kept = [named[k] for k in call.relevant if k in call.normalize]
        if spec.diag is not None:
            factors = spec.diag(call, named, out)
            ctx.factor_names = tuple(factors)
            ctx.save_for_backward(*factors.values(), *kept)
        else:
            scale = stabilised_ratio(out) if spec.divide else out
            ctx.save_for_backward(*inputs, scale, out if spec.needs_out else None)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        call: RuleCall = ctx.call
        spec = call.spec
        saved = ctx.saved_tensors
        if spec.diag is not None:
            n = len(ctx.factor_names)
            factors = dict(zip(ctx.factor_names, saved[:n]))
            kept = dict(zip([k for k in call.relevant if k in call.normalize], saved[n:]))
            vjps = {k: _sum_to(grad * f, ctx.shapes[k]) for k, f in factors.items()}
        else:
            *inputs, scale, out = saved
            named = dict(zip(call.relevant + call.runtime, inputs))
            kept = named
            vjps = spec.vjp(call, named, grad * scale, out)
        grads = []
        for name in call.relevant:
            v = vjps[name]
            if name in call.normalize:
                v = v / safe_l1(kept[name] * v)
            grads.append(v)
        return (None, *grads, *[None] * len(call.runtime))


def _sum_to(t: Tensor, shape: torch.Size) -> Tensor:
    return t if t.shape == shape else t.sum_to_size(shape)


def stabilised_ratio(out: Tensor, nonneg: bool = False) -> Tensor:
    """``h / (|h| + EPS)``: with it ``s = R_y / (|h| + EPS) = G_y ⊙ h / (|h| + EPS)``.

    One new tensor, filled in place (large allocations cost as much as a pass on CPU)."""
    r = out + EPS if nonneg else out.abs().add_(EPS)
    return torch.div(out, r, out=r)


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
