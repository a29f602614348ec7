"""Pass 2: map every spelling of an op to one canonical op.

Input: a GraphModule from either frontend (``torch.export`` gives ``aten.*`` calls;
``torch.fx.symbolic_trace`` gives ``nn.Module`` calls, ``F.*``/``torch.*`` functions and tensor
methods). Output: a new graph in which

- every op that carries relevance is a ``call_function`` of a function in :mod:`lrpfx.core.ops`, all
  arguments by keyword, module parameters made explicit as ``get_attr`` nodes;
- in-place spellings (``relu_``, ``add_``, ``x += y``) are out-of-place ones (refused where the
  mutated tensor is read again afterwards);
- ``nn.Identity`` and eval-mode stochastic depth are gone;
- RMS norms and L_p normalisations spelt out op by op (LLaMA's ``pow, mean, add, rsqrt, mul,
  weight *``; ``F.normalize`` as export spells it: ``norm, clamp_min, expand_as, div``) are one
  ``rms_norm`` / ``normalize`` node each, as if written with ``F.rms_norm`` / ``F.normalize``;
- every node carries ``node.meta["lrpfx"]``, a :class:`NodeInfo` saying what it is.

The user's graph is never modified: the pass works on a copy.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from lrpfx.core import ops

# Kinds a node can have. Only "canonical" nodes get a rule; "passthrough" nodes keep their
# original target and carry relevance unchanged through plain autograd (DESIGN.md §4.2).
CANONICAL = "canonical"
PASSTHROUGH = "passthrough"
SHAPE = "shape"  # sizes, asserts, guards: no tensor data flows
UNKNOWN = "unknown"
IO = "io"  # placeholder, output, get_attr


@dataclass
class NodeInfo:
    """What canonicalize learnt about one node."""

    kind: str
    source_op: str
    """The op as the frontend spelt it (``aten.conv2d.default``, ``nn.Conv2d``, ``x.view``)."""
    module_path: str = ""
    """Dotted path of the innermost user module the op came from ("" for the top level)."""
    canonical: str | None = None
    """Name of the canonical op (a key of :data:`lrpfx.core.ops.CANONICAL_OPS`)."""
    problem: str | None = None
    """Why an op that looks supported is not (e.g. training-mode batch norm)."""
    extra: dict[str, Any] = field(default_factory=dict)


class _Refuse(Exception):
    """An op we recognise but cannot support in this configuration."""


# ----------------------------------------------------------------------------- spelling helpers


def spelling(node: fx.Node, root: nn.Module) -> str:
    """A readable name for the op a node performs, as its frontend spelt it."""
    if node.op == "call_module":
        return f"nn.{type(root.get_submodule(node.target)).__name__}"
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


def _base_name(node: fx.Node, root: nn.Module) -> str:
    """The op's bare name, in-place suffix removed: ``relu_`` → ``relu``, ``iadd`` → ``add``."""
    if node.op == "call_module":
        return type(root.get_submodule(node.target)).__name__
    if node.op == "call_method":
        name = node.target
    elif isinstance(node.target, torch._ops.OpOverload):
        name = node.target._schema.name.split("::")[-1]
    else:
        name = getattr(node.target, "__name__", str(node.target))
    if node.op == "call_function" and getattr(node.target, "__module__", "") in (
        "_operator", "operator",
    ):
        name = {"iadd": "add", "isub": "sub", "imul": "mul", "itruediv": "truediv"}.get(name, name)
    name = name.strip("_") if name.startswith("__") else name
    if name.endswith("_") and not name.startswith("_"):
        name = name[:-1]
    return name


def _is_inplace(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.startswith("_")
    t = node.target
    if isinstance(t, torch._ops.OpOverload):
        return t._schema.name.split("::")[-1].endswith("_")
    return getattr(t, "__name__", "") in ("iadd", "isub", "imul", "itruediv")


def _module_path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1][0]
        return str(path)
    if node.op == "call_module":
        return str(node.target)
    return ""


class _Args:
    """Positional-or-keyword access to a call's arguments under several possible names."""

    def __init__(self, node: fx.Node):
        self.args = node.args
        self.kwargs = node.kwargs

    def get(self, index: int | None, *names: str, default: Any = None) -> Any:
        for name in names:
            if name in self.kwargs:
                return self.kwargs[name]
        if index is not None and index < len(self.args):
            return self.args[index]
        return default


def _tuple(v: Any, n: int) -> list[int]:
    if isinstance(v, (list, tuple)):
        if len(v) == 1 and n > 1:
            return [int(v[0])] * n
        return [int(a) for a in v]
    return [int(v)] * n


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# ----------------------------------------------------------------------------- per-op extractors
# Each returns (canonical name, kwargs for the lrpfx.core.ops function). `get_attr(name)` makes a
# node for a module attribute; it is passed in so module and function spellings share one extractor.

Extract = Callable[[_Args, Callable[[str], Any], Any], tuple[str, dict[str, Any]]]


def _conv_from(x, weight, bias, stride, padding, dilation, groups, n):
    if isinstance(padding, str):
        if padding == "valid":
            padding = [0] * n
        else:
            raise _Refuse(f"conv padding={padding!r} (only numeric, 'valid') is not supported")
    return "conv", dict(
        input=x, weight=weight, bias=bias, stride=_tuple(stride, n), padding=_tuple(padding, n),
        dilation=_tuple(dilation, n), groups=int(groups),
    )


def _conv_fn(a: _Args, node_dims: int) -> tuple[str, dict[str, Any]]:
    return _conv_from(
        a.get(0, "input", "self"), a.get(1, "weight"), a.get(2, "bias"),
        a.get(3, "stride", default=1), a.get(4, "padding", default=0),
        a.get(5, "dilation", default=1), a.get(6, "groups", default=1), node_dims,
    )


