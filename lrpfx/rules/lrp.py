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
- LRP-αβ (``affine``, ``pool``, ``sum``, ``norm``):
  ``R_i = Σ_j (α z_ij⁺ / z_j⁺ − β z_ij⁻ / z_j⁻) R_j`` with ``α − β = 1``; LRP-z⁺ is α1β0
  without biases. The maps and the full equation: :mod:`lrpfx.rules.lrp_alpha_beta`.
- first layers: flat ``R_i = Σ_j R_j / Σ_i' 1`` and w² ``R_i = Σ_j w_ij² / Σ_i' w_i'j² R_j``
  (Montavon et al. 2017), which have no factor ``x_i``: these return ``R_x`` itself.
- residual merges (option ``residual``, Otsuki et al., ECCV 2024): ``y = a + b`` splits ``R_y``
  by ``|a| : |b|`` (``"ratio"``) or in halves (``"symmetric"``), so ``R_a + R_b = R_y``
  element-wise (where an operand is exactly 0 it cannot carry relevance under the contract and
  the other takes all).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from lrpfx.core import ops
from lrpfx.rules.abslrp import keep_positive
from lrpfx.rules.base import RuleCall, RuleSet, RuleSpec
from lrpfx.rules.linear import _shape_of, _weight
from lrpfx.rules.lrp_alpha_beta import _ab_derive, _ab_prepare, _ab_vjp
from lrpfx.rules.lrp_common import (
    _DIAG_OPS,
    _OUT,
    _diag_scale,
    _local_vjp,
    _safe_div,
    _weight_forward,
    _weight_transpose,
)
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


# ------------------------------------------------------------------------------------ helpers


def _sign0(t: Tensor) -> Tensor:
    """``sign`` with ``sign 0 = 1``: the ε stabiliser pushes ``z`` away from 0 either way."""
    return torch.where(t >= 0, 1.0, -1.0).to(t.dtype)


def _rho(out: Tensor, eps: float) -> Tensor:
    """``y / (y + ε sign y)``: 1 for LRP-0 (no division, no 0/0 at ``y = 0``)."""
    if eps == 0:
        return torch.ones_like(out)
    return out / (out + eps * _sign0(out))


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
