"""Pass 2: map every spelling of an op to one canonical op.

Input: a GraphModule from either frontend (``torch.export`` gives ``aten.*`` calls;
``torch.fx.symbolic_trace`` gives ``nn.Module`` calls, ``F.*``/``torch.*`` functions and tensor
methods). Output: a new graph in which

- every op that carries relevance is a ``call_function`` of a function in :mod:`lrpfx.core.ops`, all
  arguments by keyword, module parameters made explicit as ``get_attr`` nodes (the spelling table,
  :mod:`lrpfx.core.spellings`, says which op each call is);
- RMS norms and L_p normalisations spelt out op by op are one node each
  (:mod:`lrpfx.passes.patterns`);
- ``scaled_dot_product_attention`` is scale, ``q @ kᵀ``, masked softmax, ``@ v``
  (:mod:`lrpfx.passes.attention`);
- in-place spellings (``relu_``, ``add_``, ``x += y``) are out-of-place ones, refused where the
  mutated tensor is read again afterwards (:mod:`lrpfx.passes.functionalize`);
- ``nn.Identity`` and eval-mode stochastic depth are gone;
- every node carries ``node.meta["lrpfx"]``, a :class:`NodeInfo` saying what it is.

The user's graph is never modified: the passes work on a copy.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from torch import fx

from lrpfx.core import ops
from lrpfx.core.spellings import (
    CANONICAL,
    IDENTITY,
    IO,
    PASSTHROUGH,
    PASSTHROUGH_NAMES,
    SHAPE,
    UNKNOWN,
    Call,
    Refuse,
    base_name,
    lookup,
    spelling,
)
from lrpfx.passes.attention import decompose_attention
from lrpfx.passes.functionalize import INPLACE_CONFLICT, functionalize
from lrpfx.passes.patterns import SOURCE, fuse_patterns


@dataclass
class NodeInfo:
    """What canonicalize learnt about one node."""

    kind: str
    """:data:`CANONICAL`, :data:`PASSTHROUGH`, :data:`SHAPE`, :data:`UNKNOWN` or :data:`IO`."""
    source_op: str
    """The op as the frontend spelt it (``aten.conv2d.default``, ``nn.Conv2d``, ``x.view``)."""
    module_path: str = ""
    """Dotted path of the innermost user module the op came from ("" for the top level)."""
    canonical: str | None = None
    """Name of the canonical op (a key of :data:`lrpfx.core.ops.CANONICAL_OPS`)."""
    problem: str | None = None
    """Why an op that looks supported is not (e.g. training-mode batch norm)."""
    extra: dict[str, Any] = field(default_factory=dict)


PROBLEM = "lrpfx_problem"
"""Meta key: why a pre-pass refused a node it recognised (e.g. attention with dropout)."""


def _module_path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    if stack:
        return str(list(stack.values())[-1][0])
    if node.op == "call_module":
        return str(node.target)
    return ""


def _copy_graph(gm: fx.GraphModule) -> fx.Graph:
    graph = fx.Graph()
    out = graph.graph_copy(gm.graph, {})
    graph.output(out)
    graph._codegen = copy.deepcopy(gm.graph._codegen)
    return graph


def canonicalize(gm: fx.GraphModule) -> fx.Graph:
    """Return a canonical copy of ``gm.graph`` (``gm`` itself is left unchanged).

    Parameters
    ----------
    gm
        A GraphModule from ``torch.export(...).module()`` or ``torch.fx.symbolic_trace``.

    Returns
    -------
    torch.fx.Graph
        A new graph whose nodes refer to attributes of ``gm`` and carry ``meta["lrpfx"]``.
    """
    graph = _copy_graph(gm)
    fuse_patterns(graph, gm)
    functionalize(graph, gm)
    decompose_attention(graph, gm, problem_key=PROBLEM)
    for node in list(graph.nodes):
        if node.op in ("placeholder", "output", "get_attr"):
            node.meta["lrpfx"] = NodeInfo(IO, node.op, _module_path(node))
            continue
        made = node.meta.pop(SOURCE, None)
        if made is not None:  # built by a pre-pass (a fused pattern, decomposed attention)
            canon = ops.OP_NAME.get(node.target)
            node.meta["lrpfx"] = NodeInfo(CANONICAL if canon else PASSTHROUGH, made,
                                          _module_path(node), canonical=canon)
            continue
        info = NodeInfo(UNKNOWN, spelling(node, gm), _module_path(node))
        node.meta["lrpfx"] = info
        try:
            _canonicalize_node(node, gm, graph, info)
        except Refuse as e:
            info.kind, info.problem = UNKNOWN, str(e)
    graph.lint()
    return graph


def _canonicalize_node(node: fx.Node, gm: fx.GraphModule, graph: fx.Graph, info: NodeInfo
                       ) -> None:
    problem = node.meta.pop(PROBLEM, None)
    if problem is not None:
        raise Refuse(problem)
    conflict = node.meta.pop(INPLACE_CONFLICT, None)  # refused only if the op is canonical
    name = base_name(node, gm)
    operands = node.all_input_nodes
    if node.op == "call_module":
        if node.target == "_guards_fn" or name == "_GuardsFn":
            info.kind = SHAPE
            return
    elif operands and all(a.meta["lrpfx"].kind == SHAPE for a in operands):
        info.kind = SHAPE  # arithmetic on sizes (`b, c, l = x.shape; c * l`)
        return
    if name in ("div", "truediv") and len(node.args) >= 2 and isinstance(node.args[0], fx.Node) \
            and isinstance(node.args[1], fx.Node) and node.args[1].meta["lrpfx"].kind == SHAPE:
        info.kind = PASSTHROUGH  # division by a size (`x / (h * w)`): a scaling by a number
        return

    module = gm.get_submodule(str(node.target)) if node.op == "call_module" else None
    extract = lookup(name, module)
    if extract is None:
        return

    def attr(key: str) -> fx.Node | None:  # a module's parameter or buffer as a get_attr node
        if getattr(module, key, None) is None:
            return None
        with graph.inserting_before(node):
            got = graph.get_attr(f"{node.target}.{key}")
        got.meta["lrpfx"] = NodeInfo(IO, "get_attr", str(node.target))
        return got

    def insert(fn: Any, args: tuple[Any, ...], why: str) -> fx.Node:
        with graph.inserting_before(node):
            new = graph.call_function(fn, args)
        new.meta["lrpfx"] = NodeInfo(PASSTHROUGH, why, info.module_path)
        return new

    call = Call(tuple(node.args), dict(node.kwargs), aten=node.op == "call_function" and
                hasattr(node.target, "_schema"), method=node.op == "call_method",
                module=module, attr=attr, insert=insert)
    result = extract(call)
    if result is None:
        return
    if result == IDENTITY:
        node.replace_all_uses_with(call.x)
        graph.erase_node(node)
        return
    if isinstance(result, str):
        info.kind = result
        return
    if conflict is not None:
        raise Refuse(conflict)
    canon, kwargs = result
    node.op = "call_function"
    node.target = ops.CANONICAL_OPS[canon]
    node.args = ()
    node.kwargs = kwargs
    info.kind = CANONICAL
    info.canonical = canon


__all__ = [
    "CANONICAL", "IO", "PASSTHROUGH", "PASSTHROUGH_NAMES", "SHAPE", "UNKNOWN", "NodeInfo",
    "canonicalize", "spelling",
]
