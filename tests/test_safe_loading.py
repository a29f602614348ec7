"""No file a user or a folder supplies is unpickled with code: every ``torch.load`` in the
project reads with ``weights_only=True``, named torchvision weights are hash-checked, and the
golden files are looked for only where the tests say.

The first test reads the source (as syntax trees, so a comment or a string cannot fool it); the
others plant a pickle whose loading would run code and check it never runs.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, golden_candidates, load_golden

FOLDERS = ("lrpfx", "tests", "bench", "examples", "scripts")


def _calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) \
                else ""
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) \
                else ""
            out.append((f"{owner}.{name}" if owner else name, node))
    return out


def _keyword(call: ast.Call, name: str) -> object:
    for k in call.keywords:
        if k.arg == name:
            return k.value.value if isinstance(k.value, ast.Constant) else "<expression>"
    return "<missing>"


MARKER = "# trusted-load:"


def _trusted(lines: list[str], call: ast.Call) -> bool:
    """The call carries ``# trusted-load: REASON`` (a reason is required): it reads what the
    same code has just written (a round trip), never a file someone else supplies."""
    end = call.end_lineno or call.lineno
    return any(MARKER in line and line.split(MARKER, 1)[1].strip()
               for line in lines[call.lineno - 1:end])


def _round_trip(call: ast.Call) -> bool:
    """``pickle.loads(pickle.dumps(x))``: the bytes never leave the expression."""
    return bool(call.args) and isinstance(call.args[0], ast.Call) and \
        isinstance(call.args[0].func, ast.Attribute) and call.args[0].func.attr == "dumps"


def unsafe_loads(root: Path = REPO) -> list[str]:
    """Every call in the project that may unpickle code: ``torch.load``/``torch.hub``'s
    ``load_state_dict_from_url`` without a literal ``weights_only=True``, torchvision's
    ``get_state_dict`` (it reads with ``weights_only=False``), ``pickle.load(s)``, and
    ``np.load(allow_pickle=True)``; except calls marked ``# trusted-load: REASON`` and
    in-expression ``pickle.loads(pickle.dumps(...))`` round trips."""
    found = []
    for folder in FOLDERS:
        for path in sorted((root / folder).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            lines = text.splitlines()
            for name, call in _calls(ast.parse(text, str(path))):
                if _trusted(lines, call):
                    continue
                where = f"{path.relative_to(root)}:{call.lineno} {name}"
                short = name.rsplit(".", 1)[-1]
                if name in ("torch.load", "hub.load_state_dict_from_url",
                            "load_state_dict_from_url") and \
                        _keyword(call, "weights_only") is not True:
                    found.append(f"{where} without weights_only=True")
                elif short == "get_state_dict":
                    found.append(f"{where} (torchvision unpickles with weights_only=False)")
                elif name in ("pickle.load", "pickle.loads", "dill.load") and \
                        not _round_trip(call):
                    found.append(where)
                elif short == "load" and name.startswith(("np.", "numpy.")) and \
                        _keyword(call, "allow_pickle") is True:
                    found.append(f"{where} with allow_pickle=True")
                elif any(k.arg == "weights_only" and isinstance(k.value, ast.Constant)
                         and k.value.value is False for k in call.keywords):
                    found.append(f"{where} with weights_only=False")
    return found


def test_no_unsafe_load_in_the_project() -> None:
    assert unsafe_loads() == []


def test_the_source_check_finds_unsafe_loads(tmp_path: Path) -> None:
    """The checker is not vacuous: each kind of unsafe call in a file is reported."""
    (tmp_path / "lrpfx").mkdir()
    (tmp_path / "lrpfx" / "bad.py").write_text(
        "import torch, pickle, numpy as np\n"
        "torch.load('a')\n"
        "torch.load('a', weights_only=False)\n"
        "torch.load('a', weights_only=flag)\n"
        "torch.load('a', weights_only=True)\n"
        "torch.hub.load_state_dict_from_url('u', check_hash=True)\n"
        "W.IMAGENET1K_V1.get_state_dict(progress=False)\n"
        "pickle.load(f)\n"
        "np.load('x.npy', allow_pickle=True)\n"
        "# torch.load('in a comment')\n"
        "torch.load(buf, weights_only=False)  # trusted-load: the bytes torch.save just wrote\n"
        "torch.load(buf, weights_only=False)  # trusted-load:\n"
        "pickle.loads(pickle.dumps(explainer))\n")
    found = unsafe_loads(tmp_path)
    assert [f.split(" ", 1)[0] for f in found] == [f"lrpfx/bad.py:{n}" for n in
                                                   (2, 3, 4, 6, 7, 8, 9, 12)]


class _Planted:
    """Unpickling this runs ``os.makedirs(marker)``: proof of code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.makedirs, (str(self.marker),)


