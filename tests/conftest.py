"""Shared fixtures and the golden files.

The golden maps and numbers (``shared/golden``) are looked for in three places only, in this
order: the folder ``LRPFX_GOLDEN`` names, ``shared/golden`` inside the checkout, and
``../shared/golden`` beside it. No other folder is searched (a ``shared/golden`` planted in some
folder above the checkout is never read), and every file is read with
``torch.load(weights_only=True)``: tensors, numbers and strings, never pickled code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import settings

# CI (scripts/test.sh passes --hypothesis-profile=ci) draws the same examples on every run, so a
# red build is reproducible; the default profile explores new examples each run.
settings.register_profile("ci", derandomize=True, print_blob=True)

REPO = Path(__file__).resolve().parents[1]


def golden_candidates() -> list[Path]:
    """Where golden files may be, in order of preference."""
    env = os.environ.get("LRPFX_GOLDEN")
    return ([Path(env)] if env else []) + [REPO / "shared" / "golden",
                                           REPO.parent / "shared" / "golden"]


def golden_dir() -> Path:
    """The first golden folder that exists (else the first candidate, for the message)."""
    candidates = golden_candidates()
    return next((c for c in candidates if c.is_dir()), candidates[0])


def load_golden(name: str) -> Any:
    """``golden_dir() / name``, read with ``weights_only=True``; the test fails (not skips)
    with where it looked when the file is missing."""
    path = golden_dir() / name
    if not path.is_file():
        pytest.fail(f"golden file {name} is missing: looked in "
                    f"{', '.join(map(str, golden_candidates()))} (set LRPFX_GOLDEN to the "
                    "golden folder)")
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
