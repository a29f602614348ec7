"""Baseline attribution methods: hand-computed values, and the model is left as it was."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lrpfx.data.digits import digits_vgg
from lrpfx.data.zoo import digits_resnet, digits_vit
from lrpfx.metrics.baselines import (
    BASELINES,
    attention_rollout,
    capture_attention,
    default_cam_layer,
    gradient_weighted_rollout,
    make_baseline,
    tokens_to_grid,
)


def small_cnn() -> nn.Module:
    """conv(1→3) at full resolution, ReLU, global average pool, linear(3→2): CAMs in closed
    form (the gradient at the ReLU output is ``W[c, k] / (H·W)`` everywhere)."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(3, 2)).eval()
    with torch.no_grad():  # mixed signs in both rows, so no CAM is trivially zero
        model[4].weight.copy_(torch.tensor([[0.5, -0.3, 0.8], [-0.4, 0.6, 0.2]]))
    return model


def small_vit() -> nn.Module:
    torch.manual_seed(2)
    return digits_vit(size=8, patch=4, dim=16, depth=2, heads=2).eval()


def _grad(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    model(x).gather(1, t[:, None]).sum().backward()
    return x.grad


def _minmax(a: torch.Tensor) -> torch.Tensor:
    flat = a.flatten(1)
    lo = flat.amin(1).view(-1, *[1] * (a.dim() - 1))
    return (a - lo) / (1e-7 + (flat.amax(1).view_as(lo) - lo))


# --- pixel-gradient methods (Captum) ----------------------------------------------------------


def test_saliency_is_absolute_gradient() -> None:
    model, x = small_cnn(), torch.randn(3, 1, 6, 6)
    t = torch.tensor([0, 1, 1])
    torch.testing.assert_close(make_baseline("saliency", model)(x, t), _grad(model, x, t).abs())


def test_input_x_gradient_is_x_times_gradient() -> None:
    model, x = small_cnn(), torch.randn(3, 1, 6, 6)
    torch.testing.assert_close(make_baseline("input_x_gradient", model)(x, 1),
                               x * _grad(model, x, torch.tensor([1, 1, 1])))


def test_default_target_is_the_prediction() -> None:
    model, x = small_cnn(), torch.randn(4, 1, 6, 6)
    pred = model(x).argmax(1)
    fn = make_baseline("input_x_gradient", model)
    torch.testing.assert_close(fn(x), fn(x, pred))


def test_integrated_gradients_completeness() -> None:
    """Σ attributions = f(x) − f(0) (Sundararajan et al.), on a smooth float64 model."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Softplus(), nn.Flatten(),
                          nn.Linear(4 * 25, 3), nn.Tanh()).double().eval()
    x = torch.randn(2, 1, 5, 5, dtype=torch.float64)
    t = torch.tensor([0, 2])
    attr = make_baseline("integrated_gradients", model, n_steps=64)(x, t)
    with torch.no_grad():
        delta = (model(x) - model(torch.zeros_like(x))).gather(1, t[:, None]).squeeze(1)
    torch.testing.assert_close(attr.sum((1, 2, 3)), delta, rtol=1e-6, atol=1e-8)


def _mlp() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(4)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
    return model, torch.randn(2, 1, 2, 3)


def test_guided_backprop_and_deconvolution_closed_form() -> None:
    """One hidden ReLU layer: guided backprop = W1ᵀ (W2[c] ⊙ 1[z>0])⁺, deconvolution =
    W1ᵀ W2[c]⁺ (the ReLU's own mask replaced by the sign of the backward signal)."""
    model, x = _mlp()
    w1, w2 = model[1].weight, model[3].weight
    z = model[1](x.flatten(1))
    c = 2
    guided = ((w2[c] * (z > 0)).clamp_min(0) @ w1).view_as(x)
    deconv = (w2[c].clamp_min(0) @ w1).expand(2, -1).reshape(x.shape)
    torch.testing.assert_close(make_baseline("guided_backprop", model)(x, c), guided.detach())
    torch.testing.assert_close(make_baseline("deconvolution", model)(x, c), deconv.detach())


def test_smoothgrad_is_seeded_and_leaves_the_global_rng_alone() -> None:
    model, x = small_cnn(), torch.randn(2, 1, 6, 6)
    state = torch.random.get_rng_state()
    a = make_baseline("smoothgrad", model, nt_samples=4)(x, 0)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = make_baseline("smoothgrad", model, nt_samples=4)(x, 0)
    assert torch.equal(a, b)
    assert not torch.equal(a, make_baseline("saliency", model)(x, 0))


# --- CAMs -------------------------------------------------------------------------------------


def _closed_form_cam(model: nn.Module, x: torch.Tensor, c: int) -> tuple:
    a = model[1](model[0](x)).detach()                   # (B, 3, H, W) ReLU output
    w = model[4].weight[c].detach() / (x.shape[-2] * x.shape[-1])   # d logit_c / d a_k, uniform
    return a, w


@pytest.mark.parametrize("c", [0, 1])
def test_gradcam_family_closed_form(c: int) -> None:
    model, x = small_cnn(), torch.randn(2, 1, 6, 6)
    a, w = _closed_form_cam(model, x, c)

    def cam(weights: torch.Tensor) -> torch.Tensor:     # ReLU(Σ_k w_k A_k), scaled to [0, 1]
        return _minmax(F.relu((weights.view(-1, 3, 1, 1) * a).sum(1, keepdim=True)))

    # Grad-CAM++ (Chattopadhay et al. Eq. 19) with a uniform gradient g_k over the map:
    # α = g²/(2g² + ΣA·g³) at every position, weight_k = Σ_ij ReLU(g_k)·α
    s = a.sum((2, 3))
    alpha = w**2 / (2 * w**2 + s * w**3 + 1e-6)
    plus_plus = 36 * w.clamp_min(0) * alpha
    # grad-cam scales every map to [0, 1] per image
    expected = {
        "gradcam": cam(w.expand(2, 3)),
        "hirescam": cam(w.expand(2, 3)),   # Σ_k g ⊙ A_k: the same with a uniform gradient
        "layercam": cam(w.clamp_min(0).expand(2, 3)),
        "gradcam++": cam(plus_plus),
    }
    for name, want in expected.items():
        assert float(want.amax()) > 0.99, name          # not a trivially empty map
        torch.testing.assert_close(make_baseline(name, model)(x, c), want, rtol=1e-5,
                                   atol=1e-5, msg=name)


def test_guided_gradcam_closed_form() -> None:
    """Captum: guided backprop ⊙ ReLU(Σ_k mean(∂f/∂A_k) A_k), not rescaled."""
    model, x = small_cnn(), torch.randn(2, 1, 6, 6)
    a, w = _closed_form_cam(model, x, 0)
    cam = F.relu((w[None, :, None, None] * a).sum(1, keepdim=True))
    expected = make_baseline("guided_backprop", model)(x, 0) * cam
    torch.testing.assert_close(make_baseline("guided_gradcam", model)(x, 0), expected)


def test_default_cam_layer() -> None:
    x = torch.randn(1, 1, 16, 16)
    cnn = small_cnn()
    assert default_cam_layer(cnn, x) is cnn[1]                   # the ReLU after the conv
    vgg = digits_vgg().eval()
    layer = default_cam_layer(vgg, x)
    assert isinstance(layer, nn.ReLU) and layer is vgg.features[-2]   # before the last pool
    resnet = digits_resnet().eval()
    assert default_cam_layer(resnet, x) is resnet.layer3          # the whole residual block
    vit = small_vit()
    assert default_cam_layer(vit, torch.randn(1, 1, 8, 8)) is vit.blocks[-1].norm1


def test_maps_have_the_input_shape_with_three_channels() -> None:
    """Per-pixel maps (CAMs) are repeated over the channels; pixel methods keep them apart."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 3)).eval()
    x = torch.randn(2, 3, 8, 8)
    for name in ("gradcam", "saliency", "guided_gradcam"):
        out = make_baseline(name, model)(x, 0)
        assert out.shape == x.shape, name
    cam = make_baseline("gradcam", model)(x, 0)
    assert torch.equal(cam[:, 0], cam[:, 2])
    assert default_cam_layer(model, x) is model[4]           # at 4×4, upsampled to 8×8


def test_cam_layer_by_name_and_unknown_layer() -> None:
    model, x = small_cnn(), torch.randn(2, 1, 6, 6)
    torch.testing.assert_close(make_baseline("gradcam", model, layer="1")(x, 0),
                               make_baseline("gradcam", model)(x, 0))
    with pytest.raises(ValueError, match="no submodule named"):
        make_baseline("gradcam", model, layer="nope")(x, 0)


def test_gradcam_on_vit_reads_tokens_on_the_grid() -> None:
    vit = small_vit()
    x = torch.randn(2, 1, 8, 8)
    grid = tokens_to_grid(torch.arange(5.0).view(1, 5, 1), (8, 8))
    assert grid.flatten().tolist() == [1.0, 2.0, 3.0, 4.0]      # class token dropped
    cam = make_baseline("gradcam", vit)(x)
    assert cam.shape == x.shape and torch.isfinite(cam).all()
    with pytest.raises(ValueError, match="convolutional layer"):
        make_baseline("guided_gradcam", vit)(x)


# --- attention --------------------------------------------------------------------------------


def test_attention_rollout_hand_computed() -> None:
    a1 = torch.tensor([[0.5, 0.5], [0.2, 0.8]])
    a2 = torch.tensor([[1.0, 0.0], [0.4, 0.6]])
    # (A + I)/2 per layer: [[.75, .25], [.1, .9]] and [[1, 0], [.2, .8]]; product layer 2 · 1
    expected = torch.tensor([[0.75, 0.25], [0.23, 0.77]])
    torch.testing.assert_close(attention_rollout([a1[None], a2[None]]), expected[None])
    # heads are averaged first: two heads whose mean is a1 (resp. a2)
    h1 = torch.tensor([[[0.4, 0.6], [0.1, 0.9]], [[0.6, 0.4], [0.3, 0.7]]])
    h2 = torch.tensor([[[1.0, 0.0], [0.8, 0.2]], [[1.0, 0.0], [0.0, 1.0]]])
    torch.testing.assert_close(attention_rollout([h1[None], h2[None]]), expected[None])


def test_gradient_weighted_rollout_hand_computed() -> None:
    a = torch.tensor([[[0.5, 0.5], [0.2, 0.8]], [[0.9, 0.1], [0.5, 0.5]]])[None]   # 2 heads
    g = torch.tensor([[[2.0, -1.0], [1.0, 1.0]], [[0.0, 4.0], [-2.0, 2.0]]])[None]
    # (g ⊙ a)⁺: head 1 [[1, 0], [.2, .8]], head 2 [[0, .4], [0, 1]]; mean [[.5, .2], [.1, .9]]
    abar = torch.tensor([[0.5, 0.2], [0.1, 0.9]])
    eye = torch.eye(2)
    torch.testing.assert_close(gradient_weighted_rollout([a], [g]), (eye + abar)[None])
    torch.testing.assert_close(gradient_weighted_rollout([a, a], [g, g]),
                               ((eye + abar) @ (eye + abar))[None])


def test_capture_attention_records_timms_probabilities() -> None:
    """The recorder's explicit SDPA gives timm's own (non-fused) attention probabilities and
    the same logits; the model is not touched."""
    vit = small_vit()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        ref = vit(x)
    unfused = copy.deepcopy(vit)
    probs: list[torch.Tensor] = []
    for blk in unfused.blocks:
        blk.attn.fused_attn = False
        blk.attn.attn_drop.register_forward_hook(lambda m, i, o: probs.append(o))
    with torch.no_grad():
        unfused(x)
    with torch.no_grad(), capture_attention() as maps:
        out = vit(x)
    assert len(maps) == len(probs) == 2 and maps[0].shape == (3, 2, 5, 5)
    for m, p in zip(maps, probs):
        torch.testing.assert_close(m, p)
    torch.testing.assert_close(out, ref)


def test_attention_methods_on_vit_match_the_formulas() -> None:
    vit = small_vit()
    x = torch.randn(2, 1, 8, 8)
    t = torch.tensor([3, 7])
    with capture_attention() as maps:
        logits = vit(x.requires_grad_(True))
    grads = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), maps)

    def to_map(m: torch.Tensor) -> torch.Tensor:             # class-token row -> 8×8 pixels
        row = m[:, 0, 1:].reshape(2, 1, 2, 2)
        return F.interpolate(row, size=(8, 8), mode="bilinear", align_corners=False)

    x = x.detach()
    expected = {
        "rollout": to_map(attention_rollout([m.detach() for m in maps])),
        "last_attention": to_map(maps[-1].detach().mean(1)),
        "chefer": to_map(gradient_weighted_rollout([m.detach() for m in maps], grads)),
    }
    for name, want in expected.items():
        torch.testing.assert_close(make_baseline(name, vit)(x, t), want, msg=name)


def test_attention_methods_refuse_cnns() -> None:
    with pytest.raises(ValueError, match="no self-attention"):
        make_baseline("rollout", small_cnn())(torch.randn(1, 1, 6, 6))


# --- registry and model hygiene ---------------------------------------------------------------


def test_unknown_baseline_and_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown baseline 'nope'; known: saliency"):
        make_baseline("nope", small_cnn())
    with pytest.raises(ValueError, match="takes no layer"):
        make_baseline("saliency", small_cnn(), layer="1")
    with pytest.raises(TypeError, match="integrated_gradients"):
        make_baseline("integrated_gradients", small_cnn(), steps=3)


def _state(model: nn.Module) -> dict:
    return {
        "params": {k: v.detach().clone() for k, v in model.named_parameters()},
        "buffers": {k: v.clone() for k, v in model.named_buffers()},
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
        "training": [m.training for m in model.modules()],
    }


def _hooks(model: nn.Module) -> int:
    names = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
             "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs")
    return sum(len(getattr(m, n, {})) for m in model.modules() for n in names)


CASES = [(name, arch) for name, spec in BASELINES.items()
         for arch in ("vgg", "resnet", "vit")
         if not (spec.kind == "attention" and arch != "vit")
         and not (name == "guided_gradcam" and arch == "vit")]


@pytest.mark.parametrize(("name", "arch"), CASES)
def test_model_is_left_as_it_was(name: str, arch: str) -> None:
    """Parameters, buffers, requires_grad, .grad, train/eval mode and hooks are all unchanged
    after the method ran (on a model left in training mode, the hardest case)."""
    torch.manual_seed(0)
    model = {"vgg": digits_vgg, "resnet": digits_resnet}[arch]() if arch != "vit" \
        else digits_vit(size=16, dim=16, depth=2, heads=2)
    model.train()
    x = torch.randn(2, 1, 16, 16)
    before = _state(model)
    options = {"nt_samples": 2} if name == "smoothgrad" else \
        {"n_steps": 4} if name == "integrated_gradients" else {}
    out = make_baseline(name, model, **options)(x, 1)
    assert out.shape == x.shape and torch.isfinite(out).all() and not out.requires_grad
    after = _state(model)
    assert _hooks(model) == 0
    assert after["requires_grad"] == before["requires_grad"]
    assert all(g is None for g in after["grads"])
    assert after["training"] == before["training"]
    for kind in ("params", "buffers"):
        for k, v in before[kind].items():
            assert torch.equal(after[kind][k], v), (kind, k)


@pytest.mark.parametrize("name", ["saliency", "guided_backprop", "gradcam"])
def test_model_is_not_changed_even_during_the_call(name: str) -> None:
    """Nothing is switched and restored: while the method runs (seen from a hook the model
    carries, which the method's copy runs), the user's model is still in training mode with
    trainable parameters. A switch-and-restore would break a second thread using the model."""
    torch.manual_seed(0)
    model = digits_vgg().train()
    seen: list[tuple[bool, bool]] = []

    def watch(module: nn.Module, args: tuple) -> None:
        seen.append((model.training, all(p.requires_grad for p in model.parameters())))

    model.register_forward_pre_hook(watch)
    make_baseline(name, model)(torch.randn(2, 1, 16, 16), 1)
    assert seen and all(s == (True, True) for s in seen)


def test_layer_given_as_the_users_submodule() -> None:
    torch.manual_seed(0)
    model = digits_vgg().eval()
    x = torch.randn(2, 1, 16, 16)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    by_module = make_baseline("gradcam", model, layer=convs[0])(x, 1)
    name = next(n for n, m in model.named_modules() if m is convs[0])
    torch.testing.assert_close(by_module, make_baseline("gradcam", model, layer=name)(x, 1))
    with pytest.raises(ValueError, match="not a submodule"):
        make_baseline("gradcam", model, layer=nn.Conv2d(1, 1, 1))
