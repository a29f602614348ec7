"""What the commands write: the output folder, strict JSON, names, statistics, Markdown."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lrpfx.apps.cli.errors import CLIError

__all__ = ["check_out_dir", "class_name", "label", "map_stats", "note", "out_names", "prob",
           "recorded_arguments", "write_json"]


def note(msg: str) -> None:
    """A remark for the user on stderr (not an error)."""
    print(f"lrpfx: note: {msg}", file=sys.stderr)


def check_out_dir(path: str) -> Path:
    """``--out`` as a folder that exists or can be made; checked before any work is done, so
    a file in its way is a one-line error rather than a traceback at the end."""
    p = Path(path)
    for q in (p, *p.parents):
        if q.exists():
            if not q.is_dir():
                raise CLIError(f"--out {path}: {q} is a file, not a folder; give a folder")
            break
    return p


def _finite(value: Any, where: str, nulls: dict[str, str]) -> Any:
    """``value`` with every non-finite float replaced by None, its place recorded in
    ``nulls`` (JSON has no NaN: ``json.dumps`` would write a bare ``NaN``)."""
    if isinstance(value, float) and not math.isfinite(value):
        nulls[where] = f"{value} (not a number JSON can hold)"
        return None
    if isinstance(value, dict):
        return {k: _finite(v, f"{where}/{k}", nulls) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v, f"{where}/{i}", nulls) for i, v in enumerate(value)]
    return value


def write_json(path: Path, data: dict[str, Any], *, why_null: str = "") -> None:
    """Write strict JSON (``allow_nan=False``). A non-finite number becomes null, and
    ``"null_values"`` lists where, with ``why_null`` as the reason."""
    nulls: dict[str, str] = {}
    clean = _finite(data, "", nulls)
    if nulls:
        clean["null_values"] = {k: f"{v}{': ' + why_null if why_null else ''}"
                                for k, v in nulls.items()}
    path.write_text(json.dumps(clean, indent=2, allow_nan=False), encoding="utf-8")


def recorded_arguments(args: argparse.Namespace, **parsed: Any) -> dict[str, Any]:
    """Every command-line option as the command saw it (for the summary files), plus parsed
    forms (``rule_options`` from ``--option``)."""
    out = {k: v for k, v in sorted(vars(args).items()) if k != "func" and not callable(v)}
    out.update(parsed)
    return out


def map_stats(m: Tensor) -> dict[str, Any]:
    """Relevance statistics of one map (summed over channels, before display scaling)."""
    r = m.detach().double().cpu()
    if r.dim() == 3:
        r = r.sum(0)
    flat = r.flatten()
    absr = flat.abs()
    total = float(absr.sum()) or 1.0
    pos = r.clamp(min=0)
    k = max(1, round(0.1 * flat.numel()))
    stats: dict[str, Any] = {
        "max": float(flat.max()), "min": float(flat.min()), "sum": float(flat.sum()),
        "positive_fraction": float(pos.sum()) / total,
        "positive_area": float((flat > 0).double().mean()),
        "top10pct_share": float(absr.topk(k).values.sum()) / total,
    }
    if r.dim() == 2 and float(pos.sum()) > 0:
        h, w = r.shape
        ys = torch.arange(h, dtype=torch.float64) + 0.5
        xs = torch.arange(w, dtype=torch.float64) + 0.5
        stats["positive_centroid_yx"] = [float((pos.sum(1) * ys).sum() / pos.sum()) / h,
                                         float((pos.sum(0) * xs).sum() / pos.sum()) / w]
    return stats


def prob(p: float | Tensor) -> str:
    """A probability for people: two decimals, or two significant digits below 0.01."""
    p = float(p)
    return f"{p:.2f}" if p >= 0.01 or p == 0 else f"{p:.1e}"


def label(labels: Sequence[str] | None, i: int) -> str | None:
    """Class ``i``'s name, or None."""
    return str(labels[i]) if labels is not None and 0 <= i < len(labels) else None


def class_name(labels: Sequence[str] | None, i: int) -> str:
    """``"3 (tabby)"`` or ``"3"``."""
    name = label(labels, i)
    return f"{i} ({name})" if name is not None and name != str(i) else str(i)


def out_names(paths: Sequence[Path], roots: Sequence[str]) -> list[str]:
    """A distinct PNG file name per image (its path below the folder it was found in)."""
    folders = [Path(r).resolve() for r in roots if Path(r).is_dir()]
    names: list[str] = []
    seen: set[str] = set()
    for p in paths:
        rp = p.resolve()
        rel = next((rp.relative_to(f) for f in folders if rp.is_relative_to(f)), Path(p.name))
        base = "__".join(rel.with_suffix("").parts) or "image"
        name, n = base, 1
        while name in seen:
            n += 1
            name = f"{base}_{n}"
        seen.add(name)
        names.append(name)
    return names
