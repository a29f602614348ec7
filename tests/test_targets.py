"""Targets beyond (B, C) class scores: dense outputs (a class over a region), sequence outputs
(a token at a position), the ``output=`` selector (issue 17, part 2).

Equalities between independent computations carry most of the weight: explaining one pixel of
a segmentation net (or one position of a causal LM) must equal explaining a model whose output is
that pixel's (position's) class scores, since slicing only moves relevance; for a gradient rule
set the region seed must equal the callable target ``Σ_region out[:, c]``.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lrpfx
from lrpfx.core.targets import (
    TargetSpec,
    class_scores,
    seed_weights,
    select_output,
)

# ----------------------------------------------------------------------------- models


class TinySeg(nn.Module):
    """A small fully convolutional segmentation net: (B, 3, H, W) -> (B, C, H, W)."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(8, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class Pixel(nn.Module):
    """The class scores of one pixel of ``seg``: (B, C)."""

    def __init__(self, seg: nn.Module, i: int, j: int) -> None:
        super().__init__()
        self.seg, self.i, self.j = seg, i, j

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seg(x)[:, :, self.i, self.j]


class AsDict(nn.Module):
    """torchvision's segmentation convention: {"out": ..., "aux": ...}."""

    def __init__(self, seg: nn.Module) -> None:
        super().__init__()
        self.seg = seg

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.seg(x)
        return {"aux": y * 2, "out": y}


@pytest.fixture(scope="module")
def seg() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(3)
    return TinySeg().eval(), torch.randn(2, 3, 8, 8)


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return nn.functional.cosine_similarity(a.flatten(1).double(), b.flatten(1).double())


# ----------------------------------------------------------------------------- pure functions


def test_select_output_defaults_and_fields() -> None:
    t = torch.zeros(2, 3)
    assert select_output(t) is t
    assert select_output({"aux": t + 1, "out": t}) is t  # torchvision segmentation
    assert select_output({"logits": t, "out": t + 1}) is t
    assert select_output((t, t + 1)) is t
    assert select_output({"only": t}) is t
    assert select_output({"a": t, "b": t + 1}, "b").sum() == 6
    assert select_output((t, t + 1), 1).sum() == 6
    assert select_output((t, t + 1), lambda o: o[1] * 2).sum() == 12
    with pytest.raises(ValueError, match=r"'a' \(2, 3\), 'b' \(2, 3\).*output="):
        select_output({"a": t, "b": t + 1})
    with pytest.raises(ValueError, match=r"no tensor field 'c'.*'a' \(2, 3\)"):
        select_output({"a": t, "b": t + 1}, "c")
    with pytest.raises(ValueError, match=r"non-tensor field 'n'.*'n' \(NoneType\)"):
        select_output({"a": t, "n": None}, "n")
    with pytest.raises(ValueError, match="single tensor"):
        select_output(t, "logits")
    with pytest.raises(TypeError, match="must return a tensor"):
        select_output((t,), lambda o: 3)
    with pytest.raises(ValueError, match=r"class scores of shape \(B, C\)"):
        class_scores(torch.zeros(2, 3, 4))


def test_class_seeds_are_one_hot_and_uniform() -> None:
    out = torch.randn(3, 5)
    t, (pos, neg) = seed_weights(out, TargetSpec(torch.tensor([0, 4, 2])), negative=True)
    assert t.tolist() == [0, 4, 2]
    assert torch.equal(pos, nn.functional.one_hot(t, 5).float())
    assert torch.allclose(neg, (1 - pos) / 4)
    with pytest.raises(ValueError, match="region= and position= apply to dense"):
        seed_weights(out, TargetSpec(region=torch.ones(3)), negative=False)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(2, 5), st.integers(1, 3))
def test_dense_seed_sums_the_class_over_its_predicted_pixels(seed: int, c: int, b: int) -> None:
    """Σ out ⊙ seed is the target's logits summed over the pixels predicted as it (computed
    here pixel by pixel); the negative seed covers the other classes on the same pixels."""
    g = torch.Generator().manual_seed(seed)
    out = torch.randn(b, c, 4, 5, generator=g, dtype=torch.float64)
    target, (pos, neg) = seed_weights(out, TargetSpec(), negative=True)
    pred = out.argmax(1)
    for i in range(b):
        # default target: the class predicted at most pixels
        counts = torch.bincount(pred[i].flatten(), minlength=c)
        assert counts[target[i]] == counts.max()
        score = sum(out[i, target[i], h, w] for h in range(4) for w in range(5)
                    if pred[i, h, w] == target[i])
        assert torch.isclose((out[i] * pos[i]).sum(), score)
        others = sum(out[i, k, h, w] for k in range(c) for h in range(4) for w in range(5)
                     if pred[i, h, w] == target[i] and k != target[i]) / (c - 1)
        assert torch.isclose((out[i] * neg[i]).sum(), torch.as_tensor(others, dtype=out.dtype))


