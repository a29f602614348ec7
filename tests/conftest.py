"""Shared fixtures. The golden maps live in ``shared/golden`` beside the checkout or in a folder
above it (or where ``LRPFX_GOLDEN`` points)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import settings

# CI (scripts/test.sh passes --hypothesis-profile=ci) draws the same examples on every run, so a
# red build is reproducible; the default profile explores new examples each run.
settings.register_profile("ci", derandomize=True, print_blob=True)

REPO = Path(__file__).resolve().parents[1]


def golden_dir() -> Path:
    env = os.environ.get("LRPFX_GOLDEN")
    if env:
        return Path(env)
    # the checkout itself, or any folder above it (a clone in a temporary folder beside
    # the project's shared/ still finds it)
    for folder in (REPO, *REPO.parents):
        candidate = folder / "shared" / "golden"
        if candidate.is_dir():
            return candidate
    return REPO.parent / "shared" / "golden"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