def _convolution_aten(a: _Args) -> tuple[str, dict[str, Any]]:
    if a.get(6, "transposed"):
        raise _Refuse("transposed convolution is not supported yet")
    stride = a.get(3, "stride")
    return _conv_from(
        a.get(0, "input"), a.get(1, "weight"), a.get(2, "bias"), stride, a.get(4, "padding"),
        a.get(5, "dilation"), a.get(8, "groups"), len(stride),
    )


def _max_pool(a: _Args, n: int) -> tuple[str, dict[str, Any]]:
    if a.get(6, "return_indices", default=False):
        raise _Refuse("max pooling with return_indices=True is not supported")
    k = _tuple(a.get(1, "kernel_size"), n)
    stride = a.get(2, "stride", default=None)
    stride = k if stride is None or stride == [] else _tuple(stride, n)
    return "max_pool", dict(
        input=a.get(0, "input", "self"), kernel_size=k, stride=stride,
        padding=_tuple(a.get(3, "padding", default=0), n),
        dilation=_tuple(a.get(4, "dilation", default=1), n),
        ceil_mode=bool(a.get(5, "ceil_mode", default=False)),
    )


def _avg_pool(a: _Args, n: int) -> tuple[str, dict[str, Any]]:
    k = _tuple(a.get(1, "kernel_size"), n)
    stride = a.get(2, "stride", default=None)
    stride = k if stride is None or stride == [] else _tuple(stride, n)
    return "avg_pool", dict(
        input=a.get(0, "input", "self"), kernel_size=k, stride=stride,
        padding=_tuple(a.get(3, "padding", default=0), n),
        ceil_mode=bool(a.get(4, "ceil_mode", default=False)),
        count_include_pad=bool(a.get(5, "count_include_pad", default=True)),
        divisor_override=a.get(6, "divisor_override", default=None),
    )


def _adaptive_avg(a: _Args, n: int) -> tuple[str, dict[str, Any]]:
    size = a.get(1, "output_size")
    size = list(size) if isinstance(size, (list, tuple)) else [size] * n
    return "adaptive_avg_pool", dict(input=a.get(0, "input", "self"), output_size=size)


def _reduce(name: str, a: _Args) -> tuple[str, dict[str, Any]]:
    dim = a.get(1, "dim", default=None)
    if dim is not None and not isinstance(dim, (list, tuple)):
        if isinstance(dim, torch.dtype):  # aten.mean.default(self, dtype)
            dim = None
        else:
            dim = [dim]
    if a.get(3, "dtype", default=None) is not None:
        raise _Refuse(f"{name} with a dtype argument is not supported")
    return name, dict(input=a.get(0, "input", "self"), dim=dim, keepdim=bool(
        a.get(2, "keepdim", default=False)))


def _binary(name: str, a: _Args) -> tuple[str, dict[str, Any]]:
    alpha = a.get(2, "alpha", default=1)
    if alpha != 1:
        raise _Refuse(f"{name} with alpha={alpha} is not supported")
    return name, dict(input=a.get(0, "input", "self"), other=a.get(1, "other"))


def _batch_norm_aten(a: _Args) -> tuple[str, dict[str, Any]]:
    if a.get(5, "training"):
        raise _Refuse("batch norm with batch statistics (training mode) is not supported")
    return "batch_norm", dict(
        input=a.get(0, "input"), weight=a.get(1, "weight"), bias=a.get(2, "bias"),
        running_mean=a.get(3, "running_mean"), running_var=a.get(4, "running_var"),
        eps=float(a.get(7, "eps", default=1e-5)),
    )


def _batch_norm_fn(a: _Args) -> tuple[str, dict[str, Any]]:  # F.batch_norm argument order
    if a.get(5, "training", default=False):
        raise _Refuse("batch norm with batch statistics (training mode) is not supported")
    return "batch_norm", dict(
        input=a.get(0, "input"), running_mean=a.get(1, "running_mean"),
        running_var=a.get(2, "running_var"), weight=a.get(3, "weight"),
        bias=a.get(4, "bias"), eps=float(a.get(7, "eps", default=1e-5)),
    )


def _act(name: str, **defaults: Any) -> Callable[[_Args], tuple[str, dict[str, Any]]]:
    def extract(a: _Args) -> tuple[str, dict[str, Any]]:
        kwargs: dict[str, Any] = {"input": a.get(0, "input", "self")}
        for i, (key, default) in enumerate(defaults.items(), start=1):
            kwargs[key] = a.get(i, key, default=default)
        return name, kwargs

    return extract


def _dropout(a: _Args) -> tuple[str, dict[str, Any]]:
    if a.get(2, "train", "training", default=False):
        raise _Refuse("dropout in training mode is not supported (explain in eval mode)")
    return "dropout", dict(input=a.get(0, "input", "self"))


def _layer_norm(a: _Args) -> tuple[str, dict[str, Any]]:
    shape = a.get(1, "normalized_shape")
    return "layer_norm", dict(
        input=a.get(0, "input"), normalized_shape=list(shape) if isinstance(
            shape, (list, tuple)) else [shape],
        weight=a.get(2, "weight"), bias=a.get(3, "bias"), eps=float(a.get(4, "eps", default=1e-5)))


def _rms_norm(a: _Args) -> tuple[str, dict[str, Any]]:  # F.rms_norm and aten.rms_norm
    shape = a.get(1, "normalized_shape")
    eps = a.get(3, "eps", default=None)
    return "rms_norm", dict(
        input=a.get(0, "input"), normalized_shape=list(shape) if isinstance(
            shape, (list, tuple)) else [shape],
        weight=a.get(2, "weight"), eps=None if eps is None else float(eps))


