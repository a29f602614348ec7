"""The canonical op vocabulary.

Every spelling of an operation that carries relevance (``nn.Conv2d``, ``F.conv2d``,
``aten.conv2d``, ...) is rewritten by :mod:`lrpfx.passes.canonicalize` into a call of one of the
functions below, with all arguments passed by keyword. Rules are registered against these
functions' names, so each rule is written once per operation.

Each function computes exactly what the original op computes (the same kernels), so a graph made
of them has the model's forward bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
_ADAPTIVE_AVG_POOL = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}
_CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def conv(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
) -> Tensor:
    """N-d convolution (N = weight.dim() - 2), zero padding given as numbers."""
    return _CONV[weight.dim() - 2](input, weight, bias, stride, padding, dilation, groups)


def conv_transpose(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: Sequence[int],
    padding: Sequence[int],
    output_padding: Sequence[int],
    groups: int,
    dilation: Sequence[int],
) -> Tensor:
    """N-d transposed convolution (N = weight.dim() - 2), ``F.conv_transpose{N}d``'s order."""
    fn = _CONV_TRANSPOSE[weight.dim() - 2]
    return fn(input, weight, bias, stride, padding, output_padding, groups, dilation)


def _call_at(fn: Callable[..., Tensor], input: Tensor, args: Sequence[Any],
             kwargs: dict[str, Any], position: int) -> Tensor:
    full = list(args)
    full[position] = input
    return fn(*full, **kwargs)


def positive_linear(input: Tensor, fn: Callable[..., Tensor], args: Sequence[Any],
                    kwargs: dict[str, Any], position: int) -> Tensor:
    """``fn(*args, **kwargs)`` with ``input`` at ``args[position]``, for an op ``fn`` found
    linear in ``input`` with non-negative coefficients (nearest/bilinear upsampling, padding by
    reflection, ``repeat_interleave``, ...). The property, not the op's name, makes a node this
    op: :mod:`lrpfx.passes.decompose` probes it."""
    return _call_at(fn, input, args, kwargs, position)


def pointwise(input: Tensor, fn: Callable[..., Tensor], args: Sequence[Any],
              kwargs: dict[str, Any], position: int) -> Tensor:
    """``fn(*args, **kwargs)`` with ``input`` at ``args[position]``, for an op ``fn`` found
    element-wise in ``input`` (one scalar function applied to every element: ``exp``, ``abs``,
    ``sqrt``, ``erf``, ...); probed by :mod:`lrpfx.passes.decompose`."""
    return _call_at(fn, input, args, kwargs, position)


def selection(input: Tensor, fn: Callable[..., Tensor], args: Sequence[Any],
              kwargs: dict[str, Any], position: int) -> Tensor:
    """``fn(*args, **kwargs)`` with ``input`` at ``args[position]``, for an op ``fn`` found to
    pick each output among its input's elements by value (``amax``, ``max`` over a dim,
    ``sort``'s values, ...): winner takes all, like max pooling; probed by
    :mod:`lrpfx.passes.decompose`."""
    return _call_at(fn, input, args, kwargs, position)


