"""Every absLRP rule against a slow float64 oracle written from the formula (DESIGN.md §4.1/4.2).

The oracle (``tests/oracle.py``) never touches lrpfx: per op it builds ``h = f(x; θ)`` and
``ha = f(|x|; |θ|)`` with explicit ``|θ|``, takes ``torch.autograd.grad(h + ha, x, s)`` with
``s = R_y / (|h| + 1e-9)``, multiplies by ``x`` and normalises per example; the chain through a
small model is written by hand. Hypothesis draws shapes, signs (raw inputs with both signs, and
non-negative inputs after a ReLU so that the compiled fast path is used), weights and op settings;
the compiled ``explain(x, target, contrastive=False)`` must match to float64 precision.
"""

from __future__ import annotations

import oracle
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from torch import Tensor, nn

import lrpfx

DT = torch.float64
RTOL, ATOL = 1e-6, 1e-9
FRONTENDS = ("export", "symbolic_trace")

frontends = st.sampled_from(FRONTENDS)
seeds = st.integers(0, 2**31 - 1)


def _settings(n: int) -> settings:
    return settings(max_examples=n, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


# ----------------------------------------------------------------------------- helpers


def _randomize(model: nn.Module, g: torch.Generator, scale: float = 0.7) -> nn.Module:
    """Float64, eval mode, every parameter and batch-norm statistic drawn from ``g``."""
    model = model.to(DT).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=DT) * scale)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g, dtype=DT))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g, dtype=DT) * 2
                                    + 0.05)
    return model


def _inputs(g: torch.Generator, shape: tuple[int, ...], classes: int) -> tuple[Tensor, Tensor]:
    x = torch.randn(shape, generator=g, dtype=DT)
    target = torch.randint(0, classes, (shape[0],), generator=g)
    return x, target


def _explain(model: nn.Module, x: Tensor, target: Tensor, frontend: str,
             **options: object) -> tuple[Tensor, lrpfx.Explainer]:
    e = lrpfx.compile(model, frontend=frontend, **options)
    got = e.explain(x, target=target, contrastive=False)
    assert got.shape == x.shape and got.dtype == DT
    return got, e


def _assert_close(got: Tensor, expected: Tensor) -> None:
    smallest, oracle.SMALLEST_MASS[0] = oracle.SMALLEST_MASS[0], float("inf")
    if currently_in_test_context():  # relevance cancelled to rounding noise: nothing to compare
        assume(smallest > 1e-6)
    else:
        assert smallest > 1e-6, "a fixed example whose relevance cancels to rounding noise"
    assert torch.isfinite(expected).all()
    diff = (got - expected).abs().max().item()
    # the oracle, like the reference, normalises r / (Σ|r| + EPS): an error of EPS / Σ|r| relative
    # to each normalised part, which lrpfx (scale-invariant) does not make. Where two parts
    # nearly cancel (a residual merge) it is absolute, not relative to their sum; the map has
    # unit L1, so the parts are of order 1 (10x: a few normalisations along a path)
    atol = ATOL + 10 * oracle.EPS / smallest
    assert torch.allclose(got, expected, rtol=RTOL, atol=atol), (
        f"max |lrpfx - oracle| = {diff:.3e}\nlrpfx:\n{got}\noracle:\n{expected}")


def _near_stabiliser(model: nn.Module, x: Tensor) -> Tensor:
    """Scale ``x`` and ``model``'s biases and batch-norm shifts (in place) by 1e-9, so that every
    pre-activation is near the stabiliser: there ``y / (|y| + 1e-9)`` is far from ±1, and a
    ratio taken twice, or not at all, changes the map (at ordinary scales it is ±1 and does not).
    Returns the scaled ``x``."""
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if name.endswith(("bias", "running_mean")):
                t.mul_(1e-9)
    return x * 1e-9


def _check_sequential(model: nn.Sequential, x: Tensor, target: Tensor, frontend: str,
                      **options: object) -> lrpfx.Explainer:
    expected = oracle.sequential_relevance(
        model, x, target, max_pool_divide=bool(options.get("max_pool_divide", False)))
    got, e = _explain(model, x, target, frontend, **options)
    _assert_close(got, expected)
    return e


def _fast_path_used(e: lrpfx.Explainer, canonical: str) -> bool:
    return any(n.canonical == canonical and n.nonneg_input for n in e.report.nodes)


# Subclasses defined here are not torch.nn leaf modules for symbolic_trace, which then traces
# into their forward and records the functional spelling (F.conv2d, F.linear, ...).
class FnConv1d(nn.Conv1d):
    pass


class FnConv2d(nn.Conv2d):
    pass


class FnConv3d(nn.Conv3d):
    pass


class FnLinear(nn.Linear):
    pass


class FnBatchNorm(nn.BatchNorm1d):
    """F.batch_norm spelling; accepts any input of dim >= 2 (like every BatchNormNd)."""

    def _check_input_dim(self, input: Tensor) -> None:
        pass


class Lambda(nn.Module):
    """A parameter-free compute op given as a function (the oracle applies ``ha = fn(|x|)``)."""

    oracle_compute = True

    def __init__(self, fn) -> None:  # noqa: ANN001
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)


_CONV_MODULES = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONV_FN = {1: FnConv1d, 2: FnConv2d, 3: FnConv3d}


# ----------------------------------------------------------------------------- conv


@st.composite
def conv_cases(draw, pointwise: bool = False):
    """Convolutions of any rank, grouping, stride, padding and dilation; ``pointwise``: strided
    1×1 ones without padding (their transpose has its own implementation)."""
    n = draw(st.integers(1, 3))
    groups = draw(st.integers(1, 3))
    cin = groups * draw(st.integers(1, 2))
    cout = groups * draw(st.integers(1, 2))
    if pointwise:
        k, padding = (1,) * n, (0,) * n
        stride = tuple(draw(st.lists(st.integers(1, 3), min_size=n, max_size=n)
                            .filter(lambda s: max(s) > 1)))
    else:
        k = tuple(draw(st.integers(1, 3)) for _ in range(n))
        stride = tuple(draw(st.integers(1, 2)) for _ in range(n))
        padding = tuple(draw(st.integers(0, 2)) for _ in range(n))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(n))
    extra = 2 if n == 3 else 4
    size = []
    for ki, pi, di in zip(k, padding, dilation):
        smallest = max(1, di * (ki - 1) + 1 - 2 * pi)
        size.append(draw(st.integers(smallest, smallest + extra)))
    return dict(n=n, groups=groups, cin=cin, cout=cout, k=k, stride=stride, padding=padding,
                dilation=dilation, size=tuple(size), bias=draw(st.booleans()),
                functional=draw(st.booleans()))


