"""The absLRP option ``merge_total_derivative`` against a slow oracle of the reference's
mechanics: every op is explained with ``torch.autograd.grad(h + ha, inputs, s)`` on the live
float64 forward graph (as the paper's code does with its module hooks), so a merge whose branch
reads its skip takes the total derivative through the branch. Residual adds, a gate
``x ⊙ σ(W x)`` (a ``mul`` merge), nested residuals and attention inside a branch."""

from __future__ import annotations

import oracle
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

import lrpfx

_unit = oracle.unit_l1  # records the smallest mass it normalises (oracle.SMALLEST_MASS)


class Tape:
    """Records ``(h, fa, inputs)`` per op; :meth:`explain` runs the reference's backward (the
    per-op rule of :func:`oracle.abs_rule`, but on the live graph)."""

    def __init__(self):
        self.records = []

    def op(self, f, fa, *inputs):
        out = f(*inputs)
        self.records.append((out, fa, inputs))
        return out

    def explain(self, out, seed, x):
        rel = {id(out): seed}
        for h, fa, inputs in reversed(self.records):
            if id(h) not in rel:
                continue
            ha = fa(*[t.abs() for t in inputs])
            grads = torch.autograd.grad(h + ha, inputs, rel[id(h)] / (h.abs() + oracle.EPS),
                                        retain_graph=True)
            for t, g in zip(inputs, grads):
                rel[id(t)] = rel.get(id(t), 0) + _unit((t * g).detach())
        return rel[id(x)]


def _ln(t, w, b):
    mean = t.mean(-1, keepdim=True).detach()
    var = t.var(-1, keepdim=True, unbiased=False).detach()
    return (t - mean) / (var + 1e-5).sqrt() * w + b


def _softmax(t):
    e = (t - t.amax(-1, keepdim=True).detach()).exp()
    return e / e.sum(-1, keepdim=True).detach()


class Net(nn.Module):
    def __init__(self, d_in, d, classes, tokens, gate, nested, attention):
        super().__init__()
        self.emb = nn.Linear(d_in, d)
        self.norm = nn.LayerNorm(d)
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        self.g = nn.Linear(d, d) if gate else None
        self.fa, self.fb = (nn.Linear(d, d), nn.Linear(d, d)) if nested else (None, None)
        self.q, self.k, self.v = (nn.Linear(d, d) for _ in range(3)) if attention \
            else (None, None, None)
        self.head = nn.Linear(tokens * d, classes)

    def forward(self, x):
        z = self.emb(x)
        z = z + self.fc2(F.gelu(self.fc1(self.norm(z))))
        if self.g is not None:
            z = z * torch.sigmoid(self.g(z))
        if self.fa is not None:
            z = z + self.fb(z + self.fa(z))
        if self.q is not None:
            n = self.norm(z)
            z = z + torch.softmax(self.q(n) @ self.k(n).transpose(-2, -1), -1) @ self.v(n)
        return self.head(z.flatten(1))


def _lin(m):
    return (lambda t: F.linear(t, m.weight, m.bias)), \
        (lambda t: F.linear(t, m.weight.abs(), m.bias.abs()))


def reference(net: Net, x, seed):
    tape = Tape()
    op = tape.op
    x = x.detach().requires_grad_(True)
    z = op(*_lin(net.emb), x)

    def ln(t):
        return op(lambda u: _ln(u, net.norm.weight, net.norm.bias),
                  lambda u: _ln(u, net.norm.weight.abs(), net.norm.bias.abs()), t)

    def add(a, b):
        return op(torch.add, torch.add, a, b)

    h = op(*_lin(net.fc2), op(F.gelu, F.gelu, op(*_lin(net.fc1), ln(z))))
    z = add(h, z)
    if net.g is not None:
        z = op(torch.mul, torch.mul, z, op(torch.sigmoid, torch.sigmoid, op(*_lin(net.g), z)))
    if net.fa is not None:
        inner = add(z, op(*_lin(net.fa), z))
        z = add(z, op(*_lin(net.fb), inner))
    if net.q is not None:
        n = ln(z)

        def qk(a, b):
            return a @ b.transpose(-2, -1)
        p = op(_softmax, _softmax, op(qk, qk, op(*_lin(net.q), n), op(*_lin(net.k), n)))
        z = add(z, op(torch.matmul, torch.matmul, p, op(*_lin(net.v), n)))
    out = op(lambda t: F.linear(t.flatten(1), net.head.weight, net.head.bias),
             lambda t: F.linear(t.flatten(1), net.head.weight.abs(), net.head.bias.abs()), z)
    return tape.explain(out, seed, x)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.filter_too_much])
@given(b=st.integers(1, 3), tokens=st.integers(2, 4), d=st.integers(2, 6),
       seed=st.integers(0, 2**16), scale=st.sampled_from([0.3, 1.0, 3.0]),
       gate=st.booleans(), nested=st.booleans(), attention=st.booleans())
