"""``lrpfx check``: which rule each op of a model gets (exit 1 if any op has none)."""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any

import torch

import lrpfx
from lrpfx.apps.cli.common import load_image_model
from lrpfx.apps.cli.errors import CLIError, first_line
from lrpfx.apps.cli.options import add_model_args, image_size, parse_rule_options, parse_size
from lrpfx.apps.cli.output import note

__all__ = ["register", "run"]


def register(sub: Any, epilog: str, fmt: type[argparse.HelpFormatter]) -> None:
    """Add the ``check`` command and its flags."""
    p = sub.add_parser(
        "check", formatter_class=fmt, epilog=epilog,
        help="which rule each op of a model gets (exit 1 if any op has none)",
        description="Compile the model on a random input and print its rule coverage table; "
                    "exit code 1 if an op on the relevance path has no rule.")
    add_model_args(p)
    p.add_argument("--frontend", choices=("export", "symbolic_trace"), default="export",
                   help="capture frontend (default: export)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``lrpfx check``; the exit code."""
    size = parse_size(args.input_size)
    loaded = load_image_model(args, task="auto")
    for msg in loaded.notes:
        note(msg)
    if loaded.preprocessor is not None:
        c, h, w = image_size(size, loaded.preprocessor.input_size)
        example: Any = torch.randn(2, c, h, w)
        if loaded.keyword:
            example = {loaded.keyword: example}
        shape = f"{c}×{h}×{w}"
    else:
        t = size[-1] if size else 16
        vocab = int(getattr(loaded.model.config, "vocab_size", 100))
        ids = torch.randint(min(5, vocab - 1), vocab, (2, t))
        example = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        shape = f"{t} tokens"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the report says it all
            explainer = lrpfx.compile(loaded.model, rule=args.rule, strict=False,
                                      frontend=args.frontend, example_inputs=example,
                                      **parse_rule_options(args.option))
            report = explainer.report
    except lrpfx.CaptureError as e:
        print(f"lrpfx check: error: cannot capture {args.model}: {first_line(e)}",
              file=sys.stderr)
        return 1
    except ValueError as e:
        raise CLIError(first_line(e)) from e
    print(f"{args.model}, input {shape}")
    print(report.table())
    bad = report.unsupported
    if bad:
        ops = sorted({n.canonical or n.op for n in bad})
        print(f"\n{len(bad)} op(s) on the relevance path have no {args.rule!r} rule: "
              f"{', '.join(ops)}. lrpfx.compile(model) refuses this model; "
              "strict=False lets them carry the plain gradient.")
        return 1
    print(f"\nOK: every op on the relevance path has a {args.rule!r} rule.")
    return 0