@_settings(25)
@given(case=conv_cases(), nonneg=st.booleans(), batch=st.integers(1, 3), classes=st.integers(1, 4),
       frontend=frontends, seed=seeds)
def test_conv(case, nonneg, batch, classes, frontend, seed):
    _check_conv(case, nonneg, batch, classes, frontend, seed)


@_settings(20)
@given(case=conv_cases(pointwise=True), nonneg=st.booleans(), batch=st.integers(1, 3),
       classes=st.integers(1, 4), frontend=frontends, seed=seeds)
def test_conv_strided_pointwise(case, nonneg, batch, classes, frontend, seed):
    _check_conv(case, nonneg, batch, classes, frontend, seed)


def _check_conv(case: dict, nonneg: bool, batch: int, classes: int, frontend: str,
                seed: int) -> None:
    """[ReLU →] one convolution (``case`` from :func:`conv_cases`) → linear head, against the
    oracle; the non-negative-input fast path is taken exactly when the ReLU is there."""
    g = torch.Generator().manual_seed(seed)
    cls = (_CONV_FN if case["functional"] else _CONV_MODULES)[case["n"]]
    conv = cls(case["cin"], case["cout"], case["k"], stride=case["stride"],
               padding=case["padding"], dilation=case["dilation"], groups=case["groups"],
               bias=case["bias"])
    shape = (batch, case["cin"], *case["size"])
    with torch.no_grad():
        features = conv(torch.zeros(1, *shape[1:])).numel()
    layers = [nn.ReLU()] if nonneg else []
    model = _randomize(nn.Sequential(*layers, conv, nn.Flatten(), nn.Linear(features, classes)), g)
    x, target = _inputs(g, shape, classes)
    e = _check_sequential(model, x, target, frontend)
    assert _fast_path_used(e, "conv") == nonneg


# ----------------------------------------------------------------------------- linear


@_settings(20)
@given(fin=st.integers(1, 6), fout=st.integers(1, 6), tokens=st.sampled_from([None, 1, 3]),
       bias=st.booleans(), functional=st.booleans(), nonneg=st.booleans(),
       batch=st.integers(1, 3), classes=st.integers(1, 4), frontend=frontends, seed=seeds)
def test_linear(fin, fout, tokens, bias, functional, nonneg, batch, classes, frontend, seed):
    g = torch.Generator().manual_seed(seed)
    lin = (FnLinear if functional else nn.Linear)(fin, fout, bias=bias)
    shape = (batch, fin) if tokens is None else (batch, tokens, fin)
    layers = [nn.ReLU()] if nonneg else []
    head = nn.Linear(fout * (tokens or 1), classes, bias=not bias)
    model = _randomize(nn.Sequential(*layers, lin, nn.Flatten(), head), g)
    x, target = _inputs(g, shape, classes)
    e = _check_sequential(model, x, target, frontend)
    assert _fast_path_used(e, "linear") == nonneg


# ----------------------------------------------------------------------------- batch norm


@_settings(20)
@given(kind=st.sampled_from(["1d", "1d-seq", "2d", "3d", "functional"]),
       channels=st.integers(1, 4), affine=st.booleans(), eps=st.sampled_from([1e-5, 1e-3, 0.1]),
       nonneg=st.booleans(), batch=st.integers(1, 3), classes=st.integers(1, 4),
       frontend=frontends, seed=seeds)
def test_batch_norm(kind, channels, affine, eps, nonneg, batch, classes, frontend, seed):
    g = torch.Generator().manual_seed(seed)
    spatial = {"1d": (), "1d-seq": (3,), "2d": (2, 3), "3d": (2, 1, 2), "functional": (3, 2)}[kind]
    cls = {"1d": nn.BatchNorm1d, "1d-seq": nn.BatchNorm1d, "2d": nn.BatchNorm2d,
           "3d": nn.BatchNorm3d, "functional": FnBatchNorm}[kind]
    bn = cls(channels, eps=eps, affine=affine)
    shape = (batch, channels, *spatial)
    numel = channels * int(torch.tensor(spatial).prod().item()) if spatial else channels
    layers = [nn.ReLU()] if nonneg else []
    model = _randomize(nn.Sequential(*layers, bn, nn.Flatten(), nn.Linear(numel, classes)), g)
    x, target = _inputs(g, shape, classes)
    # the oracle's affine forward is checked against the module inside sequential_relevance
    e = _check_sequential(model, x, target, frontend)
    assert _fast_path_used(e, "batch_norm") == nonneg


TAILS = ("bn", "dropout", "gelu", "leaky_relu", "relu")


def _tail(name: str, channels: int, bn: type[nn.Module] = nn.BatchNorm2d) -> nn.Module:
    """An element-wise layer that fuses into the chain before it (``bn``: the batch-norm class
    for the input's rank)."""
    return {"bn": lambda: bn(channels), "relu": nn.ReLU, "gelu": nn.GELU,
            "dropout": lambda: nn.Dropout(0.3), "leaky_relu": lambda: nn.LeakyReLU(0.1)}[name]()


@_settings(30)
@given(pattern=st.sampled_from([("bn", "relu"), ("gelu", "bn", "relu"), ("bn", "bn", "relu"),
                                 ("bn",), ("relu", "bn", "relu"), ()]),
       more=st.lists(st.sampled_from(TAILS), max_size=3),
       channels=st.integers(2, 4), nonneg=st.booleans(), tiny=st.booleans(),
       batch=st.integers(1, 3), classes=st.integers(1, 4), frontend=frontends, seed=seeds)