def test_dense_region_and_errors() -> None:
    out = torch.randn(2, 3, 4, 4)
    region = torch.zeros(2, 4, 4, dtype=torch.bool)
    region[:, 1, 2] = True
    t, (pos,) = seed_weights(out, TargetSpec(1, region=region), negative=False)
    assert pos.sum() == 2 and pos[:, 1, 1, 2].tolist() == [1, 1]
    _, (same,) = seed_weights(out, TargetSpec(1, region=region[0]), negative=False)
    assert torch.equal(pos, same)  # one (H, W) mask for every example
    with pytest.raises(ValueError, match=r"shape \(2, 4, 4\)"):
        seed_weights(out, TargetSpec(1, region=torch.ones(2, 3, 3)), negative=False)
    with pytest.raises(ValueError, match="region of examples \\[1\\] is empty"):
        seed_weights(out, TargetSpec(1, region=region & torch.tensor([1, 0]).bool()[:, None,
                                                                                       None]),
                     negative=False)
    with pytest.raises(ValueError, match="non-negative"):
        seed_weights(out, TargetSpec(1, region=-torch.ones(2, 4, 4)), negative=False)
    with pytest.raises(ValueError, match="position= applies to sequence outputs"):
        seed_weights(out, TargetSpec(1, position=2), negative=False)
    out[:, 2] = -10  # class 2 is predicted nowhere
    with pytest.raises(ValueError, match="predicted at no position.*region="):
        seed_weights(out, TargetSpec(2), negative=False)


def test_sequence_default_position_left_and_right_padding() -> None:
    out = torch.randn(3, 5, 7)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    t, (pos, neg) = seed_weights(out, TargetSpec(), negative=True, attention_mask=mask)
    last = [2, 4, 4]
    assert t.tolist() == [out[i, p].argmax().item() for i, p in enumerate(last)]
    for i, p in enumerate(last):
        assert pos[i].sum() == 1 and pos[i, p, t[i]] == 1
        assert torch.isclose(neg[i, p].sum(), torch.tensor(1.0)) and neg[i, p, t[i]] == 0
        assert pos[i].abs().sum() == pos[i, p].abs().sum()  # nothing at other positions
    _, (p2,) = seed_weights(out, TargetSpec(3, position=-2), negative=False)
    assert p2[:, 3, 3].tolist() == [1, 1, 1] and p2.sum() == 3
    _, (p3,) = seed_weights(out, TargetSpec(3, position=torch.tensor([0, 1, 2])),
                            negative=False)
    assert [p3[i, i, 3].item() for i in range(3)] == [1, 1, 1]
    with pytest.raises(ValueError, match="out of range.*-5..4"):
        seed_weights(out, TargetSpec(position=5), negative=False)
    with pytest.raises(ValueError, match="all padding"):
        seed_weights(out, TargetSpec(), negative=False, attention_mask=mask * 0)
    with pytest.raises(ValueError, match="either region= or position="):
        seed_weights(out, TargetSpec(region=torch.ones(3, 5), position=1), negative=False)


def test_target_indices_are_range_checked_before_conversion() -> None:
    out = torch.randn(2, 4)
    for bad in (2**70, -1, 4, torch.tensor([0, 9])):
        with pytest.raises(ValueError, match="out of range"):
            seed_weights(out, TargetSpec(bad), negative=False)
    for bad in (True, 1.0, torch.tensor([0.0, 1.0]), "1"):
        with pytest.raises(TypeError):
            seed_weights(out, TargetSpec(bad), negative=False)


# ----------------------------------------------------------------------------- dense models


def test_one_pixel_region_equals_the_pixel_as_class_scores(seg) -> None:
    """Slicing a pixel out is data movement: relevance passes it unchanged, so explaining
    class c on a one-pixel region equals explaining class c of a model returning that pixel's
    class scores (positive, negative and contrastive maps)."""
    model, x = seg
    region = torch.zeros(2, 8, 8)
    region[:, 3, 5] = 1
    a = lrpfx.compile(model).explain_parts(x, 2, region=region)
    b = lrpfx.compile(Pixel(model, 3, 5).eval()).explain_parts(x, 2)
    for u, v in zip(a[:3], b[:3]):
        assert torch.allclose(u, v, atol=1e-6)


