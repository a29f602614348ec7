"""Real architectures, random init: forward unchanged, maps finite and meaningful, both
frontends agree."""

from __future__ import annotations

import pytest
import torch

import lrpfx

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")

TORCHVISION = ["vgg16", "resnet50", "densenet121", "mobilenet_v3_small", "efficientnet_b0"]


def _check(model: torch.nn.Module, x: torch.Tensor, explainer: lrpfx.Explainer) -> torch.Tensor:
    with torch.no_grad():
        expected = model(x)
    assert torch.equal(explainer(x), expected), "compiled forward differs from the model"
    assert explainer.report.ok
    parts = explainer.explain_parts(x)
    for key in ("positive", "negative", "contrastive"):
        r = getattr(parts, key)
        assert r.shape == x.shape and torch.isfinite(r).all(), key
        assert r.abs().amax() > 0, f"{key} map is all zero"
    other = (parts.target + 1) % expected.shape[1]
    changed = explainer.explain(x, target=other)
    assert (changed - parts.contrastive).abs().amax() > 1e-4, "map ignores the target"
    return parts.contrastive


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision(name):
    model = getattr(torchvision.models, name)(weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    explainer = lrpfx.compile(model)
    contrastive = _check(model, x, explainer)
    traced = lrpfx.compile(model, frontend="symbolic_trace")
    torch.testing.assert_close(traced.explain(x), contrastive, rtol=1e-5, atol=1e-6)


def test_timm_vgg16_shape_branch():
    """timm's VGG head branches on the feature map's size: export handles it, fx cannot."""
    model = timm.create_model("vgg16", pretrained=False).eval()
    x = torch.randn(2, 3, 64, 64)
    _check(model, x, lrpfx.compile(model))
    with pytest.raises(lrpfx.CaptureError, match="symbolic_trace"):
        lrpfx.compile(model, frontend="symbolic_trace")


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_timm_resnet_frontends_agree(name):
    model = timm.create_model(name, pretrained=False).eval()
    x = torch.randn(2, 3, 64, 64)
    contrastive = _check(model, x, lrpfx.compile(model))
    traced = lrpfx.compile(model, frontend="symbolic_trace")
    torch.testing.assert_close(traced.explain(x), contrastive, rtol=1e-5, atol=1e-6)
