"""Coverage reports: which rule every graph node gets, as data."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

RULE = "rule"
PASSTHROUGH = "passthrough"
SOURCE = "source"
UNSUPPORTED = "unsupported"
OFF_PATH = "off-path"

DECOMPOSITION = "lrpfx_decomposition"
"""``node.meta`` key set by :mod:`lrpfx.passes.decompose`: what was done or tried for a node
(probed property, inlined body, decomposition and its origin), read into
:attr:`NodeReport.decomposition`."""


@dataclass(frozen=True)
class NodeReport:
    """One node of the captured graph that carries relevance.

    Attributes
    ----------
    node
        Node name in the captured graph.
    op
        The op as the frontend spelt it (``aten.conv2d.default``, ``nn.Conv2d``, ...).
    canonical
        The canonical op it was mapped to, or None.
    rule
        The rule applied (``"abslrp"``, ``"passthrough"``), or ``"none"``.
    module
        Dotted path of the source module in the user's model ("" for the top level).
    status
        ``"rule"``, ``"passthrough"``, ``"source"`` (where relevance is read, e.g. the token
        embedding lookup), ``"unsupported"``, or ``"off-path"`` (nodes that carry no relevance:
        constants, shapes, masks; listed in :attr:`CoverageReport.off_path`).
    reason
        Why the node is unsupported, when it is.
    nonneg_input
        Whether the compiled rule uses the non-negative-input fast path.
    decomposition
        What :mod:`lrpfx.passes.decompose` did or tried for the node: ``"decomposed from
        aten.addcmul.default"``, ``"aten.upsample_bilinear2d.vec: probed linear, non-negative
        coefficients -> positive_linear"``, or, for an unsupported node, why nothing applied.
    """

    node: str
    op: str
    canonical: str | None
    rule: str
    module: str
    status: str
    reason: str | None = None
    nonneg_input: bool = False
    decomposition: str | None = None


@dataclass
class CoverageReport:
    """Per-node coverage of one compiled graph."""

    rule_set: str
    frontend: str
    nodes: list[NodeReport] = field(default_factory=list)
    """Nodes on the relevance path (from the explained input to the output)."""
    off_path: list[NodeReport] = field(default_factory=list)
    """The graph's other nodes (constants, shape arithmetic, masks): they need no rule."""
    total_derivative_merges: list[str] = field(default_factory=list)
    """Merges (rewritten node names) whose skip operand takes the total derivative through the
    branch (absLRP option ``merge_total_derivative``)."""

    @property
    def unsupported(self) -> list[NodeReport]:
        """Nodes with no rule (strict mode refuses to compile when this is not empty)."""
        return [n for n in self.nodes if n.status == UNSUPPORTED]

    @property
    def decomposed(self) -> dict[str, int]:
        """Nodes that :mod:`lrpfx.passes.decompose` made or rewrote, counted per origin line."""
        return dict(Counter(n.decomposition for n in self.nodes if n.decomposition
                            and n.status != UNSUPPORTED))

    @property
    def ok(self) -> bool:
        return not self.unsupported

    def counts(self) -> dict[str, int]:
        """Number of nodes per status."""
        return dict(Counter(n.status for n in self.nodes))

    def table(self, all_nodes: bool = False) -> str:
        """A plain-text table, unsupported nodes first; ``all_nodes`` adds the off-path ones."""
        rows = sorted(self.nodes, key=lambda n: n.status != UNSUPPORTED)
        if all_nodes:
            rows += self.off_path
        header: tuple[str, ...] = ("status", "node", "op", "canonical", "rule", "module")
        data: list[tuple[str, ...]] = [
            (n.status + (f" ({n.reason})" if n.reason else ""), n.node, n.op,
             n.canonical or "-", n.rule, n.module or "-") for n in rows]
        if any(n.decomposition for n in rows):  # what lrpfx.passes.decompose did or tried
            header += ("decomposition",)
            data = [(*r, n.decomposition or "-") for r, n in zip(data, rows)]
        widths = [max(len(str(r[i])) for r in (header, *data)) for i in range(len(header))]
        lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
                 for r in (header, *data)]
        counts = ", ".join(f"{v} {k}" for k, v in sorted(self.counts().items()))
        counts += f"; {len(self.off_path)} off-path"
        if self.total_derivative_merges:
            counts += (f"; {len(self.total_derivative_merges)} merges take the total derivative "
                       "through their branch")
        return "\n".join([f"lrpfx coverage: rule set {self.rule_set!r}, frontend "
                          f"{self.frontend!r}: {counts}", *lines])

    def __str__(self) -> str:
        return self.table()


class UnsupportedOpError(RuntimeError):
    """Raised in strict mode when a node that carries relevance has no rule.

    Attributes
    ----------
    report
        The full :class:`CoverageReport`; ``report.unsupported`` lists the offending nodes.
    """

    def __init__(self, report: CoverageReport):
        self.report = report
        lines = [f"  - node {n.node!r}: op {n.op}"
                 + (f" (canonical {n.canonical})" if n.canonical else "")
                 + f", from module {n.module or '<top level>'!r}"
                 + (f": {n.reason}" if n.reason else "")
                 + (f"; tried: {n.decomposition}" if n.decomposition else "")
                 for n in report.unsupported]
        super().__init__(
            f"{len(lines)} op(s) on the relevance path have no {report.rule_set!r} rule:\n"
            + "\n".join(lines)
            + "\nNothing was run. Pass strict=False to let these ops carry the plain gradient "
            "instead (the maps are then not pure " + report.rule_set + "), or open an issue."
        )