# conv → BN → ReLU near the stabiliser: fails if the ReLU does not square the ratio BN left
# pending (found by search in about 2 runs of 3; pinned)
@example(pattern=("bn", "relu"), more=[], channels=2, nonneg=False, tiny=True, batch=1,
         classes=1, frontend="export", seed=0)
def test_fused_chain(pattern, more, channels, nonneg, tiny, batch, classes, frontend, seed):
    """conv → a sequence of element-wise rules (fused into one chain, whose running factor
    takes the batch-norm clamp and the BN → ReLU shortcut where they are exact, and the general
    product after other rules) against the oracle; batch-norm scales get both signs from the
    random init. ``pattern`` makes the shortcuts' cases common. ``tiny``: near the stabiliser
    (:func:`_near_stabiliser`), where the shortcuts' ratios (BN's left pending, squared by the
    ReLU) are not ±1."""
    tails = [*pattern, *more] or ["relu"]
    g = torch.Generator().manual_seed(seed)
    layers = [nn.ReLU()] if nonneg else []
    layers += [nn.Conv2d(2, channels, 2), *[_tail(t, channels) for t in tails]]
    model = _randomize(nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * 9, classes)), g)
    x, target = _inputs(g, (batch, 2, 4, 4), classes)
    if tiny:
        x = _near_stabiliser(model, x)
    e = _check_sequential(model, x, target, frontend)
    chains = [m for m in e.graph_module.modules() if type(m).__name__ == "ChainCall"]
    assert chains and chains[0].head.spec.op == "conv"
    assert [t.spec.op for t in chains[0].tail] == [
        {"bn": "batch_norm"}.get(t, t) for t in tails]


# ----------------------------------------------------------------------------- add / sub / mul


def _add(a, b):
    return a + b


def _add_fn(a, b):
    return torch.add(a, b)


def _add_method(a, b):
    return a.add(b)


def _sub(a, b):
    return a - b


def _sub_fn(a, b):
    return torch.sub(a, b)


def _mul(a, b):
    return a * b


def _mul_fn(a, b):
    return torch.mul(a, b)


def _mul_method(a, b):
    return a.mul(b)


BINARY = {
    "a+b": _add, "torch.add": _add_fn, "Tensor.add": _add_method, "a-b": _sub,
    "torch.sub": _sub_fn, "a*b": _mul, "torch.mul": _mul_fn, "Tensor.mul": _mul_method,
}


class TwoBranch(nn.Module):
    """x → [trunk: linear, relu] → (a = linear(x), b = linear(x)) → [relu] → op(a, b) → head.

    Both operands carry relevance; with ``trunk`` the two branches fork mid-network, so the
    relevance of the fork is the sum of the two branches' normalised maps.
    """

    def __init__(self, d: int, k: int, classes: int, op, trunk: bool, nonneg: bool,
                 broadcast: bool) -> None:  # noqa: ANN001
        super().__init__()
        self.trunk = nn.Linear(d, d) if trunk else None
        self.a = nn.Linear(d, k)
        self.b = nn.Linear(d, 1 if broadcast else k)
        self.head = nn.Linear(k, classes)
        self.op = op
        self.nonneg = nonneg

    def forward(self, x: Tensor) -> Tensor:
        if self.trunk is not None:
            x = torch.relu(self.trunk(x))
        a, b = self.a(x), self.b(x)
        if self.nonneg:
            a, b = torch.relu(a), torch.relu(b)
        return self.head(self.op(a, b))

    def oracle(self, x: Tensor, target: Tensor) -> Tensor:
        def lin(m: nn.Linear, t: Tensor) -> Tensor:
            return F.linear(t, m.weight, m.bias)

        t = x
        if self.trunk is not None:
            zt = lin(self.trunk, x)
            t = torch.relu(zt)
        za, zb = lin(self.a, t), lin(self.b, t)
        a, b = (torch.relu(za), torch.relu(zb)) if self.nonneg else (za, zb)
        y = self.op(a, b)
        out = lin(self.head, y)
        assert torch.allclose(out, self(x))
        r_y = oracle.linear(y, self.head.weight, self.head.bias, oracle.one_hot_seed(out, target))
        r_a, r_b = oracle.binary(self.op, a, b, r_y)
        if self.nonneg:
            r_a = oracle.elementwise(torch.relu, za, r_a)
            r_b = oracle.elementwise(torch.relu, zb, r_b)
        r_t = (oracle.linear(t, self.a.weight, self.a.bias, r_a)
               + oracle.linear(t, self.b.weight, self.b.bias, r_b))
        if self.trunk is None:
            return oracle.unit_l1(r_t)
        r_zt = oracle.elementwise(torch.relu, zt, r_t)
        return oracle.unit_l1(oracle.linear(x, self.trunk.weight, self.trunk.bias, r_zt))


@_settings(25)
@given(op=st.sampled_from(sorted(BINARY)), d=st.integers(1, 5), k=st.integers(1, 5),
       trunk=st.booleans(), nonneg=st.booleans(), broadcast=st.booleans(),
       batch=st.integers(1, 3), classes=st.integers(1, 4), frontend=frontends, seed=seeds)
def test_binary_two_activations(op, d, k, trunk, nonneg, broadcast, batch, classes, frontend,
                                seed):
    g = torch.Generator().manual_seed(seed)
    model = _randomize(TwoBranch(d, k, classes, BINARY[op], trunk, nonneg, broadcast), g)
    x, target = _inputs(g, (batch, d), classes)
    expected = model.oracle(x, target)
    got, e = _explain(model, x, target, frontend)
    _assert_close(got, expected)
    if trunk:  # the branches' linears read relu(trunk): the non-negative fast path
        assert _fast_path_used(e, "linear")


