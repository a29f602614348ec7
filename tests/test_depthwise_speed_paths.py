"""The fast paths taken on depthwise-conv nets (EfficientNet-Lite, MobileNetV3; issue #19 part 5)
against float64 oracles that never touch lrpfx, on small nets with hypothesis-drawn weights.

- absLRP: ReLU6's closed-form factor ``[0 < y < m] ratio(y)`` and its fused-chain ``through``
  (after batch norm: ``ratio(y)²``), hardswish/hardsigmoid derivatives by their backward
  kernels, average pooling as ``(1 + sign x) ⊙ Tᵀs``; against ``tests/oracle.py``.
- LRP rule sets: what the backward reads computed once per forward (``RuleSpec.prepare`` in
  ``LRPFunction``): ``ρ_ε(y)``, ``f(x)/x``, the ratios ``y / z±`` of αβ and z⁺ (depthwise and
  ``[W⁺, W⁻]`` concatenated transposes, inputs of either sign), flat/w²'s ``y / z``; against a
  dense-matrix oracle chained layer by layer (activations pass relevance unchanged).
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

D = torch.float64
pytestmark = pytest.mark.filterwarnings("ignore:the relevance map:RuntimeWarning")


def _settings(n: int) -> settings:
    return settings(max_examples=n, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


class ReLU6(nn.ReLU6):
    oracle_compute = True  # the oracle's generic element-wise rule: VJP of f(x) + f(|x|)


class Hardtanh(nn.Hardtanh):
    oracle_compute = True


_ACTS = {
    "relu6": ReLU6,
    "relu": nn.ReLU,
    "hardswish": nn.Hardswish,
    "hardsigmoid": nn.Hardsigmoid,
    "hardtanh": lambda: Hardtanh(-1.0, 1.0),        # not a ReLU6: the generic rule
    "hardtanh_pos": lambda: Hardtanh(0.5, 2.0),     # min > 0: the generic rule
    "none": nn.Identity,
}


def _near_stabiliser(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if name.endswith(("bias", "running_mean")):
                t.mul_(1e-9)
    return x * 1e-9


def _randomize(model: nn.Module, g: torch.Generator, scale: float) -> nn.Module:
    model = model.to(D).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=D) * scale)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g, dtype=D))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g, dtype=D) + 0.1)
    return model


def _block(c: int, expand: int, k: int, stride: int, act1: str, act2: str, bn: bool,
           pool: str, classes: int) -> nn.Sequential:
    """An inverted-residual-like chain: 1×1 expansion, depthwise k×k, 1×1 projection, pooling."""
    cm = c * expand

    def norm(n: int) -> list[nn.Module]:
        return [nn.BatchNorm2d(n)] if bn else []

    layers = [nn.Conv2d(c, cm, 1), *norm(cm), _ACTS[act1](),
              nn.Conv2d(cm, cm, k, stride, k // 2, groups=cm), *norm(cm), _ACTS[act2](),
              nn.Conv2d(cm, 3, 1), *norm(3),
              nn.AdaptiveAvgPool2d(1) if pool == "adaptive" else nn.AvgPool2d(2), nn.Flatten()]
    features = nn.Sequential(*layers)
    width = features(torch.zeros(1, c, 6, 6)).shape[1]
    return nn.Sequential(*layers, nn.Linear(width, classes))


# ------------------------------------------------------------------------------------ absLRP


@_settings(40)
@given(c=st.integers(1, 3), expand=st.integers(1, 3), k=st.sampled_from([1, 3]),
       stride=st.sampled_from([1, 2]), act1=st.sampled_from(sorted(_ACTS)),
       act2=st.sampled_from(["relu6", "relu6", "hardswish", "hardtanh_pos", "relu"]),
       bn=st.booleans(), pool=st.sampled_from(["adaptive", "avg"]),
       scale=st.sampled_from([0.7, 3.0]), nonneg=st.booleans(), tiny=st.booleans(),
       classes=st.integers(2, 4), frontend=st.sampled_from(["export", "symbolic_trace"]),
       seed=st.integers(0, 2**31 - 1))
@example(c=2, expand=2, k=3, stride=1, act1="relu6", act2="relu6", bn=True, pool="adaptive",
         scale=0.7, nonneg=False, tiny=True, classes=3, frontend="export", seed=3)
def test_abslrp_depthwise_chain(c, expand, k, stride, act1, act2, bn, pool, scale, nonneg, tiny,
                                classes, frontend, seed):
    g = torch.Generator().manual_seed(seed)
    model = _randomize(_block(c, expand, k, stride, act1, act2, bn, pool, classes), g, scale)
    x = torch.randn(2, c, 6, 6, generator=g, dtype=D) * 3  # ReLU6 clamps at 6 somewhere
    if nonneg:
        x = x.abs()
    if tiny:  # pre-activations near the stabiliser, where y / (|y| + 1e-9) is far from ±1: a
        # ratio taken twice or not at all (a fused chain's pending ratio) changes the map
        x = _near_stabiliser(model, x)
    target = torch.randint(0, classes, (2,), generator=g)
    expected = oracle.sequential_relevance(model, x, target)
    smallest, oracle.SMALLEST_MASS[0] = oracle.SMALLEST_MASS[0], float("inf")
    if currently_in_test_context():  # relevance cancelled to rounding noise
        assume(smallest > 1e-6)
    got = lrpfx.compile(model, frontend=frontend).explain(x, target=target, contrastive=False)
    atol = 1e-9 + 10 * oracle.EPS / smallest
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=atol)


def test_relu6_clamped_and_negative_inputs_get_nothing():
    """ReLU6 passes relevance only where 0 < x < 6 (its derivative is 0 at and past both ends)."""
    model = nn.Sequential(ReLU6(), nn.Flatten(), nn.Linear(4, 1, bias=False)).to(D).eval()
    with torch.no_grad():
        model[2].weight.fill_(1.0)
    x = torch.tensor([[-1.0, 2.0, 6.0, 7.0]], dtype=D)
    got = lrpfx.compile(model).explain(x, target=0, contrastive=False)
    torch.testing.assert_close(got, torch.tensor([[0.0, 1.0, 0.0, 0.0]], dtype=D))


# --------------------------------------------------------------------------------- LRP rules


@pytest.mark.parametrize("act", [nn.ReLU, ReLU6, nn.Hardswish])
def test_lrp_activation_passes_relevance_and_zero_inputs_get_none(act):
    """LRP passes relevance through an activation unchanged (``G ⊙ f(x)/x``); at ``x = 0`` the
    factor is 0, never 0/0."""
    model = nn.Sequential(act(), nn.Flatten(), nn.Linear(5, 1, bias=False)).to(D).eval()
    with torch.no_grad():
        model[2].weight.copy_(torch.tensor([[1.0, 2.0, -1.0, 1.0, 0.5]], dtype=D))
    x = torch.tensor([[0.0, 2.0, 7.0, -1.0, 0.0]], dtype=D)
    got = lrpfx.compile(model, rule="lrp0").explain(x, target=0, contrastive=False,
                                                    normalize=False)
    y = act()(x)
    expected = y * model[2].weight  # R at the activation's output, passed unchanged
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected)


def _dense(fn, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """``(W, b)`` with ``fn(x) = W x + b`` on flattened inputs of ``shape`` (fn affine)."""
    n = int(torch.tensor(shape).prod())
    zero = fn(torch.zeros(1, *shape, dtype=D)).reshape(-1)
    cols = fn(torch.eye(n, dtype=D).reshape(n, *shape)).reshape(n, -1) - zero
    return cols.T, zero


def _lrp_layer(rule: str, x: Tensor, wmat: Tensor, bias: Tensor, r: Tensor, *, eps: float,
               alpha: float = 1.0, beta: float = 0.0, fields: Tensor | None = None) -> Tensor:
    """Relevance of the flattened input ``x`` (batch, n) of an affine layer from ``r``."""
    z = x[:, None, :] * wmat[None]
    if rule == "epsilon":
        den = z.sum(2) + bias
        den = den + eps * torch.where(den >= 0, 1.0, -1.0).to(D)
        return (z / den[..., None] * r[..., None]).sum(1)
    if rule in ("alphabeta", "zplus"):
        b = bias if rule == "alphabeta" else torch.zeros_like(bias)
        zp, zn = z.clamp(min=0), z.clamp(max=0)
        dp, dn = zp.sum(2) + b.clamp(min=0), zn.sum(2) + b.clamp(max=0)
        sp = torch.where(dp != 0, r / torch.where(dp != 0, dp, 1.0), 0.0)
        sn = torch.where(dn != 0, r / torch.where(dn != 0, dn, 1.0), 0.0)
        return (alpha * zp * sp[..., None] - beta * zn * sn[..., None]).sum(1)
    if rule in ("flat", "wsquare"):
        assert fields is not None
        share = fields / fields.sum(1, keepdim=True)
        return (share[None] * r[..., None]).sum(1)
    raise ValueError(rule)


# rule set → (first layer, convolutions, other affine ops and pooling, ε, α, β)
_RULESETS = {
    "epsilon": ("epsilon", "epsilon", "epsilon", 0.25, 1.0, 0.0),
    "zplus": ("zplus", "zplus", "zplus", 0.0, 1.0, 0.0),
    "alphabeta": ("alphabeta", "alphabeta", "alphabeta", 0.0, 1.0, 0.0),
    "alpha2beta1": ("alphabeta", "alphabeta", "alphabeta", 0.0, 2.0, 1.0),
    "flat": ("flat", "epsilon", "epsilon", 0.25, 1.0, 0.0),
    "wsquare": ("wsquare", "epsilon", "epsilon", 0.25, 1.0, 0.0),
    "epsilon_plus_flat": ("flat", "zplus", "epsilon", 0.25, 1.0, 0.0),
    "epsilon_alpha2beta1_flat": ("flat", "alphabeta", "epsilon", 0.25, 2.0, 1.0),
}


def _lrp_oracle(model: nn.Sequential, x: Tensor, target: int, ruleset: str) -> Tensor:
    first, conv_rule, other, eps, alpha, beta = _RULESETS[ruleset]
    acts = [x]
    with torch.no_grad():
        for layer in model:
            acts.append(layer(acts[-1]))
    out = acts[-1]
    r = torch.zeros_like(out)
    r[:, target] = out[:, target]  # classic LRP starts from the logit
    for i in reversed(range(len(model))):
        layer, a = model[i], acts[i]
        if not isinstance(layer, (nn.Conv2d, nn.Linear, nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            r = r.reshape(a.shape)  # activations and data movement pass relevance unchanged
            continue
        wmat, bias = _dense(layer, a.shape[1:])
        rule = first if i == 0 else conv_rule if isinstance(layer, nn.Conv2d) else other
        fields = None
        if rule in ("flat", "wsquare"):
            w = torch.ones_like(layer.weight) if rule == "flat" else layer.weight ** 2
            st_ = (layer.stride, layer.padding, layer.dilation, layer.groups)
            fields, _ = _dense(lambda t, w=w, st_=st_: F.conv2d(t, w, None, *st_), a.shape[1:])
        r = _lrp_layer(rule, a.reshape(a.shape[0], -1), wmat, bias, r.reshape(r.shape[0], -1),
                       eps=eps, alpha=alpha if rule == "alphabeta" else 1.0,
                       beta=beta if rule == "alphabeta" else 0.0, fields=fields)
    return r.reshape(x.shape)


@_settings(40)
@given(ruleset=st.sampled_from(sorted(_RULESETS)), c=st.integers(1, 2),
       expand=st.integers(1, 3), k=st.sampled_from([1, 3]), stride=st.sampled_from([1, 2]),
       act1=st.sampled_from(["relu6", "hardswish", "none", "relu"]),
       act2=st.sampled_from(["relu6", "hardswish", "none"]),
       pool=st.sampled_from(["adaptive", "avg"]), nonneg=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_lrp_depthwise_chain(ruleset, c, expand, k, stride, act1, act2, pool, nonneg, seed):
    g = torch.Generator().manual_seed(seed)
    model = _randomize(_block(c, expand, k, stride, act1, act2, False, pool, 3), g, 1.0)
    x = torch.randn(2, c, 6, 6, generator=g, dtype=D) * 3
    if nonneg:
        x = x.abs()
    target = int(torch.randint(0, 3, (), generator=g))
    expected = _lrp_oracle(model, x, target, ruleset)
    e = lrpfx.compile(model, rule=ruleset, frontend="symbolic_trace")
    got = e.explain(x, target=target, contrastive=False, normalize=False)
    scale = expected.abs().max().item()
    torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-9 * max(scale, 1.0))


@pytest.mark.parametrize("ruleset", ["epsilon_plus_flat", "alpha2beta1", "epsilon", "abslrp"])
def test_backward_passes_share_the_forward(ruleset):
    """The per-forward tensors are read, never consumed: a second backward pass from the same
    forward (as a contrastive map runs) gives the same gradient as the first."""
    g = torch.Generator().manual_seed(0)
    model = _randomize(_block(2, 2, 3, 1, "hardswish", "relu6", True, "adaptive", 3), g, 1.0)
    x = torch.randn(2, 2, 6, 6, generator=g, dtype=D).requires_grad_(True)
    e = lrpfx.compile(model, rule=ruleset)
    out = e(x)
    seed = torch.zeros_like(out)
    seed[:, 1] = 1.0
    (first,) = torch.autograd.grad(out, x, seed, retain_graph=True)
    (second,) = torch.autograd.grad(out, x, seed)
    assert first.abs().sum() > 0
    torch.testing.assert_close(first, second, rtol=0, atol=0)
