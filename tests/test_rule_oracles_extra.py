"""The absLRP rules added for model coverage (issue #4: RMS norm, group norm, division by a
tensor; ``gather`` as data movement) against the float64 oracle of ``tests/oracle.py``.

As in ``test_rule_oracles.py``, the oracle never touches lrpfx: per op it builds
``h = f(x; θ)`` and ``ha = f(|x|; |θ|)``, with the normalisation statistics detached inside
``f`` (so that ``ha`` recomputes them from ``|x|``, DESIGN.md §4.2), takes
``autograd.grad(h + ha, x, R_y / (|h| + 1e-9))``, multiplies by ``x`` and normalises per
example. Hypothesis draws shapes, signs, weights, spellings and frontends; the compiled
``explain(x, target, contrastive=False)`` must match to float64 precision.
"""

from __future__ import annotations

import oracle
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st
from test_rule_oracles import (
    DT,
    FRONTENDS,
    Lambda,
    _assert_close,
    _explain,
    _inputs,
    _randomize,
    _settings,
)
from torch import Tensor, nn

import lrpfx

frontends = st.sampled_from(FRONTENDS)
seeds = st.integers(0, 2**31 - 1)


def _head_oracle(y: Tensor, head: nn.Linear, out: Tensor, target: Tensor) -> Tensor:
    """Relevance at ``y`` (any shape) from a linear head on ``y.flatten(1)``."""
    r = oracle.linear(y.flatten(1), head.weight, head.bias, oracle.one_hot_seed(out, target))
    return r.reshape(y.shape)


def _canonical(e: lrpfx.Explainer) -> set[str]:
    return {n.canonical for n in e.report.nodes if n.status == "rule"}


# ----------------------------------------------------------------------------- RMS norm


def _rms_ref(x: Tensor, ndim: int, eps: float) -> Tensor:
    """``x / sqrt(mean(x²) + eps)`` with the statistic detached (a constant, DESIGN.md §4.2)."""
    dims = tuple(range(-ndim, 0))
    return x * torch.rsqrt(x.pow(2).mean(dims, keepdim=True).detach() + eps)


class SpeltRMSNorm(nn.Module):
    """Hugging Face's LLaMA/Qwen2 norm, spelt out: cast, pow, mean, add eps, rsqrt, mul, cast,
    ``weight *``."""

    def __init__(self, d: int, eps: float, weight: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d)) if weight else None
        self.eps, self.d = eps, d

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x = x.to(torch.float64)
        variance = x.pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.eps)
        return x.to(dtype) if self.weight is None else self.weight * x.to(dtype)


class SqrtRMSNorm(SpeltRMSNorm):
    """The ``x / sqrt(mean(x·x) + eps)`` spelling, weight on the right."""

    def forward(self, x: Tensor) -> Tensor:
        y = x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + self.eps)
        return y if self.weight is None else y * self.weight


class FnRMSNorm(SpeltRMSNorm):
    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, (self.d,), self.weight, self.eps)


RMS_SPELLINGS = {
    "nn.RMSNorm": lambda d, eps, w: nn.RMSNorm(d, eps=eps, elementwise_affine=w),
    "F.rms_norm": FnRMSNorm,
    "spelt out (rsqrt)": SpeltRMSNorm,
    "spelt out (sqrt)": SqrtRMSNorm,
}


class NormNet(nn.Module):
    """x (B, T, D) → linear → [relu] → norm → flatten → head."""

    def __init__(self, norm: nn.Module, t: int, d: int, classes: int, relu: bool) -> None:
        super().__init__()
        self.lin, self.norm, self.head = nn.Linear(d, d), norm, nn.Linear(t * d, classes)
        self.relu = relu

    def pre(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = F.linear(x, self.lin.weight, self.lin.bias)
        return z, torch.relu(z) if self.relu else z

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.norm(self.pre(x)[1]).flatten(1))


@_settings(25)
@given(spelling=st.sampled_from(sorted(RMS_SPELLINGS)), t=st.integers(1, 3),
       d=st.integers(1, 6), eps=st.sampled_from([1e-6, 1e-2, 0.5]), weight=st.booleans(),
       relu=st.booleans(), batch=st.integers(1, 3), classes=st.integers(1, 4),
       frontend=frontends, seed=seeds)
