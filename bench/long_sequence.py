"""Peak memory and time of ``explain`` on long token sequences, against a plain gradient.

Issue 18, item 4: long-sequence text (BERT at 512 tokens, a causal LM at 1-2k tokens, batch 1)
must run without materialising more than the attention matrices autograd itself keeps. This
bench measures where lrpfx stands.

Run (from the repository root; one core, a few minutes)::

    .venv/bin/python bench/long_sequence.py --threads 1
    .venv/bin/python bench/long_sequence.py --models bert_eager --lengths 128 --threads 1
    .venv/bin/python bench/long_sequence.py --models llama_sdpa --tally --lengths 1024

Models (Hugging Face, built from a config, seeded random init, eval mode, float32, batch 1):

- ``bert_eager`` / ``bert_sdpa``: ``BertForSequenceClassification`` with bert-base sizes (12
  layers, 12 heads, hidden 768), 2 labels; lengths 128, 256, 512. Target: the predicted class.
- ``llama_eager`` / ``llama_sdpa``: ``LlamaForCausalLM``, 6 layers, 8 heads, hidden 512, MLP
  1376, vocabulary 32000 (LLaMA's); lengths 512, 1024, 2048. Target: the predicted next token
  at the last position.

``_eager`` / ``_sdpa`` is ``attn_implementation``. Token ids are random, the attention mask all
ones.

Methods, each in a **fresh subprocess** per (model, length, method):

- ``saliency``: the plain gradient of the target logit with respect to the token embeddings
  (the model is called with ``inputs_embeds``, parameters frozen), summed over the hidden
  dimension: one score per token, read where lrpfx reads token relevance (the embedding
  lookup's output).
- ``explain``: ``lrpfx.compile(model).explain(input_ids=..., attention_mask=...)``, contrastive
  absLRP with the default ``merge_total_derivative="attention"``; ``explain_local`` with
  ``False`` (op-local merges); ``explain_total`` with ``True`` (every merge).

Memory: the method of ``bench/speed.py`` (its helpers are imported): the child runs with
``MALLOC_MMAP_THRESHOLD_=65536``, makes one warm-up call, resets the kernel's peak-RSS counter
(``clear_refs``), takes ``VmRSS`` as the baseline, makes one measured call, and reports
``VmHWM - baseline``: the peak extra resident memory of one call. Time: the measured call's
wall time (one call, not a median: long calls, one core). The ratio divides explain's by
saliency's peak and time of the same model and length; the two ran in different processes.

``attn`` is the size of the attention matrices autograd itself keeps for a plain gradient with
eager attention: layers x heads x L x L x 4 bytes (the softmax output each layer saves for its
backward). SDPA on CPU (flash kernel) keeps none of them, only a log-sum-exp per row.

A call that runs longer than ``--max-seconds`` (default 180) is stopped and reported as skipped,
and the longer lengths of that model and method are skipped too.

``--tally``: instead of the table, run each method once in this process under
``torch.autograd.graph.saved_tensors_hooks`` and print the tensors the autograd graph saved,
grouped by shape class (attention-sized ``L x L``, vocabulary-sized, other), counted once per
storage. A class is read from the shape alone: ``[k; |k|]`` (``L x 2 d_head``) counts as
``L x L`` when ``L = 2 d_head`` (BERT-base at 128 tokens), and a view is labelled with its own
shape but counted with its storage's size (the last position's logits: the whole logits).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "bench"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from speed import _reset_peak_rss, _status_kib  # noqa: E402 - bench/speed.py's peak-RSS helpers

MIB = 2.0**20

#: name -> (family, attn_implementation)
MODELS: dict[str, tuple[str, str]] = {
    "bert_eager": ("bert", "eager"),
    "bert_sdpa": ("bert", "sdpa"),
    "llama_eager": ("llama", "eager"),
    "llama_sdpa": ("llama", "sdpa"),
}
LENGTHS = {"bert": [128, 256, 512], "llama": [512, 1024, 2048]}
METHODS: dict[str, object] = {  # explain variants: merge_total_derivative
    "saliency": None,
    "explain": "attention",
    "explain_local": False,
    "explain_total": True,
}
LLAMA = dict(vocab_size=32000, hidden_size=512, intermediate_size=1376, num_hidden_layers=6,
             num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=4096)


def build_model(name: str) -> nn.Module:
    import transformers as t

    family, impl = MODELS[name]
    torch.manual_seed(0)
    if family == "bert":
        model = t.BertForSequenceClassification(t.BertConfig(num_labels=2,
                                                             attn_implementation=impl))
    else:
        model = t.LlamaForCausalLM(t.LlamaConfig(**LLAMA, attn_implementation=impl))
    return model.eval().requires_grad_(False)


def attention_mib(model: nn.Module, length: int) -> float:
    """layers x heads x L x L x 4 bytes: the softmax outputs eager attention saves."""
    c = model.config
    return c.num_hidden_layers * c.num_attention_heads * length * length * 4 / MIB


def make_inputs(model: nn.Module, length: int) -> tuple[Tensor, Tensor]:
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(100, vocab - 100, (1, length), generator=gen)
    return ids, torch.ones_like(ids)


def _score(logits: Tensor) -> Tensor:
    """The target logit: the predicted class, or the predicted next token at the last position."""
    if logits.dim() == 3:
        logits = logits[:, -1]
    return logits.gather(1, logits.argmax(1, keepdim=True)).sum()


def make_call(name: str, method: str, length: int) -> Callable[[], Tensor]:
    """One call of ``method`` on model ``name`` at ``length`` tokens (batch 1)."""
    model = build_model(name)
    ids, mask = make_inputs(model, length)
    if method == "saliency":
        with torch.no_grad():
            embeds = model.get_input_embeddings()(ids)

        def saliency() -> Tensor:
            with torch.enable_grad():
                leaf = embeds.detach().requires_grad_(True)
                logits = model(inputs_embeds=leaf, attention_mask=mask).logits
                (grad,) = torch.autograd.grad(_score(logits), leaf)
            return grad.sum(-1)

        return saliency
    import lrpfx

    explainer = lrpfx.compile(model, merge_total_derivative=METHODS[method])
    return lambda: explainer.explain(input_ids=ids, attention_mask=mask)


# ----------------------------------------------------------------------------- child


def probe(name: str, method: str, length: int, threads: int | None) -> dict:
    """Runs inside the fresh subprocess: time and peak extra RSS of one warm call."""
    if threads:
        torch.set_num_threads(threads)
    fn = make_call(name, method, length)
    start = time.perf_counter()
    fn()  # warm-up (explain: captures the graph)
    first_s = time.perf_counter() - start
    gc.collect()
    if not _reset_peak_rss():
        raise SystemExit("cannot reset the peak-RSS counter (/proc/self/clear_refs)")
    base_kib = _status_kib("VmRSS")
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    peak_kib = _status_kib("VmHWM")
    del out
    return {"peak_mib": max(peak_kib - base_kib, 0) / 1024, "base_mib": base_kib / 1024,
            "seconds": seconds, "first_s": first_s}


def run_child(name: str, method: str, length: int, args: argparse.Namespace) -> dict | None:
    """:func:`probe` in a fresh subprocess; None if it ran past the time limit."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_probe", name, method, str(length)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    # two calls (warm-up and measured) plus building the model
    limit = 2 * args.max_seconds + 60
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=limit,
                              check=False)
    except subprocess.TimeoutExpired:
        return None
    if proc.returncode != 0:  # e.g. killed for memory: report it, go on with the others
        print(f"{name}/{method}/{length} failed (exit {proc.returncode}):\n"
              f"{proc.stderr[-3000:]}", file=sys.stderr, flush=True)
        return {"failed": proc.returncode}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return None if result["seconds"] > args.max_seconds else result


