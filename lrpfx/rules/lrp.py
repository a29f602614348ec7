"""Classic LRP: LRP-0, LRP-ε, LRP-αβ, LRP-z⁺, and flat / w² for first layers (Bach et al. 2015;
Montavon et al., "Layer-wise relevance propagation: an overview", 2019), written once per op
kind (:data:`lrpfx.core.ops.OP_KIND`), so every canonical op gets a rule in every set.

Under the gradient×input contract (DESIGN.md §3) a rule returns ``G_x`` with
``x ⊙ G_x = R_x``; ``R_y = y ⊙ G_y``. With ``ρ_ε(y) = y / (y + ε·sign y)`` (``sign 0 = 1``):

- ``affine``, ``pool``, ``sum`` (``y = L x + b``), the z-rules::

      R_x = x ⊙ Lᵀ(R_y / (y + ε sign y))        G_x = Lᵀ(G_y ⊙ ρ_ε(y))

  (``Lᵀ`` is the op's own input-VJP: LRP-0 is the gradient at linear ops).
- ``norm`` (layer norm; batch norm is ``affine``): statistics are constants, ``y = a ⊙ x + c``
  with ``a = γ/σ``: ``G_x = a ⊙ G_y ⊙ ρ_ε(y)`` (conservative layer norm, Ali et al. 2022).
- ``activation``: relevance passes unchanged, ``R_x = R_y``: ``G_x = G_y ⊙ f(x)/x``
  (Ancona et al. 2018: ε-LRP replaces ``f'`` by ``f(z)/z``).
- ``product`` of two activations: the uniform rule of AttnLRP (Achtibat et al. 2024), each
  operand gets half of the z-rule relevance; with one constant operand, the z-rule.
- ``max``, ``softmax``, ``identity``: the gradient (winner takes all; AttnLRP's softmax rule
  ``R_x = x ⊙ (R_y − y ΣR_y)`` is exactly Gradient×Input; dropout is the identity in eval).
- LRP-αβ (``affine``, ``pool``, ``sum``, ``norm``), with contributions ``z_ij = x_i w_ij`` and
  ``z_j^± = Σ_i z_ij^± + b_j^±``::

      R_i = Σ_j (α z_ij⁺ / z_j⁺ − β z_ij⁻ / z_j⁻) R_j            (α − β = 1)

  LRP-z⁺ is α1β0 without biases (``z_j⁺ = Σ_i z_ij⁺``).
- first layers: flat ``R_i = Σ_j R_j / Σ_i' 1`` and w² ``R_i = Σ_j w_ij² / Σ_i' w_i'j² R_j``
  (Montavon et al. 2017), which have no factor ``x_i``: these return ``R_x`` itself.
- residual merges (option ``residual``, Otsuki et al., ECCV 2024): ``y = a + b`` splits ``R_y``
  by ``|a| : |b|`` (``"ratio"``) or in halves (``"symmetric"``), so ``R_a + R_b = R_y``
  element-wise (where an operand is exactly 0 it cannot carry relevance under the contract and
  the other takes all).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from lrpfx.core import ops
from lrpfx.rules.abslrp import keep_positive
from lrpfx.rules.base import RuleCall, RuleSet, RuleSpec
from lrpfx.rules.linear import (
    _bn_scale,
    _conv_transpose,
    _deconv_transpose,
    _linear_transpose,
    _shape_of,
    _weight,
)
from lrpfx.rules.normalization import inv_sigma
from lrpfx.rules.registry import RULESETS

Vjp = Callable[[RuleCall, dict[str, Tensor], Tensor, Tensor], dict[str, Tensor]]


class LRPFunction(torch.autograd.Function):
    """Forward: the op unchanged. Backward: ``spec.vjp(call, inputs, G_y, y) -> {name: G_x}``
    (or ``R_x`` for first-layer rules, see :attr:`RuleSpec.returns_relevance`)."""

    @staticmethod
    def forward(ctx, call: RuleCall, *inputs: Tensor) -> Tensor:
        out = call.op(**call.arguments(inputs))
        ctx.call = call
        if not any(ctx.needs_input_grad[1:]):
            return out
        named = dict(zip(call.relevant + call.runtime, inputs))
        ctx.shapes = {k: named[k].shape for k in call.relevant}
        # the relevance-reading inputs (x ⊙ G_x) are kept whatever the rule reads
        ctx.as_relevance = tuple(k for k in call.relevant if k in call.as_relevance
                                 and not call.spec.returns_relevance)
        if call.spec.prepare is None:
            prepared = {**named, _OUT: out}
        else:  # what the backward reads, computed once for both passes of a contrastive map
            prepared = call.spec.prepare(call, named, out)
        ctx.prepared_names = tuple(prepared)
        ctx.save_for_backward(*prepared.values(), *[named[k] for k in ctx.as_relevance])
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        call: RuleCall = ctx.call
        saved = ctx.saved_tensors
        n = len(ctx.prepared_names)
        prepared = dict(zip(ctx.prepared_names, saved[:n]))
        kept = dict(zip(ctx.as_relevance, saved[n:]))
        assert call.spec.vjp is not None  # every LRP spec has one
        # a spec without prepare reads its inputs and its output, which is passed apart
        grads = call.spec.vjp(call, prepared, grad, prepared.pop(_OUT, None))
        result = []
        for name in call.relevant:
            g = grads[name]
            if g.shape != ctx.shapes[name]:
                g = g.sum_to_size(ctx.shapes[name])
            if name in kept:
                g = kept[name] * g
            result.append(g)
        return (None, *result, *[None] * len(call.runtime))


_OUT = "_out"
"""The output's key among the saved tensors of a spec without ``prepare``."""


