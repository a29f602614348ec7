"""Attention rows that may attend to nothing (issue 16, item 2).

``scaled_dot_product_attention`` returns 0 for a query row whose mask allows no key (boolean
mask all False, additive mask all -inf; left-padded causal batches make such rows). lrpfx's
decomposition must give exactly that, finite maps, and no relevance through those rows.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lrpfx
from lrpfx.core import ops

T, D = 5, 8


class Attend(nn.Module):
    """Self-attention with a fixed mask, then a linear read-out of every position (no residual:
    a dead row's output is what SDPA says, 0, and nothing else)."""

    def __init__(self, mask: torch.Tensor | None, causal: bool = False, heads: int = 2):
        super().__init__()
        self.qkv, self.head = nn.Linear(D, 3 * D), nn.Linear(T * D, 4)
        self.register_buffer("mask", mask)
        self.causal, self.heads = causal, heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, is_causal=self.causal)
        return self.head(y.transpose(1, 2).reshape(b, -1))


def _bool_mask() -> torch.Tensor:
    """(B=2, 1, T, T): example 0 attends everywhere; in example 1 token 2 attends to nothing and
    nobody attends to token 2 (so token 2 can get no relevance at all)."""
    mask = torch.ones(2, 1, T, T, dtype=torch.bool)
    mask[1, :, 2, :] = False
    mask[1, :, :, 2] = False
    return mask


def _additive(mask: torch.Tensor) -> torch.Tensor:
    return torch.zeros(mask.shape, dtype=torch.double).masked_fill(~mask, float("-inf"))


def _left_padded_causal() -> torch.Tensor:
    """A causal mask and left padding: example 1's first two tokens are padding, so its query
    rows 0 and 1 (which may only look back) see no key."""
    keep = torch.ones(2, T, dtype=torch.bool)
    keep[1, :2] = False
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    return keep[:, None, None, :] & causal


CASES = {
    "bool": (_bool_mask, False),
    "additive -inf": (lambda: _additive(_bool_mask()), False),
    "causal + left padding": (_left_padded_causal, False),
    "is_causal, padding rows": (None, True),
}


def _model(case: str) -> tuple[nn.Module, torch.Tensor]:
    make, causal = CASES[case]
    torch.manual_seed(0)
    model = Attend(None if make is None else make(), causal).double().eval()
    return model, torch.randn(2, T, D, dtype=torch.double)


def _dead_rows(case: str) -> list[tuple[int, int]]:
    """(example, query row) pairs whose mask allows no key."""
    return {"bool": [(1, 2)], "additive -inf": [(1, 2)],
            "causal + left padding": [(1, 0), (1, 1)], "is_causal, padding rows": []}[case]


