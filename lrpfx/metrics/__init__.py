"""Metrics that judge attribution maps, batched and on the model's device (DESIGN.md §6).

Every metric takes the model, an attribution function ``explain_fn(x, target) -> map`` (any
method: ``lrpfx.compile(model).explain``, a Captum method in a lambda, ...) and a batch of images,
and returns a dataclass with per-image (or per-mosaic) tensors and their means.

>>> import lrpfx, lrpfx.metrics
>>> explainer = lrpfx.compile(model)
>>> result = lrpfx.metrics.gae(model, explainer.explain, images,
...                            generator=torch.Generator().manual_seed(0))   # doctest: +SKIP
>>> result.means["gae"], result.lc, result.c                                 # doctest: +SKIP

- :func:`gae`: the paper's Global Attribution Evaluation (local consistency × contrastiveness).
- :func:`sensitivity_n`: Sensitivity-n of Ancona et al. (ICLR 2018), a curve over ``n``.
- :func:`insertion_deletion`: insertion and deletion AUCs of the target class probability.
"""

from __future__ import annotations

from lrpfx.metrics.base import ExplainFn, MetricTarget
from lrpfx.metrics.global_evaluation import GAEResult, gae, make_mosaics
from lrpfx.metrics.insertion import (
    InsertionDeletionResult,
    gaussian_blur,
    insertion_deletion,
)
from lrpfx.metrics.sensitivity import SensitivityNResult, default_ns, sensitivity_n

__all__ = [
    "ExplainFn", "GAEResult", "InsertionDeletionResult", "MetricTarget", "SensitivityNResult",
    "default_ns", "gae", "gaussian_blur", "insertion_deletion", "make_mosaics", "sensitivity_n",
]
