"""No silent NaN, no silent all-zero map, targets and options checked (issue 16, items 8, 9 and
the target/option part of 13)."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lrpfx
from lrpfx.core.targets import relevance_seed


def _bias_free() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 6 * 6, 5, bias=False)).eval()


class Attention(nn.Module):
    """Embedding, layer norm, self-attention, GELU MLP, mean pooling, head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 8)
        self.norm = nn.LayerNorm(8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        n = self.norm(h)
        h = h + self.attn(n, n, n, need_weights=False)[0]
        h = h + self.mlp(h)
        return self.head(h.mean(1))


def _models() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(),
                        nn.Linear(16, 3)).eval()
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(4 * 3 * 3, 3)).eval()
    return {"mlp": (mlp, (2, 10)), "bias_free": (_bias_free(), (2, 3, 8, 8)),
            "cnn_bn": (cnn, (2, 3, 8, 8)), "attention": (Attention().eval(), (2, 5, 6))}


@pytest.fixture(scope="module")
def compiled() -> dict[str, tuple[lrpfx.Explainer, tuple[int, ...]]]:
    out = {}
    for name, (model, shape) in _models().items():
        ex = lrpfx.compile(model)
        ex.explain(torch.randn(shape))  # capture once: the property test only explains
        out[name] = (ex, shape)
    return out


# ----------------------------------------------------------------------------- item 8


@pytest.mark.parametrize("name", ["mlp", "bias_free", "cnn_bn", "attention"])
@settings(max_examples=25, deadline=None)
@given(exponent=st.one_of(st.sampled_from([-39.0, -30.0, -20.0, 20.0, 30.0]),
                          st.floats(-30, 30)),
       spread=st.one_of(st.just(0.0), st.floats(0, 10)), seed=st.integers(0, 2**31 - 1),
       contrastive=st.booleans())
def test_any_finite_input_gives_a_finite_map_or_a_value_error(
        compiled, name: str, exponent: float, spread: float, seed: int,  # noqa: ANN001
        contrastive: bool) -> None:
    """Random finite inputs of scale 1e-30 … 1e30 and 1e-39 (each element spread over a further
    ±spread decades, down to float32's subnormals): the map is finite, or explain raises
    ValueError; never NaN."""
    ex, shape = compiled[name]
    g = torch.Generator().manual_seed(seed)
    decades = exponent + spread * (2 * torch.rand(shape, generator=g) - 1)
    x = torch.randn(shape, generator=g) * 10 ** decades.clamp(-40, 37)
    assert torch.isfinite(x).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-zero maps warn: allowed here
        try:
            r = ex.explain(x, contrastive=contrastive)
        except ValueError as e:
            assert "finite" in str(e) or "overflow" in str(e)
            return
    assert torch.isfinite(r).all()


@pytest.mark.parametrize("scale", [1e-39, 1e-30])
def test_tiny_inputs_warn_instead_of_nan_or_silent_zeros(scale: float) -> None:
    """A bias-free net at ×1e-39 (the output seed 1/out overflowed: NaN) and ×1e-30 (relevance
    shrinks by |z|/1e-9 at each layer under the absolute stabiliser and underflows float32): a
    finite map and a warning that says why; float64 keeps the map."""
    model = _bias_free()
    x = torch.randn(2, 3, 8, 8) * scale
    ex = lrpfx.compile(model)
    with pytest.warns(RuntimeWarning, match=r"examples \[0, 1\] is all zero.*stabiliser.*float64"):
        r = ex.explain(x)
    assert torch.isfinite(r).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r64 = lrpfx.compile(model.double()).explain(x.double())
    assert torch.isfinite(r64).all() and (r64.flatten(1).abs().amax(1) > 0).all()


def test_stabiliser_dominated_input_keeps_its_map_in_float32() -> None:
    """×1e-20 (all zeros before): the large output seed carries the relevance through; the map
    is float64's (the stabiliser-dominated map, which differs from the ×1 map by design)."""
    model = _bias_free()
    x = torch.randn(2, 3, 8, 8) * 1e-20
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = lrpfx.compile(model).explain(x)
        r64 = lrpfx.compile(model.double()).explain(x.double())
    cos = nn.functional.cosine_similarity(r.double().flatten(1), r64.flatten(1))
    assert (cos > 1 - 1e-5).all()


def test_relevance_seed_overflow_is_rescaled_per_example() -> None:
    out = torch.tensor([[2.0, -0.5, 1e-3], [1e-40, -3e-40, 0.0]])  # second: subnormal float32
    seed = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.5, 1.0]])
    g = relevance_seed(seed, out)
    assert torch.isfinite(g).all()
    assert torch.equal(g[0], torch.where(out[0] != 0, seed[0] / out[0], 0))  # unchanged
    # out ⊙ G ∝ seed (0 where out is 0): the ratio is one positive number per example
    r = out[1].double() * g[1].double()
    assert torch.allclose(r[:2] / r[:2].sum(), seed[1, :2].double() / seed[1, :2].sum())
    assert r[2] == 0 and g[1].abs().max() == torch.finfo(torch.float32).max ** 0.75


def test_zero_target_logit_warns_once_with_the_reason() -> None:
    model = _bias_free()
    with torch.no_grad():
        model[3].weight[0] = 0  # class 0's logit is exactly 0
    x = torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = lrpfx.compile(model).explain(x, 0, contrastive=False)
    messages = [str(w.message) for w in caught if w.category is RuntimeWarning]
    assert len(messages) == 1 and "exactly 0" in messages[0] and "[0, 1]" in messages[0]
    assert torch.isfinite(r).all() and (r == 0).all()