# ------------------------------------------------------------------------------------ helpers


def _sign0(t: Tensor) -> Tensor:
    """``sign`` with ``sign 0 = 1``: the ε stabiliser pushes ``z`` away from 0 either way."""
    return torch.where(t >= 0, 1.0, -1.0).to(t.dtype)


def _rho(out: Tensor, eps: float) -> Tensor:
    """``y / (y + ε sign y)``: 1 for LRP-0 (no division, no 0/0 at ``y = 0``)."""
    if eps == 0:
        return torch.ones_like(out)
    return out / (out + eps * _sign0(out))


def _safe_div(a: Tensor, b: Tensor, nonneg: bool = False) -> Tensor:
    """``a / b``, 0 where ``b = 0``. ``nonneg``: ``b ≥ 0`` is known.

    Divides first and then zeroes the quotients at ``b = 0`` (±inf, nan) with the select of
    ReLU's backward kernel (:func:`keep_positive` on ``|b|``): on CPU about 3x faster than
    ``torch.where`` with its mask, which takes a slow path."""
    q = a / b
    if q.shape == b.shape and q.dtype == b.dtype:
        return keep_positive(q, b if nonneg else b.abs(), inplace=True)
    nonzero = b != 0
    return torch.where(nonzero, a / torch.where(nonzero, b, 1.0), 0.0)


def _local_vjp(call: RuleCall, inputs: dict[str, Tensor], s: Tensor,
               names: tuple[str, ...] | None = None) -> dict[str, Tensor]:
    """``Lᵀ s``: the op's VJP by local autograd (ops linear in each input: pooling, products)."""
    names = call.relevant if names is None else names
    with torch.enable_grad():
        leaves = {k: inputs[k].detach().requires_grad_(True) for k in names}
        rest = {k: v for k, v in inputs.items() if k not in leaves}
        y = call.op(**call.arguments({**leaves, **rest}))
        grads = torch.autograd.grad(y, list(leaves.values()), s)
    return dict(zip(leaves, grads))


def _weight_transpose(call: RuleCall) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    t = {"conv": _conv_transpose, "conv_transpose": _deconv_transpose}.get(
        call.spec.op, _linear_transpose)
    return lambda x, s, w: t(call, x, s, w)


def _weight_forward(call: RuleCall, x: Tensor, w: Tensor) -> Tensor:
    return call.op(**{**call.arguments({"input": x}), "weight": w, "bias": None})