def test_region_seed_equals_callable_region_score_for_gradient_rules(seg) -> None:
    """gradient×input: the region seed is ∂(Σ_region out_c)/∂out, so a class with a region
    equals the callable target computing that sum."""
    model, x = seg
    ex = lrpfx.compile(model, rule="gradient_x_input")
    region = (torch.rand(2, 8, 8) > 0.5).float()
    a = ex.explain(x, 1, region=region, contrastive=False, normalize=False)
    b = ex.explain(x, lambda o: (o[:, 1] * region).sum((1, 2)), normalize=False)
    assert torch.allclose(a, b, atol=1e-6)
    # default region: the pixels predicted as the target
    pred = model(x).argmax(1)
    c = ex.explain(x, 1, contrastive=False, normalize=False)
    d = ex.explain(x, lambda o: (o[:, 1] * (pred == 1)).sum((1, 2)), normalize=False)
    assert torch.allclose(c, d, atol=1e-6)


def test_dense_absLRP_default_region_target_and_dict_output(seg) -> None:
    model, x = seg
    ex = lrpfx.compile(AsDict(model).eval())
    parts = ex.explain_parts(x)  # "out" by default, the most-predicted class
    pred = model(x).argmax(1)
    assert parts.logits.shape == (2, 4, 8, 8)
    assert parts.target.tolist() == [torch.bincount(p.flatten(), minlength=4).argmax().item()
                                     for p in pred]
    explicit = ex.explain_parts(x, parts.target, region=pred == parts.target[:, None, None])
    assert torch.allclose(parts.contrastive, explicit.contrastive, atol=1e-6)
    assert torch.isfinite(parts.contrastive).all() and parts.contrastive.abs().amax() > 0
    classes = [int(c) for c in pred.unique()]
    if len(classes) > 1:  # the map changes with the target
        m = [ex.explain(x, c, contrastive=False) for c in classes[:2]]
        assert (_cos(*m) < 0.999).all()
    aux = ex.explain(x, parts.target, output="aux")  # aux = 2·out: same maps
    assert torch.allclose(aux, parts.contrastive, atol=1e-5)
    with pytest.raises(ValueError, match=r"'aux' \(2, 4, 8, 8\), 'out' \(2, 4, 8, 8\)"):
        ex.explain(x, 0, output="logits")


def test_torchvision_lraspp_segmentation() -> None:
    seg_models = pytest.importorskip("torchvision.models.segmentation")
    torch.manual_seed(0)
    model = seg_models.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                 num_classes=3).eval()
    x = torch.randn(1, 3, 32, 32)
    # strict=False until bilinear upsampling has a rule (issue 17, part 1): it carries the plain
    # gradient; the target seeds under test sit on the output, after it
    ex = lrpfx.compile(model, strict=False)
    out = ex(x)
    assert torch.allclose(out["out"], model(x)["out"], atol=1e-5)
    parts = ex.explain_parts(x)  # the dict's "out", the class predicted at most pixels
    assert parts.logits.shape == (1, 3, 32, 32)
    assert torch.isfinite(parts.contrastive).all() and parts.contrastive.abs().amax() > 0
    whole = torch.ones(1, 32, 32)
    m = [ex.explain(x, c, region=whole, contrastive=False) for c in range(2)]
    assert (_cos(*m) < 0.999).all()


def test_torchvision_fcn_resnet50_out_and_aux() -> None:
    seg_models = pytest.importorskip("torchvision.models.segmentation")
    torch.manual_seed(0)
    model = seg_models.fcn_resnet50(weights=None, weights_backbone=None, num_classes=3,
                                    aux_loss=True).eval()
    x = torch.randn(1, 3, 32, 32)
    ex = lrpfx.compile(model, strict=False)  # bilinear upsampling: see the lraspp test
    assert torch.allclose(ex(x)["out"], model(x)["out"], atol=1e-5)
    parts = ex.explain_parts(x)  # "out" by default
    assert torch.isfinite(parts.contrastive).all() and parts.contrastive.abs().amax() > 0
    whole = torch.ones(32, 32)
    aux = ex.explain(x, 1, output="aux", region=whole)
    out = ex.explain(x, 1, region=whole)
    assert torch.isfinite(aux).all() and (_cos(aux, out) < 0.999).all()  # another head


# ----------------------------------------------------------------------------- sequence models


