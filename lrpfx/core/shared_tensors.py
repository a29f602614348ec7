"""Tensors shared by every graph compiled from one model snapshot.

A graph is captured per input signature, and each rewrite would otherwise hold its own copy of
every weight and of every tensor derived from it (``|W|``, ``W⁺``, ``[W, |W|]``, batch-norm
scales): memory growing with each new input size. :class:`SharedTensors` hands each rewrite the
tensor an earlier one already holds: constants that are the snapshot's own parameters and
buffers (or views of them) alias the snapshot, other constants are deduplicated by value, and
derived parameters are computed once per (rule, constants, static arguments).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from lrpfx.rules.base import RuleCall


class SharedTensors:
    """The constants and derived parameters of all graphs compiled from ``snapshot``.

    Parameters
    ----------
    snapshot
        The explainer's private copy of the model. Its tensors are never modified, so graphs may
        alias them (they never alias the user's model).
    conversions
        The dtype/device conversions applied to the explainer so far (a list the owner extends):
        constants met later get them too.
    """

    def __init__(self, snapshot: nn.Module, conversions: list[Callable[[Tensor], Tensor]]
                 ) -> None:
        self.conversions = conversions
        self._owned = {t.untyped_storage().data_ptr()
                       for t in (*snapshot.parameters(), *snapshot.buffers())}
        self.tensors: dict[tuple, Tensor] = {}
        self.derived: dict[tuple, dict[str, Tensor]] = {}
        self._keep: list[Any] = []  # keys hold id()s: keep those objects alive

    def key(self, t: Tensor) -> tuple:
        """What identifies ``t``'s value: a view of the snapshot by its place, anything else by
        its bytes."""
        ptr = t.untyped_storage().data_ptr()
        if ptr in self._owned:
            return ("view", ptr, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        data = t.detach().reshape(-1).contiguous()
        digest = hashlib.sha256(data.view(torch.uint8).cpu().numpy().tobytes()).hexdigest() \
            if data.numel() else ""
        return ("value", tuple(t.shape), t.dtype, t.device, digest)

    def constant(self, t: Tensor) -> Tensor:
        """The shared tensor equal to ``t`` (``t`` itself, detached, the first time)."""
        key = self.key(t)
        if key not in self.tensors:
            value = t.detach() if key[0] == "view" else t.detach().clone()
            for fn in self.conversions:
                value = fn(value)
            self.tensors[key] = value
        return self.tensors[key]

    def adopt(self, call: RuleCall, sources: dict[str, Tensor | None]) -> None:
        """Replace ``call``'s constants (its own clones of ``sources``) by shared tensors and
        give it its derived parameters, computed here only if no earlier call had the same.

        ``call`` must have been built without derived parameters (``spec.derive`` unset)."""
        keys = []
        for name, t in sources.items():
            if isinstance(t, Tensor):
                call.register_buffer(name, self.constant(t))
                keys.append((name, self.key(t)))
        derive = call.spec.derive
        if derive is None:
            return
        key = (id(call.spec), tuple(keys), repr(sorted(call.static.items())),
               tuple(sorted(call.nonneg)), call.relevant, call.runtime)
        if key not in self.derived:  # from constants converted already
            self._keep.append(call.spec)
            self.derived[key] = {k: v.detach() for k, v in derive(call).items()}
        for k, v in self.derived[key].items():
            call.register_buffer(f"derived_{k}", v)
        call.derived_names = tuple(self.derived[key])

    def all(self) -> list[Tensor]:
        """Every tensor held here."""
        return [*self.tensors.values(), *(v for d in self.derived.values() for v in d.values())]

    def convert(self, fn: Any) -> None:
        """Apply a dtype/device conversion (``fn`` maps each tensor once: see
        :meth:`lrpfx.core.graph_cache.GraphCache._apply`)."""
        self.tensors = {k: fn(v) for k, v in self.tensors.items()}
        self.derived = {k: {n: fn(v) for n, v in d.items()} for k, d in self.derived.items()}
