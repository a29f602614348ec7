"""Pass 4: replace every rule-bearing node by a call of its rule.

Each canonical node on the relevance path becomes a ``call_module`` of a
:class:`lrpfx.rules.base.RuleCall` that holds the op's constants (cloned), its derived
parameters (computed here, once) and its rule. Data-movement nodes stay as they are: plain
autograd carries relevance through them unchanged. The result is a new ``GraphModule`` that owns
every tensor it uses, so the user's model is never aliased or mutated.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import torch
from torch import fx, nn

from lrpfx.core import ops
from lrpfx.core.report import (
    DECOMPOSITION,
    OFF_PATH,
    RULE,
    SOURCE,
    UNSUPPORTED,
    CoverageReport,
    NodeReport,
    UnsupportedOpError,
)
from lrpfx.core.report import (
    PASSTHROUGH as S_PASS,
)
from lrpfx.core.shared_tensors import SharedTensors
from lrpfx.core.taps import sink
from lrpfx.passes.analyze import GraphFacts
from lrpfx.passes.canonicalize import CANONICAL, IO, PASSTHROUGH
from lrpfx.rules.base import RuleCall, RuleSet, RuleSpec


class RelevanceSource(nn.Module):
    """An embedding lookup of the explained token ids: where token relevance is read.

    When armed (:func:`lrpfx.core.taps.armed`, in the calling thread), the output is cut from the
    table (a fresh leaf that requires grad) and collected, so the explainer can take
    ``R = e ⊙ ∂/∂e`` there after the backward.
    """

    def __init__(self, weight: torch.Tensor, padding_idx: int | None) -> None:
        super().__init__()
        self.register_buffer("weight", weight.detach())
        self.padding_idx = padding_idx

    weight: torch.Tensor

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        out = torch.nn.functional.embedding(indices, self.weight, self.padding_idx)
        collected = sink(self)
        if collected is not None:
            out = out.detach().requires_grad_(True)
            collected.append(out)
        return out


def _fetch_attr(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


class _ConstantEvaluator:
    """Evaluates nodes that do not depend on the model input (weights, ``weight.t()``, ...)."""

    def __init__(self, root: nn.Module):
        self.root = root
        self.cache: dict[fx.Node, Any] = {}

    def __call__(self, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return type(value)(self(v) for v in value)
        if isinstance(value, slice):  # `t[a:b]` with computed bounds (symbolic_trace)
            return slice(self(value.start), self(value.stop), self(value.step))
        if not isinstance(value, fx.Node):
            return value
        if value in self.cache:
            return self.cache[value]
        n = value
        args = self(tuple(n.args))
        kwargs = {k: self(v) for k, v in n.kwargs.items()}
        target: Any = n.target  # a name for get_attr/call_method/call_module, else a callable
        if n.op == "get_attr":
            result = _fetch_attr(self.root, target)
        elif n.op == "call_function":
            result = target(*args, **kwargs)
        elif n.op == "call_method":
            result = getattr(args[0], target)(*args[1:], **kwargs)
        elif n.op == "call_module":
            result = self.root.get_submodule(target)(*args, **kwargs)
        else:
            raise ValueError(f"node {n.name} ({n.op}) is not a constant")
        if isinstance(result, torch.Tensor):
            result = result.detach()
        self.cache[n] = result
        if isinstance(result, torch.Tensor) and not _view_of_attr(n):
            self._mutate(n)
        return result

    def _mutate(self, n: fx.Node) -> None:
        """Apply the in-place ops that mutate ``n`` (or a view of it), as the graph does before
        reading it (torchvision's Swin V2 zeroes a slice of a cloned bias). The model's own
        parameters and buffers (and views of them) are never mutated here."""
        for user in list(n.users):
            if not user.args or user.args[0] is not n:
                continue
            if not (_op_name(user) in _VIEWS or _mutates(user)) or user in self.cache:
                continue
            try:
                self(user)  # a view is mutated through in its own turn
            except Exception:  # noqa: BLE001 - depends on the input: not a constant mutation
                continue


_VIEWS = frozenset({"slice", "select", "narrow", "view", "unsqueeze", "squeeze", "alias",
                    "getitem", "transpose", "permute", "t", "expand", "as_strided"})


def _op_name(n: fx.Node) -> str:
    return getattr(n.target, "__name__", str(n.target)).split(".")[0]


def _view_of_attr(n: fx.Node) -> bool:
    """Is ``n`` a parameter or buffer of the model, or a view of one? (never mutated here)"""
    while n.op != "get_attr" and n.args and isinstance(n.args[0], fx.Node) \
            and _op_name(n) in _VIEWS:
        n = n.args[0]
    return n.op == "get_attr"


def _classify(node: fx.Node, ruleset: RuleSet, facts: GraphFacts) -> tuple[str, str, str | None]:
    """(status, rule name, reason) for a relevant node."""
    info = node.meta["lrpfx"]
    if node in facts.sources and info.canonical == "embedding":
        return SOURCE, "relevance source", None
    if info.kind == PASSTHROUGH:
        return S_PASS, "passthrough", None
    if info.kind == CANONICAL:
        spec = select_spec(node, ruleset, facts)
        if spec is None:
            return UNSUPPORTED, "none", f"no {ruleset.name!r} rule for {info.canonical}"
        bad = [k for k, v in node.kwargs.items()
               if isinstance(v, fx.Node) and v in facts.relevant and k not in spec.relevance_args]
        if bad:
            return UNSUPPORTED, "none", (
                f"argument(s) {', '.join(bad)} depend on the input; the rule needs them constant")
        return RULE, spec.name, None
    return UNSUPPORTED, "none", info.problem or "no canonical op for this spelling"


def select_spec(node: fx.Node, ruleset: RuleSet, facts: GraphFacts) -> RuleSpec | None:
    """The rule for a canonical node, given its position (first layer, residual merge)."""
    return ruleset.select(node.meta["lrpfx"].canonical, first=node in facts.first,
                          merge=node in facts.merges)


def build_report(
    graph: fx.Graph, facts: GraphFacts, ruleset: RuleSet, frontend: str
) -> CoverageReport:
    """The coverage report for a canonical, analysed graph (nothing is rewritten)."""
    report = CoverageReport(rule_set=ruleset.name, frontend=frontend)
    for node in graph.nodes:
        info = node.meta["lrpfx"]
        if info.kind == IO:
            continue
        if node not in facts.relevant:
            report.off_path.append(NodeReport(
                node=node.name, op=info.source_op, canonical=info.canonical, rule="-",
                module=info.module_path, status=OFF_PATH))
            continue
        status, rule, reason = _classify(node, ruleset, facts)
        report.nodes.append(NodeReport(
            node=node.name, op=info.source_op, canonical=info.canonical, rule=rule,
            module=info.module_path, status=status, reason=reason,
            nonneg_input="input" in info.extra.get("nonneg_inputs", ()),
            decomposition=node.meta.get(DECOMPOSITION),
        ))
    return report


def rewrite(
    root: nn.Module,
    graph: fx.Graph,
    facts: GraphFacts,
    ruleset: RuleSet,
    *,
    strict: bool = True,
    frontend: str = "export",
    shared: SharedTensors | None = None,
) -> tuple[fx.GraphModule, CoverageReport]:
    """Rewrite a canonical, analysed graph into the compiled module.

    Parameters
    ----------
    root
        The module the graph's ``get_attr``/``call_module`` targets refer to (read only).
    graph
        Canonical graph (modified in place: it is the pass pipeline's own copy).
    facts
        Output of :func:`lrpfx.passes.analyze.analyze` for ``graph``.
    ruleset
        Rules to apply.
    strict
        Raise :class:`lrpfx.core.report.UnsupportedOpError` before anything runs if a node on the
        relevance path has no rule; otherwise warn and leave such nodes to plain autograd.
    shared
        Tensors shared with the other graphs compiled from the same model snapshot: constants and
        derived parameters come from (and go to) it instead of being copied and derived anew.
        None: the graph owns copies of everything.

    Returns
    -------
    (GraphModule, CoverageReport)
    """
    report = build_report(graph, facts, ruleset, frontend)
    if report.unsupported:
        if strict:
            raise UnsupportedOpError(report)
        warnings.warn(
            "lrpfx: these ops carry the plain gradient, not a relevance rule: "
            + ", ".join(f"{n.node} ({n.op})" for n in report.unsupported),
            stacklevel=3,
        )
    status = {n.node: n.status for n in report.nodes}
    summed = {node: _contributions_summed(node, facts, status) for node in facts.relevant}
    # a first-layer rule that returns relevance (flat, w²) makes every first layer do so, and
    # the explainer read the input's "gradient" as relevance
    input_relevance = any(status.get(n.name) == RULE
                          and _spec(n, ruleset, facts).returns_relevance
                          for n in facts.first)
    const = _ConstantEvaluator(root)
    attrs: dict[str, Any] = {}
    used_names: set[str] = set()

    def replace(node: fx.Node, prefix: str, module: nn.Module, args: tuple) -> None:
        name = _unique(f"{prefix}_{node.name}", used_names)
        attrs[name] = module
        with graph.inserting_before(node):
            new = graph.call_module(name, args)
        new.meta = node.meta
        facts.relevant.add(new)
        facts.dynamic.add(new)
        summed[new] = summed[node]
        node.replace_all_uses_with(new)
        graph.erase_node(node)

    for node in list(graph.nodes):
        if status.get(node.name) == SOURCE:
            table = const(node.kwargs["weight"])
            table = shared.constant(table) if shared is not None else table.detach().clone()
            replace(node, "source", RelevanceSource(table, node.kwargs.get("padding_idx")),
                    (node.kwargs["indices"],))
            continue
        if status.get(node.name) != RULE:
            continue
        info = node.meta["lrpfx"]
        spec = _spec(node, ruleset, facts)
        relevant = tuple(k for k, v in node.kwargs.items()
                         if isinstance(v, fx.Node) and v in facts.relevant)
        runtime = tuple(k for k, v in node.kwargs.items() if isinstance(v, fx.Node)
                        and v in facts.dynamic and k not in relevant)
        constants = {k: const(node.kwargs.get(k)) for k in ops.TENSOR_ARGS[info.canonical]
                     if k not in relevant and k not in runtime
                     and not isinstance(node.kwargs.get(k), (int, float))}
        call = RuleCall(
            spec if shared is None else _underived(spec), ops.CANONICAL_OPS[info.canonical],
            node.kwargs, relevant, constants, frozenset(info.extra.get("nonneg_inputs", ())),
            node=node.name, source=info.module_path, runtime=runtime,
            normalize=frozenset(k for k in relevant if summed[node.kwargs[k]]),
        )
        if shared is not None:
            call.spec = spec
            shared.adopt(call, constants)
        if input_relevance and node in facts.first:
            call.as_relevance = frozenset(relevant)
        replace(node, "rule", call, tuple(node.kwargs[k] for k in relevant + runtime))

    # drop what no longer feeds the output: constants folded into rules, export's input guard;
    # keep ops that mutate their inputs (masks built by slice assignment)
    for node in reversed(list(graph.nodes)):
        if node.op not in ("placeholder", "output") and not node.users and not _mutates(node):
            graph.erase_node(node)
    for node in graph.nodes:
        if node.op == "get_attr":
            value = _fetch_attr(root, node.target)
            if isinstance(value, torch.Tensor):
                value = shared.constant(value) if shared is not None else value.detach().clone()
            attrs[node.target] = value
        elif node.op == "call_module" and node.target not in attrs:
            attrs[node.target] = _copy_module(root.get_submodule(node.target))
    graph.lint()
    gm = fx.GraphModule(attrs, graph, class_name="LRPGraphModule")
    gm.__dict__["input_relevance"] = input_relevance
    return gm, report


def _spec(node: fx.Node, ruleset: RuleSet, facts: GraphFacts) -> RuleSpec:
    """The rule of a node classified as having one."""
    spec = select_spec(node, ruleset, facts)
    assert spec is not None  # _classify gave the node status RULE
    return spec


def _contributions_summed(node: fx.Node, facts: GraphFacts, status: dict[str, str]) -> bool:
    """Is relevance arriving at ``node`` summed with other contributions (here or at a tensor it
    is a view of)? Only such contributions need absLRP's per-example normalisation: elsewhere it
    is a positive rescaling that later normalisations cancel (see ``lrpfx.rules.abslrp``)."""
    n = node
    while True:
        if sum(_occurrences(u, n) for u in n.users if u in facts.relevant) > 1:
            return True
        st = status.get(n.name)
        if n.op == "placeholder" or st in (RULE, SOURCE):
            return False
        if st != S_PASS:
            return True
        ins = [a for a in n.all_input_nodes if a in facts.relevant]
        if len(ins) != 1:
            return True
        n = ins[0]


def _occurrences(user: fx.Node, node: fx.Node) -> int:
    """How often ``node`` is an argument of ``user`` (``x * x`` reads x twice)."""
    count = 0

    def visit(a: Any) -> None:
        nonlocal count
        if a is node:
            count += 1
        elif isinstance(a, (list, tuple)):
            for b in a:
                visit(b)
        elif isinstance(a, dict):
            for b in a.values():
                visit(b)

    visit(user.args)
    visit(user.kwargs)
    return count


def _mutates(node: fx.Node) -> bool:
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        return target._schema.is_mutable
    name = target if node.op == "call_method" else getattr(target, "__name__", "")
    return node.op in ("call_function", "call_method") and isinstance(name, str) and (
        name.endswith("_") and not name.startswith("_") or name.startswith("_assert"))


def _underived(spec: RuleSpec) -> RuleSpec:
    """``spec`` without ``derive``: the shared tensors derive its parameters, once."""
    if spec.derive is None:
        return spec
    return dataclasses.replace(spec, derive=None)


def _copy_module(module: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(module)


def _unique(name: str, used: set[str]) -> str:
    base, i = name, 1
    while name in used:
        i += 1
        name = f"{base}_{i}"
    used.add(name)
    return name
