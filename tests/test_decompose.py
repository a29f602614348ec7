"""Long-tail ops (issue 17): ``lrpfx.passes.decompose``.

- The property probe itself: hypothesis draws linear maps with non-negative and with negative
  coefficients, element-wise functions, selections and non-linear maps, and the probe must name
  each for what it is (small inputs, where the probe's one-hot columns cover every input).
- Ops with no hand-written rule compile in strict mode and explain: the forward is unchanged,
  the maps are finite and not all zero, and the report says which route each took (probed
  property, PyTorch decomposition, inlined higher-order op).
- What is left is refused in strict mode, and the error says what was tried.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import lrpfx
from lrpfx.passes.decompose import probe

DT = torch.float64


# ----------------------------------------------------------------------------- the property


def _matrix(draw, n_in: int, n_out: int, negative: bool) -> Tensor:
    m = torch.tensor(draw(st.lists(st.floats(0.0, 2.0), min_size=n_in * n_out,
                                   max_size=n_in * n_out)), dtype=DT).reshape(n_out, n_in)
    if negative:  # one coefficient below zero, anywhere
        i = draw(st.integers(0, n_out - 1))
        j = draw(st.integers(0, n_in - 1))
        m[i, j] = -draw(st.floats(1e-3, 2.0))
    return m


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n_in=st.integers(1, 8), n_out=st.integers(1, 6),
       negative=st.booleans())
def test_probe_finds_linear_maps_with_non_negative_coefficients(data, n_in, n_out, negative):
    """``x ↦ M x``: "positive_linear" exactly when every coefficient of M is ≥ 0."""
    m = _matrix(data.draw, n_in, n_out, negative)
    kind = probe(lambda x: x @ m.T.to(x.dtype), torch.empty(n_in))
    if negative:
        assert kind != "positive_linear"
    else:
        assert kind == "positive_linear"


_ELEMENTWISE = {"exp": torch.exp, "sin": torch.sin, "cube": lambda x: x ** 3,
                "erf": torch.erf, "abs": torch.abs, "softsign": F.softsign}


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(sorted(_ELEMENTWISE)), shape=st.lists(st.integers(1, 4), min_size=1,
                                                                  max_size=3))
def test_probe_finds_element_wise_functions(name, shape):
    assert probe(_ELEMENTWISE[name], torch.empty(shape)) == "pointwise"


@settings(max_examples=30, deadline=None)
@given(data=st.data(), n=st.integers(2, 8))
def test_probe_rejects_what_is_neither(data, n):
    """Non-linear maps that are not element-wise (a matrix then a square, a product with the
    sum, a softmax) are none of the three; selections by value (max, sorted values) are
    "selection"; a linear map with a negative coefficient is not "positive_linear"."""
    m = _matrix(data.draw, n, n, negative=False) + 0.1
    assert probe(lambda x: (x @ m.T) ** 2, torch.empty(n)) is None
    assert probe(lambda x: x * x.sum(), torch.empty(n)) is None
    assert probe(lambda x: torch.softmax(x, 0), torch.empty(n)) is None
    assert probe(lambda x: x.amax(0, keepdim=True), torch.empty(n)) == "selection"
    assert probe(lambda x: torch.sort(x).values, torch.empty(n)) == "selection"
    assert probe(lambda x: x - x.mean(), torch.empty(n)) is None


# ----------------------------------------------------------------------------- end to end


class Net(nn.Module):
    """conv → op → linear head (the op at the middle of the relevance path)."""

    def __init__(self, op, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.op = op
        self.head = nn.LazyLinear(c_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.op(self.conv(x)).flatten(1))


class Wrapped(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)


def _grn(x: Tensor) -> Tensor:  # ConvNeXt-V2's global response norm, without its parameters
    gx = torch.linalg.vector_norm(x, 2, dim=(2, 3), keepdim=True)
    nx = gx / (gx.mean(dim=1, keepdim=True) + 1e-6)
    return x + x * nx


def _autocast_off(x: Tensor) -> Tensor:
    with torch.autocast("cpu", enabled=False):
        return F.interpolate(x, scale_factor=2, mode="bilinear")


def _no_grad_region(x: Tensor) -> Tensor:
    with torch.no_grad():  # export keeps it as wrap_with_set_grad_enabled: inlined
        y = torch.tanh(x) * 2.0
    return y + x


def _baddbmm(x: Tensor) -> Tensor:
    b = x.flatten(2)  # (B, C, HW)
    return torch.baddbmm(b, b, b.transpose(1, 2) @ b * 0.01, alpha=0.5)


# name: (op, a phrase the report must show for it)
CASES = {
    "upsample_nearest": (lambda x: F.interpolate(x, scale_factor=2), "probed linear"),
    "upsample_bilinear": (lambda x: F.interpolate(x, scale_factor=2, mode="bilinear"),
                          "probed linear"),
    "upsample_bicubic": (lambda x: F.interpolate(x, scale_factor=2, mode="bicubic"),
                         "decomposed from aten.upsample_bicubic2d"),
    "pad_reflect": (lambda x: F.pad(x, (1, 1, 1, 1), mode="reflect"), "probed linear"),
    "pad_circular": (lambda x: F.pad(x, (1, 1, 1, 1), mode="circular"), "probed linear"),
    "repeat_interleave": (lambda x: x.repeat_interleave(2, dim=1), "probed linear"),
    "pixel_shuffle": (lambda x: F.pixel_unshuffle(F.pixel_shuffle(x, 2), 2), ""),
    "addcmul": (lambda x: torch.addcmul(x, x, x, value=0.1), "decomposed from aten.addcmul"),
    "baddbmm": (_baddbmm, "decomposed from aten.baddbmm"),
    "glu": (lambda x: F.glu(x, dim=1), "decomposed from aten.glu"),
    "logsumexp": (lambda x: torch.logsumexp(x, dim=1, keepdim=True) * x,
                  "decomposed from aten.logsumexp"),
    "amax": (lambda x: x.amax(dim=(2, 3), keepdim=True) + x, "selection"),
    "vector_norm": (_grn, "linalg_vector_norm"),
    "autocast_disabled": (_autocast_off, "inlined from wrap_with_autocast"),
    "set_grad_enabled": (_no_grad_region, "inlined from wrap_with_set_grad_enabled"),
    "upsample_3d": (lambda x: F.interpolate(x.unsqueeze(2), scale_factor=(1, 2, 2),
                                            mode="trilinear").squeeze(2), "probed linear"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_long_tail_op_compiles_and_explains(name):
    fn, phrase = CASES[name]
    torch.manual_seed(0)
    model = Net(Wrapped(fn), 5).eval()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        expected = model(x)
    e = lrpfx.compile(model, example_inputs=x)  # strict
    with torch.no_grad():
        torch.testing.assert_close(e(x), expected, rtol=1e-5, atol=1e-6)
    a = e.explain(x, target=torch.tensor([0, 1]))
    b = e.explain(x, target=torch.tensor([3, 2]))
    assert torch.isfinite(a).all() and a.abs().sum() > 0
    assert not torch.allclose(a, b)
    notes = " | ".join(str(n.decomposition) for n in e.report.nodes)
    assert phrase in notes, notes
    # the dynamic batch survives the decomposition (sizes read from the graph, not baked in)
    with torch.no_grad():
        torch.testing.assert_close(e(x[:1]), expected[:1], rtol=1e-5, atol=1e-6)


def test_what_is_left_is_refused_and_the_error_says_what_was_tried():
    model = Net(Wrapped(lambda x: torch.cumprod(x, 1)), 3).eval()
    x = torch.randn(2, 3, 4, 4)
    model(x)
    with pytest.raises(lrpfx.UnsupportedOpError, match="cumprod") as err:
        lrpfx.compile(model, example_inputs=x)
    (bad,) = err.value.report.unsupported
    assert "not linear with non-negative coefficients nor element-wise" in bad.decomposition
    assert "tried:" in str(err.value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        e = lrpfx.compile(model, strict=False, example_inputs=x)
    assert "decomposition" in e.report.table()


def test_supported_models_are_left_alone():
    """A model with rules for every op: the pass returns the captured module itself."""
    from lrpfx.core.capture import capture_export
    from lrpfx.passes.decompose import decompose
    from lrpfx.rules import get_ruleset

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2)).eval()
    x = torch.randn(2, 3, 5, 5)
    model(x)
    gm, _ = capture_export(model, (x,))
    assert decompose(gm, get_ruleset("abslrp")) is gm
