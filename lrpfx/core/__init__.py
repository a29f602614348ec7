"""The engine's front: capture a model, compile it, explain with it, report on it.

- :mod:`~lrpfx.core.capture`: pass 1, model → ``torch.fx`` graph (``torch.export`` or
  ``symbolic_trace``).
- :mod:`~lrpfx.core.ops` and :mod:`~lrpfx.core.spellings`: the canonical op vocabulary every
  pass and rule speaks, and the table from every spelling of an op to it.
- :mod:`~lrpfx.core.graph_cache`: the compile-time snapshot of the model and the graphs compiled
  from it, one per input signature (runs the passes of :mod:`lrpfx.passes`, attaches the rules of
  :mod:`lrpfx.rules`); :mod:`~lrpfx.core.shared_tensors` keeps one copy of each weight and
  derived tensor for all of them.
- :mod:`~lrpfx.core.explainer`: :class:`~lrpfx.core.explainer.Explainer`, the explain / audit
  front; it reads the call's inputs (:mod:`~lrpfx.core.calls`), the targets and output seeds
  (:mod:`~lrpfx.core.targets`), taps inner nodes (:mod:`~lrpfx.core.taps`), runs baseline and
  integral attributions (:mod:`~lrpfx.core.attribution`) and checks inputs and maps
  (:mod:`~lrpfx.core.checks`).
- :mod:`~lrpfx.core.report`: the coverage report (which rule each node gets), as data.
- :mod:`~lrpfx.core.audit`: per-node relevance bookkeeping for a finished backward pass.
"""
