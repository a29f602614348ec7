"""What the explainer checks on the way in and out: inputs it can take relevance at, token ids
inside the vocabulary, and maps that are finite and not silently zero (no NaN leaves lrpfx)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from lrpfx.rules.base import EPS


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


def check_token_ids(ids: Tensor, vocabulary: int) -> None:
    """Raise ValueError unless every token id indexes the embedding table (``0..vocabulary-1``),
    which would otherwise fail deep in the graph with an IndexError."""
    bad = (ids < 0) | (ids >= vocabulary)
    if bad.any():
        raise ValueError(
            f"token ids out of the vocabulary (0..{vocabulary - 1}): "
            f"{sorted(set(ids[bad].tolist()))[:8]} in examples "
            f"{_indices(bad.reshape(ids.shape[0], -1).any(1))}; check the tokenizer matches "
            "the model")


def check_maps(maps: Sequence[Tensor], x: Tensor, dead: Tensor | None = None) -> None:
    """No NaN leaves lrpfx: raise on a non-finite map, warn where every map of an example is
    all zero (what explain returns is then zero too).

    Parameters
    ----------
    maps
        The raw maps (positive, and negative for a contrastive map), each ``(B, ...)``.
    x
        The explained input (a zero input legitimately has a zero map; token ids never do).
    dead
        Examples already warned about by :func:`lrpfx.core.targets.output_seeds` (a zero
        target output).

    Raises
    ------
    ValueError
        A map holds NaN or inf.
    """
    b = maps[0].shape[0]
    # one pass per map, no temporary: NaN and inf propagate to the extremes
    extremes = [torch.aminmax(m.detach().reshape(b, -1), dim=1) for m in maps]
    for m, (lo, hi) in zip(maps, extremes):
        bad = ~(torch.isfinite(lo) & torch.isfinite(hi))
        if bad.any():
            raise ValueError(
                f"relevance overflowed for examples {_indices(bad)} (NaN or inf in the "
                "backward pass): their activations are too large or too small for "
                f"{m.dtype}; scale the input or explain in float64")
    zero = torch.stack([(lo == 0) & (hi == 0) for lo, hi in extremes]).all(0)
    if x.is_floating_point() and zero.any():
        x_lo, x_hi = torch.aminmax(x.detach().reshape(b, -1), dim=1)
        zero &= (x_lo != 0) | (x_hi != 0)
    if dead is not None:
        zero &= ~dead.to(zero.device)
    if zero.any():
        scale = (f" (the input's largest magnitude is {x.detach().abs().amax().item():.1e})"
                 if x.is_floating_point() else "")
        warnings.warn(
            f"the relevance map of examples {_indices(zero)} is all zero: no relevance reached the "
            "input. The rule passed none (absLRP and LRP-α1β0 carry positive contributions "
            "only, so a score every input lowers gets none: try another target), the target "
            "does not depend on the input (e.g. behind inactive ReLUs), or the relevance "
            f"vanished under the stabiliser {EPS:g} of R / (|z| + {EPS:g}), as for inputs near "
            f"1e-30{scale} (float64 keeps such maps: explainer.double() with a float64 input)",
            RuntimeWarning, stacklevel=4)


def _indices(mask: Tensor) -> list[int]:
    return mask.nonzero().flatten().tolist()


__all__ = ["check_input", "check_maps", "check_token_ids"]
