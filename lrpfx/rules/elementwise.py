"""Element-wise activations and eval-mode dropout.

absLRP (DESIGN.md §4.1): ``ha = f(|x|)``, so ``VJP_x(h + ha; s) = f'(x) s + sign(x) f'(|x|) s``.
For ReLU this is ``([x > 0] + sign(x)) s``, i.e. ``R_x = 2 x⁺ s``; for dropout (the identity in
eval mode, a compute op in the reference semantics) ``(1 + sign(x)) s``; with ``s = G ⊙ y/(|y|+ε)``
both are ``2 G ⊙ x⁺/(|x|+ε)`` (a factor computed once). Other
activations: the factor ``y/(|y|+ε) ⊙ (f'(x) + sign(x) f'(|x|))``, both derivatives by local
autograd, once per forward. ``pointwise`` is any op found element-wise by
:mod:`lrpfx.passes.decompose` (``exp``, ``abs``, ``sqrt``, ...): the same formula.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lrpfx.rules.abslrp import ABSLRP, AbsLRPFunction, keep_positive, stabilised_ratio
from lrpfx.rules.base import PlainVJP, RuleCall, RuleSpec


def _relu_diag(call: RuleCall, inputs: dict[str, Tensor], out: Tensor) -> dict[str, Tensor]:
    # ([x>0] + sign x) ⊙ y/(|y|+ε) G = 2 y/(|y|+ε) G, as y = 0 wherever x <= 0
    return {"input": stabilised_ratio(out, nonneg=True)}


def _relu_through(call: RuleCall, x: Tensor, y: Tensor, factor) -> None:  # noqa: ANN001
    # diag = ratio(y) (the mask [x > 0] is in it); a pending ratio(x) equals ratio(y) where
    # x > 0 and is masked elsewhere, so it becomes ratio(y)². Keeps "aligned": F ⊙ ratio(y) =
    # ratio(y) ⊙ (ratio(y) Q) on x > 0, 0 elsewhere.
    r = stabilised_ratio(y, nonneg=True)
    if factor.pending is x:
        r.mul_(r)
        factor.pending = None
    factor.multiply(r)


def _relu6_range(call: RuleCall) -> tuple[float, float] | None:
    """``(0, max)`` for a hardtanh clamping to ``[0, max]`` (ReLU6), else None."""
    lo, hi = float(call.static.get("min_val", -1.0)), float(call.static.get("max_val", 1.0))
    return (lo, hi) if lo == 0 and hi > 0 else None


def _relu6_ratio(y: Tensor, hi: float) -> Tensor:
    # ratio(y) ⊙ [0 < y < max], one new tensor; [0 < y < max] = [0 < x < max] as y = x there
    r = stabilised_ratio(y, nonneg=True)
    return torch.ops.aten.hardtanh_backward.grad_input(r, y, 0.0, hi, grad_input=r)


def _hardtanh_diag(call: RuleCall, inputs: dict[str, Tensor], out: Tensor) -> dict[str, Tensor]:
    # ReLU6, f(x) = min(max(x, 0), m): f'(x) + sign(x) f'(|x|) is 2 on 0 < x < m, −1 on −m < x < 0
    # and 0 elsewhere; ratio(y) is 0 wherever x <= 0, so the factor is 2 [0 < x < m] ratio(y)
    # (the constant 2 dropped, as for ReLU): one ratio and one mask, no local autograd
    bounds = _relu6_range(call)
    if bounds is None:
        return _activation_diag(call, inputs, out)
    return {"input": _relu6_ratio(out, bounds[1])}


def _hardtanh_through(call: RuleCall, x: Tensor, y: Tensor, factor) -> None:  # noqa: ANN001
    # as ReLU's: a pending ratio(x) equals ratio(y) where the mask is 1, so it becomes ratio(y)²
    bounds = _relu6_range(call)
    if bounds is None:
        factor.multiply(_activation_diag(call, {"input": x}, y)["input"])
        factor.aligned = False
        return
    r = _relu6_ratio(y, bounds[1])
    if factor.pending is x:
        r.mul_(r)
        factor.pending = None
    factor.multiply(r)


def _identity_diag(call: RuleCall, inputs: dict[str, Tensor], out: Tensor) -> dict[str, Tensor]:
    # (1 + sign x) ⊙ x/(|x|+ε) G = 2 x⁺/(|x|+ε) G
    return {"input": stabilised_ratio(out).clamp_(min=0)}


def _gelu_derivative(call: RuleCall, x: Tensor, ones: Tensor) -> Tensor:
    approximate = call.static.get("approximate", "none")
    return torch.ops.aten.gelu_backward(ones, x, approximate=approximate)


def _backward_kernel(kernel):  # noqa: ANN001, ANN202
    # f' at x by the op's own backward kernel with a gradient of ones: the numbers autograd's
    # local VJP gives, without its graph, the forward of f or stacking x and |x| (about 6x
    # faster). The ones are a real tensor: a broadcast scalar loses the vectorised loop
    return lambda call, x, ones: kernel(ones, x)


# f' in closed form where PyTorch has the kernel (no local autograd graph, no forward of f)
_DERIVATIVES = {
    "gelu": _gelu_derivative,
    "hardswish": _backward_kernel(torch.ops.aten.hardswish_backward),
    "hardsigmoid": _backward_kernel(torch.ops.aten.hardsigmoid_backward),
    "silu": _backward_kernel(torch.ops.aten.silu_backward),
}


# f' even (f'(−t) = f'(t)): f'(x) + sign(x) f'(|x|) = 2 f'(x) [x > 0] exactly. Computed as a
# difference it leaves rounding noise where x < 0, and where a whole input's relevance is
# analytically zero (a sigmoid gate with all pre-activations negative) the per-example
# normalisation, which is scale-invariant, would blow that noise up to unit size.
_EVEN_DERIVATIVE = frozenset({"sigmoid", "tanh", "hardsigmoid"})


# f(x) − f(−x) = x (x times a sigmoid-like gate g with g(t) + g(−t) = 1), so f'(x) + f'(−x) = 1
# and f'(x) + sign(x) f'(|x|) = (4 f'(x) − 1 + sign(x)) / 2: 2 f'(x) for x > 0, 2 f'(x) − 1 for
# x < 0, f'(0) = 1/2 at 0. One derivative instead of two, no |x|.
_ODD_COMPLEMENT = frozenset({"gelu", "silu", "hardswish"})


def _derivatives(call: RuleCall, *points: Tensor) -> list[Tensor]:
    """``f'`` at each of ``points``: in closed form where PyTorch has the kernel, else by one
    local autograd call on the stacked points."""
    closed = _DERIVATIVES.get(call.spec.op)
    if closed is not None:
        ones = torch.ones_like(points[0])
        return [closed(call, p, ones) for p in points]
    one = len(points) == 1
    with torch.enable_grad():
        leaf = (points[0] if one else torch.stack(points)).detach().requires_grad_(True)
        y = call.op(**call.arguments((leaf,)))
        (d,) = torch.autograd.grad(y, leaf, torch.ones_like(y))
    return [d] if one else list(d.unbind(0))


def _activation_diag(call: RuleCall, inputs: dict[str, Tensor], out: Tensor
                     ) -> dict[str, Tensor]:
    # VJP_x(f(x) + f(|x|); s) = (f'(x) + sign(x) f'(|x|)) ⊙ s, both derivatives once per forward
    x = inputs["input"]
    if call.spec.op in _EVEN_DERIVATIVE:
        (d,) = _derivatives(call, x)
        factor = keep_positive(d, x, inplace=True)
    elif call.spec.op in _ODD_COMPLEMENT:  # twice the formula: a positive constant, which the
        # per-example normalisation removes (as ReLU's 2)
        (d,) = _derivatives(call, x)
        factor = torch.sign(x).add_(d, alpha=4.0).sub_(1.0)
    else:
        d0, d1 = _derivatives(call, x, x.abs())
        factor = d0.addcmul_(torch.sign(x), d1)
    return {"input": stabilised_ratio(out).mul_(factor)}


ABSLRP.register(RuleSpec("relu", AbsLRPFunction, None, diag=_relu_diag, through=_relu_through))
ABSLRP.register(RuleSpec("dropout", AbsLRPFunction, None, diag=_identity_diag,
                         plain_vjp=PlainVJP((), lambda call, values, g: {"input": g})))
ABSLRP.register(RuleSpec("hardtanh", AbsLRPFunction, None, diag=_hardtanh_diag,
                         through=_hardtanh_through))
for _op in (
    "leaky_relu", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid",
    "elu", "softplus", "mish", "pow", "pointwise",
):
    ABSLRP.register(RuleSpec(_op, AbsLRPFunction, None, diag=_activation_diag))
