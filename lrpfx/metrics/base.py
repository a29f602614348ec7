"""What every metric shares: input checks, target resolution, calling the attribution function,
channel reduction, normalisations, chunked forward passes and the progress bar.

The metrics take any attribution function ``explain_fn(x, target) -> map`` (lrpfx's
``Explainer.explain``, a Captum method wrapped in a lambda, ...); nothing here depends on lrpfx's
own explainer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from lrpfx.core.explainer import class_scores, resolve_target
from lrpfx.rules.base import EPS

__all__ = [
    "CHANNEL_MODES", "EPS", "ExplainFn", "MetricTarget", "call_explain", "check_images",
    "chunks", "logits_of", "model_device", "positive_max_one", "progress_bar", "reduce_channels",
    "resolve_target", "safe_unit_l1",
]

ExplainFn = Callable[[Tensor, Tensor], Tensor]
"""``explain_fn(x, target) -> map``: ``x`` is ``(B, C, H, W)`` on the model's device, ``target``
a LongTensor ``(B,)``; the map has shape ``(B, C, H, W)``, ``(B, 1, H, W)`` or ``(B, H, W)``."""

MetricTarget = int | Tensor | None
"""None (the predicted class), an int (the same class for every image) or a LongTensor ``(N,)``."""

CHANNEL_MODES = ("sum", "keep")
"""How multi-channel maps are compared with the image: ``"sum"`` sums over channels (one value
per pixel, what :mod:`lrpfx.apps.viz` shows), ``"keep"`` compares element by element."""


def check_images(images: Tensor, name: str = "images") -> None:
    """Raise a helpful error unless ``images`` is a non-empty floating ``(N, C, H, W)`` tensor."""
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N, C, H, W) with N > 0; "
                         f"got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {images.dtype}")


def model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    """The device of the model's first parameter or buffer (``fallback`` if it has none)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return fallback


logits_of = class_scores
"""The class scores ``(B, K)`` in a model's output (:func:`lrpfx.core.explainer.class_scores`)."""


def call_explain(explain_fn: ExplainFn, x: Tensor, target: Tensor) -> Tensor:
    """``explain_fn(x, target)``, detached, checked and shaped ``(B, C', H, W)`` (``C'`` is 1 or
    ``x``'s channel count)."""
    r = explain_fn(x, target)
    if not isinstance(r, Tensor):
        raise TypeError(f"explain_fn must return a tensor, got {type(r).__name__}")
    r = r.detach()
    b, c, h, w = x.shape
    if r.dim() == 3:
        r = r.unsqueeze(1)
    if r.dim() != 4 or r.shape[0] != b or r.shape[2:] != (h, w) or r.shape[1] not in (1, c):
        raise ValueError(f"explain_fn returned a map of shape {tuple(r.shape)} for an input of "
                         f"shape {tuple(x.shape)}; expected ({b}, {c} or 1, {h}, {w}) "
                         f"or ({b}, {h}, {w})")
    return r.to(x.device)


def reduce_channels(maps: Tensor, channels: int, mode: str) -> Tensor:
    """Bring ``(B, C', H, W)`` maps to the resolution a metric compares at.

    ``"sum"``: sum over channels, ``(B, 1, H, W)``. ``"keep"``: ``(B, channels, H, W)``, a
    one-channel map repeated over the image's channels.
    """
    if mode == "sum":
        return maps.sum(1, keepdim=True)
    if mode == "keep":
        return maps.expand(-1, channels, -1, -1)
    raise ValueError(f"unknown channel mode {mode!r}; use one of {CHANNEL_MODES}")


def positive_max_one(maps: Tensor) -> Tensor:
    """The positive part of each map, scaled so its maximum is 1 (all-zero maps stay zero)."""
    pos = maps.clamp(min=0)
    top = pos.flatten(1).amax(1).reshape(-1, *[1] * (maps.dim() - 1))
    return pos / torch.where(top > 0, top, torch.ones_like(top))


def safe_unit_l1(t: Tensor) -> Tensor:
    """Each example scaled to ``Σ|t| = 1`` (all-zero examples stay zero)."""
    total = t.abs().flatten(1).sum(1).reshape(-1, *[1] * (t.dim() - 1))
    return t / torch.where(total > 0, total, torch.ones_like(total))


def chunks(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of ``range(n)`` of at most ``size`` items."""
    if size < 1:
        raise ValueError(f"batch_size must be positive, got {size}")
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def progress_bar(total: int, desc: str, enabled: bool, unit: str = "img") -> Any:
    """A tqdm bar (a silent one when ``enabled`` is False)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=False)
