"""The package layout is the architecture: the engine never reaches into its uses, and modules
that moved still import from their old paths (as the same module object, with a warning)."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

import lrpfx
from lrpfx._moved import MOVED

PACKAGE = Path(lrpfx.__file__).parent
ENGINE = ("core", "passes", "rules")
USES = ("lrpfx.apps", "lrpfx.data", "lrpfx.metrics")


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names]
    return names


@pytest.mark.parametrize("part", ENGINE)
def test_engine_does_not_import_its_uses(part: str) -> None:
    offenders = {
        f"{path.relative_to(PACKAGE)}: {name}"
        for path in (PACKAGE / part).rglob("*.py")
        for name in _imports(path)
        if name.startswith(USES)
    }
    assert not offenders, f"the engine imports applications/data/metrics: {sorted(offenders)}"


@pytest.mark.parametrize("old", sorted(MOVED))
def test_moved_module_imports_from_old_path(old: str) -> None:
    new = MOVED[old]
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    assert module.__spec__.name == new  # the real module keeps its own identity


def test_every_moved_target_exists() -> None:
    for new in MOVED.values():
        assert (PACKAGE.parent / (new.replace(".", "/") + ".py")).exists() or \
            (PACKAGE.parent / new.replace(".", "/") / "__init__.py").exists(), new
