"""lrpfx.passes.fold_batchnorm: the LRP rule sets explain conv → BN as one merged affine layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

import lrpfx


def _randomise_bn(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(3)
    for mod in model.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            # negative γ included: under z⁺ that is where folding and not folding differ most
            mod.weight.data = torch.randn(mod.num_features, generator=g)
            mod.bias.data = torch.randn(mod.num_features, generator=g)
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=g))
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
    return model.eval()


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return _randomise_bn(nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3, groups=2, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Flatten(), nn.Linear(64, 6), nn.BatchNorm1d(6))).double()


def _fused(m: nn.Sequential) -> nn.Sequential:
    """The same network folded by torch's own fusion utilities (an independent computation)."""
    return nn.Sequential(fuse_conv_bn_eval(m[0], m[1]), m[2], fuse_conv_bn_eval(m[3], m[4]), m[5],
                         m[6], fuse_linear_bn_eval(m[7], m[8])).eval()


@pytest.mark.parametrize("rule", ["epsilon", "zplus", "alpha2beta1", "epsilon_plus_flat"])
def test_lrp_rule_sets_explain_the_folded_network(rule: str) -> None:
    m = _net()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    ex, ref = lrpfx.compile(m, rule=rule), lrpfx.compile(_fused(m), rule=rule)
    torch.testing.assert_close(ex(x), m(x), rtol=0, atol=1e-12)
    got = ex.explain(x, 1, contrastive=False, normalize=False)
    want = ref.explain(x, 1, contrastive=False, normalize=False)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-15)
    assert "batch_norm" not in {n.op.split(".")[1] for n in ex.report.nodes}
    folded = [n.meta["lrpfx"].extra.get("folded_batch_norm") for n in ex.graph_module.graph.nodes
              if "lrpfx" in n.meta]
    assert {"1", "4", "8"} <= set(folded)


def test_abslrp_keeps_its_batch_norm_rule() -> None:
    m = _net()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    ex = lrpfx.compile(m)
    ex(x)
    assert sum(n.op.endswith("batch_norm.default") for n in ex.report.nodes) == 3
    assert not torch.allclose(ex.explain(x, 1), lrpfx.compile(_fused(m)).explain(x, 1))


class _SharedConv(nn.Module):
    """conv output read by a batch norm and by a skip: folding would change the skip."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.bn_tokens = nn.BatchNorm1d(5)
        self.head = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        z = torch.relu(self.bn(y)) + y
        tokens = self.head(z.flatten(2).transpose(1, 2)[:, :5])  # (B, 5, 4): BN1d on dim 1 = 5
        return self.bn_tokens(tokens).mean(1)


def test_only_safe_batch_norms_are_folded() -> None:
    torch.manual_seed(0)
    m = _randomise_bn(_SharedConv()).double()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    ex = lrpfx.compile(m, rule="epsilon")
    torch.testing.assert_close(ex(x), m(x), rtol=0, atol=1e-12)
    assert sum(n.op.endswith("batch_norm.default") for n in ex.report.nodes) == 2
