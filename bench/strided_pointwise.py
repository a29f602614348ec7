"""The transpose of a strided 1×1 convolution (ResNet's downsampling shortcut): PyTorch's
``convolution_backward`` against lrpfx's unstrided transpose scattered to every k-th position
(``lrpfx.rules.linear._pointwise_transpose``), timed in one run. Run::

    .venv/bin/python bench/strided_pointwise.py [--batch 4] [--threads 2] [--device cpu]

The shapes are ResNet-50's three shortcuts at 224×224. Both compute the same numbers (checked
here); saliency, a plain autograd gradient, keeps PyTorch's kernel.
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import torch

from lrpfx.rules.linear import _pointwise_transpose

# (input channels, output channels, input size) of ResNet-50's stride-2 shortcuts
SHORTCUTS = [(256, 512, 56), (512, 1024, 28), (1024, 2048, 14)]


def median_ms(fn, device: torch.device, repeats: int = 20) -> float:  # noqa: ANN001
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def compare(cin: int, cout: int, size: int, batch: int, device: torch.device,
            gen: torch.Generator) -> tuple[float, float]:
    """Milliseconds of PyTorch's and lrpfx's transpose for one shortcut (same numbers checked)."""
    x_shape = (batch, cin, size, size)
    weight = torch.randn(cout, cin, 1, 1, generator=gen).to(device)
    s = torch.randn(batch, cout, size // 2, size // 2, generator=gen).to(device)
    call = SimpleNamespace(static=dict(stride=(2, 2), padding=(0, 0), groups=1))
    stand_in = torch.empty((), device=device).expand(x_shape)

    def pytorch() -> torch.Tensor:
        return torch.ops.aten.convolution_backward(
            s, s.new_empty(x_shape), weight, None, [2, 2], [0, 0], [1, 1], False, [0, 0], 1,
            [True, False, False])[0]

    def lrpfx() -> torch.Tensor:
        return _pointwise_transpose(call, stand_in, s, weight)

    # sums of thousands of float32 products: compare at the precision of the sum's scale
    torch.testing.assert_close(lrpfx(), pytorch(), rtol=1e-4, atol=1e-5 * cout)
    return median_ms(pytorch, device), median_ms(lrpfx, device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    print("| input | output | convolution_backward (ms) | lrpfx (ms) | ratio |")
    print("|---|---|---|---|---|")
    for cin, cout, size in SHORTCUTS:
        a, b = compare(cin, cout, size, args.batch, device, gen)
        print(f"| {cin}×{size}² | {cout}×{size // 2}² | {a:.2f} | {b:.2f} | {a / b:.2f} |")


if __name__ == "__main__":
    main()
