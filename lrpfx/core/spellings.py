"""The spelling table: every way a frontend writes an op → what lrpfx makes of it.

A model reaches lrpfx as an fx graph whose calls are spelt in one of several ways: ``nn.Module``
calls (``nn.Conv2d``), ``F.*`` and ``torch.*`` functions, tensor methods (``x.add``), Python
operators (``x + y``) and ``aten.*`` overloads (``torch.export``). :data:`TABLE` has one
:class:`Row` per op family, from the bare names and module types of its spellings to an
*extractor* that reads one call site (a :class:`Call`) and returns what the call is:

- ``(canonical name, keyword arguments)`` of a function in :mod:`lrpfx.core.ops`;
- :data:`PASSTHROUGH` (data movement: relevance passes through unchanged), :data:`SHAPE`
  (sizes, asserts, booleans: no tensor data flows) or :data:`IDENTITY` (the node is removed);
- ``None`` (not an op lrpfx knows in this form);

or raises :class:`Refuse` for an op it recognises but cannot support in this configuration.
:func:`lookup` finds the extractor of a call; :mod:`lrpfx.passes.canonicalize` applies it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeGuard

import torch
from torch import fx, nn

# What a node is; extractors return the last three as markers.
CANONICAL = "canonical"
"""A call of a function in :mod:`lrpfx.core.ops`: the only nodes that get a rule."""
PASSTHROUGH = "passthrough"
"""Keeps its original target and carries relevance unchanged (DESIGN.md §4.2)."""
SHAPE = "shape"
"""Sizes, asserts, guards, booleans, factories: no tensor data flows."""
UNKNOWN = "unknown"
IO = "io"
"""Placeholder, output, get_attr."""
IDENTITY = "identity"
"""An extractor's marker: the call is the identity here (the node is removed)."""

Result = tuple[str, dict[str, Any]] | str | None


class Refuse(Exception):
    """An op the table recognises but cannot support in this configuration."""


# ----------------------------------------------------------------------------- reading a node


def spelling(node: fx.Node, root: nn.Module) -> str:
    """A readable name for the op a node performs, as its frontend spelt it."""
    if node.op == "call_module":
        return f"nn.{type(root.get_submodule(str(node.target))).__name__}"
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    if node.op == "call_function":
        t = node.target
        if isinstance(t, torch._ops.OpOverload):
            return f"aten.{t._schema.name.split('::')[-1]}.{t._overloadname}"
        mod = getattr(t, "__module__", "") or ""
        name = getattr(t, "__name__", str(t))
        if mod in ("_operator", "operator"):
            return f"operator.{name}"
        if mod.startswith("torch.nn.functional"):
            return f"F.{name}"
        return f"{mod}.{name}" if mod else name
    return node.op


_INPLACE_OPERATORS = {"iadd": "add", "isub": "sub", "imul": "mul", "itruediv": "truediv"}


def base_name(node: fx.Node, root: nn.Module) -> str:
    """The op's bare name, in-place suffix removed: ``relu_`` → ``relu``, ``iadd`` → ``add``."""
    if node.op == "call_module":
        return type(root.get_submodule(str(node.target))).__name__
    if node.op == "call_method":
        name = str(node.target)
    elif isinstance(node.target, torch._ops.OpOverload):
        name = node.target._schema.name.split("::")[-1]
    else:
        name = getattr(node.target, "__name__", str(node.target))
    if node.op == "call_function" and getattr(node.target, "__module__", "") in (
        "_operator", "operator",
    ):
        name = _INPLACE_OPERATORS.get(name, name)
    name = name.strip("_") if name.startswith("__") else name
    if name.endswith("_") and not name.startswith("_"):
        name = name[:-1]
    return name


def is_inplace(node: fx.Node) -> bool:
    """Whether the call mutates its first argument (``x.relu_()``, ``x += y``, ``aten.add_``)."""
    if node.op == "call_method":
        target = str(node.target)
        return target.endswith("_") and not target.startswith("_")
    t = node.target
    if isinstance(t, torch._ops.OpOverload):
        return t._schema.name.split("::")[-1].endswith("_")
    return getattr(t, "__name__", "") in _INPLACE_OPERATORS


