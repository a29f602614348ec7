"""Model coverage beyond classification (issue 17): a U-Net built here from ``ConvTranspose2d``
and skip concatenations, torchvision segmentation and video, newer timm families, Hugging Face
segmentation, audio, detection and causal LMs; random init, small inputs, no per-model code.

Per model (``tests/coverage_models.py``): the compiled forward equals the model's, and the maps
are finite, not all zero and change with the target. Models whose output is not ``(B, C)``
class scores are explained through a callable target: a class's logits summed over the pixels
(segmentation), the first query's class logit (detection), the next-token logit at the last
position (causal LMs), for each example's two best-scoring classes. The slow ones
(``coverage_models.BEYOND_SLOW``) run in ``bench/coverage.py --family beyond`` only.
"""

from __future__ import annotations

import coverage_models as cm
import pytest

pytest.importorskip("timm")
pytest.importorskip("transformers")
pytest.importorskip("torchvision")


@pytest.mark.parametrize("case", [c for c in cm.all_cases("beyond") if not c.slow],
                         ids=lambda c: c.id)
def test_model_is_covered(case):
    cm.assert_covered(case)


def test_the_list_is_complete():
    """Every family issue 17 names is in the list (per commit or in the bench)."""
    names = {c.name for c in cm.all_cases("beyond")}
    assert {"unet", "fcn_resnet50", "deeplabv3_resnet50", "lraspp_mobilenet_v3_large", "r3d_18",
            "mvit_v1_b", "swin3d_t", "segformer", "upernet", "wav2vec2", "whisper", "ast",
            "yolos", "t5", "llama_lm", "qwen2_lm", "mistral_lm", "gpt2_lm", "bloom_lm",
            "falcon_lm", "gemma2_lm", "phi3_lm"} <= names
    assert set(cm.TIMM_BEYOND) <= names
    assert cm.BEYOND_SLOW <= names
