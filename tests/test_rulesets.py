"""Rule sets beyond absLRP (issue #5): equalities between rule sets, float64 oracles written from
each formula, completeness, residual splitting, composites, relevance at inner nodes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lrpfx
from lrpfx.rules import RULESETS, composite

D = torch.float64


def _raw(model: nn.Module, x: torch.Tensor, rule: str | object, target=0, **options):
    e = lrpfx.compile(model, rule=rule, frontend="symbolic_trace", **options)
    return e.explain(x, target=target, contrastive=False, normalize=False)


def _relu_net(depth: int, width: int, bias: bool, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    d_in = 5
    for _ in range(depth):
        layers += [nn.Linear(d_in, width, bias=bias), nn.ReLU()]
        d_in = width
    layers.append(nn.Linear(d_in, 3, bias=bias))
    return nn.Sequential(*layers).to(D).eval()


# ------------------------------------------------------------------ equalities (DESIGN.md §5)


@settings(max_examples=12, deadline=None)
@given(depth=st.integers(1, 3), width=st.integers(1, 8), bias=st.booleans(),
       seed=st.integers(0, 2**16))
def test_lrp0_equals_gradient_x_input_on_relu_networks(depth, width, bias, seed):
    net = _relu_net(depth, width, bias, seed)
    x = torch.randn(4, 5, dtype=D)
    lrp0 = _raw(net, x, "lrp0", target=1)
    xg = x.clone().requires_grad_(True)
    net(xg)[:, 1].sum().backward()
    torch.testing.assert_close(lrp0, x * xg.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(_raw(net, x, "gradient_x_input", target=1), lrp0, rtol=0,
                               atol=1e-12)
    torch.testing.assert_close(_raw(net, x, "gradient", target=1), xg.grad, rtol=0, atol=1e-12)


@settings(max_examples=10, deadline=None)
@given(depth=st.integers(1, 3), width=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_deeplift_zero_baseline_equals_lrp0_without_bias(depth, width, seed):
    net = _relu_net(depth, width, False, seed)
    x = torch.randn(4, 5, dtype=D)
    torch.testing.assert_close(_raw(net, x, "deeplift_rescale", target=2),
                               _raw(net, x, "lrp0", target=2), rtol=1e-10, atol=1e-12)


@settings(max_examples=8, deadline=None)
@given(depth=st.integers(1, 3), width=st.integers(2, 8), seed=st.integers(0, 2**16))
def test_deeplift_summation_to_delta_with_bias_and_baseline(depth, width, seed):
    net = _relu_net(depth, width, True, seed)
    x, base = torch.randn(3, 5, dtype=D), torch.randn(1, 5, dtype=D)
    r = _raw(net, x, "deeplift_rescale", target=0, baseline=base)
    torch.testing.assert_close(r.sum(1), (net(x) - net(base))[:, 0].detach(), rtol=1e-9,
                               atol=1e-10)


@settings(max_examples=8, deadline=None)
@given(depth=st.integers(1, 3), width=st.integers(2, 8), bias=st.booleans(),
       seed=st.integers(0, 2**16))
def test_integrated_gradients_completeness(depth, width, bias, seed):
    net = _relu_net(depth, width, bias, seed)
    for i, m in enumerate(net):  # smooth: Gauss–Legendre converges fast (ReLU kinks do not)
        if isinstance(m, nn.ReLU):
            net[i] = nn.Softplus()
    x = torch.randn(3, 5, dtype=D)
    r = _raw(net, x, "integrated_gradients", target=1, steps=32, internal_batch_size=40)
    delta = (net(x) - net(torch.zeros_like(x)))[:, 1].detach()
    torch.testing.assert_close(r.sum(1), delta, rtol=1e-6, atol=1e-9)


def test_integrated_gradients_matches_captum():
    captum = pytest.importorskip("captum.attr")
    net = _relu_net(2, 6, True, 0)
    net[-1] = nn.Sequential(net[-1], nn.Tanh())
    x = torch.randn(4, 5, dtype=D)
    ours = _raw(net, x, "integrated_gradients", target=2, steps=50)
    ref = captum.IntegratedGradients(net).attribute(x, target=2, n_steps=50,
                                                    method="gausslegendre")
    torch.testing.assert_close(ours, ref, rtol=1e-8, atol=1e-10)


def test_epsilon_tends_to_lrp0():
    net = _relu_net(3, 8, True, 3)
    x = torch.randn(4, 5, dtype=D)
    lrp0 = _raw(net, x, "lrp0")
    errors = [(_raw(net, x, "epsilon", epsilon=e) - lrp0).abs().max().item()
              for e in (1e-1, 1e-3, 1e-5, 1e-7)]
    assert all(a > b for a, b in zip(errors, errors[1:]))
    assert errors[-1] < 1e-5 * lrp0.abs().max()


# ------------------------------------------------------- oracles straight from the formulas


def _contributions(layer: nn.Module, x: torch.Tensor):
    """(z, b, fields): contributions z[b, j, i] = x_i w_ji, bias b[j] and the receptive-field
    indicator fields[j, i] (1 where input i feeds output j), for a dense or 2-d conv layer, with
    outputs and inputs flattened."""
    if isinstance(layer, nn.Linear):
        w = layer.weight
        z = x[:, None, :] * w[None]
        fields = torch.ones_like(w)
        wmat = w
        bias = layer.bias if layer.bias is not None else torch.zeros(w.shape[0], dtype=D)
        return z, bias, fields, wmat
    # conv: build the dense matrix of the convolution column by column
    n_in = x[0].numel()
    eye = torch.eye(n_in, dtype=D).reshape(n_in, *x.shape[1:])
    wmat = F.conv2d(eye, layer.weight, None, layer.stride, layer.padding).reshape(n_in, -1).T
    ones_w = torch.ones_like(layer.weight)
    fields = F.conv2d(eye, ones_w, None, layer.stride, layer.padding).reshape(n_in, -1).T
    z = x.reshape(x.shape[0], 1, -1) * wmat[None]
    out_c = layer.weight.shape[0]
    per = wmat.shape[0] // out_c
    bias = (layer.bias if layer.bias is not None else torch.zeros(out_c, dtype=D)
            ).repeat_interleave(per)
    return z, bias, fields, wmat


def _oracle(rule: str, z, bias, fields, wmat, r_out, eps=0.0, alpha=1.0, beta=0.0):
    if rule == "epsilon":
        den = z.sum(2) + bias
        den = den + eps * torch.where(den >= 0, 1.0, -1.0).to(D)
        return (z / den[..., None] * r_out[..., None]).sum(1)
    if rule in ("alphabeta", "zplus"):
        use_b = rule == "alphabeta"
        zp, zn = z.clamp(min=0), z.clamp(max=0)
        dp = zp.sum(2) + (bias.clamp(min=0) if use_b else 0)
        dn = zn.sum(2) + (bias.clamp(max=0) if use_b else 0)
        sp = torch.where(dp != 0, r_out / torch.where(dp != 0, dp, 1.0), 0.0)
        sn = torch.where(dn != 0, r_out / torch.where(dn != 0, dn, 1.0), 0.0)
        return (alpha * zp * sp[..., None] - beta * zn * sn[..., None]).sum(1)
    if rule == "flat":
        share = fields / fields.sum(1, keepdim=True)
        return (share[None] * r_out[..., None]).sum(1)
    if rule == "wsquare":
        w2 = wmat**2
        share = w2 / w2.sum(1, keepdim=True)
        return (share[None] * r_out[..., None]).sum(1)
    raise ValueError(rule)


_LAYERS = st.sampled_from(["linear", "conv"])


@settings(max_examples=25, deadline=None)
@given(kind=_LAYERS, rule=st.sampled_from(["epsilon", "alphabeta", "alpha2beta1", "zplus",
                                           "flat", "wsquare"]),
       bias=st.booleans(), nonneg=st.booleans(), seed=st.integers(0, 2**16))
def test_rule_oracles(kind, rule, bias, nonneg, seed):
    torch.manual_seed(seed)
    if kind == "linear":
        layer = nn.Linear(6, 4, bias=bias)
        x = torch.randn(3, 6, dtype=D)
    else:
        layer = nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=bias)
        x = torch.randn(3, 2, 5, 5, dtype=D)
    if nonneg:
        x = x.abs()
    layer = layer.to(D)
    model = nn.Sequential(layer, nn.Flatten()).eval()
    out = model(x).detach()
    target = int(torch.randint(out.shape[1], ()))
    r_out = torch.zeros_like(out)
    r_out[:, target] = out[:, target]  # classic LRP starts from the logit
    z, b, fields, wmat = _contributions(layer, x)
    options, name = {}, rule
    if rule == "epsilon":
        options = {"epsilon": 0.3}
    if rule == "alpha2beta1":
        name, options = "alphabeta", {"alpha": 2.0, "beta": 1.0}
    expected = _oracle(name, z, b, fields, wmat, r_out, eps=options.get("epsilon", 0.0),
                       alpha=options.get("alpha", 1.0), beta=options.get("beta", 0.0))
    got = _raw(model, x, rule, target=target, **(options if rule == "epsilon" else {}))
    torch.testing.assert_close(got.reshape(3, -1), expected, rtol=1e-8, atol=1e-10)


def test_figure1_alpha1beta0():
    """DESIGN.md §4.3: LRP-α1β0 gives (0.5, 0.5) on both networks of the paper's Figure 1."""
    for w2 in ((-1.0, 2.0), (-5.0, 6.0)):
        net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(),
                            nn.Linear(2, 1, bias=False)).to(D).eval()
        with torch.no_grad():
            net[0].weight.copy_(torch.tensor([(2.0, -1.0), w2], dtype=D))
            net[2].weight.fill_(1.0)
        r = lrpfx.compile(net, rule="alphabeta").explain(torch.ones(1, 2, dtype=D), target=0,
                                                         contrastive=False)
        torch.testing.assert_close(r, torch.tensor([[0.5, 0.5]], dtype=D))


