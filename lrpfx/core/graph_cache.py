"""The compiled graphs of one explainer: one per input signature, captured on first use,
rewritten by the pass pipeline and kept; dtype/device conversions and float32 copies of
low-precision graphs."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, fx, nn

from lrpfx.core.capture import capture_export, capture_symbolic_trace
from lrpfx.core.report import CoverageReport
from lrpfx.passes.analyze import analyze, find_sources
from lrpfx.passes.canonicalize import canonicalize
from lrpfx.passes.fuse import fuse_chains
from lrpfx.passes.merge_gradient import total_derivative_at_merges
from lrpfx.passes.rewrite import rewrite
from lrpfx.rules.base import RuleSet


def signature(args: tuple, kwargs: Mapping[str, Any], with_batch: bool) -> tuple:
    """The cache key of a call: tensor shapes (with or without the batch size) and the
    ``repr`` of everything else."""

    def sig(v: Any) -> Any:
        if isinstance(v, Tensor):
            # dtype and device are not part of the key: a graph converted with .to() serves
            return ("T", tuple(v.shape) if with_batch else tuple(v.shape[1:]))
        return ("V", repr(v))

    return tuple(sig(a) for a in args) + tuple((k, sig(v)) for k, v in sorted(kwargs.items()))


class GraphCache(nn.Module):
    """The compiled graphs of a model, by input signature (a submodule of the explainer, so that
    ``.to()``/``.half()`` reach them).

    Parameters
    ----------
    model
        The model to capture (not registered as a submodule: conversions must not touch it).
    ruleset, strict, frontend
        As in :func:`lrpfx.compile`.
    """

    def __init__(self, model: nn.Module, ruleset: RuleSet, strict: bool, frontend: str) -> None:
        super().__init__()
        self.__dict__["_model"] = model
        self.ruleset = ruleset
        self.strict = strict
        self.frontend = frontend
        self.graphs = nn.ModuleDict()
        self._keys: dict[tuple, str] = {}
        self._reports: dict[str, CoverageReport] = {}
        self._last: str | None = None
        self._conversions: list[Callable[[Tensor], Tensor]] = []
        if frontend in ("fx", "symbolic_trace"):
            gm = model if frontend == "fx" else capture_symbolic_trace(model)
            self._install(("any",), gm)

    def _install(self, key: tuple, captured: fx.GraphModule, explained: str | None = None
                 ) -> nn.Module:
        graph = canonicalize(captured)
        facts = analyze(graph, find_sources(graph, explained))
        gm, report = rewrite(captured, graph, facts, self.ruleset, strict=self.strict,
                             frontend=self.frontend)
        if self.ruleset.options.get("merge_total_derivative"):
            report.total_derivative_merges = total_derivative_at_merges(gm)
        gm = fuse_chains(gm)
        for fn in self._conversions:
            gm._apply(fn)
        name = f"g{len(self.graphs)}"
        self.graphs[name] = gm
        self._keys[key] = name
        self._reports[name] = report
        self._last = name
        return gm

    def graph_for(self, args: tuple, kwargs: Mapping[str, Any], explained: str | None = None
                  ) -> nn.Module:
        """The compiled graph for this call, captured now if no graph serves its signature."""
        if ("any",) in self._keys:
            self._last = self._keys[("any",)]
            return self.graphs[self._last]
        keys = [(explained, *signature(args, kwargs, b)) for b in (False, True)]
        for key in keys:
            if key in self._keys:
                self._last = self._keys[key]
                return self.graphs[self._last]
        like = next((p for p in self._model.parameters() if p.is_floating_point()), None)

        def as_model(v: Any) -> Any:  # the user's model, not the (maybe converted) explainer
            if like is not None and isinstance(v, Tensor) and v.is_floating_point():
                return v.detach().to(like.device, like.dtype)
            return v

        gm, dynamic = capture_export(self._model, tuple(as_model(a) for a in args),
                                     {k: as_model(v) for k, v in kwargs.items()})
        return self._install(keys[0] if dynamic else keys[1], gm, explained)

    def _apply(self, fn, *args, **kwargs):  # noqa: ANN001 - nn.Module's own signature
        # remember dtype/device conversions for graphs captured later for new input shapes
        self._conversions.append(fn)
        # views built from the graphs (taps for at=, float32 copies) hold the old tensors
        self.__dict__.pop("_f32", None)
        for g in self.graphs.values():
            g.__dict__.pop("_lrpfx_taps", None)
        return super()._apply(fn, *args, **kwargs)

    @property
    def report(self) -> CoverageReport:
        """Per-node rule coverage of the most recently used compiled graph."""
        if self._last is None:
            raise RuntimeError(
                "nothing is compiled yet: with the export frontend the graph is captured on the "
                "first call; pass example_inputs to lrpfx.compile to capture it up front")
        return self._reports[self._last]

    @property
    def graph_module(self) -> fx.GraphModule:
        """The most recently used compiled ``GraphModule``."""
        self.report  # noqa: B018 - raises the helpful error when nothing is compiled
        return self.graphs[self._last]

    def float32(self, gm: nn.Module) -> nn.Module:
        """A float32 copy of a half/bfloat16 compiled graph, made once."""
        cache = self.__dict__.setdefault("_f32", {})
        if id(gm) not in cache:
            cache[id(gm)] = (gm, copy.deepcopy(gm).float())
        return cache[id(gm)][1]


def low_precision(gm: nn.Module) -> bool:
    """Does the compiled graph hold half or bfloat16 tensors?"""
    t = next(iter(gm.buffers()), None)
    return t is not None and t.dtype in (torch.float16, torch.bfloat16)


def to32(v: Any) -> Any:
    """``v`` as float32 if it is a half or bfloat16 tensor."""
    return v.float() if isinstance(v, Tensor) and v.dtype in (torch.float16, torch.bfloat16) \
        else v
