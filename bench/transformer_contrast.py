"""Why absLRP's contrastive maps collapse on ViTs, and which merge semantics carries the class.

For a trained digits ViT (:mod:`lrpfx.data.zoo`), one forward and two backward passes per
semantics (op-local default, ``merge_total_derivative=True``) give the positive and negative
relevance at the input and at every block's output (``explain_parts(at=...)``). Printed:

- per position, the median over test digits of cosine(positive, negative): where along the depth
  the two streams become indistinguishable;
- insertion − deletion (zero baseline, 32 steps) for the contrastive and positive maps of both
  semantics, gradient×input and a random map, with paired Wilcoxon tests against the default
  contrastive map.

Run: ``.venv/bin/python bench/transformer_contrast.py [--n 96] [--model vit] [--out DIR]``
(writes ``DIR/contrast_depth.png`` with the per-block curve).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from scipy.stats import wilcoxon

import lrpfx
from lrpfx.data.digits import ARCHITECTURES, train_digits_model
from lrpfx.data.zoo import ZooModel, digits_vit, load_model
from lrpfx.metrics import insertion_deletion

# a larger ViT than the zoo's (which the tests train): 32×32 digits, 64 tokens, 6 blocks
# (about 2 minutes of training on one core, then cached)
ARCHITECTURES.setdefault("vit6", lambda c: digits_vit(c, size=32, dim=64, depth=6))


def _load(name: str, size: int) -> ZooModel:
    if name != "vit6":
        return load_model(name, size=size, progress=False)
    model, (x, y), acc = train_digits_model("vit6", size=32, epochs=30, progress=False)
    return ZooModel(name, model, x, y, acc)


SEMANTICS = {"op-local": {"merge_total_derivative": False},
             "attention merges": {"merge_total_derivative": "attention"},
             "total derivative": {"merge_total_derivative": True}}


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.flatten(1).double(), b.flatten(1).double()
    return torch.nn.functional.cosine_similarity(a, b, dim=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vit")
    p.add_argument("--size", type=int, default=16, help="image side (vit6 is always 32)")
    p.add_argument("--n", type=int, default=96)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--out", default="paper_out")
    a = p.parse_args()
    torch.manual_seed(0)
    zm = _load(a.model, a.size)
    model, x = zm.model, zm.x_test[:a.n]
    blocks = getattr(model, "blocks", None)
    taps = ["patch_embed", *[f"blocks.{i}" for i in range(len(blocks))]] if blocks else []
    gxi = lrpfx.compile(model, rule="gradient_x_input")
    reference = gxi.explain_parts(x, at=taps)  # linear: its contrast is the contrast logit's GxI
    curves, agreement, methods = {}, {}, {}
    for label, options in SEMANTICS.items():
        ex = lrpfx.compile(model, **options)
        parts = ex.explain_parts(x, at=taps)
        both = [(parts.at[t], reference.at[t]) for t in taps] + [(parts, reference)]
        curves[label] = [_cos(p.positive, p.negative).median().item() for p, _ in both]
        agreement[label] = [_cos(p.contrastive, r.contrastive).median().item() for p, r in both]
        methods[f"{label}: contrastive"] = (lambda xx, t, ex=ex: ex.explain(xx, t))
        methods[f"{label}: positive"] = (lambda xx, t, ex=ex: ex.explain(xx, t,
                                                                        contrastive=False))
    methods["gradient×input"] = lambda xx, t: gxi.explain(xx, t, contrastive=False)
    gen = torch.Generator().manual_seed(0)
    methods["random"] = lambda xx, t: torch.rand(xx.shape, generator=gen)

    print(f"median cosine(positive, negative) along the depth, {a.model}, {a.n} test digits")
    names = [*taps, "input"]
    print("| semantics | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for label, c in curves.items():
        print(f"| {label} | " + " | ".join(f"{v:.6f}" for v in c) + " |")
    print("\nmedian cosine(contrastive map, gradient×input of the contrast logit) along the depth")
    print("| semantics | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for label, c in agreement.items():
        print(f"| {label} | " + " | ".join(f"{v:.3f}" for v in c) + " |")

    scores = {name: insertion_deletion(model, fn, x, steps=a.steps, progress=False).difference
              for name, fn in methods.items()}
    ref = scores["op-local: contrastive"]
    print(f"\ninsertion − deletion (zero baseline, {a.steps} steps), {a.n} test digits")
    print("| map | mean | 95% CI | Wilcoxon p vs op-local contrastive |")
    print("|---|---|---|---|")
    for name, s in scores.items():
        s = s.double()
        ci = 1.96 * s.std().item() / len(s) ** 0.5
        pv = "" if s is ref else "identical" if torch.equal(s, ref.double()) else \
            f"{wilcoxon(s.numpy(), ref.double().numpy()).pvalue:.2g}"
        print(f"| {name} | {s.mean().item():.3f} | ±{ci:.3f} | {pv} |")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    # relevance flows from the output back to the input: last block first
    order = [*reversed(range(len(taps))), len(taps)]
    for label in curves:
        axes[0].plot([1 - curves[label][i] for i in order], marker="o", label=label)
        axes[1].plot([agreement[label][i] for i in order], marker="o", label=label)
    for ax in axes:
        ax.set_xticks(range(len(order)), [names[i] for i in order], rotation=30, fontsize=7)
        ax.legend(fontsize=7)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("1 − cos(positive, negative)")
    axes[1].set_ylabel("cos(contrastive, GxI of contrast logit)")
    fig.suptitle(f"digits {a.model}, {a.n} test digits: from the last block (left) to the input",
                 fontsize=9)
    fig.tight_layout()
    Path(a.out).mkdir(parents=True, exist_ok=True)
    fig.savefig(Path(a.out) / "contrast_depth.png", dpi=120)
    print(f"wrote {Path(a.out) / 'contrast_depth.png'}")


if __name__ == "__main__":
    main()
