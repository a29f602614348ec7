"""Every rule set on the same inputs: the README's rule-set figure.

Run (from the repository root)::

    .venv/bin/python bench/rulesets_figure.py            # writes docs/rulesets.png

The model is the digits CNN of the demo (trained on scikit-learn's digits, cached under
``.cache/lrpfx``); each column is one rule set's map for the predicted class (contrastive for
absLRP and the LRP rule sets, cLRP-style; red = for, blue = against), each map scaled to
max |R| = 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import lrpfx  # noqa: E402
from lrpfx.data.digits import denormalise, train_digits_model  # noqa: E402

RULES = ["abslrp", "lrp0", "epsilon", "alphabeta", "alpha2beta1", "zplus", "epsilon_plus_flat",
         "epsilon_alpha2beta1_flat", "gradient", "gradient_x_input", "integrated_gradients",
         "deeplift_rescale"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "rulesets.png")
    p.add_argument("--n", type=int, default=3, help="number of test digits (rows)")
    args = p.parse_args(argv)
    model, (x_test, y_test), acc = train_digits_model(progress=False)
    picks = torch.stack([torch.nonzero(y_test == d)[0, 0] for d in (3, 5, 8, 0, 2)[:args.n]])
    x = x_test[picks]
    fig, axes = plt.subplots(args.n, len(RULES) + 1, figsize=(1.3 * (len(RULES) + 1),
                                                                1.45 * args.n))
    axes = axes.reshape(args.n, -1)
    for i in range(args.n):
        axes[i, 0].imshow(denormalise(x[i, 0]).numpy(), cmap="gray_r")
        axes[i, 0].set_title(f"digit {int(y_test[picks[i]])}" if i == 0 else "", fontsize=7)
    for j, rule in enumerate(RULES, start=1):
        r = lrpfx.compile(model, rule=rule).explain(x)
        # signed maps: the contrastive ones are in [-1, 1]; the others are scaled likewise
        r = r / r.flatten(1).abs().amax(1).clamp_min(1e-12).reshape(-1, 1, 1, 1)
        for i in range(args.n):
            axes[i, j].imshow(r[i, 0].numpy(), cmap="bwr", vmin=-1, vmax=1)
            if i == 0:
                axes[i, j].set_title(rule.replace("_", "\n", 1), fontsize=6)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"digits CNN (test accuracy {acc:.3f}): one map per rule set, "
                 "red = for the predicted class, blue = against", fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=130)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
