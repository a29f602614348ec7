"""The model-coverage list (issue #4) and the per-model check, shared by
``tests/test_coverage*.py`` and ``bench/coverage.py``.

Every model is built with random weights (seeded), in eval mode, and fed a small input (the
smallest the builder allows: 64 px for CNNs, ``img_size``/``image_size`` kwargs for models whose
patch or window grid is fixed). :func:`check` compiles it with lrpfx (strict, default frontend)
and asserts:

- the compiled forward equals the model's (``allclose``, tight tolerance);
- the positive, negative and contrastive maps are finite and not all zero;
- the contrastive map changes when the target changes.

No model gets code of its own, here or in the library: the only generic help is that
parameters a builder initialises to exactly zero (torchvision's ViT head, ...) are redrawn,
because an all-zero classifier has no relevance to propagate.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

IMAGE = 64
"""Default image side for models that accept any size."""

BATCH = 2


@dataclass(frozen=True)
class Case:
    """One model of the coverage list."""

    name: str
    family: str  # "torchvision", "timm" or "hf"
    build: Callable[[], nn.Module]
    inputs: Callable[[], dict[str, Any]]
    """Keyword inputs; the key ``x`` means a positional image tensor."""
    slow: bool = False
    """Big: ``tests/test_coverage_slow.py`` (one file, so one worker), skipped with
    ``LRPFX_SKIP_SLOW=1``."""
    score: Callable[[Any], torch.Tensor] | None = None
    """Outputs that are not ``(B, C)`` class scores (segmentation maps, next-token logits,
    detection queries): ``score(output)`` is a ``(B, C)`` score per class, and one class's
    column is explained as a callable target. None: class targets, contrastive maps."""

    @property
    def id(self) -> str:
        return f"{self.family}/{self.name}"


def _image(size: int | tuple[int, int] = IMAGE) -> Callable[[], dict[str, Any]]:
    h, w = (size, size) if isinstance(size, int) else size

    def make() -> dict[str, Any]:
        g = torch.Generator().manual_seed(1)
        return {"x": torch.randn(BATCH, 3, h, w, generator=g)}

    return make


def _pixels(size: int, channels: int = 3) -> Callable[[], dict[str, Any]]:
    def make() -> dict[str, Any]:
        g = torch.Generator().manual_seed(1)
        return {"pixel_values": torch.randn(BATCH, channels, size, size, generator=g)}

    return make


def _tokens(length: int = 8, vocab: int = 100) -> Callable[[], dict[str, Any]]:
    def make() -> dict[str, Any]:
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(3, vocab - 10, (BATCH, length), generator=g)
        mask = torch.ones(BATCH, length, dtype=torch.long)
        ids[1, length - 2:], mask[1, length - 2:] = 1, 0  # right padding in the second one
        return {"input_ids": ids, "attention_mask": mask}

    return make


# ----------------------------------------------------------------------------- torchvision

# Wider/deeper variants of architectures whose smallest member runs on every commit (same ops),
# that take more than ~6 s each on 2 CPU cores or have more than 250M parameters (vit_h_14
# ~630M, regnet_y_128gf ~640M, vit_l_*: ~9 GB resident while compiled). They stay in the list:
# ``tests/test_coverage_slow.py`` runs them with LRPFX_SLOW=1 and ``bench/coverage.py`` always
# does; their times are in the README table.
TORCHVISION_SLOW = frozenset({
    "vit_h_14", "vit_l_16", "vit_l_32", "regnet_y_128gf", "regnet_y_32gf", "regnet_x_32gf",
    "efficientnet_b5", "efficientnet_b6", "efficientnet_b7", "efficientnet_v2_m",
    "efficientnet_v2_l", "swin_s", "swin_b", "swin_v2_s", "swin_v2_b", "convnext_base",
    "convnext_large", "densenet161", "densenet169", "densenet201", "resnet152",
    "resnext101_32x8d", "resnext101_64x4d", "wide_resnet101_2",
})


def _torchvision_input(name: str) -> tuple[dict[str, Any], Callable[[], dict[str, Any]]]:
    """(builder kwargs, inputs): the smallest input each builder accepts."""
    if name.startswith("vit_"):
        patch = int(name.rsplit("_", 1)[1])
        size = 2 * patch  # a 2×2 patch grid
        return {"image_size": size}, _image(size)
    if name == "inception_v3":
        return {}, _image(75)  # the smallest input its stem accepts
    if name == "maxvit_t":
        return {}, _image(224)  # partition size 7 at stride 32: 224 is the only choice
    return {}, _image()


def torchvision_cases() -> list[Case]:
    import torchvision

    cases = []
    for name in torchvision.models.list_models(module=torchvision.models):
        kwargs, inputs = _torchvision_input(name)

        def build(name: str = name, kwargs: dict = kwargs) -> nn.Module:
            return torchvision.models.get_model(name, weights=None, **kwargs)

        cases.append(Case(name, "torchvision", build, inputs, slow=name in TORCHVISION_SLOW))
    return cases


# ----------------------------------------------------------------------------- timm

TIMM = {  # name: img_size kwarg (None: the model takes any size)
    "resnet18": None, "resnet50": None, "resnext50_32x4d": None, "wide_resnet50_2": None,
    "regnety_016": None, "densenet121": None, "efficientnet_b0": None,
    "mobilenetv3_large_100": None, "convnext_tiny": None, "vgg16": None,
    "deit_tiny_patch16_224": 64, "swin_tiny_patch4_window7_224": 64,
    "beit_base_patch16_224": 64, "levit_128": 64, "mixer_b16_224": 64, "poolformer_s12": None,
    "coatnet_0_rw_224": 64, "maxvit_tiny_tf_224": 64,
}


def timm_cases() -> list[Case]:
    import timm

    cases = []
    for name, size in TIMM.items():
        kwargs = {} if size is None else {"img_size": size}

        def build(name: str = name, kwargs: dict = kwargs) -> nn.Module:
            return timm.create_model(name, pretrained=False, **kwargs)

        cases.append(Case(name, "timm", build, _image(size or IMAGE)))
    return cases


# ----------------------------------------------------------------------------- Hugging Face

_SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
              max_position_embeddings=64, vocab_size=100, num_labels=3)


def _hf_text() -> dict[str, Callable[[], nn.Module]]:
    import transformers as t

    def decoder(config_cls, model_cls, **extra):
        return lambda: model_cls(config_cls(**_SMALL, num_key_value_heads=1, pad_token_id=1,
                                            bos_token_id=2, eos_token_id=2, **extra))

    return {
        "bert": lambda: t.BertForSequenceClassification(t.BertConfig(**_SMALL)),
        "distilbert": lambda: t.DistilBertForSequenceClassification(t.DistilBertConfig(
            vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
            max_position_embeddings=64, num_labels=3)),
        "roberta": lambda: t.RobertaForSequenceClassification(
            t.RobertaConfig(**_SMALL, pad_token_id=1)),
        "albert": lambda: t.AlbertForSequenceClassification(
            t.AlbertConfig(**_SMALL, embedding_size=16)),
        "electra": lambda: t.ElectraForSequenceClassification(
            t.ElectraConfig(**_SMALL, embedding_size=16)),
        "deberta_v2": lambda: t.DebertaV2ForSequenceClassification(
            t.DebertaV2Config(**_SMALL, relative_attention=True, position_buckets=8,
                              pos_att_type=["p2c", "c2p"], max_relative_positions=16)),
        "gpt2": lambda: t.GPT2ForSequenceClassification(t.GPT2Config(
            vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=64, num_labels=3,
            pad_token_id=1, bos_token_id=2, eos_token_id=2)),
        "llama": decoder(t.LlamaConfig, t.LlamaForSequenceClassification),
        "qwen2": decoder(t.Qwen2Config, t.Qwen2ForSequenceClassification),
    }


def _hf_vision() -> dict[str, tuple[Callable[[], nn.Module], int]]:
    import transformers as t

    # 10 classes: with 3, all non-target logits of a random head can be negative, and absLRP
    # then (rightly) gives the negative map no relevance at all
    vit = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
               num_attention_heads=2, intermediate_size=64, num_labels=10)
    return {
        "vit": (lambda: t.ViTForImageClassification(t.ViTConfig(**vit)), 32),
        "deit": (lambda: t.DeiTForImageClassificationWithTeacher(t.DeiTConfig(**vit)), 32),
        "swin": (lambda: t.SwinForImageClassification(t.SwinConfig(
            image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
            window_size=4, num_labels=10)), 32),
        "convnext": (lambda: t.ConvNextForImageClassification(t.ConvNextConfig(
            hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_labels=10)), 64),
        "resnet": (lambda: t.ResNetForImageClassification(t.ResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
            layer_type="bottleneck", num_labels=10)), 64),
    }


def hf_cases() -> list[Case]:
    cases = [Case(name, "hf", build, _tokens()) for name, build in _hf_text().items()]
    cases += [Case(name, "hf", build, _pixels(size))
              for name, (build, size) in _hf_vision().items()]
    return cases


# ----------------------------------------------------------------------------- beyond (issue 17)


def _dense(out: Any) -> torch.Tensor:
    """Each class's logits summed over every pixel (or token) of a dense output."""
    return _logits(out).flatten(2).sum(2)


