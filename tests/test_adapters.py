"""The Captum and Quantus adapters, driven through those libraries' real APIs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lrpfx
from lrpfx.apps.adapters import LRPFXAttribution, quantus_explain_func

captum_attr = pytest.importorskip("captum.attr")
captum_metrics = pytest.importorskip("captum.metrics")


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


@pytest.fixture(scope="module")
def setup():
    model = _cnn()
    torch.manual_seed(1)
    x = torch.randn(4, 3, 16, 16)
    return model, x, LRPFXAttribution(model), lrpfx.compile(model)


def test_captum_attribute_equals_explain(setup) -> None:
    model, x, attr, explainer = setup
    assert isinstance(attr, captum_attr.Attribution)
    assert attr.forward_func is model and attr.multiplies_by_inputs
    assert not attr.has_convergence_delta()
    y = torch.tensor([0, 1, 2, 3])
    torch.testing.assert_close(attr.attribute(x, target=y), explainer.explain(x, y),
                               rtol=0, atol=0)
    # Captum's other target spellings: int, list of ints, 0-d tensor, None (predicted class)
    torch.testing.assert_close(attr.attribute(x, target=2), explainer.explain(x, 2))
    torch.testing.assert_close(attr.attribute(x, target=[0, 1, 2, 3]), explainer.explain(x, y))
    torch.testing.assert_close(attr.attribute(x, target=torch.tensor(1)), explainer.explain(x, 1))
    torch.testing.assert_close(attr.attribute(x), explainer.explain(x, model(x).argmax(1)))
    # tuple in, tuple out (Captum's multi-input form with one input)
    (r,) = attr.attribute((x,), target=y)
    torch.testing.assert_close(r, explainer.explain(x, y))
    # the positive map, per call or per instance
    pos = explainer.explain(x, y, contrastive=False)
    torch.testing.assert_close(attr.attribute(x, target=y, contrastive=False), pos)
    torch.testing.assert_close(LRPFXAttribution(model, contrastive=False).attribute(x, y), pos)
    with pytest.raises(ValueError, match="tuple targets"):
        attr.attribute(x, target=(0, 1))
    with pytest.raises(ValueError, match="one input"):
        attr.attribute((x, x), target=0)
    with pytest.raises(ValueError, match="additional_forward_args"):
        attr.attribute(x, target=0, additional_forward_args=(1,))


def test_captum_noise_tunnel_and_metrics(setup) -> None:
    model, x, attr, explainer = setup
    ref = explainer.explain(x, 1)
    # NoiseTunnel calls attribute.__wrapped__ on the attribution object: with zero noise,
    # SmoothGrad is the mean of identical maps
    nt = captum_attr.NoiseTunnel(attr)
    smooth = nt.attribute(x, nt_type="smoothgrad", nt_samples=3, stdevs=0.0, target=1)
    torch.testing.assert_close(smooth, ref, rtol=0, atol=1e-6)
    noisy = nt.attribute(x, nt_type="smoothgrad", nt_samples=3, stdevs=0.5, target=1)
    assert noisy.shape == x.shape and (noisy - ref).abs().amax() > 1e-3

    # sensitivity_max: max ‖R(x + δ) − R(x)‖ / ‖R(x)‖ over perturbations; with a zero radius
    # every perturbed map equals R(x)
    torch.manual_seed(2)
    sens = captum_metrics.sensitivity_max(attr.attribute, x, target=1, n_perturb_samples=3)
    assert sens.shape == (4,) and torch.isfinite(sens).all() and (sens > 0).all()
    zero = captum_metrics.sensitivity_max(attr.attribute, x, target=1, n_perturb_samples=2,
                                          perturb_radius=0.0)
    torch.testing.assert_close(zero, torch.zeros(4), rtol=0, atol=1e-6)

    # infidelity with the attributions computed by the adapter, against a recomputation
    def perturb(inputs):
        noise = torch.full_like(inputs, 0.01)
        return noise, inputs - noise

    y = torch.tensor([0, 1, 2, 3])
    r = attr.attribute(x, target=y)
    infid = captum_metrics.infidelity(model, perturb, x, r, target=y, n_perturb_samples=2,
                                      normalize=False)
    with torch.no_grad():
        drop = model(x).gather(1, y[:, None])[:, 0] - model(x - 0.01).gather(1, y[:, None])[:, 0]
    expected = ((0.01 * r).flatten(1).sum(1) - drop) ** 2
    torch.testing.assert_close(infid, expected, rtol=1e-4, atol=1e-8)


def _gini(a: np.ndarray) -> np.ndarray:
    """Quantus' Sparseness: the Gini index of |a| / max|a| per example (by hand)."""
    a = np.abs(a / np.abs(a).reshape(len(a), -1).max(1).reshape(-1, *[1] * (a.ndim - 1)))
    a = np.sort(a.reshape(len(a), -1) + 1e-7, axis=1)
    n = a.shape[1]
    k = np.arange(1, n + 1)
    return ((2 * k - n - 1) * a).sum(1) / (n * a.sum(1))


