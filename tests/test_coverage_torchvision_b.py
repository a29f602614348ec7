"""Model coverage (issue #4): torchvision's classification models, part b of 2 (the list is
split so that ``pytest --dist loadfile`` runs the parts on different workers). See
``tests/test_coverage.py`` for what is checked; the wider/deeper variants are in
``tests/test_coverage_slow.py``."""

from __future__ import annotations

import coverage_models as cm
import pytest

pytest.importorskip("torchvision")


@pytest.mark.parametrize("case", cm.per_commit("torchvision", part=1), ids=lambda c: c.id)
def test_model_is_covered(case):
    cm.assert_covered(case)