class ResidualTail(nn.Module):
    """``t = relu(trunk(x))``, ``y = tails(branch(t) ± t)``, ``head(y)``: a residual merge at the
    head of a fused chain (its ratio taken from the chain: after a ReLU, one squared ratio)."""

    def __init__(self, d: int, classes: int, sub: bool, tails: list[str]) -> None:
        super().__init__()
        self.trunk, self.branch, self.head = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, classes)
        self.tails = nn.Sequential(*[_tail(t, d, nn.BatchNorm1d) for t in tails])
        self.sub = sub

    def merge(self, z: Tensor, t: Tensor) -> Tensor:
        return z - t if self.sub else z + t

    def forward(self, x: Tensor) -> Tensor:
        t = torch.relu(self.trunk(x))
        return self.head(self.tails(self.merge(self.branch(t), t)))

    def oracle(self, x: Tensor, target: Tensor) -> Tensor:
        zt = F.linear(x, self.trunk.weight, self.trunk.bias)
        t = torch.relu(zt)
        z = F.linear(t, self.branch.weight, self.branch.bias)
        steps = [oracle._forward_and_rule(m, False) for m in self.tails]
        acts = [self.merge(z, t)]
        for forward, _ in steps:
            acts.append(forward(acts[-1]))
        out = F.linear(acts[-1], self.head.weight, self.head.bias)
        assert torch.allclose(out, self(x), rtol=1e-10, atol=1e-20)
        r = oracle.linear(acts[-1], self.head.weight, self.head.bias,
                          oracle.one_hot_seed(out, target))
        for (_, rule), a in zip(reversed(steps), reversed(acts[:-1])):
            r = rule(a, r)
        r_z, r_skip = oracle.binary(self.merge, z, t, r)
        r_t = r_skip + oracle.linear(t, self.branch.weight, self.branch.bias, r_z)
        r_zt = oracle.elementwise(torch.relu, zt, r_t)
        return oracle.unit_l1(oracle.linear(x, self.trunk.weight, self.trunk.bias, r_zt))


@_settings(25)
@given(tails=st.lists(st.sampled_from(TAILS), min_size=1, max_size=3),
       relu_first=st.booleans(), sub=st.booleans(), tiny=st.booleans(), d=st.integers(6, 10),
       batch=st.integers(1, 3), classes=st.integers(1, 4), frontend=frontends, seed=seeds)
# two normalised parts that nearly cancel, where the oracle's EPS in r / (Σ|r| + EPS) shows
@example(tails=["dropout"], relu_first=False, sub=True, tiny=True, d=7, batch=3, classes=4,
         frontend="export", seed=15961)
def test_residual_merge_heading_a_chain(tails, relu_first, sub, tiny, d, batch, classes,
                                        frontend, seed):
    """A residual add/sub followed by element-wise rules, against the oracle. ``tiny``: inputs,
    biases and batch-norm shifts near the stabiliser (1e-9), where ``y / (|y| + 1e-9)`` is far
    from ±1 and a ratio taken twice, or not at all, shows (given enough units: with a few, the
    relevance often reaches one unit only, which no factor can change). Also against the unfused
    graph (the map read with ``at=``), an independent path through the same rules."""
    g = torch.Generator().manual_seed(seed)
    model = _randomize(ResidualTail(d, classes, sub, ["relu", *tails] if relu_first else tails),
                       g)
    x, target = _inputs(g, (batch, d), classes)
    if tiny:
        x = _near_stabiliser(model, x)
    expected = model.oracle(x, target)
    got, e = _explain(model, x, target, frontend)
    _assert_close(got, expected)
    unfused = e.explain(x, target=target, contrastive=False, at=["branch"])["input"]
    torch.testing.assert_close(got, unfused, rtol=1e-10, atol=1e-12)


class ParamOperand(nn.Module):
    """x (B, C, L) → [linear over L, [relu]] → op(a, p) or op(p, a) → flatten → head, with ``p``
    a parameter or a buffer: a constant operand that gets no relevance."""

    def __init__(self, c: int, length: int, classes: int, op, pshape: tuple[int, ...],
                 swap: bool, pre: str, buffer: bool) -> None:  # noqa: ANN001
        super().__init__()
        self.lin = nn.Linear(length, length) if pre != "none" else None
        if buffer:
            self.register_buffer("p", torch.randn(pshape))
        else:
            self.p = nn.Parameter(torch.randn(pshape))
        self.head = nn.Linear(c * length, classes)
        self.op, self.swap, self.relu = op, swap, pre == "linear+relu"

    def forward(self, x: Tensor) -> Tensor:
        a = self.lin(x) if self.lin is not None else x
        if self.relu:
            a = torch.relu(a)
        y = self.op(self.p, a) if self.swap else self.op(a, self.p)
        return self.head(y.flatten(1))

    def oracle(self, x: Tensor, target: Tensor) -> Tensor:
        z = F.linear(x, self.lin.weight, self.lin.bias) if self.lin is not None else x
        a = torch.relu(z) if self.relu else z
        operands = (self.p, a) if self.swap else (a, self.p)
        y = self.op(*operands)
        out = F.linear(y.flatten(1), self.head.weight, self.head.bias)
        assert torch.allclose(out, self(x))
        r_y = oracle.linear(y.flatten(1), self.head.weight, self.head.bias,
                            oracle.one_hot_seed(out, target)).reshape(y.shape)
        rel = (False, True) if self.swap else (True, False)
        r_a = oracle.binary(self.op, *operands, r_y, relevant=rel)[int(self.swap)]
        if self.relu:
            r_a = oracle.elementwise(torch.relu, z, r_a)
        if self.lin is not None:
            r_a = oracle.linear(x, self.lin.weight, self.lin.bias, r_a)
        return oracle.unit_l1(r_a)


@_settings(25)
@given(op=st.sampled_from(sorted(BINARY)), c=st.integers(1, 3), length=st.integers(1, 4),
       pshape=st.sampled_from(["full", "channel", "last", "one", "scalar"]), swap=st.booleans(),
       pre=st.sampled_from(["none", "linear", "linear+relu"]), buffer=st.booleans(),
       batch=st.integers(1, 3), classes=st.integers(1, 4), frontend=frontends, seed=seeds)
