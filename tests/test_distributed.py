"""Dataset-scale evaluation over torch.distributed equals a single-process run (issue #7)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lrpfx
from lrpfx.metrics import gae
from lrpfx.metrics.distributed import evaluate

sys.path.insert(0, str(Path(__file__).parent))
from distributed_worker import run_all, setup  # noqa: E402


def test_two_gloo_processes_equal_one(tmp_path):
    out = tmp_path / "dist.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", "0", "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0",
         str(Path(__file__).with_name("distributed_worker.py")), str(out)],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    distributed = torch.load(out, weights_only=True)
    single = run_all()
    assert set(distributed) == set(single) == {"gae", "insertion_deletion", "sensitivity_n"}
    for metric, fields in single.items():
        for name, value in fields.items():
            torch.testing.assert_close(distributed[metric][name], value, rtol=0, atol=0,
                                       equal_nan=True, msg=f"{metric}.{name}")


def test_blocks_are_the_metric_on_each_block():
    model, images = setup()
    explain = lrpfx.compile(model).explain
    whole = evaluate("gae", model, explain, images[:16], block_size=8, seed=5, progress=False,
                     steps=3, batch_size=8)
    for b in range(2):
        part = gae(model, explain, images[8 * b:8 * b + 8], steps=3, batch_size=8,
                   shuffle=False, progress=False,
                   generator=torch.Generator().manual_seed(5 * 1_000_003 + b))
        torch.testing.assert_close(whole.gae[2 * b:2 * b + 2], part.gae)
        torch.testing.assert_close(whole.positive_index[2 * b:2 * b + 2],
                                   part.positive_index + 8 * b)
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate("nope", model, explain, images)
