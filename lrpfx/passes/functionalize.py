"""In-place → out-of-place: ``x.relu_()``, ``x.add_(y)``, ``x += y``, ``aten.relu_``.

A canonical op is out of place, so an in-place call that becomes one no longer mutates its first
argument. That is the same computation exactly when nothing reads the mutated tensor after the
call; where something does, the call is marked and canonicalize refuses it (an op that stays as
it is, data movement or unknown, keeps its in-place target and needs nothing).
Runs on :func:`lrpfx.passes.canonicalize.canonicalize`'s copy of the graph.
"""

from __future__ import annotations

from torch import fx, nn

from lrpfx.core.spellings import is_inplace, spelling

INPLACE_CONFLICT = "lrpfx_inplace_conflict"
"""Meta key: why an in-place call cannot be made out of place."""


def functionalize(graph: fx.Graph, root: nn.Module) -> None:
    """Mark every in-place call of ``graph`` whose mutated tensor is read after it."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    for node in graph.nodes:
        if node.op not in ("call_function", "call_method") or not is_inplace(node):
            continue
        mutated = node.args[0] if node.args else None
        if not isinstance(mutated, fx.Node):
            continue
        later = [u for u in mutated.users if u is not node and order[u] > order[node]]
        if later:
            node.meta[INPLACE_CONFLICT] = (
                f"in-place {spelling(node, root)} mutates {mutated.name}, which "
                f"{', '.join(u.name for u in later)} read(s) afterwards")
