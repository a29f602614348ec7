"""Public API behaviour: forward unchanged, model untouched, batch independence, strict mode,
clear errors."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import lrpfx


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        h = self.features(x)
        h = h + self.features[4](h)  # residual with fan-out
        return self.head(h.mean((2, 3)))


@pytest.fixture
def model():
    m = SmallCNN()
    with torch.no_grad():  # non-trivial running statistics
        m.features[1].running_mean.uniform_(-0.5, 0.5)
        m.features[1].running_var.uniform_(0.5, 2.0)
    return m.eval()


def test_forward_is_bit_for_bit(model):
    x = torch.randn(4, 3, 16, 16)
    explainer = lrpfx.compile(model)
    assert torch.equal(explainer(x), model(x))


def test_model_untouched(model):
    calls = []
    handle = model.register_forward_hook(lambda m, i, o: calls.append(1))
    params = {k: (v, v.detach().clone()) for k, v in model.state_dict(keep_vars=True).items()}
    forward = model.forward
    hooks = dict(model._forward_hooks)
    model.train()
    x = torch.randn(2, 3, 16, 16)
    with pytest.warns(UserWarning, match="training mode"):
        explainer = lrpfx.compile(model)
    explainer.explain(x)
    explainer.to(torch.float64)
    explainer.explain(x.double())
    assert model.training and all(m.training for m in model.modules())
    assert model.forward == forward and dict(model._forward_hooks) == hooks
    for k, v in model.state_dict(keep_vars=True).items():
        original, value = params[k]
        assert v is original, f"{k} was replaced"
        assert v.dtype == value.dtype and torch.equal(v, value), f"{k} changed"
        if isinstance(v, nn.Parameter):
            assert v.requires_grad and v.grad is None
    # the compiled graph shares no storage with the model
    model_ptrs = {v.data_ptr() for v in model.state_dict().values()}
    assert not model_ptrs & {t.data_ptr() for t in explainer.state_dict().values()}
    handle.remove()


def test_batch_independence(model):
    model = model.double()  # float64: kernels chosen per batch size differ only in rounding
    x = torch.randn(5, 3, 16, 16, dtype=torch.float64)
    explainer = lrpfx.compile(model)
    batch = explainer.explain(x, target=torch.tensor([0, 1, 2, 3, 4]))
    for i in range(5):
        alone = explainer.explain(x[i:i + 1], target=i)
        torch.testing.assert_close(batch[i:i + 1], alone, rtol=1e-9, atol=1e-12)
    mates = torch.randn(3, 3, 16, 16, dtype=torch.float64) * 10
    again = explainer.explain(torch.cat([x[:1], mates]), target=0)
    torch.testing.assert_close(again[:1], batch[:1], rtol=1e-9, atol=1e-12)


def test_maps_are_normalised_and_contrastive(model):
    x = torch.randn(3, 3, 16, 16)
    explainer = lrpfx.compile(model)
    parts = explainer.explain_parts(x, target=1)
    torch.testing.assert_close(parts.positive.abs().sum((1, 2, 3)), torch.ones(3))
    torch.testing.assert_close(parts.negative.abs().sum((1, 2, 3)), torch.ones(3))
    torch.testing.assert_close(parts.contrastive.abs().amax((1, 2, 3)), torch.ones(3))
    torch.testing.assert_close(explainer.explain(x, target=1), parts.contrastive)
    torch.testing.assert_close(explainer.explain(x, 1, contrastive=False), parts.positive)
    other = explainer.explain(x, target=2)
    assert (other - parts.contrastive).abs().amax() > 1e-3
    assert torch.equal(parts.target, torch.ones(3, dtype=torch.long))
    torch.testing.assert_close(lrpfx.explain(model, x, target=1), parts.contrastive)


def test_target_none_is_argmax(model):
    x = torch.randn(3, 3, 16, 16)
    explainer = lrpfx.compile(model)
    pred = model(x).argmax(1)
    torch.testing.assert_close(explainer.explain(x), explainer.explain(x, target=pred))


def test_report_is_data(model):
    explainer = lrpfx.compile(model, example_inputs=torch.randn(2, 3, 16, 16))
    report = explainer.report
    assert report.ok and report.rule_set == "abslrp"
    canon = [n.canonical for n in report.nodes if n.status == "rule"]
    assert canon.count("conv") == 3 and canon.count("batch_norm") == 1
    assert canon.count("add") == 1 and canon.count("linear") == 1
    conv = [n for n in report.nodes if n.canonical == "conv"]
    assert conv[0].module == "features.0" and not conv[0].nonneg_input
    assert all(n.nonneg_input for n in conv[1:])  # after relu / max pool
    assert "features.0" in str(report)


def test_report_before_capture_explains_itself(model):
    with pytest.raises(RuntimeError, match="example_inputs"):
        lrpfx.compile(model).report  # noqa: B018


class WithCumsum(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(4, 4))
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(torch.cumprod(self.inner(x), dim=1))


def test_strict_mode_raises_before_running():
    model = WithCumsum().eval()
    calls = []
    model.head.register_forward_hook(lambda *a: calls.append(1))
    x = torch.randn(2, 4)
    with pytest.raises(lrpfx.UnsupportedOpError) as info:
        lrpfx.compile(model, example_inputs=x)
    err = info.value
    assert [n.op for n in err.report.unsupported] == ["aten.cumprod.default"]
    assert "cumprod" in str(err) and "strict=False" in str(err)
    with pytest.raises(lrpfx.UnsupportedOpError, match="cumprod"):
        lrpfx.compile(model, frontend="symbolic_trace")
    with pytest.warns(UserWarning, match="cumprod"):
        explainer = lrpfx.compile(model, strict=False, example_inputs=x)
    assert torch.isfinite(explainer.explain(x)).all()
    assert explainer.report.unsupported[0].status == "unsupported"


def test_bad_inputs(model):
    explainer = lrpfx.compile(model)
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match="out of range"):
        explainer.explain(x, target=5)
    with pytest.raises(ValueError, match="out of range"):
        explainer.explain(x, target=-1)
    with pytest.raises(ValueError, match="shape"):
        explainer.explain(x, target=torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="integer"):
        explainer.explain(x, target=torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match="target"):
        explainer.explain(x, target="cat")
    with pytest.raises(TypeError, match="floating"):
        explainer.explain(x.to(torch.int64))
    with pytest.raises(TypeError, match="Tensor"):
        explainer.explain(x.numpy())
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        explainer.explain(bad)
    with pytest.raises((ValueError, lrpfx.CaptureError)):
        explainer.explain(torch.randn(2, 4, 16, 16))  # wrong channel count
    with pytest.raises(ValueError, match="unknown rule set"):
        lrpfx.compile(model, rule="nope")
    with pytest.raises(ValueError, match="option"):
        lrpfx.compile(model, not_an_option=True)


def test_symbolic_trace_graph_module_input_is_not_mutated(model):
    gm = torch.fx.symbolic_trace(model)
    before = str(gm.graph)
    code = gm.code
    explainer = lrpfx.compile(gm)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(explainer.explain(x), lrpfx.compile(model).explain(x),
                               rtol=1e-5, atol=1e-6)
    assert str(gm.graph) == before and gm.code == code
    assert torch.equal(gm(x), model(x))


def test_new_input_size_recaptures(model):
    explainer = lrpfx.compile(model)
    small, large = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 24, 24)
    assert torch.equal(explainer(small), model(small))
    assert torch.equal(explainer(large), model(large))
    assert len(explainer.graphs) == 2
    explainer(torch.randn(7, 3, 16, 16))  # dynamic batch: no new capture
    assert len(explainer.graphs) == 2


def test_deepcopy_and_no_warnings_in_eval(model):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        explainer = lrpfx.compile(model, example_inputs=torch.randn(2, 3, 16, 16))
    copy.deepcopy(explainer)