def test_options_are_validated():
    with pytest.raises(ValueError, match="α − β = 1"):
        lrpfx.compile(nn.Linear(2, 2), rule="alphabeta", alpha=2.0)
    with pytest.raises(ValueError, match="epsilon"):
        lrpfx.compile(nn.Linear(2, 2), rule="epsilon", epsilon=-1.0)
    with pytest.raises(ValueError, match="no option"):
        lrpfx.compile(nn.Linear(2, 2), rule="lrp0", epsilon=0.1)
    with pytest.raises(ValueError, match="unknown rule set"):
        lrpfx.compile(nn.Linear(2, 2), rule="lrp7")


# ------------------------------------------------------------------- residual splitting


class _Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.b = nn.Conv2d(c, c, 3, padding=1, bias=False)

    def forward(self, x):
        return torch.relu(x + self.b(torch.relu(self.a(x))))


def _bias_free_resnet(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(), _Block(4),
                         _Block(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 5, bias=False)).to(D).eval()


@pytest.mark.parametrize("rule,options", [
    ("lrp0", {"residual": "ratio"}), ("lrp0", {"residual": "symmetric"}),
    ("epsilon", {"residual": "ratio", "epsilon": 1e-12}),
])
def test_relevance_splitting_conserves(rule, options):
    net = _bias_free_resnet(0)
    x = torch.randn(3, 3, 8, 8, dtype=D)
    e = lrpfx.compile(net, rule=rule, **options)
    parts = e.explain(x, target=2, contrastive=False, normalize=False, at=["2", "3"])
    logit = net(x)[:, 2].detach()
    for name in ("input", "2", "3"):
        torch.testing.assert_close(parts[name].flatten(1).sum(1), logit, rtol=1e-6, atol=1e-9)
    assert sum(n.rule.endswith("(residual split)") for n in e.report.nodes) == 2


