"""The engine: capture a model, compile it, explain with it, report on it.

- :mod:`~lrpfx.core.capture`: pass 1, model → ``torch.fx`` graph (``torch.export`` or
  ``symbolic_trace``).
- :mod:`~lrpfx.core.ops`: the canonical op vocabulary every pass and rule speaks.
- :mod:`~lrpfx.core.explainer`: :class:`~lrpfx.core.explainer.Explainer`, the compiled model
  (runs the passes of :mod:`lrpfx.passes`, attaches the rules of :mod:`lrpfx.rules`).
- :mod:`~lrpfx.core.report`: the coverage report (which rule each node gets), as data.
- :mod:`~lrpfx.core.audit`: per-node relevance bookkeeping for a finished backward pass.
"""
