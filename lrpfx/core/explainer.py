"""The compiled model: forward unchanged, ``explain`` returns relevance maps."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from lrpfx.core.audit import AuditReport, Recorder
from lrpfx.core.capture import FRONTENDS, call_kwargs, capture_export, capture_symbolic_trace
from lrpfx.core.report import CoverageReport
from lrpfx.passes.analyze import analyze, find_sources
from lrpfx.passes.canonicalize import canonicalize
from lrpfx.passes.fold_batchnorm import fold_batch_norm
from lrpfx.passes.fuse import fuse_chains
from lrpfx.passes.merge_gradient import total_derivative_at_merges
from lrpfx.passes.rewrite import RelevanceSource, rewrite
from lrpfx.rules.base import EPS, RuleCall, RuleSet, unit_l1, unit_max
from lrpfx.rules.registry import get_ruleset

Target = int | Tensor | Callable[[Any], Tensor] | None


def _signature(args: tuple, kwargs: Mapping[str, Any], with_batch: bool) -> tuple:
    def sig(v: Any) -> Any:
        if isinstance(v, Tensor):
            # dtype and device are not part of the key: a graph converted with .to() serves
            return ("T", tuple(v.shape) if with_batch else tuple(v.shape[1:]))
        return ("V", repr(v))

    return tuple(sig(a) for a in args) + tuple((k, sig(v)) for k, v in sorted(kwargs.items()))


class Explainer(nn.Module):
    """A model compiled for relevance propagation. Build it with :func:`lrpfx.compile`.

    Calling it runs the model's forward (same values). :meth:`explain` returns relevance maps.
    The user's model is never modified: the captured graph owns copies of every tensor it uses.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        rule: str | RuleSet = "abslrp",
        strict: bool = True,
        frontend: str = "export",
        example_inputs: tuple | Tensor | Mapping[str, Any] | None = None,
        **rule_options: Any,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"lrpfx.compile expects a torch.nn.Module, got {type(model).__name__}")
        self.ruleset = get_ruleset(rule, **rule_options)
        self.strict = strict
        if isinstance(model, fx.GraphModule) and frontend == "export":
            frontend = "fx"
        if frontend not in (*FRONTENDS, "fx"):
            raise ValueError(f"unknown frontend {frontend!r}; use one of {FRONTENDS}")
        self.frontend = frontend
        if model.training:
            warnings.warn(
                f"{type(model).__name__} is in training mode; lrpfx explains it as in eval mode "
                "(on a copy: your model's mode is left as it is).", stacklevel=3)
            model = copy.deepcopy(model).eval()
        # not registered as a submodule: .to()/.half() on the explainer must not touch it
        self.__dict__["_model"] = model
        self.graphs = nn.ModuleDict()
        self._keys: dict[tuple, str] = {}
        self._reports: dict[str, CoverageReport] = {}
        self._last: str | None = None
        self._conversions: list[Callable[[Tensor], Tensor]] = []
        if frontend in ("fx", "symbolic_trace"):
            gm = model if frontend == "fx" else capture_symbolic_trace(model)
            self._install(("any",), gm)
        elif isinstance(example_inputs, Mapping):
            self._graph_for((), call_kwargs(model, example_inputs),
                            _explained_name(dict(example_inputs)))
        elif example_inputs is not None:
            args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
            self._graph_for(args, {})

    # ----------------------------------------------------------------------------- compilation

    def _install(self, key: tuple, captured: fx.GraphModule, explained: str | None = None
                 ) -> nn.Module:
        graph = canonicalize(captured)
        if self.ruleset.fold_batch_norm:
            fold_batch_norm(graph)
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

    def _graph_for(self, args: tuple, kwargs: Mapping[str, Any], explained: str | None = None
                   ) -> nn.Module:
        if ("any",) in self._keys:
            self._last = self._keys[("any",)]
            return self.graphs[self._last]
        keys = [(explained, *_signature(args, kwargs, b)) for b in (False, True)]
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
        """The most recently used compiled ``GraphModule`` (for inspection)."""
        self.report  # noqa: B018 - raises the helpful error when nothing is compiled
        return self.graphs[self._last]

    # ----------------------------------------------------------------------------- running

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The model's forward, through the compiled graph."""
        kwargs = call_kwargs(self._model, kwargs)
        return self._graph_for(args, kwargs)(*args, **kwargs)

    def explain(
        self,
        x: Tensor | None = None,
        target: Target = None,
        *,
        contrastive: bool | None = None,
        normalize: bool = True,
        at: Sequence[str] | None = None,
        **inputs: Any,
    ) -> Tensor | dict[str, Tensor]:
        """Relevance of each element of ``x`` (or of each token) for the target.

        Parameters
        ----------
        x
            Floating-point input batch, shape ``(B, ...)``. Leave it out for models called with
            keyword inputs (Hugging Face): ``explain(input_ids=ids, attention_mask=mask)``.
        target
            None (the predicted class), an int (the same class for every example), a LongTensor
            of shape ``(B,)``, or a callable ``f(model_output) -> Tensor (B,)`` scoring each
            example (e.g. the cosine similarity of a sentence embedding with a reference); the
            output relevance is then ``output ⊙ ∂f/∂output``.
        contrastive
            Class targets (default True): the reference's contrastive map, positive minus
            negative (DESIGN.md §4.2), each example scaled to ``max|R| = 1``. False: the map from
            the one-hot target only, each example scaled to ``Σ|R| = 1``. A callable target
            gives the positive map only (``contrastive=True`` is an error).
        normalize
            False: no scaling; the positive map in the rule set's own units (for conservative
            rules such as ``lrp0``, ``gradient_x_input``, ``deeplift_rescale``,
            ``integrated_gradients``: the target logit's share; absLRP's raw scale is arbitrary,
            its normalisations being deferred) and the contrastive map positive − negative.
        at
            Also return relevance at these graph positions, from the same backward pass: module
            paths of the model (``"layer3"``: relevance at that module's output) or node names
            of :attr:`graph_module`. Each map is scaled like the input's.
        **inputs
            Further model inputs by keyword (``input_ids``, ``attention_mask``, ...).

        Returns
        -------
        Tensor or dict
            For a tensor input: the shape of ``x``. For token ids: ``(B, T)``, relevance at the
            token embeddings summed over the hidden dimension. With ``at``: a dict with the
            input's map under ``"input"`` and one map per requested position.
        """
        if callable(target) and not isinstance(target, Tensor):
            if contrastive:
                raise ValueError("a callable target gives a positive map only; "
                                 "pass contrastive=False or leave it out")
            contrastive = False
        contrastive = True if contrastive is None else contrastive
        parts = self.explain_parts(x, target, negative=contrastive, normalize=normalize, at=at,
                                   **inputs)
        result = parts.contrastive if contrastive else parts.positive
        if at is None:
            return result
        return {"input": result, **{k: v.contrastive if contrastive else v.positive
                                    for k, v in parts.at.items()}}

    def explain_parts(self, x: Tensor | None = None, target: Target = None, *,
                      negative: bool = True, normalize: bool = True,
                      at: Sequence[str] | None = None, **inputs: Any) -> Explanation:
        """Everything :meth:`explain` computes, from one forward pass.

        Parameters
        ----------
        x, target, normalize, at, inputs
            As in :meth:`explain`.
        negative
            Also run the backward pass from the uniform non-target seed (needed for the
            contrastive map; not possible with a callable target).

        Returns
        -------
        Explanation
            ``positive`` and ``negative`` maps (unit L1 per example), ``contrastive``
            (positive − negative, scaled to max |R| = 1; None without ``negative``),
            the model's ``logits`` (or raw output for a callable target), ``target``, and the
            maps at the ``at`` positions.
        """
        args, kwargs, explained = _explained_call(x, inputs)
        kwargs = call_kwargs(self._model, kwargs)
        value = args[0] if args else kwargs[explained]
        _check_input(value, text=not args and not value.is_floating_point())
        gm = self._graph_for(args, kwargs, explained)
        out_dtype = value.dtype if value.is_floating_point() else None
        if _low_precision(gm):
            # relevance divides by activations and sums over many tiny terms: float32 throughout
            gm = self._float32(gm)
            args = tuple(_to32(a) for a in args)
            kwargs = {k: _to32(v) for k, v in kwargs.items()}
            value = args[0] if args else kwargs[explained]
        if at is not None:
            gm, taps = _tapped(gm, tuple(at))
        else:
            taps = {}
        probes = [m for m in gm.modules() if isinstance(m, RelevanceSource)]
        mode = self.ruleset.attribution
        if mode in ("baseline", "integral") and probes:
            raise ValueError(f"rule set {self.ruleset.name!r} needs a floating-point input "
                             "(a baseline to integrate from); token ids have none")
        if mode == "integral":
            if at:
                raise ValueError("integrated_gradients has no relevance at inner nodes (at=)")
            maps, out, target_t = self._integrated(gm, args, kwargs, explained, value, target,
                                                    negative)
            inner: list[dict[str, Tensor]] = [{} for _ in maps]
        else:
            baseline = None
            if mode == "baseline":
                baseline = self._baseline(value)
                with torch.no_grad(), _recording(gm):
                    _run(gm, *_with_value(args, kwargs, explained, baseline), value)
            with torch.enable_grad(), _armed(probes) as leaves, _armed(taps.values()) as tapped:
                if not probes:
                    leaf = value.detach().requires_grad_(True)
                    leaves.append(leaf)
                    args, kwargs = _with_value(args, kwargs, explained, leaf)
                raw = _run(gm, args, kwargs, value)
                out, seeds, target_t = self._seeds(raw, target, negative)
                maps, inner = [], []
                for i, seed in enumerate(seeds):
                    grads = torch.autograd.grad(out, [*leaves, *(t for _, t in tapped)], seed,
                                                retain_graph=i + 1 < len(seeds),
                                                allow_unused=True)
                    gl, gt = grads[:len(leaves)], grads[len(leaves):]
                    if mode == "gradient":
                        r = sum(gl)
                    elif mode == "baseline":
                        r = (leaves[0].detach() - baseline) * gl[0]
                    elif getattr(gm, "input_relevance", False):
                        r = sum(gl)
                    else:
                        r = sum(leaf.detach() * g for leaf, g in zip(leaves, gl))
                    maps.append(r.sum(-1) if probes else r)
                    inner.append({name: (t.detach() * g if g is not None
                                         else torch.zeros_like(t))
                                  for (name, t), g in zip(tapped, gt)})

        def parts(pos: Tensor, neg: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor | None]:
            if normalize:
                pos, neg = unit_l1(pos), None if neg is None else unit_l1(neg)
                con = None if neg is None else unit_max(pos - neg)
            else:
                con = None if neg is None else pos - neg
            return cast(pos), cast(neg), cast(con)

        def cast(t: Tensor | None) -> Tensor | None:  # after the subtraction: it cancels a lot
            return t if t is None or out_dtype is None else t.to(out_dtype)

        positive, neg, contrastive = parts(maps[0], maps[1] if negative else None)
        at_maps = {name: NodeMaps(*parts(inner[0][name], inner[1][name] if negative else None))
                   for name in taps}
        return Explanation(positive=positive, negative=neg, contrastive=contrastive,
                           logits=out.detach(), target=target_t, at=at_maps)

    def audit(self, x: Tensor | None = None, target: Target = None, **inputs: Any
              ) -> AuditReport:
        """Where relevance goes: per rule-bearing node, the relevance arriving at its output and
        leaving through each input, for the positive map of ``target`` (see
        :mod:`lrpfx.core.audit`).

        Parameters
        ----------
        x, target, inputs
            As in :meth:`explain`.

        Returns
        -------
        AuditReport
            One :class:`lrpfx.core.audit.NodeAudit` per rule-bearing node, in graph order;
            ``print(report)`` shows batch means and the share each node loses.
        """
        if self.ruleset.attribution in ("baseline", "integral"):
            raise ValueError(f"rule set {self.ruleset.name!r} has no single backward pass to "
                             "audit")
        with Recorder() as rec:
            # at=() runs the unfused graph: every rule is its own node there
            self.explain_parts(x, target, negative=False, normalize=False, at=(), **inputs)
        return rec.report(self.ruleset.name)

    def _baseline(self, value: Tensor) -> Tensor:
        b = self.ruleset.options.get("baseline")
        if b is None:
            return torch.zeros_like(value)
        b = torch.as_tensor(b, dtype=value.dtype, device=value.device)
        try:
            return b.expand_as(value)
        except RuntimeError:
            raise ValueError(f"baseline of shape {tuple(b.shape)} does not broadcast to the "
                             f"input's shape {tuple(value.shape)}") from None

    def _integrated(self, gm: nn.Module, args: tuple, kwargs: dict[str, Any],
                    explained: str | None, value: Tensor, target: Target, negative: bool
                    ) -> tuple[list[Tensor], Tensor, Tensor]:
        """Integrated gradients: Gauss–Legendre nodes on [0, 1], path points batched."""
        import numpy as np

        steps = int(self.ruleset.options["steps"])
        chunk = self.ruleset.options.get("internal_batch_size") or steps * value.shape[0]
        per = max(1, chunk // value.shape[0])
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        alphas = torch.as_tensor((nodes + 1) / 2, dtype=value.dtype, device=value.device)
        weights = torch.as_tensor(weights / 2, dtype=value.dtype, device=value.device)
        baseline = self._baseline(value)
        delta = value.detach() - baseline
        with torch.no_grad():
            out, seeds, target_t = self._seeds(_run(gm, args, kwargs, value), target, negative)
        b = value.shape[0]
        total = [torch.zeros_like(value) for _ in seeds]
        for start in range(0, steps, per):
            a = alphas[start:start + per]
            k = len(a)
            path = (baseline + a.reshape(-1, *[1] * value.dim()) * delta).reshape(
                k * b, *value.shape[1:]).requires_grad_(True)
            rest = {n: v.repeat(k, *[1] * (v.dim() - 1)) if isinstance(v, Tensor)
                    and v.dim() and v.shape[0] == b else v for n, v in kwargs.items()}
            p_args, p_kwargs = _with_value(
                tuple(v.repeat(k, *[1] * (v.dim() - 1)) for v in args), rest, explained, path)
            with torch.enable_grad():
                logits = class_scores(_run(gm, p_args, p_kwargs, value))
                for i, seed in enumerate(seeds):
                    (g,) = torch.autograd.grad(logits, path, seed.repeat(k, 1),
                                               retain_graph=i + 1 < len(seeds))
                    w = weights[start:start + per].reshape(-1, *[1] * value.dim())
                    total[i] += (g.reshape(k, *value.shape) * w).sum(0)
        return [delta * t for t in total], out, target_t

    def _float32(self, gm: nn.Module) -> nn.Module:
        """A float32 copy of a half/bfloat16 compiled graph, made once."""
        cache = self.__dict__.setdefault("_f32", {})
        if id(gm) not in cache:
            cache[id(gm)] = (gm, copy.deepcopy(gm).float())
        return cache[id(gm)][1]

    def _seeds(self, raw: Any, target: Target, negative: bool
               ) -> tuple[Tensor, list[Tensor], Tensor]:
        """The output tensor to backpropagate from, and ``G_out`` for each backward pass."""
        if callable(target) and not isinstance(target, Tensor):
            if negative:
                raise ValueError("a callable target has no negative map (contrastive=False)")
            scores = target(raw)
            if not isinstance(scores, Tensor) or scores.dim() != 1:
                raise ValueError("a callable target must return a tensor of shape (B,)")
            # G_out = ∂score/∂out, so R_out = out ⊙ ∂score/∂out, for each example
            return scores, [torch.ones_like(scores)], scores.detach()
        out = class_scores(raw)
        target_t = resolve_target(target, out)
        positive = F.one_hot(target_t, out.shape[1]).to(out.dtype)
        seeds = [positive]
        if negative:
            if out.shape[1] < 2:
                raise ValueError("a contrastive map needs at least two classes")
            seeds.append((1 - positive) / (out.shape[1] - 1))
        if self.ruleset.seed == "gradient":  # G_out = seed, so R_out = out ⊙ seed
            return out, seeds, target_t
        if self.ruleset.options.get("mask_negative_logits"):
            # the absLRP identity rule applied to the logits (DESIGN.md §4.1 with f = id)
            keep = 2 * out.detach().clamp(min=0) / (out.detach().abs() + EPS)
            seeds = [unit_l1(seed * keep) for seed in seeds]
        # gradient×input contract at the output: out ⊙ G_out = seed
        grads = [torch.where(out != 0, seed / out, torch.zeros_like(out)) for seed in seeds]
        return out, grads, target_t


class Explanation(NamedTuple):
    """The parts of an absLRP explanation (see :meth:`Explainer.explain_parts`)."""

    positive: Tensor
    negative: Tensor | None
    contrastive: Tensor | None
    logits: Tensor
    target: Tensor
    at: dict[str, NodeMaps] = {}
    """Maps at the positions requested with ``at``, by the name given."""


class NodeMaps(NamedTuple):
    """Positive, negative and contrastive maps at one graph position."""

    positive: Tensor
    negative: Tensor | None
    contrastive: Tensor | None


def _low_precision(gm: nn.Module) -> bool:
    t = next(iter(gm.buffers()), None)
    return t is not None and t.dtype in (torch.float16, torch.bfloat16)


def _to32(v: Any) -> Any:
    return v.float() if isinstance(v, Tensor) and v.dtype in (torch.float16, torch.bfloat16) \
        else v


class _Tap(nn.Module):
    """Identity on a graph position named in ``explain(..., at=...)``; when armed, its output
    (whose gradient is the total ``G`` arriving at that tensor) is collected."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.armed: list[tuple[str, Tensor]] | None = None

    def forward(self, t: Tensor) -> Tensor:
        if self.armed is None:
            return t
        out = t.view_as(t)
        self.armed.append((self.name, out))  # in execution order, not request order
        return out


def _tapped(gm: nn.Module, names: tuple[str, ...]) -> tuple[fx.GraphModule, dict[str, _Tap]]:
    """A copy of ``gm`` (sharing its modules and tensors) with a tap after each position."""
    cache = gm.__dict__.setdefault("_lrpfx_taps", {})
    if names in cache:
        return cache[names]
    base = gm.__dict__.get("_unfused", gm)  # fused chains hide their inner positions
    graph = copy.deepcopy(base.graph)
    nodes = {n.name: n for n in graph.nodes}
    taps: dict[str, _Tap] = {}
    root = {name: mod for name, mod in base.named_children()}
    for name in names:
        node = _position(graph, nodes, name)
        tap = taps[name] = _Tap(name)
        target = f"lrpfx_tap_{len(taps)}"
        root[target] = tap
        with graph.inserting_after(node):
            new = graph.call_module(target, (node,))
        node.replace_all_uses_with(new, delete_user_cb=lambda u, new=new: u is not new)
    for n in graph.nodes:
        if n.op == "get_attr":  # from gm: the unfused graph's own may predate a .to()
            root[n.target] = _attr(gm, n.target)
    out = fx.GraphModule(root, graph, class_name="LRPGraphModule")
    out.input_relevance = getattr(gm, "input_relevance", False)
    cache[names] = (out, taps)
    return out, taps


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


def _with_value(args: tuple, kwargs: dict[str, Any], explained: str | None, value: Tensor
                ) -> tuple[tuple, dict[str, Any]]:
    """The call's inputs with the explained input replaced by ``value``."""
    if args:
        return (value, *args[1:]), kwargs
    return args, {**kwargs, explained: value}


@contextmanager
def _recording(gm: nn.Module) -> Iterator[None]:
    """Rules that need the baseline's activations (DeepLIFT) record them during this run."""
    calls = [m for m in gm.modules() if isinstance(m, RuleCall)]
    for c in calls:
        c.recording = True
    try:
        yield
    finally:
        for c in calls:
            c.recording = False


@contextmanager
def _armed(probes: Iterable[nn.Module]) -> Iterator[list[Tensor]]:
    leaves: list[Tensor] = []
    for p in probes:
        p.armed = leaves
    try:
        yield leaves
    finally:
        for p in probes:
            p.armed = None


def _explained_call(x: Tensor | None, inputs: dict[str, Any]
                    ) -> tuple[tuple, dict[str, Any], str | None]:
    if x is not None:
        return (x,), inputs, None
    if not inputs:
        raise TypeError("explain needs an input: explain(x) or explain(input_ids=..., ...)")
    return (), inputs, _explained_name(inputs)


def _explained_name(inputs: Mapping[str, Any]) -> str:
    for name in ("input_ids", "inputs_embeds", "pixel_values", "input_values"):
        if isinstance(inputs.get(name), Tensor):
            return name
    name = next((k for k, v in inputs.items() if isinstance(v, Tensor)), None)
    if name is None:
        raise TypeError("none of the keyword inputs is a tensor")
    return name


def _run(gm: nn.Module, args: tuple, kwargs: dict[str, Any], x: Tensor) -> Any:
    try:
        return gm(*args, **kwargs)
    except (RuntimeError, AssertionError) as e:
        raise ValueError(
            f"the compiled graph cannot take an input of shape {tuple(x.shape)} "
            f"({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e) else ''})") from e


def _check_input(x: Any, text: bool = False) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if text:
        if x.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"token ids must be integers, got {x.dtype}")
        if x.dim() != 2:
            raise ValueError(f"token ids must have shape (B, T); got {tuple(x.shape)}")
        return
    if not x.is_floating_point():
        raise TypeError(
            f"relevance is taken with respect to x, which must be floating point; got {x.dtype}")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch (B, ...); got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or inf")


