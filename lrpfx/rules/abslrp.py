"""The absLRP backward (Vukadin et al., ACM TIST 2024, Eq. 12 and Algorithm 1).

For a node ``h = f(x; θ)`` with ``ha = f(|x|; |θ|)`` (DESIGN.md §4.1)::

    s   = R_y / (|h| + EPS)                      (s = R_y for max pooling)
    R_x = x ⊙ VJP_x(h + ha; s),   then   R_x ← R_x / (Σ|R_x| + EPS)   per example, per input

Under the gradient×input contract the rule receives ``G_y`` (so ``R_y = h ⊙ G_y``) and
returns ``G_x = VJP_x(h + ha; s) / (Σ|x ⊙ VJP_x| + EPS)``,
whose product with ``x`` is the normalised ``R_x`` without ever dividing by ``x``. Each op
family supplies ``VJP_x(h + ha; s)`` as a closed form (``linear.py``, ``arithmetic.py``, ...),
through :func:`abs_branch_vjp`, or, for element-wise rules, as a factor ``F`` with
``VJP_x ∝ F ⊙ G_y`` computed once and reused by both backward passes of a contrastive map.

Two exact shortcuts keep the backward close to the cost of a gradient:

- every rule is linear in ``G_y`` and the normalisation only rescales each example by a
  positive number, so along a chain the normalisations cancel: an input is normalised only where
  relevance from several readers is summed (``RuleCall.normalize``, set by the rewrite pass);
  ``explain`` normalises the final map. Positive constant factors (the 2 of ``2 x⁺ s``) are
  dropped for the same reason.
- ``s = R_y / (|h| + EPS) = G_y ⊙ h / (|h| + EPS)``: the ratio is computed once per forward
  and shared by both backward passes.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from lrpfx.rules.base import (
    EPS,
    RuleCall,
    normalised_gradient,
    per_example_dot,
    positive_or_one,
    reduce_to,
)
from lrpfx.rules.registry import RULESETS

ABSLRP = RULESETS["abslrp"]


class AbsLRPFunction(torch.autograd.Function):
    """Forward: the op unchanged. Backward: absLRP for every relevance-carrying input."""

    @staticmethod
    def forward(ctx, call: RuleCall, *inputs: Tensor) -> Tensor:
        ctx.call = call
        if not any(ctx.needs_input_grad[1:]):
            return call.op(**call.arguments(inputs))
        out, extras = _run(call, inputs)
        ctx.recompute = _recomputes(call, inputs, out)
        if ctx.recompute:  # a product whose ratio outweighs its operands: see RECOMPUTE_ABOVE
            ctx.save_for_backward(*inputs)
        else:
            _prepare(ctx, call, inputs, out, extras=extras)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        if not ctx.recompute:
            return _backward(ctx, ctx.saved_tensors, grad)
        replayed = _Replayed(ctx.call, ctx.needs_input_grad)
        with torch.no_grad():
            out, extras = _run(ctx.call, ctx.saved_tensors)
            _prepare(replayed, ctx.call, ctx.saved_tensors, out, extras=extras)
        return _backward(replayed, replayed.saved_tensors, grad)


def _backward(ctx, saved: tuple[Tensor, ...], grad: Tensor) -> tuple:  # noqa: ANN001
    """The backward of :class:`AbsLRPFunction` from what ``_prepare`` saved on ``ctx``."""
    call: RuleCall = ctx.call
    spec = call.spec
    weighted: dict[str, bool] = {}
    if spec.diag is not None:
        n = len(ctx.factor_names)
        factors = dict(zip(ctx.factor_names, saved[:n]))
        names = [k for k in call.relevant if k in call.normalize]
        kept = dict(zip(names, saved[n:]))
        weighted = dict(zip(names, ctx.weighted))
        vjps = {k: reduce_to(grad * f, ctx.shapes[k]) for k, f in factors.items()}
    else:
        n = len(ctx.prepared_names)
        named = dict(zip(ctx.prepared_names, saved[:n]))
        kept = dict(zip([k for k in call.relevant if k in call.normalize], saved[n:-2]))
        scale, out = saved[-2:]
        assert spec.vjp is not None  # a spec without diag has a vjp
        # the ratio computed here where the forward kept the output instead (a reader
        # keeps it anyway: see lrpfx.passes.kept_outputs)
        s = stabilised_ratio(scale).mul_(grad) if ctx.ratio_pending else grad * scale
        vjps = spec.vjp(call, named, s, out)
    # raw VJPs for the plain replay of a residual branch (copied: normalising may work in
    # place, and one tensor must not be handed to autograd twice)
    first_seed = 1 + len(call.relevant) + len(call.runtime)
    seeds = [vjps[k].clone() if ctx.needs_input_grad[first_seed + i] else None
             for i, k in enumerate(call.seeds)]
    grads, abs_grad = [], None
    for name in call.relevant:
        v = vjps[name]
        if weighted.get(name):
            # Σ|x ⊙ F ⊙ G| = Σ |x ⊙ F| ⊙ |G|: one dot product with the weights saved in
            # the forward, |G| shared by the node's inputs; v = G ⊙ F is a fresh tensor
            if abs_grad is None:
                abs_grad = grad.abs()
            v = v.div_(positive_or_one(per_example_dot(kept[name], abs_grad)))
        elif name in call.normalize:
            v = normalised_gradient(v, kept[name], inplace=True, nonneg=name in call.nonneg)
        grads.append(v)
    return (None, *grads, *[None] * len(call.runtime), *seeds)


def _run(call: RuleCall, inputs: tuple[Tensor, ...]) -> tuple[Tensor, dict[str, Tensor]]:
    """The op's output, and what its kernel found on the way that ``prepare`` reads (max
    pooling's winners)."""
    if call.spec.forward_with is not None:
        return call.spec.forward_with(call, call.arguments(inputs))
    return call.op(**call.arguments(inputs)), {}


