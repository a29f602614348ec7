"""Pass 5 (absLRP option ``merge_total_derivative``): the skip operand of a residual merge takes
autograd's *total* derivative, through the branch, as the paper's reference code does.

The reference explains a merge ``y = a + b`` with ``torch.autograd.grad(h + ha, (a, b), s)`` on
the live forward graph. When the branch ``a = f(b)`` reads the skip ``b`` (a residual block),
autograd's derivative with respect to ``b`` also runs through ``f``::

    VJP_a = (1 + sign a) ⊙ s
    VJP_b = (1 + sign b) ⊙ s + J_fᵀ VJP_a            (J_f: f's plain Jacobian, with the
    R_b   = b ⊙ VJP_b / Σ|b ⊙ VJP_b|                  statistics of layer norm and softmax held
                                                      constant, as in the reference's forward)

The DESIGN.md §4.2 rule keeps only the first term. Both agree when ``J_f = 0``, as in timm
ResNets built with random weights (``zero_init_last`` zeroes each block's last batch-norm scale),
but not in ViTs or trained ResNets. The stored ViT golden shows the term (cosine 0.988 without it,
1.0000 with it).

This pass builds the term from autograd itself. For each element-wise absLRP merge (``add``,
``sub``, ``mul``, ``div``) one of whose operands ``b`` is an ancestor of the other ``a``:

- the merge reads ``b`` through a :class:`MergeCollector`. The merge returns ``VJP_b`` raw (not
  normalised) to it, and the collector normalises ``b ⊙ (everything that reached it)`` once;
- a :class:`PlainBranch` recomputes the nodes between ``b`` and ``a`` differentiably from the
  collector's output (each rule through ``RuleSpec.plain``, data movement as it is), with every
  other input detached. The merge takes its output as an extra input and sends ``VJP_a`` there
  raw, so autograd carries ``J_fᵀ VJP_a`` to the collector.

The cost is one more forward of each residual branch and one plain backward of it per pass.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor, fx, nn

from lrpfx.core import ops
from lrpfx.rules.abslrp import AbsLRPFunction
from lrpfx.rules.base import RuleCall, normalised_gradient, reduce_to


class _Collect(torch.autograd.Function):
    """Identity forward; backward: ``R = x ⊙ g`` normalised per example, returned as ``G``."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: ANN001
        ctx.save_for_backward(x)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: ANN001
        (x,) = ctx.saved_tensors
        return normalised_gradient(grad, x)


class MergeCollector(nn.Module):
    """Where a merge's skip operand ``b`` gathers its total derivative (see module docstring)."""

    def forward(self, x: Tensor) -> Tensor:
        return _Collect.apply(x)


class PlainCall(nn.Module):
    """A rule-bearing node recomputed with plain autograd (``RuleSpec.plain``)."""

    def __init__(self, call: RuleCall) -> None:
        super().__init__()
        # not a submodule: the merge's graph owns the call (.to()/conversions reach it once)
        self.__dict__["call"] = call

    def forward(self, *inputs: Tensor) -> Tensor:
        call: RuleCall = self.__dict__["call"]
        args = call.arguments(inputs)
        return call.op(**args) if call.spec.plain is None else call.spec.plain(call, args)


class _Reused(torch.autograd.Function):
    """Forward: the node's forward value when the closed form reads it (softmax's output),
    otherwise a zero stand-in of its shape (nothing reads it); backward: the closed form."""

    @staticmethod
    def forward(ctx, call: RuleCall, carried: int, *tensors: Tensor) -> Tensor:  # noqa: ANN001
        closed = call.spec.plain_vjp
        assert closed is not None
        carriers, values = tensors[:carried], tensors[carried:]
        named = dict(zip(_reads(call), values))
        ctx.call, ctx.carried = call, carried
        ctx.shapes = [c.shape for c in carriers[:len(call.relevant)]]
        ctx.save_for_backward(*values)
        if "out" in named:
            return named["out"].view_as(named["out"])
        meta = {k: _meta(v) for k, v in call.arguments(carriers).items()}
        shape = call.op(**meta).shape
        return carriers[0].new_zeros(()).expand(shape)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN001
        call: RuleCall = ctx.call
        closed = call.spec.plain_vjp
        assert closed is not None
        grads = closed.vjp(call, dict(zip(_reads(call), ctx.saved_tensors)), grad)
        wanted = ctx.needs_input_grad[2:2 + len(call.relevant)]
        grads = {k: reduce_to(v, shape) for (k, v), shape in
                 zip(((k, grads[k]) for k in call.relevant), ctx.shapes)}
        return (None, None, *[grads[k] if w else None for k, w in zip(call.relevant, wanted)],
                *[None] * (ctx.carried - len(call.relevant) + len(ctx.saved_tensors)))


