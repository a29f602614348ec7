"""Pattern fusion: ops spelt out one by one that are one canonical op.

- RMS norms written as ``x · rsqrt(mean(x², -1) + eps)`` (or ``x / sqrt(...)``), optionally
  followed by a dtype cast and ``· weight`` (Hugging Face's LLaMA/Qwen2/T5 norms) become one
  ``rms_norm`` node, as if written with ``F.rms_norm``;
- L_p normalisations (``F.normalize`` as export spells it: ``norm, clamp_min, expand_as, div``;
  ``x / x.norm(dim, keepdim=True)``) become one ``normalize`` node.

One op, one rule: the rule sees the statistic as the norm's, not as an activation of its own.
Runs on :func:`lrpfx.passes.canonicalize.canonicalize`'s copy of the graph, before the rest.
"""

from __future__ import annotations

from typing import Any

from torch import fx

from lrpfx.core import ops
from lrpfx.core.spellings import Call, base_name, is_inplace, is_number, spelling

SOURCE = "lrpfx_source"
"""Meta key: how the frontend spelt a node a pre-pass built (a fused pattern, decomposed
attention); canonicalize turns it into the node's ``NodeInfo.source_op``."""


def fuse_patterns(graph: fx.Graph, gm: fx.GraphModule) -> None:
    """Fuse every RMS norm and L_p normalisation of ``graph`` (in place; ``gm`` holds the
    attributes its ``get_attr`` nodes name)."""
    fuse_rms_norms(graph, gm)
    fuse_normalize(graph, gm)


_CASTS = frozenset({"to", "_to_copy", "type_as", "float", "double", "half", "bfloat16", "type"})


def _call_name(node: Any, gm: fx.GraphModule) -> str | None:
    if not isinstance(node, fx.Node) or node.op not in ("call_function", "call_method"):
        return None
    return base_name(node, gm)


def _uncast(node: Any, gm: fx.GraphModule) -> Any:
    """``node`` with dtype/device conversions stripped (``x.to(float32)`` → ``x``)."""
    while _call_name(node, gm) in _CASTS and node.args and isinstance(node.args[0], fx.Node):
        node = node.args[0]
    return node


def _is_check(node: fx.Node) -> bool:
    """Export's metadata asserts (``_assert_tensor_metadata``): they read a tensor, use nothing."""
    name = getattr(node.target, "__name__", str(node.target))
    return node.op == "call_function" and "assert" in name and not node.users


def _only_user(node: fx.Node) -> fx.Node | None:
    """The one user of ``node`` (metadata asserts aside), or None."""
    users = [u for u in node.users if not _is_check(u)]
    return users[0] if len(users) == 1 else None


def _rms_statistic(stat: fx.Node, gm: fx.GraphModule) -> tuple[fx.Node, list[int], float] | None:
    """``mean(x², dims, keepdim=True) + eps`` (or ``x·x``, ``x.square()``; eps optional):
    (x, dims, eps), or None."""
    eps = 0.0
    if _call_name(stat, gm) == "add" and _only_user(stat) is not None:
        nodes = [a for a in stat.args if isinstance(a, fx.Node)]
        numbers = [a for a in stat.args if is_number(a)]
        if len(nodes) != 1 or len(numbers) != 1 or stat.kwargs.get("alpha", 1) != 1:
            return None
        stat, eps = nodes[0], float(numbers[0])
    if _call_name(stat, gm) != "mean" or _only_user(stat) is None:
        return None
    a = Call.of(stat)
    dims = a.get(1, "dim")
    dims = [dims] if isinstance(dims, int) else dims
    if not isinstance(dims, (list, tuple)) or not dims or not a.get(2, "keepdim", default=False) \
            or a.get(3, "dtype", default=None) is not None:
        return None
    square = a.get(0, "input", "self")
    if not isinstance(square, fx.Node) or _only_user(square) is None:
        return None
    sq = _call_name(square, gm)
    sq_args = Call.of(square)
    if sq == "pow" and sq_args.get(1, "exponent") == 2:
        x = sq_args.get(0, "input", "self")
    elif sq == "square":
        x = sq_args.get(0, "input", "self")
    elif sq == "mul" and len(square.args) == 2 and square.args[0] is square.args[1]:
        x = square.args[0]
    else:
        return None
    return (x, [int(d) for d in dims], eps) if isinstance(x, fx.Node) else None