def is_number(v: Any) -> TypeGuard[int | float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass
class Call:
    """One call site as the table's extractors see it."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    aten: bool = False
    """Spelt as an ``aten.*`` overload (``torch.export``), whose argument order can differ."""
    method: bool = False
    """Spelt as a tensor method."""
    module: nn.Module | None = None
    """The module instance of an ``nn.Module`` call (its configuration lives there)."""
    attr: Callable[[str], Any] = lambda key: None
    """``attr(name)``: a node for the module's attribute ``name`` (None if the module has none)."""
    insert: Callable[[Callable[..., Any], tuple[Any, ...], str], Any] = lambda fn, a, why: None
    """``insert(fn, args, why)``: a helper data-movement node before the call."""

    @classmethod
    def of(cls, node: fx.Node) -> Call:
        """A node's arguments, read as they are (no module, no helper nodes)."""
        return cls(tuple(node.args), dict(node.kwargs))

    def get(self, index: int | None, *names: str, default: Any = None) -> Any:
        """The argument at position ``index`` or under any of ``names``."""
        for name in names:
            if name in self.kwargs:
                return self.kwargs[name]
        if index is not None and index < len(self.args):
            return self.args[index]
        return default

    @property
    def mod(self) -> Any:
        """:attr:`module` for a module extractor, which reads its settings by attribute name."""
        if self.module is None:
            raise TypeError("a module extractor was given a function call")
        return self.module

    @property
    def x(self) -> Any:
        """The (first) tensor input: positional 0, ``input`` or ``self``, or a module's input."""
        if self.module is not None:
            return self.args[0] if self.args else next(iter(self.kwargs.values()))
        return self.get(0, "input", "self")

    def tensor_operands(self) -> list[fx.Node]:
        return [a for a in (*self.args, *self.kwargs.values()) if isinstance(a, fx.Node)]


Extract = Callable[[Call], Result]


@dataclass(frozen=True)
class Row:
    """One op family: its spellings by bare name and by module type, and their extractors."""

    names: tuple[str, ...] = ()
    """Bare names of its function, method, operator and aten spellings (in-place suffix off)."""
    call: Extract | None = None
    """Extractor for the function/method/operator/aten spellings."""
    modules: tuple[type[nn.Module], ...] = ()
    module: Extract | None = None
    """Extractor for the module spellings (reads :attr:`Call.module`)."""


# ----------------------------------------------------------------------------- small extractors


def _tuple(v: Any, n: int) -> list[int]:
    if isinstance(v, (list, tuple)):
        if len(v) == 1 and n > 1:
            return [int(v[0])] * n
        return [int(a) for a in v]
    return [int(v)] * n


def _list(v: Any) -> list[Any]:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _marker(result: str) -> Extract:
    return lambda c: result


def _act(name: str, **defaults: Any) -> Extract:
    """``name(input, *defaults)``: arguments after the input by position or name."""
    def extract(c: Call) -> Result:
        kwargs: dict[str, Any] = {"input": c.x}
        for i, (key, default) in enumerate(defaults.items(), start=1):
            kwargs[key] = c.get(i, key, default=default)
        return name, kwargs

    return extract


def _act_module(name: str, *attrs: str, **constants: Any) -> Extract:
    """``name`` with settings read from the module's attributes ``attrs``."""
    return lambda c: (name, dict(input=c.x, **{a: getattr(c.mod, a) for a in attrs},
                                 **constants))


def _conv_from(x: Any, weight: Any, bias: Any, stride: Any, padding: Any, dilation: Any,
               groups: Any, n: int) -> Result:
    if isinstance(padding, str):
        if padding != "valid":
            raise Refuse(f"conv padding={padding!r} (only numeric, 'valid') is not supported")
        padding = [0] * n
    return "conv", dict(
        input=x, weight=weight, bias=bias, stride=_tuple(stride, n), padding=_tuple(padding, n),
        dilation=_tuple(dilation, n), groups=int(groups),
    )


def _conv(n: int) -> Extract:  # F.conv{n}d, aten.conv{n}d
    return lambda c: _conv_from(
        c.x, c.get(1, "weight"), c.get(2, "bias"), c.get(3, "stride", default=1),
        c.get(4, "padding", default=0), c.get(5, "dilation", default=1),
        c.get(6, "groups", default=1), n)


def _conv_transpose_from(x: Any, weight: Any, bias: Any, stride: Any, padding: Any,
                         output_padding: Any, groups: Any, dilation: Any, n: int) -> Result:
    if isinstance(padding, str):
        raise Refuse(f"transposed conv padding={padding!r} is not supported")
    return "conv_transpose", dict(
        input=x, weight=weight, bias=bias, stride=_tuple(stride, n), padding=_tuple(padding, n),
        output_padding=_tuple(output_padding, n), groups=int(groups),
        dilation=_tuple(dilation, n))


def _conv_transpose(n: int) -> Extract:  # F.conv_transpose{n}d, aten.conv_transpose{n}d.input
    return lambda c: _conv_transpose_from(
        c.x, c.get(1, "weight"), c.get(2, "bias"), c.get(3, "stride", default=1),
        c.get(4, "padding", default=0), c.get(5, "output_padding", default=0),
        c.get(6, "groups", default=1), c.get(7, "dilation", default=1), n)


def _conv_transpose_module(c: Call) -> Result:
    m = c.mod
    if m.padding_mode != "zeros":
        raise Refuse(f"transposed conv padding_mode={m.padding_mode!r} is not supported")
    if len(c.args) + len(c.kwargs) > 1:
        raise Refuse("transposed conv called with output_size is not supported")
    return _conv_transpose_from(c.x, c.attr("weight"), c.attr("bias"), m.stride, m.padding,
                                m.output_padding, m.groups, m.dilation, m.weight.dim() - 2)


def _convolution(c: Call) -> Result:  # aten.convolution
    stride = c.get(3, "stride")
    if c.get(6, "transposed"):
        return _conv_transpose_from(
            c.get(0, "input"), c.get(1, "weight"), c.get(2, "bias"), stride,
            c.get(4, "padding"), c.get(7, "output_padding"), c.get(8, "groups"),
            c.get(5, "dilation"), len(stride))
    return _conv_from(c.get(0, "input"), c.get(1, "weight"), c.get(2, "bias"), stride,
                      c.get(4, "padding"), c.get(5, "dilation"), c.get(8, "groups"), len(stride))


def _conv_module(c: Call) -> Result:
    m = c.mod
    if m.padding_mode != "zeros":
        raise Refuse(f"conv padding_mode={m.padding_mode!r} is not supported")
    return _conv_from(c.x, c.attr("weight"), c.attr("bias"), m.stride, m.padding, m.dilation,
                      m.groups, m.weight.dim() - 2)


def _addmm(c: Call) -> Result:  # bias + x @ w (GPT-2's Conv1D): a linear layer with weight wᵀ
    if c.get(3, "beta", default=1) != 1 or c.get(4, "alpha", default=1) != 1:
        raise Refuse("addmm with beta/alpha other than 1 is not supported")
    w_t = c.insert(torch.t, (c.get(2, "mat2"),), "addmm weight (transposed)")
    return "linear", dict(input=c.get(1, "mat1"), weight=w_t, bias=c.get(0, "input", "self"))


def _batch_norm(c: Call) -> Result:
    if c.aten:  # aten order: input, weight, bias, running_mean, running_var, training, _, eps
        w, b, mean, var = (c.get(i, k) for i, k in enumerate(
            ("weight", "bias", "running_mean", "running_var"), start=1))
    else:  # F.batch_norm order: input, running_mean, running_var, weight, bias, training, ...
        mean, var, w, b = (c.get(i, k) for i, k in enumerate(
            ("running_mean", "running_var", "weight", "bias"), start=1))
    if c.get(5, "training", default=False):
        raise Refuse("batch norm with batch statistics (training mode) is not supported")
    return "batch_norm", dict(input=c.get(0, "input"), weight=w, bias=b, running_mean=mean,
                              running_var=var, eps=float(c.get(7, "eps", default=1e-5)))


def _batch_norm_module(c: Call) -> Result:
    m = c.mod
    if m.training or m.running_mean is None:
        raise Refuse("batch norm with batch statistics (training mode or "
                     "track_running_stats=False) is not supported")
    return "batch_norm", dict(input=c.x, weight=c.attr("weight"), bias=c.attr("bias"),
                              running_mean=c.attr("running_mean"),
                              running_var=c.attr("running_var"), eps=float(m.eps))


def _is_scalar_scale(c: Call, name: str) -> bool:
    """``x * 2.0``, ``x / 3``, ``-x``: one tensor operand, the rest Python numbers."""
    operands = [*c.args, *c.kwargs.values()]
    tensors = [a for a in operands if isinstance(a, fx.Node)]
    if name == "neg":
        return len(tensors) == 1
    if len(tensors) != 1 or not any(is_number(a) for a in operands):
        return False
    # `2.0 / x` is not a scaling of x
    return not (name == "div" and c.args and not isinstance(c.args[0], fx.Node))


def _arithmetic(name: str) -> Extract:
    """add, sub, mul, div: a scaling by a Python number is data movement; arithmetic on numbers
    only (sizes) is left as it is."""
    def extract(c: Call) -> Result:
        if name in ("mul", "div", "neg") and _is_scalar_scale(c, name):
            return PASSTHROUGH
        if name == "neg" or not c.tensor_operands():
            return None
        if name in ("add", "sub") and c.get(2, "alpha", default=1) != 1:
            raise Refuse(f"{name} with alpha={c.get(2, 'alpha')} is not supported")
        if name == "div" and c.get(2, "rounding_mode") is not None:
            raise Refuse(f"division with rounding_mode={c.get(2, 'rounding_mode')!r} is not "
                         "supported")
        return name, dict(input=c.x, other=c.get(1, "other"))

    return extract


def _rsub(c: Call) -> Result:  # other - self
    alpha = c.get(2, "alpha", default=1)
    if alpha != 1:
        raise Refuse(f"rsub with alpha={alpha} is not supported")
    return "sub", dict(input=c.get(1, "other"), other=c.get(0, "self"))


def _pow(c: Call) -> Result:  # tensor exponents, number ** tensor: not supported
    exponent = c.get(1, "exponent")
    if not is_number(exponent) or not isinstance(c.x, fx.Node):
        return None
    return "pow", dict(input=c.x, exponent=exponent)


def _matmul(c: Call) -> Result:  # matmul, bmm, mm
    return "matmul", dict(input=c.x, other=c.get(1, "other", "mat2"))


def _einsum(c: Call) -> Result:
    equation = c.get(0, "equation")
    operands = None if c.method else c.get(1, "tensors")
    if not isinstance(operands, (list, tuple)):
        operands = list(c.args[1:])
    if not isinstance(equation, str) or len(operands) != 2:
        raise Refuse("einsum is supported with exactly two operands")
    return "einsum", dict(equation=equation, input=operands[0], other=operands[1])


def _max_pool(n: int) -> Extract:
    def extract(c: Call) -> Result:
        if c.get(6, "return_indices", default=False):
            raise Refuse("max pooling with return_indices=True is not supported")
        k = _tuple(c.get(1, "kernel_size"), n)
        stride = c.get(2, "stride")
        return "max_pool", dict(
            input=c.x, kernel_size=k, stride=k if stride in (None, []) else _tuple(stride, n),
            padding=_tuple(c.get(3, "padding", default=0), n),
            dilation=_tuple(c.get(4, "dilation", default=1), n),
            ceil_mode=bool(c.get(5, "ceil_mode", default=False)))

    return extract


def _avg_pool(n: int) -> Extract:
    def extract(c: Call) -> Result:
        k = _tuple(c.get(1, "kernel_size"), n)
        stride = c.get(2, "stride")
        return "avg_pool", dict(
            input=c.x, kernel_size=k, stride=k if stride in (None, []) else _tuple(stride, n),
            padding=_tuple(c.get(3, "padding", default=0), n),
            ceil_mode=bool(c.get(4, "ceil_mode", default=False)),
            count_include_pad=bool(c.get(5, "count_include_pad", default=True)),
            divisor_override=c.get(6, "divisor_override"))

    return extract


def _adaptive_avg_pool(n: int) -> Extract:
    def extract(c: Call) -> Result:
        size = c.get(1, "output_size")
        return "adaptive_avg_pool", dict(
            input=c.x, output_size=list(size) if isinstance(size, (list, tuple)) else [size] * n)

    return extract


_POOL_CLASSES: dict[str, tuple[type[nn.Module], ...]] = {
    "max_pool": (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d),
    "avg_pool": (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d),
    "adaptive_avg_pool": (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d),
}


def _pool_module(c: Call) -> Result:
    """A pooling module's settings, read as the function spelling's arguments."""
    m = c.mod
    kind = next(k for k, classes in _POOL_CLASSES.items() if isinstance(m, classes))
    n = next(i + 1 for i, cls in enumerate(_POOL_CLASSES[kind]) if isinstance(m, cls))
    if kind == "adaptive_avg_pool":
        return _adaptive_avg_pool(n)(Call((c.x, m.output_size), {}))
    if kind == "max_pool":
        return _max_pool(n)(Call((c.x, m.kernel_size, m.stride, m.padding, m.dilation,
                                  m.ceil_mode, m.return_indices), {}))
    return _avg_pool(n)(Call((c.x, m.kernel_size, m.stride, m.padding, m.ceil_mode,
                              m.count_include_pad, getattr(m, "divisor_override", None)), {}))


def _reduce(name: str) -> Extract:  # mean, sum
    def extract(c: Call) -> Result:
        dim = c.get(1, "dim")
        if isinstance(dim, torch.dtype):  # aten.mean.default(self, dtype)
            dim = None
        if c.get(3, "dtype") is not None:
            raise Refuse(f"{name} with a dtype argument is not supported")
        return name, dict(input=c.x, dim=None if dim is None else _list(dim),
                          keepdim=bool(c.get(2, "keepdim", default=False)))

    return extract


def _dropout(c: Call) -> Result:
    if c.module is None and c.get(2, "train", "training", default=False):
        raise Refuse("dropout in training mode is not supported (explain in eval mode)")
    return "dropout", dict(input=c.x)


def _layer_norm(c: Call) -> Result:
    return "layer_norm", dict(
        input=c.get(0, "input"), normalized_shape=_list(c.get(1, "normalized_shape")),
        weight=c.get(2, "weight"), bias=c.get(3, "bias"), eps=float(c.get(4, "eps", default=1e-5)))


def _layer_norm_module(c: Call) -> Result:
    m = c.mod
    return "layer_norm", dict(input=c.x, normalized_shape=list(m.normalized_shape),
                              weight=c.attr("weight"), bias=c.attr("bias"), eps=float(m.eps))


def _rms_norm(c: Call) -> Result:  # F.rms_norm, aten.rms_norm
    eps = c.get(3, "eps")
    return "rms_norm", dict(
        input=c.get(0, "input"), normalized_shape=_list(c.get(1, "normalized_shape")),
        weight=c.get(2, "weight"), eps=None if eps is None else float(eps))


def _rms_norm_module(c: Call) -> Result:
    m = c.mod
    return "rms_norm", dict(input=c.x, normalized_shape=list(m.normalized_shape),
                            weight=c.attr("weight"), eps=None if m.eps is None else float(m.eps))


def _normalize(c: Call) -> Result:  # F.normalize
    if c.get(4, "out") is not None:
        raise Refuse("F.normalize with out= is not supported")
    dim = c.get(2, "dim", default=1)
    return "normalize", dict(input=c.get(0, "input"), p=float(c.get(1, "p", default=2.0)),
                             dim=list(dim) if isinstance(dim, (list, tuple)) else [int(dim)],
                             eps=float(c.get(3, "eps", default=1e-12)))


def _group_norm(c: Call) -> Result:  # F.group_norm, aten.group_norm
    return "group_norm", dict(
        input=c.get(0, "input"), num_groups=int(c.get(1, "num_groups")),
        weight=c.get(2, "weight"), bias=c.get(3, "bias"), eps=float(c.get(4, "eps", default=1e-5)))


def _group_norm_module(c: Call) -> Result:
    m = c.mod
    return "group_norm", dict(input=c.x, num_groups=int(m.num_groups), weight=c.attr("weight"),
                              bias=c.attr("bias"), eps=float(m.eps))


def _softmax(c: Call) -> Result:
    dim = c.mod.dim if c.module is not None else c.get(1, "dim")
    if dim is None:
        raise Refuse("softmax without an explicit dim is not supported")
    if c.module is None and c.get(None, "dtype") is not None:
        raise Refuse("softmax with a dtype argument is not supported")
    return "softmax", dict(input=c.x, dim=int(dim), mask=None, causal=False)


def _embedding(c: Call) -> Result:
    if c.module is not None:
        weight, indices, pad, max_norm = c.attr("weight"), c.x, c.mod.padding_idx, \
            c.mod.max_norm
    elif c.aten:  # aten.embedding(weight, indices, padding_idx=-1, ...)
        weight, indices, pad, max_norm = c.get(0, "weight"), c.get(1, "indices"), \
            c.get(2, "padding_idx", default=-1), None
    else:  # F.embedding(input, weight, padding_idx, max_norm, ...)
        weight, indices, pad, max_norm = c.get(1, "weight"), c.get(0, "input"), \
            c.get(2, "padding_idx"), c.get(3, "max_norm")
    if max_norm is not None:
        raise Refuse("embedding with max_norm (renormalises the table in place) is not supported")
    return "embedding", dict(weight=weight, indices=indices,
                             padding_idx=None if pad is None or pad < 0 else int(pad))


def _pad(c: Call) -> Result:  # F.pad, aten.pad: zero fill moves data, other fills are unknown
    mode, value = c.get(2, "mode", default="constant"), c.get(3, "value", default=0)
    return PASSTHROUGH if mode == "constant" and not value else None


def _constant_pad(c: Call) -> Result:  # aten.constant_pad_nd(self, pad, value=0)
    return None if c.get(2, "value", default=0) else PASSTHROUGH


def _stochastic_depth(c: Call) -> Result:  # torchvision's: the identity in eval mode
    return None if c.get(3, "training", default=False) else IDENTITY


def _getattr(c: Call) -> Result:
    return SHAPE if c.get(1) in ("shape", "dtype", "device", "ndim") else None


# ----------------------------------------------------------------------------- the table

PASSTHROUGH_NAMES = frozenset({
    "view", "reshape", "_unsafe_view", "flatten", "unflatten", "permute", "transpose", "t",
    "contiguous", "expand", "expand_as", "cat", "concat", "concatenate", "stack", "split",
    "split_with_sizes", "tensor_split", "chunk", "unbind", "getitem", "select", "slice", "narrow",
    "squeeze", "unsqueeze", "clone", "alias", "to", "_to_copy", "type_as", "float", "double",
    "half", "bfloat16", "view_as", "reshape_as", "movedim", "moveaxis", "swapaxes", "swapdims",
    "flip", "roll", "repeat", "tile", "pixel_shuffle", "pixel_unshuffle", "channel_shuffle",
    "native_channel_shuffle", "index", "index_select", "lift_fresh_copy", "identity",
    "gather", "take_along_dim",
    # selections: each output element is one input element or a constant fill
    "masked_fill", "where",
})
"""Ops that move or copy data without computing on it: relevance passes through unchanged."""

SHAPE_NAMES = frozenset({
    "sym_size", "sym_numel", "sym_stride", "sym_storage_offset", "size", "dim", "numel",
    "_assert_tensor_metadata", "_assert_scalar", "_assert_async", "sym_constrain_range",
    "sym_constrain_range_for_size", "_check", "_check_is_size", "floordiv",
    # comparisons give booleans, tensor factories give values that do not depend on the data:
    # neither carries relevance
    "eq", "ne", "lt", "gt", "le", "ge", "logical_not", "logical_and", "logical_or", "isnan",
    "isinf", "isfinite", "new_zeros", "new_ones", "new_full", "new_empty", "zeros_like",
    "ones_like", "full_like", "empty_like", "arange", "zeros", "ones", "full",
})

_DROPOUT_NAMES = ("dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout",
                  "dropout1d", "dropout2d", "dropout3d")

TABLE: tuple[Row, ...] = (
    # affine
    Row(("conv1d",), _conv(1)), Row(("conv2d",), _conv(2)), Row(("conv3d",), _conv(3)),
    Row(("convolution",), _convolution, (nn.Conv1d, nn.Conv2d, nn.Conv3d), _conv_module),
    Row(("conv_transpose1d",), _conv_transpose(1),
        (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d), _conv_transpose_module),
    Row(("conv_transpose2d",), _conv_transpose(2)),
    Row(("conv_transpose3d",), _conv_transpose(3)),
    Row(("linear",), lambda c: ("linear", dict(input=c.x, weight=c.get(1, "weight"),
                                               bias=c.get(2, "bias"))),
        (nn.Linear,), lambda c: ("linear", dict(input=c.x, weight=c.attr("weight"),
                                                bias=c.attr("bias")))),
    Row(("addmm",), _addmm),
    Row(("batch_norm",), _batch_norm, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d),
        _batch_norm_module),
    # sums and products
    Row(("add",), _arithmetic("add")), Row(("sub",), _arithmetic("sub")), Row(("rsub",), _rsub),
    Row(("mul",), _arithmetic("mul")), Row(("div", "truediv"), _arithmetic("div")),
    Row(("neg",), _arithmetic("neg")),
    Row(("matmul", "bmm", "mm"), _matmul), Row(("einsum",), _einsum),
    # activations
    Row(("relu",), _act("relu"), (nn.ReLU,), _act_module("relu")),
    Row(("gelu",), lambda c: ("gelu", dict(input=c.x, approximate=c.get(
        None, "approximate", default="none"))), (nn.GELU,), _act_module("gelu", "approximate")),
    Row(("silu",), _act("silu"), (nn.SiLU,), _act_module("silu")),
    Row(("sigmoid",), _act("sigmoid"), (nn.Sigmoid,), _act_module("sigmoid")),
    Row(("tanh",), _act("tanh"), (nn.Tanh,), _act_module("tanh")),
    Row(("hardswish",), _act("hardswish"), (nn.Hardswish,), _act_module("hardswish")),
    Row(("hardsigmoid",), _act("hardsigmoid"), (nn.Hardsigmoid,), _act_module("hardsigmoid")),
    Row(("mish",), _act("mish"), (nn.Mish,), _act_module("mish")),
    Row(("leaky_relu",), _act("leaky_relu", negative_slope=0.01), (nn.LeakyReLU,),
        _act_module("leaky_relu", "negative_slope")),
    Row(("hardtanh",), _act("hardtanh", min_val=-1.0, max_val=1.0), (nn.Hardtanh,),
        _act_module("hardtanh", "min_val", "max_val")),
    Row(("relu6",), lambda c: ("hardtanh", dict(input=c.x, min_val=0.0, max_val=6.0)),
        (nn.ReLU6,), _act_module("hardtanh", min_val=0.0, max_val=6.0)),
    Row(("elu",), _act("elu", alpha=1.0), (nn.ELU,), _act_module("elu", "alpha")),
    Row(("softplus",), _act("softplus", beta=1.0, threshold=20.0), (nn.Softplus,),
        _act_module("softplus", "beta", "threshold")),
    Row(("pow",), _pow),
    # pooling and reductions
    Row(("max_pool1d",), _max_pool(1), _POOL_CLASSES["max_pool"], _pool_module),
    Row(("max_pool2d",), _max_pool(2)), Row(("max_pool3d",), _max_pool(3)),
    Row(("avg_pool1d",), _avg_pool(1), _POOL_CLASSES["avg_pool"], _pool_module),
    Row(("avg_pool2d",), _avg_pool(2)), Row(("avg_pool3d",), _avg_pool(3)),
    Row(("adaptive_avg_pool1d",), _adaptive_avg_pool(1), _POOL_CLASSES["adaptive_avg_pool"],
        _pool_module),
    Row(("adaptive_avg_pool2d",), _adaptive_avg_pool(2)),
    Row(("adaptive_avg_pool3d",), _adaptive_avg_pool(3)),
    Row(("mean",), _reduce("mean")), Row(("sum",), _reduce("sum")),
    # normalisation
    Row(("layer_norm",), _layer_norm, (nn.LayerNorm,), _layer_norm_module),
    Row(("rms_norm",), _rms_norm, (nn.RMSNorm,), _rms_norm_module),
    Row(("group_norm",), _group_norm, (nn.GroupNorm,), _group_norm_module),
    Row(("normalize",), _normalize),
    Row(("softmax", "_softmax"), _softmax, (nn.Softmax,), _softmax),
    # sources
    Row(("embedding",), _embedding, (nn.Embedding,), _embedding),
    # the identity in eval mode
    Row(_DROPOUT_NAMES, _dropout, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                                   nn.AlphaDropout, nn.FeatureAlphaDropout), _dropout),
    Row(("stochastic_depth",), _stochastic_depth, (nn.Identity,), _marker(IDENTITY)),
    # data movement
    Row(tuple(sorted(PASSTHROUGH_NAMES)), _marker(PASSTHROUGH), (nn.Flatten, nn.Unflatten),
        _marker(PASSTHROUGH)),
    Row(("pad",), _pad), Row(("constant_pad_nd",), _constant_pad),
    # no tensor data
    Row(tuple(sorted(SHAPE_NAMES)), _marker(SHAPE)),
    Row(("getattr",), _getattr),
)
"""Every op family lrpfx knows, one row each (an op's spellings, in-place ones included)."""


