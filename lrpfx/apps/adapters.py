"""lrpfx in other libraries' interfaces: a Captum attribution class and a Quantus explain_func.

>>> from lrpfx.apps.adapters import LRPFXAttribution, quantus_explain_func
>>> attr = LRPFXAttribution(model)                       # a captum.attr.Attribution
>>> R = attr.attribute(x, target=3)                      # == lrpfx.compile(model).explain(x, 3)
>>> captum.metrics.sensitivity_max(attr.attribute, x, target=3)          # doctest: +SKIP
>>> captum.attr.NoiseTunnel(attr).attribute(x, nt_type="smoothgrad", target=3)  # doctest: +SKIP
>>> quantus.Sparseness()(model=model, x_batch=x_np, y_batch=y_np, a_batch=None,
...                      explain_func=quantus_explain_func)              # doctest: +SKIP

Both compile the model once and reuse the compiled explainer: :class:`LRPFXAttribution` holds
it, :func:`quantus_explain_func` caches one per model (recompiled when the model's parameters are
replaced or changed in place, as Quantus' randomisation metrics do).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import lrpfx

__all__ = ["LRPFXAttribution", "quantus_explain_func"]

try:  # Captum is optional (the "baselines" extra): without it the class is a plain object
    from captum.attr import Attribution as _Attribution
    from captum.log import log_usage as _log_usage
except ImportError:  # pragma: no cover - exercised only where captum is missing
    _Attribution = object  # type: ignore[assignment,misc]

    def _log_usage(*_args: Any, **_kwargs: Any) -> Callable:
        def wrap(fn: Callable) -> Callable:
            import functools

            return functools.wraps(fn)(lambda *a, **k: fn(*a, **k))

        return wrap


def _as_target(target: Any, batch: int) -> int | Tensor | None:
    """Captum's target conventions (int, 0-d or (B,) tensor, list of ints) as lrpfx's."""
    if target is None or isinstance(target, int) and not isinstance(target, bool):
        return target
    if isinstance(target, tuple) or (isinstance(target, list) and target
                                     and isinstance(target[0], tuple)):
        raise ValueError("lrpfx explains class scores of shape (B, C): tuple targets (outputs "
                         "with more dimensions) are not supported")
    t = torch.as_tensor(target)
    if t.is_floating_point() or t.dtype == torch.bool:
        raise TypeError(f"target must hold integer class indices, got {t.dtype}")
    if t.dim() == 0:
        return int(t)
    return t.reshape(-1).long()


class LRPFXAttribution(_Attribution):
    """lrpfx relevance as a Captum :class:`captum.attr.Attribution`.

    Usable wherever Captum takes an attribution object or its ``attribute`` method
    (``NoiseTunnel``, ``captum.metrics.sensitivity_max``, ...). The model is compiled once, here.

    Parameters
    ----------
    model
        The classifier (``(B, ...) -> (B, C)``); never modified.
    rule
        lrpfx rule set (default ``"abslrp"``).
    contrastive
        Default kind of map: the contrastive map (True, scaled to max |R| = 1) or the positive
        map only (False, unit L1). :meth:`attribute` can override it per call.
    strict
        As in :func:`lrpfx.compile`.
    **rule_options
        Options of the rule set (e.g. ``max_pool_divide=True``).
    """

    def __init__(self, model: nn.Module, rule: str = "abslrp", *, contrastive: bool = True,
                 strict: bool = True, **rule_options: Any) -> None:
        super().__init__(model)
        self.forward_func = model  # Captum reads this (NoiseTunnel, metrics)
        self.rule = rule
        self.contrastive = contrastive
        self.explainer = lrpfx.compile(model, rule=rule, strict=strict, **rule_options)

    @property
    def multiplies_by_inputs(self) -> bool:
        """True: LRP relevance is input ⊙ modified gradient (Captum's "global" attribution)."""
        return True

    def has_convergence_delta(self) -> bool:
        """False: absLRP maps are normalised per example, so there is no conservation gap to
        report (Captum's own LRP reports ``Σ R − f(x)``)."""
        return False

    @_log_usage()
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        target: int | Tensor | Sequence[int] | None = None,
        additional_forward_args: Any = None,
        contrastive: bool | None = None,
    ) -> Tensor | tuple[Tensor, ...]:
        """Relevance of ``inputs`` for ``target`` (Captum's ``attribute`` signature).

        Parameters
        ----------
        inputs
            A batch ``(B, ...)``, or a 1-tuple holding it (Captum's tuple form; the result is
            then a 1-tuple too).
        target
            None (the predicted class), an int, a 0-d or ``(B,)`` tensor, or a list of ints.
        additional_forward_args
            Not supported (must be None): the compiled model takes one input.
        contrastive
            Override the instance's default kind of map for this call.

        Returns
        -------
        Tensor or tuple of Tensor
            Same shape (and tuple-ness) as ``inputs``: exactly
            ``lrpfx.compile(model).explain(x, target, contrastive=...)``.
        """
        is_tuple = isinstance(inputs, tuple)
        xs = inputs if is_tuple else (inputs,)
        if len(xs) != 1:
            raise ValueError(f"lrpfx explains models with one input tensor; got {len(xs)}")
        if additional_forward_args is not None:
            raise ValueError("additional_forward_args are not supported by lrpfx's compiled "
                             "model; wrap the model so that it takes one tensor")
        x = xs[0]
        kind = self.contrastive if contrastive is None else contrastive
        r = self.explainer.explain(x.detach(), _as_target(target, len(x)), contrastive=kind)
        return (r,) if is_tuple else r


