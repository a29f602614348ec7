"""Layer norm, RMS norm, group norm, L_p normalisation (``F.normalize``).

absLRP (DESIGN.md §4.1, reference semantics): mean and variance are constants (detached); the
absolute branch recomputes them from ``|x|``::

    h  = (x − μ(x)) / σ(x) · γ + β           σ(x) = sqrt(var(x) + ε), biased variance
    ha = (|x| − μ(|x|)) / σ(|x|) · |γ| + |β|
    VJP_x(h + ha; s) = s ⊙ (γ / σ(x) + sign(x) ⊙ |γ| / σ(|x|))

|γ| is computed once at compile time. RMS norm, group norm and ``F.normalize`` follow the same
pattern (their equations are below, with their rules).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lrpfx.rules.abslrp import ABSLRP, AbsLRPFunction, keep_positive, stabilised_ratio
from lrpfx.rules.base import RuleCall, RuleSpec


def inv_sigma(x: Tensor, ndim: int, eps: float) -> Tensor:
    # 1/σ over the last ndim dims, biased variance: layer norm's own kernel returns it (several
    # times faster on CPU than x.var)
    return torch.native_layer_norm(x, x.shape[-ndim:], None, None, eps)[2]


def _layer_norm_derive(call: RuleCall) -> dict[str, Tensor]:
    weight = call.constant("weight")
    return {} if weight is None else {"abs_weight": weight.abs()}


def _statistics_diag(statistic, weight_shape):  # noqa: ANN001, ANN202 - two small closures
    """The factor ``y/(|y|+EPS) ⊙ (γ/σ(x) + sign(x) ⊙ |γ|/σ(|x|))`` (computed once per forward;
    ``VJP_x = F ⊙ G``) for a normalisation with statistic ``1/σ = statistic(call, x)``."""

    def diag(call: RuleCall, inputs: dict[str, Tensor], out: Tensor) -> dict[str, Tensor]:
        x = inputs["input"]
        plain = statistic(call, x)
        absolute = torch.sign(x).mul_(statistic(call, x.abs()))
        weight = call.constant("weight")
        if weight is not None:
            shape = weight_shape(x, weight)
            plain = plain * weight.reshape(shape)
            absolute = absolute.mul_(call.derived("abs_weight").reshape(shape))
        return {"input": stabilised_ratio(out).mul_(absolute.add_(plain))}

    return diag


def _layer_norm_plain(call: RuleCall, args: dict) -> Tensor:
    x, shape = args["input"], args["normalized_shape"]
    _, mean, rstd = torch.native_layer_norm(x.detach(), shape, None, None, args["eps"])
    return _affine((x - mean) * rstd, args["weight"], args["bias"])


def _affine(y: Tensor, weight: Tensor | None, bias: Tensor | None,
            shape: tuple[int, ...] | None = None) -> Tensor:
    """``y · weight + bias``, the parameters reshaped to ``shape`` first when given."""
    if weight is not None:
        y = y * (weight if shape is None else weight.reshape(shape))
    if bias is not None:
        y = y + (bias if shape is None else bias.reshape(shape))
    return y


ABSLRP.register(RuleSpec(
    "layer_norm", AbsLRPFunction, None, derive=_layer_norm_derive, plain=_layer_norm_plain,
    diag=_statistics_diag(
        lambda call, x: inv_sigma(x, len(call.static["normalized_shape"]), call.static["eps"]),
        lambda x, w: w.shape)))


# ----------------------------------------------------------------------------- RMS norm
#
#   h  = x / r(x) · w                r(x) = sqrt(mean(x²) + ε) over the normalised dims
#   ha = |x| / r(|x|) · |w|          r(|x|) = r(x): the squares are the same
#   VJP_x(h + ha; s) = s ⊙ (w + sign(x) ⊙ |w|) / r(x)          (w = 1 without a weight)
#
# so R_x = 2 (x w)⁺ / r(x) ⊙ s: the statistic is a constant (detached), as in layer norm.
# With s = G ⊙ y/(|y| + EPS) this is the element-wise factor y/(|y|+EPS) ⊙ w [x w > 0] / r(x)
# (the constant 2 dropped), computed once per forward.


def _rms(x: Tensor, ndim: int, eps: float | None) -> Tensor:
    if eps is None:
        eps = torch.finfo(x.dtype).eps
    dims = tuple(range(-ndim, 0))
    return torch.sqrt(x.pow(2).mean(dims, keepdim=True) + eps)


def _rms_norm_diag(call: RuleCall, inputs: dict[str, Tensor], out: Tensor) -> dict[str, Tensor]:
    x = inputs["input"]
    ratio = stabilised_ratio(out)
    inv = 1.0 / _rms(x, len(call.static["normalized_shape"]), call.static["eps"]).to(out.dtype)
    weight = call.constant("weight")
    if weight is None:
        return {"input": keep_positive(ratio.mul_(inv), x, inplace=True)}
    w = weight.to(out.dtype)
    return {"input": keep_positive(ratio.mul_(inv).mul_(w), x * w, inplace=True)}


def _rms_norm_plain(call: RuleCall, args: dict) -> Tensor:
    x, weight = args["input"], args["weight"]
    y = x / _rms(x.detach(), len(args["normalized_shape"]), args["eps"])
    return y if weight is None else weight * y.to(weight.dtype)


ABSLRP.register(RuleSpec("rms_norm", AbsLRPFunction, None, diag=_rms_norm_diag,
                         plain=_rms_norm_plain))


# ----------------------------------------------------------------------------- group norm
#
# Layer norm's rule with the statistics per (example, channel group) over the group's channels
# and all spatial positions, and a per-channel affine (γ, β on dim 1):
#
#   VJP_x(h + ha; s) = s ⊙ (γ / σ_g(x) + sign(x) ⊙ |γ| / σ_g(|x|))


def _group_inv_sigma(x: Tensor, groups: int, eps: float) -> Tensor:
    grouped = x.reshape(x.shape[0], groups, -1)
    inv = torch.rsqrt(grouped.var(-1, unbiased=False, keepdim=True) + eps)
    return inv.expand_as(grouped).reshape(x.shape)


def _group_norm_plain(call: RuleCall, args: dict) -> Tensor:
    x, groups, eps = args["input"], args["num_groups"], args["eps"]
    grouped = x.reshape(x.shape[0], groups, -1)
    mean = grouped.detach().mean(-1, keepdim=True)
    inv = torch.rsqrt(grouped.detach().var(-1, unbiased=False, keepdim=True) + eps)
    y = ((grouped - mean) * inv).reshape(x.shape)
    return _affine(y, args["weight"], args["bias"], (1, -1, *[1] * (x.dim() - 2)))


ABSLRP.register(RuleSpec(
    "group_norm", AbsLRPFunction, None, derive=_layer_norm_derive, plain=_group_norm_plain,
    diag=_statistics_diag(
        lambda call, x: _group_inv_sigma(x, call.static["num_groups"], call.static["eps"]),
        lambda x, w: (1, -1, *[1] * (x.dim() - 2)))))


# ----------------------------------------------------------------------------- L_p normalisation
#
#   h  = x / n(x)         n(x) = max(‖x‖_p, eps) over dim, a constant (detached)
#   ha = |x| / n(|x|)     n(|x|) = n(x)
#   VJP_x(h + ha; s) = s ⊙ (1 + sign x) / n(x)
#
# so R_x = 2 x⁺ / n(x) ⊙ s: the factor y/(|y|+EPS) ⊙ [x > 0] / n(x) (the 2 dropped).


def _normalize_diag(call: RuleCall, inputs: dict[str, Tensor], out: Tensor) -> dict[str, Tensor]:
    x = inputs["input"]
    st = call.static
    norm = torch.linalg.vector_norm(x, st["p"], list(st["dim"]), keepdim=True)
    if st["eps"] is not None:
        norm = norm.clamp_min(st["eps"])
    return {"input": keep_positive(stabilised_ratio(out), x, inplace=True).div_(norm)}


def _normalize_plain(call: RuleCall, args: dict) -> Tensor:
    x = args["input"]
    norm = torch.linalg.vector_norm(x.detach(), args["p"], list(args["dim"]), keepdim=True)
    return x / (norm if args["eps"] is None else norm.clamp_min(args["eps"]))


ABSLRP.register(RuleSpec("normalize", AbsLRPFunction, None, diag=_normalize_diag,
                         plain=_normalize_plain))