@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_equals_sdpa(case):
    model, x = _model(case)
    explainer = lrpfx.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(explainer(x), model(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", sorted(CASES))
def test_maps_are_finite_and_dead_rows_carry_no_relevance(case):
    model, x = _model(case)
    explainer = lrpfx.compile(model, example_inputs=x)
    gm = explainer.graph_module
    unfused = gm.__dict__.get("_unfused", gm)  # softmax is fused into the matmul before it
    softmax = next(n for n in unfused.graph.nodes
                   if n.op == "call_module" and "softmax" in n.name)
    scores = softmax.all_input_nodes[0]
    maps = explainer.explain(x, 1, contrastive=False, at=[softmax.name, scores.name])
    r = maps["input"]
    assert torch.isfinite(r).all() and r.abs().amax() > 0
    for at in (softmax.name, scores.name):  # relevance at probabilities and scores (B, h, T, T)
        assert torch.isfinite(maps[at]).all() and maps[at].abs().amax() > 0
        for b, row in _dead_rows(case):
            assert maps[at][b, :, row].abs().amax() == 0
    if case in ("bool", "additive -inf"):
        # token 2 of example 1 neither attends nor is attended to: it gets no relevance
        assert r[1, 2].abs().amax() == 0 and r[1, 1].abs().amax() > 0
    if case == "causal + left padding":  # the padding tokens get none
        assert r[1, :2].abs().amax() == 0 and r[1, 2:].abs().amax() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_softmax_op_matches_sdpa_on_dead_rows(dtype):
    """The canonical op alone, on a row pattern with every case: open, partly masked, dead."""
    torch.manual_seed(1)
    q, k, v = (torch.randn(3, 2, 4, 6, dtype=dtype) for _ in range(3))
    mask = torch.rand(3, 2, 4, 4) > 0.4
    mask[0, 1, 2] = False
    mask[2, :, 0] = False
    mask[1] = True
    scores = q * 6 ** -0.5 @ k.transpose(-2, -1)
    ours = ops.softmax(scores, -1, mask) @ v
    theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(ours, theirs)
    dead = ~mask.any(-1)
    assert dead.any() and (ours[dead] == 0).all() and (theirs[dead] == 0).all()
    # the gradient of the op is finite (0 on dead rows) too
    s = scores.clone().requires_grad_(True)
    ops.softmax(s, -1, mask).sum().backward()
    assert torch.isfinite(s.grad).all() and (s.grad[dead] == 0).all()


_SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
              max_position_embeddings=64, vocab_size=100, num_labels=3)


def _bert(t):
    return t.BertForSequenceClassification(t.BertConfig(**_SMALL))


def _llama(t):
    return t.LlamaForSequenceClassification(t.LlamaConfig(
        **_SMALL, num_key_value_heads=1, pad_token_id=1, bos_token_id=2, eos_token_id=2))


@pytest.mark.parametrize("build, padding", [
    (_bert, "an all-zero attention_mask row"), (_llama, "left padding (causal)"),
], ids=["bert", "llama"])
def test_hugging_face_padding_rows(build, padding):
    """BERT with an empty sequence in the batch; LLaMA with a left-padded one (its padding
    queries may look back at padding only)."""
    t = pytest.importorskip("transformers")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build(t).eval()
    ids = torch.randint(3, 100, (3, 6))
    attention_mask = torch.ones(3, 6, dtype=torch.long)
    if build is _bert:
        attention_mask[1] = 0
        attention_mask[2, 4:] = 0
    else:
        attention_mask[1, :3] = 0
        attention_mask[2, :1] = 0
        ids[attention_mask == 0] = 1
    inputs = dict(input_ids=ids, attention_mask=attention_mask)
    explainer = lrpfx.compile(model, example_inputs=inputs)
    with torch.no_grad():
        expected = model(**inputs).logits
        got = explainer(**inputs)
    got = got.logits if hasattr(got, "logits") else got
    assert torch.isfinite(expected).all()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    r = explainer.explain(**inputs)
    assert torch.isfinite(r).all()
    assert r[0].abs().amax() > 0 and r[2].abs().amax() > 0
    if build is _llama:  # causal: a left-padding token reaches no real token
        assert (r[attention_mask == 0] == 0).all() and r[1, 3:].abs().amax() > 0


class Residual(nn.Module):
    """``x + attention(x)``: the skip carries every token past the attention."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.attn = Attend(mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attn
        b, t, d = x.shape
        q, k, v = a.qkv(x).reshape(b, t, 3, a.heads, d // a.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=a.mask)
        return a.head((x + y.transpose(1, 2).reshape(b, t, d)).reshape(b, -1))


@pytest.mark.parametrize("options", [
    dict(merge_total_derivative=True), dict(rule="epsilon"), dict(rule="gradient_x_input"),
    dict(rule="alpha2beta1"),
], ids=str)
def test_other_rule_paths_stay_finite(options):
    """The plain Jacobian of the total-derivative option and the other rule sets' softmax."""
    torch.manual_seed(0)
    model = Residual(_left_padded_causal()).double().eval()
    x = torch.randn(2, T, D, dtype=torch.double)
    explainer = lrpfx.compile(model, example_inputs=x, **options)
    with torch.no_grad():
        torch.testing.assert_close(explainer(x), model(x), rtol=1e-12, atol=1e-12)
    r = explainer.explain(x, 1, contrastive=False)
    assert torch.isfinite(r).all() and r[1].abs().amax() > 0