def _next_token(out: Any) -> torch.Tensor:
    """Each token's logit at the last position (a causal LM's next-token scores)."""
    return _logits(out)[:, -1]


def _first_query(out: Any) -> torch.Tensor:
    """Each class's logit of the first detection query."""
    return _logits(out)[:, 0]


class UNet(nn.Module):
    """A small U-Net: two downsampling stages, ``ConvTranspose2d`` upsampling, skip
    concatenations, a per-pixel class head."""

    def __init__(self, classes: int = 4, width: int = 8) -> None:
        super().__init__()

        def block(i: int, o: int) -> nn.Module:
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(),
                                 nn.Conv2d(o, o, 3, padding=1), nn.ReLU())

        w = width
        self.down1, self.down2, self.bottom = block(3, w), block(w, 2 * w), block(2 * w, 4 * w)
        self.pool = nn.MaxPool2d(2)
        self.up2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2)
        self.dec2 = block(4 * w, 2 * w)
        self.up1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
        self.dec1 = block(2 * w, w)
        self.head = nn.Conv2d(w, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = self.down1(x)
        d2 = self.down2(self.pool(d1))
        b = self.bottom(self.pool(d2))
        u2 = self.dec2(torch.cat([self.up2(b), d2], 1))
        u1 = self.dec1(torch.cat([self.up1(u2), d1], 1))
        return self.head(u1)


def _video(frames: int, size: int) -> Callable[[], dict[str, Any]]:
    def make() -> dict[str, Any]:
        g = torch.Generator().manual_seed(1)
        return {"x": torch.randn(BATCH, 3, frames, size, size, generator=g)}

    return make


def _floats(name: str, *shape: int) -> Callable[[], dict[str, Any]]:
    def make() -> dict[str, Any]:
        g = torch.Generator().manual_seed(1)
        return {name: torch.randn(BATCH, *shape, generator=g)}

    return make


def _ids(length: int = 8, vocab: int = 100, eos: int | None = None
         ) -> Callable[[], dict[str, Any]]:
    def make() -> dict[str, Any]:
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(3, vocab - 10, (BATCH, length), generator=g)
        if eos is not None:
            ids[:, -1] = eos
        return {"input_ids": ids, "attention_mask": torch.ones(BATCH, length, dtype=torch.long)}

    return make


# timm families newer than the classification list (name: img_size kwarg or None)
TIMM_BEYOND = {
    "hrnet_w18_small": None, "mobilevit_xxs": None, "gcvit_xxtiny": 64, "convnextv2_nano": None,
    "efficientvit_m0": 64, "hiera_small_224": 64, "crossvit_9_240": 240,
    "mobilevitv2_075": None, "fastvit_sa12": None, "davit_tiny": None,
}
# Too slow for the per-commit budget (> ~10 s each on a loaded 2-core machine, or huge
# inputs): ``bench/coverage.py --family beyond`` runs them, ``tests/test_coverage_beyond.py``
# does not. Each op they need is exercised per commit by a faster model or by
# ``tests/test_decompose.py`` (e.g. bilinear upsampling: lraspp, segformer; amax: the tests).
BEYOND_SLOW = frozenset({
    "mvit_v1_b", "swin3d_t", "crossvit_9_240", "fcn_resnet50", "deeplabv3_resnet50", "t5",
    "mobilevit_xxs", "gcvit_xxtiny", "efficientvit_m0", "hiera_small_224", "mobilevitv2_075",
    "fastvit_sa12", "davit_tiny",
})


def _torchvision_beyond() -> list[Case]:
    import torchvision.models.segmentation as seg
    import torchvision.models.video as video

    def s(fn: Callable[..., nn.Module]) -> Callable[[], nn.Module]:
        return lambda: fn(weights=None, weights_backbone=None, num_classes=5)

    def v(fn: Callable[..., nn.Module]) -> Callable[[], nn.Module]:
        return lambda: fn(weights=None, num_classes=10)

    return [
        Case("fcn_resnet50", "beyond", s(seg.fcn_resnet50), _image(), score=_dense, slow=True),
        Case("deeplabv3_resnet50", "beyond", s(seg.deeplabv3_resnet50), _image(), score=_dense,
             slow=True),
        Case("lraspp_mobilenet_v3_large", "beyond", s(seg.lraspp_mobilenet_v3_large), _image(),
             score=_dense),
        Case("r3d_18", "beyond", v(video.r3d_18), _video(4, 32)),
        Case("mvit_v1_b", "beyond", v(video.mvit_v1_b), _video(16, 224), slow=True),
        Case("swin3d_t", "beyond", v(video.swin3d_t), _video(4, 64), slow=True),
    ]


def _hf_beyond() -> list[Case]:
    import transformers as t

    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64)
    lm = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
              intermediate_size=64, max_position_embeddings=64, num_key_value_heads=1,
              pad_token_id=1, bos_token_id=2, eos_token_id=2)

    def causal(config: Callable[..., Any], model: Callable[..., nn.Module], **extra: Any
               ) -> Callable[[], nn.Module]:
        return lambda: model(config(**{**lm, **extra}))

    audio = dict(num_labels=4, **small)
    return [
        Case("segformer", "beyond", lambda: t.SegformerForSemanticSegmentation(t.SegformerConfig(
            num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
            num_attention_heads=[1, 2], patch_sizes=[7, 3], strides=[4, 2], mlp_ratios=[2, 2],
            decoder_hidden_size=16, num_labels=4)), _pixels(32), score=_dense),
        Case("upernet", "beyond", lambda: t.UperNetForSemanticSegmentation(t.UperNetConfig(
            backbone_config=t.ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                                             out_features=["stage1", "stage2", "stage3",
                                                           "stage4"]),
            hidden_size=16, auxiliary_in_channels=24, num_labels=4)), _pixels(64),
            score=_dense),
        Case("wav2vec2", "beyond", lambda: t.Wav2Vec2ForSequenceClassification(t.Wav2Vec2Config(
            conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3), num_feat_extract_layers=2,
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
            classifier_proj_size=16, **audio)), _floats("input_values", 400)),
        Case("whisper", "beyond", lambda: t.WhisperForAudioClassification(t.WhisperConfig(
            num_mel_bins=8, d_model=32, encoder_layers=2, encoder_attention_heads=2,
            decoder_layers=1, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
            max_source_positions=16, num_labels=4, vocab_size=100)),
            _floats("input_features", 8, 32)),
        Case("ast", "beyond", lambda: t.ASTForAudioClassification(t.ASTConfig(
            patch_size=8, max_length=32, num_mel_bins=16, frequency_stride=8, time_stride=8,
            **audio)), _floats("input_values", 32, 16)),
        Case("yolos", "beyond", lambda: t.YolosForObjectDetection(t.YolosConfig(
            image_size=[32, 32], patch_size=8, num_detection_tokens=4, num_labels=5, **small)),
            _pixels(32), score=_first_query),
        Case("t5", "beyond", lambda: t.T5ForSequenceClassification(t.T5Config(
            vocab_size=100, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
            num_labels=3, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)),
            _ids(eos=1), slow=True),
        Case("llama_lm", "beyond", causal(t.LlamaConfig, t.LlamaForCausalLM), _ids(),
             score=_next_token),
        Case("qwen2_lm", "beyond", causal(t.Qwen2Config, t.Qwen2ForCausalLM), _ids(),
             score=_next_token),
        Case("mistral_lm", "beyond", causal(t.MistralConfig, t.MistralForCausalLM), _ids(),
             score=_next_token),
        Case("gemma2_lm", "beyond", causal(t.Gemma2Config, t.Gemma2ForCausalLM, head_dim=16),
             _ids(), score=_next_token),
        Case("phi3_lm", "beyond", causal(t.Phi3Config, t.Phi3ForCausalLM), _ids(),
             score=_next_token),
        Case("gpt2_lm", "beyond", lambda: t.GPT2LMHeadModel(t.GPT2Config(
            vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=64)), _ids(),
            score=_next_token),
        Case("bloom_lm", "beyond", lambda: t.BloomForCausalLM(t.BloomConfig(
            vocab_size=100, hidden_size=32, n_layer=2, n_head=2)), _ids(), score=_next_token),
        Case("falcon_lm", "beyond", lambda: t.FalconForCausalLM(t.FalconConfig(
            vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)),
            _ids(), score=_next_token),
    ]