def test_binary_with_constant_operand(op, c, length, pshape, swap, pre, buffer, batch, classes,
                                      frontend, seed):
    g = torch.Generator().manual_seed(seed)
    shape = {"full": (c, length), "channel": (c, 1), "last": (length,), "one": (1,),
             "scalar": ()}[pshape]
    model = _randomize(ParamOperand(c, length, classes, BINARY[op], shape, swap, pre, buffer), g)
    if buffer:
        model.p.copy_(torch.randn(shape, generator=g, dtype=DT))
    x, target = _inputs(g, (batch, c, length), classes)
    expected = model.oracle(x, target)
    got, _ = _explain(model, x, target, frontend)
    _assert_close(got, expected)


SCALINGS = {
    "a*2.5": lambda a: a * 2.5, "0.5*a": lambda a: 0.5 * a, "a*-0.5": lambda a: a * -0.5,
    "a/3": lambda a: a / 3, "-a": lambda a: -a, "torch.mul(a,3)": lambda a: torch.mul(a, 3.0),
    "a.div(-2)": lambda a: a.div(-2.0), "a*2/4": lambda a: a * 2 / 4,
}


class Scaled(nn.Module):
    def __init__(self, d: int, classes: int, scale, nonneg: bool) -> None:  # noqa: ANN001
        super().__init__()
        self.lin, self.head = nn.Linear(d, d), nn.Linear(d, classes)
        self.scale, self.nonneg = scale, nonneg

    def forward(self, x: Tensor) -> Tensor:
        a = self.lin(x)
        if self.nonneg:
            a = torch.relu(a)
        return self.head(self.scale(a))


@_settings(15)
@given(scale=st.sampled_from(sorted(SCALINGS)), d=st.integers(1, 5), nonneg=st.booleans(),
       batch=st.integers(1, 3), classes=st.integers(1, 4), frontend=frontends, seed=seeds)
def test_mul_by_python_number_is_passthrough(scale, d, nonneg, batch, classes, frontend, seed):
    g = torch.Generator().manual_seed(seed)
    model = _randomize(Scaled(d, classes, SCALINGS[scale], nonneg), g)
    x, target = _inputs(g, (batch, d), classes)
    z = F.linear(x, model.lin.weight, model.lin.bias)
    a = torch.relu(z) if nonneg else z
    y = model.scale(a)
    out = F.linear(y, model.head.weight, model.head.bias)
    r_y = oracle.linear(y, model.head.weight, model.head.bias, oracle.one_hot_seed(out, target))
    r_a = r_y  # data movement: relevance passes unchanged
    if nonneg:
        r_a = oracle.elementwise(torch.relu, z, r_a)
    expected = oracle.unit_l1(oracle.linear(x, model.lin.weight, model.lin.bias, r_a))
    got, e = _explain(model, x, target, frontend)
    _assert_close(got, expected)
    assert not any(n.canonical == "mul" for n in e.report.nodes)


# ----------------------------------------------------------------------------- activations


ACTIVATIONS = {
    "relu": lambda: nn.ReLU(),
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
    "leaky_relu_0.3": lambda: nn.LeakyReLU(0.3),
    "gelu": lambda: nn.GELU(),
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "silu": lambda: nn.SiLU(),
    "sigmoid": lambda: nn.Sigmoid(),
    "tanh": lambda: nn.Tanh(),
    "hardswish": lambda: nn.Hardswish(),
    "hardsigmoid": lambda: nn.Hardsigmoid(),
    "F.relu": lambda: Lambda(F.relu),
    "F.leaky_relu": lambda: Lambda(lambda t: F.leaky_relu(t, 0.2)),
    "F.gelu": lambda: Lambda(F.gelu),
    "F.silu": lambda: Lambda(F.silu),
    "torch.sigmoid": lambda: Lambda(torch.sigmoid),
    "Tensor.tanh": lambda: Lambda(lambda t: t.tanh()),
    "F.hardswish": lambda: Lambda(F.hardswish),
    "F.hardsigmoid": lambda: Lambda(F.hardsigmoid),
}


@_settings(25)
@given(act=st.sampled_from(sorted(ACTIVATIONS)), d=st.integers(1, 6), k=st.integers(1, 6),
       nonneg=st.booleans(), batch=st.integers(1, 3), classes=st.integers(1, 4),
       frontend=frontends, seed=seeds)
def test_activation(act, d, k, nonneg, batch, classes, frontend, seed):
    g = torch.Generator().manual_seed(seed)
    # signed input: linear → act; non-negative input: relu → act
    pre = nn.ReLU() if nonneg else nn.Linear(d, k)
    width = d if nonneg else k
    model = _randomize(nn.Sequential(pre, ACTIVATIONS[act](), nn.Linear(width, classes)), g,
                       scale=1.5)
    x, target = _inputs(g, (batch, d), classes)
    x = x * 2  # reach the saturated parts of hardswish/hardsigmoid/tanh
    _check_sequential(model, x, target, frontend)


# ----------------------------------------------------------------------------- pooling


_MAX_POOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
_AVG_POOL = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
_ADAPTIVE = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}


