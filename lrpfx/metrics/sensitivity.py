"""Sensitivity-n (Ancona et al., "Towards better understanding of gradient-based attribution
methods for deep neural networks", ICLR 2018; DESIGN.md §6).

An attribution method is *sensitive-n* when, for every subset ``S`` of ``n`` input features, the
attributions in ``S`` add up to the change of the output when ``S`` is removed:
``Σ_{i∈S} R_i = f_c(x) − f_c(x with x_S set to the baseline)``. The metric measures how close a
method comes: the Pearson correlation of the two sides over many random subsets, as a function
of ``n``. Gradient×Input (and LRP-0, DeepLIFT-Rescale, Integrated Gradients) on a linear model
with a zero baseline reach 1 for every ``n``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lrpfx.metrics.base import (
    ExplainFn,
    MetricTarget,
    call_explain,
    check_baseline,
    check_images,
    check_int,
    check_target,
    chunks,
    eval_model,
    forward_logits,
    model_device,
    progress_bar,
    resolve_target,
)

__all__ = ["SensitivityNResult", "default_ns", "sensitivity_n"]


@dataclass(frozen=True)
class SensitivityNResult:
    """Sensitivity-n curves, on the CPU.

    Attributes
    ----------
    ns
        ``(L,)`` subset sizes ``n`` (in features).
    correlation
        ``(N, L)`` Pearson correlation per image and ``n`` (NaN where either side does not vary
        over the subsets, e.g. ``n`` = all features).
    target
        ``(N,)`` the explained class of each image.
    """

    ns: Tensor
    correlation: Tensor
    target: Tensor

    @property
    def mean(self) -> Tensor:
        """``(L,)`` mean correlation over the images, per ``n`` (NaNs ignored)."""
        return self.correlation.nanmean(0)

    def __str__(self) -> str:
        pairs = ", ".join(f"n={int(n)}: {float(m):.4f}" for n, m in zip(self.ns, self.mean))
        return f"Sensitivity-n over {len(self.correlation)} images: {pairs}"


def default_ns(n_features: int, points: int = 10) -> list[int]:
    """About ``points`` subset sizes spaced logarithmically from 1 to ``n_features − 1``."""
    if n_features < 2:
        raise ValueError(f"Sensitivity-n needs at least 2 features, got {n_features}")
    top = n_features - 1
    grid = [round(math.exp(i * math.log(top) / max(points - 1, 1))) for i in range(points)]
    return sorted(set(grid))


def sensitivity_n(
    model: nn.Module,
    explain_fn: ExplainFn,
    images: Tensor,
    *,
    ns: Sequence[int] | None = None,
    n_subsets: int = 100,
    feature: int = 1,
    baseline: float | Tensor = 0.0,
    target: MetricTarget = None,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
    progress: bool = True,
) -> SensitivityNResult:
    """Sensitivity-n of ``explain_fn`` on ``model`` (Ancona et al., ICLR 2018).

    For each image and each ``n``, ``n_subsets`` random subsets ``S`` of ``n`` features are
    drawn; the result is the Pearson correlation, over the subsets, between ``Σ_{i∈S} R_i`` and
    ``f_c(x) − f_c(x_[S ← baseline])``, where ``f_c`` is the logit of class ``c``.

    Parameters
    ----------
    model
        Classifier ``(B, C, H, W) -> (B, K)`` logits; runs on its device, in eval mode (a model
        in training mode is evaluated through an eval-mode copy; it is never changed).
    explain_fn
        ``explain_fn(x, target) -> map`` (see :func:`lrpfx.metrics.gae`); called once per batch
        of images. A feature's relevance is the map summed over the feature's pixels and over
        channels.
    images
        ``(N, C, H, W)``; ``H`` and ``W`` divisible by ``feature``.
    ns
        Subset sizes, each in ``1..n_features``; default :func:`default_ns` (about 10 sizes,
        logarithmically spaced from 1 to ``n_features − 1``).
    n_subsets
        Random subsets per image and ``n`` (at least 2).
    feature
        Side of the square patch that is one feature: 1 (default) makes every pixel (all its
        channels) a feature; ``p`` gives ``(H/p)·(W/p)`` features.
    baseline
        Value the removed features take: a number (default 0, "zeroed") or a tensor broadcastable
        to one image ``(C, H, W)``.
    target
        None (the predicted class), an int, or a LongTensor ``(N,)``.
    generator
        Random generator for the subsets (any device); None uses torch's global generator.
    batch_size
        Images per ``explain_fn`` call, and masked copies per forward pass.
    progress
        Show a tqdm progress bar (counts forward passes of masked copies).

    Returns
    -------
    SensitivityNResult
        ``ns``, per-image ``correlation`` ``(N, L)`` and ``.mean`` ``(L,)``.
    """
    check_images(images)
    n_images, c, h, w = images.shape
    feature = check_int(feature, "feature", 1)
    if h % feature or w % feature:
        raise ValueError(f"feature (patch side) {feature} must divide the image size {h}×{w}")
    n_subsets = check_int(n_subsets, "n_subsets", 2)  # a correlation needs 2
    batch_size = check_int(batch_size, "batch_size", 1)
    hp, wp = h // feature, w // feature
    n_features = hp * wp
    if ns is None:
        ns = default_ns(n_features)
    elif isinstance(ns, str) or not hasattr(ns, "__len__") or len(ns) == 0:
        raise ValueError(f"ns must be a non-empty sequence of subset sizes; got {ns!r}")
    else:
        ns = [check_int(n, "every n in ns", 1) for n in ns]
    if any(n > n_features for n in ns):
        raise ValueError(f"every n must be in 1..{n_features} (the number of features); got {ns}")
    canvas = check_baseline(baseline, images)
    target = check_target(target, n_images)
    model = eval_model(model)
    device = model_device(model, images.device)
    base = torch.as_tensor(canvas, device=device)  # a tensor: no words are allowed
    rand_device = generator.device if generator is not None else device

    correlation = torch.empty(n_images, len(ns), dtype=torch.float64)
    targets = torch.empty(n_images, dtype=torch.long)
    with progress_bar(n_images * len(ns) * n_subsets, "Sensitivity-n", progress, "eval") as bar:
        for sl in chunks(n_images, batch_size):
            x = images[sl].to(device)
            logits = forward_logits(model, x)
            t = resolve_target(target[sl] if isinstance(target, Tensor) else target, logits)
            f0 = logits.gather(1, t[:, None]).squeeze(1).double()
            r = call_explain(explain_fn, x, t).double().sum(1)
            r = r.reshape(-1, hp, feature, wp, feature).sum((2, 4)).flatten(1)  # (B, features)
            targets[sl] = t.cpu()
            b = len(x)
            for j, n in enumerate(ns):
                sums = torch.empty(b * n_subsets, dtype=torch.float64, device=device)
                diffs = torch.empty_like(sums)
                for ps in chunks(b * n_subsets, batch_size):
                    img = torch.arange(ps.start, ps.stop, device=device) // n_subsets
                    keys = torch.rand(len(img), n_features, generator=generator,
                                      device=rand_device).to(device)
                    subset = keys.topk(n, dim=1).indices  # n distinct features, uniformly
                    mask = torch.zeros_like(keys, dtype=torch.bool).scatter_(1, subset, True)
                    sums[ps] = (r[img] * mask).sum(1)
                    pixels = mask.reshape(-1, 1, hp, 1, wp, 1).expand(
                        -1, 1, hp, feature, wp, feature).reshape(-1, 1, h, w)
                    out = forward_logits(model, torch.where(pixels, base, x[img]))
                    diffs[ps] = f0[img] - out.gather(1, t[img][:, None]).squeeze(1).double()
                    bar.update(len(img))
                correlation[sl, j] = _pearson(sums.reshape(b, n_subsets),
                                              diffs.reshape(b, n_subsets)).cpu()
    return SensitivityNResult(ns=torch.tensor(ns), correlation=correlation, target=targets)


def _pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation along the last dimension; NaN where either side is constant (up to
    rounding: a spread below 1e-10 of its magnitude)."""

    def centred(v: Tensor) -> tuple[Tensor, Tensor]:
        d = v - v.mean(-1, keepdim=True)
        spread = d.norm(dim=-1)
        flat = spread <= 1e-10 * v.norm(dim=-1)
        return d, torch.where(flat, torch.full_like(spread, math.nan), spread)

    (da, sa), (db, sb) = centred(a), centred(b)
    return (da * db).sum(-1) / (sa * sb)
