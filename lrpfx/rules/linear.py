"""Ops linear in their input with a constant weight: convolution, transposed convolution,
linear (dense), batch norm.

absLRP (DESIGN.md §4.1): with ``T_W`` the transposed op (the input-VJP of the op with weight W),

    VJP_x(h + ha; s) = T_W(s) + sign(x) ⊙ T_|W|(s)          (general x)
                     = 2 T_{W⁺}(s)                          (x ≥ 0 known from the graph)

so ``R_x = x ⊙ (Wᵀs + sign(x) ⊙ |W|ᵀs)``, Eq. 12 of the paper up to a factor 2 that the
normalisation removes. Biases and batch-norm shifts do not enter the VJP. |W| or W⁺ (whichever
the graph needs) is computed once, at compile time. A transposed convolution's ``T_W`` is the
convolution with the same weight, stride, padding, dilation and groups (its adjoint), so its
rule is the same formula with the roles swapped (1-D, 2-D and 3-D alike). Batch norm in eval
mode is the affine map ``x · γ/√(σ²+ε) + const`` per channel.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor

from lrpfx.core import ops
from lrpfx.rules.abslrp import ABSLRP, AbsLRPFunction, stabilised_ratio
from lrpfx.rules.base import PlainVJP, RuleCall, RuleSpec

Transpose = Callable[[RuleCall, Tensor, Tensor, Tensor], Tensor]
Both = Callable[[RuleCall, Tensor, Tensor], tuple[Tensor, Tensor]]


def _conv_transpose(call: RuleCall, x: Tensor, s: Tensor, weight: Tensor) -> Tensor:
    # x only gives the input's shape (its values are never read for the input gradient): an
    # uninitialised tensor does, at no memory cost while the graph waits for its backward
    st = call.static
    n = len(st["stride"])
    if _strided_pointwise(call, weight):
        return _pointwise_transpose(call, x, s, weight)
    if _pointwise(call, weight) and s.dim() == weight.dim():
        # a 1×1 convolution's transpose is Wᵀ s per example: one batched matrix product, which
        # on CPU (1 thread) took 10-25 % less time than convolution_backward's slow_conv2d
        # path at EfficientNet-Lite0's expansion and projection shapes, [W, |W|] included
        out_channels = weight.shape[0]
        t = torch.matmul(weight.reshape(out_channels, -1).t(),
                         s.reshape(s.shape[0], out_channels, -1))
        return t.reshape(x.shape)
    return torch.ops.aten.convolution_backward(
        s, x.new_empty(x.shape), weight, None, st["stride"], st["padding"], st["dilation"],
        False, [0] * n, st["groups"], [True, False, False],
    )[0]


def _strided_pointwise(call: RuleCall, weight: Tensor) -> bool:
    """A strided 1×1 convolution without padding (ResNet's downsampling shortcut)."""
    st = call.static
    return all(k == 1 for k in weight.shape[2:]) and not any(st["padding"]) \
        and any(k > 1 for k in st["stride"])


def _pointwise(call: RuleCall, weight: Tensor) -> bool:
    """An unstrided, unpadded 1×1 convolution without groups: a matrix product per position."""
    st = call.static
    return all(k == 1 for k in weight.shape[2:]) and not any(st["padding"]) \
        and all(k == 1 for k in st["stride"]) and st["groups"] == 1


def _pointwise_transpose(call: RuleCall, x: Tensor, s: Tensor, weight: Tensor) -> Tensor:
    """The transpose of a strided 1×1 convolution: it reads every k-th input position, so its
    transpose is the unstrided 1×1 transpose scattered back to those positions, zeros between.
    The same numbers as ``convolution_backward``; on CPU oneDNN's strided kernel takes 1.5–4×
    as long for ResNet-50's shortcuts (``bench/strided_pointwise.py``)."""
    st = call.static
    n = len(st["stride"])
    dense = torch.ops.aten.convolution(s, weight, None, [1] * n, [0] * n, [1] * n, True,
                                       [0] * n, st["groups"])
    out = s.new_zeros(x.shape)
    index: tuple[Any, ...] = (..., *(slice(None, None, k) for k in st["stride"]))
    out[index] = dense
    return out


def _shape_of(x: Tensor, shape: tuple[int, ...] | None = None) -> Tensor:
    """A stand-in for ``x`` (or a tensor of ``shape`` like it): its shape, dtype and device, no
    data."""
    return x.new_empty(()).expand(x.shape if shape is None else shape)


def _conv_both(call: RuleCall, x: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    # T_W(s) and T_|W|(s) as one transposed convolution with weight [W, |W|] along the input
    # channels (about the cost of one: the first layers' few input channels leave the kernel
    # idle)
    if "cat_weight" not in call.derived_names:
        return (_conv_transpose(call, x, s, _weight(call)),
                _conv_transpose(call, x, s, call.derived("abs_weight")))
    shape = (x.shape[0], 2 * x.shape[1], *x.shape[2:])
    both = _conv_transpose(call, _shape_of(x, shape), s, call.derived("cat_weight"))
    return both.split(x.shape[1], dim=1)


def _deconv_transpose(call: RuleCall, x: Tensor, s: Tensor, weight: Tensor) -> Tensor:
    """``T_W(s)`` of a transposed convolution: the convolution it is the adjoint of, cropped to
    the input's size (with ``output_padding`` ≥ stride, possible under dilation, that
    convolution has trailing outputs no input position maps to)."""
    st = call.static
    t = ops.conv(s, weight, None, st["stride"], st["padding"], st["dilation"], st["groups"])
    if t.shape[2:] != x.shape[2:]:
        index: tuple[Any, ...] = (..., *(slice(0, n) for n in x.shape[2:]))
        t = t[index]
    return t


def _deconv_both(call: RuleCall, x: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    return (_deconv_transpose(call, x, s, _weight(call)),
            _deconv_transpose(call, x, s, call.derived("abs_weight")))


def _linear_transpose(call: RuleCall, x: Tensor, s: Tensor, weight: Tensor) -> Tensor:
    return s @ weight


def _linear_both(call: RuleCall, x: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    # one matrix product with [W, |W|] instead of two
    n = call.derived("cat_weight").shape[-1] // 2
    return (s @ call.derived("cat_weight")).split(n, dim=-1)


def _weight(call: RuleCall) -> Tensor:
    w = call.constant("weight")
    assert w is not None  # affine ops always have a weight
    return w


def _bn_scale(call: RuleCall) -> Tensor:
    """Batch norm's per-channel scale ``γ/√(σ²+ε)`` (derived at compile time where the spec
    asks for it)."""
    if "bn_scale" in call.derived_names:
        return call.derived("bn_scale")
    var = call.constant("running_var")
    scale = torch.rsqrt(var + call.static["eps"])
    weight = call.constant("weight")
    return scale if weight is None else weight * scale


def _linear_family(op: str, transpose: Transpose, both: Both,
                   concatenable: Callable[[RuleCall], bool]) -> None:
    def derive(call: RuleCall) -> dict[str, Tensor]:
        w = _weight(call)
        if "input" in call.nonneg:
            return {"pos_weight": w.clamp(min=0)}
        if concatenable(call):
            return {"cat_weight": torch.cat([w, w.abs()], dim=1)}
        return {"abs_weight": w.abs()}

    def prepare(call: RuleCall, inputs: dict[str, Tensor], out: Tensor) -> dict[str, Tensor]:
        # the transposed convolution reads its input's shape only; sign(x) once, not per pass
        x = inputs["input"]
        kept = {"input": _shape_of(x)} if op in ("conv", "conv_transpose") else {}
        if "input" not in call.nonneg:  # exact in int8, a quarter of the memory
            kept["sign"] = torch.sign(x).to(torch.int8)
        return kept

    def vjp(call: RuleCall, inputs: dict[str, Tensor], s: Tensor, out: Tensor
            ) -> dict[str, Tensor]:
        # the input (conv: a stand-in of its shape); linear keeps none, its transpose needs none
        x = cast(Tensor, inputs.get("input"))
        if "input" in call.nonneg:  # 2 W⁺ᵀ s, the constant 2 dropped
            return {"input": transpose(call, x, s, call.derived("pos_weight"))}
        plain, absolute = both(call, x, s)
        return {"input": torch.addcmul(plain, inputs["sign"], absolute)}

    plain = PlainVJP((), lambda call, values, g: {"input": g @ _weight(call)}) \
        if op == "linear" else None
    ABSLRP.register(RuleSpec(op, AbsLRPFunction, vjp, derive=derive, prepare=prepare,
                             plain_vjp=plain))


def _bn_diag(call: RuleCall, inputs: dict[str, Tensor], out: Tensor) -> dict[str, Tensor]:
    # (a + sign(x)|a|) ⊙ s, s = G ⊙ y/(|y|+ε): 2 a [x a > 0] y/(|y|+ε) G
    x = inputs["input"]
    a = _bn_scale(call).reshape(1, -1, *[1] * (x.dim() - 2))
    keep = torch.sign(x).mul_(torch.sign(a)).clamp_(min=0)  # [x a > 0]
    return {"input": stabilised_ratio(out).mul_(a).mul_(keep)}


def _bn_through(call: RuleCall, x: Tensor, y: Tensor, factor) -> None:  # noqa: ANN001
    # F ⊙ a [x a > 0] ⊙ ratio(y): with F = ratio(x) Q, Q ≥ 0 ("aligned") the mask is a clamp,
    # (F ⊙ a)⁺, and ratio(y) is left pending for a following ReLU
    if not factor.aligned:
        factor.multiply(_bn_diag(call, {"input": x}, y)["input"])
        return
    a = _bn_scale(call).reshape(1, -1, *[1] * (x.dim() - 2))
    factor.materialize().mul_(a).clamp_(min=0)
    factor.pending = y


_linear_family("conv", _conv_transpose, _conv_both, lambda call: call.static["groups"] == 1)
_linear_family("conv_transpose", _deconv_transpose, _deconv_both, lambda call: False)
_linear_family("linear", _linear_transpose, _linear_both, lambda call: True)
ABSLRP.register(RuleSpec("batch_norm", AbsLRPFunction, None, diag=_bn_diag,
                         through=_bn_through, derive=lambda call: {"bn_scale": _bn_scale(call)}))
