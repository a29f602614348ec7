"""Pass 1b: long-tail ops, by op property and by PyTorch's own decompositions.

Runs on the captured graph before :mod:`lrpfx.passes.canonicalize`. A node that canonicalize
leaves without a canonical op (or whose canonical op has no rule in the rule set) gets, in order:

1. **Inlining** of the higher-order ops ``wrap_with_set_grad_enabled`` and
   ``wrap_with_autocast`` (with autocast disabled: the body runs as it is), whose bodies export
   keeps in submodules: their ops join the graph and are canonicalised like any other.
2. **A property probe** (ops with one tensor argument): the op is run on random float64 inputs
   of the node's shape. Linear (``f(ax + by) = a f(x) + b f(y)``) with non-negative
   coefficients (``f(u) ≥ 0`` for a dense and for one-hot ``u ≥ 0``, i.e. columns of its
   matrix) makes it :func:`lrpfx.core.ops.positive_linear`, whose one absLRP rule is
   ``ha = f(|x|)`` (DESIGN.md §4.1): nearest/bilinear upsampling, reflection or replication
   padding, ``repeat_interleave``, ``cumsum``, ... Element-wise (changing some elements changes
   no other output, and ``f`` commutes with a permutation of the elements, so it applies one
   scalar function) makes it :func:`lrpfx.core.ops.pointwise`,
   ruled like any activation: ``exp``, ``abs``, ``sqrt``, ``erf``, ... An op that picks each
   output among its input's elements by value (not linear) makes it
   :func:`lrpfx.core.ops.selection`, ruled like max pooling: ``amax``, ``max`` over a dim.
3. **Decomposition** with PyTorch's tables (``torch._decomp``: the op's own entry, else core
   ATen's), traced with ``make_fx`` on the node's fake tensors (symbolic sizes stay symbolic)
   and inlined: ``addcmul``, ``baddbmm``, ``logsumexp``, ``glu``, bicubic upsampling,
   ``linalg_vector_norm``, ... become ops that have rules. The new nodes go through the same
   steps (a few rounds).

What is left stays unsupported (strict mode refuses it) and the coverage report says what was
tried (``NodeReport.decomposition``). Nodes made or rewritten here carry
``meta["lrpfx_decomposition"]``: a line saying where they come from. Graphs without fake-tensor
metadata (``symbolic_trace``) get step 1 only. The captured module is never modified: a new
``GraphModule`` is returned (the captured one itself when nothing applies).
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.utils import _pytree as pytree

from lrpfx.core import ops
from lrpfx.core.report import DECOMPOSITION
from lrpfx.core.spellings import spelling
from lrpfx.passes.canonicalize import CANONICAL, IO, UNKNOWN, canonicalize
from lrpfx.passes.patterns import SOURCE
from lrpfx.rules.base import RuleSet

ROUNDS = 4
"""Decomposition rounds: a decomposition's own ops without rules are decomposed in turn."""

_WRAPPERS = ("wrap_with_set_grad_enabled", "wrap_with_autocast")


# ----------------------------------------------------------------------------- the property


