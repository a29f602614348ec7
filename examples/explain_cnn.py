"""Explain a trained CNN: the digits classifier of :mod:`lrpfx.data.digits`.

Trains (about ten seconds, then cached) a small VGG-style CNN on scikit-learn's handwritten
digits, compiles it with lrpfx, checks that the compiled forward equals the model's, and
explains test digits for the predicted class and the runner-up. Writes ``cnn.png``.

    python examples/explain_cnn.py            # 8 digits
    python examples/explain_cnn.py --small    # 3 digits (what the tests run)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import lrpfx
from lrpfx.apps.viz import save_grid
from lrpfx.data.digits import stroke_mask, train_digits_model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="3 digits instead of 8")
    parser.add_argument("--out", default="examples_out", help="output folder")
    args = parser.parse_args(argv)
    n = 3 if args.small else 8

    model, (x_test, y_test), accuracy = train_digits_model("vgg", progress=False)
    x, y = x_test[:n], y_test[:n]
    explainer = lrpfx.compile(model)
    with torch.no_grad():
        logits = model(x)
        assert torch.allclose(explainer(x), logits, atol=1e-5)  # the forward is unchanged
    top2 = logits.topk(2, dim=1).indices
    maps_pred = explainer.explain(x, top2[:, 0])  # contrastive absLRP, max |R| = 1 each
    maps_second = explainer.explain(x, top2[:, 1])

    # where does the evidence for the predicted class lie? on the strokes, mostly
    strokes = stroke_mask(x)
    positive = maps_pred.clamp(min=0)
    on_strokes = (positive * strokes).flatten(1).sum(1) / positive.flatten(1).sum(1)
    print(f"digits CNN, test accuracy {accuracy:.4f}")
    for b in range(n):
        print(f"digit {int(y[b])}: predicted {int(top2[b, 0])}, runner-up {int(top2[b, 1])}; "
              f"{float(on_strokes[b]):.0%} of the positive relevance on the strokes "
              f"({float(strokes[b].float().mean()):.0%} of the pixels)")
    titles = [[f"true {int(y[b])}", f"pred {int(top2[b, 0])}", f"2nd {int(top2[b, 1])}"]
              for b in range(n)]
    path = save_grid(x, [maps_pred, maps_second], Path(args.out) / "cnn.png", titles=titles,
                     column_titles=["input", "predicted", "runner-up"])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