@st.composite
def pool_cases(draw, dilation: bool):
    n = draw(st.integers(1, 3))
    k = tuple(draw(st.integers(1, 3)) for _ in range(n))
    stride = draw(st.one_of(st.none(), st.tuples(*[st.integers(1, 3)] * n)))
    padding = tuple(draw(st.integers(0, ki // 2)) for ki in k)
    dil = tuple(draw(st.integers(1, 2)) for _ in range(n)) if dilation else (1,) * n
    extra = 2 if n == 3 else 4
    size = []
    for ki, pi, di in zip(k, padding, dil):
        # avg_pool3d wants the unpadded input to hold a kernel (the max pools do not)
        smallest = max(1, di * (ki - 1) + 1 - (2 * pi if dilation else 0))
        size.append(draw(st.integers(smallest, smallest + extra)))
    return dict(n=n, k=k, stride=stride, padding=padding, dilation=dil, size=tuple(size),
                ceil_mode=draw(st.booleans()), channels=draw(st.integers(1, 3)))


def _pool_model(pool: nn.Module, pre: str, shape: tuple[int, ...], classes: int,
                g: torch.Generator) -> nn.Sequential:
    """[relu | conv 1×1 | nothing] → pool → flatten → linear head."""
    c, n = shape[1], len(shape) - 2
    layers = {"relu": [nn.ReLU()], "conv": [_CONV_MODULES[n](c, c, 1)], "none": []}[pre]
    with torch.no_grad():
        features = pool(torch.zeros(1, *shape[1:])).numel()
    return _randomize(nn.Sequential(*layers, pool, nn.Flatten(), nn.Linear(features, classes)), g)


@_settings(25)
@given(case=pool_cases(dilation=True), pre=st.sampled_from(["none", "relu", "conv"]),
       divide=st.sampled_from([None, False, True]), batch=st.integers(1, 3),
       classes=st.integers(1, 4), frontend=frontends, seed=seeds)
def test_max_pool(case, pre, divide, batch, classes, frontend, seed):
    """Default (divide None): s = R_y; max_pool_divide=True: s = R_y / (|h| + 1e-9)."""
    g = torch.Generator().manual_seed(seed)
    pool = _MAX_POOL[case["n"]](case["k"], stride=case["stride"], padding=case["padding"],
                                dilation=case["dilation"], ceil_mode=case["ceil_mode"])
    shape = (batch, case["channels"], *case["size"])
    # a dilated window can fall on padding only (output -inf): not a valid model
    assume(bool(torch.isfinite(pool(torch.zeros(1, *shape[1:]))).all()))
    model = _pool_model(pool, pre, shape, classes, g)
    x, target = _inputs(g, shape, classes)
    options = {} if divide is None else {"max_pool_divide": divide}
    _check_sequential(model, x, target, frontend, **options)


@_settings(20)
@given(case=pool_cases(dilation=False), pre=st.sampled_from(["none", "relu", "conv"]),
       count_include_pad=st.booleans(), divisor=st.sampled_from([None, 1, 3]),
       batch=st.integers(1, 3), classes=st.integers(1, 4), frontend=frontends, seed=seeds)
def test_avg_pool(case, pre, count_include_pad, divisor, batch, classes, frontend, seed):
    g = torch.Generator().manual_seed(seed)
    extra = {} if case["n"] == 1 else {"divisor_override": divisor}
    pool = _AVG_POOL[case["n"]](case["k"], stride=case["stride"], padding=case["padding"],
                                ceil_mode=case["ceil_mode"], count_include_pad=count_include_pad,
                                **extra)
    shape = (batch, case["channels"], *case["size"])
    model = _pool_model(pool, pre, shape, classes, g)
    x, target = _inputs(g, shape, classes)
    _check_sequential(model, x, target, frontend)


@_settings(15)
@given(n=st.integers(1, 3), data=st.data(), pre=st.sampled_from(["none", "relu", "conv"]),
       batch=st.integers(1, 3), classes=st.integers(1, 4), frontend=frontends, seed=seeds)
def test_adaptive_avg_pool(n, data, pre, batch, classes, frontend, seed):
    g = torch.Generator().manual_seed(seed)
    size = tuple(data.draw(st.integers(1, 5 if n < 3 else 3)) for _ in range(n))
    out = tuple(data.draw(st.integers(1, 3)) for _ in range(n))
    shape = (batch, data.draw(st.integers(1, 3)), *size)
    model = _pool_model(_ADAPTIVE[n](out), pre, shape, classes, g)
    x, target = _inputs(g, shape, classes)
    _check_sequential(model, x, target, frontend)


# ----------------------------------------------------------------------------- mean, sum


REDUCTIONS = {
    "Tensor.mean": lambda dims, keep: lambda t: t.mean(dims, keepdim=keep),
    "torch.mean": lambda dims, keep: lambda t: torch.mean(t, dim=dims, keepdim=keep),
    "Tensor.sum": lambda dims, keep: lambda t: t.sum(dims, keepdim=keep),
    "torch.sum": lambda dims, keep: lambda t: torch.sum(t, dim=dims, keepdim=keep),
}


@_settings(20)
@given(kind=st.sampled_from(sorted(REDUCTIONS)),
       dims=st.lists(st.integers(1, 3), min_size=1, max_size=3, unique=True),
       keepdim=st.booleans(), pre=st.sampled_from(["none", "relu", "conv"]),
       size=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4)),
       batch=st.integers(1, 3), classes=st.integers(1, 4), frontend=frontends, seed=seeds)
def test_mean_and_sum(kind, dims, keepdim, pre, size, batch, classes, frontend, seed):
    g = torch.Generator().manual_seed(seed)
    keepdim = keepdim or len(dims) == 3  # keep (B, 1, 1, 1) for the flatten → head
    dims = sorted(dims) if len(dims) > 1 else dims[0]
    reduce = Lambda(REDUCTIONS[kind](dims, keepdim))
    shape = (batch, *size)
    model = _pool_model(reduce, pre, shape, classes, g)
    x, target = _inputs(g, shape, classes)
    _check_sequential(model, x, target, frontend)


# ----------------------------------------------------------------------------- dropout


DROPOUTS = {
    "nn.Dropout": lambda: nn.Dropout(0.3),
    "nn.Dropout1d": lambda: nn.Dropout1d(0.5),
    "F.dropout": lambda: Lambda(lambda t: F.dropout(t, 0.2, training=False)),
}


@_settings(15)
@given(kind=st.sampled_from(sorted(DROPOUTS)), d=st.integers(1, 5), length=st.integers(1, 3),
       nonneg=st.booleans(), batch=st.integers(1, 3), classes=st.integers(1, 4),
       frontend=frontends, seed=seeds)
def test_eval_dropout_is_a_compute_op(kind, d, length, nonneg, batch, classes, frontend, seed):
    """Eval dropout is f = identity with the absLRP rule: R_x = 2 x⁺ s, normalised (the oracle
    applies h + ha = x + |x|), not a passthrough."""
    g = torch.Generator().manual_seed(seed)
    pre = [nn.Linear(length, length)] + ([nn.ReLU()] if nonneg else [])
    model = _randomize(nn.Sequential(*pre, DROPOUTS[kind](), nn.Flatten(),
                                     nn.Linear(d * length, classes)), g)
    x, target = _inputs(g, (batch, d, length), classes)
    e = _check_sequential(model, x, target, frontend)
    assert any(n.canonical == "dropout" and n.status == "rule" for n in e.report.nodes)


# ----------------------------------------------------------------------------- data movement


class Movement(nn.Module):
    """z = linear(x) (B, T, D) → permute, view, slice with step, neg/div by number, cat,
    unsqueeze+expand, transpose, flatten, select z[:, 0], cat → head. Every op but the two
    linears (and the optional relu) is data movement."""

    def __init__(self, t: int, d: int, classes: int, lo: int, hi: int, step: int,
                 nonneg: bool) -> None:
        super().__init__()
        self.lin = nn.Linear(d, d)
        self.lo, self.hi, self.step, self.nonneg = lo, hi, step, nonneg
        n = t * d + len(range(lo, hi, step))
        self.head = nn.Linear(2 * n + d, classes)

    def forward(self, x: Tensor) -> Tensor:
        z = self.lin(x)
        if self.nonneg:
            z = torch.relu(z)
        p = z.permute(0, 2, 1)
        q = p.contiguous().view(z.shape[0], -1) * 2.5
        u = q[:, self.lo:self.hi:self.step]
        v = torch.cat([q, -u / 3.0], dim=1)
        w = v.unsqueeze(1).expand(-1, 2, -1)
        f = w.transpose(1, 2).flatten(1)
        return self.head(torch.cat([f, z[:, 0]], dim=1))


@_settings(15)
@given(t=st.integers(1, 4), d=st.integers(1, 4), data=st.data(), nonneg=st.booleans(),
       batch=st.integers(1, 3), classes=st.integers(1, 4), frontend=frontends, seed=seeds)
def test_data_movement_passes_relevance_unchanged(t, d, data, nonneg, batch, classes, frontend,
                                                  seed):
    g = torch.Generator().manual_seed(seed)
    lo = data.draw(st.integers(0, t * d - 1))
    hi = data.draw(st.integers(lo + 1, t * d))
    step = data.draw(st.integers(1, 3))
    model = _randomize(Movement(t, d, classes, lo, hi, step, nonneg), g)
    x, target = _inputs(g, (batch, t, d), classes)

    # oracle, chained by hand: forward ...
    z0 = F.linear(x, model.lin.weight, model.lin.bias)
    z = torch.relu(z0) if nonneg else z0
    q = z.permute(0, 2, 1).reshape(batch, d * t) * 2.5
    u = q[:, lo:hi:step]
    v = torch.cat([q, -u / 3.0], dim=1)
    n = v.shape[1]
    f = v.unsqueeze(2).expand(-1, -1, 2).reshape(batch, 2 * n)
    head_in = torch.cat([f, z[:, 0]], dim=1)
    out = F.linear(head_in, model.head.weight, model.head.bias)
    assert torch.allclose(out, model(x))
    # ... and backward: the inverse of each data movement, fan-outs summed
    r = oracle.linear(head_in, model.head.weight, model.head.bias,
                      oracle.one_hot_seed(out, target))
    r_f, r_select = r[:, :2 * n], r[:, 2 * n:]
    r_v = r_f.reshape(batch, n, 2).sum(2)  # transpose back, then the expanded copies summed
    r_q = r_v[:, :t * d].clone()
    r_q[:, lo:hi:step] += r_v[:, t * d:]
    r_z = r_q.reshape(batch, d, t).permute(0, 2, 1).clone()
    r_z[:, 0] += r_select
    if nonneg:
        r_z = oracle.elementwise(torch.relu, z0, r_z)
    expected = oracle.unit_l1(oracle.linear(x, model.lin.weight, model.lin.bias, r_z))

    got, e = _explain(model, x, target, frontend)
    _assert_close(got, expected)
    assert {n.canonical for n in e.report.nodes if n.status == "rule"} <= {"linear", "relu"}


class ShapeArithmetic(nn.Module):
    """``b, c, l = x.shape; x.reshape(b, c * l)``: arithmetic on sizes, not on tensors."""

    def __init__(self, c: int, length: int, classes: int) -> None:
        super().__init__()
        self.head = nn.Linear(c * length, classes)

    def forward(self, x: Tensor) -> Tensor:
        b, c, length = x.shape
        return self.head(x.reshape(b, c * length))


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_shape_arithmetic_is_not_a_tensor_op(frontend):
    g = torch.Generator().manual_seed(0)
    model = _randomize(ShapeArithmetic(2, 3, 4), g)
    x, target = _inputs(g, (2, 2, 3), 4)
    out = F.linear(x.reshape(2, 6), model.head.weight, model.head.bias)
    expected = oracle.unit_l1(oracle.linear(
        x.reshape(2, 6), model.head.weight, model.head.bias, oracle.one_hot_seed(out, target)
    ).reshape(x.shape))
    got, _ = _explain(model, x, target, frontend)
    _assert_close(got, expected)


@pytest.mark.parametrize("frontend", ["export", "symbolic_trace"])
def test_shape_arithmetic_gets_no_rule(frontend):
    model = ShapeArithmetic(2, 3, 4).eval()
    e = lrpfx.compile(model, frontend=frontend)
    e.explain(torch.randn(2, 2, 3), target=0, contrastive=False)
    assert [n.canonical for n in e.report.nodes if n.status == "rule"] == ["linear"]


# ----------------------------------------------------------------------------- whole nets


def _conv_net(c: int, classes: int, g: torch.Generator) -> nn.Sequential:
    return _randomize(nn.Sequential(
        nn.Conv2d(c, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, stride=1, padding=1, groups=2, bias=False), nn.ReLU(),
        nn.Dropout(0.5), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 8), nn.GELU(),
        nn.Linear(8, classes),
    ), g, scale=0.5)


