"""Model coverage (issue #4): compile and explain every model of the coverage list.

Run (from the repository root)::

    .venv/bin/python bench/coverage.py                        # all 112 models (~12 min, 1 core)
    .venv/bin/python bench/coverage.py --family timm
    .venv/bin/python bench/coverage.py --family beyond         # issue 17: beyond classification
    .venv/bin/python bench/coverage.py --only resnet --only vit
    .venv/bin/python bench/coverage.py --size                 # add parameter counts
    .venv/bin/python bench/coverage.py --json coverage.json

The model list and the per-model check live in ``tests/coverage_models.py`` and are shared
with ``tests/test_coverage*.py``. Per model (random init, seeded, eval mode, small input): the
compiled forward must equal the model's (``allclose``, tight tolerance), the positive, negative
and contrastive maps must be finite and not all zero, and the contrastive map must change when
the target changes. Prints a markdown table: model, family, status, failing op(s) or error,
number of nodes of the compiled graph, compile time (capture + passes), explain time (one
contrastive ``explain_parts``: one forward, two backward passes).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import coverage_models  # noqa: E402


def _fmt(t: float) -> str:
    return "-" if t != t else f"{t:.1f} s"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", action="append", default=[],
                   help="keep models whose name contains SUBSTR (repeatable)")
    p.add_argument("--family", choices=["torchvision", "timm", "hf", "beyond"],
                   help="one family ('beyond': segmentation, video, audio, detection, causal "
                   "LMs, a U-Net, newer timm families; only run when named)")
    p.add_argument("--size", action="store_true", help="add a parameter-count column")
    p.add_argument("--skip-slow", action="store_true",
                   help="leave out the models marked slow in the test suite")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    cases = coverage_models.all_cases(args.family)
    if args.only:
        cases = [c for c in cases if any(s in c.name for s in args.only)]
    if args.skip_slow:
        cases = [c for c in cases if not c.slow]
    header = ["model", "family", "status", "failing op(s) / error", "nodes", "compile",
              "explain", "total"]
    if args.size:
        header.insert(2, "params")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    rows, passed = [], 0
    start = time.perf_counter()
    for case in cases:
        t0 = time.perf_counter()
        model = None
        try:
            model = coverage_models.build(case)
        except Exception as e:  # noqa: BLE001 - reported in the table
            result = coverage_models.Result(case, error=f"build: {type(e).__name__}: {e}")
        else:
            result = coverage_models.check(case, model)
        total = time.perf_counter() - t0
        passed += result.ok
        cells = [case.name + (" (slow)" if case.slow else ""), case.family,
                 "pass" if result.ok else "fail",
                 result.error.replace("|", "\\|") if not result.ok else "",
                 str(result.nodes or "-"), _fmt(result.compile_s), _fmt(result.explain_s),
                 _fmt(total)]
        params = None
        if args.size:
            params = sum(p.numel() for p in model.parameters()) / 1e6 if model else float("nan")
            cells.insert(2, f"{params:.1f}M")
        print("| " + " | ".join(cells) + " |", flush=True)
        rows.append(dict(model=case.name, family=case.family, ok=result.ok, error=result.error,
                         failing_ops=result.failing_ops, nodes=result.nodes,
                         compile_s=result.compile_s, explain_s=result.explain_s, total_s=total,
                         slow=case.slow, params_m=params,
                         max_forward_diff=result.max_forward_diff,
                         decomposed=result.decomposed))
        del model
        gc.collect()
    print(f"\n{passed}/{len(cases)} passed in {time.perf_counter() - start:.0f} s "
          f"(torch {torch.__version__})")
    _summary(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0 if passed == len(cases) else 1


def _summary(rows: list[dict]) -> None:
    """Per family: tried / passed / the failing ops; then what the decomposition pass handled
    (ops with no hand-written rule), with the models it handled them in."""
    print("\n| family | tried | passed | failing op(s) (models) |\n|---|---|---|---|")
    for family in sorted({r["family"] for r in rows}):
        mine = [r for r in rows if r["family"] == family]
        failing: dict[str, int] = {}
        for r in mine:
            if not r["ok"]:
                for op in r["failing_ops"] or [r["error"][:60]]:
                    failing[op] = failing.get(op, 0) + 1
        text = ", ".join(f"{op} ({n})" for op, n in sorted(failing.items())) or "-"
        print(f"| {family} | {len(mine)} | {sum(r['ok'] for r in mine)} | "
              f"{text.replace('|', chr(92) + '|')} |")
    routes: dict[str, set[str]] = {}
    for r in rows:
        for line in r.get("decomposed") or []:
            routes.setdefault(line, set()).add(r["model"])
    if routes:
        print("\n| handled by lrpfx.passes.decompose | models |\n|---|---|")
        for line, models in sorted(routes.items()):
            print(f"| {line} | {', '.join(sorted(models))} |")


if __name__ == "__main__":
    raise SystemExit(main())
