"""Composites: rules assigned by op kind and position, the way LRP practitioners configure them
(Montavon et al. 2019; Kohlbrenner et al. 2020, "Towards best practice in explaining neural
network decisions with LRP"; the names follow Zennit's composites).

>>> rules = lrpfx.rules.composite(default="epsilon", conv="zplus", first="flat", epsilon=0.1)
>>> explainer = lrpfx.compile(model, rule=rules)

Presets, also usable by name (``lrpfx.compile(model, rule="epsilon_plus_flat")``):

=============================  ===============  ==============  ==============
preset                          first layer      convolutions    everything else
=============================  ===============  ==============  ==============
``epsilon_plus``                z⁺               z⁺              ε
``epsilon_plus_flat``           flat             z⁺              ε
``epsilon_alpha2beta1``         α2β1             α2β1            ε
``epsilon_alpha2beta1_flat``    flat             α2β1            ε
=============================  ===============  ==============  ==============
"""

from __future__ import annotations

from functools import partial
from typing import Any

from lrpfx.core import ops
from lrpfx.rules.base import RuleSet
from lrpfx.rules.lrp import LRPFunction
from lrpfx.rules.registry import RULESETS, get_ruleset

_FIRST_ONLY = ("flat", "wsquare")


def composite(
    default: str = "epsilon",
    *,
    first: str | None = None,
    name: str | None = None,
    **assign_and_options: Any,
) -> RuleSet:
    """A rule set that takes each op's rule from another LRP rule set.

    Parameters
    ----------
    default
        Rule set for ops not otherwise assigned (an LRP rule set: ``lrp0``, ``epsilon``,
        ``alphabeta``, ``alpha2beta1``, ``zplus``).
    first
        Rule for first layers (convolutions and dense layers that the input reaches through data
        movement only): ``flat``, ``wsquare`` or any LRP rule set.
    name
        Name shown in reports (default: built from the assignment).
    **assign_and_options
        ``<op kind or canonical op>=<rule set>`` (kinds: see :data:`lrpfx.core.ops.OP_KIND`, e.g.
        ``affine="alphabeta"``, ``conv="zplus"``, ``linear="epsilon"``), and options passed to
        every constituent rule set that has them (``epsilon=0.1``, ``residual="ratio"``).

    Raises
    ------
    ValueError
        Unknown rule set, kind or op, a non-LRP constituent (gradient family, absLRP), or an
        option no constituent has.
    """
    known = set(ops.OP_KIND.values()) | set(ops.OP_KIND)
    assign = {k: v for k, v in assign_and_options.items() if k in known}
    options = {k: v for k, v in assign_and_options.items() if k not in known}
    names = {default, *assign.values(), *([first] if first else [])}
    bases = {n: RULESETS.get(n) for n in names}
    for n, base in bases.items():
        if base is None:
            raise ValueError(f"unknown rule set {n!r}; known: {', '.join(sorted(RULESETS))}")
        if base.seed != "gradient" or base.attribution != "relevance" or any(
                s.function is not LRPFunction for s in base.specs.values()):
            raise ValueError(f"{n!r} is not an LRP rule set; composites combine lrp0, epsilon, "
                             "alphabeta, alpha2beta1, zplus, flat and wsquare")
    for n in (default, *assign.values()):
        if n in _FIRST_ONLY:
            raise ValueError(f"{n!r} is a first-layer rule; pass it as first={n!r}")
    unused = set(options) - {k for b in bases.values() for k in b.options}
    if unused:
        raise ValueError(f"no constituent rule set has option(s) {sorted(unused)}")
    sets = {n: get_ruleset(n, **{k: v for k, v in options.items() if k in b.options})
            for n, b in bases.items()}
    label = name or "+".join([f"first={first}"] * bool(first)
                             + [f"{k}={v}" for k, v in sorted(assign.items())]
                             + [f"default={default}"])
    rs = RuleSet(label, description=f"composite: {label}", seed="gradient",
                 options={k: v for b in bases.values() for k, v in b.options.items()}
                 | options, fold_batch_norm=True)
    for op, kind in ops.OP_KIND.items():
        chosen = sets[assign.get(op, assign.get(kind, default))]
        spec = chosen.specs.get(op)
        if spec is not None:
            rs.specs[op] = spec
            if op in chosen.merge:
                rs.merge[op] = chosen.merge[op]
    if first is not None:
        f = sets[first]
        for op in ("conv", "linear"):
            rs.first[op] = f.first.get(op) or f.specs[op]
    rs.build = partial(_rebuild, default, first, name, assign)
    return rs


def _rebuild(default: str, first: str | None, name: str | None, assign: dict[str, str],
             **options: Any) -> RuleSet:
    return composite(default, first=first, name=name, **assign, **options)


def _preset(name: str, first: str | None, conv: str) -> None:
    RULESETS[name] = composite("epsilon", first=first, conv=conv, name=name)


_preset("epsilon_plus", "zplus", "zplus")
_preset("epsilon_plus_flat", "flat", "zplus")
_preset("epsilon_alpha2beta1", "alpha2beta1", "alpha2beta1")
_preset("epsilon_alpha2beta1_flat", "flat", "alpha2beta1")