@_settings(6)
@given(c=st.integers(1, 3), h=st.integers(4, 7), w=st.integers(4, 7), batch=st.integers(1, 3),
       classes=st.integers(2, 5), seed=seeds)
def test_frontends_agree_on_a_conv_net(c, h, w, batch, classes, seed):
    g = torch.Generator().manual_seed(seed)
    model = _conv_net(c, classes, g)
    x, target = _inputs(g, (batch, c, h, w), classes)
    maps = {}
    for frontend in FRONTENDS:
        e = lrpfx.compile(model, frontend=frontend)
        maps[frontend] = (e.explain(x, target=target, contrastive=False),
                          e.explain(x, target=target))
    for a, b in zip(maps["export"], maps["symbolic_trace"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
    # and the whole chain against the oracle: positive map, then the contrastive one
    # (positive − negative from the uniform non-target seed, scaled to max|R| = 1)
    positive = oracle.sequential_relevance(model, x, target)
    _assert_close(maps["export"][0], positive)
    out = model(x).detach()
    onehot = oracle.one_hot_seed(out, target)
    negative = oracle.sequential_relevance(model, x, target, seed=(1 - onehot) / (classes - 1))
    diff = positive - negative
    contrastive = diff / (diff.abs().reshape(batch, -1).amax(1).reshape(-1, 1, 1, 1) + oracle.EPS)
    _assert_close(maps["export"][1], contrastive)


@_settings(25)
@given(d=st.integers(1, 6), hidden=st.integers(1, 6), batch=st.integers(1, 3),
       frontend=frontends, seed=seeds)
def test_eq12_closed_form_two_layer_relu(d, hidden, batch, frontend, seed):
    """Eq. 12 on x → z = W1 x → a = relu(z) → out = w2·a (no biases, one output).

    Output layer: R_out = 1, s = 1/|out|, R_a ∝ a ⊙ (w2 + sign(a)|w2|) = 2 (a ⊙ w2)⁺ (a ≥ 0).
    ReLU: R_z = z (1[z>0] + sign z) R_a/|a| = 2 R_a where z > 0 (and R_a = 0 where a = 0).
    First layer: R_i = x_i Σ_j (W1_ji + sign(x_i)|W1_ji|) R_z_j/|z_j|
                     = 2 Σ_j (x_i W1_ji)⁺ R_z_j/|z_j|.
    The factors 2 and every normaliser cancel in the final unit-L1 normalisation, so
    R_i ∝ Σ_j (x_i W1_ji)⁺ (a_j w2_j)⁺ / |z_j| over the active units j.
    """
    g = torch.Generator().manual_seed(seed)
    model = _randomize(nn.Sequential(nn.Linear(d, hidden, bias=False), nn.ReLU(),
                                     nn.Linear(hidden, 1, bias=False)), g, scale=1.0)
    x = torch.randn(batch, d, generator=g, dtype=DT)
    w1, w2 = model[0].weight.detach(), model[2].weight.detach()[0]
    z = x @ w1.T
    a = z.clamp(min=0)
    # only the per-element stabiliser (s = R/(|z| + 1e-9)) survives the normalisations:
    # stay away from it
    assume(bool((z.abs() > 1e-2).all()))
    upper = (a * w2).clamp(min=0) / z.abs()  # (B, hidden); 0 where z <= 0
    lower = (x[:, :, None] * w1.T[None]).clamp(min=0)  # (B, d, hidden): (x_i W1_ji)⁺
    v = (lower * upper[:, None, :]).sum(2)
    total = v.sum(1, keepdim=True)
    # no unit with a_j w2_j > 0: no relevance at all, the map is 0
    expected = torch.where(total > 0, v / total.clamp(min=1e-300), torch.zeros_like(v))
    got, _ = _explain(model, x, torch.zeros(batch, dtype=torch.long), frontend)
    _assert_close(got, expected)


@pytest.mark.parametrize("w2,expected", [
    ((-1.0, 2.0), (0.5, 0.5)), ((-5.0, 6.0), (0.25, 0.75)), ((-17.0, 18.0), (0.1, 0.9)),
])
def test_eq12_figure1_via_oracle(w2, expected):
    """The oracle itself reproduces Figure 1 (DESIGN.md §4.3), and so does lrpfx."""
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False))
    model = model.to(DT).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([(2.0, -1.0), w2], dtype=DT))
        model[2].weight.fill_(1.0)
    x = torch.ones(1, 2, dtype=DT)
    target = torch.zeros(1, dtype=torch.long)
    want = torch.tensor([expected], dtype=DT)
    _assert_close(oracle.sequential_relevance(model, x, target), want)
    _assert_close(_explain(model, x, target, "export")[0], want)


