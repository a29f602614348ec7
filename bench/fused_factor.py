"""How much would fused kernels save? One conv → BN → ReLU chain's absLRP factor, eager vs
``torch.compile`` (inductor), timed in one run.

The factor is the one :class:`lrpfx.rules.abslrp.RunningFactor` builds for such a chain
(``(ratio(y) ⊙ a)⁺ ⊙ ratio(z)²``, ``ratio(t) = t / (|t| + EPS)``); eager PyTorch runs each
element-wise op as its own pass over memory, inductor fuses them into one loop. Run::

    .venv/bin/python bench/fused_factor.py [--shape 4 256 56 56] [--threads 2]

Needs a C++ compiler for inductor on CPU. This is a measurement for the README's speed section,
not a feature: lrpfx runs eagerly.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lrpfx.rules.base import EPS


def chain_factor(y: torch.Tensor, a: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    ratio_y = y / (y.abs() + EPS)
    ratio_z = z / (z + EPS)
    return (ratio_y * a).clamp(min=0) * ratio_z * ratio_z


def median_ms(fn, repeats: int = 20) -> float:  # noqa: ANN001
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=4, default=[4, 256, 56, 56])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(*args.shape, generator=gen)
    a = torch.randn(1, args.shape[1], 1, 1, generator=gen)
    z = (y * a + 0.1).relu()
    start = time.perf_counter()
    compiled = torch.compile(chain_factor, dynamic=False)
    torch.testing.assert_close(compiled(y, a, z), chain_factor(y, a, z))
    compile_s = time.perf_counter() - start
    eager, fused = median_ms(lambda: chain_factor(y, a, z)), median_ms(lambda: compiled(y, a, z))
    one_pass = median_ms(lambda: torch.mul(y, z))
    print("| variant | ms |\n|---|---|")
    print(f"| eager | {eager:.2f} |\n| inductor (compiled in {compile_s:.1f} s) | {fused:.2f} |")
    print(f"| one multiplication, for scale | {one_pass:.2f} |")
    print(f"\neager / fused: {eager / fused:.1f}x")


if __name__ == "__main__":
    main()