_DIAG_OPS = frozenset({"batch_norm", "layer_norm", "rms_norm", "group_norm", "normalize"})


def _diag_scale(call: RuleCall, x: Tensor) -> Tensor:
    """``a`` of ``y = a ⊙ x + c`` for normalisation ops with statistics held constant."""
    if call.spec.op == "batch_norm":
        return _bn_scale(call).reshape(1, -1, *[1] * (x.dim() - 2))
    if call.spec.op == "layer_norm":
        a = inv_sigma(x, len(call.static["normalized_shape"]), call.static["eps"])
        w = call.constant("weight")
        return a if w is None else a * w
    if call.spec.op == "rms_norm":
        dims = tuple(range(-len(call.static["normalized_shape"]), 0))
        eps = call.static.get("eps") or torch.finfo(x.dtype).eps
        a = torch.rsqrt(x.pow(2).mean(dims, keepdim=True) + eps)
        w = call.constant("weight")
        return a if w is None else a * w
    if call.spec.op == "group_norm":
        g = x.reshape(x.shape[0], call.static["num_groups"], -1)
        a = torch.rsqrt(g.var(-1, unbiased=False, keepdim=True) + call.static["eps"])
        a = a.expand_as(g).reshape(x.shape)
        w = call.constant("weight")
        return a if w is None else a * w.reshape(1, -1, *[1] * (x.dim() - 2))
    if call.spec.op == "normalize":
        st = call.static
        norm = torch.linalg.vector_norm(x, st["p"], list(st["dim"]), keepdim=True)
        return 1 / (norm if st["eps"] is None else norm.clamp_min(st["eps"]))
    raise NotImplementedError(f"no statistics-constant form for {call.spec.op}")


# ------------------------------------------------------------------------- z-rules (0 and ε)


def _eps(call: RuleCall) -> float:
    return float(call.spec.options.get("epsilon", 0.0))


def _z_prepare(call: RuleCall, inputs: dict[str, Tensor], out: Tensor) -> dict[str, Tensor]:
    """Once per forward: ``ρ_ε(y)`` (affine, sum; none for LRP-0) and the input's shape, or, for
    normalisations, the whole factor ``a ⊙ ρ_ε(y)``. Pooling and products keep their inputs."""
    kind, eps = ops.OP_KIND[call.spec.op], _eps(call)
    if kind == "affine" and call.spec.op != "batch_norm":
        kept = {"input": _shape_of(inputs["input"])}
        return {**kept, "rho": _rho(out, eps)} if eps else kept
    if kind == "sum":
        return {"rho": _rho(out, eps)} if eps else {}
    if kind in ("affine", "norm"):
        return {"factor": _rho(out, eps) * _diag_scale(call, inputs["input"])}
    return {**inputs, _OUT: out}


def _z_vjp(call: RuleCall, inputs: dict[str, Tensor], g: Tensor, out: Tensor | None
           ) -> dict[str, Tensor]:
    kind = ops.OP_KIND[call.spec.op]
    if out is None:  # prepared by _z_prepare
        if "factor" in inputs:
            return {"input": g * inputs["factor"]}
        s = g * inputs["rho"] if "rho" in inputs else g
        if kind == "sum":
            return {k: -s if (call.spec.op == "sub" and k == "other") else s
                    for k in call.relevant}
        return {"input": _weight_transpose(call)(inputs["input"], s, _weight(call))}
    s = g * _rho(out, _eps(call))
    if kind == "affine" and call.spec.op != "batch_norm":
        return {"input": _weight_transpose(call)(inputs["input"], s, _weight(call))}
    if kind in ("affine", "norm"):
        x = inputs["input"]
        return {"input": s * _diag_scale(call, x)}
    if kind == "sum":
        return {k: -s if (call.spec.op == "sub" and k == "other") else s for k in call.relevant}
    grads = _local_vjp(call, inputs, s)
    if kind == "product" and len(call.relevant) == 2:
        grads = {k: v * 0.5 for k, v in grads.items()}
    return grads


