"""How a map is read for the rule sets that need more than one backward pass from the input:
DeepLIFT's baseline run and integrated gradients' path; helpers to run a compiled graph."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from lrpfx.core.targets import (
    Target,
    TargetSpec,
    callable_scores,
    output_seeds,
    select_output,
)
from lrpfx.rules.base import RuleCall, RuleSet


def baseline_of(ruleset: RuleSet, value: Tensor) -> Tensor:
    """The baseline ``x̄`` of the rule set (its ``baseline`` option; zero by default), shaped like
    ``value``."""
    b = ruleset.options.get("baseline")
    if b is None:
        return torch.zeros_like(value)
    b = torch.as_tensor(b, dtype=value.dtype, device=value.device)
    try:
        return b.expand_as(value)
    except RuntimeError:
        raise ValueError(f"baseline of shape {tuple(b.shape)} does not broadcast to the "
                         f"input's shape {tuple(value.shape)}") from None

def integrated(ruleset: RuleSet, gm: nn.Module, args: tuple, kwargs: dict[str, Any],
               explained: str | None, value: Tensor, target: Target | TargetSpec,
               negative: bool) -> tuple[list[Tensor], Tensor, Tensor, Tensor]:
    """Integrated gradients: Gauss–Legendre nodes on [0, 1], path points batched."""
    import numpy as np

    steps = int(ruleset.options["steps"])
    chunk = ruleset.options.get("internal_batch_size") or steps * value.shape[0]
    per = max(1, chunk // value.shape[0])
    nodes, gauss = np.polynomial.legendre.leggauss(steps)
    alphas = torch.as_tensor((nodes + 1) / 2, dtype=value.dtype, device=value.device)
    weights = torch.as_tensor(gauss / 2, dtype=value.dtype, device=value.device)
    baseline = baseline_of(ruleset, value)
    delta = value.detach() - baseline
    spec = target if isinstance(target, TargetSpec) else TargetSpec(target)
    fn = spec.target if callable(spec.target) and not isinstance(spec.target, Tensor) else None
    # a callable target's score is checked to depend on the output: it needs autograd here
    with torch.no_grad() if fn is None else torch.enable_grad():
        first = with_value(args, kwargs, explained, value.detach().requires_grad_(fn is not None))
        out, seeds, target_t, dead = output_seeds(
            ruleset, run_graph(gm, *first, value), spec, negative, batch=value.shape[0],
            attention_mask=kwargs.get("attention_mask"))
    b = value.shape[0]
    total = [torch.zeros_like(value) for _ in seeds]
    for start in range(0, steps, per):
        a = alphas[start:start + per]
        k = len(a)
        path = (baseline + a.reshape(-1, *[1] * value.dim()) * delta).reshape(
            k * b, *value.shape[1:]).requires_grad_(True)
        rest = {n: v.repeat(k, *[1] * (v.dim() - 1)) if isinstance(v, Tensor)
                and v.dim() and v.shape[0] == b else v for n, v in kwargs.items()}
        p_args, p_kwargs = with_value(
            tuple(v.repeat(k, *[1] * (v.dim() - 1)) for v in args), rest, explained, path)
        with torch.enable_grad():
            raw = run_graph(gm, p_args, p_kwargs, value)
            if fn is None:
                logits = select_output(raw, spec.output)
            else:
                logits = callable_scores(fn, raw if spec.output is None
                                         else select_output(raw, spec.output), k * b)
            for i, seed in enumerate(seeds):
                (g,) = torch.autograd.grad(logits, path, seed.repeat(k, *[1] * (seed.dim() - 1)),
                                           retain_graph=i + 1 < len(seeds))
                w = weights[start:start + per].reshape(-1, *[1] * value.dim())
                total[i] += (g.reshape(k, *value.shape) * w).sum(0)
    return [delta * t for t in total], out, target_t, dead


def with_value(args: tuple, kwargs: dict[str, Any], explained: str | None, value: Tensor
               ) -> tuple[tuple, dict[str, Any]]:
    """The call's inputs with the explained input replaced by ``value``."""
    if args:
        return (value, *args[1:]), kwargs
    assert explained is not None  # a call without positional inputs names its explained one
    return args, {**kwargs, explained: value}


@contextmanager
def recording(gm: nn.Module) -> Iterator[None]:
    """Rules that need the baseline's activations (DeepLIFT) record them during this run."""
    calls = [m for m in gm.modules() if isinstance(m, RuleCall)]
    for c in calls:
        c.__dict__["recording"] = True
    try:
        yield
    finally:
        for c in calls:
            c.__dict__["recording"] = False


def run_graph(gm: nn.Module, args: tuple, kwargs: dict[str, Any], x: Tensor) -> Any:
    """``gm(*args, **kwargs)``; a failure is a ValueError about the input's shape."""
    try:
        return gm(*args, **kwargs)
    except (RuntimeError, AssertionError) as e:
        raise ValueError(
            f"the compiled graph cannot take an input of shape {tuple(x.shape)} "
            f"({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e) else ''})") from e
