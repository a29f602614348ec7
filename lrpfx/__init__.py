"""lrpfx: compile any PyTorch model into one that explains itself.

>>> import lrpfx
>>> explainer = lrpfx.compile(model)          # absLRP by default
>>> out = explainer(x)                        # equals model(x)
>>> R = explainer.explain(x)                  # contrastive absLRP map, shape of x
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from lrpfx import _moved, metrics
from lrpfx.core.audit import AuditReport, NodeAudit
from lrpfx.core.capture import CaptureError
from lrpfx.core.explainer import Explainer, Explanation, Target
from lrpfx.core.report import CoverageReport, NodeReport, UnsupportedOpError
from lrpfx.core.targets import Output
from lrpfx.data import models
from lrpfx.rules.base import RuleSet

__version__ = "0.1.0"
_moved.install()
# ``lrpfx.models`` is the public name of the model loader (issue 19): ``import lrpfx.models`` too
sys.modules[f"{__name__}.models"] = models


def compile(  # noqa: A001 - the public name the API promises
    model: nn.Module,
    *,
    rule: str | RuleSet = "abslrp",
    strict: bool = True,
    frontend: str = "export",
    example_inputs: tuple | list | Tensor | Mapping[str, Any] | None = None,
    cache_size: int = 8,
    **rule_options: Any,
) -> Explainer:
    """Compile ``model`` so that one backward pass yields relevance.

    Parameters
    ----------
    model
        Any ``nn.Module`` (or a ``torch.fx.GraphModule`` from ``torch.fx.symbolic_trace``).
        It is never modified. Its state is taken now (a private eval-mode copy): later changes
        to the model do not reach the explainer; compile again after changing it.
    rule
        Rule set: ``"abslrp"`` (default), any name in :data:`lrpfx.rules.RULESETS`
        (``lrp0``, ``epsilon``, ``alphabeta``, ``alpha2beta1``, ``zplus``, ``flat``,
        ``wsquare``, ``epsilon_plus_flat``, ..., ``gradient``, ``gradient_x_input``,
        ``integrated_gradients``, ``deeplift_rescale``), or a rule set built with
        :func:`lrpfx.rules.composite`.
    strict
        If True (default), an op on the relevance path without a rule raises
        :class:`UnsupportedOpError` before anything runs. If False, such ops carry the plain
        gradient and a warning lists them.
    frontend
        ``"export"`` (default, ``torch.export``; the graph is captured at the first call, or at
        once when ``example_inputs`` is given) or ``"symbolic_trace"``.
    example_inputs
        Optional example input(s) to capture and check the graph immediately: a tensor, a tuple
        or list of positional inputs, or keyword inputs as a dict.
    cache_size
        How many compiled graphs (one per input shape) to keep, least recently used dropped
        first. All graphs share the weights and the tensors derived from them.
    **rule_options
        Options of the rule set (see :func:`lrpfx.rules.get_ruleset`), e.g.
        ``max_pool_divide=True``.

    Returns
    -------
    Explainer
    """
    return Explainer(model, rule=rule, strict=strict, frontend=frontend,
                     example_inputs=example_inputs, cache_size=cache_size, **rule_options)


def check(
    model: nn.Module,
    example_inputs: tuple | Tensor | Mapping[str, Any],
    *,
    rule: str = "abslrp",
    frontend: str = "export",
    **rule_options: Any,
) -> CoverageReport:
    """The coverage report of ``model`` without explaining anything: every node of the captured
    graph with its canonical op, the rule it gets and its source module; unsupported ops first
    in ``print(report)``. :func:`compile` refuses, in strict mode, exactly the models whose
    report lists unsupported nodes.

    Parameters
    ----------
    model
        Any ``nn.Module`` (never modified).
    example_inputs
        Input(s) to capture the graph with: a tensor, a tuple, or keyword inputs as a dict
        (``{"input_ids": ids, "attention_mask": mask}``).
    rule, frontend, rule_options
        As in :func:`compile`.

    Returns
    -------
    CoverageReport
        ``report.nodes`` (relevance path), ``report.off_path`` (the other nodes),
        ``report.unsupported``, ``report.ok``, ``report.table(all_nodes=True)``.

    Raises
    ------
    CaptureError
        No frontend could capture the model.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="lrpfx: these ops carry the plain gradient")
        explainer = Explainer(model, rule=rule, strict=False, frontend=frontend,
                              example_inputs=example_inputs, **rule_options)
    return explainer.report


def explain(
    model: nn.Module,
    x: Tensor,
    target: Target = None,
    *,
    contrastive: bool = True,
    rule: str = "abslrp",
    strict: bool = True,
    region: Tensor | None = None,
    position: int | Tensor | None = None,
    output: Output = None,
    **rule_options: Any,
) -> Tensor:
    """One-shot :func:`compile` then :meth:`Explainer.explain` (compiles on every call: for
    repeated use, keep the explainer). ``region``, ``position`` and ``output`` are passed to
    :meth:`Explainer.explain`; other keywords are rule options."""
    return compile(model, rule=rule, strict=strict, example_inputs=(x,), **rule_options).explain(
        x, target, contrastive=contrastive, region=region, position=position, output=output)


__all__ = [
    "AuditReport", "CaptureError", "CoverageReport", "Explainer", "Explanation", "NodeAudit",
    "NodeReport", "UnsupportedOpError", "check", "compile", "explain", "metrics", "models",
    "__version__",
]