def test_quantus_explain_func_with_real_metrics(setup) -> None:
    quantus = pytest.importorskip("quantus")
    model, x, _, explainer = setup
    xn = x.numpy()
    yn = model(x).argmax(1).numpy()
    a = quantus_explain_func(model, xn, yn)
    # Quantus convention: channels summed, kept as size 1; float32 numpy
    assert isinstance(a, np.ndarray) and a.dtype == np.float32 and a.shape == (4, 1, 16, 16)
    ref = explainer.explain(x, torch.from_numpy(yn)).sum(1, keepdim=True)
    np.testing.assert_allclose(a, ref.numpy(), rtol=0, atol=1e-7)
    full = quantus_explain_func(model, xn, yn, reduce_axes=(), contrastive=False)
    np.testing.assert_allclose(full, explainer.explain(x, torch.from_numpy(yn),
                                                       contrastive=False).numpy(), atol=1e-7)
    with pytest.raises(ValueError, match="batch axis"):
        quantus_explain_func(model, xn, yn, reduce_axes=(0,))

    sparseness = quantus.Sparseness(disable_warnings=True, display_progressbar=False)
    scores = sparseness(model=model, x_batch=xn, y_batch=yn, a_batch=None,
                        explain_func=quantus_explain_func, device="cpu")
    np.testing.assert_allclose(scores, _gini(a), rtol=1e-6)

    faithfulness = quantus.FaithfulnessCorrelation(
        nr_runs=8, subset_size=32, perturb_baseline="black", disable_warnings=True,
        display_progressbar=False, return_aggregate=False)
    corr = faithfulness(model=model, x_batch=xn, y_batch=yn, a_batch=None,
                        explain_func=quantus_explain_func,
                        explain_func_kwargs={"contrastive": False}, device="cpu")
    assert len(corr) == 4 and all(-1 <= c <= 1 for c in corr)


def test_quantus_cache_recompiles_when_weights_change() -> None:
    model = _cnn()
    x = torch.randn(2, 3, 8, 8)
    a1 = quantus_explain_func(model, x.numpy(), np.array([0, 1]))
    a2 = quantus_explain_func(model, x.numpy(), np.array([0, 1]))
    np.testing.assert_array_equal(a1, a2)
    with torch.no_grad():  # in place, as Quantus' randomisation metrics do
        model[-1].weight.mul_(-1)
    a3 = quantus_explain_func(model, x.numpy(), np.array([0, 1]))
    expected = lrpfx.compile(model).explain(x, torch.tensor([0, 1])).sum(1, keepdim=True)
    np.testing.assert_allclose(a3, expected.numpy(), atol=1e-7)
    assert np.abs(a3 - a1).max() > 1e-3