def _prepare(ctx, call: RuleCall, inputs: tuple[Tensor, ...], out: Tensor,  # noqa: ANN001
             then: Tensor | None = None, scale: Tensor | None = None,
             extras: dict[str, Tensor] | None = None, ratio: Tensor | None = None) -> None:
    """Compute and save what the backward reads. For a node heading a fused chain (see
    :class:`ChainFunction`) the caller passes the tails' factor: ``then`` (element-wise heads,
    multiplied into their factors), ``ratio`` (heads with ``RuleSpec.masks``: ``ratio(out)``
    times the tails' factor) or ``scale`` (other heads: the whole ``s / G``)."""
    spec = call.spec
    named = dict(zip(call.relevant + call.runtime, inputs))
    ctx.shapes = {k: named[k].shape for k in call.relevant}
    # computed once here, shared by both backward passes of a contrastive map; only what
    # the backward reads is kept
    kept = [named[k] for k in call.relevant if k in call.normalize]
    if spec.diag is not None:
        if ratio is not None:
            assert spec.masks is not None  # ratio is passed for heads with masks only
            factors = spec.masks(call, named, ratio)
        else:
            factors = spec.diag(call, named, out)
        if then is not None:
            # diag's factors are new tensors: multiplied in place where the shape allows
            factors = {k: f.mul_(then) if f.shape == then.shape else f * then
                       for k, f in factors.items()}
        ctx.factor_names = tuple(factors)
        # a normalised input x keeps |x ⊙ F| instead of x when no broadcasting is involved (see
        # backward): the same memory, one dot product per pass instead of three passes. Not for
        # x ≥ 0: its sum is the dot product x · |G ⊙ F| already, and x itself is usually kept
        # anyway (a residual stream, also normalised by its other reader), so |x ⊙ F| would be
        # a new tensor and a forward pass for nothing. Nor where x is kept anyway
        # (call.keep_input: another reader keeps it, or several rules would each keep a |x ⊙ F|)
        weights, weighted = [], []
        for k, x in zip([k for k in call.relevant if k in call.normalize], kept):
            f = factors[k]
            ok = f.shape == x.shape == out.shape and x.dim() >= 2 and k not in call.nonneg \
                and k not in call.keep_input
            weights.append((x * f).abs_() if ok else x)
            weighted.append(ok)
        ctx.weighted = tuple(weighted)
        ctx.save_for_backward(*factors.values(), *weights)
    else:
        ctx.ratio_pending = scale is None and spec.divide and call.keep_output
        if scale is None:
            scale = out if not spec.divide or call.keep_output else stabilised_ratio(out)
        # the rule's own per-forward tensors (signs, [B; |B|], ...), by default its inputs
        prepared = (dict(named) if spec.prepare is None
                    else spec.prepare(call, {**named, **(extras or {})}, out))
        ctx.prepared_names = tuple(prepared)
        ctx.save_for_backward(*prepared.values(), *kept, scale, out if spec.needs_out else None)