def test_model_output_overflow_is_a_value_error() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 3)).eval()
    ex = lrpfx.compile(model)
    x = torch.randn(2, 4)
    x[1] *= 1e30  # its variance overflows float32: the model itself returns NaN
    assert not torch.isfinite(model(x)[1]).all()
    with pytest.raises(ValueError, match=r"not finite \(NaN or inf\) for examples \[1\]"):
        ex.explain(x)


def test_zero_input_gives_zero_map_without_warning() -> None:
    """x ⊙ G is 0 for x = 0: the expected answer, not a vanished relevance (the biases keep the
    outputs non-zero)."""
    model = _models()["cnn_bn"][0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = lrpfx.compile(model).explain(torch.zeros(1, 3, 8, 8), 1)
    assert (r == 0).all()


# ----------------------------------------------------------------------------- item 9


@pytest.fixture(scope="module")
def mlp() -> tuple[lrpfx.Explainer, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    return lrpfx.compile(model), torch.randn(4, 5)


@pytest.mark.parametrize(("fn", "match"), [
    (lambda o: o[:1, 0], r"shape \(1,\) for a batch of 4"),
    (lambda o: o[:, 0].sum(), r"shape \(\) for a batch of 4"),
    (lambda o: o[:, :2], r"shape \(4, 2\) for a batch of 4"),
    (lambda o: o[:, 0].detach(), "does not depend on the model output"),
    (lambda o: torch.ones(4), "does not depend on the model output"),
    (lambda o: o[:, 0] * float("nan"), r"NaN or inf for examples \[0, 1, 2, 3\]"),
    (lambda o: o[:, 0] / (o[:, 0] - o[:, 0]).masked_fill(torch.arange(4) != 2, 1),
     r"NaN or inf for examples \[2\]"),
    (lambda o: o.argmax(1), "torch.int64 tensor"),
    (lambda o: o[:, 0].tolist(), "returned a list"),
])
def test_callable_targets_are_checked(mlp, fn, match: str) -> None:  # noqa: ANN001
    ex, x = mlp
    with pytest.raises(ValueError, match=match) as info:
        ex.explain(x, fn)
    assert "must return one finite score per example" in str(info.value)


def test_a_good_callable_target_equals_the_class_target_for_gradient_rules(mlp) -> None:  # noqa: ANN001
    _, x = mlp
    ex = lrpfx.compile(ex_model(mlp), rule="gradient_x_input")
    a = ex.explain(x, lambda o: o[:, 2], normalize=False)
    b = ex.explain(x, 2, contrastive=False, normalize=False)
    assert torch.allclose(a, b)


def ex_model(mlp) -> nn.Module:  # noqa: ANN001
    return mlp[0]._model


# ----------------------------------------------------------------------------- item 13


def test_flags_and_options_must_be_bools(mlp) -> None:  # noqa: ANN001
    ex, x = mlp
    with pytest.raises(TypeError, match="contrastive must be True or False, got 'no'"):
        ex.explain(x, contrastive="no")
    with pytest.raises(TypeError, match="normalize must be True or False"):
        ex.explain(x, normalize=0)
    with pytest.raises(TypeError, match="'max_pool_divide' of rule set 'abslrp' must be True"):
        lrpfx.compile(ex_model(mlp), max_pool_divide="no")
    with pytest.raises(TypeError, match="'steps' .* must be an integer, got 2.5"):
        lrpfx.compile(ex_model(mlp), rule="integrated_gradients", steps=2.5)
    with pytest.raises(TypeError, match="'epsilon' .* must be a number, got '0.1'"):
        lrpfx.compile(ex_model(mlp), rule="epsilon", epsilon="0.1")


@pytest.mark.parametrize("target", [2**70, -2**70, 3, -1, torch.tensor([0, 1, 2, 3])])
def test_out_of_range_targets_are_value_errors(mlp, target) -> None:  # noqa: ANN001
    ex, x = mlp
    with pytest.raises(ValueError, match="out of range: the output has 3 classes"):
        ex.explain(x, target)


def test_outputs_without_a_batch_dimension_are_value_errors() -> None:
    from lrpfx.core.targets import TargetSpec, output_seeds
    from lrpfx.rules.registry import get_ruleset

    abslrp = get_ruleset("abslrp")
    for out in (torch.tensor(1.0), torch.zeros(3, 2)):
        with pytest.raises(ValueError, match="does not start with the batch dimension"):
            output_seeds(abslrp, out, TargetSpec(), False, batch=2)
    with pytest.raises(ValueError, match="one score per example.*target=lambda out: out"):
        output_seeds(abslrp, torch.zeros(2), TargetSpec(), False, batch=2)


def test_a_score_every_input_lowers_warns_only_when_the_result_is_zero() -> None:
    """absLRP passes positive contributions only: class 0, lowered by every input, gets no
    positive relevance. The positive map is all zero (a warning says why); the contrastive map
    is not (the other classes' evidence), so it comes without a warning."""
    model = nn.Linear(4, 3, bias=False).eval()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[-1.0, -2, -1, -3], [1, 2, 0, 1], [0, 1, 2, 1]]))
    ex = lrpfx.compile(model)
    x = torch.rand(2, 4) + 0.1
    with pytest.warns(RuntimeWarning, match="positive contributions only"):
        r = ex.explain(x, 0, contrastive=False)
    assert (r == 0).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c = ex.explain(x, 0)
    assert (c.flatten(1).abs().amax(1) > 0).all()