def test_oracle_matches_hand_formula_for_linear():
    """Guard on the oracle itself: R_x = x ⊙ (Wᵀs + sign(x) ⊙ |W|ᵀs), normalised."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, generator=g, dtype=DT)
    w = torch.randn(4, 5, generator=g, dtype=DT)
    b = torch.randn(4, generator=g, dtype=DT)
    r = torch.randn(3, 4, generator=g, dtype=DT)
    s = r / ((x @ w.T + b).abs() + 1e-9)
    hand = x * (s @ w + torch.sign(x) * (s @ w.abs()))
    hand = hand / (hand.abs().sum(1, keepdim=True) + 1e-9)
    torch.testing.assert_close(oracle.linear(x, w, b, r), hand, rtol=1e-12, atol=1e-15)


def test_max_pool_default_does_not_divide():
    """DESIGN.md §4.1: at the winning positions R_x = 2·x·R_y (s = R_y) before normalisation."""
    x = torch.tensor([[[1.0, -3.0, 2.0, 0.5]]], dtype=DT)  # windows (1, -3) and (2, 0.5)
    r_y = torch.tensor([[[1.0, 1.0]]], dtype=DT)
    pool = nn.MaxPool1d(2)
    got = oracle.elementwise(pool, x, r_y, divide=False)
    # h = (1, 2), ha = (3, 2): winners of h at 1 and 2, of ha at -3 and 2:
    # VJP = (1, sign(-3)·1, 1 + 1, 0) → R = x ⊙ VJP = (1, 3, 4, 0), then unit L1
    want = torch.tensor([[[1.0, 3.0, 4.0, 0.0]]], dtype=DT) / (8 + 1e-9)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
