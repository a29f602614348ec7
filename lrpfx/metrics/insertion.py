"""Insertion and deletion (Petsiuk et al., RISE, BMVC 2018), as used to compare relevance
splitting rules by Otsuki et al. (ECCV 2024): the target class probability as the pixels an
attribution ranks highest are inserted into a baseline image (should rise fast: high AUC) or
deleted from the image (should fall fast: low AUC). Their difference, insertion − deletion,
summarises both (higher is better).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
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

__all__ = ["InsertionDeletionResult", "gaussian_blur", "insertion_deletion"]


@dataclass(frozen=True)
class InsertionDeletionResult:
    """Insertion and deletion curves and areas, on the CPU.

    Attributes
    ----------
    insertion, deletion, difference
        ``(N,)`` areas under the insertion and deletion curves, and insertion − deletion.
    insertion_curve, deletion_curve
        ``(N, steps + 1)`` softmax probability of the target class after each step.
    fractions
        ``(steps + 1,)`` fraction of pixels inserted / deleted at each point (0 to 1): the x axis
        of the curves and of the areas.
    target
        ``(N,)`` the explained class of each image.
    """

    insertion: Tensor
    deletion: Tensor
    difference: Tensor
    insertion_curve: Tensor
    deletion_curve: Tensor
    fractions: Tensor
    target: Tensor

    @property
    def means(self) -> dict[str, float]:
        """Mean of each area over the images: ``{"insertion", "deletion", "difference"}``."""
        return {k: float(getattr(self, k).mean()) for k in ("insertion", "deletion", "difference")}

    def __str__(self) -> str:
        m = self.means
        return (f"insertion {m['insertion']:.4f}, deletion {m['deletion']:.4f}, "
                f"insertion − deletion {m['difference']:.4f} over {len(self.insertion)} images")


def gaussian_blur(images: Tensor, kernel_size: int = 11, sigma: float = 5.0) -> Tensor:
    """Blur each channel with a Gaussian (RISE's insertion canvas: ``kernel_size=11, sigma=5``),
    borders replicated, so the result has the images' shape."""
    half = kernel_size // 2
    grid = torch.arange(kernel_size, dtype=images.dtype, device=images.device) - half
    kernel = torch.exp(-grid**2 / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    c = images.shape[1]
    out = F.pad(images, (half, half, half, half), mode="replicate")
    out = F.conv2d(out, kernel.reshape(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, kernel.reshape(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def insertion_deletion(
    model: nn.Module,
    explain_fn: ExplainFn,
    images: Tensor,
    *,
    steps: int = 100,
    baseline: float | str | Tensor = 0.0,
    target: MetricTarget = None,
    batch_size: int = 256,
    progress: bool = True,
) -> InsertionDeletionResult:
    """Insertion and deletion AUCs of ``explain_fn`` on ``model``.

    Pixels (all channels of one location) are ranked by the map summed over channels, highest
    first (ties: lower index first). At point ``k = 0..steps`` the ``⌊k·P/steps⌋`` top-ranked of
    the ``P = H·W`` pixels are *inserted* into the baseline image (insertion curve) or *deleted*
    from the image, i.e. replaced by the baseline (deletion curve); the curve is the softmax
    probability of the target class. Each area is the trapezoidal integral over the fraction of
    pixels, from 0 to 1.

    Parameters
    ----------
    model
        Classifier ``(B, C, H, W) -> (B, K)`` logits; runs on its device, in eval mode (a model
        in training mode is evaluated through an eval-mode copy; it is never changed).
    explain_fn
        ``explain_fn(x, target) -> map`` (see :func:`lrpfx.metrics.gae`), called once per batch
        of images.
    images
        ``(N, C, H, W)``.
    steps
        Points of each curve after the first (the curves have ``steps + 1`` points).
    baseline
        What removed pixels become and what insertion starts from, for both curves: a number
        (default 0), a tensor broadcastable to one image ``(C, H, W)``, or ``"blur"``: the image
        blurred by :func:`gaussian_blur` (RISE's insertion canvas).
    target
        None (the predicted class), an int, or a LongTensor ``(N,)``.
    batch_size
        Images per ``explain_fn`` call, and perturbed copies per forward pass.
    progress
        Show a tqdm progress bar (counts forward passes of perturbed copies).

    Returns
    -------
    InsertionDeletionResult
        Areas per image (``insertion``, ``deletion``, ``difference``), the curves, and
        ``.means``.
    """
    check_images(images)
    steps = check_int(steps, "steps", 1)
    batch_size = check_int(batch_size, "batch_size", 1)
    canvas = check_baseline(baseline, images, words=("blur",))
    target = check_target(target, len(images))
    model = eval_model(model)
    n_images, _, h, w = images.shape
    pixels = h * w
    device = model_device(model, images.device)
    counts = torch.arange(steps + 1, device=device) * pixels // steps
    points = steps + 1

    curves = torch.empty(2, n_images, points, dtype=torch.float64)
    targets = torch.empty(n_images, dtype=torch.long)
    with progress_bar(2 * n_images * points, "insertion/deletion", progress, "eval") as bar:
        for sl in chunks(n_images, batch_size):
            x = images[sl].to(device)
            logits = forward_logits(model, x)
            t = resolve_target(target[sl] if isinstance(target, Tensor) else target, logits)
            targets[sl] = t.cpu()
            if isinstance(canvas, str):
                base = gaussian_blur(x)
            else:
                base = canvas.to(device).expand_as(x)
            score = call_explain(explain_fn, x, t).sum(1).flatten(1)
            order = torch.argsort(score, dim=1, descending=True, stable=True)
            rank = torch.empty_like(order).scatter_(
                1, order, torch.arange(pixels, device=device).expand_as(order))
            b = len(x)
            flat = torch.empty(2 * b * points, dtype=torch.float64, device=device)
            # copy j: curve j // (b·points) (0 insertion, 1 deletion), image, then point
            for cs in chunks(2 * b * points, batch_size):
                j = torch.arange(cs.start, cs.stop, device=device)
                deleting = (j // (b * points)).bool()
                img = j % (b * points) // points
                first = (rank[img] < counts[j % points, None]).reshape(-1, 1, h, w)
                take_image = first ^ deleting[:, None, None, None]
                xm = torch.where(take_image, x[img], base[img])
                prob = forward_logits(model, xm).double().softmax(1)
                flat[cs] = prob.gather(1, t[img][:, None]).squeeze(1)
                bar.update(len(j))
            curves[:, sl] = flat.reshape(2, b, points).cpu()

    fractions = counts.double().cpu() / pixels
    areas = torch.trapezoid(curves, x=fractions, dim=-1)
    return InsertionDeletionResult(
        insertion=areas[0], deletion=areas[1], difference=areas[0] - areas[1],
        insertion_curve=curves[0], deletion_curve=curves[1], fractions=fractions,
        target=targets)