def test_total_derivative_matches_the_reference_mechanics(b, tokens, d, seed, scale, gate,
                                                         nested, attention):
    torch.manual_seed(seed)
    net = Net(3, d, 4, tokens, gate, nested, attention).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(scale)
    x = torch.randn(b, tokens, 3, dtype=torch.double)
    target = torch.randint(0, 4, (b,))
    oracle.SMALLEST_MASS[0] = float("inf")
    expected = reference(net, x, F.one_hot(target, 4).double())
    # relevance that cancels to rounding noise: the reference's + 1e-9 then matters, where
    # lrpfx's normalisation is scale-invariant
    assume(oracle.SMALLEST_MASS[0] > 1e-6)
    got = lrpfx.compile(net, merge_total_derivative=True).explain(x, target, contrastive=False)
    torch.testing.assert_close(got, _unit(expected), rtol=1e-5, atol=1e-8)


def test_the_option_changes_maps_only_where_a_branch_reads_its_skip():
    torch.manual_seed(0)
    net = Net(3, 5, 4, 3, True, True, True).double().eval()
    x = torch.randn(2, 3, 3, dtype=torch.double)
    local = lrpfx.compile(net).explain(x, contrastive=False)
    total = lrpfx.compile(net, merge_total_derivative=True).explain(x, contrastive=False)
    assert not torch.allclose(local, total, rtol=1e-3, atol=1e-6)
    # residual add, gate, inner and outer nested adds, attention add
    report = lrpfx.compile(net, merge_total_derivative=True, example_inputs=x).report
    assert len(report.total_derivative_merges) == 5
    assert "5 merges take the total derivative" in str(report)
    plain = nn.Sequential(nn.Linear(4, 6), nn.GELU(), nn.Linear(6, 3)).double().eval()
    y = torch.randn(3, 4, dtype=torch.double)
    torch.testing.assert_close(
        lrpfx.compile(plain, merge_total_derivative=True).explain(y),
        lrpfx.compile(plain).explain(y), rtol=0, atol=0)


@pytest.mark.parametrize("frontend", ["export", "symbolic_trace"])
def test_total_derivative_forward_unchanged_and_frontends_agree(frontend):
    torch.manual_seed(1)
    net = Net(3, 4, 4, 3, True, True, True).double().eval()
    x = torch.randn(2, 3, 3, dtype=torch.double)
    ex = lrpfx.compile(net, merge_total_derivative=True, frontend=frontend)
    with torch.no_grad():
        torch.testing.assert_close(ex(x), net(x), rtol=0, atol=0)
    expected = reference(net, x, F.one_hot(net(x).argmax(1), 4).double())
    torch.testing.assert_close(ex.explain(x, contrastive=False), _unit(expected),
                               rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("case_id", ["torchvision/mobilenet_v3_small", "hf/bert",
                                     "timm/deit_tiny_patch16_224"])
def test_total_derivative_on_real_architectures(case_id):
    """Squeeze-excitation gates (``mul`` merges), text with a padding mask, a ViT: the forward
    is unchanged, maps are finite, and a sample's map does not depend on its batch mates.
    (float64: on random weights the positive and negative maps agree to ~1e-4, so a float32
    contrastive map is dominated by rounding, with or without the option.)"""
    from tests import coverage_models as cm

    case = next(c for c in cm.all_cases() if c.id == case_id)
    model = cm.build(case).double()
    inputs = case.inputs()
    x = inputs.pop("x", None)
    x = None if x is None else x.double()
    ex = lrpfx.compile(model, merge_total_derivative=True)

    def run(sl):
        if x is not None:
            return ex.explain(x[sl])
        return ex.explain(**{k: v[sl] for k, v in inputs.items()})

    both = run(slice(0, 2))
    assert any("merge_skip" in str(n.target) for n in ex.graph_module.graph.nodes)
    assert torch.isfinite(both).all() and (both.abs().sum() > 0)
    torch.testing.assert_close(run(slice(1, 2)), both[1:2], rtol=1e-6, atol=1e-8)
    if x is not None:
        with torch.no_grad():
            torch.testing.assert_close(cm._logits(ex(x)), cm._logits(model(x)),
                                       rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case_id", ["hf/bert", "timm/deit_tiny_patch16_224", "hf/llama"])
@pytest.mark.parametrize("where", ["attention", True])
def test_replay_in_closed_form_equals_the_recomputed_replay(case_id, where, monkeypatch):
    """The replay of a branch runs each op's plain VJP in closed form on the forward's values
    (``RuleSpec.plain_vjp``) where it can; recomputing the whole branch with autograd (the
    general path) gives the same maps."""
    from lrpfx.passes import merge_gradient
    from tests import coverage_models as cm

    case = next(c for c in cm.all_cases() if c.id == case_id)
    model = cm.build(case).double()
    inputs = case.inputs()
    x = inputs.pop("x", None)
    kwargs = {} if x is None else {"x": x.double()}
    kwargs.update(inputs)

    def maps():
        ex = lrpfx.compile(model, merge_total_derivative=where)
        got = ex.explain(*kwargs.values(), contrastive=False) if x is not None \
            else ex.explain(**kwargs, contrastive=False)
        return got, {type(m).__name__ for m in ex.modules()}

    reused, kinds = maps()
    assert "ReusedCall" in kinds
    monkeypatch.setattr(merge_gradient, "_reused", lambda *a: set())
    recomputed, kinds = maps()
    assert "ReusedCall" not in kinds and "PlainCall" in kinds
    # float64; the two graphs sum contributions in other orders
    torch.testing.assert_close(reused, recomputed, rtol=1e-7, atol=1e-12)
