"""Judge relevance maps with lrpfx's metrics: absLRP against Gradient×Input on the digits CNN.

Runs the paper's Global Attribution Evaluation (GAE: local consistency × contrastiveness, on
mosaics of four digits), Sensitivity-n (Ancona et al.) and insertion/deletion AUCs, all batched,
for two attribution methods on the same images, and prints one table. Any
``explain_fn(x, target) -> map`` can be judged the same way (a Captum method in a lambda, ...).

    python examples/evaluate.py            # 32 test digits, the metrics' default settings
    python examples/evaluate.py --small    # 8 digits, few steps (what the tests run)
"""

from __future__ import annotations

import argparse

import torch

import lrpfx
import lrpfx.metrics
from lrpfx.data.digits import train_digits_model


def saliency_x_input(model: torch.nn.Module):  # noqa: ANN201 - an explain_fn
    """Gradient×Input written out by hand: the baseline every LRP paper compares with."""

    def explain(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            score = model(x).gather(1, target[:, None]).sum()
            (grad,) = torch.autograd.grad(score, x)
        return (x * grad).detach()

    return explain


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="8 digits and few steps")
    args = parser.parse_args(argv)
    n, steps, subsets, points = (8, 3, 10, 10) if args.small else (32, 10, 100, 100)

    model, (x_test, _), accuracy = train_digits_model("vgg", progress=False)
    x = x_test[:n]
    methods = {"absLRP (lrpfx)": lrpfx.compile(model).explain,
               "Gradient×Input": saliency_x_input(model)}
    print(f"digits CNN (test accuracy {accuracy:.4f}), {n} test digits")
    print(f"{'method':<16} {'GAE':>7} {'LC':>7} {'C':>7} {'Sens-n':>7} {'ins':>7} {'del':>7}")
    for name, explain_fn in methods.items():
        gae = lrpfx.metrics.gae(model, explain_fn, x, steps=steps, progress=False,
                                generator=torch.Generator().manual_seed(0))
        sens = lrpfx.metrics.sensitivity_n(model, explain_fn, x, n_subsets=subsets,
                                           progress=False,
                                           generator=torch.Generator().manual_seed(0))
        ins = lrpfx.metrics.insertion_deletion(model, explain_fn, x, steps=points,
                                               progress=False)
        g, m = gae.means, ins.means
        print(f"{name:<16} {g['gae']:7.4f} {g['lc']:7.4f} {g['c']:7.4f} "
              f"{float(sens.mean.nanmean()):7.4f} {m['insertion']:7.4f} {m['deletion']:7.4f}")
    print("GAE, LC, C, Sensitivity-n and insertion: higher is better; deletion: lower is better.")


if __name__ == "__main__":
    main()
