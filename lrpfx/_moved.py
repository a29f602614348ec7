"""Old import paths of modules that moved when the package was laid out by role.

``import lrpfx.zoo`` still works and gives :mod:`lrpfx.data.zoo` (the same module object), with a
:class:`DeprecationWarning` naming the new path.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

MOVED = {
    "lrpfx.adapters": "lrpfx.apps.adapters",
    "lrpfx.audit": "lrpfx.core.audit",
    "lrpfx.baselines": "lrpfx.metrics.baselines",
    "lrpfx.capture": "lrpfx.core.capture",
    "lrpfx.cli": "lrpfx.apps.cli",
    "lrpfx.demo": "lrpfx.apps.demo",
    "lrpfx.digits": "lrpfx.data.digits",
    "lrpfx.distributed": "lrpfx.metrics.distributed",
    "lrpfx.explainer": "lrpfx.core.explainer",
    "lrpfx.ops": "lrpfx.core.ops",
    "lrpfx.preprocess": "lrpfx.apps.preprocess",
    "lrpfx.report": "lrpfx.core.report",
    "lrpfx.text": "lrpfx.apps.text",
    "lrpfx.viz": "lrpfx.apps.viz",
    "lrpfx.zoo": "lrpfx.data.zoo",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves an old module path to the module at its new path (never a second copy)."""

    def find_spec(self, fullname: str, path: object, target: object = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {new}; import it from there", DeprecationWarning,
                      stacklevel=2)
        module = importlib.import_module(new)
        spec.loader_state = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # the import system stamps the old name's spec on the module; give it its own back
        module.__spec__ = module.__spec__.loader_state


def install() -> None:
    if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())
