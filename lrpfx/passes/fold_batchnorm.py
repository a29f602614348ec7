"""Canonicalisation step for the LRP rule sets: fold eval-mode batch norm into the conv or linear
op before it.

LRP practice (Montavon et al. 2019, §10.2; Zennit's ``SequentialMergeBatchNorm`` canonizer;
Kohlbrenner et al. 2020) explains ``BN(conv(x))`` as one affine layer with the merged parameters

    W' = W · γ/σ (per output channel),    b' = (b − μ) · γ/σ + β,    σ = √(running_var + ε_BN)

so that the rule (z⁺, ε, αβ) sees the whole affine map at once. Treating the batch norm as its own
layer instead gives different maps: its shift β − μγ/σ is then a second bias that absorbs or
injects relevance, and under z⁺ the sign flip of a negative γ sends the conv's positive
contributions through as negative relevance. absLRP does *not* fold (its reference code gives
batch norm its own rule, DESIGN.md §4.2); the rule sets that do say so with
:attr:`lrpfx.rules.base.RuleSet.fold_batch_norm`.

The fold is done on the canonical graph (after :func:`lrpfx.passes.canonicalize.canonicalize`):
a ``batch_norm`` whose input is a ``conv`` or 2-d ``linear`` with no other reader, and whose
parameters and statistics are constants, disappears; the conv/linear reads its weight and bias
from two new constant nodes that compute the merged parameters from the original ones (the
rewrite pass evaluates them once, at compile time). The forward is unchanged up to rounding.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, fx

from lrpfx.passes.canonicalize import CANONICAL, PASSTHROUGH, NodeInfo

__all__ = ["fold_batch_norm", "folded_bias", "folded_weight"]


def folded_weight(weight: Tensor, bn_weight: Tensor | None, running_var: Tensor, eps: float
                  ) -> Tensor:
    """``W · γ/σ`` with the scale applied to the output-channel dimension (dim 0)."""
    scale = torch.rsqrt(running_var + eps)
    if bn_weight is not None:
        scale = scale * bn_weight
    return weight * scale.reshape(-1, *([1] * (weight.dim() - 1))).to(weight.dtype)


def folded_bias(bias: Tensor | None, bn_weight: Tensor | None, bn_bias: Tensor | None,
                running_mean: Tensor, running_var: Tensor, eps: float) -> Tensor:
    """``(b − μ) · γ/σ + β`` (``b = 0`` without a bias, ``γ = 1``, ``β = 0`` without affine
    parameters)."""
    scale = torch.rsqrt(running_var + eps)
    if bn_weight is not None:
        scale = scale * bn_weight
    out = ((bias if bias is not None else 0) - running_mean) * scale
    return out + bn_bias if bn_bias is not None else out


def _constant(value: object) -> bool:
    """Does ``value`` not depend on any graph input?"""
    if not isinstance(value, fx.Node):
        return True
    seen, todo = set(), [value]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "placeholder":
            return False
        todo += n.all_input_nodes
    return True


def _foldable(bn: fx.Node) -> fx.Node | None:
    """The conv/linear node ``bn`` can be folded into, or None."""
    info = bn.meta.get("lrpfx")
    if not isinstance(info, NodeInfo) or info.kind != CANONICAL or info.canonical != "batch_norm":
        return None
    layer = bn.kwargs.get("input")
    if not isinstance(layer, fx.Node) or len(layer.users) != 1:
        return None  # another reader needs the un-normalised output
    linfo = layer.meta.get("lrpfx")
    if not isinstance(linfo, NodeInfo) or linfo.kind != CANONICAL \
            or linfo.canonical not in ("conv", "linear"):
        return None
    if linfo.canonical == "linear":
        val = layer.meta.get("val")
        if val is None or getattr(val, "dim", lambda: 0)() != 2:
            return None  # batch norm normalises dim 1, the features only for (B, F) outputs
    params = [bn.kwargs.get(k) for k in ("weight", "bias", "running_mean", "running_var")]
    if not all(_constant(p) for p in params) or not all(
            _constant(layer.kwargs.get(k)) for k in ("weight", "bias")):
        return None
    return layer


def fold_batch_norm(graph: fx.Graph) -> list[str]:
    """Fold every foldable eval-mode batch norm of a canonical graph into its conv/linear.

    Parameters
    ----------
    graph
        A canonical graph (modified in place: the pass pipeline's own copy).

    Returns
    -------
    list of str
        The names of the batch-norm nodes folded (each conv/linear also records its batch
        norm under ``meta["lrpfx"].extra["folded_batch_norm"]``).
    """
    folded = []
    for bn in list(graph.nodes):
        layer = _foldable(bn)
        if layer is None:
            continue
        k = bn.kwargs
        # a new conv/linear just before the batch norm: the batch norm's parameters may be
        # defined after the old one (symbolic_trace fetches module attributes where used)
        with graph.inserting_before(bn):
            w = graph.call_function(folded_weight, (layer.kwargs["weight"], k.get("weight"),
                                                    k["running_var"], k["eps"]))
            b = graph.call_function(folded_bias, (layer.kwargs.get("bias"), k.get("weight"),
                                                  k.get("bias"), k["running_mean"],
                                                  k["running_var"], k["eps"]))
            assert callable(layer.target)  # a canonical op: a function of lrpfx.core.ops
            merged = graph.call_function(layer.target, layer.args,
                                         {**layer.kwargs, "weight": w, "bias": b})
        for n in (w, b):
            n.meta["lrpfx"] = NodeInfo(PASSTHROUGH, "lrpfx.fold_batch_norm",
                                       layer.meta["lrpfx"].module_path)
        merged.meta = {**layer.meta, "lrpfx": copy.copy(layer.meta["lrpfx"])}
        merged.meta["lrpfx"].extra = {**layer.meta["lrpfx"].extra, "folded_batch_norm":
                                      bn.meta["lrpfx"].module_path or bn.name}
        if "val" in bn.meta:
            merged.meta["val"] = bn.meta["val"]
        bn.replace_all_uses_with(merged)
        graph.erase_node(bn)
        graph.erase_node(layer)
        folded.append(bn.name)
    graph.lint()
    return folded
