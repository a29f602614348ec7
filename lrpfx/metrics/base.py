"""What every metric shares: input checks, target resolution, calling the attribution function,
channel reduction, normalisations, chunked forward passes and the progress bar.

The metrics take any attribution function ``explain_fn(x, target) -> map`` (lrpfx's
``Explainer.explain``, a Captum method wrapped in a lambda, ...); nothing here depends on lrpfx's
own explainer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

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
per pixel, what :mod:`lrpfx.viz` shows), ``"keep"`` compares element by element."""


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


def logits_of(out: Any) -> Tensor:
    """Class scores ``(B, K)`` from a model output (a tensor, ``.logits``, a mapping with
    ``"logits"`` or a tuple whose first item is the scores)."""
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
        raise ValueError(f"the metrics need class scores of shape (B, K); "
                         f"the model returned {tuple(logits.shape)}")
    return logits


def resolve_target(target: MetricTarget, logits: Tensor) -> Tensor:
    """The explained class of each image as a LongTensor ``(B,)`` on ``logits``' device.

    Parameters
    ----------
    target
        None (the predicted class, ``argmax`` of ``logits``), an int, or a LongTensor ``(B,)``.
    logits
        The model's scores ``(B, K)`` for the images.
    """
    b, k = logits.shape
    if target is None:
        return logits.argmax(1)
    if isinstance(target, bool) or not isinstance(target, (int, Tensor)):
        raise TypeError(f"target must be None, an int or a LongTensor, got {type(target).__name__}")
    if isinstance(target, int):
        t = torch.full((b,), target, dtype=torch.long, device=logits.device)
    else:
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"target must hold integer class indices, got {target.dtype}")
        if target.dim() != 1 or target.shape[0] != b:
            raise ValueError(f"target must have shape ({b},); got {tuple(target.shape)}")
        t = target.to(device=logits.device, dtype=torch.long)
    if ((t < 0) | (t >= k)).any():
        raise ValueError(f"target out of range: the model has {k} classes (0..{k - 1})")
    return t


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
