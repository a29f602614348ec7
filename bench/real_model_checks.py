"""Measurements behind docs/real-models.md: absLRP and the LRP rule sets on a pretrained
ImageNet CNN (EfficientNet-Lite0 from the PyPI wheel) and scikit-image's photos.

    python bench/real_model_checks.py [--photos chelsea,coffee,...] [--steps 32]

Prints Markdown tables:

1. insertion − deletion (zero baseline) per method;
2. how class-specific maps are: cosine between the top class's and the least likely class's
   map, at the input and at inner positions (``explain(..., at=...)``), for the positive and the
   contrastive map, for absLRP (op-local and the reference's total derivative) and z⁺-based LRP;
3. the classifier-randomisation test (Adebayo et al. 2018): cosine between the maps of the
   trained model and of the model with a re-initialised classifier.
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import lrpfx
from lrpfx.data.models import pretrained_efficientnet_lite0
from lrpfx.data.photos import PHOTOS, sample_photos
from lrpfx.metrics import insertion_deletion

#: lrpfx's epsilon_plus_flat with the options that reproduce Zennit's EpsilonPlusFlat.
ZENNIT_OPTIONS = {"epsilon": 1e-6, "bias": True, "residual": "symmetric"}
POSITIONS = ("blocks.1", "blocks.3", "blocks.5", "conv_head")


def cos(a: Tensor, b: Tensor) -> Tensor:
    return F.cosine_similarity(a.flatten(1).double(), b.flatten(1).double(), dim=1)


def methods(model: nn.Module, x: Tensor) -> dict[str, object]:
    ex = lrpfx.compile(model, example_inputs=x[:1])
    total = lrpfx.compile(model, example_inputs=x[:1], merge_total_derivative=True)
    epf = lrpfx.compile(model, rule="epsilon_plus_flat", example_inputs=x[:1])
    epz = lrpfx.compile(model, rule="epsilon_plus_flat", example_inputs=x[:1], **ZENNIT_OPTIONS)
    gxi = lrpfx.compile(model, rule="gradient_x_input", example_inputs=x[:1])
    gen = torch.Generator().manual_seed(0)
    return {
        "absLRP contrastive": lambda x, t: ex.explain(x, t),
        "absLRP contrastive, total derivative": lambda x, t: total.explain(x, t),
        "absLRP positive": lambda x, t: ex.explain(x, t, contrastive=False),
        "epsilon_plus_flat (defaults)": lambda x, t: epf.explain(x, t, contrastive=False),
        "epsilon_plus_flat (Zennit's options)": lambda x, t: epz.explain(x, t, contrastive=False),
        "gradient × input": lambda x, t: gxi.explain(x, t, contrastive=False),
        "random": lambda x, t: torch.rand(x.shape, generator=gen),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--photos", default=",".join(PHOTOS))
    p.add_argument("--steps", type=int, default=32)
    args = p.parse_args()
    torch.manual_seed(0)
    lm = pretrained_efficientnet_lite0()
    model = lm.model
    x = lm.preprocessor.batch([im for _, im in sample_photos(args.photos.split(","))])
    with torch.no_grad():
        logits = model(x)
    top, far = logits.argmax(-1), logits.argmin(-1)

    print(f"## insertion − deletion ({len(x)} photos, {args.steps} steps, zero baseline)\n")
    print("| method | insertion | deletion | insertion − deletion |\n|---|---|---|---|")
    for name, fn in methods(model, x).items():
        r = insertion_deletion(model, fn, x, steps=args.steps, target=top, progress=False)
        ins, dele = float(r.insertion.mean()), float(r.deletion.mean())
        print(f"| {name} | {ins:.3f} | {dele:.3f} | {ins - dele:+.3f} |")

    print("\n## class sensitivity: cosine(top class, least likely class), mean over photos\n")
    print("| rule | map | input | " + " | ".join(POSITIONS) + " |")
    print("|---|---|---|" + "---|" * len(POSITIONS))
    rules = [("absLRP", {}), ("absLRP, total derivative", {"merge_total_derivative": True}),
             ("epsilon_plus_flat (Zennit's options)", {"rule": "epsilon_plus_flat",
                                                       **ZENNIT_OPTIONS}),
             ("zplus", {"rule": "zplus"}), ("gradient × input", {"rule": "gradient_x_input"})]
    for label, opts in rules:
        ex = lrpfx.compile(model, example_inputs=x[:1], **opts)
        negative = not opts  # the contrastive map is absLRP's
        negative = "rule" not in opts
        a = ex.explain_parts(x, top, negative=negative, at=POSITIONS)
        b = ex.explain_parts(x, far, negative=negative, at=POSITIONS)
        kinds = ["positive", "contrastive"] if negative else ["positive"]
        for kind in kinds:
            row = [float(cos(getattr(a, kind), getattr(b, kind)).mean())]
            row += [float(cos(getattr(a.at[q], kind), getattr(b.at[q], kind)).mean())
                    for q in POSITIONS]
            print(f"| {label} | {kind} | " + " | ".join(f"{v:+.3f}" for v in row) + " |")

    print("\n## classifier randomisation: cosine(trained, re-initialised classifier)\n")
    rand = copy.deepcopy(model)
    torch.manual_seed(1)
    rand.get_classifier().reset_parameters()
    print("| rule | map | mean cosine | per photo |\n|---|---|---|---|")
    for label, opts in rules[:3]:
        e1 = lrpfx.compile(model, example_inputs=x[:1], **opts)
        e2 = lrpfx.compile(rand, example_inputs=x[:1], **opts)
        negative = "rule" not in opts
        a, b = e1.explain_parts(x, top, negative=negative), e2.explain_parts(x, top,
                                                                           negative=negative)
        for kind in (["positive", "contrastive"] if negative else ["positive"]):
            c = cos(getattr(a, kind), getattr(b, kind))
            print(f"| {label} | {kind} | {float(c.mean()):+.3f} | "
                  + ", ".join(f"{v:+.2f}" for v in c.tolist()) + " |")


if __name__ == "__main__":
    main()