def _reads(call: RuleCall) -> tuple[str, ...]:
    """The forward values a closed-form plain VJP reads that the graph supplies (its output and
    tensor inputs; constants and numbers come from the call)."""
    closed = call.spec.plain_vjp
    assert closed is not None
    return tuple(k for k in closed.reads if k == "out" or k in call.relevant + call.runtime)


def _meta(value: Any) -> Any:
    return torch.empty(value.shape, dtype=value.dtype, device="meta") \
        if isinstance(value, Tensor) else value


class ReusedCall(nn.Module):
    """A rule-bearing node of a replayed branch whose plain VJP runs in closed form on forward
    values the graph already holds (``RuleSpec.plain_vjp``): nothing recomputed, nothing new
    kept. Called with the replayed inputs (relevant, then runtime), then those values."""

    def __init__(self, call: RuleCall) -> None:
        super().__init__()
        self.__dict__["call"] = call  # not a submodule, as in PlainCall

    def forward(self, *tensors: Tensor) -> Tensor:
        call: RuleCall = self.__dict__["call"]
        return _Reused.apply(call, len(call.relevant) + len(call.runtime), *tensors)


class PlainBranch(nn.Module):
    """The nodes between a merge's skip ``b`` and its branch operand ``a``, recomputed
    differentiably from the collector's output: ``graph(skip, *others) -> a``. Other inputs are
    detached, so the plain derivative stops at ``b``. Returns None when no gradient is wanted
    (plain inference does not pay for the branch twice)."""

    def __init__(self, graph: fx.GraphModule) -> None:
        super().__init__()
        self.graph = graph

    def forward(self, skip: Tensor, *others: Any) -> Tensor | None:
        if not (torch.is_grad_enabled() and skip.requires_grad):
            return None
        others = tuple(o.detach() if isinstance(o, Tensor) else o for o in others)
        return self.graph(skip, *others)


def _merges(gm: fx.GraphModule) -> list[tuple[fx.Node, RuleCall]]:
    found = []
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        call = gm.get_submodule(node.target)
        if isinstance(call, RuleCall) and call.spec.function is AbsLRPFunction \
                and call.spec.diag is not None and len(call.relevant) == 2:
            found.append((node, call))
    return found


def _ancestors(node: fx.Node) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    stack = [node]
    while stack:
        for a in stack.pop().all_input_nodes:
            if a not in seen:
                seen.add(a)
                stack.append(a)
    return seen


def _between(skip: fx.Node, branch: fx.Node) -> list[fx.Node] | None:
    """The nodes on paths ``skip → branch`` (``branch`` included), in graph order, or None when
    ``branch`` does not depend on ``skip``."""
    above = _ancestors(branch)
    if skip not in above:
        return None
    inside: set[fx.Node] = set()
    stack = [skip]
    while stack:
        for u in stack.pop().users:
            if (u in above or u is branch) and u not in inside:
                inside.add(u)
                stack.append(u)
    return [n for n in branch.graph.nodes if n in inside]


def _nodes_in(args: Any) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg(args, found.append)
    return found