def test_ratio_split_shares_by_magnitude():
    """y = a + b: R_a = R_y |a| / (|a| + |b|), element-wise."""

    class Merge(nn.Module):
        def forward(self, x):
            return (2 * x[:, :2] + (-3) * x[:, 2:]).sum(1, keepdim=True)

    x = torch.tensor([[1.0, 2.0, 1.0, -1.0]], dtype=D)
    r = _raw(Merge().eval(), x, "lrp0", residual="ratio")
    y = (2 * x[:, :2] - 3 * x[:, 2:])
    a, b = 2 * x[:, :2], -3 * x[:, 2:]
    expected = torch.cat([y * a.abs() / (a.abs() + b.abs()), y * b.abs() / (a.abs() + b.abs())],
                         1)
    torch.testing.assert_close(r, expected)


# -------------------------------------------------------------------------- composites


def test_composite_assigns_by_kind_and_position():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(),
                        nn.Flatten(), nn.Linear(4 * 4 * 4, 5)).to(D).eval()
    rules = composite("epsilon", first="flat", conv="zplus", epsilon=0.1)
    e = lrpfx.compile(net, rule=rules)
    x = torch.randn(2, 3, 8, 8, dtype=D)
    e.explain(x)
    by_node = {n.node: n.rule for n in e.report.nodes}
    assert by_node["conv2d"] == "flat" and by_node["conv2d_1"] == "zplus"
    assert by_node["linear"] == "epsilon"
    # the same map by hand: flat on layer 0, z⁺ on layer 2, ε = 0.1 on the dense layer
    got = e.explain(x, target=1, contrastive=False, normalize=False)
    feats = net[:5](x).detach()
    z, b, f, w = _contributions(net[5], feats)
    out = net(x).detach()
    r = torch.zeros_like(out)
    r[:, 1] = out[:, 1]
    r4 = _oracle("epsilon", z, b, f, w, r, eps=0.1)  # relu passes relevance unchanged
    h1 = net[:2](x).detach()
    z, b, f, w = _contributions(net[2], h1)
    r1 = _oracle("zplus", z, b, f, w, r4)
    z, b, f, w = _contributions(net[0], x)
    expected = _oracle("flat", z, b, f, w, r1)
    torch.testing.assert_close(got.reshape(2, -1), expected, rtol=1e-8, atol=1e-10)
    assert "epsilon_plus_flat" in RULESETS
    with pytest.raises(ValueError, match="first-layer rule"):
        composite("flat")
    with pytest.raises(ValueError, match="not an LRP rule set"):
        composite("abslrp")