def _normalize(a: _Args) -> tuple[str, dict[str, Any]]:  # F.normalize
    if a.get(4, "out") is not None:
        raise _Refuse("F.normalize with out= is not supported")
    dim = a.get(2, "dim", default=1)
    return "normalize", dict(input=a.get(0, "input"), p=float(a.get(1, "p", default=2.0)),
                             dim=list(dim) if isinstance(dim, (list, tuple)) else [int(dim)],
                             eps=float(a.get(3, "eps", default=1e-12)))


def _group_norm(a: _Args) -> tuple[str, dict[str, Any]]:  # F.group_norm and aten.group_norm
    return "group_norm", dict(
        input=a.get(0, "input"), num_groups=int(a.get(1, "num_groups")),
        weight=a.get(2, "weight"), bias=a.get(3, "bias"), eps=float(a.get(4, "eps", default=1e-5)))


def _div(a: _Args) -> tuple[str, dict[str, Any]]:
    mode = a.get(2, "rounding_mode", default=None)
    if mode is not None:
        raise _Refuse(f"division with rounding_mode={mode!r} is not supported")
    return "div", dict(input=a.get(0, "input", "self"), other=a.get(1, "other"))


def _softmax(a: _Args) -> tuple[str, dict[str, Any]]:
    dim = a.get(1, "dim")
    if dim is None:
        raise _Refuse("softmax without an explicit dim is not supported")
    dtype = a.get(None, "dtype")
    if dtype is not None:
        raise _Refuse("softmax with a dtype argument is not supported")
    return "softmax", dict(input=a.get(0, "input", "self"), dim=int(dim), mask=None,
                           causal=False)


def _embedding_aten(a: _Args) -> tuple[str, dict[str, Any]]:
    pad = a.get(2, "padding_idx", default=-1)
    return "embedding", dict(weight=a.get(0, "weight"), indices=a.get(1, "indices"),
                             padding_idx=None if pad is None or pad < 0 else int(pad))


def _embedding_fn(a: _Args) -> tuple[str, dict[str, Any]]:  # F.embedding(input, weight, ...)
    if a.get(3, "max_norm") is not None:
        raise _Refuse("embedding with max_norm (renormalises the table in place) is not supported")
    pad = a.get(2, "padding_idx")
    return "embedding", dict(weight=a.get(1, "weight"), indices=a.get(0, "input"),
                             padding_idx=None if pad is None or pad < 0 else int(pad))


_ELEMENTWISE = {
    "relu": _act("relu"),
    "gelu": lambda a: ("gelu", dict(input=a.get(0, "input", "self"),
                                    approximate=a.get(None, "approximate", default="none"))),
    "silu": _act("silu"),
    "sigmoid": _act("sigmoid"),
    "tanh": _act("tanh"),
    "hardswish": _act("hardswish"),
    "hardsigmoid": _act("hardsigmoid"),
    "mish": _act("mish"),
    "leaky_relu": _act("leaky_relu", negative_slope=0.01),
    "hardtanh": _act("hardtanh", min_val=-1.0, max_val=1.0),
    "relu6": lambda a: ("hardtanh", dict(input=a.get(0, "input", "self"), min_val=0.0,
                                         max_val=6.0)),
    "elu": lambda a: ("elu", dict(input=a.get(0, "input", "self"),
                                  alpha=a.get(1, "alpha", default=1.0))),
    "softplus": _act("softplus", beta=1.0, threshold=20.0),
}

# Function/method/aten spellings, by bare name.
_FUNCTION_EXTRACT: dict[str, Callable[[_Args], tuple[str, dict[str, Any]]]] = {
    **_ELEMENTWISE,
    "conv1d": lambda a: _conv_fn(a, 1),
    "conv2d": lambda a: _conv_fn(a, 2),
    "conv3d": lambda a: _conv_fn(a, 3),
    "convolution": _convolution_aten,
    "linear": lambda a: ("linear", dict(input=a.get(0, "input", "self"), weight=a.get(1, "weight"),
                                        bias=a.get(2, "bias"))),
    "layer_norm": _layer_norm,
    "rms_norm": _rms_norm,
    "normalize": _normalize,
    "group_norm": _group_norm,
    "softmax": _softmax,
    "_softmax": _softmax,
    "matmul": lambda a: ("matmul", dict(input=a.get(0, "input", "self"),
                                        other=a.get(1, "other", "mat2"))),
    "bmm": lambda a: ("matmul", dict(input=a.get(0, "input", "self"),
                                     other=a.get(1, "other", "mat2"))),
    "mm": lambda a: ("matmul", dict(input=a.get(0, "input", "self"),
                                    other=a.get(1, "other", "mat2"))),
    "add": lambda a: _binary("add", a),
    "sub": lambda a: _binary("sub", a),
    "mul": lambda a: ("mul", dict(input=a.get(0, "input", "self"), other=a.get(1, "other"))),
    # division by a tensor (by a Python number it is a scaling, see _SCALE_NAMES)
    "div": _div,
    "truediv": _div,
    "max_pool1d": lambda a: _max_pool(a, 1),
    "max_pool2d": lambda a: _max_pool(a, 2),
    "max_pool3d": lambda a: _max_pool(a, 3),
    "avg_pool1d": lambda a: _avg_pool(a, 1),
    "avg_pool2d": lambda a: _avg_pool(a, 2),
    "avg_pool3d": lambda a: _avg_pool(a, 3),
    "adaptive_avg_pool1d": lambda a: _adaptive_avg(a, 1),
    "adaptive_avg_pool2d": lambda a: _adaptive_avg(a, 2),
    "adaptive_avg_pool3d": lambda a: _adaptive_avg(a, 3),
    "mean": lambda a: _reduce("mean", a),
    "sum": lambda a: _reduce("sum", a),
    "dropout": _dropout,
    "feature_dropout": _dropout,
    "alpha_dropout": _dropout,
    "feature_alpha_dropout": _dropout,
    "dropout1d": _dropout,
    "dropout2d": _dropout,
    "dropout3d": _dropout,
}

