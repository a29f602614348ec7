"""Heatmap rendering: colours follow the map's sign, scales are as documented, and the saved
PNGs show each map where the figure says it is."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")
from PIL import Image  # noqa: E402

from lrpfx.apps.viz import (  # noqa: E402
    PANELS_KEY,
    heatmap_rgb,
    normalise_maps,
    overlay,
    read_panel,
    save_explanation,
    save_grid,
)


def _ramp() -> np.ndarray:
    """A signed 12×12 map: positive on the left half, negative on the right, varying
    magnitude, one zero column."""
    m = np.zeros((12, 12))
    m[:, :6] = np.linspace(0.2, 1.0, 6)
    m[:, 7:] = -np.linspace(0.1, 0.5, 5)
    m[::2] *= 0.5
    return m


def test_colours_follow_sign_and_magnitude() -> None:
    h = np.array([[-1.0, -0.5, 0.0, 0.5, 1.0]])
    rgb = heatmap_rgb(h)
    np.testing.assert_allclose(rgb[0, 2], [1, 1, 1], atol=0.01)  # white at zero
    np.testing.assert_allclose(rgb[0, 4], [1, 0, 0], atol=0.01)  # red at +1
    np.testing.assert_allclose(rgb[0, 0], [0, 0, 1], atol=0.01)  # blue at -1
    assert rgb[0, 3, 0] > rgb[0, 3, 2] and rgb[0, 1, 2] > rgb[0, 1, 0]
    # the stronger the relevance, the more saturated
    assert rgb[0, 4, 1] < rgb[0, 3, 1] < rgb[0, 2, 1]
    pos = heatmap_rgb(h, positive_only=True)
    np.testing.assert_allclose(pos[0, :3], np.ones((3, 3)), atol=0.01)  # negatives dropped
    np.testing.assert_allclose(pos[0, 3:], rgb[0, 3:])  # the same colours for positives


def test_normalise_maps_scales() -> None:
    maps = torch.zeros(2, 3, 2, 2)
    maps[0, 0, 0, 0], maps[0, 1, 0, 0], maps[0, 2, 1, 1] = 1.0, 1.0, -4.0
    maps[1, 0, 0, 1] = 0.5
    own = normalise_maps(maps)
    assert own.shape == (2, 2, 2)
    assert own[0, 1, 1] == -1.0 and own[0, 0, 0] == 0.5 and own[1, 0, 1] == 1.0
    shared = normalise_maps(maps, shared_scale=True)
    assert shared[0, 1, 1] == -1.0 and shared[1, 0, 1] == 0.125  # one scale: 0.5 / 4
    pos = normalise_maps(maps, positive_only=True)
    assert pos[0, 1, 1] == 0.0 and pos[0, 0, 0] == 1.0  # the peak is the largest positive
    assert (normalise_maps(np.zeros((1, 3, 3))) == 0).all()
    nan = np.full((1, 2, 2), np.nan)
    assert (normalise_maps(nan) == 0).all()


def test_overlay_blends_on_grey() -> None:
    image = np.zeros((4, 4, 3))
    image[..., 0] = 1.0  # a pure red picture must not look like relevance
    r = np.zeros((4, 4))
    r[0, 0], r[1, 1] = 2.0, -1.0
    out = overlay(image, r)
    assert out.shape == (4, 4, 3) and out.min() >= 0 and out.max() <= 1
    grey = out[3, 3]
    assert np.ptp(grey) < 1e-9  # R = 0: a grey pixel (equal channels)
    assert out[0, 0, 0] > 0.9 and out[0, 0, 2] < 0.2  # strongest positive: red
    assert out[1, 1, 2] > out[1, 1, 0] + 0.2  # negative: blue
    # sign rule, everywhere: red above blue exactly where R > 0
    rng = np.random.default_rng(0)
    r = rng.normal(size=(8, 8))
    out = overlay(rng.uniform(size=(8, 8)), r)
    assert ((out[..., 0] > out[..., 2]) == (r > 0)).all()
    with pytest.raises(ValueError, match="relevance map"):
        overlay(np.zeros((4, 4)), np.zeros((5, 5)))


@pytest.mark.parametrize("positive_only", [False, True])
def test_saved_explanation_pixels_match_the_map(tmp_path: Path, positive_only: bool) -> None:
    m = _ramp()
    image = np.random.default_rng(0).uniform(size=(12, 12, 3))
    path = save_explanation(image, [m[None], -2 * m[None]], tmp_path / "e.png",
                            titles=["a", "b"], positive_only=positive_only)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    boxes = json.loads(Image.open(path).text[PANELS_KEY])
    assert set(boxes) == {"input", "heatmap:0", "overlay:0", "heatmap:1", "overlay:1"}
    for k, sign in ((0, 1.0), (1, -1.0)):
        expected_map = np.clip(sign * m, 0, None) if positive_only else sign * m
        expected = heatmap_rgb(expected_map / np.abs(expected_map).max(),
                               positive_only=positive_only)
        got = read_panel(path, f"heatmap:{k}", m.shape)
        np.testing.assert_allclose(got, expected, atol=2 / 255)
        red = got[..., 0] - got[..., 2]
        truth = sign * m
        assert (red[truth > 0] > 0.05).all()
        if positive_only:
            np.testing.assert_allclose(got[truth <= 0], 1.0, atol=2 / 255)  # white
        else:
            assert (red[truth < 0] < -0.05).all()
        over = read_panel(path, f"overlay:{k}", m.shape)
        tilt = over[..., 0] - over[..., 2]  # grey where R = 0, redder or bluer elsewhere
        assert ((tilt > 0.003) == (truth > 0)).all()
        assert ((tilt < -0.003) == ((truth < 0) & (not positive_only))).all()


def test_save_explanation_shared_scale_and_errors(tmp_path: Path) -> None:
    m = _ramp()[None]
    path = save_explanation(np.zeros((12, 12)), [m, 0.5 * m], tmp_path / "s.png",
                            shared_scale=True, panels=("heatmap",))
    strong = read_panel(path, "heatmap:0", (12, 12))
    weak = read_panel(path, "heatmap:1", (12, 12))
    # on one scale the weaker map is paler: exactly the colours of half the relevance
    np.testing.assert_allclose(strong, heatmap_rgb(m[0] / np.abs(m).max()), atol=2 / 255)
    np.testing.assert_allclose(weak, heatmap_rgb(0.5 * m[0] / np.abs(m).max()), atol=2 / 255)
    own = save_explanation(np.zeros((12, 12)), np.stack([m, 0.5 * m]), tmp_path / "o.png",
                           panels=("heatmap",))
    np.testing.assert_allclose(read_panel(own, "heatmap:0", (12, 12)),
                               read_panel(own, "heatmap:1", (12, 12)), atol=2 / 255)
    with pytest.raises(ValueError, match="panels"):
        save_explanation(np.zeros((12, 12)), m, tmp_path / "x.png", panels=("contour",))
    with pytest.raises(ValueError, match="titles"):
        save_explanation(np.zeros((12, 12)), m, tmp_path / "x.png", titles=["a", "b"])
    with pytest.raises(ValueError, match="image is"):
        save_explanation(np.zeros((10, 10)), m, tmp_path / "x.png")


def test_save_grid_options(tmp_path: Path) -> None:
    x = torch.rand(2, 1, 12, 12)
    maps = torch.from_numpy(np.stack([_ramp(), 0.25 * _ramp()]))[:, None]
    for kw in ({}, {"positive_only": True}, {"shared_scale": True}):
        path = save_grid(x, maps, tmp_path / f"g{len(kw)}{sorted(kw)}.png", **kw)
        rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255
        reds = (rgb[..., 0] > 0.8) & (rgb[..., 1] < 0.3) & (rgb[..., 2] < 0.3)
        blues = (rgb[..., 2] > 0.8) & (rgb[..., 0] < 0.3) & (rgb[..., 1] < 0.3)
        assert reds.any()
        if kw.get("positive_only"):
            # only the colour bar's bottom end could be blue: it is cut at 0
            assert not blues.any()
        else:
            assert blues.any()


def test_normalise_maps_percentile_clips() -> None:
    m = np.array([[[0.0, 1.0, -2.0, 3.0, 4.0]]])
    # 50th percentile of |R| = 2: values above clip to ±1
    np.testing.assert_allclose(normalise_maps(m, percentile=50), [[[0, 0.5, -1, 1, 1]]])
    np.testing.assert_allclose(normalise_maps(m), m / 4)
    with pytest.raises(ValueError, match="percentile"):
        normalise_maps(m, percentile=0)
