"""The pass that keeps a rule's output instead of its ratio where a reader keeps the output
anyway (``lrpfx.passes.kept_outputs``): same maps, bit for bit, and it marks the attention
projection of a ViT."""

from __future__ import annotations

import pytest
import torch

import lrpfx
from lrpfx.core import graph_cache
from lrpfx.rules.base import RuleCall


def _explainer_run(case_id: str, contrastive: bool = True):
    """A float64 coverage model and a function compiling and explaining it afresh (under
    whatever the test patched), returning the map and the explainer."""
    from tests import coverage_models as cm

    case = next(c for c in cm.all_cases() if c.id == case_id)
    model = cm.build(case).double()
    inputs = case.inputs()
    x = inputs.pop("x", None)

    def run():
        ex = lrpfx.compile(model)
        got = ex.explain(x.double(), contrastive=contrastive) if x is not None \
            else ex.explain(**inputs, contrastive=contrastive)
        return got, ex

    return run


@pytest.mark.parametrize("case_id", ["timm/deit_tiny_patch16_224", "hf/bert"])
def test_keeping_the_output_gives_the_same_maps(case_id, monkeypatch):
    explain = _explainer_run(case_id)

    def run():
        got, ex = explain()
        return got, [c for c in ex.modules() if isinstance(c, RuleCall) and c.keep_output]

    kept, marked = run()
    assert marked and all(c.spec.op == "linear" for c in marked)
    monkeypatch.setattr(graph_cache, "keep_outputs", lambda gm: [])
    plain, unmarked = run()
    assert not unmarked
    torch.testing.assert_close(kept, plain, rtol=0, atol=0)


@pytest.mark.parametrize("case_id", ["timm/deit_tiny_patch16_224", "hf/bert"])
def test_recomputing_a_products_factor_gives_the_same_maps(case_id, monkeypatch):
    """Products of two activations (attention scores; alone, or heading a fused chain with the
    softmax) recompute their ratio or factor per backward pass where it outweighs their
    operands (``RECOMPUTE_ABOVE``): the same maps, bit for bit, as keeping it."""
    from lrpfx.rules import abslrp

    explain = _explainer_run(case_id)
    recomputed = []
    original = abslrp._recomputes

    def spy(head, args, out):
        decided = original(head, args, out)
        recomputed.append(decided)
        return decided

    def run(threshold):
        monkeypatch.setattr(abslrp, "RECOMPUTE_ABOVE", threshold)
        recomputed.clear()
        return explain()[0]

    monkeypatch.setattr(abslrp, "_recomputes", spy)
    always = run(0.0)
    assert any(recomputed)
    never = run(float("inf"))
    assert recomputed and not any(recomputed)
    torch.testing.assert_close(always, never, rtol=0, atol=0)


@pytest.mark.parametrize(("case_id", "ops"), [
    ("timm/deit_tiny_patch16_224", {"layer_norm", "add"}),  # pre-norm: x feeds a norm and an add
    ("hf/bert", {"add"}),  # post-norm: the add's other reader, a projection, keeps x
])
def test_keeping_shared_inputs_gives_the_same_maps(case_id, ops, monkeypatch):
    """Element-wise rules keep a normalised input itself, not ``|x ⊙ F|``, where another reader
    keeps it or several rules read it (``keep_inputs``): the residual stream's layer norms and
    adds in a transformer. The maps agree to rounding (the per-pass sum is taken in another
    order; compared on the positive maps: on random-init transformers the contrastive map is
    the small difference of two nearly equal ones, which magnifies rounding)."""
    explain = _explainer_run(case_id, contrastive=False)

    def run():
        got, ex = explain()
        return got, {c.spec.op for c in ex.modules() if isinstance(c, RuleCall) and c.keep_input}

    shared, marked = run()
    assert marked == ops
    monkeypatch.setattr(graph_cache, "keep_inputs", lambda gm: [])
    weighted, unmarked = run()
    assert not unmarked
    torch.testing.assert_close(shared, weighted, rtol=1e-10, atol=1e-12)