def linear(input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``input @ weight.T + bias``."""
    return F.linear(input, weight, bias)


def batch_norm(
    input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor,
    running_var: Tensor,
    eps: float,
) -> Tensor:
    """Batch norm in eval mode: an affine map per channel (dim 1) with running statistics."""
    return F.batch_norm(input, running_mean, running_var, weight, bias, False, 0.0, eps)


def add(input: Tensor, other: Tensor | float) -> Tensor:
    return torch.add(input, other)


def sub(input: Tensor, other: Tensor | float) -> Tensor:
    return torch.sub(input, other)


def mul(input: Tensor, other: Tensor) -> Tensor:
    """Element-wise product of two tensors (a product with a Python number is data movement)."""
    return torch.mul(input, other)


def div(input: Tensor, other: Tensor | float) -> Tensor:
    """Element-wise quotient ``input / other`` with ``other`` a tensor (a constant, or an
    activation); division by a Python number is data movement, not this op."""
    return torch.div(input, other)


def relu(input: Tensor) -> Tensor:
    return torch.relu(input)


def leaky_relu(input: Tensor, negative_slope: float = 0.01) -> Tensor:
    return F.leaky_relu(input, negative_slope)


def hardtanh(input: Tensor, min_val: float = -1.0, max_val: float = 1.0) -> Tensor:
    return F.hardtanh(input, min_val, max_val)


def gelu(input: Tensor, approximate: str = "none") -> Tensor:
    return F.gelu(input, approximate=approximate)


def silu(input: Tensor) -> Tensor:
    return F.silu(input)


def sigmoid(input: Tensor) -> Tensor:
    return torch.sigmoid(input)


def tanh(input: Tensor) -> Tensor:
    return torch.tanh(input)


def hardswish(input: Tensor) -> Tensor:
    return F.hardswish(input)


def hardsigmoid(input: Tensor) -> Tensor:
    return F.hardsigmoid(input)


def elu(input: Tensor, alpha: float = 1.0) -> Tensor:
    return F.elu(input, alpha)


def softplus(input: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    return F.softplus(input, beta, threshold)


def mish(input: Tensor) -> Tensor:
    return F.mish(input)


def pow(input: Tensor, exponent: float) -> Tensor:  # noqa: A001
    """``input ** exponent`` for a Python-number exponent."""
    return torch.pow(input, exponent)


def dropout(input: Tensor) -> Tensor:
    """Dropout in eval mode: the identity, kept as a node because the reference treats it as a
    compute op (DESIGN.md §4.2)."""
    return input.view_as(input)


def max_pool(
    input: Tensor,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    ceil_mode: bool,
) -> Tensor:
    fn: Callable[..., Tensor] = _MAX_POOL[len(kernel_size)]  # 1-3 d stubs differ
    return fn(input, kernel_size, stride, padding, dilation, ceil_mode)


def avg_pool(
    input: Tensor,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None,
) -> Tensor:
    fn: Callable[..., Tensor] = _AVG_POOL[len(kernel_size)]  # 1-3 d stubs differ
    if len(kernel_size) == 1:  # avg_pool1d has no divisor_override
        return fn(input, kernel_size, stride, padding, ceil_mode, count_include_pad)
    return fn(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)


def adaptive_avg_pool(input: Tensor, output_size: Sequence[int | None]) -> Tensor:
    fn: Callable[..., Tensor] = _ADAPTIVE_AVG_POOL[len(output_size)]  # 1-3 d stubs differ
    return fn(input, output_size)


def mean(input: Tensor, dim: list[int] | None, keepdim: bool) -> Tensor:
    return torch.mean(input, dim=dim, keepdim=keepdim)


def sum(input: Tensor, dim: list[int] | None, keepdim: bool) -> Tensor:  # noqa: A001
    return torch.sum(input, dim=dim, keepdim=keepdim)


def layer_norm(
    input: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
) -> Tensor:
    return F.layer_norm(input, normalized_shape, weight, bias, eps)


def rms_norm(
    input: Tensor, normalized_shape: Sequence[int], weight: Tensor | None, eps: float | None
) -> Tensor:
    """RMS norm over the last ``len(normalized_shape)`` dims:
    ``input · rsqrt(mean(input²) + eps)``, then ``weight ·`` (after a cast to the weight's
    dtype, as Hugging Face's LLaMA-style norms do). ``eps=None``: the machine epsilon of the
    input's dtype (``F.rms_norm``'s default). Only the length of ``normalized_shape`` is used
    (an RMS norm spelt out in a traced graph, which carries no shapes, has −1 sizes)."""
    if eps is None:
        eps = torch.finfo(input.dtype).eps
    dims = list(range(-len(normalized_shape), 0))
    out = input * torch.rsqrt(input.pow(2).mean(dims, keepdim=True) + eps)
    return out if weight is None else weight * out.to(weight.dtype)


def normalize(input: Tensor, p: float, dim: Sequence[int], eps: float | None) -> Tensor:
    """``input / max(‖input‖_p, eps)`` over ``dim`` (``F.normalize``; ``eps=None``: no clamp, as
    in ``x / x.norm(dim=-1, keepdim=True)``)."""
    norm = torch.linalg.vector_norm(input, p, list(dim), keepdim=True)
    return input / (norm if eps is None else norm.clamp_min(eps)).expand_as(input)


def group_norm(
    input: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None, eps: float
) -> Tensor:
    """Group norm over channel groups (dim 1) and all spatial dims; per-channel affine."""
    return F.group_norm(input, num_groups, weight, bias, eps)


def additive_mask(x: Tensor, mask: Tensor | None, causal: bool) -> Tensor | None:
    """``mask`` in ``scaled_dot_product_attention``'s convention (bool: True = attend; float:
    added), plus a causal mask, as one additive mask (or None)."""
    add = None
    if mask is not None:
        add = torch.zeros_like(mask, dtype=x.dtype).masked_fill(~mask, float("-inf")) \
            if mask.dtype == torch.bool else mask.to(x.dtype)
    if causal:
        n, m = x.shape[-2], x.shape[-1]
        keep = torch.ones(n, m, dtype=torch.bool, device=x.device).tril()
        tri = torch.zeros(n, m, dtype=x.dtype, device=x.device).masked_fill(~keep, float("-inf"))
        add = tri if add is None else add + tri
    return add


def dead_rows(z: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """``(z', dead)``: ``dead`` marks the rows of ``z`` along ``dim`` that are ``-inf``
    throughout (an attention query whose mask allows no key), ``z'`` is ``z`` with those rows set
    to 0, so that a softmax of ``z'`` is finite and so is its gradient (``-inf - -inf`` is NaN)."""
    dead = torch.isneginf(z).all(dim, keepdim=True)
    return z.masked_fill(dead, 0.0), dead


def softmax(
    input: Tensor, dim: int, mask: Tensor | None = None, causal: bool = False
) -> Tensor:
    """Softmax over ``dim`` of ``input`` plus an optional attention mask (bool: True = keep;
    float: added) and causal mask. A plain softmax has neither.

    A row the masks leave no position in is 0, as in ``scaled_dot_product_attention`` (where a
    plain softmax of all ``-inf`` gives NaN)."""
    add = additive_mask(input, mask, causal)
    if add is None:
        return torch.softmax(input, dim)
    z, dead = dead_rows(input + add, dim)
    return torch.softmax(z, dim).masked_fill(dead, 0.0)


def matmul(input: Tensor, other: Tensor) -> Tensor:
    """``input @ other`` (matmul, bmm, mm; either operand may carry relevance)."""
    return torch.matmul(input, other)


def einsum(equation: str, input: Tensor, other: Tensor) -> Tensor:
    """Two-operand ``torch.einsum`` (either operand may carry relevance)."""
    return torch.einsum(equation, input, other)


def scale_by(input: Tensor, factor: float | None) -> Tensor:
    """``input * factor``, ``factor=None`` meaning ``1/sqrt(input.shape[-1])`` (attention's
    default scale). Data movement: a scaling by a number."""
    if factor is None:
        factor = input.shape[-1] ** -0.5
    return input * factor


def embedding(weight: Tensor, indices: Tensor, padding_idx: int | None = None) -> Tensor:
    """Embedding lookup. Where ``indices`` are the explained token ids, relevance stops here: its
    output is where token relevance is read (see :class:`lrpfx.passes.rewrite.RelevanceSource`)."""
    return F.embedding(indices, weight, padding_idx)


CANONICAL_OPS: dict[str, Callable[..., Tensor]] = {
    fn.__name__: fn
    for fn in (
        conv, linear, batch_norm, add, sub, mul, relu, leaky_relu, hardtanh, gelu, silu, sigmoid,
        tanh, hardswish, hardsigmoid, elu, softplus, mish, pow, dropout, max_pool, avg_pool,
        adaptive_avg_pool, mean, sum, layer_norm, softmax, matmul, einsum, embedding, div,
        rms_norm, group_norm, normalize, conv_transpose, positive_linear, pointwise,
        selection,
    )
}
"""Name → function for every canonical op."""

OP_NAME: dict[Callable[..., Tensor], str] = {fn: name for name, fn in CANONICAL_OPS.items()}

TENSOR_ARGS: dict[str, tuple[str, ...]] = {
    name: ("input",) for name in CANONICAL_OPS
} | {
    "conv": ("input", "weight", "bias"),
    "conv_transpose": ("input", "weight", "bias"),
    "linear": ("input", "weight", "bias"),
    "batch_norm": ("input", "weight", "bias", "running_mean", "running_var"),
    "add": ("input", "other"),
    "sub": ("input", "other"),
    "mul": ("input", "other"),
    "div": ("input", "other"),
    "layer_norm": ("input", "weight", "bias"),
    "rms_norm": ("input", "weight"),
    "group_norm": ("input", "weight", "bias"),
    "softmax": ("input", "mask"),
    "matmul": ("input", "other"),
    "embedding": ("weight", "indices"),
    "einsum": ("input", "other"),
}
"""Arguments of each canonical op that are tensors (or None); the rest are static settings."""

OP_KIND: dict[str, str] = {
    "conv": "affine", "conv_transpose": "affine", "linear": "affine", "batch_norm": "affine",
    "add": "sum", "sub": "sum",
    "avg_pool": "pool", "adaptive_avg_pool": "pool", "mean": "pool", "sum": "pool",
    "positive_linear": "pool",
    "mul": "product", "div": "product", "matmul": "product", "einsum": "product",
    "max_pool": "max", "selection": "max",
    "dropout": "identity",
    "layer_norm": "norm", "rms_norm": "norm", "group_norm": "norm", "normalize": "norm",
    "softmax": "softmax",
    "embedding": "source",
} | {name: "activation" for name in (
    "relu", "leaky_relu", "hardtanh", "gelu", "silu", "sigmoid", "tanh", "hardswish",
    "hardsigmoid", "elu", "softplus", "mish", "pow", "pointwise",
)}
"""The kind of each canonical op, which rule sets other than absLRP assign rules by:

- ``affine``: linear in its input with constant weight and bias (the LRP z-rules apply);
- ``sum``: element-wise sum/difference of activations (and constants);
- ``pool``: linear with non-negative fixed weights (average pooling, mean, sum);
- ``product``: bilinear in two activations (element-wise product, matmul, einsum), or a
  quotient ``input / other`` (a product with the divisor's reciprocal; the divisor is usually a
  constant);
- ``max``: max pooling and other selections by value (winner takes all);
- ``identity``: the identity in eval mode (dropout);
- ``norm``: normalisation with statistics treated as constants (layer norm, RMS norm, group
  norm, L_p normalisation);
- ``softmax``: softmax;
- ``activation``: element-wise non-linearity ``y = f(x)``;
- ``source``: where token relevance is read (embedding lookups).

Every canonical op has exactly one kind (a test checks it)."""
