"""Where does ``Explainer.explain`` spend its time? A torch.profiler breakdown.

Run (from the repository root)::

    .venv/bin/python bench/profile_explain.py                      # torchvision resnet50, CPU
    .venv/bin/python bench/profile_explain.py --model tv_vgg16 --trace /tmp/vgg.json
    .venv/bin/python bench/profile_explain.py --model timm_efficientnet_lite0 --batch 8 \
        --threads 1 --rule epsilon_plus_flat

Prints (1) the top aten ops by self time inside one ``explain`` call and, for comparison, one
saliency call, and (2) the backward time per rule family, split into the family's VJP, the
per-example L1 reduction of the normalisation, and the rest of ``AbsLRPFunction.backward``
(``r = y * G``, ``s = r / (|y| + EPS)``, ``x * v`` and the final division); for the LRP rule
sets (``--rule epsilon_plus_flat``) the backward of each ``LRPFunction``. The split is taken
by wrapping the rule functions with ``torch.profiler.record_function`` *in this process only*;
lrpfx itself is not modified.
"""

from __future__ import annotations

import argparse
import collections
import functools
import sys
from dataclasses import replace
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed import (  # noqa: E402
    MODELS,
    OPTIONS,  # noqa: E402
    build_model,
    compile_explainer,
    make_input,
    saliency,
)

import lrpfx.rules.abslrp as abslrp  # noqa: E402
import lrpfx.rules.lrp as lrp  # noqa: E402


def instrument(explainer: torch.nn.Module) -> None:
    """Label every rule's backward, its VJP and its L1 reduction for the profiler."""
    original_lrp = lrp.LRPFunction.backward

    def lrp_backward(ctx, grad):  # noqa: ANN001, ANN202
        with record_function(f"rule::{ctx.call.spec.op}"):
            return original_lrp(ctx, grad)

    lrp.LRPFunction.backward = staticmethod(lrp_backward)  # the LRP rule sets, this process only
    original_backward = abslrp.AbsLRPFunction.backward
    # the two normalisers of AbsLRPFunction.backward: v / Σ|x ⊙ v| and the dot product with
    # |x ⊙ F|
    original_l1, original_dot = abslrp.normalised_gradient, abslrp.per_example_dot

    def backward(ctx, grad):  # noqa: ANN001, ANN202
        with record_function(f"rule::{ctx.call.spec.op}"):
            return original_backward(ctx, grad)

    @functools.wraps(original_l1)
    def l1(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        with record_function("l1::reduce"):
            return original_l1(*args, **kwargs)

    def dot(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        with record_function("l1::reduce"):
            return original_dot(*args, **kwargs)

    abslrp.AbsLRPFunction.backward = staticmethod(backward)
    abslrp.normalised_gradient = l1
    abslrp.per_example_dot = dot  # this process only
    for module in explainer.modules():
        spec = getattr(module, "spec", None)
        if spec is None or getattr(spec.vjp, "_lrpfx_wrapped", False):
            continue

        def vjp(*args, _inner=spec.vjp, _op=spec.op):  # noqa: ANN002, ANN202
            with record_function(f"vjp::{_op}"):
                return _inner(*args)

        vjp._lrpfx_wrapped = True
        module.spec = replace(spec, vjp=vjp)


def family_table(prof: profile) -> str:
    """Backward time per rule family: total, VJP, L1 reduce, rest."""
    events = sorted((e for e in prof.events() if e.name.split("::")[0] in
                     ("rule", "vjp", "l1")), key=lambda e: e.time_range.start)
    totals: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    open_rule: tuple[str, float] | None = None
    for e in events:
        kind, _, op = e.name.partition("::")
        dur = e.time_range.elapsed_us() / 1e3
        if kind == "rule":
            open_rule = (op, e.time_range.end)
            totals[op]["total"] += dur
            totals[op]["calls"] += 1
        elif open_rule and e.time_range.start < open_rule[1]:
            totals[open_rule[0]]["vjp" if kind == "vjp" else "l1"] += dur
    grand = sum(c["total"] for c in totals.values())
    lines = ["| rule family | calls | total (ms) | share | VJP (ms) | L1 reduce (ms) | rest (ms) |",
             "|---|---|---|---|---|---|---|"]
    for op, c in sorted(totals.items(), key=lambda kv: -kv[1]["total"]):
        rest = c["total"] - c["vjp"] - c["l1"]
        lines.append(f"| {op} | {c['calls']} | {c['total']:.0f} | {c['total'] / grand:.0%} | "
                     f"{c['vjp']:.0f} | {c['l1']:.0f} | {rest:.0f} |")
    lines.append(f"| **all rules** | | {grand:.0f} | 100% | | | |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tv_resnet50", choices=list(MODELS))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rows", type=int, default=20)
    p.add_argument("--trace", type=Path, default=None, help="write a chrome trace of explain")
    p.add_argument("--rule", default="abslrp", help="rule set to profile (default: abslrp)")
    args = p.parse_args()
    OPTIONS["rule"] = args.rule
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    model = build_model(args.model, device)
    x = make_input(args.batch, device)
    explainer, _ = compile_explainer(model, x)
    instrument(explainer)
    explainer.explain(x)
    saliency(model, x)
    with profile(activities=[ProfilerActivity.CPU]) as sal_prof:
        saliency(model, x)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        explainer.explain(x)
    if args.trace:
        prof.export_chrome_trace(str(args.trace))
    for title, pr in (("explain", prof), ("saliency", sal_prof)):
        print(f"\n## {args.model}: top aten ops, one {title} call (batch {args.batch})\n")
        print(pr.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows,
                                      max_name_column_width=45))
    print(f"\n## {args.model}: explain backward per rule family (both passes)\n")
    print(family_table(prof))


if __name__ == "__main__":
    main()
