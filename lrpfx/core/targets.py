"""Targets and seeds: which output score an explanation is for, and the signal the backward
pass starts from (``G_out``), per rule set."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lrpfx.rules.base import EPS, RuleSet, unit_l1

Target = int | Tensor | Callable[[Any], Tensor] | None


def output_seeds(ruleset: RuleSet, raw: Any, target: Target, negative: bool
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
    if ruleset.seed == "gradient":  # G_out = seed, so R_out = out ⊙ seed
        return out, seeds, target_t
    if ruleset.options.get("mask_negative_logits"):
        # the absLRP identity rule applied to the logits (DESIGN.md §4.1 with f = id)
        keep = 2 * out.detach().clamp(min=0) / (out.detach().abs() + EPS)
        seeds = [unit_l1(seed * keep) for seed in seeds]
    # gradient×input contract at the output: out ⊙ G_out = seed
    grads = [torch.where(out != 0, seed / out, torch.zeros_like(out)) for seed in seeds]
    return out, grads, target_t


def check_input(x: Any, text: bool = False) -> None:
    """Raise TypeError/ValueError unless ``x`` is a batch the explainer can take relevance at:
    floating point, non-empty, finite (or, with ``text``, token ids of shape ``(B, T)``)."""
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


__all__ = ["Target", "check_input", "class_scores", "output_seeds", "resolve_target"]
