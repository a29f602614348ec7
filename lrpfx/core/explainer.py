"""The compiled model: forward unchanged, ``explain`` returns relevance maps."""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, fx, nn

from lrpfx.core.attribution import baseline_of, integrated, recording, run_graph, with_value
from lrpfx.core.audit import AuditReport, Recorder
from lrpfx.core.calls import explained_call, explained_name, explained_value
from lrpfx.core.capture import FRONTENDS, call_kwargs, keyword_only_input
from lrpfx.core.checks import check_input, check_maps, check_token_ids
from lrpfx.core.graph_cache import GraphCache, low_precision, snapshot, to32
from lrpfx.core.report import CoverageReport
from lrpfx.core.taps import armed, with_taps
from lrpfx.core.targets import (
    Output,
    Target,
    TargetSpec,
    class_scores,
    output_seeds,
    resolve_target,
)
from lrpfx.passes.rewrite import RelevanceSource
from lrpfx.rules.base import RuleSet, unit_l1, unit_max
from lrpfx.rules.registry import get_ruleset


class Explainer(nn.Module):
    """A model compiled for relevance propagation. Build it with :func:`lrpfx.compile`.

    Calling it runs the model's forward (same values). :meth:`explain` returns relevance maps.
    The user's model is never modified, nor read after compilation: the explainer keeps its own
    eval-mode snapshot of the model, taken here, and captures every graph from it.
    """

    _model: nn.Module  # the snapshot, set through __dict__ (not a submodule)

    def __init__(
        self,
        model: nn.Module,
        *,
        rule: str | RuleSet = "abslrp",
        strict: bool = True,
        frontend: str = "export",
        example_inputs: tuple | list | Tensor | Mapping[str, Any] | None = None,
        cache_size: int = 8,
        **rule_options: Any,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"lrpfx.compile expects a torch.nn.Module, got {type(model).__name__}")
        ruleset = get_ruleset(rule, **rule_options)
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
        # the model's state now, in eval mode; not registered as a submodule: .to()/.half() on
        # the explainer must not touch it
        self.__dict__["_model"] = model = snapshot(model)
        self.cache = GraphCache(model, ruleset, strict, frontend, cache_size,
                                recipe=(rule, rule_options) if isinstance(rule, str) else None)
        if frontend != "export" or example_inputs is None:
            return
        if isinstance(example_inputs, Mapping):
            self.cache.graph_for((), call_kwargs(model, example_inputs),
                                 explained_name(dict(example_inputs)))
        else:
            args = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) \
                else (example_inputs,)
            name = keyword_only_input(model)
            if name is not None and len(args) == 1:
                self.cache.graph_for((), {name: args[0]}, name)
            else:
                self.cache.graph_for(args, {})

    @property
    def ruleset(self) -> RuleSet:
        """The rule set the graphs are compiled with."""
        return self.cache.ruleset

    @property
    def graphs(self) -> nn.ModuleDict:
        """The compiled graphs, one per input signature."""
        return self.cache.graphs

    @property
    def report(self) -> CoverageReport:
        """Per-node rule coverage of the most recently used compiled graph."""
        return self.cache.report

    @property
    def graph_module(self) -> fx.GraphModule:
        """The most recently used compiled ``GraphModule`` (for inspection)."""
        return self.cache.graph_module

    # ----------------------------------------------------------------------------- running

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The model's forward, through the compiled graph."""
        kwargs = call_kwargs(self._model, kwargs)
        return self.cache.graph_for(args, kwargs)(*args, **kwargs)

    def explain(
        self,
        x: Tensor | None = None,
        target: Target = None,
        *,
        contrastive: bool | None = None,
        normalize: bool = True,
        at: str | Sequence[str] | None = None,
        region: Tensor | None = None,
        position: int | Tensor | None = None,
        output: Output = None,
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
            output relevance is then ``output ⊙ ∂f/∂output``. For dense outputs
            ``(B, C, H, W)`` a class is explained summed over a region, for sequence outputs
            ``(B, T, V)`` at one position (see :mod:`lrpfx.core.targets`, ``docs/targets.md``).
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
            of :attr:`graph_module`; one name or several. Each map is scaled like the input's.
        region
            Dense or sequence outputs: a mask ``(B, H, W)`` / ``(B, T)`` (or non-negative
            weights) of the output positions the target class is summed over. Default for
            dense outputs: the positions predicted as the target.
        position
            Sequence outputs: the position explained, an int or a LongTensor ``(B,)``. Default:
            the last non-padding position (from ``attention_mask``), else the last.
        output
            Which of the model's outputs to explain: a field name (``"logits"``, ``"out"``), a
            tuple index, or a callable ``f(model_output) -> Tensor``. Default: the tensor
            itself, else ``"logits"``, else ``"out"``, else a tuple's first tensor.
        **inputs
            Further model inputs by keyword (``input_ids``, ``attention_mask``, ...).

        Returns
        -------
        Tensor or dict
            For a tensor input: the shape of ``x``. For token ids: ``(B, T)``, relevance at the
            token embeddings summed over the hidden dimension. With ``at``: a dict with the
            input's map under ``"input"`` and one map per requested position.
        """
        for name, flag in (("contrastive", contrastive), ("normalize", normalize)):
            if flag is not None and not isinstance(flag, bool):
                raise TypeError(f"{name} must be True or False, got {flag!r}")
        if callable(target) and not isinstance(target, Tensor):
            if contrastive:
                raise ValueError("a callable target gives a positive map only; "
                                 "pass contrastive=False or leave it out")
            contrastive = False
        contrastive = True if contrastive is None else contrastive
        parts = self.explain_parts(x, target, negative=contrastive, normalize=normalize, at=at,
                                   region=region, position=position, output=output, **inputs)
        result = _chosen(parts, contrastive)
        if at is None:
            return result
        return {"input": result, **{k: _chosen(v, contrastive) for k, v in parts.at.items()}}

    def explain_parts(self, x: Tensor | None = None, target: Target = None, *,
                      negative: bool = True, normalize: bool = True,
                      at: str | Sequence[str] | None = None, region: Tensor | None = None,
                      position: int | Tensor | None = None, output: Output = None,
                      **inputs: Any) -> Explanation:
        """Everything :meth:`explain` computes, from one forward pass.

        Parameters
        ----------
        x, target, normalize, at, region, position, output, inputs
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
        if torch.is_inference_mode_enabled():
            raise RuntimeError("explain runs a backward pass, which torch.inference_mode() "
                               "forbids: call it outside inference_mode (no_grad is fine)")
        args, kwargs, explained = explained_call(self._model, x, inputs)
        value = explained_value(args, kwargs, explained)
        check_input(value, text=not args and not value.is_floating_point())
        gm = self.cache.graph_for(args, kwargs, explained)
        out_dtype = value.dtype if value.is_floating_point() else None
        if low_precision(gm):
            # relevance divides by activations and sums over many tiny terms: float32 throughout
            gm = self.cache.float32(gm)
            args = tuple(to32(a) for a in args)
            kwargs = {k: to32(v) for k, v in kwargs.items()}
            value = explained_value(args, kwargs, explained)
        if at is not None:
            gm, taps = with_taps(gm, (at,) if isinstance(at, str) else tuple(at))
        else:
            taps = {}
        probes = [m for m in gm.modules() if isinstance(m, RelevanceSource)]
        for p in probes:
            check_token_ids(value, len(p.weight))
        spec = TargetSpec(target, region, position, output)
        mask = kwargs.get("attention_mask")
        mode = self.ruleset.attribution
        if mode in ("baseline", "integral") and probes:
            raise ValueError(f"rule set {self.ruleset.name!r} needs a floating-point input "
                             "(a baseline to integrate from); token ids have none")
        if mode == "integral":
            if at:
                raise ValueError("integrated_gradients has no relevance at inner nodes (at=)")
            maps, out, target_t, dead = integrated(self.ruleset, gm, args, kwargs, explained,
                                                   value, spec, negative)
            inner: list[dict[str, Tensor]] = [{} for _ in maps]
        else:
            baseline = None
            # the baseline's activations are recorded on the graph's modules: one such call at
            # a time
            serial = self.cache.lock if mode == "baseline" else contextlib.nullcontext()
            with serial, torch.enable_grad(), armed(probes) as leaves, \
                    armed(taps.values()) as tapped:
                if mode == "baseline":
                    baseline = baseline_of(self.ruleset, value)
                    with torch.no_grad(), recording(gm):
                        run_graph(gm, *with_value(args, kwargs, explained, baseline), value)
                if not probes:
                    leaf = value.detach().requires_grad_(True)
                    leaves.append(leaf)
                    args, kwargs = with_value(args, kwargs, explained, leaf)
                raw = run_graph(gm, args, kwargs, value)
                out, seeds, target_t, dead = output_seeds(
                    self.ruleset, raw, spec, negative, batch=value.shape[0],
                    attention_mask=mask if isinstance(mask, Tensor) else None)
                maps, inner = [], []
                for i, seed in enumerate(seeds):
                    grads = torch.autograd.grad(out, [*leaves, *(t for _, t in tapped)], seed,
                                                retain_graph=i + 1 < len(seeds),
                                                allow_unused=True)
                    gl, gt = grads[:len(leaves)], grads[len(leaves):]
                    if mode == "gradient":
                        r = _total(gl)
                    elif mode == "baseline":
                        r = (leaves[0].detach() - baseline) * gl[0]
                    elif getattr(gm, "input_relevance", False):
                        r = _total(gl)
                    else:
                        r = _total([leaf.detach() * g for leaf, g in zip(leaves, gl)])
                    maps.append(r.sum(-1) if probes else r)
                    inner.append({name: (t.detach() * g if g is not None
                                         else torch.zeros_like(t))
                                  for (name, t), g in zip(tapped, gt)})

        check_maps(maps, value, dead)  # no NaN leaves lrpfx; no silent all-zero map

        def parts(pos: Tensor, neg: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor | None]:
            if normalize:
                pos, neg = unit_l1(pos), None if neg is None else unit_l1(neg)
                con = None if neg is None else unit_max(pos - neg)
            else:
                con = None if neg is None else pos - neg
            return cast(pos), None if neg is None else cast(neg), None if con is None else cast(con)

        def cast(t: Tensor) -> Tensor:  # after the subtraction: it cancels a lot
            return t if out_dtype is None else t.to(out_dtype)

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


def _total(terms: Sequence[Tensor]) -> Tensor:
    return functools.reduce(torch.add, terms)


def _chosen(maps: Explanation | NodeMaps, contrastive: bool) -> Tensor:
    if not contrastive:
        return maps.positive
    assert maps.contrastive is not None  # explain_parts(negative=True) computes it
    return maps.contrastive


__all__ = ["Explainer", "Explanation", "class_scores", "resolve_target"]
