"""The model zoo: each model trains quickly, reaches its stated accuracy, is deterministic and
compiles with lrpfx."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

import lrpfx
from lrpfx.data import digits
from lrpfx.data.zoo import ZOO, ZooModel, load_model


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("zoo_cache")


@pytest.fixture(scope="module")
def trained(cache_dir: Path) -> dict[str, tuple[ZooModel, float]]:
    """Train every zoo model once in a private cache (so it really trains), with its CPU time
    (training runs on one thread; CPU time, unlike wall time, does not grow when other
    processes compete for the cores)."""
    out = {}
    for name in ZOO:
        start = time.process_time()
        zm = load_model(name, cache_dir=cache_dir, progress=False)
        out[name] = (zm, time.process_time() - start)
    return out


@pytest.mark.parametrize("name", list(ZOO))
def test_accuracy_and_training_time(trained, name: str) -> None:
    zm, seconds = trained[name]
    assert zm.name == name and len(zm.x_test) == 360
    assert zm.accuracy >= ZOO[name].min_accuracy, (name, zm.accuracy)
    assert seconds < 60, (name, seconds)


@pytest.mark.parametrize("name", list(ZOO))
def test_compiles_and_explains(trained, name: str) -> None:
    zm, _ = trained[name]
    x = zm.x_test[:4]
    explainer = lrpfx.compile(zm.model)
    with torch.no_grad():
        torch.testing.assert_close(explainer(x), zm.model(x), rtol=1e-4, atol=1e-4)
    R = explainer.explain(x)
    assert R.shape == x.shape and torch.isfinite(R).all()
    torch.testing.assert_close(R.flatten(1).abs().amax(1), torch.ones(4))
    assert not explainer.report.unsupported


@pytest.mark.parametrize("name", list(ZOO))
def test_training_is_deterministic(tmp_path: Path, name: str) -> None:
    """Same seed, same weights bit for bit (one epoch, two separate caches); another seed
    differs."""
    a = load_model(name, cache_dir=tmp_path / "a", epochs=1, progress=False)
    b = load_model(name, cache_dir=tmp_path / "b", epochs=1, progress=False)
    c = load_model(name, cache_dir=tmp_path / "c", epochs=1, seed=1, progress=False)
    sa, sb, sc = (m.model.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_cache_is_reloaded_not_retrained(trained, cache_dir: Path, monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("retrained although the weights are cached")

    monkeypatch.setattr(digits, "train_classifier", fail)
    for name in ZOO:
        zm = load_model(name, cache_dir=cache_dir, progress=False)
        ref = trained[name][0]
        assert zm.accuracy == ref.accuracy
        assert all(torch.equal(v, ref.model.state_dict()[k])
                   for k, v in zm.model.state_dict().items())


def test_vit_at_another_size_and_unknown_name(tmp_path: Path) -> None:
    zm = load_model("vit", cache_dir=tmp_path, size=8, epochs=1, progress=False)
    assert zm.x_test.shape[-2:] == (8, 8) and zm.model(zm.x_test[:2]).shape == (2, 10)
    assert [p.name for p in tmp_path.iterdir()] == ["digits_vit8_s8_seed0_e1.pt"]
    with pytest.raises(ValueError, match="unknown zoo model 'nope'"):
        load_model("nope")
