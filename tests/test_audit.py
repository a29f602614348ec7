"""lrpfx.check and the relevance auditor (issue #4), on cases with known answers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lrpfx

D = torch.float64


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).to(D).eval()


def test_audit_lrp0_losses_are_the_bias_shares():
    """LRP-0 on y = W h + b: the input receives Σ_j (z_j − b_j) R_j / z_j, so the share lost at
    the node is Σ_j b_j R_j / z_j over Σ_j R_j; ReLU loses nothing."""
    net = _mlp()
    x = torch.randn(5, 4, dtype=D)
    report = lrpfx.compile(net, rule="lrp0").audit(x, target=2)
    assert [n.op for n in report.nodes] == ["linear", "relu", "linear"]
    first, relu, last = report.nodes
    out = net(x).detach()
    # last layer: R_out = f_2 (one-hot, classic LRP starts from the logit)
    torch.testing.assert_close(last.out_sum, out[:, 2])
    torch.testing.assert_close(last.lost, net[2].bias[2].detach() / out[:, 2])
    torch.testing.assert_close(relu.lost, torch.zeros(5, dtype=D), atol=1e-12, rtol=0)
    # first layer: R_z = relevance of the pre-activations = z ⊙ W₂[2] [z > 0]
    z = net[0](x).detach()
    r_z = z * net[2].weight[2].detach() * (z > 0)
    torch.testing.assert_close(first.out_sum, r_z.sum(1))
    b = net[0].bias.detach()
    expected_lost = (b * r_z / torch.where(z != 0, z, 1.0)).sum(1) / r_z.sum(1)
    torch.testing.assert_close(first.lost, expected_lost)
    # what the first layer passes on is the input map itself
    r_in = lrpfx.compile(net, rule="lrp0").explain(x, target=2, contrastive=False,
                                                   normalize=False)
    torch.testing.assert_close(first.in_sum["input"], r_in.sum(1))
    torch.testing.assert_close(first.in_l1["input"], r_in.abs().sum(1))
    assert "lost" in report.table() and "linear" in str(report)


def test_audit_conservative_without_bias():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(4, 6, bias=False), nn.ReLU(),
                        nn.Linear(6, 3, bias=False)).to(D).eval()
    report = lrpfx.compile(net, rule="lrp0").audit(torch.randn(3, 4, dtype=D))
    for n in report.nodes:
        torch.testing.assert_close(n.lost, torch.zeros(3, dtype=D), atol=1e-10, rtol=0)


def test_audit_refuses_path_methods():
    with pytest.raises(ValueError, match="no single backward"):
        lrpfx.compile(_mlp(), rule="integrated_gradients").audit(torch.randn(2, 4, dtype=D))


class _Weird(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.cumprod(x, 1))


def test_check_lists_unknown_ops_first_and_every_node():
    report = lrpfx.check(_Weird().eval(), torch.randn(2, 4))
    assert not report.ok
    (bad,) = report.unsupported
    assert "cumprod" in bad.op
    table = report.table(all_nodes=True).splitlines()
    assert table[1].startswith("status") and table[2].startswith("unsupported")
    names = {n.node for n in report.nodes} | {n.node for n in report.off_path}
    assert any("fc" in n.module for n in report.nodes)
    assert len(names) >= 3
    # compile refuses exactly this in strict mode, naming the same node
    with pytest.raises(lrpfx.UnsupportedOpError) as err:
        lrpfx.compile(_Weird().eval(), example_inputs=torch.randn(2, 4))
    assert [n.node for n in err.value.report.unsupported] == [bad.node]


def test_check_ok_model():
    report = lrpfx.check(_mlp(), torch.randn(2, 4, dtype=D), rule="epsilon")
    assert report.ok and report.rule_set == "epsilon"
    assert [n.canonical for n in report.nodes if n.status == "rule"] == ["linear", "relu",
                                                                        "linear"]


class _DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(x) if x.sum() > 0 else self.fc(-x)


@pytest.mark.parametrize("frontend,name", [("export", "torch.export"),
                                           ("symbolic_trace", "torch.fx.symbolic_trace")])
def test_capture_failure_names_frontend_reason_and_what_to_try(frontend, name):
    with pytest.raises(lrpfx.CaptureError) as err:
        lrpfx.compile(_DataDependent().eval(), frontend=frontend,
                      example_inputs=torch.randn(2, 3))
    message = str(err.value)
    assert name in message and "_DataDependent" in message
    assert "control flow" in message or "data-dependent" in message
    if frontend == "export":
        assert "What to try" in message and "symbolic_trace" in message