def _llama(attn: str):  # noqa: ANN202
    t = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = t.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32,
                        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                        max_position_embeddings=32)
    cfg._attn_implementation = attn
    return t.LlamaForCausalLM(cfg).eval()


def _gpt2():  # noqa: ANN202
    t = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = t.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2,
                       bos_token_id=0, eos_token_id=0)
    return t.GPT2LMHeadModel(cfg).eval()


class Position(nn.Module):
    """The next-token logits at one position of a causal LM: (B, V)."""

    def __init__(self, lm: nn.Module, p: int) -> None:
        super().__init__()
        self.lm, self.p = lm, p

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=input_ids, attention_mask=attention_mask).logits[:, self.p]


@pytest.mark.parametrize(("make", "side"), [
    (lambda: _llama("eager"), "left"), (_gpt2, "right"),
    (lambda: _llama("sdpa"), "left"),
], ids=["llama-eager-left", "gpt2-right", "llama-sdpa-left"])
def test_causal_lm_next_token_padding_gets_exactly_zero(make, side: str) -> None:  # noqa: ANN001
    model = make()
    ids = torch.randint(1, 50, (2, 6), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 6, dtype=torch.long)
    if side == "left":
        mask[0, :2] = 0
    else:
        mask[0, 4:] = 0
    ex = lrpfx.compile(model)
    assert torch.allclose(ex(input_ids=ids, attention_mask=mask).logits,
                          model(input_ids=ids, attention_mask=mask).logits, atol=1e-5)
    parts = ex.explain_parts(input_ids=ids, attention_mask=mask)
    last = [3 if side == "right" else 5, 5]
    logits = model(input_ids=ids, attention_mask=mask).logits
    assert parts.target.tolist() == [logits[i, p].argmax().item() for i, p in enumerate(last)]
    for m in parts[:3]:
        assert m.shape == (2, 6) and torch.isfinite(m).all()
        assert (m[mask == 0] == 0).all()  # padding gets exactly 0
        assert (m[mask == 1] != 0).any()
    token = ex.explain(input_ids=ids, attention_mask=mask, target=7, contrastive=False)
    assert (token[mask == 0] == 0).all() and not torch.allclose(token, parts.positive, atol=1e-4)


def test_position_equals_the_position_as_class_scores() -> None:
    """``position=p`` explains what a model returning ``logits[:, p]`` explains (slicing is
    data movement), token id targets given as a (B,) tensor."""
    model = _llama("eager")
    ids = torch.randint(0, 50, (2, 5), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    target = torch.tensor([3, 11])
    a = lrpfx.compile(model).explain_parts(input_ids=ids, attention_mask=mask, target=target,
                                           position=2)
    b = lrpfx.compile(Position(model, 2).eval()).explain_parts(input_ids=ids, attention_mask=mask,
                                                        target=target)
    for u, v in zip(a[:3], b[:3]):
        assert torch.allclose(u, v, atol=1e-6)


def test_token_ids_outside_the_vocabulary_are_a_value_error() -> None:
    ex = lrpfx.compile(_llama("eager"))
    ids = torch.randint(0, 50, (2, 4))
    ex(input_ids=ids)
    for bad in (50, -1):
        wrong = ids.clone()
        wrong[1, 2] = bad
        with pytest.raises(ValueError, match=r"out of the vocabulary \(0..49\).*examples \[1\]"):
            ex.explain(input_ids=wrong)
    with pytest.raises(ValueError, match="out of range: the output has 50"):
        ex.explain(input_ids=ids, target=50)


def test_no_warning_on_ordinary_explanations(seg) -> None:
    model, x = seg
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lrpfx.compile(model).explain(x)


def test_integrated_gradients_over_a_region_and_with_a_callable(seg) -> None:
    """Integrated gradients batches the path: the region seed is repeated per path point; the
    callable target computing the same region score gives the same map; completeness holds."""
    model, x = seg
    ex = lrpfx.compile(model, rule="integrated_gradients", steps=16)
    region = torch.ones(2, 8, 8)
    r = ex.explain(x, 1, region=region, contrastive=False, normalize=False)
    # the callable sees the path points batched (steps · B rows): no per-example constants
    c = ex.explain(x, lambda o: o[:, 1].sum((1, 2)), normalize=False)
    assert torch.allclose(r, c, atol=1e-6)
    with torch.no_grad():
        gain = (model(x)[:, 1] - model(torch.zeros_like(x))[:, 1]).sum((1, 2))
    assert torch.allclose(r.sum((1, 2, 3)), gain, rtol=0.02)
