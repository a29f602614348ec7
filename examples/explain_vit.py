"""Explain a Vision Transformer (timm, random weights: nothing can be downloaded here).

Builds ``vit_tiny_patch16_224`` with seeded random weights, prepares a photo that ships with
scikit-learn the way timm's data config says, prints lrpfx's rule coverage for the model
(attention needs no special code: it is decomposed into matmul, softmax and matmul), and writes
heatmap + overlay figures for the top-2 classes to ``vit.png``. With trained weights, load them
with ``model.load_state_dict(torch.load(path, weights_only=True))`` first; the rest is unchanged.

    python examples/explain_vit.py            # 224×224
    python examples/explain_vit.py --small    # 64×64 input, 2 blocks (what the tests run)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import timm
import torch
from PIL import Image
from sklearn.datasets import load_sample_image

import lrpfx
from lrpfx.apps.preprocess import timm_preprocessor
from lrpfx.apps.viz import save_explanation


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true",
                        help="64×64 input and 2 transformer blocks (instead of 224×224 and 12)")
    parser.add_argument("--out", default="examples_out", help="output folder")
    args = parser.parse_args(argv)
    size, depth = (64, 2) if args.small else (224, 12)

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", img_size=size, depth=depth).eval()
    # timm's data config: resize, crop, interpolation and mean/std, at the model's size
    prep = timm_preprocessor(model, (3, size, size))
    photo = Image.fromarray(load_sample_image("china.jpg"))
    x = prep(photo)[None]

    explainer = lrpfx.compile(model, example_inputs=x)  # capture now, to print the coverage
    counts = explainer.report.counts()
    print(f"{len(explainer.report.nodes)} graph nodes carry relevance: {counts}")
    with torch.no_grad():
        logits = explainer(x)
        assert torch.allclose(logits, model(x), atol=1e-4)
    top2 = logits.topk(2, dim=1).indices[0]
    maps = [explainer.explain(x, int(c))[0] for c in top2]  # contrastive, (3, H, W) each
    for c, m in zip(top2.tolist(), maps):
        print(f"class {c}: logit {float(logits[0, c]):+.3f}, "
              f"relevance in [{float(m.min()):+.2f}, {float(m.max()):+.2f}]")
    path = save_explanation(prep.to_display(x[0]), maps, Path(args.out) / "vit.png",
                            titles=[f"class {c}" for c in top2.tolist()])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
