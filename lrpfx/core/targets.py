"""From a model's output to what one backward pass explains: the output tensor, the score each
example is explained for, and the seed ``G_out`` of each backward pass.

The selected output tensor's rank decides how a class target becomes a score per example:

- ``(B, C)`` class scores: ``out[b, c]``.
- ``(B, T, V)`` per-position scores, class last (a causal LM's next-token logits, per-token
  classifiers, per-frame audio heads): ``out[b, p, c]`` at position ``p``, by default the last
  non-padding position (from ``attention_mask``); or summed over a ``region`` ``(B, T)``.
- ``(B, C, *S)`` dense scores, class first (segmentation ``(B, C, H, W)``, volumes):
  ``Σ_{s ∈ region} out[b, c, s]``, the region defaulting to the positions predicted as ``c``.

The contrastive map's negative seed puts the other classes, each ``1/(C − 1)``, on the same
positions (DESIGN.md §4.2). Models returning a tuple, a dict or a Hugging Face ``ModelOutput``
are read through ``output=`` (a field name or index, or a callable); by default ``"logits"``,
then ``"out"`` (torchvision segmentation), then a tuple's first tensor.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from lrpfx.rules.base import EPS, RuleSet, unit_l1

Target = int | Tensor | Callable[[Any], Tensor] | None
"""What to explain: None (the prediction), a class or token index, a LongTensor ``(B,)`` of
them, or a callable ``f(output) -> Tensor (B,)`` scoring each example."""

Output = str | int | Callable[[Any], Tensor] | None
"""Which of the model's outputs to explain: a field name (dict, ``ModelOutput``), an index
(tuple), or a callable ``f(output) -> Tensor``."""

DEFAULT_FIELDS = ("logits", "out")
"""Fields explained by default, in this order (Hugging Face, torchvision segmentation)."""


@dataclass(frozen=True)
class TargetSpec:
    """Everything :meth:`lrpfx.Explainer.explain` takes about what to explain.

    Attributes
    ----------
    target
        See :data:`Target`.
    region
        Dense and sequence outputs: a mask or non-negative weights over the output's positions,
        ``(B, *S)`` or ``S`` (the same for every example); the score is the target class summed
        over it.
    position
        Sequence outputs: the position explained, an int (negative counts from the end) or a
        LongTensor ``(B,)``.
    output
        See :data:`Output`.
    """

    target: Target = None
    region: Tensor | None = None
    position: int | Tensor | None = None
    output: Output = None


class Seeds(NamedTuple):
    """What the backward passes start from."""

    out: Tensor
    """The tensor the backward passes start at (the selected output, or a callable's scores)."""
    grads: list[Tensor]
    """``G_out`` for each backward pass: positive, then negative for a contrastive map."""
    target: Tensor
    """The class of each example ``(B,)``, or a callable target's scores."""
    dead: Tensor
    """``(B,)`` bool: every output the positive seed touches is exactly 0, so no relevance can
    leave it (``R = out ⊙ G``)."""


# ----------------------------------------------------------------------------- output selection


def select_output(raw: Any, output: Output = None) -> Tensor:
    """The tensor to explain in a model's output.

    Parameters
    ----------
    raw
        What the model returned: a tensor, a tuple or list, a dict or ``ModelOutput``, or an
        object with tensor attributes.
    output
        None: the tensor itself, else field ``"logits"``, else ``"out"``, else a tuple's first
        tensor, else the only tensor field. A name or index picks that field; a callable is
        applied to ``raw`` and must return a tensor.

    Raises
    ------
    ValueError
        No such field, or no default applies; the message lists the available fields.
    TypeError
        A callable ``output`` that does not return a tensor.
    """
    if callable(output):
        t = output(raw)
        if not isinstance(t, Tensor):
            raise TypeError(f"output= must return a tensor from the model's output; "
                            f"got {type(t).__name__}")
        return t
    if isinstance(raw, Tensor):
        if output is None:
            return raw
        raise ValueError(f"output={output!r} picks a field, but the model returns a single "
                         f"tensor {tuple(raw.shape)}; leave output out")
    fields = _fields(raw)
    if output is None:
        for name in DEFAULT_FIELDS:
            if isinstance(fields.get(name), Tensor):
                return fields[name]
        tensors = [v for v in fields.values() if isinstance(v, Tensor)]
        if isinstance(raw, (tuple, list)) and tensors or len(tensors) == 1:
            return tensors[0]
        raise ValueError(f"cannot tell which model output to explain: it returns "
                         f"{_describe(raw, fields)}; pick one with output=<name> or "
                         "output=<callable>")
    if isinstance(output, bool) or not isinstance(output, (str, int)):
        raise TypeError(f"output must be a field name, an index or a callable; "
                        f"got {type(output).__name__}")
    if not isinstance(fields.get(output), Tensor):
        what = "no tensor field" if output not in fields else "a non-tensor field"
        raise ValueError(f"output={output!r}: the model's output has {what} {output!r}; it "
                         f"returns {_describe(raw, fields)}")
    return fields[output]


def _fields(raw: Any) -> dict[Any, Any]:
    if isinstance(raw, Mapping):
        return dict(raw.items())
    if isinstance(raw, (tuple, list)):
        return dict(enumerate(raw))
    return {k: v for k, v in vars(raw).items() if not k.startswith("_")} \
        if hasattr(raw, "__dict__") else {}


def _describe(raw: Any, fields: dict[Any, Any]) -> str:
    kind = "a tuple" if isinstance(raw, (tuple, list)) else type(raw).__name__
    if not fields:
        return f"{kind} with no fields"
    parts = [f"{k!r} {tuple(v.shape)}" if isinstance(v, Tensor)
             else f"{k!r} ({type(v).__name__})" for k, v in fields.items()]
    return f"{kind} with fields {', '.join(parts)}"


def class_scores(out: Any) -> Tensor:
    """The class scores ``(B, C)`` in a model's output (see :func:`select_output`).

    Raises
    ------
    ValueError
        No such tensor, or not two-dimensional.
    """
    logits = select_output(out)
    if logits.dim() != 2:
        raise ValueError(
            f"expected class scores of shape (B, C); the model returned {tuple(logits.shape)}")
    return logits


# ----------------------------------------------------------------------------- target indices


def resolve_target(target: Target, out: Tensor) -> Tensor:
    """The target class of each example, a LongTensor ``(B,)`` on ``out``'s device: the
    argmax for None, an int for every example, or a tensor of shape ``(B,)`` (or one element).

    Parameters
    ----------
    out
        Class scores ``(B, C)``.

    Raises
    ------
    TypeError, ValueError
        Not an integer class index, wrong shape, out of range.
    """
    if target is None:
        return out.argmax(1)
    return class_indices(target, out.shape[0], out.shape[1], out.device)


def class_indices(target: Any, b: int, c: int, device: torch.device,
                  what: str = "classes") -> Tensor:
    """``target`` (an int or integer tensor) as a LongTensor ``(b,)`` of indices in ``[0, c)``.

    Raises
    ------
    TypeError, ValueError
        Not an integer index, wrong shape, out of range (checked before any conversion, so
        ``2**70`` is a ValueError, not an OverflowError).
    """
    if isinstance(target, bool) or not isinstance(target, (int, Tensor)):
        raise TypeError(f"target must be None, an int, a LongTensor or a callable; "
                        f"got {type(target).__name__}")
    if isinstance(target, int):
        if not 0 <= target < c:
            raise ValueError(f"target {target} out of range: the output has {c} {what} "
                             f"(0..{c - 1})")
        return torch.full((b,), target, dtype=torch.long, device=device)
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"target must hold integer indices, got {target.dtype}")
    if target.dim() > 1 or target.numel() not in (1, b):
        raise ValueError(
            f"target must have shape ({b},) to match the batch; got {tuple(target.shape)}")
    if ((target < 0) | (target >= c)).any():
        shown = target.tolist() if target.numel() <= 16 else target
        raise ValueError(f"target out of range: the output has {c} {what} (0..{c - 1}); "
                         f"got {shown}")
    return target.to(device=device, dtype=torch.long).reshape(-1).expand(b)