class ChainFunction(AbsLRPFunction):
    """A rule-bearing node followed by element-wise rules (batch norm, ReLU, dropout, ...)
    whose inputs have no other reader, as one autograd node.

    Element-wise absLRP rules are ``G_x = F ⊙ G_y`` (a factor computed in the forward), so the
    chain's backward is the head's rule applied to ``G_y ⊙ Π F``: exactly the unfused result
    (no normalisation is skipped: a tail input has one reader, where absLRP's normalisation is
    deferred anyway), with one multiplication per backward pass instead of one per op.
    ``chain.head`` is a :class:`RuleCall`, ``chain.tail`` the element-wise ones."""

    @staticmethod
    def forward(ctx, chain, *inputs: Tensor) -> Tensor:  # noqa: ANN001
        ctx.call = chain.head
        return _chain_forward(ctx, chain, inputs, any(ctx.needs_input_grad[1:]))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        extra = (None,) * ctx.tail_runtime  # the tails' masks get no gradient
        if not ctx.recompute:
            return (*_backward(ctx, ctx.saved_tensors, grad), *extra)
        # the factor was not kept: the chain's forward once more, for this pass only
        replayed = _Replayed(ctx.call, ctx.needs_input_grad)
        with torch.no_grad():
            _chain_forward(replayed, ctx.chain, ctx.saved_tensors, True, recompute=False)
        return (*_backward(replayed, replayed.saved_tensors, grad), *extra)


class _Replayed:
    """Stands in for an autograd context when a chain's forward runs again in its backward."""

    def __init__(self, call: RuleCall, needs_input_grad: tuple[bool, ...]) -> None:
        self.call, self.needs_input_grad = call, needs_input_grad
        self.saved_tensors: tuple[Tensor, ...] = ()

    def save_for_backward(self, *tensors: Tensor | None) -> None:
        self.saved_tensors = tensors  # type: ignore[assignment]


RECOMPUTE_ABOVE = 1.0
"""A product of two activations (alone or heading a fused chain) recomputes its ratio or its
chain's factor in each backward pass, from its operands (which it keeps anyway), instead of
keeping it, where that has more than this many times the elements of the operands: attention
scores, L × L per head from L × d, once L exceeds twice the head width. It costs the product and
the factor once more per pass. ViT-B at 224 px (L / 2d = 1.5): 85 MiB less at batch 4 for
under 1 % more time (one process, 2.0 and 1.0 alternating; 2.0 kept them)."""


def _recomputes(head: RuleCall, inputs: tuple[Tensor, ...], out: Tensor) -> bool:
    return len(head.relevant) == 2 and head.spec.diag is None and head.spec.prepare is None \
        and out.numel() > RECOMPUTE_ABOVE * sum(t.numel() for t in inputs)


def _chain_forward(ctx, chain, inputs: tuple[Tensor, ...], grad: bool,  # noqa: ANN001
                   recompute: bool = True) -> Tensor:
    """The chain's output; with ``grad``, what its backward reads is saved on ``ctx`` (or, where
    the factor would outweigh the head's operands, the operands, to recompute it from)."""
    head = chain.head
    every = inputs
    arity = len(inputs) if chain.head_arity is None else chain.head_arity
    inputs, runtime = inputs[:arity], list(inputs[arity:])
    ctx.tail_runtime = len(runtime)
    out, extras = _run(head, inputs) if grad else (head.op(**head.arguments(inputs)), {})
    ctx.recompute = grad and recompute and _recomputes(head, inputs, out)
    if ctx.recompute:
        ctx.chain = chain
        ctx.save_for_backward(*every)
        grad = False
    factor = None
    if grad:  # one running factor, updated op by op; an element-wise head's own factors
        # hold its ratio, so for it the tails' product starts empty, unless the head takes
        # its ratio from the chain (RuleSpec.masks): then ratio(out) is left pending, and a
        # following ReLU computes ratio(relu(out))² instead of two ratios
        if head.spec.masks is not None:
            factor = RunningFactor(None, pending=out)
        elif head.spec.diag is not None:
            factor = RunningFactor(None)
        else:
            factor = RunningFactor(stabilised_ratio(out) if head.spec.divide else out.clone())
    y = out
    for t in chain.tail:
        own = tuple(runtime.pop(0) for _ in t.runtime)
        x, y = y, t.op(**t.arguments((y, *own)))
        if factor is not None:
            factor.through(t, x, y, own)
    if factor is not None:
        if head.spec.masks is not None:
            _prepare(ctx, head, inputs, out, ratio=factor.materialize(), extras=extras)
        elif head.spec.diag is not None:
            _prepare(ctx, head, inputs, out, then=factor.materialize(), extras=extras)
        else:
            _prepare(ctx, head, inputs, out, scale=factor.materialize(), extras=extras)
    return y