def probe(fn: Callable[[Tensor], Tensor], example: Tensor, seed: int = 0) -> str | None:
    """The property that lets one generic rule serve the op ``y = fn(x)``.

    Returns ``"positive_linear"`` when ``fn`` is linear with non-negative coefficients,
    ``"pointwise"`` when it applies one scalar function to every element, ``"selection"`` when
    it is neither but every output is one of its input's elements and it commutes with scaling
    by 2 (a choice by value: ``amax``, sorted values), None otherwise (or
    when it cannot be run in float64 on an input shaped like ``example``). Random probes: a
    non-linear op passes the linearity check only by accident of the draw (tolerance 1e-9 in
    float64); the non-negativity check reads ``fn(|x|)`` and ``fn(e_i)`` for up to 8 one-hot
    ``e_i`` (columns of the op's matrix).
    """
    if not example.is_floating_point() or example.numel() == 0:
        return None
    g = torch.Generator().manual_seed(seed)
    shape = tuple(example.shape)

    def run(t: Tensor) -> Tensor | None:
        try:
            out = fn(t)
        except Exception:  # noqa: BLE001 - an op that refuses float64 is simply not probed
            return None
        return out if isinstance(out, Tensor) and out.is_floating_point() else None

    x = torch.randn(shape, generator=g, dtype=torch.float64)
    y = torch.randn(shape, generator=g, dtype=torch.float64)
    fx_, fy = run(x), run(y)
    if fx_ is None or fy is None or fx_.dtype != torch.float64:
        return None
    scale = 1e-9 * (1 + float(fx_.abs().max()) + float(fy.abs().max()))
    mixed = run(0.7 * x - 1.3 * y)
    linear = mixed is not None and mixed.shape == fx_.shape and bool(
        (mixed - (0.7 * fx_ - 1.3 * fy)).abs().max() <= scale)
    if linear:
        dense = run(x.abs())
        if dense is None or bool((dense < -scale).any()):
            return None
        flat = torch.randperm(x.numel(), generator=g)[:8]
        for i in flat.tolist():
            e = torch.zeros(x.numel(), dtype=torch.float64)
            e[i] = 1.0
            col = run(e.reshape(shape))
            if col is None or bool((col < -scale).any()):
                return None
        return "positive_linear"
    if fx_.shape == x.shape:
        # element-wise: changing some elements changes no other output, and one scalar
        # function serves every element (the op commutes with a permutation of them)
        mask = torch.rand(shape, generator=g) < 0.5
        mask.view(-1)[0] = True
        if mask.numel() > 1:
            mask.view(-1)[1] = False
        changed = run(torch.where(mask, torch.randn(shape, generator=g, dtype=x.dtype), x))
        perm = torch.randperm(x.numel(), generator=g)
        moved = run(x.reshape(-1)[perm].reshape(shape))
        if changed is not None and moved is not None and torch.allclose(
                changed[~mask], fx_[~mask], rtol=0, atol=0, equal_nan=True) and torch.allclose(
                moved.reshape(-1), fx_.reshape(-1)[perm], rtol=1e-12, atol=0, equal_nan=True):
            return "pointwise"
    if fx_.numel() and bool(torch.isin(fx_.reshape(-1), x.reshape(-1)).all()) and (
            (doubled := run(2 * x)) is not None and torch.equal(doubled, 2 * fx_)):
        return "selection"  # each output one of the inputs, by value: not linear, so chosen
    return None


def _concrete(t: Any) -> Any:
    """A fake tensor's shape with symbolic sizes replaced by their example values."""
    from torch.fx.experimental.symbolic_shapes import optimization_hint

    return tuple(optimization_hint(s) if isinstance(s, torch.SymInt) else int(s)
                 for s in t.shape)


# ----------------------------------------------------------------------------- the pass


def decompose(gm: fx.GraphModule, ruleset: RuleSet) -> fx.GraphModule:
    """``gm`` with the long-tail ops on its relevance path turned into ops that have rules.

    Parameters
    ----------
    gm
        The captured module (read only).
    ruleset
        The rule set the graph is compiled for: which canonical ops have rules.

    Returns
    -------
    torch.fx.GraphModule
        ``gm`` itself when nothing applied, else a new module sharing ``gm``'s attributes.
    """
    graph = fx.Graph()
    graph.output(graph.graph_copy(gm.graph, {}))
    graph._codegen = copy.deepcopy(gm.graph._codegen)
    constants: dict[str, Tensor] = {}
    changed = _inline_wrappers(graph, gm, constants)
    tried: set[str] = set()
    for _ in range(ROUNDS):
        todo = _without_rules(graph, gm, constants, ruleset) - tried
        if not todo:
            break
        tried |= todo
        for node in [n for n in graph.nodes if n.name in todo]:
            changed |= _handle(node, graph, gm, constants)
    if not changed and not tried:
        return gm
    return _module(gm, graph, constants)  # (also when only notes of what was tried changed)


def _module(gm: fx.GraphModule, graph: fx.Graph, constants: dict[str, Tensor]
            ) -> fx.GraphModule:
    attrs: dict[str, Any] = dict(constants)
    for node in graph.nodes:
        if node.op in ("get_attr", "call_module") and node.target not in attrs:
            obj: Any = gm
            for part in str(node.target).split("."):
                obj = getattr(obj, part)
            attrs[str(node.target)] = obj
    graph.lint()
    return fx.GraphModule(attrs, graph, class_name=type(gm).__name__)