# ----------------------------------------------------------------------------- seeds


def layout(out: Tensor) -> str:
    """``"class"`` for ``(B, C)``, ``"sequence"`` for ``(B, T, V)``, ``"dense"`` for
    ``(B, C, *S)`` with at least two spatial dimensions.

    Raises
    ------
    ValueError
        Fewer than two dimensions.
    """
    if out.dim() < 2:
        raise ValueError(
            f"the explained output has shape {tuple(out.shape)}, one score per example: explain "
            "it with target=lambda out: out (or pick class scores with output=)")
    return {2: "class", 3: "sequence"}.get(out.dim(), "dense")


def seed_weights(out: Tensor, spec: TargetSpec, *, negative: bool,
                 attention_mask: Tensor | None = None) -> tuple[Tensor, list[Tensor]]:
    """The target class of each example and the seed on ``out`` of each backward pass.

    The positive seed is ``onehot(c) ⊗ w`` with ``w`` the region's weights (1 for class
    scores), so ``Σ out ⊙ seed`` is the explained score; the negative seed is
    ``(1 − onehot(c)) / (C − 1) ⊗ w``, the other classes on the same positions.

    Parameters
    ----------
    out
        The selected output, detached or not (only its values are read).
    spec
        Target, region, position (its ``output`` was applied already).
    negative
        Also build the negative seed.
    attention_mask
        ``(B, T)`` mask of a sequence model's input: the default position is the last non-zero
        entry (left and right padding alike). Ignored unless its shape matches the output's.

    Returns
    -------
    target, seeds
        LongTensor ``(B,)``; one or two tensors of ``out``'s shape and dtype.
    """
    kind = layout(out)
    scores = out.detach().movedim(1, -1) if kind == "dense" else out.detach()  # classes last
    b, c, positions = scores.shape[0], scores.shape[-1], scores.shape[1:-1]
    if kind == "class" and (spec.region is not None or spec.position is not None):
        raise ValueError(f"region= and position= apply to dense (B, C, H, W) and sequence "
                         f"(B, T, V) outputs; this output is class scores {tuple(out.shape)}")
    if spec.region is not None and spec.position is not None:
        raise ValueError("give either region= or position=, not both")
    if kind == "dense" and spec.position is not None:
        raise ValueError(f"position= applies to sequence outputs (B, T, V); for a dense output "
                         f"{tuple(out.shape)} mark the positions with region=, shape "
                         f"{(b, *positions)}")
    if negative and c < 2:
        raise ValueError(f"a contrastive map needs at least two classes; the output has {c} "
                         "(pass contrastive=False)")
    w: Tensor | None = None
    if spec.region is not None:
        w = _region(spec.region, (b, *positions), scores)
    elif kind == "sequence":
        pos = _position(spec.position, b, positions[0], scores.device, attention_mask)
        w = F.one_hot(pos, positions[0]).to(scores.dtype)
    what = "entries in its last dimension" if kind == "sequence" else "classes"
    if spec.target is not None:
        t = class_indices(spec.target, b, c, scores.device, what)
    elif kind == "class":
        t = scores.argmax(1)
    else:
        # the class predicted at most (weighted) positions of the region
        pred = scores.argmax(-1).reshape(b, -1)
        weight = torch.ones_like(pred, dtype=scores.dtype) if w is None else w.reshape(b, -1)
        t = torch.zeros(b, c, dtype=scores.dtype, device=scores.device) \
            .scatter_add_(1, pred, weight).argmax(1)
    if w is None and kind == "dense":
        w = (scores.argmax(-1) == t.reshape(-1, *[1] * len(positions))).to(scores.dtype)
        empty = w.reshape(b, -1).sum(1) == 0
        if empty.any():
            raise ValueError(
                f"examples {_indices(empty)}: class {t[empty].tolist()} is predicted at no "
                f"position, so its default region is empty; pass region= (a mask of shape "
                f"{(b, *positions)}) to explain it over chosen positions")
    positive = F.one_hot(t, c).to(scores.dtype)
    seeds = [positive]
    if negative:
        seeds.append((1 - positive) / (c - 1))
    if w is not None:
        seeds = [s.reshape(b, *[1] * len(positions), c) * w.unsqueeze(-1) for s in seeds]
        if kind == "dense":
            seeds = [s.movedim(-1, 1) for s in seeds]
    return t, [s.contiguous() for s in seeds]