# ------------------------------------------------------------- cLRP and inner relevance


def test_clrp_is_target_minus_dual_on_any_rule_set():
    net = _relu_net(2, 8, True, 1)
    x = torch.randn(4, 5, dtype=D)
    e = lrpfx.compile(net, rule="epsilon")
    parts = e.explain_parts(x, target=0)
    manual_pos = _raw(net, x, "epsilon", target=0)
    dual = sum(_raw(net, x, "epsilon", target=c) for c in (1, 2)) / 2
    pos, neg = manual_pos / manual_pos.abs().sum(1, keepdim=True), dual / dual.abs().sum(
        1, keepdim=True)
    diff = pos - neg
    torch.testing.assert_close(parts.contrastive, diff / diff.abs().amax(1, keepdim=True))


def test_relevance_at_inner_nodes_is_the_input_map_of_the_cut_model():
    net = _relu_net(2, 6, True, 4)
    x = torch.randn(3, 5, dtype=D)
    e = lrpfx.compile(net, rule="epsilon")
    # asked for in the reverse of execution order: each map must still get its own name
    maps = e.explain(x, target=1, contrastive=False, normalize=False, at=["2", "0"])
    h = net[:2](x).detach()  # the output of module "1" (ReLU) is the input of "2"
    tail = nn.Sequential(*list(net)[2:]).eval()
    expected_in = _raw(tail, h, "epsilon", target=1)
    out2 = net[:3](x).detach()
    expected_at = _raw(nn.Sequential(*list(net)[3:]).eval(), out2, "epsilon", target=1)
    torch.testing.assert_close(maps["2"], expected_at)
    out0 = net[:1](x).detach()
    expected_0 = _raw(nn.Sequential(*list(net)[1:]).eval(), out0, "epsilon", target=1)
    torch.testing.assert_close(maps["0"], expected_0)
    assert maps["input"].shape == x.shape and expected_in.shape == h.shape
    with pytest.raises(ValueError, match="no relevance-carrying module"):
        e.explain(x, at=["nope"])