def beyond_cases() -> list[Case]:
    """Issue 17's families beyond classification (segmentation, video, audio, detection,
    causal LMs, a U-Net) and newer timm families."""
    import timm

    cases = [Case("unet", "beyond", UNet, _image(), score=_dense)]
    for name, size in TIMM_BEYOND.items():
        kwargs = {} if size is None else {"img_size": size}

        def build(name: str = name, kwargs: dict = kwargs) -> nn.Module:
            return timm.create_model(name, pretrained=False, **kwargs)

        cases.append(Case(name, "beyond", build, _image(size or IMAGE),
                          slow=name in BEYOND_SLOW))
    cases += _torchvision_beyond()
    cases += _hf_beyond()
    return cases


def all_cases(family: str | None = None) -> list[Case]:
    """Every model of the coverage list (optionally one family; ``"beyond"``, issue 17's, only
    when named)."""
    makers = {"torchvision": torchvision_cases, "timm": timm_cases, "hf": hf_cases}
    if family == "beyond":
        makers = {"beyond": beyond_cases}
    out: list[Case] = []
    for fam, make in makers.items():
        if family in (None, fam):
            try:
                out += make()
            except ImportError:
                continue
    return out


# ----------------------------------------------------------------------------- the check


@dataclass
class Result:
    case: Case
    ok: bool = False
    error: str = ""
    failing_ops: list[str] = field(default_factory=list)
    nodes: int = 0
    compile_s: float = float("nan")
    explain_s: float = float("nan")
    max_forward_diff: float = float("nan")
    decomposed: list[str] = field(default_factory=list)
    """What ``lrpfx.passes.decompose`` did in this model (origin lines of its report)."""


