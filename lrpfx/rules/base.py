"""What every rule shares: the rule spec, the per-node call module, the stabiliser and the
per-example normalisation.

A rule is data: a :class:`RuleSpec` says, for one canonical op, which arguments may receive
relevance, which derived parameters to precompute at compile time, and how to map the upstream
signal to each input. The spec's ``function`` (one ``torch.autograd.Function`` per rule family)
turns that into a backward pass under the gradient×input contract (DESIGN.md §3): autograd
delivers ``G_y`` for the op's output ``y``, the rule returns ``G_x`` with ``x ⊙ G_x = R_x``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

EPS: float = 1e-9
"""The stabiliser of the reference implementation: in ``R / (|z| + EPS)`` and in the unit-L1
normalisation ``R / (Σ|R| + EPS)``."""


def per_example_l1(t: Tensor, scratch: bool = False) -> Tensor:
    """``Σ|t|`` over all dimensions but the first (the batch), shaped to broadcast against ``t``.
    ``scratch``: ``t`` is a temporary the caller no longer needs (its ``|t|`` is taken in place)."""
    if t.dim() <= 1:
        return t.abs().sum().reshape([1] * t.dim())
    # |t| then a flat sum: about 3x faster on CPU than linalg.vector_norm(t, 1), temporary and
    # all
    total = (t.abs_() if scratch else t.abs()).reshape(t.shape[0], -1).sum(1)
    return total.reshape(-1, *[1] * (t.dim() - 1))


def unit_l1(t: Tensor) -> Tensor:
    """Scale each example of ``t`` to ``Σ|t| = 1`` (the reference's ``SUM_TO_ONE``).

    Scale-invariant (all-zero examples stay zero): the reference adds ``EPS`` to ``Σ|t|``, which
    at its unit scale is a relative 1e-9; lrpfx skips normalisations that cancel, so its
    magnitudes are not at unit scale and a fixed ``EPS`` would not be negligible."""
    return t / safe_l1(t)


def safe_l1(t: Tensor) -> Tensor:
    """:func:`per_example_l1`, with 1 where it is 0."""
    return positive_or_one(per_example_l1(t))


def normalised_gradient(g: Tensor, x: Tensor, inplace: bool = False, nonneg: bool = False
                        ) -> Tensor:
    """``g / Σ|x ⊙ g|`` per example: the ``G`` whose relevance ``x ⊙ G`` has unit L1 (an
    all-zero example stays zero). ``inplace``: ``g`` is a temporary the caller hands over, divided
    in place (one large allocation fewer) where its memory allows (contiguous: no element
    shared by two positions, as in an expanded view). ``nonneg``: ``x ≥ 0`` is known, so the sum
    is the dot product ``x · |g|`` (one pass fewer)."""
    if nonneg and g.dim() >= 2 and g.shape == x.shape:
        total = per_example_dot(x, g.abs())
    else:
        total = per_example_l1(torch.mul(x, g), scratch=True)
    total = positive_or_one(total)
    return g.div_(total) if inplace and g.is_contiguous() else g / total


def per_example_dot(a: Tensor, b: Tensor) -> Tensor:
    """``Σ a ⊙ b`` over all dimensions but the first (the batch), shaped to broadcast against
    ``a`` (like :func:`per_example_l1`).

    One BLAS dot product per example: ``linalg.vecdot`` multiplies into a temporary first, about
    1.6x slower on CPU at ResNet sizes. Past a few dozen examples the Python loop would cost
    more than the temporary."""
    shape = (-1, *[1] * (a.dim() - 1))
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    if not 0 < a.shape[0] <= 32:
        return torch.linalg.vecdot(a, b).reshape(shape)
    return torch.stack([torch.dot(u, v) for u, v in zip(a, b)]).reshape(shape)


def positive_or_one(total: Tensor) -> Tensor:
    """``total`` with its zeros replaced by 1 (an all-zero example stays zero when divided)."""
    return torch.where(total > 0, total, torch.ones_like(total))


def unit_max(t: Tensor) -> Tensor:
    """Scale each example of ``t`` to ``max|t| = 1`` (the reference's ``MAX_TO_ONE``)."""
    if t.dim() <= 1:
        return t / (t.abs().max() + EPS)
    m = t.abs().reshape(t.shape[0], -1).amax(1).reshape(-1, *[1] * (t.dim() - 1))
    return t / (m + EPS)


def reduce_to(t: Tensor, like: Tensor | torch.Size) -> Tensor:
    """Undo broadcasting: sum ``t`` down to ``like``'s shape (or to the shape ``like``)."""
    shape = like if isinstance(like, torch.Size) else like.shape
    return t if t.shape == shape else t.sum_to_size(shape)


@dataclass(frozen=True)
class PlainVJP:
    """An op's plain VJP (:attr:`RuleSpec.plain`'s, statistics held constant) as a closed form.

    Attributes
    ----------
    reads
        The forward values the VJP reads: argument names of the op and ``"out"`` (its output).
    vjp
        ``vjp(call, values, g) -> {name: grad}`` for every relevant input, ``values`` holding
        ``reads`` by name (constants come from ``call``).
    """

    reads: tuple[str, ...]
    vjp: Callable[[RuleCall, dict[str, Tensor], Tensor], dict[str, Tensor]]


@dataclass(frozen=True)
class RuleSpec:
    """How one canonical op propagates relevance under one rule set.

    Attributes
    ----------
    op
        Canonical op name (a key of :data:`lrpfx.core.ops.CANONICAL_OPS`).
    function
        The ``torch.autograd.Function`` of the rule family; called as
        ``function.apply(call, *relevant_inputs)``.
    vjp
        ``vjp(call, inputs, s, out) -> {name: tensor}``: the family's backward map for each input in
        ``call.relevant`` (for absLRP, ``VJP_x(h + ha; s)``); ``inputs`` holds every runtime
        tensor argument by name (relevant ones and ``call.runtime`` ones), ``out`` is the op's
        forward output. Each returned tensor must be new (it may be ``s`` itself, a temporary,
        but not a saved tensor, nor one returned for another input): the backward normalises
        them in place.
    relevance_args
        Arguments that may carry relevance; an op whose other tensor arguments depend on the
        model input is reported unsupported (e.g. a convolution with a computed weight).
    derive
        ``derive(call) -> {name: tensor}``, run once at compile time (|W|, W⁺, BN scale).
    divide
        absLRP only: ``s = R_y / (|y| + EPS)`` when true, ``s = R_y`` when false (max pooling).
    """

    op: str
    function: type[Any]
    vjp: Callable[[RuleCall, dict[str, Tensor], Tensor, Tensor], dict[str, Tensor]] | None
    relevance_args: tuple[str, ...] = ("input",)
    derive: Callable[[RuleCall], dict[str, Tensor]] | None = None
    divide: bool = True
    needs_out: bool = False
    """``vjp`` reads the op's output (softmax); otherwise it is not kept for the backward."""
    name: str = ""
    """Human-readable rule name for reports (default: the rule set's name)."""
    diag: Callable[[RuleCall, dict[str, Tensor], Tensor], dict[str, Tensor]] | None = None
    """Element-wise rules: ``diag(call, inputs, out) -> {name: F}`` with
    ``VJP_name(h + ha; s) ∝ F ⊙ G_y`` (positive per-example factors dropped). Computed once per
    forward and shared by the backward passes; replaces ``vjp`` and ``divide``. Each ``F`` must be
    a new tensor, not shared with another input's (a fused chain multiplies it in place)."""
    prepare: Callable[[RuleCall, dict[str, Tensor], Tensor], dict[str, Tensor]] | None = None
    """``prepare(call, inputs, out) -> {name: tensor}``, run once per forward: what ``vjp`` reads
    (it then receives this dict instead of the inputs). Lets a rule compute ``sign(x)`` or
    ``[B; |B|]`` once for both backward passes of a contrastive map and keep only that."""
    forward_with: Callable[[RuleCall, dict[str, Any]], tuple[Tensor, dict[str, Tensor]]] | None \
        = None
    """``forward_with(call, arguments) -> (out, extras)``: the op's output computed together with
    tensors ``prepare`` reads (found in its inputs dict), e.g. max pooling's winners."""
    masks: Callable[[RuleCall, dict[str, Tensor], Tensor], dict[str, Tensor]] | None = None
    """Element-wise rules whose factors are ``ratio(y) ⊙ M_k`` (add, sub):
    ``masks(call, inputs, r) -> {name: r ⊙ M_k}`` for a given ``r``, a new tensor it may
    overwrite. At the head of a fused chain ``r`` is ``ratio(y)`` times the tails' factor,
    computed by the chain (after a ReLU: ``ratio(relu(y))²``, one ratio instead of two)."""
    through: Callable[..., None] | None = None
    """Element-wise rules in a fused chain: ``through(call, x, y, factor)`` multiplies the
    chain's :class:`lrpfx.rules.abslrp.RunningFactor` by this rule's ``diag``, more cheaply
    (default: ``factor ⊙ diag``)."""
    plain: Callable[[RuleCall, dict[str, Any]], Tensor] | None = None
    """``plain(call, arguments) -> out``: the op as a differentiable function with its statistics
    held constant (layer norm's mean and variance, softmax's max and sum), as the reference's
    rewritten forward computes it: the Jacobian that the absLRP option
    ``merge_total_derivative`` carries through residual branches. None: the op itself."""
    plain_vjp: PlainVJP | None = None
    """The transposed Jacobian of ``plain`` in closed form, from forward values the graph already
    holds: the total derivative's replay then recomputes nothing and keeps nothing new
    (:mod:`lrpfx.passes.merge_gradient`). None: the replay recomputes the op with autograd."""
    configure: Callable[[RuleSpec, dict[str, Any]], RuleSpec] | None = None
    """Applies the rule set's options to this spec (see :func:`lrpfx.rules.get_ruleset`)."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """The rule set's options (ε, α, β, ...), for rules that read them."""
    returns_relevance: bool = False
    """The backward returns ``R_x`` itself, not ``G_x`` (flat and w² rules, whose relevance has
    no factor ``x``); allowed at first layers only, where the explainer reads the input's
    "gradient" as relevance."""


class RuleCall(nn.Module):
    """One rewritten graph node: the canonical op, its constants and derived parameters, and the
    rule to run in backward. Its ``forward`` takes the inputs that carry relevance, then the
    ``runtime`` tensors that depend on other model inputs (attention masks) and get none.

    Constants are stored as buffers (cloned from the model: the compiled module never aliases
    the user's tensors), derived parameters are computed once here, at compile time.
    """

    def __init__(
        self,
        spec: RuleSpec,
        op: Callable[..., Tensor],
        arguments: Mapping[str, Any],
        relevant: tuple[str, ...],
        constants: Mapping[str, Tensor | None],
        nonneg: frozenset[str],
        node: str = "",
        source: str = "",
        runtime: tuple[str, ...] = (),
        normalize: frozenset[str] | None = None,
    ) -> None:
        super().__init__()
        # inputs whose relevance is summed with other contributions: only these need the
        # per-example normalisation (see lrpfx.rules.abslrp); None means all
        self.normalize = frozenset(relevant) if normalize is None else normalize
        # inputs whose backward returns relevance, not gradient (first layers of a graph whose
        # input relevance is read directly, see RuleSpec.returns_relevance)
        self.as_relevance: frozenset[str] = frozenset()
        # inputs whose raw VJP is also returned to an extra trailing input (the plain replay of
        # a residual branch, see lrpfx.passes.merge_gradient)
        self.seeds: tuple[str, ...] = ()
        # the forward keeps the output, not the ratio y/(|y|+ε) (a reader keeps the output
        # anyway; see lrpfx.passes.kept_outputs)
        self.keep_output = False
        # normalised inputs an element-wise rule keeps as they are, not as |x ⊙ F|: another
        # reader keeps them anyway, or several such rules share them (lrpfx.passes.kept_outputs)
        self.keep_input: frozenset[str] = frozenset()
        self.spec = spec
        self.op = op
        self.relevant = relevant
        self.runtime = runtime
        self.static = {k: v for k, v in arguments.items() if k not in relevant and
                       k not in constants and k not in runtime}
        self.nonneg = nonneg
        self.node_name = node
        self.source = source
        self._none_constants = [k for k, v in constants.items() if v is None]
        self.constant_names = tuple(constants)
        for k, v in constants.items():
            if v is not None:
                self.register_buffer(k, v.detach().clone())
        self.derived_names: tuple[str, ...] = ()
        if spec.derive is not None:
            derived = spec.derive(self)
            for k, v in derived.items():
                self.register_buffer(f"derived_{k}", v.detach())
            self.derived_names = tuple(derived)

    def constant(self, name: str) -> Tensor | None:
        """A constant argument (weight, bias, ...) or None."""
        return None if name in self._none_constants else getattr(self, name)

    def derived(self, name: str) -> Tensor:
        """A parameter derived at compile time (``abs_weight``, ``pos_weight``, ...)."""
        return getattr(self, f"derived_{name}")

    def arguments(self, inputs: tuple[Tensor, ...] | dict[str, Tensor]) -> dict[str, Any]:
        """The op's full keyword arguments, given the inputs (relevant, then runtime)."""
        if not isinstance(inputs, dict):
            inputs = dict(zip(self.relevant + self.runtime, inputs))
        args = dict(self.static)
        args.update({k: self.constant(k) for k in self.constant_names})
        args.update(inputs)
        return args

    def forward(self, *inputs: Tensor) -> Tensor:
        return self.spec.function.apply(self, *inputs)

    def extra_repr(self) -> str:
        return f"op={self.spec.op}, rule={self.spec.name}, relevant={self.relevant}, " \
               f"source={self.source!r}"


@dataclass
class RuleSet:
    """A named mapping from canonical op to :class:`RuleSpec`, plus how the explainer seeds and
    reads the backward pass for this rule set.

    Attributes
    ----------
    seed
        ``"relevance"``: the output relevance is the (unit) seed itself, ``G_out = seed / out``
        (absLRP). ``"gradient"``: the output gradient is the seed, so ``R_out = out ⊙ seed``
        (classic LRP starts from the logit ``f_c(x)``; the gradient family is a gradient).
    attribution
        How the map is read at the input: ``"relevance"`` (``x ⊙ G_x``), ``"gradient"``
        (``G_x``), ``"baseline"`` (DeepLIFT: the graph runs on ``[x; x̄]``, map
        ``(x − x̄) ⊙ G_x``), ``"integral"`` (integrated gradients along ``x̄ → x``).
    first, merge
        Specs that replace ``specs`` at first layers (rule-bearing nodes the explained input
        reaches through data movement only) and at residual merges (``add`` of two activations).
    """

    name: str
    specs: dict[str, RuleSpec] = field(default_factory=dict)
    description: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    seed: str = "relevance"
    attribution: str = "relevance"
    first: dict[str, RuleSpec] = field(default_factory=dict)
    merge: dict[str, RuleSpec] = field(default_factory=dict)
    validate: Callable[[dict[str, Any]], None] | None = None
    """Checks option values (raises ``ValueError``)."""
    build: Callable[..., RuleSet] | None = None
    """Builds the rule set anew from options (composites, whose options go to constituents)."""
    fold_batch_norm: bool = False
    """Fold eval batch norm into the conv/linear before it before rules are attached (LRP
    practice, Zennit's canonizers; :mod:`lrpfx.passes.fold_batchnorm`). False for absLRP, whose
    reference gives batch norm its own rule, and for the gradient family (folding changes
    nothing there)."""

    def register(self, spec: RuleSpec) -> RuleSpec:
        if spec.op in self.specs:
            raise ValueError(f"rule set {self.name!r} already has a rule for {spec.op!r}")
        if not spec.name:
            object.__setattr__(spec, "name", self.name)
        self.specs[spec.op] = spec
        return spec

    def get(self, op: str) -> RuleSpec | None:
        return self.specs.get(op)

    def select(self, op: str, *, first: bool = False, merge: bool = False) -> RuleSpec | None:
        """The spec for ``op`` at a node in the given position (first layer, residual merge)."""
        if first and op in self.first:
            return self.first[op]
        if merge and op in self.merge:
            return self.merge[op]
        return self.specs.get(op)
