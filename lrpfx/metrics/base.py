"""What every metric shares: argument checks, the eval-mode model, target resolution, calling
the attribution function, channel reduction, normalisations, chunked forward passes and the
progress bar.

Every check of a metric's arguments lives here, so every metric rejects the same bad input with
the same ``ValueError`` (or ``TypeError`` for a wrong type) saying what to pass: non-finite
images, maps or logits, non-integer counts, baselines of the wrong shape, targets of the wrong
length. A metric validates its arguments once, on entry, before any model call.

The metrics take any attribution function ``explain_fn(x, target) -> map`` (lrpfx's
``Explainer.explain``, a Captum method wrapped in a lambda, ...); nothing here depends on lrpfx's
own explainer.
"""

from __future__ import annotations

import copy
import numbers
import operator
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from lrpfx.core.explainer import class_scores, resolve_target
from lrpfx.rules.base import EPS

__all__ = [
    "CHANNEL_MODES", "EPS", "ExplainFn", "MetricTarget", "call_explain", "check_baseline",
    "check_images", "check_indices", "check_int", "check_target", "chunks", "eval_copy",
    "eval_model", "forward_logits", "logits_of", "max_one_eps", "model_device",
    "positive_max_one", "progress_bar", "reduce_channels", "resolve_target", "safe_unit_l1",
    "unit_l1_eps",
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
    """Raise a helpful error unless ``images`` is a non-empty, finite, floating ``(N, C, H, W)``
    tensor."""
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N, C, H, W) with N > 0; "
                         f"got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {images.dtype}")
    bad = ~torch.isfinite(images).flatten(1).all(1)
    if bad.any():
        raise ValueError(f"{name} contain NaN or inf (images {_few(bad)}); the metrics need "
                         f"finite inputs: replace or leave out those images")


def check_int(value: Any, name: str, minimum: int) -> int:
    """``value`` as an ``int`` if it is an integer (Python, NumPy or a one-element integer
    tensor; not a bool) of at least ``minimum``; a ``ValueError`` naming ``name`` otherwise
    (``steps=2.5`` is a wrong value of a count, not a type confusion)."""
    number = None
    if not isinstance(value, bool) and not (isinstance(value, Tensor) and value.dim() > 0):
        try:
            number = operator.index(value)
        except TypeError:
            pass
    if number is None:
        raise ValueError(f"{name} must be an integer of at least {minimum}, got {value!r}")
    if number < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {number}")
    return number


def check_baseline(baseline: Any, images: Tensor, name: str = "baseline",
                   words: tuple[str, ...] = ()) -> Tensor | str:
    """A baseline for ``images`` ``(N, C, H, W)``: one of ``words``, or a finite tensor of the
    images' dtype that broadcasts to one image ``(C, H, W)`` (a number, ``(C, 1, 1)`` per
    channel, ``(H, W)``, ``(C, H, W)``, ...)."""
    if isinstance(baseline, str):
        if baseline in words:
            return baseline
        options = ", ".join([repr(w) for w in words] + ["a number", "a tensor"])
        raise ValueError(f"{name} must be {options}; got {baseline!r}")
    if isinstance(baseline, bool) or not isinstance(baseline, (numbers.Real, Tensor)):
        raise TypeError(f"{name} must be a number or a tensor, got {type(baseline).__name__}")
    base = torch.as_tensor(baseline).to(images.dtype)
    shape = tuple(images.shape[1:])
    try:
        fits = torch.broadcast_shapes(base.shape, shape) == shape
    except RuntimeError:
        fits = False
    if not fits:
        c, h, w = shape
        raise ValueError(f"{name} of shape {tuple(base.shape)} does not broadcast to one image "
                         f"{shape}; pass a number, a per-channel ({c}, 1, 1) tensor or a "
                         f"({c}, {h}, {w}) image (the same baseline serves every image)")
    if not torch.isfinite(base).all():
        raise ValueError(f"{name} contains NaN or inf; pass finite values")
    return base


def check_target(target: MetricTarget, n_images: int) -> MetricTarget:
    """None, an int, or a LongTensor ``(N,)`` (a one-element tensor is repeated); class ranges
    are checked against the model's output later, by :func:`resolve_target`."""
    if target is None:
        return None
    if isinstance(target, bool) or not isinstance(target, (numbers.Integral, Tensor)):
        raise TypeError(f"target must be None, an int or a LongTensor of shape ({n_images},); "
                        f"got {type(target).__name__}")
    if isinstance(target, numbers.Integral):
        return int(target)
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"target must hold integer class indices, got {target.dtype}")
    if target.numel() == 1:
        return target.reshape(1).expand(n_images)
    if target.dim() != 1 or len(target) != n_images:
        raise ValueError(f"target must have shape ({n_images},), one class per image; "
                         f"got {tuple(target.shape)}")
    return target


