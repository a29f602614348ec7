"""Baseline attribution methods to compare lrpfx with, built from existing libraries.

Every method is made by :func:`make_baseline` and is a function ``explain_fn(x, target) -> map``:

- ``x``: a float batch ``(B, C, H, W)``; ``target``: None (the predicted class), an int, or a
  LongTensor ``(B,)``, as for :meth:`lrpfx.Explainer.explain`.
- the map is a detached tensor **of the shape of x**. Pixel methods (saliency, integrated
  gradients, ...) give one value per input element. Methods with one value per pixel (the CAMs
  and the attention methods, computed on a coarse grid and upsampled to ``H×W``) repeat that
  value over the channels, so metrics can treat every map, lrpfx's included, alike.
- values are the method's own (signed or not, not rescaled), except the CAMs of the
  ``grad-cam`` package, which that package min-max scales to ``[0, 1]`` per image.

========================  =========================================  =========================
name                      method                                     library
========================  =========================================  =========================
``saliency``              ``|∂f_c/∂x|`` (Simonyan et al. 2014)       Captum ``Saliency``
``input_x_gradient``      ``x ⊙ ∂f_c/∂x`` (Shrikumar et al. 2016)    Captum ``InputXGradient``
``integrated_gradients``  path integral from a zero baseline         Captum
                          (Sundararajan et al. 2017)                 ``IntegratedGradients``
``smoothgrad``            saliency averaged over noisy copies        Captum ``NoiseTunnel``
                          (Smilkov et al. 2017)                      over ``Saliency``
``guided_backprop``       (Springenberg et al. 2015)                 Captum ``GuidedBackprop``
``deconvolution``         (Zeiler & Fergus 2014)                     Captum ``Deconvolution``
``guided_gradcam``        guided backprop ⊙ Grad-CAM                 Captum ``GuidedGradCam``
``gradcam``               (Selvaraju et al. 2017)                    grad-cam ``GradCAM``
``gradcam++``             (Chattopadhay et al. 2018)                 grad-cam ``GradCAMPlusPlus``
``hirescam``              (Draelos & Carin 2020)                     grad-cam ``HiResCAM``
``layercam``              (Jiang et al. 2021)                        grad-cam ``LayerCAM``
``rollout``               attention rollout (Abnar & Zuidema 2020)   this module
``last_attention``        class-token attention of the last block    this module
``chefer``                gradient-weighted rollout                  this module
                          (Chefer, Gur, Wolf, ICCV 2021)
========================  =========================================  =========================

Guided backprop and deconvolution change the backward of ``nn.ReLU`` *modules* only (Captum's
design): on a model without them (e.g. a ViT with GELUs) they equal the plain gradient. Guided
Grad-CAM needs a convolutional layer and refuses ViTs; the attention methods need
self-attention and refuse CNNs (a ``ValueError`` says so).

**The model is left as it was.** :func:`make_baseline` builds the method on an eval-mode copy of
the model's modules whose parameters share the model's storage but do not require gradients
(:func:`lrpfx.metrics.base.eval_copy`): nothing is switched and restored, so methods run from
several threads at once, and only the input's gradient is computed (no ``.grad`` is written).
The hooks Captum (guided backprop and deconvolution override the backward of ``nn.ReLU``
modules through forward hooks) and grad-cam (activation and gradient hooks on the CAM layer)
register sit on the copy and are removed when each call ends; the attention methods register no
hooks at all (see :func:`capture_attention`). Build the method again after moving the model to
another device or dtype.

**CAM layer.** CAM methods (and ``guided_gradcam``) read one layer; ``layer=None`` picks it with
:func:`default_cam_layer`: for timm-style ViTs (a ``blocks`` list whose blocks have ``norm1``)
the last block's ``norm1``, whose tokens are reshaped to the patch grid (the convention of the
grad-cam package); otherwise the output of the last ``nn.Conv2d`` that runs, taken after the
layers that follow it at the same shape (the ReLU after it, or the whole residual block that ends
with it).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from lrpfx.metrics.base import eval_copy

__all__ = [
    "BASELINES", "BaselineSpec", "ExplainFn", "attention_rollout", "capture_attention",
    "default_cam_layer", "gradient_weighted_rollout", "make_baseline", "tokens_to_grid",
]

Target = int | Tensor | None
#: ``explain_fn(x, target) -> map`` (the map has the shape of ``x``).
ExplainFn = Callable[[Tensor, Target], Tensor]


# --------------------------------------------------------------------------------------------
# shared helpers


def _resolve_target(model: nn.Module, x: Tensor, target: Target) -> Tensor:
    """A LongTensor ``(B,)`` of classes; None means the model's prediction."""
    b = x.shape[0]
    if target is None:
        with torch.no_grad():
            return model(x).argmax(1)
    if isinstance(target, bool) or not isinstance(target, (int, Tensor)):
        raise TypeError(f"target must be None, an int or a LongTensor, got {type(target).__name__}")
    if isinstance(target, int):
        return torch.full((b,), target, dtype=torch.long, device=x.device)
    if target.is_floating_point() or target.dtype == torch.bool:
        raise TypeError(f"target must hold integer class indices, got {target.dtype}")
    t = target.to(device=x.device, dtype=torch.long).reshape(-1)
    if t.numel() not in (1, b):
        raise ValueError(f"target must have shape ({b},); got {tuple(target.shape)}")
    return t.expand(b).clone()