def _without_rules(graph: fx.Graph, gm: fx.GraphModule, constants: dict[str, Tensor],
                   ruleset: RuleSet) -> set[str]:
    """Names of nodes that depend on an input and have no rule (per a canonicalised copy)."""
    canon = canonicalize(_module(gm, graph, constants))
    dynamic: set[str] = set()
    missing: set[str] = set()
    for node in canon.nodes:
        if node.op == "placeholder" or any(a.name in dynamic for a in node.all_input_nodes):
            dynamic.add(node.name)
        info = node.meta.get("lrpfx")
        if info is None or node.name not in dynamic or info.kind == IO:
            continue
        if info.kind == UNKNOWN or (info.kind == CANONICAL and ruleset.get(info.canonical) is None
                                    and info.canonical not in ("embedding",)):
            missing.add(node.name)
    return missing


def _handle(node: fx.Node, graph: fx.Graph, gm: fx.GraphModule,
            constants: dict[str, Tensor]) -> bool:
    """Probe, else decompose, one node; records what was tried in its meta."""
    op = node.target
    name = spelling(node, gm)
    if node.op != "call_function" or not isinstance(op, torch._ops.OpOverload):
        node.meta[DECOMPOSITION] = f"no decomposition tried ({name} is not an ATen op)"
        return False
    flat, spec = pytree.tree_flatten((node.args, node.kwargs))
    places = [i for i, a in enumerate(flat) if isinstance(a, fx.Node)]
    vals = [flat[i].meta.get("val") for i in places]
    if not all(isinstance(v, Tensor) for v in vals) or not isinstance(node.meta.get("val"),
                                                                      Tensor | tuple | list):
        node.meta[DECOMPOSITION] = f"not probed nor decomposed ({name}: no shape metadata)"
        return False
    if len(places) == 1 and isinstance(node.meta["val"], Tensor) and not node.kwargs \
            and flat[places[0]] in node.args:
        kind = _probe_node(op, node, vals[0])
        if kind is not None:
            position = node.args.index(flat[places[0]])
            args = tuple(None if i == position else a for i, a in enumerate(node.args))
            node.target = ops.CANONICAL_OPS[kind]
            node.kwargs = dict(input=node.args[position], fn=op, args=args, kwargs={},
                               position=position)
            node.args = ()
            what = {"positive_linear": "linear, non-negative coefficients",
                    "selection": "a selection by value", "pointwise": "element-wise"}[kind]
            node.meta[SOURCE] = f"{name} ({what}: probed)"
            _note(node, f"{name}: probed {what} -> {kind}")
            return True
    return _decompose_node(node, graph, op, name, flat, spec, places, vals, constants)


def _note(node: fx.Node, text: str) -> None:
    """Record ``text`` in the node's meta, after what is there (an inlined node's origin)."""
    before = node.meta.get(DECOMPOSITION)
    node.meta[DECOMPOSITION] = text if not before else f"{before}; {text}"


def _probe_node(op: torch._ops.OpOverload, node: fx.Node, val: Tensor) -> str | None:
    flat, spec = pytree.tree_flatten((node.args, node.kwargs))
    where = next(i for i, a in enumerate(flat) if isinstance(a, fx.Node))

    def fn(t: Tensor) -> Tensor:
        f = list(flat)
        f[where] = t
        args, kwargs = pytree.tree_unflatten(f, spec)
        return op(*args, **kwargs)

    if any(isinstance(a, torch.SymInt) for a in flat):
        return None
    return probe(fn, torch.empty(_concrete(val), dtype=val.dtype))


def _table(op: torch._ops.OpOverload) -> dict[Any, Callable[..., Any]] | None:
    from torch._decomp import core_aten_decompositions, get_decompositions

    own = get_decompositions([op])
    if own:
        return own
    core = core_aten_decompositions()
    if op in core:
        return {op: core[op]}
    if op.has_kernel_for_dispatch_key(torch._C.DispatchKey.CompositeImplicitAutograd):
        return {}  # make_fx decomposes composite-implicit ops by itself
    return None


