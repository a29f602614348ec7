"""lrpfx: compile any PyTorch model into one that explains itself.

>>> import lrpfx
>>> explainer = lrpfx.compile(model)          # absLRP by default
>>> out = explainer(x)                        # equals model(x)
>>> R = explainer.explain(x)                  # contrastive absLRP map, shape of x
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from lrpfx.capture import CaptureError
from lrpfx.explainer import Explainer, Explanation, Target
from lrpfx.report import CoverageReport, NodeReport, UnsupportedOpError

__version__ = "0.1.0"


def compile(  # noqa: A001 - the public name the API promises
    model: nn.Module,
    *,
    rule: str = "abslrp",
    strict: bool = True,
    frontend: str = "export",
    example_inputs: tuple | Tensor | None = None,
    **rule_options: Any,
) -> Explainer:
    """Compile ``model`` so that one backward pass yields relevance.

    Parameters
    ----------
    model
        Any ``nn.Module`` (or a ``torch.fx.GraphModule`` from ``torch.fx.symbolic_trace``).
        It is never modified.
    rule
        Rule set; ``"abslrp"`` (default).
    strict
        If True (default), an op on the relevance path without a rule raises
        :class:`UnsupportedOpError` before anything runs. If False, such ops carry the plain
        gradient and a warning lists them.
    frontend
        ``"export"`` (default, ``torch.export``; the graph is captured at the first call, or at
        once when ``example_inputs`` is given) or ``"symbolic_trace"``.
    example_inputs
        Optional example input(s) to capture and check the graph immediately.
    **rule_options
        Options of the rule set (see :func:`lrpfx.rules.get_ruleset`), e.g.
        ``max_pool_divide=True``.

    Returns
    -------
    Explainer
    """
    return Explainer(model, rule=rule, strict=strict, frontend=frontend,
                     example_inputs=example_inputs, **rule_options)


def explain(
    model: nn.Module,
    x: Tensor,
    target: Target = None,
    *,
    contrastive: bool = True,
    rule: str = "abslrp",
    strict: bool = True,
    **rule_options: Any,
) -> Tensor:
    """One-shot :func:`compile` then :meth:`Explainer.explain` (compiles on every call: for
    repeated use, keep the explainer)."""
    return compile(model, rule=rule, strict=strict, example_inputs=(x,), **rule_options).explain(
        x, target, contrastive=contrastive)


__all__ = [
    "CaptureError", "CoverageReport", "Explainer", "Explanation", "NodeReport",
    "UnsupportedOpError", "compile", "explain", "__version__",
]