def _per_pixel(cam: Tensor, x: Tensor) -> Tensor:
    """A ``(B, h, w)`` map, upsampled (bilinear) to ``x``'s size and repeated over channels."""
    cam = cam.to(device=x.device, dtype=x.dtype).unsqueeze(1)
    if cam.shape[-2:] != x.shape[-2:]:
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return cam.expand(x.shape).contiguous()


def _check_input(x: Tensor) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != 4:
        raise ValueError("baselines expect a float image batch (B, C, H, W); got "
                         f"{type(x).__name__} {tuple(getattr(x, 'shape', ()))}")


def _resolve_layer(model: nn.Module, layer: nn.Module | str) -> nn.Module:
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in model.modules()):
            raise ValueError(f"layer {type(layer).__name__} is not a submodule of the model")
        return layer
    modules = dict(model.named_modules())
    if layer not in modules:
        raise ValueError(f"the model has no submodule named {layer!r}")
    return modules[layer]


# --------------------------------------------------------------------------------------------
# the CAM layer


def _is_vit(model: nn.Module) -> bool:
    blocks = getattr(model, "blocks", None)
    return isinstance(blocks, (nn.Sequential, nn.ModuleList)) and len(blocks) > 0 \
        and isinstance(getattr(blocks[-1], "norm1", None), nn.Module)


@torch.no_grad()
def default_cam_layer(model: nn.Module, x: Tensor) -> nn.Module:
    """The layer CAM methods read when none is given.

    - timm-style ViT (``model.blocks[-1].norm1`` exists): that LayerNorm. Its output is the last
      block's input tokens (normalised); the class token's output depends on every token there,
      while after the last block only the class token matters, so the gradient elsewhere is 0.
    - otherwise: one forward pass of ``x[:1]`` records every module's output; the layer is the
      *last module to finish* whose output has the shape of the *last* ``nn.Conv2d``'s output
      (so the ReLU after that convolution, or the residual block it ends; never the model
      itself).

    Parameters
    ----------
    model
        The classifier.
    x
        An example input (only its first example runs).

    Returns
    -------
    nn.Module

    Raises
    ------
    ValueError
        The model runs no ``nn.Conv2d`` and is not a timm-style ViT: pass ``layer=``.
    """
    if _is_vit(model):
        norm: nn.Module = model.blocks[-1].norm1  # type: ignore[index, union-attr]
        return norm
    finished: list[tuple[nn.Module, tuple[int, ...] | None]] = []

    def record(module: nn.Module, _inp: object, out: object) -> None:
        finished.append((module, tuple(out.shape) if isinstance(out, Tensor) else None))

    memo: dict[int, Any] = {}
    twin = eval_copy(model, freeze=True, memo=memo)  # hooks and eval mode on a copy
    original = {id(memo[id(m)]): m for m in model.modules()}
    handles = [m.register_forward_hook(record) for m in twin.modules() if m is not twin]
    try:
        with torch.no_grad():
            twin(x[:1])
    finally:
        for h in handles:
            h.remove()
    finished = [(original[id(m)], s) for m, s in finished]
    convs = [i for i, (m, _) in enumerate(finished) if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} runs no nn.Conv2d and is not a timm-style "
                         "ViT: pass the CAM layer explicitly (layer=module or its name)")
    shape = finished[convs[-1]][1]
    return [m for m, s in finished[convs[-1]:] if s == shape][-1]