def class_scores(out: Any) -> Tensor:
    """The class scores ``(B, C)`` in a model's output: the tensor itself, ``out["logits"]`` /
    ``out.logits`` (Hugging Face), or the first element of a tuple.

    Raises
    ------
    ValueError
        No such tensor, or not two-dimensional.
    """
    if isinstance(out, Tensor):
        logits = out
    elif isinstance(out, Mapping) and "logits" in out:
        logits = out["logits"]
    elif isinstance(getattr(out, "logits", None), Tensor):
        logits = out.logits
    elif isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        logits = out[0]
    else:
        raise ValueError(f"cannot find class scores in the model output ({type(out).__name__})")
    if logits.dim() != 2:
        raise ValueError(
            f"explain needs class scores of shape (B, C); the model returned {tuple(logits.shape)}")
    return logits


def resolve_target(target: Target, out: Tensor) -> Tensor:
    """The target class of each example, a LongTensor ``(B,)`` on ``out``'s device: the
    argmax for None, an int for every example, or a tensor of shape ``(B,)`` (or one element).

    Raises
    ------
    TypeError, ValueError
        Not an integer class index, wrong shape, out of range.
    """
    b, c = out.shape
    if target is None:
        return out.argmax(1)
    if isinstance(target, bool) or not isinstance(target, (int, Tensor)):
        raise TypeError(f"target must be None, an int or a LongTensor, got {type(target).__name__}")
    if isinstance(target, int):
        t = torch.full((b,), target, dtype=torch.long, device=out.device)
    else:
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"target must hold integer class indices, got {target.dtype}")
        t = target.to(device=out.device, dtype=torch.long).reshape(-1)
        if target.dim() > 1 or t.numel() not in (1, b):
            raise ValueError(
                f"target must have shape ({b},) to match the batch; got {tuple(target.shape)}")
        t = t.expand(b)
    if ((t < 0) | (t >= c)).any():
        raise ValueError(f"target out of range: the model has {c} classes (0..{c - 1}); "
                         f"got {t.tolist() if t.numel() <= 16 else t}")
    return t


__all__ = ["Explainer", "Explanation", "class_scores", "resolve_target"]
