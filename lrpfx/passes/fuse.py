"""Pass 5 (absLRP): fuse each rule-bearing node with the element-wise rules that follow it.

A chain ``head → t₁ → … → tₖ`` (conv → batch norm → ReLU, add → ReLU, ...) where every ``tᵢ`` is
an element-wise absLRP rule (a factor ``F`` with ``G_x = F ⊙ G_y``) whose input is read by it
alone becomes one :class:`ChainCall`: one autograd node whose backward is the head's rule on
``G ⊙ F₁ ⊙ … ⊙ Fₖ`` (:class:`lrpfx.rules.abslrp.ChainFunction`). The maps are unchanged; each
backward pass does one element-wise multiplication per chain instead of one per op.

The unfused graph is kept (it shares every module and tensor with the fused one): relevance at
inner positions (``explain(at=...)``) and the audit read it.
"""

from __future__ import annotations

import copy

from torch import Tensor, fx, nn

from lrpfx.rules.abslrp import AbsLRPFunction, ChainFunction
from lrpfx.rules.base import RuleCall


class ChainCall(nn.Module):
    """A head :class:`RuleCall` and the element-wise rule calls fused after it."""

    head: RuleCall
    tail: nn.ModuleList

    def __init__(self, head: RuleCall, tail: list[RuleCall], head_arity: int | None = None
                 ) -> None:
        super().__init__()
        self.head = head
        self.tail = nn.ModuleList(tail)
        # the call's arguments: the head's, then each tail's runtime tensors (masks)
        self.head_arity = head_arity

    def forward(self, *inputs: Tensor) -> Tensor:
        return ChainFunction.apply(self, *inputs)

    def extra_repr(self) -> str:
        return "fused: " + " → ".join([self.head.spec.op, *(_call(t).spec.op for t in self.tail)])


def _call(module: nn.Module) -> RuleCall:
    assert isinstance(module, RuleCall)
    return module


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module:
    assert isinstance(node.target, str)  # a call_module node names its module
    return gm.get_submodule(node.target)


def _rule_call(gm: fx.GraphModule, node: fx.Node) -> RuleCall | None:
    if node.op != "call_module":
        return None
    mod = _module(gm, node)
    if isinstance(mod, RuleCall) and mod.spec.function is AbsLRPFunction:
        return mod
    return None


def _fusable_tail(gm: fx.GraphModule, node: fx.Node) -> RuleCall | None:
    """The element-wise rule that alone reads ``node``'s output, if any."""
    if len(node.users) != 1:
        return None
    (user,) = node.users
    call = _rule_call(gm, user)
    # runtime tensors (a softmax's mask) come from elsewhere in the graph: the chain takes them
    # as extra arguments
    if call is None or call.spec.diag is None or call.relevant != ("input",) \
            or call.normalize or call.as_relevance or not user.args or user.args[0] is not node \
            or node in user.args[1:] or len(user.args) != 1 + len(call.runtime) or user.kwargs:
        return None
    return call


def fuse_chains(gm: fx.GraphModule) -> fx.GraphModule:
    """A fused copy of a rewritten graph (sharing its modules and tensors); the input graph is
    kept as the copy's ``_unfused``. Graphs with nothing to fuse are returned as they are."""
    graph = copy.deepcopy(gm.graph)
    chains: list[list[fx.Node]] = []
    taken: set[fx.Node] = set()
    for node in graph.nodes:
        if node in taken or _rule_call(gm, node) is None:
            continue
        chain = [node]
        while _fusable_tail(gm, chain[-1]) is not None:
            chain.append(next(iter(chain[-1].users)))
        if len(chain) > 1:
            chains.append(chain)
            taken.update(chain)
    if not chains:
        return gm
    modules: dict[str, nn.Module] = {}
    for chain in chains:
        head, *tail = chain
        name = f"chain_{head.target}"
        modules[name] = ChainCall(_call(_module(gm, head)), [_call(_module(gm, t)) for t in tail],
                                  len(head.args))
        runtime = tuple(a for t in tail for a in t.args[1:])
        with graph.inserting_after(chain[-1]):
            new = graph.call_module(name, (*head.args, *runtime), head.kwargs)
        new.meta = dict(chain[-1].meta)
        new.meta["lrpfx_fused"] = [n.name for n in chain]
        chain[-1].replace_all_uses_with(new)
        for n in reversed(chain):
            graph.erase_node(n)
    root: dict[str, object] = {}
    for node in graph.nodes:
        if node.op == "get_attr":
            obj: object = gm
            for part in node.target.split("."):
                obj = getattr(obj, part)
            root[node.target] = obj
        elif node.op == "call_module":
            root[node.target] = modules.get(node.target) or gm.get_submodule(node.target)
    fused = fx.GraphModule(root, graph, class_name="LRPGraphModule")
    for key, value in gm.__dict__.items():
        if key in ("input_relevance",):
            fused.__dict__[key] = value
    fused.__dict__["_unfused"] = gm
    return fused
