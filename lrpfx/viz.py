"""Heatmap rendering with matplotlib (Agg renderer: no display and no pyplot state needed).

>>> from lrpfx.viz import save_grid
>>> save_grid(x, [R_pred, R_second], "heatmaps.png",
...           column_titles=["input", "predicted", "runner-up"])   # doctest: +SKIP

Relevance maps are signed: red is positive relevance (evidence for the explained class), blue is
negative (evidence against it), white is zero. Each map is summed over channels and scaled to
``max |R| = 1`` on its own, so the colour scale ``[-1, 1]`` is centred at zero in every panel.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["image_for_display", "save_grid", "signed_heatmap"]

ArrayLike = Any  # numpy array or torch tensor


def _numpy(a: ArrayLike) -> np.ndarray:
    if hasattr(a, "detach"):  # torch.Tensor, without importing torch here
        a = a.detach().float().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def _as_batch(a: ArrayLike, name: str) -> np.ndarray:
    """``(B, C, H, W)`` from ``(B, C, H, W)`` or ``(B, H, W)``."""
    arr = _numpy(a)
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W) or (B, H, W), got {arr.shape}")
    return arr


def signed_heatmap(relevance: ArrayLike) -> np.ndarray:
    """One relevance map as an ``(H, W)`` array in ``[-1, 1]``.

    Parameters
    ----------
    relevance
        A map of shape ``(C, H, W)`` or ``(H, W)`` (numpy array or tensor).

    Returns
    -------
    numpy.ndarray
        The map summed over channels and divided by its maximum absolute value (all zeros stay
        zeros; non-finite values become 0).
    """
    r = _numpy(relevance)
    if r.ndim == 3:
        r = r.sum(axis=0)
    if r.ndim != 2:
        raise ValueError(f"a relevance map must have shape (C, H, W) or (H, W), got {r.shape}")
    r = np.nan_to_num(r, nan=0.0, posinf=0.0, neginf=0.0)
    peak = np.abs(r).max(initial=0.0)
    return r / peak if peak > 0 else r


def image_for_display(image: ArrayLike) -> np.ndarray:
    """An input image ``(C, H, W)`` or ``(H, W)`` as ``(H, W)`` grey or ``(H, W, 3)`` RGB in
    ``[0, 1]`` (min-max scaled; other channel counts are averaged to grey)."""
    x = _numpy(image)
    if x.ndim == 3:
        x = np.moveaxis(x, 0, -1) if x.shape[0] == 3 else x.mean(axis=0)
    x = np.nan_to_num(x)
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def save_grid(
    inputs: ArrayLike,
    maps: ArrayLike | Sequence[ArrayLike],
    path: str | os.PathLike,
    *,
    titles: Sequence[Sequence[str]] | None = None,
    column_titles: Sequence[str] | None = None,
    cmap: str = "bwr",
    input_cmap: str = "gray_r",
    contour: bool = True,
    cell_size: float = 1.7,
    dpi: int = 110,
) -> Path:
    """Write a PNG grid: one row per example, the input then its signed relevance maps.

    Parameters
    ----------
    inputs
        Input images, ``(B, C, H, W)`` or ``(B, H, W)``; single-channel images are drawn in grey
        (``input_cmap``), three-channel ones in colour.
    maps
        One batch of relevance maps ``(B, C, H, W)`` or ``(B, H, W)``, or a sequence of them:
        one heatmap column each. Maps are summed over channels and scaled per map to
        ``max |R| = 1``, drawn with ``cmap`` on ``[-1, 1]`` (red positive, blue negative).
    path
        Where to write the PNG; parent directories are created.
    titles
        Optional per-panel titles: ``B`` rows of ``1 + len(maps)`` strings (input first).
    column_titles
        Optional headers above the first row, ``1 + len(maps)`` strings.
    cmap
        Diverging colormap of the heatmaps.
    input_cmap
        Colormap of single-channel inputs (``"gray_r"``: dark ink on white).
    contour
        Outline the input's bright structure (its half-intensity level) in grey on every heatmap
        to help read where relevance lies.
    cell_size
        Size of one panel in inches.
    dpi
        Resolution of the PNG.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    # a bare Figure renders with Agg without touching pyplot's global backend or figure list
    from matplotlib.figure import Figure

    x = _as_batch(inputs, "inputs")
    if hasattr(maps, "shape"):
        maps = [maps]
    columns = [_as_batch(m, f"maps[{i}]") for i, m in enumerate(maps)]
    batch, ncols = x.shape[0], 1 + len(columns)
    for i, m in enumerate(columns):
        if m.shape[0] != batch or m.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"maps[{i}] has shape {m.shape}, inputs have {x.shape}")
    if titles is not None and (len(titles) != batch or any(len(t) != ncols for t in titles)):
        raise ValueError(f"titles must be {batch} rows of {ncols} strings")
    if column_titles is not None and len(column_titles) != ncols:
        raise ValueError(f"column_titles must have {ncols} strings")

    title_lines = max((t.count("\n") + 1 for row in titles or [] for t in row), default=0)
    header = 0.35 if column_titles is not None else 0.0
    row_h = cell_size + 0.17 * title_lines
    fig = Figure(figsize=(cell_size * ncols + 0.9, row_h * batch + header + 0.3), dpi=dpi)
    axes = np.atleast_2d(fig.subplots(batch, ncols, squeeze=False))
    image = None
    for b in range(batch):
        shown = image_for_display(x[b])
        ax = axes[b, 0]
        ax.imshow(shown, cmap=None if shown.ndim == 3 else input_cmap, vmin=0, vmax=1,
                  interpolation="nearest")
        level = shown.mean(axis=-1) if shown.ndim == 3 else shown
        for c, m in enumerate(columns, start=1):
            ax = axes[b, c]
            image = ax.imshow(signed_heatmap(m[b]), cmap=cmap, vmin=-1, vmax=1,
                              interpolation="nearest")
            if contour and np.ptp(level) > 0:
                ax.contour(level, levels=[0.5], colors="0.45", linewidths=0.6)
        for c in range(ncols):
            ax = axes[b, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if titles is not None:
                ax.set_title(titles[b][c], fontsize=8)
    if column_titles is not None:
        for c, t in enumerate(column_titles):
            axes[0, c].annotate(t, (0.5, 1), xycoords="axes fraction", xytext=(0, 6 + 11 *
                                title_lines), textcoords="offset points", ha="center",
                                va="bottom", fontsize=9, fontweight="bold")
    top = 1 - (header + 0.1) / fig.get_figheight()
    fig.subplots_adjust(left=0.02, right=1 - 0.85 / fig.get_figwidth(), bottom=0.02, top=top,
                        wspace=0.08, hspace=0.1 + 0.25 * title_lines)
    if image is not None:
        cax = fig.add_axes((1 - 0.65 / fig.get_figwidth(), 0.3, 0.15 / fig.get_figwidth(), 0.4))
        bar = fig.colorbar(image, cax=cax, ticks=[-1, 0, 1])
        bar.ax.tick_params(labelsize=7)
        bar.set_label("relevance / max|R|", fontsize=7)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out
