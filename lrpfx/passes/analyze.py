"""Pass 3: facts about the canonical graph that rules and reports need.

- which nodes carry relevance (on a path from an input to the output, holding tensor data);
- which tensors are provably non-negative (so linear rules can take their one-transpose fast
  path, DESIGN.md §4.1);
- fan-out points and residual merges (networkx), for reports and later rule sets.

Results are stored in ``node.meta["lrpfx"].extra`` and returned as a :class:`GraphFacts`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
from torch import fx

from lrpfx.passes.canonicalize import CANONICAL, IO, PASSTHROUGH, SHAPE

# Canonical ops whose output is >= 0 whatever their input.
_NONNEG_ALWAYS = frozenset({"relu", "sigmoid", "hardsigmoid", "softplus", "softmax"})
# Ops whose output is >= 0 when all of their tensor inputs are.
_NONNEG_PRESERVING = frozenset({
    "max_pool", "avg_pool", "adaptive_avg_pool", "mean", "sum", "dropout", "add", "mul", "matmul",
})


@dataclass
class GraphFacts:
    """What :func:`analyze` found."""

    nx_graph: nx.DiGraph
    relevant: set[fx.Node] = field(default_factory=set)
    """Nodes that carry relevance from an input to the output."""
    sources: list[fx.Node] = field(default_factory=list)
    """Where relevance is read: the explained input, or the embedding lookups of token ids."""
    dynamic: set[fx.Node] = field(default_factory=set)
    """Nodes that depend on some model input (the rest are compile-time constants)."""
    nonneg: set[fx.Node] = field(default_factory=set)
    """Relevant nodes whose value is provably >= 0."""
    fan_out: dict[fx.Node, int] = field(default_factory=dict)
    """Relevant nodes read by more than one relevant node, with their number of readers."""
    merges: list[fx.Node] = field(default_factory=list)
    """``add`` nodes both of whose operands carry relevance (residual merges)."""
    first: set[fx.Node] = field(default_factory=set)
    """Canonical nodes that a source reaches through data movement only (first layers)."""


def _operands(node: fx.Node) -> list[fx.Node]:
    return list(node.all_input_nodes)


def to_networkx(graph: fx.Graph) -> nx.DiGraph:
    """The data-flow graph: one vertex a node, an edge from each operand to its reader."""
    g = nx.DiGraph()
    for node in graph.nodes:
        g.add_node(node)
        for src in _operands(node):
            g.add_edge(src, node)
    return g


def find_sources(graph: fx.Graph, explained: str | None = None) -> list[fx.Node]:
    """The nodes relevance is computed for.

    ``explained`` names the model argument being explained (default: the first placeholder).
    A floating-point input is its own source; for integer token ids, the sources are the
    embedding lookups indexed by them (DESIGN.md: text relevance is read at the embedding
    output).

    Raises
    ------
    ValueError
        Integer input that no embedding lookup reads.
    """
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if not placeholders:
        raise ValueError("the captured graph has no inputs")
    chosen = next((p for p in placeholders if explained is not None and p.target == explained),
                  placeholders[0])
    val = chosen.meta.get("val")
    if val is None or not hasattr(val, "dtype") or val.dtype.is_floating_point:
        return [chosen]
    # the ids themselves, moved around but not computed on (RoBERTa computes position ids from
    # the token ids: that lookup is no token embedding)
    reach, frontier = {chosen}, [chosen]
    while frontier:
        for user in frontier.pop().users:
            if user not in reach and user.meta["lrpfx"].kind == PASSTHROUGH:
                reach.add(user)
                frontier.append(user)
    found = [n for n in graph.nodes if n.meta["lrpfx"].canonical == "embedding"
             and n.kwargs.get("indices") in reach]
    if not found:
        raise ValueError(
            f"input {chosen.target!r} holds integers ({val.dtype}) and no embedding lookup reads "
            "it: there is no floating-point tensor to take relevance at")
    return found


def analyze(graph: fx.Graph, inputs: list[fx.Node] | None = None) -> GraphFacts:
    """Analyse a canonical graph.

    Parameters
    ----------
    graph
        Output of :func:`lrpfx.passes.canonicalize.canonicalize`.
    inputs
        Nodes that relevance is computed for (default: the first placeholder). Tensors derived
        only from other inputs (attention masks, ...) take part in the computation but receive
        no relevance.
    """
    g = to_networkx(graph)
    facts = GraphFacts(nx_graph=g)
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    for p in placeholders:
        facts.dynamic |= {p, *nx.descendants(g, p)}
    if inputs is None:
        inputs = find_sources(graph)
    facts.sources = list(inputs)
    output = next(n for n in graph.nodes if n.op == "output")
    downstream: set[fx.Node] = set(inputs)
    for src in inputs:
        downstream |= nx.descendants(g, src)
    upstream = nx.ancestors(g, output)
    for node in graph.nodes:
        kind = node.meta["lrpfx"].kind
        if node not in downstream or node not in upstream or kind == SHAPE:
            continue
        if node.op == "call_function" and kind == PASSTHROUGH and all(
            a.meta["lrpfx"].kind == SHAPE for a in _operands(node) if a in downstream
        ) and node.meta["lrpfx"].source_op.startswith("operator."):
            continue  # arithmetic on sizes
        facts.relevant.add(node)

    for node in graph.nodes:  # topological order
        if node not in facts.relevant:
            continue
        info = node.meta["lrpfx"]
        ins = [a for a in _operands(node) if a in facts.relevant]
        # every tensor operand (constants included) must be known >= 0; sizes do not count
        data_ins = [a for a in _operands(node) if a.meta["lrpfx"].kind != SHAPE]
        inputs_nonneg = bool(data_ins) and all(a in facts.nonneg for a in data_ins)
        if info.kind == CANONICAL:
            if info.canonical in _NONNEG_ALWAYS or (
                info.canonical == "hardtanh" and node.kwargs.get("min_val", -1.0) >= 0
            ):
                facts.nonneg.add(node)
            elif info.canonical in _NONNEG_PRESERVING and inputs_nonneg and not _negates(node):
                facts.nonneg.add(node)
        elif info.kind == PASSTHROUGH and inputs_nonneg and not _negates(node):
            facts.nonneg.add(node)
        readers = [u for u in node.users if u in facts.relevant]
        if len(readers) > 1:
            facts.fan_out[node] = len(readers)
        if info.canonical == "add" and len(ins) == 2:
            facts.merges.append(node)
        info.extra["nonneg"] = node in facts.nonneg
    facts.first = _first_layers(facts)
    for node in graph.nodes:
        info = node.meta["lrpfx"]
        info.extra["relevant"] = node in facts.relevant
        if info.kind != IO and node in facts.relevant:
            info.extra["nonneg_inputs"] = {
                k for k, v in node.kwargs.items() if isinstance(v, fx.Node) and v in facts.nonneg
            }
    return facts


def _first_layers(facts: GraphFacts) -> set[fx.Node]:
    first: set[fx.Node] = set()
    frontier = list(facts.sources)
    seen = set(frontier)
    while frontier:
        for user in frontier.pop().users:
            if user in seen or user not in facts.relevant:
                continue
            seen.add(user)
            if user.meta["lrpfx"].kind == CANONICAL:
                first.add(user)
            elif user.meta["lrpfx"].kind == PASSTHROUGH:
                frontier.append(user)
    return first


def _negates(node: fx.Node) -> bool:
    """Could a scaling or an added Python number flip the sign of non-negative operands?"""
    info = node.meta["lrpfx"]
    name = info.canonical or info.source_op
    if "neg" in name or "sub" in name:
        return True
    if not any(k in name for k in ("mul", "div", "add")):
        return False
    numbers = [a for a in (*node.args, *node.kwargs.values())
               if isinstance(a, (int, float)) and not isinstance(a, bool)]
    return any(v < 0 for v in numbers)
