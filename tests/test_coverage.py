"""Model coverage (issue #4), timm and Hugging Face: every model of the list compiles with no
per-model code and explains (random init, small inputs). Per model: the compiled forward equals
the model's, the maps are finite and not all zero, and the contrastive map changes with the
target (``tests/coverage_models.py``; ``bench/coverage.py`` prints the same as a table).

torchvision's models are in ``test_coverage_torchvision_{a,b}.py`` (two files, so that
``pytest --dist loadfile`` spreads them over both workers) and ``test_coverage_slow.py``.
"""

from __future__ import annotations

import coverage_models as cm
import pytest

pytest.importorskip("timm")
pytest.importorskip("transformers")


@pytest.mark.parametrize("case", cm.per_commit("timm") + cm.per_commit("hf"),
                         ids=lambda c: c.id)
def test_model_is_covered(case):
    cm.assert_covered(case)


def test_the_list_is_complete():
    """Every torchvision classification builder is in the list (the slow ones too), and the
    slow names are real builders."""
    torchvision = pytest.importorskip("torchvision")
    builders = set(torchvision.models.list_models(module=torchvision.models))
    listed = {c.name for c in cm.all_cases("torchvision")}
    assert listed == builders
    assert cm.TORCHVISION_SLOW <= builders
    assert {c.name for c in cm.all_cases("timm")} == set(cm.TIMM)
    assert {c.name for c in cm.all_cases("hf")} == {
        "bert", "distilbert", "roberta", "albert", "electra", "deberta_v2", "gpt2", "llama",
        "qwen2", "vit", "deit", "swin", "convnext", "resnet"}
