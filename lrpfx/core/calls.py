"""The inputs of one call of the explainer: which input is explained, how keyword inputs and
keyword-only ``forward`` signatures are passed, tensors made under ``inference_mode``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from lrpfx.core.capture import call_kwargs, keyword_only_input


def explained_call(model: nn.Module, x: Tensor | None, inputs: dict[str, Any]
                   ) -> tuple[tuple, dict[str, Any], str | None]:
    """``(args, kwargs, explained)`` for ``model``: the positional inputs, the keyword inputs
    and the name of the explained keyword input (None when it is ``args[0]``)."""
    name = keyword_only_input(model)
    if x is not None and name is not None:  # forward(self, *, x): x goes by its name
        x, inputs = None, {name: x, **inputs}
    if x is not None:
        args: tuple = (x,)
        explained = None
    elif not inputs:
        raise TypeError("explain needs an input: explain(x) or explain(input_ids=..., ...)")
    else:
        args, explained = (), explained_name(inputs)
    # tensors made under inference_mode cannot be saved for backward: plain copies
    return (tuple(_usable(a) for a in args),
            {k: _usable(v) for k, v in call_kwargs(model, inputs).items()}, explained)


def explained_name(inputs: Mapping[str, Any]) -> str:
    """The keyword input that relevance is taken at: the usual Hugging Face names first, else
    the first tensor."""
    for name in ("input_ids", "inputs_embeds", "pixel_values", "input_values"):
        if isinstance(inputs.get(name), Tensor):
            return name
    first = next((k for k, v in inputs.items() if isinstance(v, Tensor)), None)
    if first is None:
        raise TypeError("none of the keyword inputs is a tensor")
    return first


def explained_value(args: tuple, kwargs: dict[str, Any], explained: str | None) -> Any:
    """The explained input of a call made by :func:`explained_call`."""
    if args:
        return args[0]
    assert explained is not None  # explained_call names the keyword input when args is empty
    return kwargs[explained]


def _usable(v: Any) -> Any:
    return v.clone() if isinstance(v, Tensor) and v.is_inference() else v