def _normalized_shape(x: fx.Node, dims: list[int], weight_shape: Any) -> list[int] | None:
    """The sizes of the trailing dims ``dims`` reduces over (None if they are not trailing)."""
    val: Any = x.meta.get("val")
    rank = val.dim() if hasattr(val, "dim") else None
    if rank is not None:
        dims = [d - rank if d >= 0 else d for d in dims]
    k = len(dims)
    if sorted(dims) != list(range(-k, 0)):
        return None
    if rank is not None:
        sizes = list(val.shape[rank - k:])
        return [int(v) for v in sizes] if all(isinstance(v, int) for v in sizes) else None
    if weight_shape is not None and len(weight_shape) == k:
        return [int(v) for v in weight_shape]
    return [-1] * k  # a traced graph carries no shapes; only the number of dims matters


def _rms_head(root: fx.Node, gm: fx.GraphModule) -> tuple[fx.Node, fx.Node, fx.Node] | None:
    """``other · rsqrt(stat)`` or ``other / sqrt(stat)`` at ``root`` (the rsqrt/sqrt):
    (the mul/div, other, stat), or None."""
    name = _call_name(root, gm)
    stat = root.args[0] if root.args else None
    user = _only_user(root)
    if name not in ("rsqrt", "sqrt") or not isinstance(stat, fx.Node) or user is None \
            or _only_user(stat) is not root or len(user.args) != 2 or is_inplace(user):
        return None
    user_name = _call_name(user, gm)
    if name == "rsqrt" and user_name == "mul":
        others = [a for a in user.args if a is not root]
    elif name == "sqrt" and user_name in ("div", "truediv") and user.args[1] is root \
            and user.kwargs.get("rounding_mode") is None:
        others = [user.args[0]]
    else:
        return None
    other = others[0] if len(others) == 1 else None
    return (user, other, stat) if isinstance(other, fx.Node) else None


def _rms_weight(user: fx.Node, x: fx.Node, dynamic: set[fx.Node], gm: fx.GraphModule
                ) -> tuple[fx.Node, fx.Node | None, tuple[int, ...] | None]:
    """After the normalised ``user``: optional casts, then ``weight *`` with a constant weight of
    the input's shape. (the last node of the norm, the weight, its shape); without a weight the
    norm ends at ``user`` (casts without a weight stay as they are)."""
    end, nxt = user, _only_user(user)
    while nxt is not None and _call_name(nxt, gm) in _CASTS and nxt.args[0] is end:
        end, nxt = nxt, _only_user(nxt)
    if nxt is None or _call_name(nxt, gm) != "mul" or len(nxt.args) != 2 or nxt.kwargs \
            or is_inplace(nxt):
        return user, None, None
    w = nxt.args[0] if nxt.args[1] is end else nxt.args[1]
    if not isinstance(w, fx.Node) or w in dynamic:
        return user, None, None
    w_val, out_val, x_val = w.meta.get("val"), nxt.meta.get("val"), x.meta.get("val")
    if w_val is not None and out_val is not None and x_val is not None:
        if tuple(out_val.shape) == tuple(x_val.shape):
            return nxt, w, tuple(w_val.shape)
    elif w.op == "get_attr":
        t: Any = gm
        for part in str(w.target).split("."):
            t = getattr(t, part)
        return nxt, w, tuple(t.shape)
    return user, None, None


def _erase(graph: fx.Graph, pattern: set[fx.Node]) -> None:
    """Erase the nodes of ``pattern`` nothing reads any more (metadata asserts aside)."""
    changed = True
    while changed:
        changed = False
        for dead in list(pattern):
            if all(_is_check(u) for u in dead.users):
                for check in list(dead.users):
                    graph.erase_node(check)
            if not dead.users:
                graph.erase_node(dead)
                pattern.discard(dead)
                changed = True


