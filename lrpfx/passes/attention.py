"""Attention decomposition: ``scaled_dot_product_attention`` → scale, ``q @ kᵀ``, masked
softmax, ``@ v``.

SDPA is one fused kernel; spelt out, each step gets its rule (the matmul rules for the two
products, the softmax rule, DESIGN.md §2). ``nn.MultiheadAttention`` and Hugging Face's SDPA
attention reach this pass as ``aten.scaled_dot_product_attention`` (``torch.export`` decomposes
the module into projections around it); eager attention written with ``softmax`` needs nothing.
Runs on :func:`lrpfx.passes.canonicalize.canonicalize`'s copy of the graph.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from lrpfx.core import ops
from lrpfx.core.spellings import Call, base_name, spelling
from lrpfx.passes.patterns import SOURCE


def _refusal(a: Call) -> str | None:
    if a.get(4, "dropout_p", default=0.0):
        return "attention dropout_p > 0 (training mode) is not supported"
    if a.get(7, "enable_gqa", default=False):
        return "scaled_dot_product_attention with enable_gqa=True is not supported yet"
    return None


def decompose_attention(graph: fx.Graph, gm: fx.GraphModule, problem_key: str) -> None:
    """Replace every ``scaled_dot_product_attention`` call of ``graph`` by its steps (in place).

    A call that cannot be decomposed (dropout, grouped-query attention) is left as it is, with
    the reason under ``node.meta[problem_key]``.
    """
    for node in list(graph.nodes):
        if node.op not in ("call_function", "call_method") \
                or base_name(node, gm) != "scaled_dot_product_attention":
            continue
        a = Call.of(node)
        refusal = _refusal(a)
        if refusal is not None:
            node.meta[problem_key] = refusal
            continue
        source = f"{spelling(node, gm)} (decomposed)"

        def add(target: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                node: fx.Node = node, source: str = source) -> fx.Node:
            with graph.inserting_before(node):
                new = graph.call_function(target, args, kwargs)
            new.meta = {k: v for k, v in node.meta.items() if k != "val"}
            new.meta[SOURCE] = source
            return new

        q_s = add(ops.scale_by, (), dict(input=a.get(0, "query"),
                                         factor=a.get(6, "scale", default=None)))
        k_t = add(torch.transpose, (a.get(1, "key"), -2, -1), {})
        scores = add(ops.matmul, (), dict(input=q_s, other=k_t))
        probs = add(ops.softmax, (), dict(input=scores, dim=-1, mask=a.get(3, "attn_mask"),
                                          causal=bool(a.get(5, "is_causal", default=False))))
        out = add(ops.matmul, (), dict(input=probs, other=a.get(2, "value")))
        node.replace_all_uses_with(out)
        graph.erase_node(node)
