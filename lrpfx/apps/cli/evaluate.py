"""``lrpfx evaluate``: judge the maps with GAE, Sensitivity-n and insertion/deletion."""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np
import torch

import lrpfx
from lrpfx.apps.cli.common import class_scores_of, compile_model, load_image_model, run_model
from lrpfx.apps.cli.errors import CLIError, first_line
from lrpfx.apps.cli.options import add_model_args, at_least, parse_rule_options, resolve_device
from lrpfx.apps.cli.output import check_out_dir, note, recorded_arguments, write_json
from lrpfx.apps.preprocess import find_images, load_image

__all__ = ["METRICS", "register", "run"]

METRICS = ("gae", "sensitivity-n", "insertion-deletion")


def register(sub: Any, epilog: str, fmt: type[argparse.HelpFormatter]) -> None:
    """Add the ``evaluate`` command and its flags."""
    p = sub.add_parser(
        "evaluate", formatter_class=fmt, epilog=epilog,
        help="judge the maps: GAE, Sensitivity-n, insertion/deletion",
        description="Evaluate relevance maps with lrpfx.metrics on images (or, for --model "
                    "digits, on its test split) and print a table of means per rule set; writes "
                    "evaluation.json and evaluation.md in --out. Under torchrun (torchrun "
                    "--nproc_per_node N -m lrpfx evaluate ...) the blocks of images are shared "
                    "out over the processes, with the same results as one process.")
    p.add_argument("images", nargs="*", metavar="IMAGE",
                   help="image files or folders (optional for --model digits)")
    add_model_args(p)
    p.add_argument("--compare", nargs="+", default=[], metavar="RULE",
                   help="more rule sets to evaluate side by side (e.g. gradient_x_input)")
    p.add_argument("--metric", default=",".join(METRICS),
                   help=f"comma-separated subset of {', '.join(METRICS)} (default: all)")
    p.add_argument("--n", "--max-images", dest="n", type=at_least(1), default=16,
                   help="images to use at most (16); spell it --max-images under torchrun")
    p.add_argument("--gae-steps", type=at_least(1), default=10, help="GAE masking steps (10)")
    p.add_argument("--subsets", type=at_least(1), default=100,
                   help="Sensitivity-n random subsets per image and n (100)")
    p.add_argument("--feature", type=at_least(1), default=1,
                   help="Sensitivity-n feature: square patch side in pixels (1)")
    p.add_argument("--insertion-steps", type=at_least(1), default=100,
                   help="points of the insertion/deletion curves (100)")
    p.add_argument("--batch-size", "-b", type=at_least(1), default=16,
                   help="images per batch (16)")
    p.add_argument("--seed", type=int, default=0, help="seed of GAE and Sensitivity-n (0)")
    p.add_argument("--block-size", type=at_least(4), default=64,
                   help="images per block (64, a multiple of 4): the unit of work shared out "
                   "over processes under torchrun; block b is seeded from (seed, b)")
    p.add_argument("--out", "-o", default="lrpfx_out", help="output folder (default: lrpfx_out)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _images(args: argparse.Namespace, prep: Any) -> tuple[torch.Tensor, str]:
    if args.images:
        try:
            paths = find_images(args.images)[:args.n]
            x = prep.batch(load_image(p) for p in paths)
        except ValueError as e:
            raise CLIError(str(e)) from e
        return x, f"{len(paths)} image(s) from {', '.join(args.images)}"
    from lrpfx.data.digits import load_digits_tensors

    x = load_digits_tensors().x_test[:args.n]
    return x, f"the first {len(x)} digits of the test split"


def run(args: argparse.Namespace) -> int:
    """Run ``lrpfx evaluate``; the exit code."""
    from lrpfx.metrics import distributed

    device = resolve_device(args.device)
    out_dir = check_out_dir(args.out)
    rule_options = parse_rule_options(args.option)
    chosen = [m.strip().lower() for m in args.metric.split(",") if m.strip()]
    unknown = sorted(set(chosen) - set(METRICS))
    if unknown or not chosen:
        raise CLIError(f"--metric {args.metric!r}: choose from {', '.join(METRICS)}")
    if not args.images and args.model != "digits":
        raise CLIError("give images to evaluate on (only --model digits has its own)")
    loaded = load_image_model(args)
    if loaded.preprocessor is None or loaded.keyword:
        raise CLIError(f"{args.model}: evaluate takes image models called as model(x)")
    for msg in loaded.notes:
        note(msg)
    x, source = _images(args, loaded.preprocessor)
    if "gae" in chosen and len(x) < 4:
        raise CLIError(f"gae needs at least 4 images (mosaics of 4); got {len(x)}")
    model = loaded.model.to(device)
    x = x.to(device)
    for i in range(0, len(x), args.batch_size):  # metrics on NaN outputs mean nothing
        class_scores_of(run_model(loaded, model, x[i:i + args.batch_size]),
                        [f"image {j} of {source}" for j in range(i, len(x))])
    results: dict[str, dict[str, Any]] = {}
    seed = args.seed
    start = time.perf_counter()
    rank = _init_distributed(device)
    block = max(4, 4 * (args.block_size // 4))
    for rule in [args.rule, *args.compare]:
        explainer = compile_model(loaded, args, rule=rule).to(device)
        row: dict[str, Any] = {}

        def run_metric(name: str, explain: Any = explainer.explain, **options: Any) -> Any:
            # blocks of images, block b on rank b mod world (torchrun), each seeded from
            # (seed, b): the same numbers on any number of processes
            return distributed.evaluate(name, model, explain, x, block_size=block, seed=seed,
                                        progress=not args.quiet, **options)

        try:
            if "gae" in chosen:
                row["gae"] = run_metric("gae", steps=args.gae_steps,
                                        batch_size=max(4, 4 * (args.batch_size // 4))).means
            if "sensitivity-n" in chosen:
                s = run_metric("sensitivity_n", n_subsets=args.subsets, feature=args.feature,
                               batch_size=args.batch_size)
                row["sensitivity_n"] = {"n": [int(n) for n in s.ns],
                                        "correlation": [float(c) for c in s.mean]}
            if "insertion-deletion" in chosen:
                row["insertion_deletion"] = run_metric(
                    "insertion_deletion", steps=args.insertion_steps,
                    batch_size=args.batch_size).means
        except ValueError as e:  # e.g. odd image sizes for GAE's mosaics
            raise CLIError(f"{rule}: {first_line(e)}") from e
        results[rule] = row
    if rank != 0:
        return 0  # every rank has the same results; rank 0 reports them
    summary = {"lrpfx_version": lrpfx.__version__, "command": "evaluate", "model": args.model,
               "weights": args.weights, "random_init": loaded.random_init, "data": source,
               "input_size": list(x.shape[1:]), "seed": seed, "metrics": chosen,
               "rule_options": rule_options,
               "settings": {"gae_steps": args.gae_steps, "subsets": args.subsets,
                            "feature": args.feature, "insertion_steps": args.insertion_steps},
               "arguments": recorded_arguments(args),
               "seconds": time.perf_counter() - start, "results": results}
    table = _table(summary)
    print(table)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "evaluation.json", summary,
               why_null="undefined (e.g. a correlation over maps or scores that do not vary)")
    (out_dir / "evaluation.md").write_text(
        f"# lrpfx evaluate\n\n- Model: `{args.model}`; data: {source}; seed {seed}\n"
        f"- Command line options: {_options_line(summary['arguments'])}\n\n"
        + table + "\n", encoding="utf-8")
    print(f"wrote {out_dir / 'evaluation.json'} and {out_dir / 'evaluation.md'}")
    return 0


def _options_line(arguments: dict[str, Any]) -> str:
    return ", ".join(f"`{k}={v}`" for k, v in arguments.items() if k != "images")


def _init_distributed(device: torch.device) -> int:
    """Join the process group when started by ``torchrun`` (``WORLD_SIZE`` > 1); the rank."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank() if dist.is_initialized() else 0


def _cell(row: dict[str, Any], metric: str, key: str) -> float:
    if metric == "sensitivity_n":  # the mean over n of the correlations that are defined
        c = np.asarray(row[metric]["correlation"], dtype=float)
        return float(np.nanmean(c)) if np.isfinite(c).any() else float("nan")
    return float(row[metric][key])


def _table(summary: dict[str, Any]) -> str:
    """A Markdown table: one row per rule set, the mean of each metric."""
    cols: list[tuple[str, str, str]] = []  # (title, metric, key)
    if "gae" in summary["metrics"]:
        cols += [(f"GAE {k}", "gae", k) for k in ("gae", "lc", "c")]
    if "sensitivity-n" in summary["metrics"]:
        cols.append(("Sensitivity-n (mean over n)", "sensitivity_n", ""))
    if "insertion-deletion" in summary["metrics"]:
        cols += [(k, "insertion_deletion", k) for k in ("insertion", "deletion", "difference")]
    lines = ["| rule | " + " | ".join(c for c, _, _ in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for rule, row in summary["results"].items():
        lines.append(f"| {rule} | " + " | ".join(f"{_cell(row, m, k):.4f}" for _, m, k in cols)
                     + " |")
    return "\n".join(lines)