# Ops that move or copy data without computing on it: relevance passes through unchanged.
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
# Multiplication/division by a Python number is data movement in the reference semantics.
_SCALE_NAMES = frozenset({"mul", "truediv", "div", "neg"})
_SHAPE_NAMES = frozenset({
    "sym_size", "sym_numel", "sym_stride", "sym_storage_offset", "size", "dim", "numel",
    "_assert_tensor_metadata", "_assert_scalar", "_assert_async", "sym_constrain_range",
    "sym_constrain_range_for_size", "_check", "_check_is_size", "floordiv",
    # comparisons give booleans, tensor factories give values that do not depend on the data:
    # neither carries relevance
    "eq", "ne", "lt", "gt", "le", "ge", "logical_not", "logical_and", "logical_or", "isnan",
    "isinf", "isfinite", "new_zeros", "new_ones", "new_full", "new_empty", "zeros_like",
    "ones_like", "full_like", "empty_like", "arange", "zeros", "ones", "full",
})
# torchvision's stochastic depth is the identity in eval mode; export removes it, so must we.
_IDENTITY_FUNCTIONS = frozenset({"stochastic_depth"})

# Module spellings. Each reads its configuration from the module instance.
_CONV_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_POOL_DIMS = {
    nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3, nn.AvgPool1d: 1, nn.AvgPool2d: 2,
    nn.AvgPool3d: 3, nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3,
}
_DROPOUT_MODULES = (
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
)
_ACT_MODULES: dict[type[nn.Module], Callable[[nn.Module], tuple[str, dict[str, Any]]]] = {
    nn.ReLU: lambda m: ("relu", {}),
    nn.GELU: lambda m: ("gelu", {"approximate": m.approximate}),
    nn.SiLU: lambda m: ("silu", {}),
    nn.Sigmoid: lambda m: ("sigmoid", {}),
    nn.Tanh: lambda m: ("tanh", {}),
    nn.Hardswish: lambda m: ("hardswish", {}),
    nn.Hardsigmoid: lambda m: ("hardsigmoid", {}),
    nn.Mish: lambda m: ("mish", {}),
    nn.LeakyReLU: lambda m: ("leaky_relu", {"negative_slope": m.negative_slope}),
    nn.ReLU6: lambda m: ("hardtanh", {"min_val": 0.0, "max_val": 6.0}),
    nn.Hardtanh: lambda m: ("hardtanh", {"min_val": m.min_val, "max_val": m.max_val}),
    nn.ELU: lambda m: ("elu", {"alpha": m.alpha}),
    nn.Softplus: lambda m: ("softplus", {"beta": m.beta, "threshold": m.threshold}),
}


