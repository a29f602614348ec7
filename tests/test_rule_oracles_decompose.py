"""The rules behind long-tail ops (issue 17) against the float64 oracle of ``tests/oracle.py``:
transposed convolution (1-D, 2-D, 3-D), and the generic rules that ``lrpfx.passes.decompose``
assigns by probed property: ``positive_linear`` (upsampling, reflection padding,
``repeat_interleave``, ``cumsum``: ``ha = f(|x|)``), ``selection`` (``amax``: winner takes all,
``s = R_y``) and ``pointwise`` (``exp``, ``erf``, ...: ``ha = f(|x|)`` as for activations).

The oracle never touches lrpfx: for each op it takes ``autograd.grad(f(x) + f(|x|), x, s)`` of
the op itself, so it does not know which property lrpfx found. The compiled
``explain(x, target, contrastive=False)`` must match to float64 precision.
"""

from __future__ import annotations

from collections.abc import Callable

import oracle
import torch
import torch.nn.functional as F
from hypothesis import example, given
from hypothesis import strategies as st
from test_rule_oracles import DT, _assert_close, _explain, _inputs, _randomize, _settings
from torch import Tensor, nn

seeds = st.integers(0, 2**31 - 1)


class Op(nn.Module):
    """A parameter-free op the oracle rules as ``ha = f(|x|)`` (``oracle_divide=False``: with
    ``s = R_y``, as max pooling)."""

    oracle_compute = True

    def __init__(self, fn: Callable[[Tensor], Tensor], divide: bool = True) -> None:
        super().__init__()
        self.fn = fn
        self.oracle_divide = divide

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)


# name: (op, canonical op lrpfx must find for it, oracle divides by |h|)
OPS: dict[str, tuple[Callable[[Tensor], Tensor], str, bool]] = {
    "nearest": (lambda x: F.interpolate(x, scale_factor=2, mode="nearest"), "positive_linear",
                True),
    "bilinear": (lambda x: F.interpolate(x, scale_factor=2, mode="bilinear"), "positive_linear",
                 True),
    "bilinear_corners": (lambda x: F.interpolate(x, size=(5, 7), mode="bilinear",
                                                 align_corners=True), "positive_linear", True),
    "reflect_pad": (lambda x: F.pad(x, (1, 2, 2, 1), mode="reflect"), "positive_linear", True),
    "replicate_pad": (lambda x: F.pad(x, (0, 2, 1, 1), mode="replicate"), "positive_linear",
                      True),
    "repeat_interleave": (lambda x: x.repeat_interleave(2, dim=3), "positive_linear", True),
    "cumsum": (lambda x: torch.cumsum(x, 2), "positive_linear", True),
    "amax": (lambda x: x.amax(dim=2, keepdim=True), "selection", False),
    "exp": (lambda x: torch.exp(x), "pointwise", True),
    "erf": (lambda x: torch.erf(x), "pointwise", True),
}


@_settings(30)
@given(name=st.sampled_from(sorted(OPS)), seed=seeds, relu=st.booleans(),
       h=st.integers(3, 5), w=st.integers(3, 5))
def test_generic_rules_match_oracle(name, seed, relu, h, w):
    """conv → [ReLU] → op → linear head: the compiled map equals the oracle's; with ReLU the
    op's input is non-negative (the fast path of each rule)."""
    fn, canonical, divide = OPS[name]
    g = torch.Generator().manual_seed(seed)
    probe = fn(torch.zeros(1, 3, h, w, dtype=DT))
    layers = [nn.Conv2d(2, 3, 3, padding=1), *([nn.ReLU()] if relu else []), Op(fn, divide),
              nn.Flatten(), nn.Linear(probe.numel(), 4)]
    model = _randomize(nn.Sequential(*layers), g)
    x, target = _inputs(g, (2, 2, h, w), 4)
    got, e = _explain(model, x, target, "export")
    (node,) = [n for n in e.report.nodes if n.canonical == canonical]
    assert node.decomposition and "probed" in node.decomposition
    _assert_close(got, oracle.sequential_relevance(model, x, target))


_CONV_T = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


@_settings(25)
@example(n=1, seed=0, stride=1, padding=0, dilation=2, groups=1, extra=1, bias=False,
         frontend="export")  # output_padding ≥ stride: T_W(s) must be cropped
@given(n=st.sampled_from([1, 2, 3]), seed=seeds, stride=st.integers(1, 2),
       padding=st.integers(0, 1), dilation=st.integers(1, 2), groups=st.sampled_from([1, 2]),
       extra=st.integers(0, 1), bias=st.booleans(), frontend=st.sampled_from(
           ["export", "symbolic_trace"]))
def test_conv_transpose_matches_oracle(n, seed, stride, padding, dilation, groups, extra, bias,
                                       frontend):
    """ConvTranspose{1,2,3}d → ReLU → ConvTranspose (non-negative input: the W⁺ fast path) →
    linear head, every setting drawn (``output_padding`` < max(stride, dilation))."""
    g = torch.Generator().manual_seed(seed)
    output_padding = extra if extra < max(stride, dilation) else 0
    side = {1: 5, 2: 3, 3: 2}[n]
    first = _CONV_T[n](2, 4, 3 if n < 3 else 2, stride=stride, padding=padding,
                       output_padding=output_padding, groups=groups, dilation=dilation,
                       bias=bias)
    second = _CONV_T[n](4, 2, 2, stride=2, groups=groups)
    body = nn.Sequential(first, nn.ReLU(), second)
    out = body(torch.zeros(1, 2, *[side] * n))
    model = _randomize(nn.Sequential(*body, nn.Flatten(), nn.Linear(out.numel(), 3)), g)
    x, target = _inputs(g, (2, 2, *[side] * n), 3)
    got, e = _explain(model, x, target, frontend)
    assert [n.canonical for n in e.report.nodes if n.status == "rule"][:3] == [
        "conv_transpose", "relu", "conv_transpose"]
    _assert_close(got, oracle.sequential_relevance(model, x, target))