def _pass_prepare(call: RuleCall, inputs: dict[str, Tensor], out: Tensor) -> dict[str, Tensor]:
    x = inputs["input"]
    if call.spec.op == "relu" or (call.spec.op == "hardtanh"
                                  and float(call.static.get("min_val", -1.0)) == 0):
        # f(x) = 0 for x <= 0: the factor is f(x)/x on x > 0 and 0 elsewhere (ReLU, ReLU6)
        q = out / x
        if q.shape == x.shape and q.dtype == x.dtype:
            return {"factor": keep_positive(q, x, inplace=True)}
    return {"factor": _safe_div(out, x)}


def _pass_vjp(call: RuleCall, inputs: dict[str, Tensor], g: Tensor, out: Tensor | None
              ) -> dict[str, Tensor]:
    """``R_x = R_y``: ``G_x = G_y ⊙ f(x)/x`` (the factor ``f(x)/x`` once per forward)."""
    return {"input": g * inputs["factor"]}


def _gradient_vjp(call: RuleCall, inputs: dict[str, Tensor], g: Tensor, out: Tensor
                  ) -> dict[str, Tensor]:
    return _local_vjp(call, inputs, g)


# ------------------------------------------------------------------------------------ αβ, z⁺


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


# ----------------------------------------------------------------------- first layers: flat, w²


def _first_vjp(square: bool) -> Vjp:
    def vjp(call: RuleCall, inputs: dict[str, Tensor], g: Tensor, out: Tensor | None
            ) -> dict[str, Tensor]:
        w = call.derived("first_weight")
        return {"input": _weight_transpose(call)(inputs["input"], g * inputs["ratio"], w)}

    return vjp


def _first_prepare(call: RuleCall, inputs: dict[str, Tensor], out: Tensor) -> dict[str, Tensor]:
    """Once per forward: ``y / z`` with ``z = Σ_i w_ij`` (flat: ``Σ_i 1``; w²: ``Σ_i w_ij²``)."""
    x = inputs["input"]
    z = _weight_forward(call, torch.ones_like(x), call.derived("first_weight"))
    return {"input": _shape_of(x), "ratio": _safe_div(out, z, nonneg=True)}  # z ≥ 0


def _first_derive(square: bool) -> Callable[[RuleCall], dict[str, Tensor]]:
    def derive(call: RuleCall) -> dict[str, Tensor]:
        w = _weight(call)
        return {"first_weight": w * w if square else torch.ones_like(w)}

    return derive


# ------------------------------------------------------------------------ residual splitting


def _split(plain: Vjp) -> Vjp:
    def vjp(call: RuleCall, inputs: dict[str, Tensor], g: Tensor, out: Tensor
            ) -> dict[str, Tensor]:
        mode = call.spec.options.get("residual")
        if mode is None:
            return plain(call, inputs, g, out)
        a, b = inputs["input"].expand_as(out), inputs["other"].expand_as(out)
        r = out * g
        if mode == "ratio":
            total = a.abs() + b.abs()
            wa = torch.where(total > 0, a.abs() / torch.where(total > 0, total, 1.0), 0.5)
        else:
            wa = torch.where(a == 0, 0.0, torch.where(b == 0, 1.0, 0.5)).to(r.dtype)
        return {"input": _safe_div(r * wa, a), "other": _safe_div(r * (1 - wa), b)}

    return vjp


# ------------------------------------------------------------------------------- registration


def _options_into(spec: RuleSpec, options: dict[str, Any]) -> RuleSpec:
    return replace(spec, options=dict(options))


def _validate(options: dict[str, Any]) -> None:
    if "epsilon" in options and not float(options["epsilon"]) >= 0:
        raise ValueError(f"epsilon must be >= 0, got {options['epsilon']}")
    if "alpha" in options:
        alpha, beta = float(options["alpha"]), float(options["beta"])
        if beta < 0 or abs(alpha - beta - 1) > 1e-12:
            raise ValueError(f"LRP-αβ needs α − β = 1 and β >= 0; got α={alpha}, β={beta}")
    if options.get("residual") not in (None, "ratio", "symmetric"):
        raise ValueError(f"residual must be None, 'ratio' or 'symmetric'; "
                         f"got {options['residual']!r}")


