"""Rule sets by name. Each op-family file in :mod:`lrpfx.rules` registers its specs on the base
rule sets here; :func:`get_ruleset` builds a rule set with options."""

from __future__ import annotations

from dataclasses import replace
from numbers import Integral, Real
from typing import Any

from lrpfx.rules.base import RuleSet, RuleSpec

RULESETS: dict[str, RuleSet] = {
    "abslrp": RuleSet(
        "abslrp",
        description="Relative absolute magnitude LRP (Vukadin et al., ACM TIST 2024), "
        "reference semantics of DESIGN.md §4.2",
        options={"max_pool_divide": False, "mask_negative_logits": False,
                 "merge_total_derivative": "attention"},
    ),
}
"""Base rule sets, with their options' defaults."""


def get_ruleset(name: str | RuleSet, **options: Any) -> RuleSet:
    """The rule set called ``name``, with ``options`` applied.

    Options of ``"abslrp"`` (the first two reproduce quirks of the paper's reference code and
    are off by default):

    - ``max_pool_divide``: max pooling divides by ``|h|`` like every other op (the reference's
      timm ResNet rules do; its VGG rules do not, which is the default here, DESIGN.md §4.1).
    - ``mask_negative_logits``: the output relevance is passed through the absLRP identity rule
      first, so only classes with a positive logit keep their seed (the reference's timm VGG head
      ends in an ``nn.Identity`` that has this effect).
    - ``merge_total_derivative``: at a residual merge the skip operand takes autograd's total
      derivative, which also runs through the branch (the reference computes every module's VJP
      with ``torch.autograd.grad`` on the live graph). ``"attention"`` (the default): only at
      merges whose branch contains attention, where the op-local rule loses the contrastive map
      (docs/transformers.md); CNNs are unaffected. ``True``: at every merge, as the reference
      code (its ViT golden needs this). ``False``: the op-local rule of DESIGN.md §4.2
      everywhere. See :mod:`lrpfx.passes.merge_gradient`.

    Each option's value must have its default's kind: ``True``/``False`` where the default is a
    bool (``max_pool_divide="no"`` would otherwise read as true), an integer where it is an
    int, a real number where it is a float; other options are checked by the rule set.

    Raises
    ------
    ValueError
        Unknown rule set or option.
    TypeError
        An option value of the wrong kind.
    """
    import lrpfx.rules  # noqa: F401  (registers every op family)

    if isinstance(name, RuleSet):
        base = name
    else:
        try:
            base = RULESETS[name]
        except KeyError:
            raise ValueError(
                f"unknown rule set {name!r}; known: {', '.join(sorted(RULESETS))}"
            ) from None
    unknown = set(options) - set(base.options)
    if unknown:
        raise ValueError(f"rule set {base.name!r} has no option(s) {sorted(unknown)}; "
                         f"options: {sorted(base.options)}")
    for key, value in options.items():
        check_option(base.name, key, value, base.options[key])
    if not options:
        return base
    if base.build is not None:
        return base.build(**options)
    merged = {**base.options, **options}
    if base.validate is not None:
        base.validate(merged)

    def configured(specs: dict[str, RuleSpec]) -> dict[str, RuleSpec]:
        return {op: spec.configure(spec, merged) if spec.configure else spec
                for op, spec in specs.items()}

    return replace(base, specs=configured(base.specs), first=configured(base.first),
                   merge=configured(base.merge), options=merged)


CHOICES: dict[str, tuple[Any, ...]] = {"merge_total_derivative": (False, "attention", True)}
"""Options that take one of a few values rather than a value of their default's kind."""


def check_option(ruleset: str, key: str, value: Any, default: Any) -> None:
    """Raise TypeError unless ``value`` is of the kind of the option's ``default`` (bool, int,
    real; no check for other defaults such as None), or one of its :data:`CHOICES`."""
    if key in CHOICES:
        # identity for the bools: 1 == True, and "no" must not pass as a choice
        if not any(value is c or (isinstance(c, str) and value == c) for c in CHOICES[key]):
            raise TypeError(f"option {key!r} of rule set {ruleset!r} must be one of "
                            f"{', '.join(map(repr, CHOICES[key]))}; got {value!r}")
        return
    if isinstance(default, bool):
        ok, kind = isinstance(value, bool), "True or False"
    elif isinstance(default, Integral):
        ok, kind = isinstance(value, Integral) and not isinstance(value, bool), "an integer"
    elif isinstance(default, Real):
        ok, kind = isinstance(value, Real) and not isinstance(value, bool), "a number"
    else:
        return
    if not ok:
        raise TypeError(f"option {key!r} of rule set {ruleset!r} must be {kind}, "
                        f"got {value!r}")