def _decompose_node(node: fx.Node, graph: fx.Graph, op: torch._ops.OpOverload, name: str,
                    flat: list[Any], spec: Any, places: list[int], vals: list[Any],
                    constants: dict[str, Tensor]) -> bool:
    from torch.fx.experimental.proxy_tensor import make_fx

    table = _table(op)
    if table is None:
        node.meta[DECOMPOSITION] = (f"{name}: not linear with non-negative coefficients nor "
                                    "element-wise by probe; no decomposition in PyTorch's tables")
        return False

    def fn(*tensors: Tensor) -> Any:
        f = list(flat)
        for i, t in zip(places, tensors):
            f[i] = t
        args, kwargs = pytree.tree_unflatten(f, spec)
        return op(*args, **kwargs)

    try:
        sub = make_fx(fn, decomposition_table=table, tracing_mode="symbolic")(*vals)
    except Exception as e:  # noqa: BLE001 - reported, the node stays unsupported
        node.meta[DECOMPOSITION] = f"{name}: decomposition failed ({type(e).__name__})"
        return False
    calls = [n for n in sub.graph.nodes if n.op == "call_function"]
    if all(n.target is op for n in calls):
        node.meta[DECOMPOSITION] = f"{name}: its decomposition is the op itself"
        return False
    prims = sorted({str(n.target) for n in calls if str(n.target).startswith("prims.")})
    if prims:  # primitives are further from a rule than the op itself
        node.meta[DECOMPOSITION] = (f"{name}: not linear with non-negative coefficients nor "
                                    f"element-wise by probe; decomposes to {', '.join(prims)}")
        return False
    _inline(sub, node, graph, [flat[i] for i in places], f"decomposed from {name}", constants)
    return True


def _inline(sub: fx.GraphModule, node: fx.Node, graph: fx.Graph, operands: list[Any],
            origin: str, constants: dict[str, Tensor]) -> None:
    """Replace ``node`` by the body of ``sub`` (placeholders in order ← ``operands``)."""
    env: dict[fx.Node, Any] = {}
    placeholders = iter(operands)
    out: Any = None
    for n in sub.graph.nodes:
        if n.op == "placeholder":
            env[n] = next(placeholders)
            continue
        if n.op == "output":
            out = pytree.tree_map(lambda a: env[a] if isinstance(a, fx.Node) else a, n.args[0])
            continue
        with graph.inserting_before(node):
            if n.op == "get_attr":
                value = getattr(sub, str(n.target))
                if isinstance(value, fx.GraphModule):
                    raise NotImplementedError("nested submodules in an inlined body")
                key = f"_lrpfx_constant_{len(constants)}"
                constants[key] = value
                new = graph.get_attr(key)
            else:
                new = graph.node_copy(n, lambda a: env[a])
        kept = ("nn_module_stack", "stack_trace")
        new.meta = {**{k: v for k, v in node.meta.items() if k in kept},
                    **{k: v for k, v in n.meta.items() if k == "val"}}
        new.meta[DECOMPOSITION] = origin
        env[n] = new
    if isinstance(out, (list, tuple)):  # a tuple result: read through getitem
        for user in list(node.users):
            if user.op == "call_function" and user.target is operator.getitem:
                user.replace_all_uses_with(out[int(user.args[1])])  # type: ignore[arg-type]
                graph.erase_node(user)
    else:
        node.replace_all_uses_with(out)
    if node.users:
        raise NotImplementedError(f"{node.name}: its tuple result is used whole")
    graph.erase_node(node)


def _inline_wrappers(graph: fx.Graph, gm: nn.Module, constants: dict[str, Tensor]) -> bool:
    """Inline ``wrap_with_set_grad_enabled`` / ``wrap_with_autocast`` (autocast disabled)."""
    changed = False
    for node in list(graph.nodes):
        kind = getattr(node.target, "__name__", "") if node.op == "call_function" else ""
        if kind not in _WRAPPERS:
            continue
        at = next((i for i, a in enumerate(node.args) if isinstance(a, fx.Node)
                   and a.op == "get_attr"), None)
        if at is None:
            continue
        if kind == "wrap_with_autocast" and node.args[2]:
            node.meta[DECOMPOSITION] = ("wrap_with_autocast with autocast enabled is not "
                                        "inlined (its body would run at another precision)")
            continue
        body = gm.get_submodule(str(node.args[at].target))
        if not isinstance(body, fx.GraphModule):
            continue
        holder = node.args[at]
        _inline(body, node, graph, list(node.args[at + 1:]), f"inlined from {kind}", constants)
        if not holder.users:
            graph.erase_node(holder)
        changed = True
    return changed


__all__ = ["DECOMPOSITION", "decompose", "probe"]