def _index() -> tuple[dict[str, Extract], dict[type[nn.Module], Extract]]:
    by_name: dict[str, Extract] = {}
    by_module: dict[type[nn.Module], Extract] = {}
    for row in TABLE:
        for name in row.names:
            if name in by_name:
                raise RuntimeError(f"spelling table: {name!r} is in two rows")
            assert row.call is not None
            by_name[name] = row.call
        for cls in row.modules:
            if cls in by_module:
                raise RuntimeError(f"spelling table: {cls.__name__} is in two rows")
            assert row.module is not None
            by_module[cls] = row.module
    return by_name, by_module


BY_NAME, BY_MODULE = _index()


def lookup(name: str, module: nn.Module | None = None) -> Extract | None:
    """The extractor for a call of bare name ``name`` (or of ``module``), or None.

    A module is found by its class or its nearest ``torch.nn`` base class
    (``NonDynamicallyQuantizableLinear`` is a ``Linear``).
    """
    if module is None:
        return BY_NAME.get(name)
    for cls in type(module).__mro__:
        if cls in BY_MODULE:
            return BY_MODULE[cls]
    return None


__all__ = [
    "CANONICAL", "IDENTITY", "IO", "PASSTHROUGH", "PASSTHROUGH_NAMES", "SHAPE", "TABLE",
    "UNKNOWN", "Call", "Refuse", "Row", "base_name", "is_inplace", "is_number", "lookup",
    "spelling",
]