class RunningFactor:
    """The factor ``F`` with ``s_head = F ⊙ G_chain_out`` of a fused chain, built op by op in the
    forward: ``F = ratio(y₀) ⊙ Π diag_k`` (``ratio(y) = y / (|y| + EPS)``, each element-wise
    rule's ``diag`` holding its ``D_k(x) ⊙ ratio(y_k)``).

    Element-wise rules may supply ``RuleSpec.through(call, x, y, factor)`` to update it more
    cheaply than ``F ⊙ diag``, using two exact facts:

    - ``aligned``: ``F = ratio(x) ⊙ Q`` with ``Q ≥ 0``. True at a head that is not element-wise
      and at one whose ratio is pending (an empty factor, ``value`` None with nothing pending,
      is not aligned); kept by batch norm and ReLU; lost after any other rule. Then batch norm's
      ``F ⊙ a [x a > 0]`` is ``(F ⊙ a)⁺``.
    - ``pending``: a tensor ``y`` whose ``ratio(y)`` is still owed to ``F`` (batch norm leaves
      its own, an add head its output's; a following ReLU needs
      ``ratio(y) ⊙ ratio(relu(y)) = ratio(relu(y))²``, so it never computes ``ratio(y)``).
      :meth:`materialize` pays what is owed. ``value`` None with ``y`` pending means
      ``F = ratio(y)``.
    """

    def __init__(self, value: Tensor | None, pending: Tensor | None = None) -> None:
        self.value, self.pending = value, pending
        self.aligned = value is not None or pending is not None

    def materialize(self) -> Tensor | None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            self.multiply(stabilised_ratio(pending))
        return self.value

    def multiply(self, f: Tensor) -> None:
        """``F ← F ⊙ f``, after what is pending (``f`` a fresh tensor: it becomes ``F`` when ``F``
        is empty)."""
        value = self.materialize()
        self.value = f if value is None else value.mul_(f)

    def through(self, call: RuleCall, x: Tensor, y: Tensor, runtime: tuple[Tensor, ...] = ()
                ) -> None:
        if call.spec.through is not None and not runtime:
            call.spec.through(call, x, y, self)
            return
        assert call.spec.diag is not None  # chain tails are element-wise rules
        inputs = {"input": x, **dict(zip(call.runtime, runtime))}
        self.multiply(call.spec.diag(call, inputs, y)["input"])
        self.aligned = False


def stabilised_ratio(out: Tensor, nonneg: bool = False) -> Tensor:
    """``h / (|h| + EPS)``: with it ``s = R_y / (|h| + EPS) = G_y ⊙ h / (|h| + EPS)``.

    One new tensor, filled in place (large allocations cost as much as a pass on CPU)."""
    r = out + EPS if nonneg else out.abs().add_(EPS)
    return torch.div(out, r, out=r)


def keep_positive(t: Tensor, x: Tensor, inplace: bool = False) -> Tensor:
    """``t ⊙ [x > 0]`` in one pass, with no mask tensor (the kernel of ReLU's backward); ``x``
    broadcasts to ``t``'s shape. ``inplace``: ``t`` is a temporary, overwritten.

    (``torch.where`` and ``masked_fill`` take a slow path on CPU, and a mask built from
    ``sign`` costs two more passes and an allocation: this is 3-5x faster than either.)"""
    if x.dtype != t.dtype:  # the kernel reads both as one dtype (mixed ones give zeros)
        x = x.to(t.dtype)
    if inplace:
        return torch.ops.aten.threshold_backward.grad_input(t, x, 0, grad_input=t)
    return torch.ops.aten.threshold_backward(t, x, 0)


def abs_branch_vjp(call: RuleCall, inputs: dict[str, Tensor], s: Tensor, out: Tensor
) -> dict[str, Tensor]:
    """``VJP_x(f(x; θ) + f(|x|; |θ|); s)`` by local autograd: the formula itself, for ops with
    no cheaper closed form (non-linear activations, max pooling, ...)."""
    with torch.enable_grad():
        leaves = {k: inputs[k].detach().requires_grad_(True) for k in call.relevant}
        runtime = {k: inputs[k] for k in call.runtime}  # masks: used as they are, not |·|
        h = call.op(**call.arguments({**leaves, **runtime}))
        abs_args = call.arguments({**{k: v.abs() for k, v in leaves.items()}, **runtime})
        for k in call.constant_names:
            if abs_args[k] is not None:
                abs_args[k] = abs_args[k].abs()
        ha = call.op(**abs_args)
        grads = torch.autograd.grad(h + ha, list(leaves.values()), s)
    return dict(zip(leaves, grads))
