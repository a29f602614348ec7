"""Attention models: layer norm, softmax and matmul rules against a float64 oracle, fused vs
explicit attention, and real vision transformers (random init, small inputs)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lrpfx

EPS = 1e-9


def _unit(r: torch.Tensor) -> torch.Tensor:
    return r / (r.abs().flatten(1).sum(1).view(-1, *[1] * (r.dim() - 1)) + EPS)


def _step(f, fa, xs, r_out):
    """Oracle for one op: R_x = x ⊙ VJP_x(f(x) + fa(|x|); R/(|f(x)|+ε)), unit L1 per input."""
    xs = [x.detach().requires_grad_(True) for x in xs]
    h = f(*xs)
    ha = fa(*[x.abs() for x in xs])
    grads = torch.autograd.grad(h + ha, xs, r_out / (h.abs() + EPS))
    return [_unit(x * g) for x, g in zip(xs, grads)]


def _ln(x, w, b, eps):  # the reference's layer norm: statistics detached
    mean = x.mean(-1, keepdim=True).detach()
    var = x.var(-1, keepdim=True, unbiased=False).detach()
    return (x - mean) / (var + eps).sqrt() * w + b


def _softmax(x):  # the reference's softmax: shift and denominator detached
    e = (x - x.max(-1, keepdim=True)[0].detach()).exp()
    return e / e.sum(-1, keepdim=True).detach()


class Head(nn.Module):
    """An op, then flatten and a linear read-out (the oracle chains the two by hand)."""

    def __init__(self, op: nn.Module, features: int, classes: int = 3):
        super().__init__()
        self.op, self.fc = op, nn.Linear(features, classes)

    def forward(self, x):
        return self.fc(self.op(x).flatten(1))


def _oracle_through_head(model: Head, f, fa, xs, target):
    h = f(*xs).detach()
    seed = F.one_hot(target, model.fc.out_features).double()
    (r_h,) = _step(lambda t: model.fc(t), lambda t: F.linear(t, model.fc.weight.abs(),
                                                            model.fc.bias.abs()),
                   [h.flatten(1)], seed)
    return _step(f, fa, xs, r_h.view_as(h))


class LN(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm = nn.LayerNorm(d, eps=1e-5)

    def forward(self, x):
        return self.norm(x)


@settings(max_examples=12, deadline=None)
@given(t=st.integers(1, 4), d=st.integers(2, 8), seed=st.integers(0, 10_000))
def test_layer_norm_oracle(t, d, seed):
    torch.manual_seed(seed)
    model = Head(LN(d), t * d).double().eval()
    with torch.no_grad():
        model.op.norm.weight.normal_()
        model.op.norm.bias.normal_()
    x = torch.randn(2, t, d, dtype=torch.double) * 2
    target = torch.tensor([0, 2])
    w, b = model.op.norm.weight, model.op.norm.bias
    (expected,) = _oracle_through_head(model, lambda v: _ln(v, w, b, 1e-5),
                                       lambda v: _ln(v, w.abs(), b.abs(), 1e-5), [x], target)
    got = lrpfx.compile(model, frontend="symbolic_trace").explain(x, target, contrastive=False)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-9)


class Softmax(nn.Module):
    def forward(self, x):
        return torch.softmax(x, dim=-1)


@settings(max_examples=12, deadline=None)
@given(t=st.integers(1, 4), d=st.integers(2, 8), seed=st.integers(0, 10_000))
def test_softmax_oracle(t, d, seed):
    torch.manual_seed(seed)
    model = Head(Softmax(), t * d).double().eval()
    x = torch.randn(2, t, d, dtype=torch.double) * 3
    target = torch.tensor([1, 0])
    (expected,) = _oracle_through_head(model, _softmax, _softmax, [x], target)
    got = lrpfx.compile(model).explain(x, target, contrastive=False)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-9)


class TwoMatmul(nn.Module):
    """y = (x W1) @ (x W2)ᵀ: both matmul operands carry relevance."""

    def __init__(self, d):
        super().__init__()
        self.a, self.b = nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False)

    def forward(self, x):
        return self.a(x) @ self.b(x).transpose(-1, -2)


@settings(max_examples=10, deadline=None)
@given(t=st.integers(2, 4), d=st.integers(2, 6), seed=st.integers(0, 10_000))
def test_matmul_both_operands_oracle(t, d, seed):
    torch.manual_seed(seed)
    op = TwoMatmul(d)
    model = Head(op, t * t).double().eval()
    x = torch.randn(2, t, d, dtype=torch.double)
    target = torch.tensor([2, 1])
    qa, kb = op.a(x).detach(), op.b(x).detach()
    model_out = model.fc((qa @ kb.transpose(-1, -2)).flatten(1))
    assert torch.isfinite(model_out).all()
    r_qa, r_kb = _oracle_through_head(
        model, lambda p, q: p @ q.transpose(-1, -2), lambda p, q: p @ q.transpose(-1, -2),
        [qa, kb], target)
    # through the two linear layers (the transpose is data movement), summed at the fork
    (r_x1,) = _step(lambda v: op.a(v), lambda v: F.linear(v, op.a.weight.abs()), [x], r_qa)
    (r_x2,) = _step(lambda v: op.b(v), lambda v: F.linear(v, op.b.weight.abs()), [x], r_kb)
    expected = _unit(r_x1 + r_x2)
    got = lrpfx.compile(model).explain(x, target, contrastive=False)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-9)


class SignedMatmul(nn.Module):
    """y = f(x W1) @ g(x W2)ᵀ, f and g the identity or a ReLU (the non-negative operand paths),
    with heads on the first operand and, with ``broadcast``, one shared head on the second."""

    def __init__(self, d, heads, relu_a, relu_b, broadcast):
        super().__init__()
        self.a = nn.Linear(d, d * heads, bias=False)
        self.b = nn.Linear(d, d if broadcast else d * heads, bias=False)
        self.heads, self.relu_a, self.relu_b = heads, relu_a, relu_b

    def operands(self, x):
        za, zb = self.a(x), self.b(x)
        a = torch.relu(za) if self.relu_a else za
        b = torch.relu(zb) if self.relu_b else zb
        return za, zb, a, b

    def forward(self, x):
        b_, t, d = x.shape
        _, _, a, b = self.operands(x)
        a = a.reshape(b_, t, self.heads, d).transpose(1, 2)
        b = b.reshape(b_, t, -1, d).transpose(1, 2)
        return a @ b.transpose(-1, -2)


@settings(max_examples=16, deadline=None)
@given(t=st.integers(2, 4), d=st.integers(1, 4), heads=st.integers(1, 3),
       relu_a=st.booleans(), relu_b=st.booleans(), broadcast=st.booleans(),
       seed=st.integers(0, 10_000))
def test_matmul_signed_and_non_negative_operands_oracle(t, d, heads, relu_a, relu_b, broadcast,
                                                        seed):
    torch.manual_seed(seed)
    op = SignedMatmul(d, heads, relu_a, relu_b, broadcast)
    model = Head(op, heads * t * t).double().eval()
    x = torch.randn(2, t, d, dtype=torch.double)
    target = torch.tensor([2, 1])
    za, zb, a, b = (v.detach() for v in op.operands(x))

    def split(v):
        return v.reshape(2, t, -1, d).transpose(1, 2)

    def product(p, q):
        return split(p) @ split(q).transpose(-1, -2)

    r_a, r_b = _oracle_through_head(model, product, product, [a, b], target)
    relu = torch.relu
    if relu_a:
        (r_a,) = _step(relu, relu, [za], r_a)
    if relu_b:
        (r_b,) = _step(relu, relu, [zb], r_b)
    (r_x1,) = _step(lambda v: op.a(v), lambda v: F.linear(v, op.a.weight.abs()), [x], r_a)
    (r_x2,) = _step(lambda v: op.b(v), lambda v: F.linear(v, op.b.weight.abs()), [x], r_b)
    expected = _unit(r_x1 + r_x2)
    explainer = lrpfx.compile(model)
    got = explainer.explain(x, target, contrastive=False)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-9)
    matmul = next(c for c in explainer.modules() if getattr(c, "spec", None) is not None
                  and c.spec.op == "matmul")
    assert ("input" in matmul.nonneg) == relu_a and ("other" in matmul.nonneg) == relu_b


class Attention(nn.Module):
    def __init__(self, d=8, heads=2, fused=True):
        super().__init__()
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.heads, self.fused = heads, fused

    def forward(self, x, mask=None):
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if self.fused:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            s = (q * (d // self.heads) ** -0.5) @ k.transpose(-2, -1)
            if mask is not None:
                s = s.masked_fill(~mask, float("-inf"))
            y = torch.softmax(s, dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Classifier(nn.Module):
    def __init__(self, fused):
        super().__init__()
        self.norm, self.attn, self.head = nn.LayerNorm(8), Attention(fused=fused), nn.Linear(8, 4)

    def forward(self, x):
        x = x + self.attn(self.norm(x))
        return self.head(x.mean(1))


def test_fused_and_explicit_attention_agree():
    torch.manual_seed(0)
    fused = Classifier(fused=True).double().eval()
    explicit = Classifier(fused=False).double().eval()
    explicit.load_state_dict(fused.state_dict())
    x = torch.randn(3, 5, 8, dtype=torch.double)
    a, b = lrpfx.compile(fused), lrpfx.compile(explicit)
    torch.testing.assert_close(a(x), fused(x))
    torch.testing.assert_close(a.explain(x), b.explain(x), rtol=1e-7, atol=1e-10)
    assert any(n.op.endswith("(decomposed)") for n in a.report.nodes)


def test_masked_attention_gives_no_relevance_through_masked_keys():
    torch.manual_seed(0)
    model = Attention(fused=True).double().eval()
    x = torch.randn(2, 4, 8, dtype=torch.double)
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[:, 2] = False  # nobody attends to token 2 ...
    head = nn.Linear(8, 3).double()

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn, self.head = model, head

        def forward(self, x):
            return self.head(self.attn(x, mask)[:, 0])  # ... and only token 0 is read out

    m = M().eval()
    r = lrpfx.compile(m).explain(x, 1, contrastive=False)
    assert torch.isfinite(r).all()
    # token 2 reaches the output only through q/k/v of masked positions: no relevance
    assert r[:, 2].abs().max() == 0
    assert r[:, 1].abs().max() > 0


timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")


def _check_vision(model, x):
    explainer = lrpfx.compile(model)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(explainer(x), expected, rtol=1e-4, atol=1e-5)
    parts = explainer.explain_parts(x)
    assert torch.isfinite(parts.contrastive).all() and parts.contrastive.abs().amax() > 0
    other = explainer.explain(x, target=(parts.target + 1) % expected.shape[1])
    assert (other - parts.contrastive).abs().amax() > 1e-4
    return explainer


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "deit_small_patch16_224"])
def test_timm_vit(name):
    model = timm.create_model(name, pretrained=False, img_size=64, depth=2).eval()
    _check_vision(model, torch.randn(2, 3, 64, 64))


def test_torchvision_vit_multihead_attention():
    from torchvision.models.vision_transformer import VisionTransformer

    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                              hidden_dim=32, mlp_dim=64, num_classes=10).eval()
    nn.init.normal_(model.heads.head.weight)  # torchvision zero-inits the head: zero logits
    _check_vision(model, torch.randn(2, 3, 32, 32))


def test_torchvision_swin():
    model = torchvision.models.swin_t(weights=None).eval()
    _check_vision(model, torch.randn(2, 3, 64, 64))


def test_bfloat16_model_explains_in_float32():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False).eval().bfloat16()
    x = torch.randn(2, 3, 32, 32).bfloat16()
    r = lrpfx.compile(model).explain(x)
    assert r.dtype == torch.bfloat16 and torch.isfinite(r).all()
    # the same weights and input in float32 give the same map: the relevance path ran in float32
    expected = lrpfx.compile(model.float()).explain(x.float())
    torch.testing.assert_close(r.float(), expected, rtol=0, atol=1e-2)


def test_twelve_layer_vit_base_float32_is_finite():
    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    parts = lrpfx.compile(model).explain_parts(x)
    for r in (parts.positive, parts.negative, parts.contrastive):
        assert torch.isfinite(r).all() and r.abs().amax() > 0


class EinsumAttention(nn.Module):
    """The same scores written with einsum."""

    def __init__(self, use_einsum: bool):
        super().__init__()
        self.a, self.b, self.use_einsum = nn.Linear(6, 6), nn.Linear(6, 6), use_einsum
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        q, k = self.a(x), self.b(x)
        s = torch.einsum("bid,bjd->bij", q, k) if self.use_einsum else q @ k.transpose(1, 2)
        return self.head((torch.softmax(s, -1) @ x).mean(1))


def test_einsum_equals_matmul():
    torch.manual_seed(0)
    a, b = EinsumAttention(True).double().eval(), EinsumAttention(False).double().eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 4, 6, dtype=torch.double)
    ea, eb = lrpfx.compile(a), lrpfx.compile(b)
    torch.testing.assert_close(ea.explain(x), eb.explain(x), rtol=1e-7, atol=1e-10)
    assert any(n.canonical == "einsum" for n in ea.report.nodes)
