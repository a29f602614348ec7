"""Heatmap rendering with matplotlib (Agg renderer: no display and no pyplot state needed).

>>> from lrpfx.apps.viz import save_grid, save_explanation, overlay
>>> save_grid(x, [R_pred, R_second], "heatmaps.png",
...           column_titles=["input", "predicted", "runner-up"])   # doctest: +SKIP
>>> save_explanation(picture, [R_top1, R_top2], "cat.png",
...                  titles=["tabby (0.71)", "tiger cat (0.12)"])   # doctest: +SKIP
>>> rgb = overlay(picture, R_top1)                   # (H, W, 3) in [0, 1]   # doctest: +SKIP

Relevance maps are signed: red is positive relevance (evidence for the explained class), blue is
negative (evidence against it), white is zero. Each map is summed over channels and scaled to
``max |R| = 1`` (on its own, or with ``shared_scale=True`` by the largest value of the batch, so
maps can be compared), so the colour scale ``[-1, 1]`` is centred at zero in every panel. With
``positive_only=True`` negative relevance is dropped and the scale is white (0) to red (1).
An *overlay* draws the map on a grey copy of the input: grey keeps the image's own colours from
being read as relevance, and the heatmap's opacity grows with ``|R|`` so that where the map is
zero the image shows through.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CMAP", "PANELS_KEY", "heatmap_rgb", "image_for_display", "normalise_maps", "overlay",
    "save_explanation", "save_grid", "signed_heatmap",
]

#: Diverging colour map of signed relevance (matplotlib name): red +, white 0, blue −.
CMAP = "bwr"
#: PNG text key under which :func:`save_explanation` stores each panel's pixel box as JSON,
#: ``{"input": [left, top, right, bottom], "heatmap:0": [...], "overlay:0": [...], ...}``.
PANELS_KEY = "lrpfx:panels"

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


def normalise_maps(
    maps: ArrayLike,
    *,
    shared_scale: bool = False,
    positive_only: bool = False,
    percentile: float = 100.0,
) -> np.ndarray:
    """A batch of relevance maps as ``(B, H, W)`` arrays in ``[-1, 1]`` (or ``[0, 1]``).

    Parameters
    ----------
    maps
        ``(B, C, H, W)`` or ``(B, H, W)``; summed over channels.
    shared_scale
        Divide every map by the largest ``|R|`` of the whole batch (comparable across maps)
        instead of each by its own maximum.
    positive_only
        Set negative relevance to 0 first (the peak is then the largest positive value).
    percentile
        Scale by this percentile of ``|R|`` instead of its maximum (100), clipping what lies
        above to ``±1``: LRP maps of large images are dominated by a few pixels, and a scale
        of 99.5 shows the rest of the structure.

    Returns
    -------
    numpy.ndarray
        Non-finite values become 0; an all-zero map stays zero.
    """
    m = _as_batch(maps, "maps").sum(axis=1)
    m = np.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0)
    if positive_only:
        m = np.clip(m, 0.0, None)
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    a = np.abs(m).reshape(1 if shared_scale else len(m), -1)
    peak = (a.max(axis=1, initial=0.0) if percentile == 100 or a.size == 0
            else np.percentile(a, percentile, axis=1))
    peak = np.broadcast_to(peak.reshape(-1, 1, 1), (len(m), 1, 1))
    out = np.divide(m, peak, out=np.zeros_like(m), where=peak > 0)
    return np.clip(out, -1.0, 1.0)


def heatmap_rgb(heatmap: ArrayLike, *, positive_only: bool = False, cmap: str = CMAP
                ) -> np.ndarray:
    """Colours of a scaled map ``(H, W)`` in ``[-1, 1]``: ``(H, W, 3)`` RGB in ``[0, 1]``.

    Signed maps use the whole diverging map (−1 blue, 0 white, +1 red). ``positive_only`` uses
    only its upper half (0 white, 1 red) and clips negative values to 0, so a colour means the
    same relevance in both kinds of figure.
    """
    from matplotlib import colormaps

    h = np.clip(_numpy(heatmap), -1.0, 1.0)
    if positive_only:
        h = np.clip(h, 0.0, 1.0)
    return colormaps[cmap]((h + 1) / 2)[..., :3]


def _grey_rgb(image: ArrayLike) -> np.ndarray:
    """``(H, W, 3)`` grey version of an image given as ``(H, W)``, ``(H, W, 3)`` or ``(C, H, W)``
    (values in ``[0, 1]``; channel-first tensors are min-max scaled by :func:`image_for_display`).
    """
    x = _numpy(image)
    if x.ndim == 3 and x.shape[-1] not in (3, 4):
        x = image_for_display(x)
    if x.ndim == 3:
        # ITU-R BT.601 luma: perceived brightness, so the grey picture keeps its contrast
        x = x[..., :3] @ np.array([0.299, 0.587, 0.114])
    return np.repeat(np.clip(x, 0, 1)[..., None], 3, axis=-1)


def overlay(
    image: ArrayLike,
    relevance: ArrayLike,
    *,
    positive_only: bool = False,
    peak: float | None = None,
    alpha: float = 0.85,
    gamma: float = 0.5,
    fade: float = 0.4,
    cmap: str = CMAP,
) -> np.ndarray:
    """A relevance map drawn on a grey, lightened copy of its input.

    Parameters
    ----------
    image
        The input as displayed: ``(H, W)`` grey or ``(H, W, 3)`` RGB in ``[0, 1]`` (e.g.
        :meth:`lrpfx.apps.preprocess.ImagePreprocessor.to_display`), or a ``(C, H, W)`` tensor.
    relevance
        ``(C, H, W)`` or ``(H, W)``, summed over channels, same ``H, W`` as ``image``.
    positive_only
        Drop negative relevance (white-to-red scale).
    peak
        Divide by this instead of the map's own ``max |R|`` (for one scale across a batch).
    alpha
        Opacity of the heatmap where ``|R|`` is largest.
    gamma
        Opacity is ``alpha · |R|^gamma``: below 1, weak relevance stays visible.
    fade
        The grey image is lightened to ``fade + (1 - fade) · grey``, so that colours stay
        vivid over dark regions (0 keeps it as it is).
    cmap
        Diverging colour map.

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3)`` RGB in ``[0, 1]``: grey where ``R = 0``, red over positive and blue over
        negative relevance (red above blue and green exactly where ``R > 0``).
    """
    r = _numpy(relevance)
    if r.ndim == 3:
        r = r.sum(axis=0)
    r = np.nan_to_num(r, nan=0.0, posinf=0.0, neginf=0.0)
    if positive_only:
        r = np.clip(r, 0.0, None)
    scale = float(np.abs(r).max(initial=0.0)) if peak is None else float(peak)
    h = r / scale if scale > 0 else np.zeros_like(r)
    base = fade + (1 - fade) * _grey_rgb(image)
    if base.shape[:2] != h.shape:
        raise ValueError(f"image is {base.shape[:2]} but the relevance map is {h.shape}")
    weight = alpha * np.clip(np.abs(h), 0, 1)[..., None] ** gamma
    return (1 - weight) * base + weight * heatmap_rgb(h, positive_only=positive_only, cmap=cmap)


def save_explanation(
    image: ArrayLike,
    maps: ArrayLike | Sequence[ArrayLike],
    path: str | os.PathLike,
    *,
    titles: Sequence[str] | None = None,
    image_title: str = "input",
    panels: Sequence[str] = ("heatmap", "overlay"),
    positive_only: bool = False,
    shared_scale: bool = False,
    cmap: str = CMAP,
    cell_size: float = 2.6,
    dpi: int = 100,
    suptitle: str | None = None,
) -> Path:
    """Write a PNG explaining one image: one row per map, the input then its panels.

    Parameters
    ----------
    image
        The input as displayed (see :func:`overlay`).
    maps
        One relevance map ``(C, H, W)``/``(H, W)``, or several (e.g. one per target class):
        a ``(K, C, H, W)`` array or a list of maps.
    path
        Where to write the PNG; parent directories are created.
    titles
        One title per map (e.g. ``"tabby cat, p=0.71"``), shown on its row's first panel.
    image_title
        Title of the input panel.
    panels
        Which panels follow the input on each row, in order: ``"heatmap"`` (side by side) and/or
        ``"overlay"``.
    positive_only
        Show positive relevance only (white-to-red scale).
    shared_scale
        One scale for all maps (divide by the largest ``|R|`` of any of them), so rows compare.
    cmap
        Diverging colour map.
    cell_size, dpi
        Panel size in inches and PNG resolution.
    suptitle
        Optional figure title.

    Returns
    -------
    pathlib.Path
        The path written. The PNG's text chunk :data:`PANELS_KEY` holds each panel's pixel
        box (``PIL.Image.open(path).text``).
    """
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    if hasattr(maps, "shape"):
        # one array: a single map (C, H, W)/(H, W), or a stack of them (K, C, H, W)
        maps = list(maps) if _numpy(maps).ndim == 4 else [maps]
    arrays = [_numpy(m) for m in maps]
    arrays = [m.sum(axis=0) if m.ndim == 3 else m for m in arrays]
    if not arrays or any(m.ndim != 2 for m in arrays):
        raise ValueError("maps must be one or more maps of shape (C, H, W) or (H, W)")
    stacked = normalise_maps(np.stack(arrays), shared_scale=shared_scale,
                             positive_only=positive_only)
    unknown = set(panels) - {"heatmap", "overlay"}
    if not panels or unknown:
        raise ValueError(f"panels must name 'heatmap' and/or 'overlay', got {list(panels)}")
    if titles is not None and len(titles) != len(arrays):
        raise ValueError(f"titles must have {len(arrays)} strings, one per map")
    shown = _numpy(image)
    if shown.ndim == 3 and shown.shape[-1] not in (3, 4):
        shown = image_for_display(shown)
    if shown.shape[:2] != stacked.shape[1:]:
        raise ValueError(f"image is {shown.shape[:2]} but the maps are {stacked.shape[1:]}")

    rows, ncols = len(arrays), 1 + len(panels)
    head = 0.45 if suptitle else 0.0
    fig = Figure(figsize=(cell_size * ncols + 0.9, (cell_size + 0.35) * rows + head + 0.1),
                 dpi=dpi)
    axes = np.atleast_2d(fig.subplots(rows, ncols, squeeze=False))
    for k in range(rows):
        ax = axes[k, 0]
        if k == 0:
            ax.imshow(shown, cmap=None if shown.ndim == 3 else "gray", vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_title(image_title, fontsize=9)
        else:
            ax.axis("off")
        for c, panel in enumerate(panels, start=1):
            ax = axes[k, c]
            if panel == "heatmap":
                ax.imshow(heatmap_rgb(stacked[k], positive_only=positive_only, cmap=cmap),
                          interpolation="nearest")
            else:
                ax.imshow(overlay(shown, stacked[k], positive_only=positive_only, peak=1.0,
                                  cmap=cmap), interpolation="nearest")
            label = panel if titles is None else f"{titles[k]}\n{panel}"
            ax.set_title(label, fontsize=9)
        for ax in axes[k]:
            ax.set_xticks([])
            ax.set_yticks([])
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    top = 1 - (head + 0.45) / fig.get_figheight()
    fig.subplots_adjust(left=0.02, right=1 - 0.85 / fig.get_figwidth(), bottom=0.02, top=top,
                        wspace=0.06, hspace=0.35)
    from matplotlib.cm import ScalarMappable

    lo = 0.0 if positive_only else -1.0
    bar_map = ScalarMappable(Normalize(-1.0, 1.0), cmap=cmap)
    cax = fig.add_axes((1 - 0.65 / fig.get_figwidth(), 0.25, 0.15 / fig.get_figwidth(), 0.5))
    bar = fig.colorbar(bar_map, cax=cax, ticks=[lo, 0.5 * (lo + 1), 1] if positive_only
                       else [-1, 0, 1])
    if positive_only:
        cax.set_ylim(0, 1)
    bar.ax.tick_params(labelsize=7)
    bar.set_label("relevance / max|R|" + (" (shared)" if shared_scale else ""), fontsize=7)
    # draw once with Agg, read where each panel landed (for tools and tests that read the
    # pixels back), and write the same pixels with PIL (savefig would draw a second time)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image, PngImagePlugin

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    height = canvas.get_width_height()[1]
    boxes = {}
    for k in range(rows):
        names = (["input"] if k == 0 else [None]) + [f"{p}:{k}" for p in panels]
        for name, ax in zip(names, axes[k]):
            if name is not None:
                x0, y0, x1, y1 = ax.get_window_extent().extents
                boxes[name] = [round(x0), round(height - y1), round(x1), round(height - y0)]
    info = PngImagePlugin.PngInfo()
    info.add_text(PANELS_KEY, json.dumps(boxes))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3]).save(out, format="PNG",
                                                                    pnginfo=info)
    return out


def save_grid(
    inputs: ArrayLike,
    maps: ArrayLike | Sequence[ArrayLike],
    path: str | os.PathLike,
    *,
    titles: Sequence[Sequence[str]] | None = None,
    column_titles: Sequence[str] | None = None,
    cmap: str = CMAP,
    input_cmap: str = "gray_r",
    contour: bool = True,
    cell_size: float = 1.7,
    dpi: int = 110,
    positive_only: bool = False,
    shared_scale: bool = False,
    overlays: bool = False,
    percentile: float = 100.0,
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
    positive_only
        Show positive relevance only (white-to-red, negative values clipped to 0).
    shared_scale
        Scale each column's maps by that column's largest ``|R|`` over the whole batch instead
        of each map by its own (so rows can be compared).
    overlays
        Draw each map over a grey copy of the input (:func:`overlay`) instead of on white: for
        photos, where a contour of the input says little.
    percentile
        Scale each map by this percentile of ``|R|`` (see :func:`normalise_maps`).

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
    scaled = [normalise_maps(m, shared_scale=shared_scale, positive_only=positive_only,
                             percentile=percentile) for m in columns]
    vmin = 0.0 if positive_only else -1.0
    if titles is not None and (len(titles) != batch or any(len(t) != ncols for t in titles)):
        raise ValueError(f"titles must be {batch} rows of {ncols} strings")
    if column_titles is not None and len(column_titles) != ncols:
        raise ValueError(f"column_titles must have {ncols} strings")

    title_lines = max((t.count("\n") + 1 for row in titles or [] for t in row), default=0)
    header = 0.35 + 0.17 * title_lines if column_titles is not None else 0.0
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
        for c, m in enumerate(scaled, start=1):
            ax = axes[b, c]
            # positive-only maps use the upper half of the same colour map (white to red)
            image = ax.imshow(m[b], cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
            if overlays:  # drawn over the colour-mapped panel, which still feeds the colour bar
                ax.imshow(overlay(shown, m[b], positive_only=positive_only, peak=1.0,
                                  cmap=cmap), interpolation="nearest")
            elif contour and np.ptp(level) > 0:
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
        bar = fig.colorbar(image, cax=cax, ticks=[vmin, (vmin + 1) / 2, 1])
        if positive_only:
            cax.set_ylim(0, 1)
        bar.ax.tick_params(labelsize=7)
        bar.set_label("relevance / max|R|" if percentile == 100 else
                      f"relevance / {percentile:g}th percentile of |R|", fontsize=7)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def read_panel(path: str | Path, name: str, shape: tuple[int, int]) -> np.ndarray:
    """The colours of panel ``name`` of a :func:`save_explanation` PNG, sampled at the centre
    of each of the ``shape`` map pixels: ``(H, W, 3)`` in ``[0, 1]``."""
    from PIL import Image

    im = Image.open(path)
    left, top, right, bottom = json.loads(im.text[PANELS_KEY])[name]
    rgb = np.asarray(im.convert("RGB"), dtype=np.float64) / 255
    h, w = shape
    ys = (top + (np.arange(h) + 0.5) * (bottom - top) / h).astype(int)
    xs = (left + (np.arange(w) + 0.5) * (right - left) / w).astype(int)
    return rgb[ys][:, xs]