def test_rms_norm(spelling, t, d, eps, weight, relu, batch, classes, frontend, seed):
    """h = x/r(x)·w, ha = |x|/r(|x|)·|w| with r detached: R_x = 2 (x w)⁺/r(x) ⊙ s."""
    g = torch.Generator().manual_seed(seed)
    norm = RMS_SPELLINGS[spelling](d, eps, weight)
    model = _randomize(NormNet(norm, t, d, classes, relu), g, scale=1.0)
    x, target = _inputs(g, (batch, t, d), classes)
    w = norm.weight.detach() if weight else torch.ones(d, dtype=DT)
    z, a = model.pre(x)
    y = _rms_ref(a, 1, eps) * w
    out = F.linear(y.flatten(1), model.head.weight, model.head.bias)
    torch.testing.assert_close(out, model(x), rtol=1e-12, atol=1e-12)
    r_y = _head_oracle(y, model.head, out, target)
    (r_a,) = oracle.abs_rule(lambda v, w: _rms_ref(v, 1, eps) * w, [a], r_y, [w])
    if relu:
        r_a = oracle.elementwise(torch.relu, z, r_a)
    expected = oracle.unit_l1(oracle.linear(x, model.lin.weight, model.lin.bias, r_a))
    got, e = _explain(model, x, target, frontend)
    _assert_close(got, expected)
    assert "rms_norm" in _canonical(e) and not {"pow", "mean", "div"} & _canonical(e)


def test_rms_norm_weight_is_folded_in_llama_spelling():
    model = NormNet(SpeltRMSNorm(4, 1e-6, True), 2, 4, 3, relu=False).double().eval()
    e = lrpfx.compile(model, example_inputs=torch.randn(2, 2, 4, dtype=DT))
    rules = [n for n in e.report.nodes if n.status == "rule"]
    assert [n.canonical for n in rules] == ["linear", "rms_norm", "linear"]
    assert "mul by weight" in rules[1].op
    x = torch.randn(3, 2, 4, dtype=DT)
    assert torch.equal(e(x), model(x))  # the fused op computes what the spelt-out one does


