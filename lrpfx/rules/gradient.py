"""The gradient family of Ancona et al. (ICLR 2018), as rule sets on the same compiler:
attribution = (input − baseline) ⊙ modified gradient.

- ``gradient``: the map is ``∂f_c/∂x`` itself.
- ``gradient_x_input``: ``x ⊙ ∂f_c/∂x``.
- ``integrated_gradients`` (Sundararajan et al. 2017): ``(x − x̄) ⊙ ∫₀¹ ∂f_c/∂x(x̄ + α(x − x̄)) dα``,
  by Gauss–Legendre quadrature with ``steps`` nodes, the path points batched through one graph.
- ``deeplift_rescale`` (Shrikumar et al. 2017, Rescale rule): every element-wise non-linearity's
  derivative is replaced by the multiplier ``(f(x) − f(x̄)) / (x − x̄)``, with ``x̄`` the
  activation the same node had on the baseline input (one extra forward, recorded); map
  ``(x − x̄) ⊙ G_x``. Linear ops keep their gradient, which is their DeepLIFT multiplier. Other
  non-linear ops (max pooling, softmax, products, normalisation statistics) also keep the
  gradient: Rescale is defined for element-wise non-linearities only.

Every op runs natively (autograd's own backward) except the Rescale activations.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from lrpfx.core import ops
from lrpfx.rules.base import RuleCall, RuleSet, RuleSpec
from lrpfx.rules.registry import RULESETS


class Native:
    """No modified backward: the op itself, so autograd delivers the true gradient."""

    @staticmethod
    def apply(call: RuleCall, *inputs: Tensor) -> Tensor:
        return call.op(**call.arguments(inputs))


class RescaleFunction(torch.autograd.Function):
    """DeepLIFT Rescale for ``y = f(x)``: ``G_x = G_y ⊙ (f(x) − f(x̄)) / (x − x̄)``, falling
    back to ``f'(x)`` where ``|x − x̄|`` is below ``1e-6`` (the limit of the multiplier).

    ``x̄`` is recorded on the call when the explainer runs the baseline through the graph with
    ``call.recording = True``."""

    @staticmethod
    def forward(ctx, call: RuleCall, x: Tensor) -> Tensor:
        out = call.op(**call.arguments((x,)))
        if getattr(call, "recording", False):
            call.__dict__["reference"] = (x.detach(), out.detach())  # not a buffer
        ctx.call = call
        if ctx.needs_input_grad[1]:
            ctx.save_for_backward(x, out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        call: RuleCall = ctx.call
        x, out = ctx.saved_tensors
        reference = getattr(call, "reference", None)
        if reference is None or reference[0].shape != x.shape:
            raise RuntimeError("deeplift_rescale: no baseline activation recorded for "
                               f"node {call.node_name!r}; use Explainer.explain")
        xb, yb = reference
        dx = x - xb
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            (slope,) = torch.autograd.grad(call.op(**call.arguments((leaf,))), leaf,
                                           torch.ones_like(out))
        far = dx.abs() > 1e-6
        m = torch.where(far, (out - yb) / torch.where(far, dx, torch.ones_like(dx)), slope)
        return None, grad * m


def _define(name: str, description: str, attribution: str, options: dict[str, Any],
            rescale: bool = False) -> RuleSet:
    rs = RuleSet(name, description=description, options=options, seed="gradient",
                 attribution=attribution, validate=_validate)
    for op, kind in ops.OP_KIND.items():
        if kind == "source":
            continue
        function = RescaleFunction if rescale and kind == "activation" else Native
        rs.register(RuleSpec(op, function, None, relevance_args=ops.TENSOR_ARGS[op]
                             if kind in ("sum", "product") else ("input",)))
    RULESETS[name] = rs
    return rs


def _validate(options: dict[str, Any]) -> None:
    steps = options.get("steps", 1)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    size = options.get("internal_batch_size")
    if size is not None and (not isinstance(size, int) or size < 1):
        raise ValueError(f"internal_batch_size must be a positive int or None, got {size!r}")


_define("gradient", "the input gradient ∂f_c/∂x (saliency without the absolute value)",
        "gradient", {})
_define("gradient_x_input", "Gradient×Input, x ⊙ ∂f_c/∂x", "relevance", {})
_define("integrated_gradients",
        "Integrated Gradients (options steps=32, baseline=None → zeros, internal_batch_size)",
        "integral", {"steps": 32, "baseline": None, "internal_batch_size": None})
_define("deeplift_rescale", "DeepLIFT with the Rescale rule (option baseline=None → zeros)",
        "baseline", {"baseline": None}, rescale=True)