def build(case: Case) -> nn.Module:
    """The model, random init with ``torch.manual_seed(0)``, eval mode; parameters the builder
    set to exactly zero are redrawn (an all-zero head has nothing to explain)."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = case.build().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() > 1 and not p.any():
                p.normal_(0.0, 0.02)
    return model


def _logits(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict) and "out" in out:  # torchvision segmentation
        return out["out"]
    if hasattr(out, "logits"):
        return out.logits
    return out[0]


def check(case: Case, model: nn.Module | None = None) -> Result:
    """Compile and explain one model; every failure is caught and described in the result."""
    import lrpfx

    result = Result(case)
    try:
        model = build(case) if model is None else model
        inputs = case.inputs()
        x = inputs.pop("x", None)
        args = (x,) if x is not None else ()
        with torch.no_grad():
            expected = _logits(model(*args, **inputs))
        t0 = time.perf_counter()
        try:
            explainer = lrpfx.compile(model, example_inputs=x if x is not None else inputs)
        except lrpfx.UnsupportedOpError as e:
            ops = sorted({n.op for n in e.report.unsupported})
            result.failing_ops = ops
            result.error = "unsupported: " + ", ".join(ops)
            return result
        result.compile_s = time.perf_counter() - t0
        result.nodes = len(explainer.graph_module.graph.nodes)
        result.decomposed = sorted(explainer.report.decomposed)
        with torch.no_grad():
            got = _logits(explainer(*args, **inputs))
        diff = (got - expected).abs().max().item()
        result.max_forward_diff = diff
        scale = max(1.0, expected.abs().max().item())
        if not torch.allclose(got, expected, rtol=1e-5, atol=1e-5 * scale):
            result.error = f"forward differs from the model (max |diff| {diff:.2e})"
            return result
        if case.score is not None:
            return _check_score(case, explainer, x, inputs, result)
        t0 = time.perf_counter()
        parts = explainer.explain_parts(x, **inputs)
        result.explain_s = time.perf_counter() - t0
        shape = x.shape if x is not None else next(
            v for v in inputs.values() if isinstance(v, torch.Tensor)).shape
        for key in ("positive", "negative", "contrastive"):
            r = getattr(parts, key)
            if tuple(r.shape) != tuple(shape):
                result.error = f"{key} map has shape {tuple(r.shape)}, expected {tuple(shape)}"
                return result
            if not torch.isfinite(r).all():
                result.error = f"{key} map is not finite"
                return result
            if not r.abs().amax() > 0:
                result.error = f"{key} map is all zero"
                return result
        classes = parts.logits.shape[1]
        other = explainer.explain(x, target=(parts.target + 1) % classes, **inputs)
        if not (other - parts.contrastive).abs().amax() > 1e-4:
            result.error = "the contrastive map does not change with the target"
            return result
        result.ok = True
    except Exception as e:  # noqa: BLE001 - reported, not hidden
        lines = str(e).strip().splitlines()
        result.error = f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]
    return result


def _check_score(case: Case, explainer: Any, x: torch.Tensor | None, inputs: dict[str, Any],
                 result: Result) -> Result:
    """Maps for each example's two best-scoring classes (callable targets), each class's score
    against the mean of the others' (as a contrastive map contrasts; a class whose score is
    negative everywhere would otherwise rightly get no relevance, and positive-only maps of a
    random network hardly depend on the class): finite, not all zero, different."""
    assert case.score is not None
    score = case.score

    def against_others(out: Any, c: torch.Tensor) -> torch.Tensor:
        s = score(out)
        mine = s.gather(1, c[:, None])[:, 0]
        return mine - (s.sum(1) - mine) / (s.shape[1] - 1)

    args = (x,) if x is not None else ()
    with torch.no_grad():
        ranked = score(explainer(*args, **inputs)).argsort(1, descending=True)[:, :2]
    t0 = time.perf_counter()
    maps = [explainer.explain(x, target=lambda out, c=c: against_others(out, c), **inputs)
            for c in ranked.unbind(1)]
    result.explain_s = (time.perf_counter() - t0) / 2
    for c, r in enumerate(maps):
        if not torch.isfinite(r).all():
            result.error = f"the map for class {c} is not finite"
            return result
        if not r.abs().amax() > 0:
            result.error = f"the map for class {c} is all zero"
            return result
    if not (maps[0] - maps[1]).abs().amax() > 1e-3 * maps[0].abs().amax():
        result.error = "the map does not change with the target"
        return result
    result.ok = True
    return result


def assert_covered(case: Case) -> Result:
    """:func:`check`, as a test assertion."""
    result = check(case)
    assert result.ok, f"{case.id}: {result.error}"
    return result


# Seconds one check takes on an idle 2-core machine, for the few models far above the ~3 s
# typical (bench/coverage.py); used only to balance the per-commit files.
_COST = {"maxvit_t": 32.0, "efficientnet_v2_s": 11.0, "swin_v2_t": 7.5, "inception_v3": 7.0,
         "swin_t": 6.5, "googlenet": 6.0}


def per_commit(family: str, part: int | None = None, parts: int = 2) -> list[Case]:
    """The models of ``family`` that run on every commit, optionally split into ``parts`` files
    of about equal time (so ``pytest --dist loadfile`` spreads them over the workers)."""
    cases = [c for c in all_cases(family) if not c.slow]
    if part is None:
        return cases
    load, chosen = [0.0] * parts, []
    for c in sorted(cases, key=lambda c: (-_COST.get(c.name, 3.0), c.name)):  # greedy
        k = load.index(min(load))
        load[k] += _COST.get(c.name, 3.0)
        if k == part:
            chosen.append(c)
    return chosen


def slow_cases() -> list[Case]:
    return [c for c in all_cases() if c.slow]
