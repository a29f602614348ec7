"""Pass 1: capture a model as a ``torch.fx.GraphModule``.

Frontends:

- ``"export"`` (default): ``torch.export`` with a dynamic batch dimension. Handles data-dependent
  shape branches (timm's VGG head) and Hugging Face models. Needs example inputs.
- ``"symbolic_trace"``: ``torch.fx.symbolic_trace``; no example input needed, but it cannot
  trace Python control flow on tensor values.
- a ``torch.fx.GraphModule`` passed as the model is used as it is (``"fx"``).
"""

from __future__ import annotations

import inspect
import logging
import threading
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import fx, nn

FRONTENDS = ("export", "symbolic_trace")

# torch.export keeps global tracing state: one capture at a time in this process
_EXPORT_LOCK = threading.RLock()
_SIGNATURES: weakref.WeakKeyDictionary[nn.Module, list[inspect.Parameter]] = \
    weakref.WeakKeyDictionary()


class CaptureError(RuntimeError):
    """A frontend could not capture the model; the message says which, why and what to try."""


def first_line(e: BaseException) -> str:
    """``"TypeName: first line of the message"``."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(record.getMessage().strip().splitlines()[0])
        except Exception:  # noqa: BLE001 - a log line that cannot be formatted is dropped
            pass


@contextmanager
def _quiet_torch_logs() -> Iterator[list[str]]:
    """Collect torch's log records (export's guard and graph-break dumps) instead of printing
    them to stderr; yields the collected first lines (warnings and errors)."""
    handler = _Collect()
    loggers = [logging.getLogger("torch")] + [
        logging.getLogger(name) for name, lg in list(logging.Logger.manager.loggerDict.items())
        if name.startswith("torch.") and isinstance(lg, logging.Logger) and lg.handlers]
    saved = [(lg, lg.handlers[:], lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.handlers = [handler] if lg.name == "torch" else []
        lg.propagate = lg.name != "torch"
    try:
        yield handler.lines
    finally:
        for lg, handlers, propagate in saved:
            lg.handlers, lg.propagate = handlers, propagate


def _batch_of_two(args: tuple, kwargs: Mapping[str, Any]) -> tuple[tuple, dict[str, Any]]:
    """Example inputs with batch size >= 2, so export keeps the batch dimension symbolic."""

    def grow(v: Any) -> Any:
        if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == 1:
            return v.expand(2, *v.shape[1:]).clone()
        return v

    return tuple(grow(a) for a in args), {k: grow(v) for k, v in kwargs.items()}


def _dynamic_batch(args: tuple, kwargs: Mapping[str, Any]) -> tuple[tuple, dict[str, Any]]:
    batch = torch.export.Dim("batch", min=1)

    def spec(v: Any) -> Any:
        return {0: batch} if isinstance(v, torch.Tensor) and v.dim() >= 1 else None

    return tuple(spec(a) for a in args), {k: spec(v) for k, v in kwargs.items()}


def capture_export(
    model: nn.Module, args: tuple, kwargs: Mapping[str, Any] | None = None
) -> tuple[fx.GraphModule, bool]:
    """Capture with ``torch.export``.

    Returns
    -------
    (GraphModule, dynamic_batch)
        ``dynamic_batch`` is False when the model only exported for the example's exact batch.
    """
    kwargs = dict(kwargs or {})
    ex_args, ex_kwargs = _batch_of_two(args, kwargs)
    dyn_args, dyn_kwargs = _dynamic_batch(ex_args, ex_kwargs)
    dynamic_shapes: Any = dyn_args if not ex_kwargs else {
        **dict(zip(_positional_names(model, len(ex_args)), dyn_args)), **dyn_kwargs}
    if torch.is_inference_mode_enabled():
        raise RuntimeError("lrpfx cannot capture (nor explain) under torch.inference_mode(): "
                           "relevance is a backward pass; call it outside inference_mode")
    with _EXPORT_LOCK, _quiet_torch_logs() as logged:
        try:
            ep = torch.export.export(model, ex_args, ex_kwargs, dynamic_shapes=dynamic_shapes,
                                     strict=False)
            return ep.module(), True
        except Exception as dynamic_error:  # noqa: BLE001 - retried with static shapes below
            try:
                ep = torch.export.export(model, args, kwargs, strict=False)
                return ep.module(), False
            except Exception as e:
                log = f"\n(torch logged: {logged[-1]})" if logged else ""
                raise CaptureError(
                    f"torch.export could not capture {type(model).__name__}: {first_line(e)}\n"
                    "(with a dynamic batch dimension it failed with: "
                    f"{first_line(dynamic_error)}){log}\n"
                    "What to try: make data-dependent Python control flow shape-based or use "
                    "torch.cond; or pass frontend='symbolic_trace' (no tensor-value control "
                    "flow); or give compile() a torch.fx.GraphModule you traced yourself."
                ) from e


def call_kwargs(model: nn.Module, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``kwargs`` plus ``use_cache=False`` where the model's forward takes ``use_cache`` (a
    key/value cache in the output is nothing export can return, nor carries relevance)."""
    kwargs = dict(kwargs)
    if "use_cache" in _parameters(model) and "use_cache" not in kwargs:
        kwargs["use_cache"] = False
    return kwargs


def _signature(model: nn.Module) -> list[inspect.Parameter]:
    """The parameters of ``model.forward``, looked up once per model (``inspect.signature``
    costs about as much as a small model's forward pass)."""
    params = _SIGNATURES.get(model)
    if params is None:
        try:
            params = list(inspect.signature(model.forward).parameters.values())
        except (TypeError, ValueError):
            params = []
        _SIGNATURES[model] = params
    return params


def _parameters(model: nn.Module) -> list[str]:
    return [p.name for p in _signature(model)]


def _positional_names(model: nn.Module, n: int) -> list[str]:
    return _parameters(model)[:n]


def keyword_only_input(model: nn.Module) -> str | None:
    """The name of the model's first input when its forward takes keyword-only inputs alone
    (``forward(self, *, x)``): a positional input given to lrpfx is passed by that name."""
    params = _signature(model)
    if any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
           for p in params):
        return None
    return next((p.name for p in params if p.kind == p.KEYWORD_ONLY), None)


def capture_symbolic_trace(model: nn.Module) -> fx.GraphModule:
    """Capture with ``torch.fx.symbolic_trace``."""
    try:
        return fx.symbolic_trace(model)
    except Exception as e:
        raise CaptureError(
            f"torch.fx.symbolic_trace could not capture {type(model).__name__}: "
            f"{first_line(e)}\n"
            "What to try: the default frontend='export' (handles shape-dependent branches), "
            "or mark the offending submodule as a leaf in your own fx.Tracer."
        ) from e