def test_rms_statistic_used_elsewhere_is_not_fused():
    """``x · rsqrt(mean(x²))`` whose statistic is read again is left alone: no ``rms_norm``
    node; its ``rsqrt`` is then an element-wise op like any other (lrpfx.passes.decompose)."""

    class Twice(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            v = x.pow(2).mean(-1, keepdim=True) + 1e-6
            return (x * torch.rsqrt(v) + v).flatten(1)

    report = lrpfx.compile(Twice().eval(), example_inputs=torch.randn(2, 3, 4)).report
    canonical = [n.canonical for n in report.nodes]
    assert "rms_norm" not in canonical and "pointwise" in canonical
    (rsqrt,) = [n for n in report.nodes if n.canonical == "pointwise"]
    assert "rsqrt" in rsqrt.op and "element-wise" in rsqrt.decomposition


# ----------------------------------------------------------------------------- L_p normalisation


class Normalize(nn.Module):
    def __init__(self, spelling: str, p: float, dim: int) -> None:
        super().__init__()
        self.spelling, self.p, self.dim = spelling, p, dim

    def forward(self, x: Tensor) -> Tensor:
        if self.spelling == "F.normalize":
            return F.normalize(x, p=self.p, dim=self.dim)
        return x / x.norm(p=self.p, dim=self.dim, keepdim=True)


@_settings(20)
@given(spelling=st.sampled_from(["F.normalize", "x / x.norm"]), p=st.sampled_from([1.0, 2.0]),
       dim=st.sampled_from([-1, 1]), t=st.integers(2, 3), d=st.integers(1, 5),
       relu=st.booleans(), batch=st.integers(1, 3), classes=st.integers(1, 4),
       frontend=frontends, seed=seeds)
def test_normalize(spelling, p, dim, t, d, relu, batch, classes, frontend, seed):
    """h = x/n(x), ha = |x|/n(|x|) with n = max(‖x‖_p, eps) detached: R_x = 2 x⁺/n(x) ⊙ s."""
    g = torch.Generator().manual_seed(seed)
    model = _randomize(NormNet(Normalize(spelling, p, dim), t, d, classes, relu), g, scale=1.0)
    x, target = _inputs(g, (batch, t, d), classes)
    eps = 1e-12 if spelling == "F.normalize" else 0.0

    def f(v: Tensor) -> Tensor:
        return v / v.norm(p=p, dim=dim, keepdim=True).clamp_min(eps).detach()

    z, a = model.pre(x)
    y = f(a)
    assume(bool(torch.isfinite(y).all()))  # x / x.norm of an all-zero row (after a relu)
    out = F.linear(y.flatten(1), model.head.weight, model.head.bias)
    torch.testing.assert_close(out, model(x), rtol=1e-12, atol=1e-12)
    r_y = _head_oracle(y, model.head, out, target)
    (r_a,) = oracle.abs_rule(f, [a], r_y)
    if relu:
        r_a = oracle.elementwise(torch.relu, z, r_a)
    expected = oracle.unit_l1(oracle.linear(x, model.lin.weight, model.lin.bias, r_a))
    got, e = _explain(model, x, target, frontend)
    _assert_close(got, expected)
    assert "normalize" in _canonical(e) and "div" not in _canonical(e)


# ----------------------------------------------------------------------------- group norm


def _group_norm_ref(x: Tensor, groups: int, w: Tensor | None, b: Tensor | None, eps: float
                    ) -> Tensor:
    """Group norm with mean and variance detached (constants)."""
    g = x.reshape(x.shape[0], groups, -1)
    mean = g.mean(-1, keepdim=True).detach()
    var = g.var(-1, unbiased=False, keepdim=True).detach()
    y = ((g - mean) / torch.sqrt(var + eps)).reshape(x.shape)
    shape = (1, -1, *[1] * (x.dim() - 2))
    if w is not None:
        y = y * w.reshape(shape)
    if b is not None:
        y = y + b.reshape(shape)
    return y


class FnGroupNorm(nn.GroupNorm):
    """Not an ``nn`` leaf for symbolic_trace: records the ``F.group_norm`` spelling."""


@_settings(25)
@given(groups=st.integers(1, 3), per_group=st.integers(1, 3),
       spatial=st.sampled_from([(2,), (3,), (2, 3)]), affine=st.booleans(),
       eps=st.sampled_from([1e-5, 0.1]), functional=st.booleans(), relu=st.booleans(),
       batch=st.integers(1, 3), classes=st.integers(1, 4), frontend=frontends, seed=seeds)
def test_group_norm(groups, per_group, spatial, affine, eps, functional, relu, batch, classes,
                    frontend, seed):
    """VJP_x(h + ha; s) = s ⊙ (γ/σ_g(x) + sign(x) ⊙ |γ|/σ_g(|x|)), statistics per group."""
    g = torch.Generator().manual_seed(seed)
    c = groups * per_group
    norm = (FnGroupNorm if functional else nn.GroupNorm)(groups, c, eps=eps, affine=affine)
    numel = c * int(torch.tensor(spatial).prod().item())

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin, self.norm = nn.Linear(c, c), norm
            self.head = nn.Linear(numel, classes)

        def pre(self, x: Tensor) -> tuple[Tensor, Tensor]:
            z = F.linear(x.movedim(1, -1), self.lin.weight, self.lin.bias).movedim(-1, 1)
            return z, torch.relu(z) if relu else z

        def forward(self, x: Tensor) -> Tensor:
            return self.head(self.norm(self.pre(x)[1]).flatten(1))

    model = _randomize(Net(), g, scale=1.0)
    x, target = _inputs(g, (batch, c, *spatial), classes)
    w = norm.weight.detach() if affine else None
    b = norm.bias.detach() if affine else None
    z, a = model.pre(x)
    y = _group_norm_ref(a, groups, w, b, eps)
    out = F.linear(y.flatten(1), model.head.weight, model.head.bias)
    torch.testing.assert_close(out, model(x), rtol=1e-10, atol=1e-10)
    r_y = _head_oracle(y, model.head, out, target)
    params = [w, b] if affine else []
    (r_a,) = oracle.abs_rule(lambda v, *p: _group_norm_ref(v, groups, *(p or (None, None)), eps),
                             [a], r_y, params)
    if relu:
        r_a = oracle.elementwise(torch.relu, z, r_a)
    r_x = oracle.linear(x.movedim(1, -1), model.lin.weight, model.lin.bias,
                        r_a.movedim(1, -1)).movedim(-1, 1)
    got, e = _explain(model, x, target, frontend)
    _assert_close(got, oracle.unit_l1(r_x))
    assert "group_norm" in _canonical(e)


# ----------------------------------------------------------------- activations on signed inputs


OTHER_ACTIVATIONS = {
    "leaky_relu": lambda t: F.leaky_relu(t, 0.2), "elu": F.elu, "softplus": F.softplus,
    "mish": F.mish, "relu6": F.relu6, "hardtanh": lambda t: F.hardtanh(t, -1.0, 1.5),
}
"""Activations outside ``test_rule_oracles.ACTIVATIONS``' closed forms: the generic factor
``f'(x) + sign(x) f'(|x|)`` and ReLU6's mask, which only a signed input tells apart from a
constant (normalised away)."""


@pytest.mark.parametrize("act", sorted(OTHER_ACTIVATIONS))
@_settings(4)
@given(k=st.integers(3, 6), frontend=frontends, seed=seeds)
def test_activation_on_signed_input(act, k, frontend, seed):
    """linear → f → linear head against the oracle (``ha = f(|x|)``)."""
    g = torch.Generator().manual_seed(seed)
    model = _randomize(nn.Sequential(nn.Linear(4, k), Lambda(OTHER_ACTIVATIONS[act]),
                                     nn.Linear(k, 3)), g, scale=1.5)
    x, target = _inputs(g, (3, 4), 3)
    expected = oracle.sequential_relevance(model, 2 * x, target)
    got, _ = _explain(model, 2 * x, target, frontend)
    _assert_close(got, expected)


# ----------------------------------------------------------------------------- div by a tensor


class Quotient(nn.Module):
    """x → (a = linear(x), b = linear(x) or a parameter) → [relu] → a / b (or b / a) → head.

    ``kind``: "param" (a constant divisor: a parameter), "both" (two activations), "divisor"
    (a constant numerator, the activation divides it)."""

    def __init__(self, d: int, k: int, classes: int, kind: str, broadcast: bool,
                 relu: bool) -> None:
        super().__init__()
        self.a = nn.Linear(d, k)
        self.b = nn.Linear(d, 1 if broadcast else k)
        self.p = nn.Parameter(torch.randn(1 if broadcast and kind == "param" else k))
        self.head = nn.Linear(k, classes)
        self.kind, self.relu = kind, relu

    def operands(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        za, zb = F.linear(x, self.a.weight, self.a.bias), F.linear(x, self.b.weight, self.b.bias)
        a, b = (torch.relu(za), torch.relu(zb) + 0.5) if self.relu else (za, zb)
        return za, zb, a, b

    def forward(self, x: Tensor) -> Tensor:
        _, _, a, b = self.operands(x)
        if self.kind == "param":
            y = a / self.p
        elif self.kind == "both":
            y = a / b
        else:
            y = self.p / b
        return self.head(y)


@_settings(25)
@given(kind=st.sampled_from(["param", "both", "divisor"]), d=st.integers(1, 4),
       k=st.integers(1, 4), broadcast=st.booleans(), relu=st.booleans(),
       batch=st.integers(1, 3), classes=st.integers(1, 4), frontend=frontends, seed=seeds)
def test_div_by_tensor(kind, d, k, broadcast, relu, batch, classes, frontend, seed):
    """y = a / b, ha = |a| / |b|: R_a = 2 (a/b)⁺ s, R_b = −2 (a/b)⁺ s."""
    _check_div(kind, d, k, broadcast, relu, batch, classes, frontend, seed)


@pytest.mark.parametrize("kind", ["param", "both", "divisor"])
@pytest.mark.parametrize("relu", [False, True])
def test_div_by_tensor_fixed_cases_carry_relevance(kind, relu):
    """Fixed cases of :func:`test_div_by_tensor` with several features per operand and maps
    that are not all zero: many drawn cases have one feature or a map the rule legitimately
    zeroes (the oracle's is zero too), where a broken div factor went unnoticed."""
    carrying = 0
    for seed in range(6):
        got = _check_div(kind, 3, 4, False, relu, 3, 3, "symbolic_trace", seed)
        carrying += int((got.abs().sum(1) > 0).sum())
    assert carrying >= 6


def _check_div(kind: str, d: int, k: int, broadcast: bool, relu: bool, batch: int,
               classes: int, frontend: str, seed: int) -> Tensor:
    """One ``a / b`` case against the oracle; returns lrpfx's map."""
    g = torch.Generator().manual_seed(seed)
    model = _randomize(Quotient(d, k, classes, kind, broadcast, relu), g, scale=1.0)
    x, target = _inputs(g, (batch, d), classes)
    za, zb, a, b = model.operands(x)
    p = model.p.detach()
    numerator, divisor = {"param": (a, p), "both": (a, b), "divisor": (p, b)}[kind]
    y = numerator / divisor
    out = F.linear(y, model.head.weight, model.head.bias)
    torch.testing.assert_close(out, model(x), rtol=1e-12, atol=1e-12)
    r_y = oracle.linear(y, model.head.weight, model.head.bias, oracle.one_hot_seed(out, target))
    relevant = {"param": (True, False), "both": (True, True), "divisor": (False, True)}[kind]
    r_num, r_div = oracle.binary(torch.div, numerator, divisor, r_y, relevant)
    r_x = torch.zeros_like(x)
    if r_num is not None:
        r_a = oracle.elementwise(torch.relu, za, r_num) if relu else r_num
        r_x = r_x + oracle.linear(x, model.a.weight, model.a.bias, r_a)
    if r_div is not None:
        # relu(zb) + 0.5: the add of a Python number is a sum with a constant (ha = |b| + 0.5)
        if relu:
            r_div = oracle.abs_rule(lambda v: v + 0.5, [torch.relu(zb)], r_div)[0]
            r_div = oracle.elementwise(torch.relu, zb, r_div)
        r_x = r_x + oracle.linear(x, model.b.weight, model.b.bias, r_div)
    got, e = _explain(model, x, target, frontend)
    _assert_close(got, oracle.unit_l1(r_x))
    assert "div" in _canonical(e)
    return got


class ScaleBySize(nn.Module):
    """``x / x.shape[-1]`` and ``x / (h · w)``: divisions by sizes are scalings (passthrough)."""

    def __init__(self, d: int, classes: int) -> None:
        super().__init__()
        self.lin, self.head = nn.Linear(d, d), nn.Linear(d, classes)

    def forward(self, x: Tensor) -> Tensor:
        z = self.lin(x)
        return self.head(z / z.shape[-1])


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_div_by_size_is_a_scaling(frontend):
    g = torch.Generator().manual_seed(0)
    model = _randomize(ScaleBySize(4, 3), g)
    x, target = _inputs(g, (2, 4), 3)
    z = F.linear(x, model.lin.weight, model.lin.bias)
    out = F.linear(z / 4, model.head.weight, model.head.bias)
    r_z = oracle.linear(z / 4, model.head.weight, model.head.bias,
                        oracle.one_hot_seed(out, target))
    expected = oracle.unit_l1(oracle.linear(x, model.lin.weight, model.lin.bias, r_z))
    got, e = _explain(model, x, target, frontend)
    _assert_close(got, expected)
    assert _canonical(e) == {"linear"}


# ----------------------------------------------------------------------------- gather


class Gather(nn.Module):
    """z = linear(x) (B, T, D) → gather along the last dim with constant (relative-position
    style) indices → head. The gather is data movement: relevance is scattered back.

    ``torch.gather`` needs the index expanded to the batch (a size only export can trace);
    ``torch.take_along_dim`` broadcasts it."""

    def __init__(self, t: int, d: int, m: int, classes: int, spelling: str,
                 g: torch.Generator) -> None:
        super().__init__()
        self.lin = nn.Linear(d, d)
        self.register_buffer("positions", torch.randint(0, d, (t, m), generator=g))
        self.head = nn.Linear(t * m, classes)
        self.spelling = spelling

    def forward(self, x: Tensor) -> Tensor:
        z = self.lin(x)
        if self.spelling == "gather":
            picked = torch.gather(z, -1, self.positions.expand(z.shape[0], -1, -1))
        else:
            picked = torch.take_along_dim(z, self.positions[None], dim=-1)
        return self.head(picked.flatten(1))


@_settings(15)
@given(t=st.integers(1, 3), d=st.integers(1, 4), m=st.integers(1, 5),
       spelling=st.sampled_from(["gather", "take_along_dim"]), batch=st.integers(1, 3),
       classes=st.integers(1, 4), frontend=frontends, seed=seeds)
def test_gather_passes_relevance_unchanged(t, d, m, spelling, batch, classes, frontend, seed):
    assume(spelling != "gather" or frontend == "export")
    g = torch.Generator().manual_seed(seed)
    model = _randomize(Gather(t, d, m, classes, spelling, g), g)
    x, target = _inputs(g, (batch, t, d), classes)
    z = F.linear(x, model.lin.weight, model.lin.bias)
    index = model.positions.expand(batch, -1, -1)
    picked = torch.gather(z, -1, index)
    out = F.linear(picked.flatten(1), model.head.weight, model.head.bias)
    r_p = _head_oracle(picked, model.head, out, target)
    r_z = torch.zeros_like(z).scatter_add_(-1, index, r_p)  # the inverse data movement
    expected = oracle.unit_l1(oracle.linear(x, model.lin.weight, model.lin.bias, r_z))
    got, e = _explain(model, x, target, frontend)
    _assert_close(got, expected)
    assert _canonical(e) == {"linear"}


# ----------------------------------------------------------------------------- constants


class ZeroedBias(nn.Module):
    """torchvision's Swin V2: a clone of a bias with a slice zeroed in place, then used."""

    def __init__(self, d: int, classes: int) -> None:
        super().__init__()
        self.lin, self.head = nn.Linear(d, 3 * d), nn.Linear(3 * d, classes)

    def forward(self, x: Tensor) -> Tensor:
        bias = self.lin.bias.clone()
        n = bias.numel() // 3
        bias[n:2 * n].zero_()
        return self.head(F.linear(x, self.lin.weight, bias))


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_constant_mutated_in_place_is_folded_after_the_mutation(frontend):
    model = ZeroedBias(4, 3).eval()
    before = model.lin.bias.detach().clone()
    x = torch.randn(2, 4)
    e = lrpfx.compile(model, frontend=frontend, example_inputs=x)
    with torch.no_grad():
        assert torch.equal(e(x), model(x))
    assert torch.equal(model.lin.bias, before)  # the model itself is untouched


@pytest.mark.parametrize("act", [torch.sigmoid, torch.tanh, F.hardsigmoid],
                         ids=["sigmoid", "tanh", "hardsigmoid"])
def test_gate_with_negative_preactivations_passes_exactly_zero(act):
    """``f'`` even: ``f'(x) + sign(x) f'(|x|)`` is exactly 0 where ``x < 0``. A gate whose
    pre-activations are all negative must pass no relevance at all; computed as a difference,
    rounding noise would remain, and the per-example normalisation at the gate's input (read
    twice) would scale that noise up to unit size."""

    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.g, self.head = (nn.Linear(3, 6), nn.Linear(6, 6),
                                           nn.Linear(6, 4))
            with torch.no_grad():
                self.g.bias.fill_(-4.0)

        def forward(self, x):
            z = self.emb(x)
            return self.head(z * act(self.g(z)))

    torch.manual_seed(0)
    net = Gate().double().eval()
    x = torch.randn(5, 3, dtype=torch.double)
    with torch.no_grad():
        assert (net.g(net.emb(x)) < 0).all()
    maps = lrpfx.compile(net).explain(x, contrastive=False, at=["g"])
    assert torch.equal(maps["g"], torch.zeros_like(maps["g"]))


# ----------------------------------------------------------------------------- helpers


@_settings(30)
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=4), broadcast=st.booleans(),
       dtype=st.sampled_from([torch.float16, torch.float32, torch.float64]),
       inplace=st.booleans(), seed=seeds)