def _region(region: Any, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """``region`` as non-negative weights of ``shape`` (expanded from ``shape[1:]``)."""
    if not isinstance(region, Tensor):
        raise TypeError(f"region must be a tensor of shape {shape} (bool mask or non-negative "
                        f"weights); got {type(region).__name__}")
    if region.shape not in (torch.Size(shape), torch.Size(shape[1:])):
        raise ValueError(f"region must have the output's positions' shape {shape} (or "
                         f"{shape[1:]} for every example); got {tuple(region.shape)}")
    if region.is_complex():
        raise TypeError("region must be a bool mask or real non-negative weights")
    w = region.to(device=like.device, dtype=like.dtype).expand(shape)
    if not torch.isfinite(w).all() or (w < 0).any():
        raise ValueError("region weights must be finite and non-negative")
    empty = w.reshape(shape[0], -1).sum(1) == 0
    if empty.any():
        raise ValueError(f"the region of examples {_indices(empty)} is empty: "
                         "mark at least one position")
    return w


def _position(position: Any, b: int, t: int, device: torch.device,
              attention_mask: Tensor | None) -> Tensor:
    """The explained position of each example, a LongTensor ``(b,)`` in ``[0, t)``."""
    if position is None:
        if isinstance(attention_mask, Tensor) and attention_mask.shape == (b, t):
            present = attention_mask.to(device) != 0
            if not present.any(1).all():
                raise ValueError(f"examples {_indices(~present.any(1))} are all padding "
                                 "(attention_mask is 0 everywhere): nothing to explain")
            # the last non-zero entry, for left and right padding alike
            return t - 1 - present.flip(1).to(torch.uint8).argmax(1)
        return torch.full((b,), t - 1, dtype=torch.long, device=device)
    if isinstance(position, bool) or not isinstance(position, (int, Tensor)):
        raise TypeError(f"position must be an int or a LongTensor (B,); "
                        f"got {type(position).__name__}")
    p = torch.as_tensor(position, device=device)
    if p.is_floating_point() or p.is_complex() or p.dtype == torch.bool:
        raise TypeError(f"position must hold integer indices, got {p.dtype}")
    if p.dim() > 1 or p.numel() not in (1, b):
        raise ValueError(f"position must be an int or have shape ({b},); got {tuple(p.shape)}")
    if ((p < -t) | (p >= t)).any():
        raise ValueError(f"position out of range: the output has {t} positions "
                         f"({-t}..{t - 1}); got {p.tolist()}")
    return (p.reshape(-1).expand(b) % t).long()


def output_seeds(ruleset: RuleSet, raw: Any, target: Target | TargetSpec, negative: bool, *,
                 batch: int | None = None, attention_mask: Tensor | None = None) -> Seeds:
    """The output to start from and ``G_out`` for each backward pass.

    Parameters
    ----------
    ruleset
        Its ``seed`` says how the output is seeded: ``"gradient"``: ``G_out`` is the seed, so
        ``R_out = out ⊙ seed`` (classic LRP, the gradient family); otherwise ``R_out`` is the
        seed (absLRP, whose option ``mask_negative_logits`` first applies the absLRP identity
        rule to the outputs).
    raw
        The model's output.
    target
        What to explain: a :data:`Target` or a :class:`TargetSpec`.
    negative
        Also seed the negative (contrastive) backward pass.
    batch
        The batch size of the explained input (default: the output's first dimension).
    attention_mask
        See :func:`seed_weights`.

    Raises
    ------
    ValueError
        Non-finite outputs, a callable target with ``negative``, and what
        :func:`seed_weights` and :func:`callable_scores` raise.
    """
    spec = target if isinstance(target, TargetSpec) else TargetSpec(target)
    fn = spec.target
    if callable(fn) and not isinstance(fn, Tensor):
        if negative:
            raise ValueError("a callable target has no negative map (contrastive=False)")
        if spec.region is not None or spec.position is not None:
            raise ValueError("region= and position= select a class target's positions; a "
                             "callable target scores the output itself")
        picked = raw if spec.output is None else select_output(raw, spec.output)
        scores = callable_scores(fn, picked, _batch_of(picked) if batch is None else batch)
        # G_out = ∂score/∂out, so R_out = out ⊙ ∂score/∂out, for each example
        return Seeds(scores, [torch.ones_like(scores)], scores.detach(), scores.detach() == 0)
    out = select_output(raw, spec.output)
    if out.dim() < 1 or batch is not None and out.shape[0] != batch:
        raise ValueError(f"the explained output {tuple(out.shape)} does not start with the "
                         f"batch dimension ({batch}); pick another with output=")
    batch = out.shape[0]
    bad = ~torch.isfinite(out.detach()).reshape(batch, -1).all(1)
    if bad.any():
        raise ValueError(
            f"the model's output is not finite (NaN or inf) for examples {_indices(bad)}: its "
            "activations overflow at this input scale (or the model divides by zero); scale "
            "the input down or explain in float64")
    target_t, weights = seed_weights(out, spec, negative=negative,
                                     attention_mask=attention_mask)
    dead = ((weights[0] != 0) & (out.detach() != 0)).reshape(batch, -1).sum(1) == 0
    if dead.any():
        warnings.warn(
            f"the explained output of examples {_indices(dead)} is exactly 0 wherever the "
            "target is: no relevance leaves a zero output (R = out ⊙ G), so their positive "
            "maps are zero; explain another target or region", RuntimeWarning, stacklevel=4)
    if ruleset.seed == "gradient":  # G_out = seed, so R_out = out ⊙ seed
        return Seeds(out, weights, target_t, dead)
    if ruleset.options.get("mask_negative_logits"):
        # the absLRP identity rule applied to the outputs (DESIGN.md §4.1 with f = id)
        keep = 2 * out.detach().clamp(min=0) / (out.detach().abs() + EPS)
        weights = [unit_l1(w * keep) for w in weights]
    # gradient×input contract at the output: out ⊙ G_out = seed
    return Seeds(out, [relevance_seed(w, out.detach()) for w in weights], target_t, dead)


def _batch_of(raw: Any) -> int:
    t = raw if isinstance(raw, Tensor) else next(
        (v for v in _fields(raw).values() if isinstance(v, Tensor) and v.dim()), None)
    if t is None or t.dim() == 0:
        raise ValueError("cannot tell the batch size from the model's output")
    return t.shape[0]


def relevance_seed(seed: Tensor, out: Tensor) -> Tensor:
    """``G_out`` with ``out ⊙ G_out = seed`` (0 where ``out`` is 0).

    Where an example's outputs are so small that ``seed / out`` overflows (an input scaled by
    1e-39 on a bias-free network), its ``G_out`` is computed in float64 and scaled down to
    ``max|G_out| = finfo.max ** 0.75``: every rule is linear in ``G`` and maps are normalised
    per example, so only the map's arbitrary raw scale changes, never its normalised values.
    Large ``G`` is kept as it is: it is what carries relevance through activations far below
    the stabiliser.
    """
    zero = torch.zeros_like(out)
    g = torch.where(out != 0, seed / out, zero)
    finfo = torch.finfo(out.dtype)
    # a margin for the sums over fan-out in the first backward ops
    large = ~(g.abs().reshape(g.shape[0], -1).amax(1) <= finfo.max / 2**16)
    if not large.any():
        return g
    g64 = torch.where(out != 0, seed.double() / out.double(), zero.double())
    top = g64.abs().reshape(g.shape[0], -1).amax(1).reshape(-1, *[1] * (g.dim() - 1))
    rescaled = (g64 * (finfo.max ** 0.75 / top)).to(out.dtype)
    return torch.where(large.reshape(-1, *[1] * (g.dim() - 1)), rescaled, g)


def callable_scores(fn: Callable[[Any], Any], output: Any, batch: int) -> Tensor:
    """``fn(output)``, checked: a floating tensor of shape ``(batch,)``, finite, computed from
    the output with autograd (so relevance can flow back through it).

    Raises
    ------
    ValueError
        Each check, with what to return instead.
    """
    scores = fn(output)
    problem = None
    if not isinstance(scores, Tensor):
        problem = f"returned a {type(scores).__name__}"
    elif not scores.is_floating_point():
        problem = f"returned a {scores.dtype} tensor"
    elif scores.shape != (batch,):
        problem = (f"returned shape {tuple(scores.shape)} for a batch of {batch} (no .sum() "
                   "or [0:1] over the batch)")
    elif scores.grad_fn is None:
        problem = ("returned a score that does not depend on the model output (detached, "
                   "constant, or computed under no_grad, with .item() or numpy)")
    elif not torch.isfinite(scores.detach()).all():
        problem = (f"returned NaN or inf for examples "
                   f"{_indices(~torch.isfinite(scores.detach()))}")
    if problem is not None:
        raise ValueError(
            f"the callable target {problem}; it must return one finite score per example, a "
            f"float tensor of shape ({batch},) computed from the model output with torch "
            "operations, e.g. lambda out: out.logits[:, -1, token_id]")
    return scores


def _indices(mask: Tensor) -> list[int]:
    return mask.nonzero().flatten().tolist()


__all__ = [
    "DEFAULT_FIELDS", "Output", "Seeds", "Target", "TargetSpec", "callable_scores",
    "class_indices", "class_scores", "layout", "output_seeds", "relevance_seed",
    "resolve_target", "seed_weights", "select_output",
]