def check_indices(value: Tensor | None, name: str, shape: tuple[int, ...], limit: int | None
                   ) -> Tensor | None:
    """``value`` as a CPU LongTensor of ``shape`` with entries in ``0..limit − 1``, or None."""
    if value is None:
        return None
    if not isinstance(value, Tensor) or value.is_floating_point() or value.is_complex() or (
            value.dtype == torch.bool):
        raise TypeError(f"{name} must be a LongTensor of shape {shape}, got "
                        f"{getattr(value, 'dtype', type(value).__name__)}")
    if tuple(value.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}; got {tuple(value.shape)}")
    value = value.detach().long().cpu()
    if (value < 0).any() or limit is not None and (value >= limit).any():
        top = "" if limit is None else f"..{limit - 1}"
        raise ValueError(f"{name} must hold indices 0{top}; got {value.tolist()}")
    return value


def eval_copy(model: nn.Module, *, freeze: bool = False, memo: dict[int, Any] | None = None
              ) -> nn.Module:
    """An eval-mode copy of ``model``'s modules that shares the storage of its tensors.

    Only the module objects (their mode flags, hook tables, ...) are new; parameters and buffers
    are the model's own, or with ``freeze`` new parameters that view the same storage and do not
    require gradients (so nothing the copy runs writes ``.grad`` or flips ``requires_grad`` on the
    user's parameters). ``memo`` receives ``id(original) -> copy`` for every copied object (to map
    a user's submodule to its copy). The copy sees in-place weight updates, not a later
    ``model.to(...)``: make a new one after moving the model.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    memo = {} if memo is None else memo
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(p.detach(), requires_grad=False) if freeze else p
    for b in model.buffers():
        memo[id(b)] = b
    try:
        twin = copy.deepcopy(model, memo)
    except Exception as error:  # noqa: BLE001 - any failure gets the same advice
        raise ValueError(
            f"{type(model).__name__} could not be copied to evaluate it in eval mode without "
            f"changing it ({type(error).__name__}: {error}); call model.eval() first") from error
    return twin.eval()


def eval_model(model: nn.Module) -> nn.Module:
    """The model a metric evaluates: ``model`` itself when all its modules are in eval mode,
    otherwise :func:`eval_copy` of it.

    The user's module is never changed (no mode switch, not even one undone later: another thread
    may be using it). Eval-mode batch norm and dropout do not write to the shared tensors, so
    the copy costs only the module objects. Metrics are defined in eval mode, so this is not a
    fallback and there is no warning; the result equals that of ``model.eval()``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not any(m.training for m in model.modules()):
        return model
    return eval_copy(model)


def forward_logits(model: nn.Module, x: Tensor) -> Tensor:
    """The model's class scores ``(B, K)`` for ``x``, without gradients; a ``ValueError`` if any
    is NaN or inf (every score a metric derives from them would be meaningless)."""
    with torch.no_grad():
        logits = logits_of(model(x))
    bad = ~torch.isfinite(logits).all(1)
    if bad.any():
        raise ValueError(f"the model returned NaN or inf class scores for {int(bad.sum())} of "
                         f"{len(x)} images (positions {_few(bad)} of this batch); the metrics "
                         "need finite outputs: check the images' scale and the model")
    return logits


def _few(mask: Tensor, limit: int = 8) -> str:
    """The indices where ``mask`` is True, the first ``limit`` of them."""
    idx = mask.nonzero().flatten().tolist()
    return ", ".join(map(str, idx[:limit])) + (", ..." if len(idx) > limit else "")


def model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    """The device of the model's first parameter or buffer (``fallback`` if it has none)."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
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
    bad = ~torch.isfinite(r).flatten(1).all(1)
    if bad.any():
        raise ValueError(f"explain_fn returned a map with NaN or inf values for {int(bad.sum())} "
                         f"of its {b} inputs (positions {_few(bad)} of this call); the metrics "
                         "need finite maps: fix the attribution method or leave those images out")
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


def unit_l1_eps(t: Tensor) -> Tensor:
    """``t / (Σ|t| + ε)`` per example: the paper's code's unit-L1 normalisation."""
    return t / (t.abs().flatten(1).sum(1).reshape(-1, *[1] * (t.dim() - 1)) + EPS)


def max_one_eps(t: Tensor) -> Tensor:
    """``t / (max|t| + ε)`` per example: the paper's code's max normalisation."""
    return t / (t.abs().flatten(1).amax(1).reshape(-1, *[1] * (t.dim() - 1)) + EPS)


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
