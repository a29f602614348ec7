"""The compiled graphs of one explainer: one per input signature, captured from the snapshot of
the model taken at ``compile``, rewritten by the pass pipeline and kept in a bounded LRU cache;
dtype/device conversions and float32 copies of low-precision graphs."""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, fx, nn

from lrpfx.core.capture import CaptureError, capture_export, capture_symbolic_trace, first_line
from lrpfx.core.report import CoverageReport
from lrpfx.core.shared_tensors import SharedTensors
from lrpfx.passes.analyze import analyze, find_sources
from lrpfx.passes.canonicalize import canonicalize
from lrpfx.passes.decompose import decompose
from lrpfx.passes.fold_batchnorm import fold_batch_norm
from lrpfx.passes.fuse import fuse_chains
from lrpfx.passes.kept_outputs import keep_inputs, keep_outputs
from lrpfx.passes.merge_gradient import total_derivative_at_merges
from lrpfx.passes.rewrite import rewrite
from lrpfx.rules.base import RuleSet

_ANY = ("any",)  # the key of the one graph of a traced (shape-independent) model


def signature(args: tuple, kwargs: Mapping[str, Any], with_batch: bool) -> tuple:
    """The cache key of a call: tensor shapes (with or without the batch size) and the
    ``repr`` of everything else."""

    def sig(v: Any) -> Any:
        if isinstance(v, Tensor):
            # dtype and device are not part of the key: a graph converted with .to() serves
            return ("T", tuple(v.shape) if with_batch else tuple(v.shape[1:]))
        return ("V", repr(v))

    return tuple(sig(a) for a in args) + tuple((k, sig(v)) for k, v in sorted(kwargs.items()))


def snapshot(model: nn.Module) -> nn.Module:
    """The explainer's private, eval-mode copy of ``model``: every graph is captured from it, so
    later edits of the user's model (weights, ``train()``) change nothing."""
    try:
        return copy.deepcopy(model).eval()
    except Exception as e:
        raise TypeError(f"lrpfx.compile copies the model once (its weights and buffers as they "
                        f"are now) and cannot copy {type(model).__name__}: {first_line(e)}. "
                        "Make it deep-copyable (copy.deepcopy) to compile it.") from e