# ----------------------------------------------------------------------------- tally


def tally(name: str, method: str, length: int) -> dict[str, tuple[int, float]]:
    """Tensors the autograd graph saves during one call, by shape class: (count, MiB)."""
    fn = make_call(name, method, length)
    fn()  # capture first, so only the measured call's tensors are counted
    vocab = getattr(build_model(name).config, "vocab_size", -1)
    seen: dict[tuple[int, int], tuple[str, int]] = {}
    alive: list[Tensor] = []  # no storage is freed and its address reused while counting

    def pack(t: Tensor) -> Tensor:
        alive.append(t)
        shape = tuple(t.shape)
        if shape.count(length) >= 2:
            kind = f"L x L ({'x'.join(map(str, shape))})"
        elif vocab in shape:
            kind = f"vocabulary ({'x'.join(map(str, shape))})"
        elif length in shape:
            kind = "other, L-sized"
        else:
            kind = "other (weights, per-example)"
        s = t.untyped_storage()
        seen.setdefault((s.data_ptr(), s.nbytes()), (kind, s.nbytes()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    out: dict[str, tuple[int, float]] = {}
    for kind, nbytes in seen.values():
        n, mib = out.get(kind, (0, 0.0))
        out[kind] = (n + 1, mib + nbytes / MIB)
    return dict(sorted(out.items(), key=lambda kv: -kv[1][1]))


# ----------------------------------------------------------------------------- table


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    head = ["model", "L", "attn (MiB)", "saliency: s / MiB"]
    for m in args.methods:
        if m != "saliency":
            head.append(f"{m}: s / MiB (x time, x mem)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        sal = row["results"].get("saliency")
        if sal is not None and "failed" in sal:
            sal = None
        cells = [row["model"], str(row["length"]), f"{row['attn_mib']:.0f}",
                 "skipped" if sal is None else f"{sal['seconds']:.1f} / {sal['peak_mib']:.0f}"]
        for m in args.methods:
            if m == "saliency":
                continue
            r = row["results"].get(m)
            if r is None or "failed" in r:
                cells.append(f"skipped (> {args.max_seconds:.0f} s)" if r is None
                             else f"failed (exit {r['failed']})")
                continue
            cell = f"{r['seconds']:.1f} / {r['peak_mib']:.0f}"
            if sal is not None and sal["peak_mib"] > 0:
                cell += (f" ({r['seconds'] / sal['seconds']:.1f}x, "
                         f"{r['peak_mib'] / sal['peak_mib']:.1f}x)")
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    info = (f"CPU, batch 1, float32, threads={torch.get_num_threads()}, torch "
            f"{torch.__version__}; peak = extra resident memory of one warm call (MiB), "
            "time of that call (s)")
    return info + "\n\n" + "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--lengths", nargs="+", type=int, default=None,
                   help="default: BERT 128 256 512, LLaMA 512 1024 2048")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--max-seconds", type=float, default=180.0,
                   help="skip a call (and longer lengths) past this time (default 180)")
    p.add_argument("--tally", action="store_true",
                   help="print the saved tensors of one call by shape class instead")
    p.add_argument("--json", type=Path, default=None, help="also write raw results here")
    p.add_argument("--_probe", nargs=3, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._probe:
        name, method, length = args._probe
        print(json.dumps(probe(name, method, int(length), args.threads)))
        return
    if args.tally:
        for name in args.models:
            for length in args.lengths or LENGTHS[MODELS[name][0]][-1:]:
                for method in args.methods:
                    print(f"{name}, L={length}, {method}: saved tensors")
                    for kind, (n, mib) in tally(name, method, length).items():
                        print(f"  {mib:9.1f} MiB  {n:4d}  {kind}")
        return
    rows = []
    for name in args.models:
        too_long: set[str] = set()
        model = build_model(name)  # for its config
        for length in args.lengths or LENGTHS[MODELS[name][0]]:
            results: dict[str, dict | None] = {}
            for method in args.methods:
                print(f"{name} L={length} {method} ...", file=sys.stderr, flush=True)
                results[method] = r = None if method in too_long else \
                    run_child(name, method, length, args)
                if r is None or "failed" in r:
                    too_long.add(method)
                else:
                    print(f"  {r['seconds']:.1f} s, {r['peak_mib']:.0f} MiB", file=sys.stderr,
                          flush=True)
            rows.append({"model": name, "length": length, "results": results,
                         "attn_mib": attention_mib(model, length)})
    print(markdown(rows, args))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
