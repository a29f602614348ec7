"""Flags shared by the commands and how their values are parsed and checked.

Numbers are checked by argparse itself (``type=at_least(1)``), so a bad value is reported like any
other usage error, before a model is loaded; values that need the model (a class name, a size in
its channel count) are checked by the helpers here and raise :class:`CLIError`.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch

from lrpfx.apps.cli.errors import CLIError, first_line

__all__ = ["MODEL_SPECS", "add_model_args", "at_least", "image_size", "parse_rule_options",
           "parse_size", "parse_target", "resolve_device"]

MODEL_SPECS = "timm:NAME, torchvision:NAME, hf:PATH, FILE.py:FACTORY or digits"


def at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type`` for integers ``>= low`` (``--threads 0`` is an error, not ignored)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value}: must be at least {low}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its messages
    return parse


def add_model_args(p: argparse.ArgumentParser, *, image: bool = True) -> None:
    """``--model``, ``--weights``, the rule set and its options, and threads; for image models
    also ``--num-classes``, ``--input-size`` and what a ``FILE.py`` model cannot tell us itself
    (``--labels``, ``--mean``/``--std``)."""
    from lrpfx.rules.registry import RULESETS

    p.add_argument("--model", "-m", required=True, metavar="SPEC",
                   help=f"the model: {MODEL_SPECS}")
    p.add_argument("--weights", "-w", metavar="FILE",
                   help="state-dict file to load (read with torch.load(weights_only=True)); "
                        "torchvision: also a weights name such as IMAGENET1K_V1")
    others = ", ".join(sorted(set(RULESETS) - {"abslrp"}))
    p.add_argument("--rule", default="abslrp", metavar="RULE",
                   help=f"rule set: abslrp (default){', ' + others if others else ''}")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="rule-set option, repeatable (e.g. max_pool_divide=true)")
    p.add_argument("--no-strict", dest="strict", action="store_false",
                   help="let ops without a rule carry the plain gradient instead of refusing")
    p.add_argument("--threads", type=at_least(1), metavar="N",
                   help="CPU threads for torch (default: torch's choice; 1 is often fastest "
                        "for small models on a busy machine)")
    if image:
        p.add_argument("--num-classes", type=at_least(1), metavar="N",
                       help="output classes of a timm/torchvision/file model (fine-tuned weights)")
        p.add_argument("--input-size", metavar="C,H,W",
                       help="input size instead of the model's (timm, FILE.py, torchvision "
                            "without named weights); C is 1 (grey) or 3 (RGB); also H,W or a "
                            "side; check: a token count for text models")
        p.add_argument("--labels", metavar="FILE",
                       help="class names, one a line (instead of the model's)")
        p.add_argument("--mean", metavar="M[,M,M]",
                       help="normalisation mean, one value or one per channel, instead of the "
                            "model's ('none' with --std none: no normalisation)")
        p.add_argument("--std", metavar="S[,S,S]",
                       help="normalisation std, one value or one per channel, instead of the "
                            "model's")


def resolve_device(name: str) -> torch.device:
    """``--device`` as a ``torch.device``; a clear error when CUDA is asked for but missing."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as e:
        raise CLIError(f"--device {name}: not a torch device ({first_line(e)})") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        why = "torch was built without CUDA" if torch.version.cuda is None else \
            "no GPU is visible"
        raise CLIError(f"--device {name}: CUDA is not available here ({why}); use --device cpu")
    if device.type == "cuda" and device.index is not None and \
            device.index >= torch.cuda.device_count():
        raise CLIError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible")
    return device


def parse_target(text: str, labels: Sequence[str] | None = None) -> tuple[str, int]:
    """``--target`` as ``("top", k)`` or ``("class", index)``.

    ``top1``/``top3``/``topK``, a class index, or a class name (case-insensitive, when the
    model has names).
    """
    t = text.strip()
    m = re.fullmatch(r"top(\d+)", t.lower())
    if m:
        k = int(m.group(1))
        if k < 1:
            raise CLIError(f"--target {text}: top-k needs k >= 1")
        return "top", k
    if re.fullmatch(r"-?\d+", t):
        return "class", int(t)
    if labels:
        lower = [str(label).lower() for label in labels]
        if t.lower() in lower:
            return "class", lower.index(t.lower())
        raise CLIError(f"--target {text!r}: no class of that name; give top1, top3, a class "
                       f"index or one of the model's {len(labels)} class names "
                       f"(e.g. {', '.join(map(repr, labels[:3]))})")
    raise CLIError(f"--target {text!r}: give top1, topK or a class index")


def parse_size(text: str | None) -> tuple[int, ...] | None:
    """``--input-size`` as 1 to 3 positive integers (``C,H,W``, ``H,W`` or a side)."""
    if text is None:
        return None
    try:
        parts = tuple(int(p) for p in re.split(r"[,x× ]+", text.strip()) if p)
    except ValueError:
        parts = ()
    if not parts or any(p < 1 for p in parts) or len(parts) > 3:
        raise CLIError(f"--input-size {text!r}: give C,H,W (e.g. 3,224,224), H,W, a side "
                       "(224), or a token count for text models")
    if len(parts) == 3 and parts[0] not in (1, 3):
        raise CLIError(f"--input-size {text}: images are read as grey (C=1) or RGB (C=3), "
                       f"not {parts[0]} channels; for other inputs call lrpfx.compile from "
                       "Python")
    return parts


def image_size(parts: tuple[int, ...] | None, default: Sequence[int]) -> tuple[int, int, int]:
    """``(C, H, W)`` from :func:`parse_size`'s parts, the rest taken from ``default``."""
    c, h, w = (int(d) for d in default)
    if parts is None:
        return c, h, w
    if len(parts) == 1:
        return c, parts[0], parts[0]
    if len(parts) == 2:
        return c, parts[0], parts[1]
    return parts[0], parts[1], parts[2]


def parse_floats(flag: str, text: str | None, channels: int) -> tuple[float, ...] | None:
    """``--mean``/``--std``: one value (every channel) or one per channel; ``none`` is None."""
    if text is None or text.strip().lower() == "none":
        return None
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if len(values) == 1:
        values *= channels
    if len(values) != channels or not all(math.isfinite(v) for v in values):
        raise CLIError(f"{flag} {text!r}: give {channels} finite number(s), comma-separated "
                       "(or one for every channel)")
    if flag == "--std" and any(v <= 0 for v in values):
        raise CLIError(f"{flag} {text!r}: a standard deviation must be positive")
    return values


def parse_rule_options(items: Sequence[str]) -> dict[str, Any]:
    """``--option KEY=VALUE`` items as keyword arguments of :func:`lrpfx.compile`: booleans
    (true/false/yes/no/1/0), numbers, else strings."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CLIError(f"--option {item!r}: expected KEY=VALUE")
        low = value.lower()
        if low in ("true", "false", "yes", "no", "1", "0"):
            out[key] = low in ("true", "yes", "1")
        else:
            try:
                number = float(value) if "." in value or "e" in low else int(value)
            except ValueError:
                out[key] = value
                continue
            if isinstance(number, float) and not math.isfinite(number):
                raise CLIError(f"--option {item!r}: the value must be finite")
            out[key] = number
    return out
