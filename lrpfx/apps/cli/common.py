"""Steps several commands share: load the model the flags describe, compile it, run it."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

import lrpfx
from lrpfx.apps.cli.errors import CLIError, ExplainError, first_line
from lrpfx.apps.cli.models import LoadedModel, load_model
from lrpfx.apps.cli.options import parse_floats, parse_rule_options, parse_size
from lrpfx.core.explainer import class_scores

__all__ = ["class_scores_of", "compile_model", "finite_maps", "load_image_model", "run_model"]


def load_image_model(args: argparse.Namespace, task: str = "image") -> LoadedModel:
    """The model of ``--model``/``--weights``/``--num-classes``/``--input-size``/``--labels``/
    ``--mean``/``--std``."""
    size = parse_size(args.input_size)
    channels = size[0] if size is not None and len(size) == 3 else 3
    normalise = args.mean is not None or args.std is not None
    mean = parse_floats("--mean", args.mean, channels) if args.mean is not None else None
    std = parse_floats("--std", args.std, channels) if args.std is not None else None
    if normalise and (mean is None) != (std is None):
        raise CLIError("--mean and --std go together: give both (or 'none' for both)")
    return load_model(args.model, weights=args.weights, num_classes=args.num_classes, task=task,
                      input_size=size,
                      labels=args.labels, mean=mean, std=std, normalise=normalise)


def compile_model(loaded: LoadedModel, args: argparse.Namespace, rule: str | None = None
                  ) -> lrpfx.Explainer:
    """``lrpfx.compile`` with ``--rule``, ``--option`` and ``--no-strict``."""
    try:
        return lrpfx.compile(loaded.model, rule=rule or args.rule, strict=args.strict,
                             **parse_rule_options(args.option))
    except ValueError as e:  # unknown rule set or option
        raise CLIError(str(e)) from e


def class_scores_of(out: Any, names: Sequence[str]) -> Tensor:
    """The ``(B, classes)`` scores of a model output; finite, or a one-line error naming the
    first input (``names[b]``) whose scores are not."""
    try:
        scores = class_scores(out)
    except ValueError as e:
        raise CLIError(str(e)) from None
    bad = (~torch.isfinite(scores)).any(1).nonzero().flatten().tolist()
    if bad:
        raise CLIError(f"the model's outputs are not finite (NaN or inf) for {names[bad[0]]}"
                       f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}; check --weights "
                       "and the preprocessing")
    return scores


def run_model(loaded: LoadedModel, fn: Any, x: Tensor) -> Any:
    """``fn(x)`` (or ``fn(pixel_values=x)``) without gradients; an input the model rejects is
    a usage error naming the shape it was given."""
    args, kwargs = ((), {loaded.keyword: x}) if loaded.keyword else ((x,), {})
    try:
        with torch.no_grad():
            return fn(*args, **kwargs)
    except (lrpfx.CaptureError, lrpfx.UnsupportedOpError):
        raise
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        raise CLIError(f"{loaded.spec} cannot take inputs of shape {tuple(x.shape)} "
                       f"(--input-size?): {first_line(e)}") from e


def finite_maps(maps: Any, what: str) -> Tensor:
    """``maps`` (detached) if a finite tensor, else an :class:`ExplainError` (exit 1): no NaN
    leaves the CLI."""
    if not isinstance(maps, Tensor) or not bool(torch.isfinite(maps).all()):
        raise ExplainError(f"the relevance map of {what} is not finite; please report this "
                           "model to lrpfx (try --rule or --no-strict meanwhile)")
    return maps.detach()