class GraphCache(nn.Module):
    """The compiled graphs of a model, by input signature (a submodule of the explainer, so that
    ``.to()``/``.half()`` reach them). Thread-safe: lookups and captures hold a lock.

    Parameters
    ----------
    model
        The model's snapshot (see :func:`snapshot`; not registered as a submodule: conversions
        of the explainer must not touch it).
    ruleset, strict, frontend
        As in :func:`lrpfx.compile`.
    cache_size
        How many graphs to keep (least recently used dropped first). The weights and the tensors
        derived from them are shared by all graphs; each graph adds little else.
    recipe
        ``(name, options)`` that rebuild ``ruleset`` with :func:`lrpfx.rules.get_ruleset` after
        unpickling (rule specs hold lambdas, which pickle cannot); None: pickle ``ruleset``.
    """

    # set through __dict__ (not submodules, not converted by .to()); declared for the checker
    _model: nn.Module
    _shared: SharedTensors
    _f32: dict[int, tuple[nn.Module, nn.Module]]
    _f32_tensors: dict[int, tuple[Tensor, Tensor]]

    def __init__(self, model: nn.Module, ruleset: RuleSet, strict: bool, frontend: str,
                 cache_size: int = 8, recipe: tuple[str, dict[str, Any]] | None = None) -> None:
        super().__init__()
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 1:
            raise ValueError(f"cache_size must be a positive int, got {cache_size!r}")
        self.__dict__["_model"] = model
        self.ruleset = ruleset
        self.recipe = recipe
        self.strict = strict
        self.frontend = frontend
        self.cache_size = cache_size
        self.graphs = nn.ModuleDict()
        self._fresh()

    def _fresh(self) -> None:
        """The state that is rebuilt, never pickled: graphs, shared tensors, lock."""
        self.graphs.clear()
        self._keys: dict[tuple, str] = {}
        self._reports: dict[str, CoverageReport] = {}
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._last: str | None = None
        self._count = 0
        self._lock = threading.RLock()
        self._conversions: list[Callable[[Tensor], Tensor]] = []
        self.__dict__["_shared"] = SharedTensors(self._model, self._conversions)
        self.__dict__["_f32"] = {}  # id(graph) -> (graph, its float32 copy)
        self.__dict__["_f32_tensors"] = {}  # id -> (tensor, its float32 version), for all copies
        if self.frontend in ("fx", "symbolic_trace"):
            gm = self._model if self.frontend == "fx" else capture_symbolic_trace(self._model)
            assert isinstance(gm, fx.GraphModule)
            self._install(_ANY, gm)

    @property
    def lock(self) -> threading.RLock:
        """Held while graphs are looked up, captured or converted."""
        return self._lock

    # ----------------------------------------------------------------------------- lookup

    def graph_for(self, args: tuple, kwargs: Mapping[str, Any], explained: str | None = None
                  ) -> nn.Module:
        """The compiled graph for this call, captured now if no graph serves its signature.

        Raises
        ------
        ValueError
            The model itself rejects the input (wrong channel count, rank, too small).
        CaptureError
            The model runs on the input but no frontend can capture it.
        """
        with self._lock:
            keys = [_ANY] + [(explained, *signature(args, kwargs, b)) for b in (False, True)]
            for key in keys:
                if key in self._keys:
                    return self._use(self._keys[key])
            like = next((t for t in (*self._model.parameters(), *self._model.buffers())
                         if t.is_floating_point()), None)

            def as_model(v: Any) -> Any:  # the snapshot's dtype, not the (converted) explainer's
                if like is not None and isinstance(v, Tensor) and v.is_floating_point():
                    return v.detach().to(like.device, like.dtype)
                return v

            args = tuple(as_model(a) for a in args)
            kwargs = {k: as_model(v) for k, v in kwargs.items()}
            try:
                gm, dynamic = capture_export(self._model, args, kwargs)
            except CaptureError:
                self._check_model_takes(args, kwargs)
                raise
            return self._install(keys[1] if dynamic else keys[2], gm, explained)

    def _use(self, name: str) -> nn.Module:
        self._recent.move_to_end(name)
        self._last = name
        return self.graphs[name]

    def _check_model_takes(self, args: tuple, kwargs: Mapping[str, Any]) -> None:
        """Raise ValueError if the model itself fails on this input (then it is the input that
        is wrong, not the capture)."""
        try:
            with torch.no_grad():
                self._model(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - whatever the model raises, the input is at fault
            shapes = ", ".join(str(tuple(a.shape)) for a in (*args, *kwargs.values())
                               if isinstance(a, Tensor))
            taken = sorted({_describe(k[1:]) for k in self._keys if k != _ANY})
            raise ValueError(
                f"{type(self._model).__name__} cannot take an input of shape {shapes}: "
                f"{first_line(e)}"
                + (f"\nInputs it has taken: {'; '.join(taken)}" if taken else "")) from e

    # ----------------------------------------------------------------------------- building

    def _install(self, key: tuple, captured: fx.GraphModule, explained: str | None = None
                 ) -> nn.Module:
        captured = decompose(captured, self.ruleset)  # long-tail ops (lrpfx.passes.decompose)
        graph = canonicalize(captured)
        if self.ruleset.fold_batch_norm:
            fold_batch_norm(graph)
        facts = analyze(graph, find_sources(graph, explained))
        gm, report = rewrite(captured, graph, facts, self.ruleset, strict=self.strict,
                             frontend=self.frontend, shared=self._shared)
        merges = self.ruleset.options.get("merge_total_derivative")
        if merges:
            report.total_derivative_merges = total_derivative_at_merges(
                gm, "attention" if merges == "attention" else "all")
        keep_outputs(gm)
        keep_inputs(gm)
        gm = fuse_chains(gm)
        shared = {id(t) for t in self._shared.all()}  # converted already
        for fn in self._conversions:
            gm._apply(lambda t, fn=fn: t if id(t) in shared else fn(t))
        name = f"g{self._count}"
        self._count += 1
        self.graphs[name] = gm
        self._keys[key] = name
        self._reports[name] = report
        self._recent[name] = None
        while len(self._recent) > self.cache_size:
            self._evict(next(iter(self._recent)))
        return self._use(name)

    def _evict(self, name: str) -> None:
        self._f32.pop(id(self.graphs[name]), None)
        del self._recent[name]
        del self.graphs[name]
        del self._reports[name]
        for key in [k for k, v in self._keys.items() if v == name]:
            del self._keys[key]

    def _apply(self, fn, *args, **kwargs):  # noqa: ANN001 - nn.Module's own signature
        with self._lock:
            # each tensor converted once, so tensors shared by graphs stay shared
            done: dict[int, tuple[Tensor, Tensor]] = {}

            def once(t: Tensor) -> Tensor:
                if id(t) not in done:
                    done[id(t)] = (t, fn(t))
                return done[id(t)][1]

            # graphs captured later for new input shapes get the same conversions
            self._conversions.append(fn)
            self._shared.convert(once)
            # views built from the graphs (taps for at=, float32 copies) hold the old tensors
            self._f32.clear()
            self._f32_tensors.clear()
            for g in self.graphs.values():
                g.__dict__.pop("_lrpfx_taps", None)
            return super()._apply(once, *args, **kwargs)

    def float32(self, gm: nn.Module) -> nn.Module:
        """A float32 copy of a half/bfloat16 compiled graph, made once (its shared tensors
        converted once for all graphs)."""
        with self._lock:
            if id(gm) not in self._f32:
                memo = self._f32_tensors
                copy_memo: dict[int, Any] = {}
                for t in (*gm.parameters(), *gm.buffers()):
                    if id(t) not in memo:
                        memo[id(t)] = (t, t.float() if t.is_floating_point() else t)
                    if not isinstance(t, nn.Parameter):
                        copy_memo[id(t)] = memo[id(t)][1]
                self._f32[id(gm)] = (gm, copy.deepcopy(gm, copy_memo).float())
            return self._f32[id(gm)][1]

    # ----------------------------------------------------------------------------- reading

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
        assert self._last is not None
        gm = self.graphs[self._last]
        assert isinstance(gm, fx.GraphModule)
        return gm

    # ----------------------------------------------------------------------------- pickling

    def __getstate__(self) -> dict[str, Any]:
        # graphs are rebuilt from the snapshot after loading (their fx node metadata, which
        # at= and the reports read, does not survive pickling); conversions are closures:
        # kept as the dtype and device they led to
        state = dict(self.__dict__)
        state["_modules"] = {**state["_modules"], "graphs": nn.ModuleDict()}
        for key in ("_keys", "_reports", "_recent", "_last", "_lock", "_shared", "_f32",
                    "_f32_tensors", "_conversions", *(("ruleset",) if self.recipe else ())):
            state.pop(key, None)
        floats = [t for g in self.graphs.values() for t in g.buffers() if t.is_floating_point()]
        state["_converted_to"] = (floats[0].device, floats[0].dtype) \
            if floats and self._conversions else None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        converted = state.pop("_converted_to", None)
        super().__setstate__(state)
        if self.recipe is not None:
            from lrpfx.rules.registry import get_ruleset

            self.ruleset = get_ruleset(self.recipe[0], **self.recipe[1])
        self._fresh()
        if converted is not None:
            self._apply(_Convert(*converted))


def _describe(sig: tuple) -> str:
    """A signature as the user wrote the call: ``(B, 3, 32, 32)``, ``mask=(B, 16)``."""
    def one(v: tuple) -> str:
        return "(B, " + ", ".join(map(str, v[1])) + ")" if v[0] == "T" else v[1]

    return ", ".join(one(v) if v[0] in ("T", "V") else f"{v[0]}={one(v[1])}" for v in sig)


class _Convert:
    """A picklable ``.to(device, dtype)`` for floating tensors (``Module.to``'s conversion)."""

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        self.device, self.dtype = device, dtype

    def __call__(self, t: Tensor) -> Tensor:
        return t.to(self.device, self.dtype if t.is_floating_point() else None)


def low_precision(gm: nn.Module) -> bool:
    """Does the compiled graph hold any half or bfloat16 tensor?"""
    return any(t.dtype in (torch.float16, torch.bfloat16)
               for t in (*gm.parameters(), *gm.buffers()))


def to32(v: Any) -> Any:
    """``v`` as float32 if it is a half or bfloat16 tensor."""
    return v.float() if isinstance(v, Tensor) and v.dtype in (torch.float16, torch.bfloat16) \
        else v