@pytest.mark.parametrize("rule", sorted(RULESETS))
def test_every_rule_set_on_a_cnn_with_both_frontends(rule):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Conv2d(4, 4, 3), nn.GroupNorm(2, 4), nn.GELU(),
                        nn.Flatten(), nn.LayerNorm(16), nn.Linear(4 * 2 * 2, 3)).to(D).eval()
    x = torch.randn(2, 3, 8, 8, dtype=D)
    a = lrpfx.compile(net, rule=rule).explain(x, target=1)
    b = lrpfx.compile(net, rule=rule, frontend="symbolic_trace").explain(x, target=1)
    assert torch.isfinite(a).all() and a.abs().amax() > 0
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    # batch independence: a sample's map does not depend on its batch mates
    torch.testing.assert_close(lrpfx.compile(net, rule=rule).explain(x[:1], target=1), a[:1],
                               rtol=1e-9, atol=1e-12)


def test_inner_relevance_after_a_dtype_conversion():
    """Taps are views of the compiled graph: a later .double() must not leave them stale."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 6 * 6, 5)).eval()
    x = torch.randn(2, 3, 8, 8)
    e = lrpfx.compile(net)
    before = e.explain(x, at=["1"])
    e.double()
    after = e.explain(x.double(), at=["1"])
    assert after["1"].dtype == D
    torch.testing.assert_close(after["1"], before["1"].double(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rule", ["alphabeta", "alpha2beta1", "zplus"])
def test_alphabeta_on_a_transposed_convolution_equals_its_convolution(rule):
    """A stride-1 transposed convolution is the convolution with the kernel flipped and its
    channel axes swapped: the αβ rules split its contributions the same way, so both nets give
    one map (this once raised AttributeError: no W⁺ was derived for transposed convolutions)."""
    torch.manual_seed(0)
    deconv = nn.ConvTranspose2d(3, 4, 3, padding=1).double()
    conv = nn.Conv2d(3, 4, 3, padding=1).double()
    with torch.no_grad():
        conv.weight.copy_(deconv.weight.transpose(0, 1).flip(-1, -2))
        conv.bias.copy_(deconv.bias)
    head = nn.Linear(4 * 8 * 8, 5).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.double)
    maps = [lrpfx.compile(nn.Sequential(layer, nn.ReLU(), nn.Flatten(), head).eval(),
                          rule=rule).explain(x, contrastive=False) for layer in (deconv, conv)]
    assert maps[0].abs().sum() > 0
    torch.testing.assert_close(maps[0], maps[1], rtol=1e-9, atol=1e-12)


class _Merge(nn.Module):
    """``x[:, :3] ± x[:, 3:]``: a residual-style add or sub of two activations."""

    def __init__(self, sign: float) -> None:
        super().__init__()
        self.sign = sign

    def forward(self, x):
        return x[:, :3] + x[:, 3:] if self.sign > 0 else x[:, :3] - x[:, 3:]


def _elementwise_ab_oracle(contrib: torch.Tensor, rest: torch.Tensor, r_out: torch.Tensor,
                           alpha: float, beta: float) -> torch.Tensor:
    """R_k = α c_k⁺ / z⁺ R − β c_k⁻ / z⁻ R per output element, contributions ``contrib[k]``
    (stacked on dim 0) and the bias-like rest, ``z^± = Σ_k c_k^± + rest^±``."""
    zp = contrib.clamp(min=0).sum(0) + rest.clamp(min=0)
    zn = contrib.clamp(max=0).sum(0) + rest.clamp(max=0)
    sp = torch.where(zp != 0, r_out / torch.where(zp != 0, zp, 1.0), 0.0)
    sn = torch.where(zn != 0, r_out / torch.where(zn != 0, zn, 1.0), 0.0)
    return alpha * contrib.clamp(min=0) * sp - beta * contrib.clamp(max=0) * sn


@pytest.mark.filterwarnings("ignore:the relevance map of examples")  # α1β0: a negative logit
@settings(max_examples=20, deadline=None)
@given(op=st.sampled_from(["add", "sub", "layer_norm"]),
       rule=st.sampled_from(["alphabeta", "alpha2beta1", "zplus"]), seed=st.integers(0, 2**16))
def test_alphabeta_oracle_on_elementwise_ops(op, rule, seed):
    """αβ / z⁺ where each output element has its own contributions (residual adds, layer norm
    as ``y = a x + c`` with its statistics held constant): against the formula."""
    torch.manual_seed(seed)
    x = torch.randn(3, 6, dtype=D)
    if op == "layer_norm":
        model = nn.LayerNorm(6).to(D)
        with torch.no_grad():
            model.weight.normal_()
            model.bias.normal_()
    else:
        model = _Merge(1.0 if op == "add" else -1.0)
    model = model.eval()
    out = model(x).detach()
    target = int(torch.randint(out.shape[1], ()))
    r_out = torch.zeros_like(out)
    r_out[:, target] = out[:, target]
    alpha, beta = (2.0, 1.0) if rule == "alpha2beta1" else (1.0, 0.0)
    if op == "layer_norm":
        var = x.var(1, unbiased=False, keepdim=True)
        a = model.weight / torch.sqrt(var + model.eps)  # y = a x + (β − a μ), μ and σ constant
        c = x * a
        rest = out - c if rule != "zplus" else torch.zeros_like(out)
        expected = _elementwise_ab_oracle(c[None], rest, r_out, alpha, beta)[0]
    else:
        contrib = torch.stack([x[:, :3], x[:, 3:] * (1.0 if op == "add" else -1.0)])
        per_input = _elementwise_ab_oracle(contrib, torch.zeros_like(out), r_out, alpha, beta)
        expected = torch.cat([per_input[0], per_input[1]], dim=1)
    name, options = ("alphabeta", {"alpha": 2.0, "beta": 1.0}) if rule == "alpha2beta1" \
        else (rule, {})
    got = _raw(model, x, name, target=target, **options)
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-10)


# ------------------------------------------- z-rules and αβ on the other op kinds (oracles)


def _den(out: torch.Tensor, eps: float) -> torch.Tensor:
    """``y + ε sign y`` (``sign 0 = 1``); ``y`` itself for LRP-0."""
    return out + eps * torch.where(out >= 0, 1.0, -1.0).to(D) if eps else out


def _over(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a / b``, 0 where ``b = 0``."""
    return torch.where(b != 0, a / torch.where(b != 0, b, 1.0), 0.0)