# ----------------------------------------------------------------------------- Quantus

_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, lrpfx.Explainer]] = \
    weakref.WeakKeyDictionary()


def _fingerprint(model: nn.Module) -> tuple:
    """Changes when a parameter or buffer is replaced or modified in place."""
    return tuple((t.data_ptr(), t._version, t.dtype, t.device)
                 for t in (*model.parameters(), *model.buffers()))


def _cached_explainer(model: nn.Module, rule: str, strict: bool, options: dict[str, Any]
                      ) -> lrpfx.Explainer:
    key = (rule, strict, tuple(sorted(options.items())), _fingerprint(model))
    hit = _CACHE.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    explainer = lrpfx.compile(model, rule=rule, strict=strict, **options)
    _CACHE[model] = (key, explainer)
    return explainer


def quantus_explain_func(
    model: nn.Module,
    inputs: np.ndarray | Tensor,
    targets: np.ndarray | Tensor | int | None,
    **kwargs: Any,
) -> np.ndarray:
    """lrpfx relevance as a Quantus ``explain_func`` (Quantus 0.6 conventions).

    Pass it as ``explain_func=quantus_explain_func`` to any Quantus metric, with options in
    ``explain_func_kwargs``.

    Parameters
    ----------
    model
        The torch classifier Quantus hands over (channel-first inputs).
    inputs
        ``(B, C, ...)`` array or tensor.
    targets
        Class indices ``(B,)`` (or one int).
    **kwargs
        ``rule`` (default ``"abslrp"``), ``contrastive`` (default True), ``strict`` (True),
        ``rule_options`` (dict); Quantus' own ``device``, ``reduce_axes`` (default ``(1,)``:
        sum over channels, like Quantus' Captum explainers), ``keepdims`` (default True). Other
        Quantus keywords (``softmax``, ``method``, ...) are ignored: LRP explains the logits.

    Returns
    -------
    numpy.ndarray
        float32, shape of ``inputs`` with ``reduce_axes`` summed (kept as size 1 when
        ``keepdims``).
    """
    device = kwargs.get("device")
    x = torch.as_tensor(np.asarray(inputs) if not isinstance(inputs, Tensor) else inputs,
                        dtype=torch.float32)
    if device is not None:
        x = x.to(device)
        model = model.to(device)
    else:
        p = next(model.parameters(), None)
        x = x.to(p.device if p is not None else "cpu")
    explainer = _cached_explainer(model, kwargs.get("rule", "abslrp"), kwargs.get("strict", True),
                                  dict(kwargs.get("rule_options", {})))
    if targets is not None and not isinstance(targets, (int, Tensor)):
        targets = torch.as_tensor(np.asarray(targets)).reshape(-1).long()
    r = explainer.explain(x, targets, contrastive=kwargs.get("contrastive", True)).detach()
    axes = tuple(kwargs.get("reduce_axes", (1,)))
    if 0 in axes:
        raise ValueError("reduce_axes must not include the batch axis 0")
    if axes and r.dim() >= 3:
        r = r.sum(dim=axes, keepdim=kwargs.get("keepdims", True))
    return r.float().cpu().numpy()
