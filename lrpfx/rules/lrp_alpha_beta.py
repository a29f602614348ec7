"""LRP-αβ and LRP-z⁺ (Bach et al. 2015; Montavon et al., "Layer-wise relevance propagation: an
overview", 2019): the backward maps of the ``alphabeta``, ``alpha2beta1`` and ``zplus`` rule sets
(registered in :mod:`lrpfx.rules.lrp`), for the kinds ``affine``, ``pool``, ``sum`` and ``norm``.

With contributions ``z_ij = x_i w_ij`` and ``z_j^± = Σ_i z_ij^± + b_j^±``::

    R_i = Σ_j (α z_ij⁺ / z_j⁺ − β z_ij⁻ / z_j⁻) R_j            (α − β = 1)

LRP-z⁺ is α1β0 without biases (``z_j⁺ = Σ_i z_ij⁺``). Under the gradient×input contract
(DESIGN.md §3) a map returns ``G_x`` with ``x ⊙ G_x = R_x``; ``R_y = y ⊙ G_y``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from lrpfx.core import ops
from lrpfx.rules.abslrp import keep_positive
from lrpfx.rules.base import RuleCall
from lrpfx.rules.linear import _shape_of, _weight
from lrpfx.rules.lrp_common import (
    _OUT,
    _diag_scale,
    _local_vjp,
    _safe_div,
    _weight_forward,
    _weight_transpose,
)


def _alpha_beta(call: RuleCall) -> tuple[float, float, bool]:
    o = call.spec.options
    return float(o.get("alpha", 1.0)), float(o.get("beta", 0.0)), bool(o.get("bias", True))


def _split_bias(call: RuleCall, bias: bool, ndim: int) -> tuple[Tensor | float, Tensor | float]:
    """The bias's positive and negative parts, shaped to broadcast against an output of
    ``ndim`` dimensions (0 where the rule leaves the bias out or there is none)."""
    b = call.constant("bias")
    if not bias or b is None:
        return 0.0, 0.0
    shape = (1, -1, *[1] * (ndim - 2)) if call.spec.op in ("conv", "conv_transpose") else (-1,)
    return b.clamp(min=0).reshape(shape), b.clamp(max=0).reshape(shape)


def _ab_contributions(contrib: dict[str, Tensor], per_unit: Mapping[str, Tensor | float],
                      rest: Tensor, r: Tensor, alpha: float, beta: float
                      ) -> dict[str, Tensor]:
    """Element-wise αβ: ``y = Σ_k c_k + rest``, ``c_k = x_k · u_k``; ``G_k = R_k / x_k``."""
    zp = sum(c.clamp(min=0) for c in contrib.values()) + rest.clamp(min=0)
    zn = sum(c.clamp(max=0) for c in contrib.values()) + rest.clamp(max=0)
    sp, sn = _safe_div(r, zp), _safe_div(r, zn)
    out = {}
    for k, c in contrib.items():
        g = alpha * (c > 0) * sp
        if beta:
            g = g - beta * (c < 0) * sn
        out[k] = g * per_unit[k]
    return out


def _ab_prepare(call: RuleCall, inputs: dict[str, Tensor], out: Tensor) -> dict[str, Tensor]:
    """Once per forward, for dense layers and convolutions: the ratios ``y / z⁺`` (and ``y / z⁻``
    for β > 0), so that each backward pass is ``Lᵀ`` of ``G ⊙ ratio`` (``R / z = G ⊙ y / z``);
    for an input of either sign also ``x`` and ``−x`` for the masks ``[x > 0]``, ``[x < 0]``.
    Other ops keep their inputs."""
    if "pos_weight" not in call.derived_names:
        return {**inputs, _OUT: out}
    alpha, beta, bias = _alpha_beta(call)
    x = inputs["input"]
    wp, wn = call.derived("pos_weight"), call.derived("neg_weight")
    bp, bn = _split_bias(call, bias, out.dim())
    if "input" in call.nonneg:  # z⁺ = W⁺x, z⁻ = W⁻x
        zp = _weight_forward(call, x, wp) + bp
        zn = (_weight_forward(call, x, wn) + bn) if beta else None
        kept = {"input": _shape_of(x)}
    else:
        xp, xn = x.clamp(min=0), x.clamp(max=0)
        zp = _weight_forward(call, xp, wp) + _weight_forward(call, xn, wn) + bp
        zn = (_weight_forward(call, xp, wn) + _weight_forward(call, xn, wp) + bn) if beta \
            else None
        kept = {"input": x, "negated": torch.neg(x)}
    kept["pos_ratio"] = _scaled(_safe_div(out, zp, nonneg=True), alpha)  # z⁺ ≥ 0
    if zn is not None:
        kept["neg_ratio"] = _scaled(_safe_div(out, zn), beta)
    return kept


def _scaled(t: Tensor, c: float) -> Tensor:
    return t if c == 1 else t.mul_(c)


def _ab_prepared(call: RuleCall, inputs: dict[str, Tensor], g: Tensor) -> Tensor:
    """``G_x`` from :func:`_ab_prepare`'s tensors: ``α Lᵀ_{W⁺}(G ⊙ y/z⁺) − β Lᵀ_{W⁻}(G ⊙ y/z⁻)``
    for ``x ≥ 0``; otherwise each term's weight by the sign of ``x`` (``W⁺`` where ``x > 0``,
    ``W⁻`` where ``x < 0``, and the other way round for the β term), both halves of a term
    as one transposed op with ``[W⁺, W⁻]`` where the weight allows it."""
    x = inputs["input"]
    tr = _weight_transpose(call)
    wp, wn = call.derived("pos_weight"), call.derived("neg_weight")
    sp = g * inputs["pos_ratio"]
    sn = g * inputs["neg_ratio"] if "neg_ratio" in inputs else None
    if "negated" not in inputs:
        gx = tr(x, sp, wp)
        return gx if sn is None else gx.sub_(tr(x, sn, wn))

    def by_sign(s: Tensor, first: str) -> Tensor:  # T_first(s) [x > 0] + T_other(s) [x < 0]
        if "pn_weight" in call.derived_names:
            shape = (x.shape[0], 2 * x.shape[1], *x.shape[2:]) if call.spec.op == "conv" \
                else (*x.shape[:-1], 2 * x.shape[-1])
            w = call.derived("pn_weight" if first == "pos" else "np_weight")
            both = tr(_shape_of(x, shape), s, w)
            a, b = both.split(x.shape[1] if call.spec.op == "conv" else x.shape[-1],
                              dim=1 if call.spec.op == "conv" else -1)
        else:
            a, b = (tr(x, s, wp), tr(x, s, wn)) if first == "pos" else \
                (tr(x, s, wn), tr(x, s, wp))
        a = keep_positive(a, x, inplace=a.is_contiguous())
        return a.add_(keep_positive(b, inputs["negated"]))

    gx = by_sign(sp, "pos")
    return gx if sn is None else gx.sub_(by_sign(sn, "neg"))


def _ab_vjp(call: RuleCall, inputs: dict[str, Tensor], g: Tensor, out: Tensor | None
            ) -> dict[str, Tensor]:
    if out is None:  # prepared by _ab_prepare
        return {"input": _ab_prepared(call, inputs, g)}
    alpha, beta, bias = _alpha_beta(call)
    r = out * g
    kind = ops.OP_KIND[call.spec.op]
    if kind in ("affine", "norm"):  # batch norm; weighted ops are prepared (_ab_prepare)
        x = inputs["input"]
        a = _diag_scale(call, x)
        c = x * a
        rest = out - c if bias else torch.zeros_like(out)
        return _ab_contributions({"input": c}, {"input": a}, rest, r, alpha, beta)
    if kind == "sum":
        args = call.arguments(inputs)
        sign = {"input": 1.0, "other": -1.0 if call.spec.op == "sub" else 1.0}
        contrib = {k: sign[k] * args[k] for k in call.relevant}
        total = out.expand_as(r)
        rest = total - sum(c.expand_as(r) for c in contrib.values()) if bias \
            else torch.zeros_like(r)
        grads = _ab_contributions({k: c.expand_as(r) for k, c in contrib.items()},
                                  sign, rest, r, alpha, beta)
        return grads
    if kind == "pool":
        x = inputs["input"]
        xp, xn = x.clamp(min=0), x.clamp(max=0)
        zp = call.op(**call.arguments({**inputs, "input": xp}))
        zn = call.op(**call.arguments({**inputs, "input": xn}))
        tp = _local_vjp(call, inputs, _safe_div(r, zp))["input"]
        gx = alpha * (x > 0) * tp
        if beta:
            gx = gx - beta * (x < 0) * _local_vjp(call, inputs, _safe_div(r, zn))["input"]
        return {"input": gx}
    raise NotImplementedError(f"no αβ rule for kind {kind!r}")


def _ab_derive(call: RuleCall) -> dict[str, Tensor]:
    if call.spec.op not in ("conv", "conv_transpose", "linear"):
        return {}
    w = _weight(call)
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    derived = {"pos_weight": wp, "neg_weight": wn}
    if "input" not in call.nonneg and (call.spec.op == "linear" or (
            call.spec.op == "conv" and call.static["groups"] == 1)):
        # an input of either sign: T_{W⁺} and T_{W⁻} of one signal as one transposed op
        derived["pn_weight"] = torch.cat([wp, wn], dim=1)
        if _alpha_beta(call)[1]:
            derived["np_weight"] = torch.cat([wn, wp], dim=1)
    return derived
