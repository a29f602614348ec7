"""Pass (absLRP, before fusion): a rule node whose output a reader keeps for its own backward
keeps that output instead of its ratio ``y / (|y| + EPS)``.

absLRP's backward starts each rule from ``s = G ⊙ y / (|y| + EPS)``; the forward computes the
ratio once and keeps it for both backward passes of a contrastive map (a tensor the size of
``y``). Where a reader of ``y`` keeps ``y`` itself, directly or through views (a product of two
activations keeps its operands: attention's ``q``, ``k``, ``v`` are views of one projection's
output), keeping the ratio too doubles that memory; the rule then keeps ``y`` and computes the
ratio in each backward pass instead (ViT-B: the query/key/value projection, a quarter of a
block's activations). The maps are the same numbers.

Likewise for inputs (:func:`keep_inputs`): an element-wise rule normalising its input ``x``
keeps ``|x ⊙ F|`` (its factor ``F`` applied), which makes the per-pass sum ``Σ|x ⊙ F ⊙ G|`` one
dot product. Where another reader keeps ``x`` itself (the total derivative's collector, a
product), or several such rules read ``x`` (a residual stream: the layer norm and the add after
the branch), each ``|x ⊙ F|`` is a new tensor the size of ``x``; those rules keep ``x``, shared,
and sum ``Σ|x ⊙ (F ⊙ G)|`` in each pass (two element-wise passes more). ViT-B keeps three
activations fewer per block. The maps agree to rounding.
"""

from __future__ import annotations

from torch import fx

from lrpfx.core.spellings import PASSTHROUGH_NAMES, base_name
from lrpfx.passes.merge_gradient import MergeCollector
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


def _inputs_named(gm: fx.GraphModule, reader: fx.Node, node: fx.Node
                  ) -> tuple[RuleCall | None, list[str]]:
    """The absLRP rule of ``reader`` and the names of its relevant inputs that are ``node``."""
    if reader.op != "call_module":
        return None, []
    call = gm.get_submodule(str(reader.target))
    if not isinstance(call, RuleCall) or call.spec.function is not AbsLRPFunction:
        return None, []
    return call, [k for k, a in zip(call.relevant, reader.args) if a is node]


def keep_inputs(gm: fx.GraphModule) -> list[str]:
    """Mark (``RuleCall.keep_input``) the element-wise rules' normalised inputs to keep as they
    are rather than as ``|x ⊙ F|`` (see the module docstring); returns the names of the nodes
    whose readers were marked."""
    marked = []
    for node in gm.graph.nodes:
        weighted: list[tuple[RuleCall, list[str]]] = []  # rules that would keep |x ⊙ F|
        kept = False  # a reader keeps x itself
        for reader in node.users:
            if reader.op == "call_module" \
                    and isinstance(gm.get_submodule(str(reader.target)), MergeCollector):
                kept = True
                continue
            call, names = _inputs_named(gm, reader, node)
            if call is None or not names:
                continue
            normalised = [k for k in names if k in call.normalize]
            if call.spec.diag is None:  # products keep their operands, all rules what they
                kept = kept or bool(normalised) or _keeps_inputs(gm, reader)  # normalise
                continue
            signed = [k for k in normalised if k not in call.nonneg]
            kept = kept or len(signed) < len(normalised)  # x ≥ 0 is kept as it is
            if signed:
                weighted.append((call, signed))
        if weighted and (kept or sum(len(n) for _, n in weighted) > 1):
            for call, names in weighted:
                call.keep_input = call.keep_input | frozenset(names)
            marked.append(node.name)
    return marked
