"""The spelling table and the in-place check (lrpfx/core/spellings.py, passes/functionalize.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import lrpfx
from lrpfx.core import ops, spellings
from lrpfx.passes.canonicalize import CANONICAL, canonicalize


def _infos(model: nn.Module, frontend: str, x: torch.Tensor) -> dict[str, object]:
    if frontend == "fx":
        gm = fx.symbolic_trace(model)
    else:
        gm = torch.export.export(model, (x,)).module()
    return {n.name: n.meta["lrpfx"] for n in canonicalize(gm).nodes}


class MutatedThenRead(nn.Module):
    """``y.relu_()`` while ``y`` is read again: out of place it would change the forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        z = y.relu_()
        return z + y * 2.0


class MutatedOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        y += 1.0
        return torch.relu_(y)


def test_inplace_op_read_afterwards_is_refused_with_the_reason():
    infos = _infos(MutatedThenRead(), "fx", torch.randn(2, 4))
    relu = next(i for i in infos.values() if i.source_op == "Tensor.relu_")
    assert relu.kind != CANONICAL and "mutates" in relu.problem and "afterwards" in relu.problem
    with pytest.raises(lrpfx.UnsupportedOpError, match="relu_"):
        lrpfx.compile(MutatedThenRead().eval(), frontend="symbolic_trace")


def test_inplace_op_not_read_afterwards_is_made_out_of_place():
    torch.manual_seed(0)
    model, x = MutatedOnly().eval(), torch.randn(3, 4)
    infos = _infos(model, "fx", x)
    relu = next(i for i in infos.values() if i.source_op.endswith("relu_"))
    assert relu.kind == CANONICAL and relu.canonical == "relu" and relu.problem is None
    explainer = lrpfx.compile(model, frontend="symbolic_trace")
    torch.testing.assert_close(explainer(x), model(x))


class OneMinus(nn.Module):
    """``1 - x`` (``aten.rsub``) with ``x`` read again: not in place, so the check leaves it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(1.0 - x) * x


def test_out_of_place_op_whose_operand_is_read_again_is_not_refused():
    infos = _infos(OneMinus(), "export", torch.randn(2, 3))
    rsub = next(i for i in infos.values() if "rsub" in i.source_op)
    assert rsub.kind == CANONICAL and rsub.canonical == "sub" and rsub.problem is None


def test_every_spelling_is_in_one_row_and_extracts_to_a_canonical_op():
    """A bare name or a module class in two rows would make lookup order matter."""
    names = [n for row in spellings.TABLE for n in row.names]
    modules = [m for row in spellings.TABLE for m in row.modules]
    assert len(names) == len(set(names)) and len(modules) == len(set(modules))
    for row in spellings.TABLE:
        assert (row.call is not None) == bool(row.names)
        assert (row.module is not None) == bool(row.modules)
    # a module spelling of each kind extracts to a canonical op with the right arguments
    for module, canon in [(nn.Conv2d(3, 4, 3), "conv"), (nn.ReLU6(), "hardtanh"),
                          (nn.AvgPool2d(2), "avg_pool"), (nn.LayerNorm(4), "layer_norm"),
                          (nn.modules.linear.NonDynamicallyQuantizableLinear(4, 4), "linear")]:
        extract = spellings.lookup(type(module).__name__, module)
        assert extract is not None
        got = extract(spellings.Call(("x",), {}, module=module, attr=lambda k: k))
        assert isinstance(got, tuple) and got[0] == canon and got[0] in ops.CANONICAL_OPS
        assert got[1]["input"] == "x"
