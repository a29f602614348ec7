"""Relevance auditing: how much relevance each rule-bearing node receives and passes on.

For a node ``y = f(x₁..xₙ)`` the audit records, per example, ``Σ|R_y|`` and ``ΣR_y`` at its
output (all readers' contributions summed) and ``Σ|R_xₖ|``, ``ΣR_xₖ`` of the relevance *this
node* sends to each input. The share lost, ``1 − Σₖ ΣR_xₖ / ΣR_y``, is what the rule gave to
biases, parameters and stabilisers (negative: relevance created). Conservative rules (LRP-0 on
bias-free ReLU networks) lose nothing; LRP-ε loses to ε and biases. absLRP is not conservative
by design (each input is normalised, and normalisations that cancel are deferred to the final
map), so its per-node ratios are rule-specific scale factors, not leaks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import Tensor, nn

from lrpfx.rules.base import RuleCall


@dataclass(frozen=True)
class NodeAudit:
    """Relevance through one rule-bearing node; every tensor has one value per example."""

    node: str
    op: str
    rule: str
    module: str
    out_l1: Tensor
    """``Σ|R_y|``."""
    out_sum: Tensor
    """``ΣR_y``."""
    in_l1: dict[str, Tensor]
    """``Σ|R_x|`` for each input that receives relevance, by argument name."""
    in_sum: dict[str, Tensor]
    """``ΣR_x`` for each input."""

    @property
    def lost(self) -> Tensor:
        """``1 − Σₖ ΣR_xₖ / ΣR_y``: the share kept by parameters, biases and stabilisers."""
        total = sum(self.in_sum.values())
        return 1 - total / torch.where(self.out_sum != 0, self.out_sum,
                                       torch.ones_like(self.out_sum))


@dataclass
class AuditReport:
    """The audit of one explanation, nodes in graph order."""

    rule_set: str
    nodes: list[NodeAudit] = field(default_factory=list)

    def table(self) -> str:
        """Batch means per node, as a plain-text table."""
        header = ("node", "op", "module", "Σ|R_out|", "Σ|R_in|", "lost")
        rows = [(n.node, n.op, n.module or "-", f"{n.out_l1.mean().item():.4g}",
                 f"{sum(n.in_l1.values(), torch.zeros_like(n.out_l1)).mean().item():.4g}",
                 f"{n.lost.mean().item():+.3f}") for n in self.nodes]
        widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
                 for r in (header, *rows)]
        return "\n".join([f"lrpfx relevance audit: rule set {self.rule_set!r}", *lines])

    def __str__(self) -> str:
        return self.table()


class Recorder:
    """Records relevance at every :class:`RuleCall` that runs in this thread while it is active
    (a context manager; global module hooks, so graphs compiled inside it are seen too; calls
    made by other threads meanwhile are not recorded)."""

    def __init__(self) -> None:
        self.records: dict[RuleCall, dict[str, Tensor]] = {}
        self.order: list[RuleCall] = []
        self._handles: list = []
        self._thread = threading.get_ident()

    def __enter__(self) -> Recorder:
        from torch.nn.modules.module import (
            register_module_forward_hook,
            register_module_forward_pre_hook,
        )

        self._thread = threading.get_ident()

        def pre(module: nn.Module, inputs: tuple) -> tuple | None:
            if isinstance(module, RuleCall) and threading.get_ident() == self._thread:
                return self._pre(module, inputs)
            return None

        def post(module: nn.Module, inputs: tuple, out: object) -> None:
            if isinstance(module, RuleCall) and threading.get_ident() == self._thread:
                self._post(module, inputs, out)

        # torch types the hook as returning None; a pre-hook may return replacement inputs
        self._handles = [register_module_forward_pre_hook(cast(Callable[..., None], pre)),
                         register_module_forward_hook(post)]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()

    def _pre(self, call: RuleCall, inputs: tuple) -> tuple:
        if not torch.is_grad_enabled():
            return inputs
        rec = self.records.setdefault(call, {})
        self.order.append(call)
        new = list(inputs)
        for i, name in enumerate(call.relevant):
            t = inputs[i]
            if not (isinstance(t, Tensor) and t.requires_grad):
                continue
            view = t.view_as(t)  # its gradient is this node's contribution alone
            direct = name in call.as_relevance

            def hook(g: Tensor, t: Tensor = t, name: str = name, direct: bool = direct) -> None:
                rec["in:" + name] = g if direct else t.detach() * g

            view.register_hook(hook)
            new[i] = view
        return tuple(new)

    def _post(self, call: RuleCall, inputs: tuple, out: object) -> None:
        if isinstance(out, Tensor) and out.requires_grad:
            rec = self.records.setdefault(call, {})
            out.register_hook(lambda g: rec.__setitem__("out", out.detach() * g))

    def report(self, rule_set: str) -> AuditReport:
        report = AuditReport(rule_set)
        seen = set()
        for call in self.order:
            if call in seen:
                continue
            seen.add(call)
            rec = self.records.get(call, {})
            if "out" not in rec:
                continue  # not on the path of this backward
            ins = {k[3:]: v for k, v in rec.items() if k.startswith("in:")}
            report.nodes.append(NodeAudit(
                node=call.node_name, op=call.spec.op, rule=call.spec.name, module=call.source,
                out_l1=_l1(rec["out"]), out_sum=_sum(rec["out"]),
                in_l1={k: _l1(v) for k, v in ins.items()},
                in_sum={k: _sum(v) for k, v in ins.items()}))
        return report


def _l1(t: Tensor) -> Tensor:
    return t.abs().reshape(t.shape[0], -1).sum(1) if t.dim() else t.abs().reshape(1)


def _sum(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1).sum(1) if t.dim() else t.reshape(1)
