"""The ``lrpfx`` parser and dispatcher: one subcommand a module, errors as one line.

argparse and not click/typer: the commands are four small declarative tables of flags sharing
one group (:func:`lrpfx.apps.cli.options.add_model_args`), argparse needs no dependency, and its
``RawDescriptionHelpFormatter`` keeps the examples epilog as written. What a framework would add
(one-line usage errors, exit code 2) is the few lines of :class:`_Parser`.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import NoReturn

import torch

import lrpfx
from lrpfx.apps.cli import check, evaluate, explain, explain_text
from lrpfx.apps.cli.errors import CLIError
from lrpfx.apps.cli.options import MODEL_SPECS

__all__ = ["EPILOG", "build_parser", "main"]

COMMANDS = (explain, explain_text, check, evaluate)

EPILOG = f"""\
examples:
  lrpfx explain cat.jpg dog.png --model timm:resnet50 --weights resnet50.pth --target top3
  lrpfx explain photos/ --model timm:efficientnet_lite0 --weights lite0.pth --out maps/
  lrpfx explain digit.png --model digits                 # a small CNN trained on the fly
  lrpfx explain x.png --model my_net.py:build --weights my_net.pt --input-size 1,28,28 \\
      --mean 0.13 --std 0.31 --labels classes.txt
  lrpfx explain-text "a gripping, moving film" --model hf:./my-bert-sst2 --target top2
  lrpfx explain-text "a cat on a mat" --model hf:PATH --similar-to "a kitten on a rug"
  lrpfx check --model timm:vit_tiny_patch16_224
  lrpfx evaluate --model digits --compare gradient_x_input --n 16
  python -m lrpfx check --model hf:./my-bert --input-size 32

models (--model {MODEL_SPECS}): timm:NAME and torchvision:NAME build the
architecture with random weights (nothing is downloaded unless torchvision weights are named):
pass trained ones with --weights FILE (a state dict, read with weights_only=True). hf:PATH is a
local folder written by save_pretrained (with its image processor or tokenizer).
FILE.py:FACTORY calls FACTORY() from your file; say how its inputs are prepared with
--input-size (required), --mean/--std (default ImageNet's) and name its classes with --labels.
digits is lrpfx's digits CNN (trained in seconds, cached).

maps: contrastive absLRP by default: red = evidence for the target class, blue = evidence for
the other classes, white = none; --positive-only shows the target's positive map (white to red).
Preprocessing follows the model (timm data config, torchvision weights' transforms, the Hugging
Face image processor; otherwise resize, center crop and ImageNet normalisation).

evaluate: the paper's GAE (mosaics of 4 images), Sensitivity-n and insertion/deletion AUCs, from
lrpfx.metrics; see their docstrings for the definitions.

summary files (summary.json, text.json, evaluation.json) record every option given; they are
strict JSON: a number that is not finite is written as null and listed under "null_values".

exit codes: 0 ok, 1 the model cannot be explained (unsupported op, capture failure),
2 usage error (unknown model, unreadable image or weights, bad flag, non-finite model outputs),
each reported as one line on stderr.
"""


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (``lrpfx explain: error: ...``), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``lrpfx`` argument parser (subcommands explain, explain-text, check, evaluate)."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog="lrpfx", formatter_class=fmt, epilog=EPILOG,
        description="Explain PyTorch models with absLRP relevance maps (one backward pass).")
    parser.add_argument("--version", action="version", version=f"lrpfx {lrpfx.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for command in COMMANDS:
        command.register(sub, EPILOG, fmt)
    for p in sub.choices.values():  # the raw formatter keeps the epilog, so wrap these here
        p.description = textwrap.fill(p.description or "", width=92)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``lrpfx`` command line.

    Parameters
    ----------
    argv
        Arguments without the program name (default ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit code: 0 ok (also after ``--help``), 1 the model cannot be explained, 2 usage
        error. Nothing raises: every error is one line on stderr.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version (0) or a usage error (2): a code, as below
        return e.code if isinstance(e.code, int) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    handler: Callable[[argparse.Namespace], int] = args.func
    threads = torch.get_num_threads()
    prefix = f"lrpfx {args.command}: error:"
    try:
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        return handler(args)
    except CLIError as e:
        print(f"{prefix} {' '.join(str(e).split())}", file=sys.stderr)
        return e.exit_code
    except lrpfx.UnsupportedOpError as e:
        ops = sorted({n.canonical or n.op for n in e.report.unsupported})
        print(f"{prefix} {len(e.report.unsupported)} op(s) have no {args.rule!r} rule "
              f"({', '.join(ops)}); run 'lrpfx check --model {args.model}' for the full report",
              file=sys.stderr)
        return 1
    except lrpfx.CaptureError as e:
        from lrpfx.apps.cli.errors import first_line

        print(f"{prefix} cannot capture {args.model}: {first_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"lrpfx {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        torch.set_num_threads(threads)