def test_keep_positive_is_a_masked_product(shape, broadcast, dtype, inplace, seed):
    """``keep_positive`` (ReLU's backward kernel) equals ``t ⊙ [x > 0]`` for any broadcast and
    mixed dtypes (the raw kernel returns zeros for those)."""
    from lrpfx.rules.abslrp import keep_positive

    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g, dtype=torch.float64)
    x_shape = [1] * len(shape) if broadcast else shape
    x = torch.randn(x_shape, generator=g, dtype=torch.float64).to(dtype)
    x.view(-1)[0] = 0.0  # the boundary: zero is not positive
    expected = t * (x > 0)
    got = keep_positive(t.clone() if inplace else t, x, inplace=inplace)
    assert torch.equal(got, expected)


@_settings(20)
@given(batch=st.sampled_from([1, 3, 33, 40]), shape=st.lists(st.integers(1, 4), max_size=3),
       seed=seeds)
def test_per_example_dot_and_nonneg_normalisation(batch, shape, seed):
    """The per-example dot product (a loop of BLAS dots, or ``vecdot`` past 32 examples) is
    ``Σ a ⊙ b`` per example, and the non-negative normalisation it serves (``x · |g|``) equals
    the general one (``Σ|x ⊙ g|``) whenever ``x ≥ 0``."""
    from lrpfx.rules.base import normalised_gradient, per_example_dot

    g = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, *shape, generator=g, dtype=torch.float64)
    b = torch.randn(batch, *shape, generator=g, dtype=torch.float64)
    expected = (a * b).reshape(batch, -1).sum(1).reshape(-1, *[1] * len(shape))
    torch.testing.assert_close(per_example_dot(a, b), expected, rtol=1e-12, atol=1e-12)
    x = a.abs()
    torch.testing.assert_close(normalised_gradient(b.clone(), x, inplace=True, nonneg=True),
                               normalised_gradient(b, x), rtol=1e-12, atol=1e-15)
