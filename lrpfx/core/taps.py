"""Taps for ``explain(..., at=...)``: identity modules inserted after named graph positions
whose outputs, while armed, are collected so the backward pass also yields ``G`` there."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

from torch import Tensor, fx, nn

# which modules collect their outputs, and where: per thread (per context), so that two threads
# explaining with the same graph never see each other's tensors
_SINKS: ContextVar[Mapping[int, list]] = ContextVar("lrpfx_sinks", default=MappingProxyType({}))
_BUILD = threading.Lock()


def sink(module: nn.Module) -> list | None:
    """The list ``module`` appends its output to in this call (None: not armed)."""
    return _SINKS.get().get(id(module))


@contextmanager
def armed(modules: Iterable[nn.Module]) -> Iterator[list]:
    """Arm ``modules`` (taps, relevance sources) for the calls made inside, in this thread only;
    yields the list they append to."""
    collected: list = []
    token = _SINKS.set({**_SINKS.get(), **{id(m): collected for m in modules}})
    try:
        yield collected
    finally:
        _SINKS.reset(token)



class Tap(nn.Module):
    """Identity on a graph position named in ``explain(..., at=...)``; when armed, its output
    (whose gradient is the total ``G`` arriving at that tensor) is collected."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def forward(self, t: Tensor) -> Tensor:
        collected = sink(self)
        if collected is None:
            return t
        out = t.view_as(t)
        collected.append((self.name, out))  # in execution order, not request order
        return out


def with_taps(gm: nn.Module, names: tuple[str, ...]) -> tuple[fx.GraphModule, dict[str, Tap]]:
    """A copy of ``gm`` (sharing its modules and tensors) with a tap after each position."""
    with _BUILD:
        cache = gm.__dict__.setdefault("_lrpfx_taps", {})
        if names not in cache:
            cache[names] = _build(gm, names)
        return cache[names]


def _build(gm: nn.Module, names: tuple[str, ...]) -> tuple[fx.GraphModule, dict[str, Tap]]:
    base = gm.__dict__.get("_unfused", gm)  # fused chains hide their inner positions
    graph = copy.deepcopy(base.graph)
    nodes = {n.name: n for n in graph.nodes}
    taps: dict[str, Tap] = {}
    root = {name: mod for name, mod in base.named_children()}
    for name in names:
        node = _position(graph, nodes, name)
        tap = taps[name] = Tap(name)
        target = f"lrpfx_tap_{len(taps)}"
        root[target] = tap
        with graph.inserting_after(node):
            new = graph.call_module(target, (node,))
        node.replace_all_uses_with(new, delete_user_cb=_not(new))
    for n in graph.nodes:
        if n.op == "get_attr":  # from gm: the unfused graph's own may predate a .to()
            root[n.target] = _attr(gm, n.target)
    out = fx.GraphModule(root, graph, class_name="LRPGraphModule")
    out.__dict__["input_relevance"] = getattr(gm, "input_relevance", False)
    return out, taps


def _not(node: fx.Node) -> Callable[[fx.Node], bool]:
    return lambda user: user is not node


def _attr(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _position(graph: fx.Graph, nodes: dict[str, fx.Node], name: str) -> fx.Node:
    """The node for ``name``: a node name, or the output of the model's module at that path."""
    if name in nodes and nodes[name].op not in ("placeholder", "output"):
        return nodes[name]
    inside = [n for n in graph.nodes if "lrpfx" in n.meta and (
        n.meta["lrpfx"].module_path == name or n.meta["lrpfx"].module_path.startswith(name + "."))]
    members = set(inside)
    outputs = [n for n in inside if n.meta["lrpfx"].extra.get("relevant")
               and any(u not in members for u in n.users)]
    if not outputs:
        paths = sorted({n.meta["lrpfx"].module_path.split(".")[0] for n in graph.nodes
                        if "lrpfx" in n.meta and n.meta["lrpfx"].module_path})
        raise ValueError(f"no relevance-carrying module or node called {name!r}; top-level "
                         f"modules on the relevance path: {', '.join(paths) or 'none'}")
    return outputs[-1]


__all__ = ["Tap", "armed", "sink", "with_taps"]