def tokens_to_grid(tokens: Tensor, image_hw: tuple[int, int], prefix: int | None = None
                   ) -> Tensor:
    """Reshape ViT tokens ``(B, N, D)`` to a feature map ``(B, D, h, w)`` on the patch grid.

    Parameters
    ----------
    tokens
        Token features, prefix tokens (class, register) first.
    image_hw
        The input's ``(H, W)``: the grid has its aspect ratio.
    prefix
        Number of prefix tokens to drop; None: ``N − h·w`` for the largest grid of the image's
        aspect ratio that fits (1 for a square ViT with one class token).

    Returns
    -------
    Tensor
        ``(B, D, h, w)``.
    """
    b, n, d = tokens.shape
    prefix = _prefix(n, image_hw) if prefix is None else prefix
    h, w = _grid(n - prefix, image_hw)
    return tokens[:, prefix:].reshape(b, h, w, d).permute(0, 3, 1, 2)


def _grid(m: int, image_hw: tuple[int, int]) -> tuple[int, int]:
    """``(h, w)`` with ``h·w = m`` and ``h/w`` the image's aspect ratio."""
    ratio = image_hw[0] / image_hw[1]
    h = max(round(math.sqrt(m * ratio)), 1)
    if m % h or not math.isclose(h / (m // h), ratio, rel_tol=0.25):
        raise ValueError(f"{m} patch tokens do not form a grid of aspect ratio {ratio:g}")
    return h, m // h


def _prefix(n: int, image_hw: tuple[int, int]) -> int:
    """Prefix tokens of ``n``: what is left over by the largest grid of the image's shape."""
    ratio = image_hw[0] / image_hw[1]
    h = max(math.floor(math.sqrt(n * ratio) + 1e-9), 1)
    while h > 1 and h * max(round(h / ratio), 1) > n:
        h -= 1
    return n - h * max(round(h / ratio), 1)


# --------------------------------------------------------------------------------------------
# Captum


def _captum_fn(model: nn.Module, attribute: Callable[[Tensor, Tensor], Tensor]) -> ExplainFn:
    def explain_fn(x: Tensor, target: Target = None) -> Tensor:
        _check_input(x)
        with warnings.catch_warnings():
            # Captum warns on every call that it sets (and will remove) ReLU hooks, and that
            # the input gets requires_grad; both are expected here.
            warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
            warnings.filterwarnings("ignore", message="Input Tensor .* did not already require")
            t = _resolve_target(model, x, target)
            out = attribute(x.detach().clone(), t)
        return out.detach().to(x.dtype)

    return explain_fn


def _saliency(model: nn.Module, layer: nn.Module | str | None) -> ExplainFn:
    from captum.attr import Saliency

    method = Saliency(model)
    return _captum_fn(model, lambda x, t: method.attribute(x, target=t, abs=True))


def _input_x_gradient(model: nn.Module, layer: nn.Module | str | None) -> ExplainFn:
    from captum.attr import InputXGradient

    method = InputXGradient(model)
    return _captum_fn(model, lambda x, t: method.attribute(x, target=t))


def _integrated_gradients(model: nn.Module, layer: nn.Module | str | None, *,
                          n_steps: int = 32, baseline: float = 0.0,
                          internal_batch_size: int | None = 256) -> ExplainFn:
    from captum.attr import IntegratedGradients

    method = IntegratedGradients(model)
    return _captum_fn(model, lambda x, t: method.attribute(
        x, baselines=baseline, target=t, n_steps=n_steps, method="gausslegendre",
        internal_batch_size=internal_batch_size))


def _smoothgrad(model: nn.Module, layer: nn.Module | str | None, *, nt_samples: int = 16,
                noise_level: float = 0.15, seed: int | None = 0) -> ExplainFn:
    from captum.attr import NoiseTunnel, Saliency

    method = NoiseTunnel(Saliency(model))

    def attribute(x: Tensor, t: Tensor) -> Tensor:
        # Smilkov et al.: noise σ as a fraction of each input's range. Captum takes one σ per
        # input tensor, so examples run one at a time (σ then does not depend on the batch).
        span = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).clamp_min(1e-12)
        # Captum draws the noise from torch's global RNG: fork it so a seeded map is
        # reproducible and the caller's RNG stream is left as it was.
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(seed)
            return torch.cat([
                method.attribute(x[i:i + 1], nt_type="smoothgrad", nt_samples=nt_samples,
                                 stdevs=float(noise_level * span[i]), target=t[i:i + 1])
                for i in range(len(x))])

    return _captum_fn(model, attribute)


def _guided_backprop(model: nn.Module, layer: nn.Module | str | None) -> ExplainFn:
    from captum.attr import GuidedBackprop

    method = GuidedBackprop(model)
    return _captum_fn(model, lambda x, t: method.attribute(x, target=t))


def _deconvolution(model: nn.Module, layer: nn.Module | str | None) -> ExplainFn:
    from captum.attr import Deconvolution

    method = Deconvolution(model)
    return _captum_fn(model, lambda x, t: method.attribute(x, target=t))


def _guided_gradcam(model: nn.Module, layer: nn.Module | str | None) -> ExplainFn:
    from captum.attr import GuidedGradCam

    chosen: list[nn.Module] = []

    def attribute(x: Tensor, t: Tensor) -> Tensor:
        if not chosen:
            chosen.append(_resolve_layer(model, layer) if layer is not None
                          else default_cam_layer(model, x))
            _check_conv_layer(model, chosen[0], x, "guided_gradcam")
        # Captum upsamples Grad-CAM to the input with nearest-neighbour interpolation
        return GuidedGradCam(model, chosen[0]).attribute(x, target=t)

    return _captum_fn(model, attribute)


@torch.no_grad()
def _check_conv_layer(model: nn.Module, layer: nn.Module, x: Tensor, name: str) -> None:
    shapes: list[int] = []
    handle = layer.register_forward_hook(lambda m, i, o: shapes.append(o.dim()))
    try:
        model(x[:1])
    finally:
        handle.remove()
    if shapes and shapes[-1] != 4:
        raise ValueError(f"{name} needs a convolutional layer with (B, C, h, w) output; this "
                         "model's CAM layer gives tokens (a ViT?): use the grad-cam methods")


# --------------------------------------------------------------------------------------------
# grad-cam (pytorch_grad_cam)


def _grad_cam(cam_class: str) -> Callable[..., ExplainFn]:
    def build(model: nn.Module, layer: nn.Module | str | None) -> ExplainFn:
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        cls = getattr(pytorch_grad_cam, cam_class)
        chosen: list[nn.Module] = []

        def explain_fn(x: Tensor, target: Target = None) -> Tensor:
            _check_input(x)
            if not chosen:
                chosen.append(_resolve_layer(model, layer) if layer is not None
                              else default_cam_layer(model, x))
            t = _resolve_target(model, x, target)
            hw = (x.shape[-2], x.shape[-1])

            def reshape(a: Tensor) -> Tensor:  # ViT tokens -> feature map on the grid
                return tokens_to_grid(a, hw, getattr(model, "num_prefix_tokens", None)) \
                    if a.dim() == 3 else a

            cam = cls(model, [chosen[0]], reshape_transform=reshape)
            try:
                # the input needs a gradient: parameters are frozen, so otherwise no
                # activation would require one and grad-cam would see no gradient
                out = cam(x.detach().clone().requires_grad_(True),
                          [ClassifierOutputTarget(int(c)) for c in t])
            finally:  # not the context manager: its __exit__ swallows IndexError
                cam.activations_and_grads.release()
            return _per_pixel(torch.from_numpy(out), x)

        return explain_fn

    build.__name__ = f"_{cam_class.lower()}"
    return build


# --------------------------------------------------------------------------------------------
# attention


_SOFTMAXES = (F.softmax, torch.softmax, Tensor.softmax, torch.Tensor.softmax)


class _AttentionRecorder(TorchFunctionMode):
    """Records self-attention probabilities ``(B, heads, N, N)`` in call order."""

    def __init__(self) -> None:
        super().__init__()
        self.maps: list[Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            return self._sdpa(*args, **kwargs)
        if func is F.multi_head_attention_forward:
            raise ValueError("attention methods do not support nn.MultiheadAttention (it "
                             "computes attention inside one opaque call); use timm-style "
                             "attention (F.scaled_dot_product_attention or an explicit softmax)")
        out = func(*args, **kwargs)
        if func in _SOFTMAXES and isinstance(out, Tensor) and out.dim() >= 3 \
                and out.shape[-1] == out.shape[-2]:
            dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
            if dim is not None and dim in (-1, out.dim() - 1):
                self.maps.append(out)
        return out

    def _sdpa(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None,
              dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
              enable_gqa: bool = False) -> Tensor:
        # the fused kernel never materialises the probabilities: compute them explicitly
        # (same maths; torch calls made here are not intercepted again)
        if dropout_p:
            raise ValueError("attention dropout is active: put the model in eval mode")
        if enable_gqa and k.shape[-3] != q.shape[-3]:
            k = k.repeat_interleave(q.shape[-3] // k.shape[-3], -3)
            v = v.repeat_interleave(q.shape[-3] // v.shape[-3], -3)
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        logits = (q * scale) @ k.transpose(-2, -1)
        if is_causal:
            keep = torch.ones(logits.shape[-2:], dtype=torch.bool, device=q.device).tril()
            logits = logits.masked_fill(~keep, float("-inf"))
        if attn_mask is not None:
            logits = logits.masked_fill(~attn_mask, float("-inf")) \
                if attn_mask.dtype == torch.bool else logits + attn_mask
        probs = logits.softmax(-1)
        if probs.shape[-1] == probs.shape[-2]:
            self.maps.append(probs)
        return probs @ v


@contextlib.contextmanager
def capture_attention() -> Iterator[list[Tensor]]:
    """Collect the self-attention probabilities of every model run inside the block.

    Nothing is hooked or patched on the model: a :class:`torch.overrides.TorchFunctionMode`
    sees each torch call while the block runs, and

    - computes ``F.scaled_dot_product_attention`` (timm's fused path, Hugging Face's ``sdpa``)
      explicitly as ``softmax(q kᵀ·scale + mask) v`` and records the probabilities;
    - records the output of ``softmax`` (``F.softmax``, ``torch.softmax``, ``Tensor.softmax``)
      over the last dim of a tensor whose last two dims are equal (``(B, heads, N, N)``: timm's
      non-fused path, Hugging Face's eager attention).

    The recorded tensors are the ones the forward uses, so gradients reach them
    (``torch.autograd.grad(score, maps)``). ``nn.MultiheadAttention`` is refused.

    Yields
    ------
    list of Tensor
        Filled in call order (first block first) while the block runs.

    Examples
    --------
    >>> with capture_attention() as maps:          # doctest: +SKIP
    ...     logits = vit(x)
    >>> len(maps), maps[0].shape                   # doctest: +SKIP
    (12, torch.Size([B, 12, 197, 197]))
    """
    recorder = _AttentionRecorder()
    with recorder:
        yield recorder.maps


def attention_rollout(attentions: Sequence[Tensor]) -> Tensor:
    """Attention rollout (Abnar & Zuidema, ACL 2020).

    Each layer's attention is averaged over heads, the residual connection is added as
    ``Ã = (A + I) / 2`` (rows still sum to 1), and the layers are multiplied from the first:
    ``Ã_L ⋯ Ã_2 Ã_1``.

    Parameters
    ----------
    attentions
        Per layer, first layer first: probabilities ``(B, heads, N, N)`` or ``(B, N, N)``.

    Returns
    -------
    Tensor
        ``(B, N, N)``; row ``i`` is how much each input token reaches output token ``i``.
    """
    rollout = None
    for a in attentions:
        a = a.mean(1) if a.dim() == 4 else a
        eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = (a + eye) / 2
        rollout = a if rollout is None else a @ rollout
    if rollout is None:
        raise ValueError("no attention maps")
    return rollout


def gradient_weighted_rollout(attentions: Sequence[Tensor], gradients: Sequence[Tensor]
                              ) -> Tensor:
    """Gradient-weighted attention rollout (Chefer, Gur, Wolf, ICCV 2021, Eq. 5–6).

    Per layer ``Ā = E_h[(∇A ⊙ A)⁺]`` (mean over heads of the positive part of gradient times
    attention), and with ``R = I`` at the start, ``R ← R + Ā R`` layer by layer, i.e.
    ``R = (I + Ā_L) ⋯ (I + Ā_1)``.

    Parameters
    ----------
    attentions, gradients
        Per layer, first layer first: attention probabilities ``(B, heads, N, N)`` and the
        gradient of the explained score with respect to them.

    Returns
    -------
    Tensor
        ``(B, N, N)``.
    """
    if len(attentions) != len(gradients) or not attentions:
        raise ValueError("need one gradient per attention map, and at least one map")
    rollout = None
    for a, g in zip(attentions, gradients):
        cam = (g * a).clamp_min(0)
        cam = cam.mean(1) if cam.dim() == 4 else cam
        if rollout is None:
            rollout = torch.eye(cam.shape[-1], dtype=cam.dtype, device=cam.device
                                ).expand_as(cam).clone()
        rollout = rollout + cam @ rollout
    assert rollout is not None  # at least one map, checked above
    return rollout


def _token_map(model: nn.Module, m: Tensor, x: Tensor) -> Tensor:
    """Token-to-token relevance ``(B, N, N)`` -> per-pixel map like ``x``.

    The class token's row when the model has prefix tokens, else (global-pool ViTs) the mean
    over all rows; the prefix tokens' own columns are dropped.
    """
    hw = (x.shape[-2], x.shape[-1])
    prefix = getattr(model, "num_prefix_tokens", None)
    prefix = _prefix(m.shape[-1], hw) if prefix is None else prefix
    rows = m[:, 0] if prefix > 0 else m.mean(1)
    return _per_pixel(tokens_to_grid(rows.unsqueeze(-1), hw, prefix)[:, 0], x)


def _attention_method(kind: str) -> Callable[..., ExplainFn]:
    def build(model: nn.Module, layer: nn.Module | str | None) -> ExplainFn:
        if layer is not None:
            raise ValueError(f"{kind} reads every attention layer; it takes no layer")

        def explain_fn(x: Tensor, target: Target = None) -> Tensor:
            _check_input(x)
            t = _resolve_target(model, x, target)
            with torch.enable_grad(), capture_attention() as maps:
                x_in = x.detach().clone().requires_grad_(kind == "chefer")
                logits = model(x_in)
            if not maps:
                raise ValueError(f"{kind}: no self-attention probabilities were computed "
                                 f"by {type(model).__name__} (not a transformer?)")
            if kind == "rollout":
                m = attention_rollout([a.detach() for a in maps])
            elif kind == "last_attention":
                m = maps[-1].detach().mean(1)
            else:
                score = logits.gather(1, t[:, None]).sum()
                grads = torch.autograd.grad(score, maps)
                m = gradient_weighted_rollout([a.detach() for a in maps], grads)
            return _token_map(model, m, x).detach()

        return explain_fn

    build.__name__ = f"_{kind}"
    return build


# --------------------------------------------------------------------------------------------
# registry


@dataclass(frozen=True)
class BaselineSpec:
    """One registered baseline.

    Attributes
    ----------
    build
        ``build(model, layer, **options) -> explain_fn``.
    library
        Where the method comes from (``"captum"``, ``"grad-cam"``, ``"lrpfx.metrics.baselines"``).
    kind
        ``"gradient"`` (pixel maps), ``"cam"`` (needs a layer) or ``"attention"`` (ViTs only).
    reference
        The method's paper.
    """

    build: Callable[..., ExplainFn]
    library: str
    kind: str
    reference: str


#: Baselines by name; see the module docstring for the table.
BASELINES: dict[str, BaselineSpec] = {
    "saliency": BaselineSpec(_saliency, "captum", "gradient", "Simonyan et al. 2014"),
    "input_x_gradient": BaselineSpec(_input_x_gradient, "captum", "gradient",
                                     "Shrikumar et al. 2016"),
    "integrated_gradients": BaselineSpec(_integrated_gradients, "captum", "gradient",
                                         "Sundararajan et al. 2017"),
    "smoothgrad": BaselineSpec(_smoothgrad, "captum", "gradient", "Smilkov et al. 2017"),
    "guided_backprop": BaselineSpec(_guided_backprop, "captum", "gradient",
                                    "Springenberg et al. 2015"),
    "deconvolution": BaselineSpec(_deconvolution, "captum", "gradient", "Zeiler & Fergus 2014"),
    "guided_gradcam": BaselineSpec(_guided_gradcam, "captum", "cam", "Selvaraju et al. 2017"),
    "gradcam": BaselineSpec(_grad_cam("GradCAM"), "grad-cam", "cam", "Selvaraju et al. 2017"),
    "gradcam++": BaselineSpec(_grad_cam("GradCAMPlusPlus"), "grad-cam", "cam",
                              "Chattopadhay et al. 2018"),
    "hirescam": BaselineSpec(_grad_cam("HiResCAM"), "grad-cam", "cam", "Draelos & Carin 2020"),
    "layercam": BaselineSpec(_grad_cam("LayerCAM"), "grad-cam", "cam", "Jiang et al. 2021"),
    "rollout": BaselineSpec(_attention_method("rollout"), "lrpfx.metrics.baselines", "attention",
                            "Abnar & Zuidema 2020"),
    "last_attention": BaselineSpec(_attention_method("last_attention"), "lrpfx.metrics.baselines",
                                   "attention", "class-token attention of the last layer"),
    "chefer": BaselineSpec(_attention_method("chefer"), "lrpfx.metrics.baselines", "attention",
                           "Chefer, Gur, Wolf ICCV 2021"),
}


def make_baseline(name: str, model: nn.Module, *, layer: nn.Module | str | None = None,
                  **options: object) -> ExplainFn:
    """Build the baseline attribution method ``name`` for ``model``.

    Parameters
    ----------
    name
        A key of :data:`BASELINES`.
    model
        The classifier, ``(B, C, H, W) -> (B, classes)``. It is not modified (see the module
        docstring).
    layer
        CAM methods only: the layer to read, a submodule or its name in ``named_modules()``;
        None picks it with :func:`default_cam_layer` at the first call.
    **options
        Method options: ``integrated_gradients``: ``n_steps`` (32), ``baseline`` (0.0),
        ``internal_batch_size``; ``smoothgrad``: ``nt_samples`` (16), ``noise_level`` (0.15 of
        each input's range), ``seed`` (0; None uses the global RNG).

    Returns
    -------
    ExplainFn
        ``explain_fn(x, target=None) -> Tensor`` of ``x``'s shape.

    Raises
    ------
    ValueError
        Unknown name, or a layer given to a method that takes none.
    TypeError
        An option the method does not have.
    """
    try:
        spec = BASELINES[name]
    except KeyError:
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}") from None
    if layer is not None and spec.kind == "gradient":
        raise ValueError(f"{name} is a pixel-gradient method; it takes no layer")
    memo: dict[int, Any] = {}
    twin = eval_copy(model, freeze=True, memo=memo)
    if isinstance(layer, nn.Module):  # the user's submodule -> the copy's
        if not any(m is layer for m in model.modules()):
            raise ValueError(f"layer {type(layer).__name__} is not a submodule of the model")
        layer = memo[id(layer)]
    try:
        return spec.build(twin, layer, **options)
    except TypeError as e:
        raise TypeError(f"{name}: {e}") from None