def _plain_branch(gm: fx.GraphModule, skip: fx.Node, nodes: list[fx.Node]
                  ) -> tuple[PlainBranch, list[fx.Node]]:
    """The branch as its own graph module, and the outside nodes it reads (its extra inputs:
    other inputs of the branch, and the forward values its closed-form VJPs read)."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {skip: graph.placeholder("skip")}
    outside: list[fx.Node] = []
    # a merge inside the branch (nested residuals) is replayed as its plain op: its collector
    # is an identity here, its own replay and extra input are left out
    mods = {n: gm.get_submodule(str(n.target)) for n in nodes if n.op == "call_module"}
    replays = {n for n, m in mods.items() if isinstance(m, PlainBranch)}
    members = set(nodes) - replays
    reused = _reused(nodes, mods, replays)

    def args_of(n: fx.Node) -> tuple:
        m = mods.get(n)
        return n.args[:len(m.relevant) + len(m.runtime)] if isinstance(m, RuleCall) else n.args

    def values_of(n: fx.Node) -> list[fx.Node]:
        call = mods[n]
        assert isinstance(call, RuleCall) and call.spec.plain_vjp is not None
        named = dict(zip(call.relevant + call.runtime, n.args))
        found = [n if k == "out" else named[k] for k in _reads(call)]
        assert all(isinstance(a, fx.Node) for a in found)  # relevant and runtime inputs are
        return cast(list[fx.Node], found)

    values: dict[fx.Node, fx.Node] = {}  # forward values read from the main graph
    for n in nodes:
        if n in replays:
            continue
        for a in _nodes_in((args_of(n), n.kwargs)):
            if a not in env and a not in members:
                env[a] = graph.placeholder(f"other_{len(outside)}")
                outside.append(a)
        for a in values_of(n) if n in reused else ():
            if a in values:
                continue
            if a in env and a not in members:  # an outside input already
                values[a] = env[a]
            else:
                values[a] = graph.placeholder(f"other_{len(outside)}")
                outside.append(a)
    root: dict[str, Any] = {}
    for n in nodes:
        if n in replays:
            continue
        mod = mods.get(n)
        if isinstance(mod, MergeCollector) and isinstance(n.args[0], fx.Node):
            env[n] = env[n.args[0]]
        elif mod is not None:
            name = str(n.target).replace(".", "_")
            args = fx.map_arg(args_of(n), env.__getitem__)
            if n in reused:
                assert isinstance(mod, RuleCall)
                root[name] = ReusedCall(mod)
                args = (*args, *[values[a] for a in values_of(n)])
            else:
                root[name] = PlainCall(mod) if isinstance(mod, RuleCall) else mod
            env[n] = graph.call_module(name, args, fx.map_arg(n.kwargs, env.__getitem__))
        else:
            env[n] = graph.node_copy(n, env.__getitem__)
    graph.output(env[nodes[-1]])
    return PlainBranch(fx.GraphModule(root, graph, class_name="PlainBranch")), outside


def _reused(nodes: list[fx.Node], mods: dict[fx.Node, nn.Module], replays: set[fx.Node]
            ) -> set[fx.Node]:
    """The branch's rule nodes whose plain VJP runs in closed form on the forward's values
    (:attr:`lrpfx.rules.base.RuleSpec.plain_vjp`): those whose replayed output no replayed node
    reads the value of. Walking back from the branch's end: a node recomputed by autograd reads
    its inputs' values, data movement passes the need on to its inputs, a closed form reads
    none (its values come from the main graph)."""
    read: set[fx.Node] = set()
    reused: set[fx.Node] = set()
    for n in reversed(nodes):
        if n in replays:
            continue
        mod = mods.get(n)
        closed = mod.spec.plain_vjp if isinstance(mod, RuleCall) else None
        if closed is not None and (n not in read or "out" in closed.reads):
            reused.add(n)
        elif mod is None and n not in read:
            continue
        elif not isinstance(mod, MergeCollector) or n in read:
            read.update(_nodes_in((n.args, n.kwargs)))
    return reused


def mixes_positions(gm: fx.GraphModule, nodes: list[fx.Node]) -> bool:
    """Whether a branch mixes positions through a softmax-normalised matrix (attention).

    Attention weights are positive and row-stochastic, so absLRP's op-local rule carries relevance
    through them as a strict contraction of positive vectors (Birkhoff): the relevance streams
    of different seeds converge block by block and their difference, the contrastive map, is
    lost. The branch's plain Jacobian runs through the softmax's derivative ``diag(a) − a aᵀ``
    instead, whose rows sum to zero: it passes on differences between positions. This is where
    the total derivative changes the map (docs/transformers.md measures it).
    """
    return any(isinstance(m := gm.get_submodule(str(n.target)), RuleCall) and m.op is ops.softmax
               for n in nodes if n.op == "call_module")


def total_derivative_at_merges(gm: fx.GraphModule, where: str = "all") -> list[str]:
    """Rewrite ``gm`` (an absLRP graph from :func:`lrpfx.passes.rewrite.rewrite`, before fusion)
    in place so that merges take the total derivative at their skip operand; returns the names
    of the merge nodes so rewritten.

    ``where="all"``: every merge whose branch reads its skip (the reference code);
    ``where="attention"``: only merges whose branch :func:`mixes_positions`.
    """
    if where not in ("all", "attention"):
        raise ValueError(f"where must be 'all' or 'attention', not {where!r}")
    graph = gm.graph
    names: list[str] = []
    for node, call in _merges(gm):
        operands = list(node.args[:2])
        for i_skip, i_branch in ((0, 1), (1, 0)):
            skip, branch = operands[i_skip], operands[i_branch]
            if not isinstance(skip, fx.Node) or not isinstance(branch, fx.Node) \
                    or skip is branch:
                continue
            nodes = _between(skip, branch)
            if nodes is None or (where == "attention" and not mixes_positions(gm, nodes)):
                continue
            plain, outside = _plain_branch(gm, skip, nodes)
            collector, branch_name = f"merge_skip_{len(names)}", f"merge_branch_{len(names)}"
            gm.add_submodule(collector, MergeCollector())
            gm.add_submodule(branch_name, plain)
            with graph.inserting_before(node):
                collected = graph.call_module(collector, (skip,))
                replayed = graph.call_module(branch_name, (collected, *outside))
            args = list(node.args)
            args[i_skip] = collected
            node.args = (*args, replayed)
            # the skip's VJP goes out raw (the collector normalises the total); the branch's
            # VJP is also sent, raw, into the plain branch
            call.normalize = call.normalize - {call.relevant[i_skip]}
            call.seeds = (call.relevant[i_branch],)
            names.append(node.name)
            break
    if names:
        graph.lint()
        gm.recompile()
    return names