def fuse_rms_norms(graph: fx.Graph, gm: fx.GraphModule) -> None:
    """Rewrite RMS norms spelt out as ``x · rsqrt(mean(x², -1) + eps)`` (or ``x / sqrt(...)``),
    optionally followed by a dtype cast and ``· weight`` with a constant weight (Hugging Face's
    LLaMA/Qwen2/T5 norms), into one ``rms_norm`` node: one op, one rule, like ``F.rms_norm``."""
    dynamic: set[fx.Node] = set()
    for node in graph.nodes:
        if node.op == "placeholder" or any(a in dynamic for a in node.all_input_nodes):
            dynamic.add(node)
    for root in list(graph.nodes):
        head = _rms_head(root, gm)
        found = None if head is None else _rms_statistic(head[2], gm)
        if head is None or found is None:
            continue
        user, x, stat = head
        squared, dims, eps = found
        if _uncast(squared, gm) is not _uncast(x, gm):
            continue
        end, weight, w_shape = _rms_weight(user, x, dynamic, gm)
        shape = _normalized_shape(x, dims, w_shape)
        if shape is None:
            continue
        with graph.inserting_before(end):
            fused = graph.call_function(ops.rms_norm, (), dict(
                input=x, normalized_shape=shape, weight=weight, eps=eps))
        fused.meta = dict(end.meta)
        name = _call_name(root, gm)
        fused.meta[SOURCE] = (f"{spelling(root, gm)} (RMS norm: mean of squares, {name}, "
                              f"{'mul' if name == 'rsqrt' else 'div'}"
                              f"{', mul by weight' if weight is not None else ''})")
        end.replace_all_uses_with(fused)
        pattern, frontier = {user, root}, [end]
        while frontier:  # the casts and the weight product after the norm
            n = frontier.pop()
            if n not in pattern:
                pattern.add(n)
                frontier += [a for a in n.all_input_nodes if a is not weight]
                frontier = [a for a in frontier if a not in pattern and (
                    a is user or _call_name(a, gm) in _CASTS)]
        frontier = [stat]  # the statistic: add eps, mean, square (up to x)
        while frontier:
            n = frontier.pop()
            if n in pattern or _uncast(n, gm) is _uncast(x, gm):
                continue
            pattern.add(n)
            frontier += n.all_input_nodes
        _erase(graph, pattern)


_NORMS = frozenset({"linalg_vector_norm", "vector_norm", "norm"})


def _vector_norm(node: Any, gm: fx.GraphModule) -> tuple[fx.Node, float, list[int]] | None:
    """``‖x‖_p`` over ``dim`` with ``keepdim=True`` (``aten.linalg_vector_norm``, ``x.norm``,
    ``torch.norm``, ``torch.linalg.vector_norm``): (x, p, dim), or None."""
    name = _call_name(node, gm)
    if name not in _NORMS or _only_user(node) is None:
        return None
    a = Call.of(node)
    if name == "norm":  # Tensor.norm / torch.norm(input, p='fro', dim, keepdim, dtype)
        p = a.get(1, "p", default="fro")
        p = 2.0 if p == "fro" else p
    else:  # linalg_vector_norm(input, ord=2, dim, keepdim, dtype)
        p = a.get(1, "ord", default=2.0)
    dim = a.get(2, "dim")
    dim = [dim] if isinstance(dim, int) else dim
    if not is_number(p) or not isinstance(dim, (list, tuple)) or not dim \
            or not a.get(3, "keepdim", default=False) or a.get(4, "dtype") is not None:
        return None
    x = a.get(0, "input", "self")
    return (x, float(p), [int(d) for d in dim]) if isinstance(x, fx.Node) else None


def fuse_normalize(graph: fx.Graph, gm: fx.GraphModule) -> None:
    """Rewrite ``x / norm(x).clamp_min(eps).expand_as(x)`` (``F.normalize`` as export spells
    it, Swin V2's cosine attention) and ``x / x.norm(dim, keepdim=True)`` into one
    ``normalize`` node."""
    for div in list(graph.nodes):
        if _call_name(div, gm) not in ("div", "truediv") or len(div.args) != 2 \
                or div.kwargs.get("rounding_mode") is not None or is_inplace(div):
            continue
        x, denom = div.args
        if not isinstance(x, fx.Node) or not isinstance(denom, fx.Node):
            continue
        pattern: list[fx.Node] = []
        n: Any = denom
        eps = None
        while _call_name(n, gm) in ("expand", "expand_as") and _only_user(n) is not None:
            pattern.append(n)
            n = n.args[0]
        if _call_name(n, gm) in ("clamp_min", "clamp") and _only_user(n) is not None:
            a = Call.of(n)
            eps = a.get(1, "min")
            if not is_number(eps) or a.get(2, "max") is not None:
                continue
            pattern.append(n)
            n, eps = n.args[0], float(eps)
        found = _vector_norm(n, gm)
        if found is None or _uncast(found[0], gm) is not _uncast(x, gm):
            continue
        pattern.append(n)
        _, p, dim = found
        with graph.inserting_before(div):
            fused = graph.call_function(ops.normalize, (), dict(input=x, p=p, dim=dim, eps=eps))
        fused.meta = dict(div.meta)
        fused.meta[SOURCE] = (f"{spelling(div, gm)} (L{p:g} normalisation: {spelling(n, gm)}"
                              f"{', clamp_min' if eps is not None else ''}, div)")
        div.replace_all_uses_with(fused)
        for dead in [div, *pattern]:
            if all(_is_check(u) for u in dead.users):
                for check in list(dead.users):
                    graph.erase_node(check)
                graph.erase_node(dead)
