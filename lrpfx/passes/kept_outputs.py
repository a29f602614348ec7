"""Pass (absLRP, before fusion): a rule node whose output a reader keeps for its own backward
keeps that output instead of its ratio ``y / (|y| + EPS)``.

absLRP's backward starts each rule from ``s = G ⊙ y / (|y| + EPS)``; the forward computes the
ratio once and keeps it for both backward passes of a contrastive map (a tensor the size of
``y``). Where a reader of ``y`` keeps ``y`` itself, directly or through views (a product of two
activations keeps its operands: attention's ``q``, ``k``, ``v`` are views of one projection's
output), keeping the ratio too doubles that memory; the rule then keeps ``y`` and computes the
ratio in each backward pass instead (ViT-B: the query/key/value projection, a quarter of a
block's activations). The maps are the same numbers.
"""

from __future__ import annotations

from torch import fx

from lrpfx.core.spellings import PASSTHROUGH_NAMES, base_name
from lrpfx.rules.abslrp import AbsLRPFunction
from lrpfx.rules.base import RuleCall

_VIEWS = frozenset({"view", "reshape", "_unsafe_view", "permute", "transpose", "t", "unbind",
                    "split", "split_with_sizes", "chunk", "getitem", "select", "slice", "narrow",
                    "unsqueeze", "squeeze", "flatten", "unflatten", "expand", "movedim", "alias"})
"""The pass-through ops (:data:`lrpfx.core.spellings.PASSTHROUGH_NAMES`) whose result shares
its input's memory (``reshape`` where it can)."""
assert _VIEWS <= PASSTHROUGH_NAMES


def _is_view(gm: fx.GraphModule, node: fx.Node) -> bool:
    return node.op in ("call_function", "call_method") and base_name(node, gm) in _VIEWS


def _keeps_inputs(gm: fx.GraphModule, node: fx.Node) -> bool:
    """A rule node that keeps its relevant inputs as they are (no ``prepare``, no factors)."""
    if node.op != "call_module":
        return False
    call = gm.get_submodule(str(node.target))
    return isinstance(call, RuleCall) and call.spec.diag is None and call.spec.prepare is None


def _kept_by_reader(gm: fx.GraphModule, node: fx.Node) -> bool:
    stack, seen = list(node.users), set()
    while stack:
        user = stack.pop()
        if user in seen:
            continue
        seen.add(user)
        if _keeps_inputs(gm, user):
            return True
        if _is_view(gm, user):
            stack.extend(user.users)
    return False


def keep_outputs(gm: fx.GraphModule) -> list[str]:
    """Mark (``RuleCall.keep_output``) the rule nodes of ``gm`` whose output a reader keeps;
    returns their names."""
    marked = []
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        call = gm.get_submodule(str(node.target))
        if isinstance(call, RuleCall) and call.spec.function is AbsLRPFunction \
                and call.spec.diag is None and call.spec.divide \
                and call.spec.vjp is not None and _kept_by_reader(gm, node):
            call.keep_output = True
            marked.append(node.name)
    return marked
