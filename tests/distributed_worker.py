"""Run by tests/test_distributed.py under torchrun: evaluate metrics on 2 CPU processes."""

from __future__ import annotations

import dataclasses
import sys

import torch
import torch.distributed as dist
from torch import nn

import lrpfx
from lrpfx.metrics.distributed import evaluate


def setup() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(6, 5)).eval()
    images = torch.randn(24, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return model, images


def run_all() -> dict[str, dict[str, torch.Tensor]]:
    model, images = setup()
    explain = lrpfx.compile(model).explain
    out = {}
    for name, opts in (("gae", {"steps": 3, "batch_size": 8}),
                       ("insertion_deletion", {"steps": 8}),
                       ("sensitivity_n", {"ns": [4, 16], "n_subsets": 8})):
        r = evaluate(name, model, explain, images, block_size=8, seed=3, progress=False, **opts)
        out[name] = {f.name: getattr(r, f.name) for f in dataclasses.fields(r)}
    return out


if __name__ == "__main__":
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    result = run_all()
    if dist.get_rank() == 0:
        torch.save(result, sys.argv[1])
    # both ranks leave together: a rank that tears gloo down while the other still talks to it
    # can abort ("terminate called without an active exception", seen once under load)
    dist.barrier()
    dist.destroy_process_group()