def _head_relevance(head: nn.Linear, feats: torch.Tensor, target: int, rule: str, eps: float,
                    alpha: float, beta: float) -> torch.Tensor:
    """Relevance at the input of the dense ``head`` from its one-hot logit, by :func:`_oracle`."""
    out = head(feats).detach()
    r = torch.zeros_like(out)
    r[:, target] = out[:, target]
    z, b, f, w = _contributions(head, feats)
    return _oracle(rule, z, b, f, w, r, eps=eps, alpha=alpha, beta=beta)


def _linear_map(body: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The matrix ``L`` (outputs × inputs, flattened) of a linear op, column by column."""
    n_in = x[0].numel()
    eye = torch.eye(n_in, dtype=D).reshape(n_in, *x.shape[1:])
    return body(eye).detach().reshape(n_in, -1).T


class _Fn(nn.Module):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.p = nn.Parameter(torch.randn(6, dtype=D))  # the constant operand of "scale"

    def forward(self, x):
        if self.name == "mean":
            return x.mean(-1)
        if self.name == "sum":
            return x.sum(-1)
        if self.name == "scale":
            return x * self.p
        if self.name == "mul":
            return x[:, :3] * x[:, 3:]
        if self.name == "matmul":
            return x[:, :6].reshape(-1, 2, 3) @ x[:, 6:].reshape(-1, 3, 2)
        if self.name == "normalize":
            return F.normalize(x, dim=1)
        if self.name == "softmax":
            return torch.softmax(x, -1)
        raise ValueError(self.name)


def _randomised(m: nn.Module) -> nn.Module:
    """Affine parameters and batch-norm statistics drawn at random (not 1 and 0)."""
    with torch.no_grad():
        for name, p in [*m.named_parameters(), *m.named_buffers()]:
            if name == "running_var":
                p.uniform_(0.5, 2.0)
            elif p.is_floating_point():
                p.normal_()
    return m


def _body(op: str) -> tuple[nn.Module, tuple[int, ...]]:
    """The op under test and its input's shape (batch of 3)."""
    return {
        "add": (_Merge(1.0), (3, 6)), "sub": (_Merge(-1.0), (3, 6)),
        "layer_norm": (_randomised(nn.LayerNorm(6)), (3, 6)),
        "rms_norm": (_randomised(nn.RMSNorm(6, eps=1e-5)), (3, 6)),
        "group_norm": (_randomised(nn.GroupNorm(2, 4)), (3, 4, 3)),
        "batch_norm": (_randomised(nn.BatchNorm1d(6)), (3, 6)),
        "avg_pool": (nn.AvgPool2d(2), (3, 2, 4, 4)),
        "max_pool": (nn.MaxPool2d(2), (3, 2, 4, 4)),
        "gelu": (nn.GELU(), (3, 6)), "dropout": (nn.Dropout(0.3), (3, 6)),
        "matmul": (_Fn("matmul"), (3, 12)),
    }.get(op) or (_Fn(op), (3, 4, 3) if op in ("mean", "sum") else (3, 6))


def _diag_factor(op: str, body: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``a`` of ``y = a ⊙ x + c``, the statistics held constant."""
    if op == "layer_norm":
        return body.weight / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + body.eps)
    if op == "rms_norm":
        return body.weight / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + body.eps)
    if op == "group_norm":
        g = x.reshape(x.shape[0], 2, -1)
        inv = 1 / torch.sqrt(g.var(-1, unbiased=False, keepdim=True) + body.eps)
        return inv.expand_as(g).reshape(x.shape) * body.weight[:, None]
    if op == "batch_norm":
        return body.weight / torch.sqrt(body.running_var + body.eps)
    if op == "normalize":
        return 1 / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    raise ValueError(op)


def _z_rule_oracle(op: str, body: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   r_y: torch.Tensor, eps: float) -> torch.Tensor:
    """``R_x`` of one op under LRP-0 / LRP-ε, from the formulas of :mod:`lrpfx.rules.lrp`."""
    q = _over(r_y, _den(y, eps))  # R_y / (y + ε sign y)
    if op in ("add", "sub"):  # z-rule, contributions a and ±b
        return torch.cat([x[:, :3] * q, x[:, 3:] * q * (1.0 if op == "add" else -1.0)], 1)
    if op in ("layer_norm", "rms_norm", "group_norm", "batch_norm", "normalize"):
        return _diag_factor(op, body, x) * x * q  # z = a x, the denominator y
    if op in ("avg_pool", "mean", "sum", "scale"):  # z_ij = L_ji x_i
        z = x.flatten(1)[:, None, :] * _linear_map(body, x)[None]
        return (z * q.flatten(1)[..., None]).sum(1).reshape(x.shape)
    if op == "mul":  # the uniform rule: each operand half of the z-rule relevance (z = y)
        return torch.cat([0.5 * y * q, 0.5 * y * q], 1)
    if op == "matmul":  # z_ikj = A_ik B_kj, each operand half
        a, b = x[:, :6].reshape(-1, 2, 3), x[:, 6:].reshape(-1, 3, 2)
        z = a[..., None] * b[:, None]
        return torch.cat([0.5 * (z * q[:, :, None]).sum(3).flatten(1),
                          0.5 * (z * q[:, :, None]).sum(1).flatten(1)], 1)
    if op == "softmax":  # the gradient: R_x = x ⊙ (R_y − y ΣR_y) (AttnLRP)
        return x * (r_y - y * r_y.sum(-1, keepdim=True))
    if op in ("gelu", "dropout"):  # R_x = R_y
        return r_y
    if op == "max_pool":  # winner takes all
        _, idx = F.max_pool2d(x, 2, return_indices=True)
        r = torch.zeros_like(x).flatten(2).scatter_(2, idx.flatten(2), r_y.flatten(2))
        return r.reshape(x.shape)
    raise ValueError(op)


_Z_OPS = ["add", "sub", "layer_norm", "rms_norm", "group_norm", "batch_norm", "normalize",
          "avg_pool", "mean", "sum", "scale", "mul", "matmul", "softmax", "gelu", "dropout",
          "max_pool"]


def _through_head(op: str, seed: int):
    """(model = op → flatten → dense head, x, the op, its output, target)."""
    torch.manual_seed(seed)
    body, shape = _body(op)
    body = body.to(D).eval()
    x = torch.randn(*shape, dtype=D)
    y = body(x).detach()
    head = nn.Linear(y[0].numel(), 4).to(D)
    model = nn.Sequential(body, nn.Flatten(), head).eval()
    return model, x, body, y, head, int(torch.randint(4, ()))


@pytest.mark.parametrize("op", _Z_OPS)
@settings(max_examples=4, deadline=None)
@given(rule=st.sampled_from(["lrp0", "epsilon"]), seed=st.integers(0, 2**16))
def test_z_rule_oracle_on_every_op_kind(op, rule, seed):
    """LRP-0 / LRP-ε on sums, normalisations (statistics constant), pooling, products (the
    uniform rule of AttnLRP), softmax, activations, dropout and max pooling: ``R_y`` from the
    ε-rule at a dense head, ``R_x`` from each formula."""
    model, x, body, y, head, target = _through_head(op, seed)
    eps = 0.3 if rule == "epsilon" else 0.0
    r_y = _head_relevance(head, y.flatten(1), target, "epsilon", eps, 1.0, 0.0).reshape(y.shape)
    expected = _z_rule_oracle(op, body, x, y, r_y, eps)
    got = _raw(model, x, rule, target=target, **({"epsilon": eps} if eps else {}))
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-10)


@pytest.mark.filterwarnings("ignore:the relevance map of examples")  # α1β0: a negative logit
@pytest.mark.parametrize("op", ["avg_pool", "mean", "sum", "batch_norm", "rms_norm",
                                "group_norm", "normalize"])
@settings(max_examples=6, deadline=None)
@given(rule=st.sampled_from(["alphabeta", "alpha2beta1", "zplus"]), seed=st.integers(0, 2**16))
def test_alphabeta_oracle_on_pooling_and_normalisations(op, rule, seed):
    """LRP-αβ / z⁺ on pooling (``z_ij = L_ji x_i``, no bias) and on normalisations as
    ``y = a x + c`` (``c`` the bias-like rest, left out by z⁺)."""
    model, x, body, y, head, target = _through_head(op, seed)
    alpha, beta = (2.0, 1.0) if rule == "alpha2beta1" else (1.0, 0.0)
    name = "zplus" if rule == "zplus" else "alphabeta"
    r_y = _head_relevance(head, y.flatten(1), target, name, 0.0, alpha, beta).reshape(y.shape)
    if op in ("avg_pool", "mean", "sum"):
        z = x.flatten(1)[:, None, :] * _linear_map(body, x)[None]
        zeros = torch.zeros(z.shape[1], dtype=D)
        expected = _oracle(name, z, zeros, None, None, r_y.flatten(1), alpha=alpha,
                           beta=beta).reshape(x.shape)
    else:
        c = _diag_factor(op, body, x) * x
        rest = y - c if rule != "zplus" else torch.zeros_like(y)
        expected = _elementwise_ab_oracle(c[None], rest, r_y, alpha, beta)[0]
    options = {"alpha": 2.0, "beta": 1.0} if rule == "alpha2beta1" else {}
    got = _raw(model, x, name, target=target, **options)
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("rule", ["lrp0", "epsilon"])
def test_symmetric_residual_split_halves(rule):
    """``residual="symmetric"``: ``y = a + b`` gives each operand ``R_y / 2`` (conservation
    alone holds for any split)."""
    model, x, _, y, head, target = _through_head("add", 0)
    eps = 0.25 if rule == "epsilon" else 0.0
    r_y = _head_relevance(head, y, target, "epsilon", eps, 1.0, 0.0)
    got = _raw(model, x, rule, target=target, residual="symmetric")
    torch.testing.assert_close(got, torch.cat([r_y / 2, r_y / 2], 1), rtol=1e-8, atol=1e-10)