_KIND_VJP_Z: dict[str, Vjp] = {
    "affine": _z_vjp, "pool": _z_vjp, "sum": _z_vjp, "norm": _z_vjp, "product": _z_vjp,
    "activation": _pass_vjp, "max": _gradient_vjp, "softmax": _gradient_vjp,
    "identity": _gradient_vjp,
}
_PREPARE: dict[Vjp, Callable[[RuleCall, dict[str, Tensor], Tensor], dict[str, Tensor]]] = {
    _z_vjp: _z_prepare, _pass_vjp: _pass_prepare, _ab_vjp: _ab_prepare,
}
"""What each backward map reads, computed once per forward (``RuleSpec.prepare``): a contrastive
map runs two backward passes from one forward, and the ratios ``y / z`` do not depend on ``G``."""
_KIND_VJP_AB: dict[str, Vjp] = {
    **_KIND_VJP_Z, "affine": _ab_vjp, "pool": _ab_vjp, "sum": _ab_vjp, "norm": _ab_vjp,
}


def _define(name: str, description: str, kind_vjp: dict[str, Vjp], options: dict[str, Any],
            derive: Callable[[RuleCall], dict[str, Tensor]] | None = None,
            first: str | None = None) -> RuleSet:
    options = {**options, "residual": None}
    _validate(options)
    rs = RuleSet(name, description=description, options=options, seed="gradient",
                 validate=_validate, fold_batch_norm=True)
    for op, kind in ops.OP_KIND.items():
        if kind == "norm" and op not in _DIAG_OPS:
            continue  # no statistics-constant form known: reported unsupported, not guessed
        if kind in kind_vjp:
            rs.register(RuleSpec(op, LRPFunction, kind_vjp[kind], relevance_args=ops.TENSOR_ARGS[
                op] if kind in ("sum", "product") else ("input",),
                derive=derive if kind == "affine" else None, options=options,
                configure=_options_into, prepare=_PREPARE.get(kind_vjp[kind])))
    rs.merge["add"] = replace(rs.specs["add"], vjp=_split(kind_vjp["sum"]), prepare=None,
                              name=f"{name} (residual split)")
    if first is not None:
        square = first == "wsquare"
        for op in ("conv", "linear"):
            rs.first[op] = RuleSpec(op, LRPFunction, _first_vjp(square),
                                    derive=_first_derive(square), options=options,
                                    configure=_options_into, returns_relevance=True,
                                    prepare=_first_prepare,
                                    name=first)
    RULESETS[name] = rs
    return rs


_define("lrp0", "LRP-0 (Bach et al. 2015): z-rule without stabiliser", _KIND_VJP_Z, {})
_define("epsilon", "LRP-ε: z-rule with stabiliser ε·sign(z) (option epsilon, default 0.25)",
        _KIND_VJP_Z, {"epsilon": 0.25})
_define("alphabeta", "LRP-αβ (options alpha, beta with α − β = 1; default α1β0)", _KIND_VJP_AB,
        {"alpha": 1.0, "beta": 0.0, "bias": True, "epsilon": 1e-9}, derive=_ab_derive)
_define("alpha2beta1", "LRP-α2β1", _KIND_VJP_AB,
        {"alpha": 2.0, "beta": 1.0, "bias": True, "epsilon": 1e-9}, derive=_ab_derive)
_define("zplus", "LRP-z⁺ (α1β0 without biases)", _KIND_VJP_AB,
        {"alpha": 1.0, "beta": 0.0, "bias": False, "epsilon": 1e-9}, derive=_ab_derive)
_define("flat", "flat rule on first layers, LRP-ε elsewhere", _KIND_VJP_Z, {"epsilon": 0.25},
        first="flat")
_define("wsquare", "w² rule on first layers, LRP-ε elsewhere", _KIND_VJP_Z, {"epsilon": 0.25},
        first="wsquare")
