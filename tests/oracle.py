"""A slow float64 oracle for absLRP, written straight from DESIGN.md §4.1/§4.2.

Nothing here imports lrpfx. For every compute op ``y = f(x; θ)``::

    h   = f(x; θ),   ha = f(|x|; |θ|)          (|θ| built here, explicitly)
    s   = R_y / (|h| + 1e-9)                    (s = R_y for max pooling by default)
    R_x = x ⊙ VJP_x(h + ha; s)                  (explicit torch.autograd.grad)
    R_x ← R_x / (Σ|R_x| + 1e-9)                 (per example, per input)

Data-movement ops pass relevance through unchanged; the model output is seeded with the one-hot
target, and the map at the model input is returned unit-L1 per example.

:func:`sequential_relevance` chains the rule by hand, layer by layer, through an
``nn.Sequential`` of the layer types below; tests with branches chain :func:`abs_rule` themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

EPS = 1e-9

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


SMALLEST_MASS = [float("inf")]
"""Smallest Σ|r| any :func:`unit_l1` has normalised since the last reset. Far below 1 means the
relevance nearly cancelled and the normalisation blew rounding noise up to unit size: the map
is then noise, and such cases are skipped (lrpfx skips normalisations that cancel, so its
noise differs)."""


def unit_l1(r: Tensor) -> Tensor:
    """``r / (Σ|r| + 1e-9)`` per example (sum over every dimension but the first)."""
    total = r.abs().reshape(r.shape[0], -1).sum(1).reshape(-1, *[1] * (r.dim() - 1))
    nonzero = total[total > 0]  # exactly zero relevance is exact, not noise
    if nonzero.numel():
        SMALLEST_MASS[0] = min(SMALLEST_MASS[0], float(nonzero.min()))
    return r / (total + EPS)


def _abs(p: Tensor | None) -> Tensor | None:
    return None if p is None else p.detach().abs()


def abs_rule(
    f: Callable[..., Tensor],
    inputs: Sequence[Tensor],
    r_out: Tensor,
    params: Sequence[Tensor | None] = (),
    *,
    divide: bool = True,
) -> list[Tensor]:
    """absLRP for ``y = f(*inputs, *params)``: the normalised relevance of each input.

    ``params`` are the op's constants θ (weights, biases, a parameter operand): they enter ``ha``
    as ``|θ|`` and receive no relevance. Static settings (stride, ...) are closed over in ``f``.
    """
    with torch.enable_grad():
        xs = [x.detach().clone().requires_grad_(True) for x in inputs]
        ps = [None if p is None else p.detach() for p in params]
        h = f(*xs, *ps)
        ha = f(*[x.abs() for x in xs], *[_abs(p) for p in ps])
        s = r_out / (h.detach().abs() + EPS) if divide else r_out
        grads = torch.autograd.grad(h + ha, xs, s)
    return [unit_l1(x.detach() * g) for x, g in zip(inputs, grads)]


def one_hot_seed(out: Tensor, target: Tensor) -> Tensor:
    """The positive seed: R_out = one-hot target."""
    return F.one_hot(target, out.shape[1]).to(out.dtype)


# ----------------------------------------------------------------------------- per-op rules


def linear(x: Tensor, weight: Tensor, bias: Tensor | None, r: Tensor) -> Tensor:
    return abs_rule(lambda x, w, b: F.linear(x, w, b), [x], r, [weight, bias])[0]


def conv(x: Tensor, weight: Tensor, bias: Tensor | None, r: Tensor, stride: Sequence[int],
         padding: Sequence[int], dilation: Sequence[int], groups: int) -> Tensor:
    fn = _CONV[weight.dim() - 2]
    return abs_rule(lambda x, w, b: fn(x, w, b, stride, padding, dilation, groups),
                    [x], r, [weight, bias])[0]


def conv_transpose(x: Tensor, weight: Tensor, bias: Tensor | None, r: Tensor,
                   stride: Sequence[int], padding: Sequence[int], output_padding: Sequence[int],
                   groups: int, dilation: Sequence[int]) -> Tensor:
    fn = _CONV_T[weight.dim() - 2]
    return abs_rule(lambda x, w, b: fn(x, w, b, stride, padding, output_padding, groups,
                                       dilation), [x], r, [weight, bias])[0]


def bn_affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor]:
    """Eval batch norm as ``x · w + c`` per channel: ``w = γ/√(var+eps)``, ``c = β − μ w``."""
    var, mean = bn.running_var.detach(), bn.running_mean.detach()
    w = 1 / torch.sqrt(var + bn.eps)
    if bn.weight is not None:
        w = bn.weight.detach() * w
    c = -mean * w
    if bn.bias is not None:
        c = c + bn.bias.detach()
    return w, c


def batch_norm(x: Tensor, bn: nn.modules.batchnorm._BatchNorm, r: Tensor) -> Tensor:
    w, c = bn_affine(bn)
    shape = (1, -1, *[1] * (x.dim() - 2))
    return abs_rule(lambda x, w, c: x * w.reshape(shape) + c.reshape(shape), [x], r, [w, c])[0]


def elementwise(fn: Callable[[Tensor], Tensor], x: Tensor, r: Tensor,
                divide: bool = True) -> Tensor:
    """A parameter-free op (activation, pooling, mean, identity): ``ha = f(|x|)``."""
    return abs_rule(fn, [x], r, divide=divide)[0]


def binary(op: Callable[[Tensor, Tensor], Tensor], a: Tensor, b: Tensor, r: Tensor,
           relevant: tuple[bool, bool] = (True, True)) -> list[Tensor | None]:
    """``y = op(a, b)``; an operand that is not relevant is a constant θ (``|θ|`` in ``ha``)."""
    if all(relevant):
        return abs_rule(op, [a, b], r)
    if relevant[0]:
        return [abs_rule(lambda a, b: op(a, b), [a], r, [b])[0], None]
    return [None, abs_rule(lambda b, a: op(a, b), [b], r, [a])[0]]


# ----------------------------------------------------------------------------- sequential chains


def _identity(x: Tensor) -> Tensor:
    return x


def _forward_and_rule(layer: nn.Module, max_pool_divide: bool):
    """(forward f(x), rule(x, R_y) -> R_x) for one layer, from its type and attributes."""
    if isinstance(layer, nn.Linear):
        return (lambda x: F.linear(x, layer.weight, layer.bias),
                lambda x, r: linear(x, layer.weight, layer.bias, r))
    if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        assert layer.padding_mode == "zeros" and not isinstance(layer.padding, str)
        settings = (layer.stride, layer.padding, layer.dilation, layer.groups)
        fn = _CONV[layer.weight.dim() - 2]
        return (lambda x: fn(x, layer.weight, layer.bias, *settings),
                lambda x, r: conv(x, layer.weight, layer.bias, r, *settings))
    if isinstance(layer, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        assert layer.padding_mode == "zeros"
        settings_t = (layer.stride, layer.padding, layer.output_padding, layer.groups,
                      layer.dilation)
        fn_t = _CONV_T[layer.weight.dim() - 2]
        return (lambda x: fn_t(x, layer.weight, layer.bias, *settings_t),
                lambda x, r: conv_transpose(x, layer.weight, layer.bias, r, *settings_t))
    if isinstance(layer, nn.modules.batchnorm._BatchNorm):
        assert not layer.training

        def bn_forward(x: Tensor) -> Tensor:
            w, c = bn_affine(layer)
            shape = (1, -1, *[1] * (x.dim() - 2))
            return x * w.reshape(shape) + c.reshape(shape)

        return bn_forward, lambda x, r: batch_norm(x, layer, r)
    if isinstance(layer, (nn.Flatten, nn.Identity)):  # data movement: R unchanged
        return layer, lambda x, r: r.reshape(x.shape)
    if isinstance(layer, nn.modules.dropout._DropoutNd):
        assert not layer.training
        return _identity, lambda x, r: elementwise(_identity, x, r)
    if isinstance(layer, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
        return layer, lambda x, r: elementwise(layer, x, r, divide=max_pool_divide)
    if isinstance(layer, (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh,
                          nn.Hardswish, nn.Hardsigmoid, nn.AvgPool1d, nn.AvgPool2d,
                          nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                          nn.AdaptiveAvgPool3d)) or getattr(layer, "oracle_compute", False):
        # parameter-free compute ops (``oracle_compute``: test-defined wrappers like mean;
        # ``oracle_divide=False``: s = R_y, winner-takes-all ops like max pooling)
        assert not list(layer.parameters())
        divide = getattr(layer, "oracle_divide", True)
        return layer, lambda x, r: elementwise(layer, x, r, divide=divide)
    raise NotImplementedError(f"no oracle for {type(layer).__name__}")


def sequential_relevance(
    model: nn.Sequential, x: Tensor, target: Tensor, *, max_pool_divide: bool = False,
    seed: Tensor | None = None,
) -> Tensor:
    """The positive absLRP map of ``model`` at ``x``, chained by hand layer by layer (``seed``
    replaces the one-hot target as the output relevance, e.g. for the negative map)."""
    steps = [_forward_and_rule(layer, max_pool_divide) for layer in model]
    acts = [x.detach()]
    with torch.no_grad():
        for forward, _ in steps:
            acts.append(forward(acts[-1]))
        expected = model(x)
    out = acts[-1]
    assert torch.allclose(out, expected, rtol=1e-10, atol=1e-12), "oracle forward differs"
    r = one_hot_seed(out, target) if seed is None else seed
    for (_, rule), a in zip(reversed(steps), reversed(acts[:-1])):
        r = rule(a, r)
    return unit_l1(r)
