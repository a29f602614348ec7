"""Dataset-scale evaluation on several processes or machines (``torch.distributed``).

The images are cut into fixed blocks; block ``b`` is evaluated by rank ``b mod world_size``
with its own random generator seeded from ``(seed, b)``, and the per-image results are gathered
and put back in block order. Every rank therefore returns exactly what one process computes
with the same ``seed`` and ``block_size`` (tested with two CPU processes on gloo).

Launch with ``torchrun`` (each process calls :func:`evaluate` on the same images)::

    torchrun --nproc_per_node 2 my_eval.py     # my_eval.py: init_process_group(), evaluate(...)

or without a process group at all, as one process.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from lrpfx.metrics import gae, insertion_deletion, sensitivity_n
from lrpfx.metrics.base import ExplainFn

METRICS: dict[str, Callable[..., Any]] = {
    "gae": gae, "sensitivity_n": sensitivity_n, "insertion_deletion": insertion_deletion,
}
"""Metrics by name (:mod:`lrpfx.metrics`)."""

_SHARED = frozenset({"ns", "fractions"})  # the same for every image: not concatenated
_INDEX = frozenset({"positive_index", "mosaic_index"})  # indices into the block's images


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size (0, 1 without an initialised process group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def evaluate(
    metric: str | Callable[..., Any],
    model: nn.Module,
    explain_fn: ExplainFn,
    images: Tensor,
    *,
    block_size: int = 64,
    seed: int = 0,
    progress: bool = True,
    **metric_options: Any,
) -> Any:
    """Evaluate ``metric`` over ``images``, sharded over the ranks of the process group.

    Parameters
    ----------
    metric
        ``"gae"``, ``"sensitivity_n"``, ``"insertion_deletion"`` or a function with the same
        signature (``metric(model, explain_fn, images, ..., generator=..., progress=...)``).
    model, explain_fn
        As in :mod:`lrpfx.metrics`.
    images
        All images ``(N, C, H, W)``, the same on every rank (each evaluates its blocks).
    block_size
        Images per block, the unit of work (a multiple of 4 for GAE, whose mosaics are made
        inside a block). Results depend on it (GAE's mosaics, random draws), not on the number
        of processes.
    seed
        Seeds block ``b``'s generator with ``seed · 1_000_003 + b``.
    progress
        A progress bar on rank 0.
    **metric_options
        Passed to the metric (``steps``, ``batch_size``, ...). GAE's ``shuffle`` is turned off:
        shuffle ``images`` yourself if you want random mosaics.

    Returns
    -------
    The metric's result dataclass over all images, identical on every rank.
    """
    if isinstance(metric, str) and metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {sorted(METRICS)}")
    fn = METRICS[metric] if isinstance(metric, str) else metric
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    params = inspect.signature(fn).parameters
    options = dict(metric_options)
    if "shuffle" in params:
        options["shuffle"] = False
    if "progress" in params:
        options["progress"] = False
    rank, world = rank_and_world()
    starts = list(range(0, len(images), block_size))
    mine = [b for b in range(len(starts)) if b % world == rank]
    results = []
    for b in tqdm(mine, desc=f"evaluate ({getattr(fn, '__name__', 'metric')})", unit="block",
                  disable=not progress or rank != 0):
        if "generator" in params:
            options["generator"] = torch.Generator().manual_seed(seed * 1_000_003 + b)
        block = images[starts[b]:starts[b] + block_size]
        results.append((b, _to_cpu(fn(model, explain_fn, block, **options))))
    if world > 1:
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, results)
        results = [r for part in gathered for r in part]
    results.sort(key=lambda r: r[0])
    return _concatenate([(starts[b], r) for b, r in results])


def _to_cpu(result: Any) -> Any:
    if not dataclasses.is_dataclass(result) or isinstance(result, type):
        return result
    return dataclasses.replace(result, **{
        f.name: getattr(result, f.name).cpu() for f in dataclasses.fields(result)
        if isinstance(getattr(result, f.name), Tensor)})


def _concatenate(parts: list[tuple[int, Any]]) -> Any:
    """One result from the blocks' results (per-image fields concatenated, indices offset)."""
    if not parts:
        raise ValueError("no images to evaluate")
    first = parts[0][1]
    if len(parts) == 1 and parts[0][0] == 0:
        return first
    values = {}
    for f in dataclasses.fields(first):
        items = [(start, getattr(r, f.name)) for start, r in parts]
        if f.name in _SHARED:
            values[f.name] = items[0][1]
        elif f.name in _INDEX:
            values[f.name] = torch.cat([v + start for start, v in items])
        else:
            values[f.name] = torch.cat([v for _, v in items])
    return type(first)(**values)
