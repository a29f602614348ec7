"""``lrpfx explain-text``: token relevance for sentences (HTML + terminal colours)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import lrpfx
from lrpfx.apps.cli.common import class_scores_of, compile_model, finite_maps
from lrpfx.apps.cli.errors import CLIError
from lrpfx.apps.cli.models import load_model
from lrpfx.apps.cli.options import (
    add_model_args,
    parse_rule_options,
    parse_target,
    resolve_device,
)
from lrpfx.apps.cli.output import check_out_dir, label, note, prob, recorded_arguments, write_json

__all__ = ["register", "run"]


def register(sub: Any, epilog: str, fmt: type[argparse.HelpFormatter]) -> None:
    """Add the ``explain-text`` command and its flags."""
    p = sub.add_parser(
        "explain-text", formatter_class=fmt, epilog=epilog,
        help="token relevance for sentences (HTML + terminal colours)",
        description="Explain a Hugging Face text classifier (or, with --similar-to, a sentence "
                    "encoder) on sentences: prints coloured tokens, writes text.html and "
                    "text.json in --out.")
    p.add_argument("sentences", nargs="+", metavar="SENTENCE")
    add_model_args(p, image=False)
    p.add_argument("--target", "-t", default="top1",
                   help="top1 (default), topK, a class index or a label name")
    p.add_argument("--similar-to", metavar="TEXT",
                   help="for sentence encoders without a classifier head: explain the "
                        "mean-pooled embedding's component along TEXT's embedding (its "
                        "cosine similarity is printed)")
    p.add_argument("--positive-only", action="store_true", help="positive map only")
    p.add_argument("--out", "-o", default="lrpfx_out", help="output folder (default: lrpfx_out)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--no-color", action="store_true",
                   help="print scores next to tokens instead of ANSI colours")
    p.set_defaults(func=run)


def _mean_pool(out: Any, mask: Tensor) -> Tensor:
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


def run(args: argparse.Namespace) -> int:
    """Run ``lrpfx explain-text``; the exit code."""
    from lrpfx.apps.text import render_html, render_terminal

    device = resolve_device(args.device)
    out_dir = check_out_dir(args.out)
    rule_options = parse_rule_options(args.option)
    if not args.model.startswith("hf:"):
        raise CLIError(f"--model {args.model}: explain-text takes a Hugging Face model, hf:PATH")
    if not args.sentences or any(not s.strip() for s in args.sentences):
        raise CLIError("give one or more non-empty sentences")
    task = "encoder" if args.similar_to else "text"
    loaded = load_model(args.model, weights=args.weights, task=task)
    tok = loaded.tokenizer
    if tok is None:
        raise CLIError(f"{args.model}: no tokenizer")
    for msg in loaded.notes:
        note(msg)
    model = loaded.model.to(device)
    explainer = compile_model(loaded, args).to(device)
    batch = {k: v.to(device) for k, v in tok(list(args.sentences), return_tensors="pt",
                                                padding=True, truncation=True).items()}
    mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"]))
    rows: list[Tensor] = []  # relevance (B, T), one per explained target
    records: list[dict[str, Any]] = [{"sentence": s, "explanations": []} for s in args.sentences]
    titles: list[list[str]] = [[] for _ in args.sentences]
    if args.similar_to:
        with torch.no_grad():
            ref = tok([args.similar_to], return_tensors="pt", truncation=True).to(device)
            ref_emb = _mean_pool(model(**ref), ref["attention_mask"])

        def similarity(out: Any) -> Tensor:
            return torch.nn.functional.cosine_similarity(_mean_pool(out, mask), ref_emb)

        def projection(out: Any) -> Tensor:
            # Explained: the embedding's component along the reference direction. The cosine
            # itself is scale invariant, so Σ out ⊙ ∂cos/∂out = 0: its output relevance sums
            # to zero and the map's sign would be arbitrary; the projection is linear in the
            # embedding, its relevance sums to the score, and it ranks sentences alike.
            unit = ref_emb / ref_emb.norm(dim=-1, keepdim=True)
            return (_mean_pool(out, mask) * unit).sum(-1)

        with torch.no_grad():
            sims = similarity(explainer(**batch))
        rows.append(finite_maps(explainer.explain(**batch, target=projection,
                                                  contrastive=False), "the sentences"))
        for b in range(len(args.sentences)):
            records[b]["explanations"].append(
                {"target": f"embedding along {args.similar_to!r}",
                 "cosine_similarity": float(sims[b])})
            titles[b].append(f"cos = {float(sims[b]):+.3f}")
    else:
        mode, value = parse_target(args.target, loaded.labels)
        with torch.no_grad():
            scores = class_scores_of(explainer(**batch),
                                     [repr(s) for s in args.sentences])
        n = scores.shape[1]
        if mode == "top":
            if value > n:
                raise CLIError(f"--target top{value}: the model has only {n} classes")
            targets = scores.topk(value, dim=1).indices.T
        else:
            if not 0 <= value < n:
                raise CLIError(f"--target {value}: out of range, the model has {n} classes "
                               f"(0..{n - 1})")
            targets = torch.full((1, len(args.sentences)), value, dtype=torch.long,
                                 device=scores.device)
        probs = scores.float().softmax(1)
        for t in targets:
            rows.append(finite_maps(explainer.explain(
                **batch, target=t, contrastive=not args.positive_only), "the sentences"))
            for b, c in enumerate(t.tolist()):
                name = label(loaded.labels, c)
                records[b]["explanations"].append(
                    {"target": c, "label": name, "logit": float(scores[b, c]),
                     "probability": float(probs[b, c])})
                titles[b].append(f"{name or 'class ' + str(c)} (p={prob(probs[b, c])})")
    html_parts = []
    for b, sentence in enumerate(args.sentences):
        keep = mask[b].bool().cpu()
        tokens = tok.convert_ids_to_tokens(batch["input_ids"][b].cpu()[keep].tolist())
        print(sentence)
        for k, r in enumerate(rows):
            rel = r[b].detach().cpu()[keep]
            records[b]["explanations"][k]["tokens"] = tokens
            records[b]["explanations"][k]["relevance"] = [float(v) for v in rel]
            line = render_terminal(tokens, rel) if not args.no_color else " ".join(
                f"{t}[{float(v):+.2f}]" for t, v in zip(tokens, rel))
            print(f"  {titles[b][k]}: {line}")
            html_parts.append(render_html(tokens, rel, title=f"{sentence} — {titles[b][k]}"))
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path = out_dir / "text.html"
    html_path.write_text(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>lrpfx: "
        f"{args.model}</title></head>\n<body>\n<p>lrpfx {args.rule} relevance per token, "
        "red = for, blue = against.</p>\n" + "".join(html_parts) + "</body></html>\n",
        encoding="utf-8")
    write_json(out_dir / "text.json", {
        "lrpfx_version": lrpfx.__version__, "command": "explain-text", "model": args.model,
        "rule": args.rule, "rule_options": rule_options, "arguments": recorded_arguments(args),
        "sentences": records})
    print(f"wrote {html_path} and {Path(out_dir) / 'text.json'}")
    return 0