def _module_extract(
    mod: nn.Module, node: fx.Node, attr: Callable[[str], fx.Node | None]
) -> tuple[str, dict[str, Any]] | str | None:
    """Canonical form of a leaf-module call, "identity"/"flatten" markers, or None if unknown."""
    x = node.args[0] if node.args else next(iter(node.kwargs.values()))
    if isinstance(mod, _CONV_MODULES):
        if mod.padding_mode != "zeros":
            raise _Refuse(f"conv padding_mode={mod.padding_mode!r} is not supported")
        n = mod.weight.dim() - 2
        return _conv_from(x, attr("weight"), attr("bias"), mod.stride, mod.padding, mod.dilation,
                          mod.groups, n)
    if isinstance(mod, nn.Linear):
        return "linear", dict(input=x, weight=attr("weight"), bias=attr("bias"))
    if isinstance(mod, nn.Embedding):
        if mod.max_norm is not None:
            raise _Refuse("nn.Embedding with max_norm is not supported")
        return "embedding", dict(weight=attr("weight"), indices=x, padding_idx=mod.padding_idx)
    if isinstance(mod, nn.LayerNorm):
        return "layer_norm", dict(input=x, normalized_shape=list(mod.normalized_shape),
                                  weight=attr("weight"), bias=attr("bias"), eps=float(mod.eps))
    if isinstance(mod, nn.RMSNorm):
        return "rms_norm", dict(input=x, normalized_shape=list(mod.normalized_shape),
                                weight=attr("weight"),
                                eps=None if mod.eps is None else float(mod.eps))
    if isinstance(mod, nn.GroupNorm):
        return "group_norm", dict(input=x, num_groups=int(mod.num_groups), weight=attr("weight"),
                                  bias=attr("bias"), eps=float(mod.eps))
    if isinstance(mod, nn.Softmax):
        if mod.dim is None:
            raise _Refuse("nn.Softmax without an explicit dim is not supported")
        return "softmax", dict(input=x, dim=int(mod.dim), mask=None, causal=False)
    if isinstance(mod, _BN_MODULES):
        if mod.training or mod.running_mean is None:
            raise _Refuse("batch norm with batch statistics (training mode or "
                          "track_running_stats=False) is not supported")
        return "batch_norm", dict(input=x, weight=attr("weight"), bias=attr("bias"),
                                  running_mean=attr("running_mean"),
                                  running_var=attr("running_var"), eps=float(mod.eps))
    for cls, make in _ACT_MODULES.items():
        if type(mod) is cls:
            name, kw = make(mod)
            return name, dict(input=x, **kw)
    if isinstance(mod, _DROPOUT_MODULES):
        return "dropout", dict(input=x)
    if isinstance(mod, nn.Identity):
        return "identity"
    if isinstance(mod, (nn.Flatten, nn.Unflatten)):
        return "flatten"
    dims = _POOL_DIMS.get(type(mod))
    if dims is not None:
        if isinstance(mod, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
            if mod.return_indices:
                raise _Refuse("max pooling with return_indices=True is not supported")
            k = _tuple(mod.kernel_size, dims)
            return "max_pool", dict(
                input=x, kernel_size=k,
                stride=k if mod.stride is None else _tuple(mod.stride, dims),
                padding=_tuple(mod.padding, dims), dilation=_tuple(mod.dilation, dims),
                ceil_mode=bool(mod.ceil_mode))
        if isinstance(mod, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
            k = _tuple(mod.kernel_size, dims)
            return "avg_pool", dict(
                input=x, kernel_size=k,
                stride=k if mod.stride is None else _tuple(mod.stride, dims),
                padding=_tuple(mod.padding, dims), ceil_mode=bool(mod.ceil_mode),
                count_include_pad=bool(mod.count_include_pad),
                divisor_override=getattr(mod, "divisor_override", None))
        size = mod.output_size
        size = list(size) if isinstance(size, (list, tuple)) else [size] * dims
        return "adaptive_avg_pool", dict(input=x, output_size=size)
    return None


# ----------------------------------------------------------------------------- the pass


def _copy_graph(gm: fx.GraphModule) -> fx.Graph:
    graph = fx.Graph()
    out = graph.graph_copy(gm.graph, {})
    graph.output(out)
    graph._codegen = copy.deepcopy(gm.graph._codegen)
    return graph


def _tensor_operand_count(node: fx.Node) -> int:
    return sum(isinstance(a, fx.Node) for a in (*node.args, *node.kwargs.values()))


def canonicalize(gm: fx.GraphModule) -> fx.Graph:
    """Return a canonical copy of ``gm.graph`` (``gm`` itself is left unchanged).

    Parameters
    ----------
    gm
        A GraphModule from ``torch.export(...).module()`` or ``torch.fx.symbolic_trace``.

    Returns
    -------
    torch.fx.Graph
        A new graph whose nodes refer to attributes of ``gm`` and carry ``meta["lrpfx"]``.
    """
    graph = _copy_graph(gm)
    _fuse_rms_norms(graph, gm)
    _fuse_normalize(graph, gm)
    order = {n: i for i, n in enumerate(graph.nodes)}
    for node in list(graph.nodes):
        if node.op in ("placeholder", "output", "get_attr"):
            node.meta["lrpfx"] = NodeInfo(IO, node.op, _module_path(node))
            continue
        fused = node.meta.pop(_FUSED, None)
        if fused is not None:  # a pattern recognised by a fusion pre-pass
            node.meta["lrpfx"] = NodeInfo(CANONICAL, fused, _module_path(node),
                                          canonical=ops.OP_NAME[node.target])
            continue
        info = NodeInfo(UNKNOWN, spelling(node, gm), _module_path(node))
        node.meta["lrpfx"] = info
        try:
            _canonicalize_node(node, gm, graph, info, order)
        except _Refuse as e:
            info.kind, info.problem = UNKNOWN, str(e)
    graph.lint()
    return graph


# ----------------------------------------------------------------------------- fusion pre-passes
# RMS norm and L_p normalisation spelt out as several ops become one canonical op each.

_FUSED = "lrpfx_fused"  # meta key: source description of a node a fusion pre-pass built
_CASTS = frozenset({"to", "_to_copy", "type_as", "float", "double", "half", "bfloat16", "type"})


def _call_name(node: Any, gm: fx.GraphModule) -> str | None:
    if not isinstance(node, fx.Node) or node.op not in ("call_function", "call_method"):
        return None
    return _base_name(node, gm)


def _uncast(node: Any, gm: fx.GraphModule) -> Any:
    """``node`` with dtype/device conversions stripped (``x.to(float32)`` → ``x``)."""
    while _call_name(node, gm) in _CASTS and node.args and isinstance(node.args[0], fx.Node):
        node = node.args[0]
    return node


def _is_check(node: fx.Node) -> bool:
    """Export's metadata asserts (``_assert_tensor_metadata``): they read a tensor, use nothing."""
    name = getattr(node.target, "__name__", str(node.target))
    return node.op == "call_function" and "assert" in name and not node.users


def _only_user(node: fx.Node) -> fx.Node | None:
    """The one user of ``node`` (metadata asserts aside), or None."""
    users = [u for u in node.users if not _is_check(u)]
    return users[0] if len(users) == 1 else None


def _rms_statistic(stat: fx.Node, gm: fx.GraphModule) -> tuple[fx.Node, list[int], float] | None:
    """``mean(x², dims, keepdim=True) + eps`` (or ``x·x``, ``x.square()``; eps optional):
    (x, dims, eps), or None."""
    eps = 0.0
    if _call_name(stat, gm) == "add" and _only_user(stat) is not None:
        nodes = [a for a in stat.args if isinstance(a, fx.Node)]
        numbers = [a for a in stat.args if _is_number(a)]
        if len(nodes) != 1 or len(numbers) != 1 or stat.kwargs.get("alpha", 1) != 1:
            return None
        stat, eps = nodes[0], float(numbers[0])
    if _call_name(stat, gm) != "mean" or _only_user(stat) is None:
        return None
    a = _Args(stat)
    dims = a.get(1, "dim")
    dims = [dims] if isinstance(dims, int) else dims
    if not isinstance(dims, (list, tuple)) or not dims or not a.get(2, "keepdim", default=False) \
            or a.get(3, "dtype", default=None) is not None:
        return None
    square = a.get(0, "input", "self")
    if not isinstance(square, fx.Node) or _only_user(square) is None:
        return None
    sq = _call_name(square, gm)
    sq_args = _Args(square)
    if sq == "pow" and sq_args.get(1, "exponent") == 2:
        x = sq_args.get(0, "input", "self")
    elif sq == "square":
        x = sq_args.get(0, "input", "self")
    elif sq == "mul" and len(square.args) == 2 and square.args[0] is square.args[1]:
        x = square.args[0]
    else:
        return None
    return (x, [int(d) for d in dims], eps) if isinstance(x, fx.Node) else None


def _normalized_shape(x: fx.Node, dims: list[int], weight_shape: Any) -> list[int] | None:
    """The sizes of the trailing dims ``dims`` reduces over (None if they are not trailing)."""
    val = x.meta.get("val")
    rank = val.dim() if hasattr(val, "dim") else None
    if rank is not None:
        dims = [d - rank if d >= 0 else d for d in dims]
    k = len(dims)
    if sorted(dims) != list(range(-k, 0)):
        return None
    if rank is not None:
        sizes = list(val.shape[rank - k:])
        return [int(v) for v in sizes] if all(isinstance(v, int) for v in sizes) else None
    if weight_shape is not None and len(weight_shape) == k:
        return [int(v) for v in weight_shape]
    return [-1] * k  # a traced graph carries no shapes; only the number of dims matters


def _fuse_rms_norms(graph: fx.Graph, gm: fx.GraphModule) -> None:
    """Rewrite RMS norms spelt out as ``x · rsqrt(mean(x², -1) + eps)`` (or ``x / sqrt(...)``),
    optionally followed by a dtype cast and ``· weight`` with a constant weight (Hugging Face's
    LLaMA/Qwen2/T5 norms), into one ``rms_norm`` node: one op, one rule, like ``F.rms_norm``."""
    dynamic: set[fx.Node] = set()
    for node in graph.nodes:
        if node.op == "placeholder" or any(a in dynamic for a in node.all_input_nodes):
            dynamic.add(node)
    for root in list(graph.nodes):
        name = _call_name(root, gm)
        if name not in ("rsqrt", "sqrt") or not root.args or not isinstance(root.args[0],
                                                                            fx.Node):
            continue
        user = _only_user(root)
        user_name = _call_name(user, gm)
        if name == "rsqrt" and user_name == "mul" and len(user.args) == 2:
            others = [a for a in user.args if a is not root]
        elif name == "sqrt" and user_name in ("div", "truediv") and len(user.args) == 2 \
                and user.args[1] is root and user.kwargs.get("rounding_mode") is None:
            others = [user.args[0]]
        else:
            continue
        stat = root.args[0]
        if _only_user(stat) is not root or len(others) != 1 or not isinstance(others[0], fx.Node) \
                or _is_inplace(user):
            continue
        found = _rms_statistic(stat, gm)
        if found is None:
            continue
        x, dims, eps = found
        if _uncast(x, gm) is not _uncast(others[0], gm):
            continue
        x = others[0]
        # an optional cast, then `weight * normed` with a constant weight of the same shape
        end, weight = user, None
        nxt = _only_user(end)
        while nxt is not None and _call_name(nxt, gm) in _CASTS and nxt.args[0] is end:
            end, nxt = nxt, _only_user(nxt)
        w_shape = None
        if _call_name(nxt, gm) == "mul" and len(nxt.args) == 2 and not nxt.kwargs \
                and not _is_inplace(nxt):
            w = nxt.args[0] if nxt.args[1] is end else nxt.args[1]
            w_val, out_val = getattr(w, "meta", {}).get("val"), nxt.meta.get("val")
            x_val = x.meta.get("val")
            if isinstance(w, fx.Node) and w not in dynamic:
                if w_val is not None and out_val is not None and x_val is not None:
                    if tuple(out_val.shape) == tuple(x_val.shape):
                        weight, w_shape = w, tuple(w_val.shape)
                elif w.op == "get_attr":
                    t = gm
                    for part in str(w.target).split("."):
                        t = getattr(t, part)
                    weight, w_shape = w, tuple(t.shape)
        if weight is None:
            end = user  # casts without a weight stay as they are
        else:
            end = nxt
        shape = _normalized_shape(x, dims, w_shape)
        if shape is None:
            continue
        with graph.inserting_before(end):
            fused = graph.call_function(ops.rms_norm, (), dict(
                input=x, normalized_shape=shape, weight=weight, eps=eps))
        fused.meta = {k: v for k, v in end.meta.items()}
        fused.meta[_FUSED] = (f"{spelling(root, gm)} (RMS norm: mean of squares, {name}, "
                              f"{'mul' if name == 'rsqrt' else 'div'}"
                              f"{', mul by weight' if weight is not None else ''})")
        end.replace_all_uses_with(fused)
        pattern, frontier = {user, root}, [end]
        while frontier:  # the casts and the weight product after the norm
            n = frontier.pop()
            if n not in pattern:
                pattern.add(n)
                frontier += [a for a in n.all_input_nodes if a is not weight]
                frontier = [a for a in frontier if a not in pattern and (
                    a is user or _call_name(a, gm) in _CASTS)]
        frontier = [stat]  # the statistic: add eps, mean, square (up to x)
        while frontier:
            n = frontier.pop()
            if n in pattern or _uncast(n, gm) is _uncast(x, gm):
                continue
            pattern.add(n)
            frontier += n.all_input_nodes
        changed = True
        while changed:
            changed = False
            for dead in list(pattern):
                if all(_is_check(u) for u in dead.users):
                    for check in list(dead.users):
                        graph.erase_node(check)
                if not dead.users:
                    graph.erase_node(dead)
                    pattern.discard(dead)
                    changed = True


_NORMS = frozenset({"linalg_vector_norm", "vector_norm", "norm"})


def _vector_norm(node: Any, gm: fx.GraphModule) -> tuple[fx.Node, float, list[int]] | None:
    """``‖x‖_p`` over ``dim`` with ``keepdim=True`` (``aten.linalg_vector_norm``, ``x.norm``,
    ``torch.norm``, ``torch.linalg.vector_norm``): (x, p, dim), or None."""
    name = _call_name(node, gm)
    if name not in _NORMS or _only_user(node) is None:
        return None
    a = _Args(node)
    if name == "norm":  # Tensor.norm / torch.norm(input, p='fro', dim, keepdim, dtype)
        p = a.get(1, "p", default="fro")
        p = 2.0 if p == "fro" else p
    else:  # linalg_vector_norm(input, ord=2, dim, keepdim, dtype)
        p = a.get(1, "ord", default=2.0)
    dim = a.get(2, "dim")
    dim = [dim] if isinstance(dim, int) else dim
    if not _is_number(p) or not isinstance(dim, (list, tuple)) or not dim \
            or not a.get(3, "keepdim", default=False) or a.get(4, "dtype") is not None:
        return None
    x = a.get(0, "input", "self")
    return (x, float(p), [int(d) for d in dim]) if isinstance(x, fx.Node) else None


def _fuse_normalize(graph: fx.Graph, gm: fx.GraphModule) -> None:
    """Rewrite ``x / norm(x).clamp_min(eps).expand_as(x)`` (``F.normalize`` as export spells
    it, Swin V2's cosine attention) and ``x / x.norm(dim, keepdim=True)`` into one
    ``normalize`` node."""
    for div in list(graph.nodes):
        if _call_name(div, gm) not in ("div", "truediv") or len(div.args) != 2 \
                or div.kwargs.get("rounding_mode") is not None or _is_inplace(div):
            continue
        x, denom = div.args
        if not isinstance(x, fx.Node) or not isinstance(denom, fx.Node):
            continue
        pattern, n, eps = [], denom, None
        while _call_name(n, gm) in ("expand", "expand_as") and _only_user(n) is not None:
            pattern.append(n)
            n = n.args[0]
        if _call_name(n, gm) in ("clamp_min", "clamp") and _only_user(n) is not None:
            a = _Args(n)
            eps = a.get(1, "min")
            if not _is_number(eps) or a.get(2, "max") is not None:
                continue
            pattern.append(n)
            n, eps = n.args[0], float(eps)
        found = _vector_norm(n, gm)
        if found is None or _uncast(found[0], gm) is not _uncast(x, gm):
            continue
        pattern.append(n)
        _, p, dim = found
        with graph.inserting_before(div):
            fused = graph.call_function(ops.normalize, (), dict(input=x, p=p, dim=dim, eps=eps))
        fused.meta = dict(div.meta)
        fused.meta[_FUSED] = (f"{spelling(div, gm)} (L{p:g} normalisation: {spelling(n, gm)}"
                              f"{', clamp_min' if eps is not None else ''}, div)")
        div.replace_all_uses_with(fused)
        for dead in [div, *pattern]:
            if all(_is_check(u) for u in dead.users):
                for check in list(dead.users):
                    graph.erase_node(check)
                graph.erase_node(dead)


def _canonicalize_node(
    node: fx.Node, gm: fx.GraphModule, graph: fx.Graph, info: NodeInfo, order: dict
) -> None:
    name = _base_name(node, gm)
    operands = node.all_input_nodes
    if operands and node.op != "call_module" and all(
            a.meta["lrpfx"].kind == SHAPE for a in operands):
        info.kind = SHAPE  # arithmetic on sizes (`b, c, l = x.shape; c * l`)
        return

    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        if node.target == "_guards_fn" or name == "_GuardsFn":
            info.kind = SHAPE
            return

        def attr(key: str) -> fx.Node | None:
            if getattr(mod, key, None) is None:
                return None
            with graph.inserting_before(node):
                got = graph.get_attr(f"{node.target}.{key}")
            got.meta["lrpfx"] = NodeInfo(IO, "get_attr", str(node.target))
            return got

        result = _module_extract(mod, node, attr)
        if result == "identity":
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
            return
        if result == "flatten":
            info.kind = PASSTHROUGH
            return
        if result is None:
            return
        _set_canonical(node, info, *result)
        return

    if node.op == "call_function" and node.target is getattr:
        info.kind = SHAPE if node.args[1] in ("shape", "dtype", "device", "ndim") else UNKNOWN
        return
    if name in _IDENTITY_FUNCTIONS and not _Args(node).get(3, "training", default=False):
        node.replace_all_uses_with(node.args[0])
        graph.erase_node(node)
        return
    if name in _SHAPE_NAMES:
        info.kind = SHAPE
        return
    if name in _SCALE_NAMES and _is_scalar_scale(node):
        info.kind = PASSTHROUGH
        return
    if name in ("div", "truediv") and len(node.args) >= 2 and isinstance(node.args[0], fx.Node) \
            and isinstance(node.args[1], fx.Node) and node.args[1].meta["lrpfx"].kind == SHAPE:
        info.kind = PASSTHROUGH  # division by a size (`x / (h * w)`): a scaling by a number
        return
    if name == "pad" or name == "constant_pad_nd":
        value = _Args(node).get(3 if name == "pad" else 2, "value", default=0)
        mode = _Args(node).get(2, "mode", default="constant") if name == "pad" else "constant"
        if mode == "constant" and not value:
            info.kind = PASSTHROUGH
        return
    if name in PASSTHROUGH_NAMES:
        info.kind = PASSTHROUGH
        return
    if name == "rsub":
        a = _Args(node)
        alpha = a.get(2, "alpha", default=1)
        if alpha != 1:
            raise _Refuse(f"rsub with alpha={alpha} is not supported")
        _set_canonical(node, info, "sub", dict(input=a.get(1, "other"), other=a.get(0, "self")))
        _make_out_of_place(node, order, info)
        return
    if name == "addmm":  # bias + x @ w (GPT-2's Conv1D): a linear layer with weight wᵀ
        a = _Args(node)
        if a.get(3, "beta", default=1) != 1 or a.get(4, "alpha", default=1) != 1:
            raise _Refuse("addmm with beta/alpha other than 1 is not supported")
        with graph.inserting_before(node):
            w_t = graph.call_function(torch.t, (a.get(2, "mat2"),))
        w_t.meta["lrpfx"] = NodeInfo(PASSTHROUGH, "addmm weight (transposed)", info.module_path)
        _set_canonical(node, info, "linear", dict(input=a.get(1, "mat1"), weight=w_t,
                                                  bias=a.get(0, "input", "self")))
        return
    if name == "einsum":
        a = _Args(node)
        equation = a.get(0, "equation")
        operands = a.get(1, "tensors") if node.op != "call_method" else None
        if not isinstance(operands, (list, tuple)):
            operands = list(node.args[1:])
        if not isinstance(equation, str) or len(operands) != 2:
            raise _Refuse("einsum is supported with exactly two operands")
        _set_canonical(node, info, "einsum", dict(equation=equation, input=operands[0],
                                                  other=operands[1]))
        return
    if name == "pow":
        a = _Args(node)
        exponent = a.get(1, "exponent")
        if not _is_number(exponent) or not isinstance(a.get(0, "input", "self"), fx.Node):
            return  # tensor exponents, number ** tensor: not supported
        _set_canonical(node, info, "pow", dict(input=a.get(0, "input", "self"),
                                               exponent=exponent))
        return
    if name == "embedding":
        extract = _embedding_aten if isinstance(node.target, torch._ops.OpOverload) \
            else _embedding_fn
        _set_canonical(node, info, *extract(_Args(node)))
        return
    if name == "batch_norm":
        extract = _batch_norm_fn if node.op == "call_function" and not isinstance(
            node.target, torch._ops.OpOverload) else _batch_norm_aten
        _set_canonical(node, info, *extract(_Args(node)))
        return
    if name == "scaled_dot_product_attention":
        _decompose_sdpa(node, graph, info)
        return
    extract = _FUNCTION_EXTRACT.get(name)
    if extract is None:
        return
    if name in ("mul", "add", "sub", "div", "truediv") and _tensor_operand_count(node) == 0:
        return  # arithmetic on Python numbers only (sizes): leave as is
    canon, kwargs = extract(_Args(node))
    if _is_inplace(node):
        _make_out_of_place(node, order, info)
    _set_canonical(node, info, canon, kwargs)


def _decompose_sdpa(node: fx.Node, graph: fx.Graph, info: NodeInfo) -> None:
    """``scaled_dot_product_attention`` → scale, ``q @ kᵀ``, masked softmax, ``@ v``, so the
    matmul and softmax rules apply (DESIGN.md §2, canonicalize)."""
    a = _Args(node)
    q, k, v = a.get(0, "query"), a.get(1, "key"), a.get(2, "value")
    mask = a.get(3, "attn_mask")
    if a.get(4, "dropout_p", default=0.0):
        raise _Refuse("attention dropout_p > 0 (training mode) is not supported")
    if a.get(7, "enable_gqa", default=False):
        raise _Refuse("scaled_dot_product_attention with enable_gqa=True is not supported yet")
    causal = bool(a.get(5, "is_causal", default=False))
    scale = a.get(6, "scale", default=None)
    source = f"{info.source_op} (decomposed)"

    def add(target, kwargs, kind, canon=None):
        with graph.inserting_before(node):
            new = graph.call_function(target, (), kwargs) if isinstance(kwargs, dict) \
                else graph.call_function(target, kwargs)
        new.meta = {k: v for k, v in node.meta.items() if k != "val"}
        new.meta["lrpfx"] = NodeInfo(kind, source, info.module_path, canonical=canon)
        return new

    q_s = add(ops.scale_by, dict(input=q, factor=scale), PASSTHROUGH)
    k_t = add(torch.transpose, (k, -2, -1), PASSTHROUGH)
    scores = add(ops.matmul, dict(input=q_s, other=k_t), CANONICAL, "matmul")
    probs = add(ops.softmax, dict(input=scores, dim=-1, mask=mask, causal=causal), CANONICAL,
                "softmax")
    out = add(ops.matmul, dict(input=probs, other=v), CANONICAL, "matmul")
    node.replace_all_uses_with(out)
    graph.erase_node(node)


def _is_scalar_scale(node: fx.Node) -> bool:
    """``x * 2.0``, ``x / 3``, ``-x``: one tensor operand, the rest Python numbers."""
    operands = [*node.args, *node.kwargs.values()]
    tensors = [a for a in operands if isinstance(a, fx.Node)]
    numbers = [a for a in operands if _is_number(a)]
    name = getattr(node.target, "__name__", str(node.target))
    if "neg" in name:
        return len(tensors) == 1
    if len(tensors) != 1 or len(numbers) < 1:
        return False
    # `2.0 / x` is not a scaling of x
    if "div" in name and node.args and not isinstance(node.args[0], fx.Node):
        return False
    return True


def _make_out_of_place(node: fx.Node, order: dict, info: NodeInfo) -> None:
    mutated = node.args[0] if node.args else None
    if isinstance(mutated, fx.Node):
        later = [u for u in mutated.users if u is not node and order.get(u, -1) > order[node]]
        if later:
            raise _Refuse(
                f"in-place {info.source_op} mutates {mutated.name}, which "
                f"{', '.join(u.name for u in later)} read(s) afterwards")


def _set_canonical(node: fx.Node, info: NodeInfo, canon: str, kwargs: dict[str, Any]) -> None:
    node.op = "call_function"
    node.target = ops.CANONICAL_OPS[canon]
    node.args = ()
    node.kwargs = kwargs
    info.kind = CANONICAL
    info.canonical = canon


__all__ = [
    "CANONICAL", "IO", "PASSTHROUGH", "SHAPE", "UNKNOWN", "NodeInfo", "canonicalize", "spelling",
    "PASSTHROUGH_NAMES",
]