def _plant(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"weight": _Planted(marker)}, path)
    return path


def test_golden_lookup_is_confined_and_weights_only(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("LRPFX_GOLDEN", raising=False)
    # only the checkout and beside it: never a shared/golden in some folder further up
    assert golden_candidates() == [REPO / "shared" / "golden", REPO.parent / "shared" / "golden"]
    monkeypatch.setenv("LRPFX_GOLDEN", str(tmp_path / "golden"))
    assert golden_candidates()[0] == tmp_path / "golden"
    marker = tmp_path / "pwned"
    _plant(tmp_path / "golden" / "evil.pt", marker)
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        load_golden("evil.pt")
    assert not marker.exists()
    torch.save({"x": torch.ones(2), "model": "vgg11", "n": 3}, tmp_path / "golden" / "ok.pt")
    assert load_golden("ok.pt")["n"] == 3


def test_cli_weights_file_is_never_unpickled(tmp_path: Path, capsys) -> None:
    from lrpfx.apps.cli import main

    marker = tmp_path / "pwned"
    weights = _plant(tmp_path / "evil.pt", marker)
    net = tmp_path / "net.py"
    net.write_text("from torch import nn\n\ndef build():\n    return nn.Linear(2, 2)\n")
    code = main(["check", "--model", f"{net}:build", "--input-size", "1,2,2", "--weights",
                 str(weights)])
    err = capsys.readouterr().err
    assert code == 2 and "weights_only=True" in err and err.count("\n") == 1, err
    assert not marker.exists()


class _FakeWeights:
    """Stands in for a torchvision weights enum member (a name and a URL)."""

    def __init__(self, url: str) -> None:
        self.url, self.name = url, "IMAGENET1K_V1"


def test_torchvision_weights_cache_is_hash_checked(tmp_path: Path, monkeypatch) -> None:
    import hashlib

    from lrpfx.apps.preprocess import torchvision_state_dict

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # torch.hub.get_dir() reads it
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    marker = tmp_path / "pwned"
    # a file planted where torchvision's resnet18 weights are cached: refused, unread
    _plant(cache / "resnet18-f37072fd.pth", marker)
    with pytest.raises(ValueError, match="does not have the SHA-256 its name promises"):
        torchvision_state_dict(_FakeWeights("https://x/resnet18-f37072fd.pth"))
    assert not marker.exists()
    # a cached file whose hash matches its name is read (with weights_only=True)
    good = cache / "tmp.pth"
    torch.save({"w": torch.arange(3.0)}, good)
    prefix = hashlib.sha256(good.read_bytes()).hexdigest()[:8]
    good.rename(cache / f"tiny-{prefix}.pth")
    state = torchvision_state_dict(_FakeWeights(f"https://x/tiny-{prefix}.pth"))
    assert torch.equal(state["w"], torch.arange(3.0))
    # the hash matches but the file holds code: weights_only still refuses it
    evil = _plant(cache / "tmp2.pth", marker)
    prefix = hashlib.sha256(evil.read_bytes()).hexdigest()[:8]
    evil.rename(cache / f"evil-{prefix}.pth")
    with pytest.raises(ValueError, match="cannot read"):
        torchvision_state_dict(_FakeWeights(f"https://x/evil-{prefix}.pth"))
    assert not marker.exists()

    # not cached and offline: the message offers --weights FILE, not a place to put a file
    def offline(url, **kwargs):
        assert kwargs["weights_only"] is True and kwargs["check_hash"] is True
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(ValueError) as e:
        torchvision_state_dict(_FakeWeights("https://x/resnet50-0676ba61.pth"))
    assert "--weights FILE" in str(e.value) and str(cache) not in str(e.value)
