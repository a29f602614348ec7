"""The paper's evaluation tables on the model zoo: absLRP against lrpfx's other rule sets and the
baselines of :mod:`lrpfx.metrics.baselines`.

Run (from the repository root)::

    .venv/bin/python bench/paper_tables.py --quick                 # ~5 min on one CPU core
    .venv/bin/python bench/paper_tables.py                         # ~25 min: 64 digits/model
    .venv/bin/python bench/paper_tables.py --models vgg,vit --methods abslrp,gradcam,chefer
    .venv/bin/python bench/paper_tables.py --n-images 256 --out paper_out --threads 2

What it does, per zoo model (:mod:`lrpfx.data.zoo`: VGG-, ResNet- and ViT-style classifiers
trained on scikit-learn's digits, loaded from the cache or trained, seed 0), on the first
``--n-images`` held-out digits (the same images for every method):

- **methods** (rows): ``abslrp`` (the paper's contrastive map, ``lrpfx.compile(model)``),
  ``abslrp-pos`` (its positive map only), ``abslrp-total`` (the contrastive map with the
  reference's total derivative at residual merges, option ``merge_total_derivative``),
  ``lrpfx:<rule>`` for every other rule set in
  :data:`lrpfx.rules.RULESETS` (positive map, ``lrpfx.compile(model, rule=<rule>)``), and every
  baseline of :data:`lrpfx.metrics.baselines.BASELINES` (Captum, grad-cam, attention methods).
  A method that does not apply (attention methods on CNNs, Guided Grad-CAM on the ViT) or fails to
  compile is skipped with a printed note.
- **GAE** (Tables 1–3): :func:`lrpfx.metrics.gae`, ``steps=10``, mosaics of four test digits,
  one ``torch.Generator`` seed for every method, so each method is scored on the same mosaics and
  positives (paired samples). Columns LC_R, LC_F, LC, C and GAE are means over the mosaics.
- **Sensitivity-n, insertion/deletion** (Tables 4–6): :func:`lrpfx.metrics.sensitivity_n`
  (pixel features, zero baseline, mean Pearson correlation per ``n``) and
  :func:`lrpfx.metrics.insertion_deletion` (zero baseline; areas under the target probability).
- **significance**: a two-sided Wilcoxon signed-rank test (``scipy.stats.wilcoxon``) of the
  per-mosaic GAE of absLRP against the best other method (highest mean GAE), as the paper
  reports.
- **figures**: ``gae_bars.png`` (mean GAE per method and model) and ``gae_curves.png`` (the
  paper's Figure 2: for one mosaic's positive image, the MoRF/LeRF output and map-similarity
  curves of absLRP and of the best other method).

Writes ``results.md`` (the tables), ``results.json`` (all means, per-mosaic GAE and settings) and
the two PNGs to ``--out``.

``--model efficientnet_lite0`` runs the same tables on a real ImageNet model instead: the
pretrained EfficientNet-Lite0 on scikit-image's photos, their flips and crops, with Zennit's
EpsilonPlusFlat and a random map as extra rows and GAE also in ``compat="reference"`` (see
``bench/paper_photos.py``; ``results_photos.md``, ``gae_bars_photos.png``, ``maps_photos.png``)::

    .venv/bin/python bench/paper_tables.py --model efficientnet_lite0 --quick --threads 2

The zero baseline is the data set's mean pixel (the digits are standardised).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import lrpfx  # noqa: E402 - after the path fix so the checkout's package is used
from lrpfx.data.zoo import ZOO, load_model  # noqa: E402
from lrpfx.metrics import gae, insertion_deletion, sensitivity_n  # noqa: E402
from lrpfx.metrics.baselines import BASELINES, make_baseline  # noqa: E402
from lrpfx.rules import RULESETS  # noqa: E402

ExplainFn = Callable[[Tensor, Tensor], Tensor]
ABSLRP = ("abslrp", "abslrp-pos", "abslrp-total")


@dataclass
class Row:
    """One method's scores on one model."""

    method: str
    source: str
    gae: dict[str, float] = field(default_factory=dict)
    gae_per_mosaic: list[float] = field(default_factory=list)
    sens_ns: list[int] = field(default_factory=list)
    sens: list[float] = field(default_factory=list)
    insdel: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


# ------------------------------------------------------------------------------------ methods


def lrpfx_method(explainer: lrpfx.Explainer, contrastive: bool) -> ExplainFn:
    def explain_fn(x: Tensor, target: Tensor) -> Tensor:
        return explainer.explain(x, target, contrastive=contrastive)

    return explain_fn


def all_method_names() -> list[str]:
    rules = [f"lrpfx:{r}" for r in RULESETS if r != "abslrp"]
    return [*ABSLRP, *rules, *BASELINES]


def build_methods(model: nn.Module, example: Tensor, wanted: list[str]
                  ) -> dict[str, tuple[ExplainFn, str]]:
    """``name -> (explain_fn, source)`` for every wanted method that works on this model (each
    is tried once on two images; the ones that raise are skipped with a note)."""
    methods: dict[str, tuple[ExplainFn, str]] = {}
    compiled: dict[str, lrpfx.Explainer] = {}
    for name in wanted:
        try:
            if name in ABSLRP or name.startswith("lrpfx:"):
                rule = "abslrp" if name in ABSLRP else name.split(":", 1)[1]
                options = {"merge_total_derivative": True} if name == "abslrp-total" else {}
                key = name if options else rule
                if key not in compiled:
                    compiled[key] = lrpfx.compile(model, rule=rule, example_inputs=example,
                                                  **options)
                fn = lrpfx_method(compiled[key], contrastive=name != "abslrp-pos")
                source = f"lrpfx rule={rule!r}" + "".join(f", {k}=True" for k in options)
            else:
                fn = make_baseline(name, model)
                source = BASELINES[name].library
            with torch.no_grad():
                target = model(example).argmax(1)
            out = fn(example, target)
            if out.shape[0] != example.shape[0] or not torch.isfinite(out).all():
                raise ValueError(f"bad map: shape {tuple(out.shape)}, "
                                 f"finite {bool(torch.isfinite(out).all())}")
        except Exception as e:  # noqa: BLE001 - any failure skips the row, with the reason
            print(f"  - skipped {name}: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
            continue
        methods[name] = (fn, source)
    return methods


# ------------------------------------------------------------------------------------ metrics


def evaluate(model: nn.Module, name: str, fn: ExplainFn, source: str, images: Tensor,
             args: argparse.Namespace) -> tuple[Row, object]:
    start = time.perf_counter()
    g = gae(model, fn, images, steps=args.steps, batch_size=args.batch_size,
            generator=torch.Generator().manual_seed(args.seed), progress=False)
    s = sensitivity_n(model, fn, images, n_subsets=args.n_subsets,
                      generator=torch.Generator().manual_seed(args.seed),
                      batch_size=256, progress=False)
    i = insertion_deletion(model, fn, images, steps=args.insertion_steps, batch_size=256,
                           progress=False)
    row = Row(name, source, gae=g.means, gae_per_mosaic=g.gae.tolist(),
              sens_ns=[int(n) for n in s.ns], sens=[float(v) for v in s.mean],
              insdel=i.means, seconds=time.perf_counter() - start)
    return row, g


def best_other(rows: list[Row]) -> Row | None:
    others = [r for r in rows if r.method not in ABSLRP and r.gae.get("gae") == r.gae.get("gae")]
    return max(others, key=lambda r: r.gae["gae"]) if others else None


def wilcoxon(rows: list[Row]) -> dict[str, object] | None:
    """Two-sided Wilcoxon signed-rank test, absLRP against the best other method, per mosaic."""
    from scipy.stats import wilcoxon as scipy_wilcoxon

    ours = next((r for r in rows if r.method == "abslrp"), None)
    best = best_other(rows)
    if ours is None or best is None:
        return None
    a, b = torch.tensor(ours.gae_per_mosaic), torch.tensor(best.gae_per_mosaic)
    diff = a - b
    out: dict[str, object] = {"against": best.method, "n": len(diff),
                              "median_diff": float(diff.median()),
                              "abslrp_wins": int((diff > 0).sum()),
                              "ties": int((diff == 0).sum())}
    if (diff != 0).sum() < 1:
        out.update(statistic=float("nan"), p=float("nan"))
        return out
    res = scipy_wilcoxon(a.numpy(), b.numpy(), alternative="two-sided")
    out.update(statistic=float(res.statistic), p=float(res.pvalue))
    return out


# ------------------------------------------------------------------------------------ output


def _fmt(v: float) -> str:
    return "nan" if v != v else f"{v:.3f}"


def gae_table(model: str, rows: list[Row], number: int, n_mosaics: int, acc: float) -> str:
    cols = ("lc_r", "lc_f", "lc", "c", "gae")
    best = {c: max((r.gae[c] for r in rows if r.gae[c] == r.gae[c]), default=float("nan"))
            for c in cols}
    accuracy = "" if acc != acc else f"test acc. {acc:.3f}, "
    lines = [f"### Table {number}: GAE, {model} ({accuracy}{n_mosaics} mosaics)", "",
             "| method | from | LC_R | LC_F | LC | C | GAE ↑ | time (s) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: -r.gae["gae"] if r.gae["gae"] == r.gae["gae"] else 9):
        cells = [f"**{_fmt(r.gae[c])}**" if r.gae[c] == best[c] else _fmt(r.gae[c])
                 for c in cols]
        lines.append(f"| {r.method} | {r.source} | {' | '.join(cells)} | {r.seconds:.1f} |")
    return "\n".join(lines)


def sens_table(model: str, rows: list[Row], number: int, n_images: int) -> str:
    ns = rows[0].sens_ns if rows else []
    head = " | ".join(f"n={n}" for n in ns)
    lines = [f"### Table {number}: Sensitivity-n and insertion/deletion, {model} "
             f"({n_images} images)", "",
             f"| method | {head} | mean S-n ↑ | insertion ↑ | deletion ↓ | ins − del ↑ |",
             "|---|" + "---:|" * (len(ns) + 4)]
    for r in sorted(rows, key=lambda r: -r.insdel["difference"]):
        s = torch.tensor(r.sens)
        cells = [_fmt(v) for v in r.sens] + [_fmt(float(s.nanmean()))]
        cells += [_fmt(r.insdel[k]) for k in ("insertion", "deletion", "difference")]
        lines.append(f"| {r.method} | {' | '.join(cells)} |")
    return "\n".join(lines)


def bar_chart(results: dict[str, list[Row]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(11, 3.2 * len(results)), squeeze=False)
    for ax, (model, rows) in zip(axes[:, 0], results.items()):
        rows = sorted(rows, key=lambda r: -r.gae["gae"] if r.gae["gae"] == r.gae["gae"] else 9)
        colours = ["tab:red" if r.method in ABSLRP else "tab:blue" if r.source.startswith(
            "lrpfx") else "tab:grey" for r in rows]
        ax.bar(range(len(rows)), [r.gae["gae"] for r in rows], color=colours)
        ax.set_xticks(range(len(rows)), [r.method for r in rows], rotation=60, ha="right",
                      fontsize=7)
        ax.set_ylabel("mean GAE")
        ax.set_title(f"{model} (red: absLRP, blue: other lrpfx rule sets, "
                     "grey: baselines)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def curves_figure(model_name: str, images: Tensor,
                  picked: list[tuple[str, ExplainFn, object]], path: Path) -> None:
    """The paper's Figure 2 for one mosaic (the one where absLRP scores best): MoRF/LeRF outputs
    and map similarities of each picked method, and its map of the positive image.

    The masking is driven by input×gradient impact maps, not by the method, so the output
    curves are the same for every method; the similarity curves are the method's.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lrpfx.data.digits import denormalise
    from lrpfx.metrics.base import positive_max_one

    fig, axes = plt.subplots(1, 2 + len(picked), figsize=(3.6 * (2 + len(picked)), 3.4),
                             gridspec_kw={"width_ratios": [1.4, 1.4] + [1] * len(picked)})
    g0 = picked[0][2]
    m = int(g0.gae.argmax())
    idx, cls = int(g0.positive_index[m]), int(g0.positive_class[m])
    steps = range(g0.morf_outputs.shape[1])
    o0 = float(g0.morf_outputs[m, 0])
    axes[0].plot(steps, g0.morf_outputs[m] / o0, "-", color="tab:red", label="MoRF")
    axes[0].plot(steps, g0.lerf_outputs[m] / o0, "-", color="tab:blue", label="LeRF")
    for k, (name, fn, g) in enumerate(picked):
        style = "-" if k == 0 else "--"
        axes[1].plot(steps, g.morf_similarity[m], style, color="tab:red", label=f"{name} MoRF")
        axes[1].plot(steps, g.lerf_similarity[m], style, color="tab:blue", label=f"{name} LeRF")
        a0 = positive_max_one(fn(images[idx:idx + 1], torch.tensor([cls])).sum(1, keepdim=True))
        ax = axes[2 + k]
        ax.imshow(denormalise(images[idx, 0]).clamp(0, 1), cmap="gray_r", vmin=0, vmax=1)
        ax.imshow(a0[0, 0], cmap="Reds", alpha=0.55, vmin=0, vmax=1)
        ax.set_title(f"{name}\nGAE {float(g.gae[m]):.3f} = LC {float(g.lc[m]):.2f} "
                     f"· C {float(g.c[m]):.2f}", fontsize=8)
        ax.axis("off")
    axes[0].set(title=f"output o_t / o_0 (digits {model_name}, mosaic {m}, class {cls})",
                xlabel="masking step t")
    axes[1].set(title="similarity sim_t of the map to the unmasked one", xlabel="masking step t")
    for ax in axes[:2]:
        ax.legend(fontsize=7)
        ax.title.set_fontsize(8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(ZOO),
                   help=f"comma-separated zoo models (default: {','.join(ZOO)})")
    p.add_argument("--model", choices=["efficientnet_lite0"], default=None,
                   help="instead of the zoo: the pretrained EfficientNet-Lite0 on scikit-image's "
                        "photos and their flips and crops (bench/paper_photos.py)")
    p.add_argument("--sens-points", type=int, default=6,
                   help="photo table: Sensitivity-n subset sizes (log-spaced)")
    p.add_argument("--methods", default="all",
                   help="comma-separated methods (default: all): " + ", ".join(all_method_names()))
    p.add_argument("--n-images", type=int, default=None,
                   help="test digits per model, a multiple of 4 (default 64; quick: 32)")
    p.add_argument("--out", type=Path, default=Path("paper_out"), help="output directory")
    p.add_argument("--quick", action="store_true",
                   help="32 images, 10 Sensitivity-n subsets per n, 16 insertion steps")
    p.add_argument("--steps", type=int, default=10, help="GAE masking steps (paper: 10)")
    p.add_argument("--batch-size", type=int, default=16, help="GAE images per batch")
    p.add_argument("--n-subsets", type=int, default=None,
                   help="Sensitivity-n subsets per n (default 50; quick: 10)")
    p.add_argument("--insertion-steps", type=int, default=None,
                   help="insertion/deletion steps (default 32; quick: 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the GAE and Sensitivity-n draws")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--cache-dir", default=None, help="zoo weight cache (default .cache/lrpfx)")
    args = p.parse_args(argv)
    args.methods_given = args.methods != "all"
    if args.model:  # the photo table: 24 images at most, cheaper defaults (224 px inputs)
        args.n_subsets = args.n_subsets or (4 if args.quick else 16)
        args.insertion_steps = args.insertion_steps or (8 if args.quick else 16)
        args.batch_size = max(4, min(args.batch_size, 8))
        args.methods = [m for m in args.methods.split(",") if m] if args.methods_given else []
        if args.n_images is not None and (args.n_images < 4 or args.n_images % 4):
            p.error("--n-images must be a positive multiple of 4")
        return args
    args.n_images = args.n_images or (32 if args.quick else 64)
    args.n_subsets = args.n_subsets or (10 if args.quick else 50)
    args.insertion_steps = args.insertion_steps or (16 if args.quick else 32)
    if args.n_images < 4 or args.n_images % 4:
        p.error("--n-images must be a positive multiple of 4")
    args.models = [m for m in args.models.split(",") if m]
    known = all_method_names()
    args.methods = known if args.methods == "all" else [m for m in args.methods.split(",") if m]
    unknown = [m for m in [*args.methods] if m not in known] + \
        [m for m in args.models if m not in ZOO]
    if unknown:
        p.error(f"unknown model(s)/method(s) {unknown}; models: {list(ZOO)}; methods: {known}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.model:
        from bench.paper_photos import run_photos

        return run_photos(args, build_methods, Row, gae_table, sens_table, bar_chart, wilcoxon)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[Row]] = {}
    meta: dict[str, dict] = {}
    figure_done = False
    total = time.perf_counter()
    for model_name in args.models:
        zm = load_model(model_name, cache_dir=args.cache_dir)
        images = zm.x_test[:args.n_images]
        print(f"[{model_name}] test accuracy {zm.accuracy:.4f}; {len(images)} images")
        methods = build_methods(zm.model, images[:2], args.methods)
        rows, gae_results = [], {}
        for name, (fn, source) in methods.items():
            try:
                row, g = evaluate(zm.model, name, fn, source, images, args)
            except Exception as e:  # noqa: BLE001 - one failing method must not stop the table
                print(f"  - {name} failed in the metrics: {type(e).__name__}: {e}")
                traceback.print_exc(limit=2)
                continue
            rows.append(row)
            gae_results[name] = g
            print(f"  {name:28s} GAE {row.gae['gae']:.3f}  S-n {sum(row.sens) / len(row.sens):.3f}"
                  f"  ins-del {row.insdel['difference']:+.3f}  ({row.seconds:.1f} s)")
        results[model_name] = rows
        test = wilcoxon(rows)
        meta[model_name] = {"accuracy": zm.accuracy, "n_images": len(images),
                            "n_mosaics": len(images) // 4, "wilcoxon": test}
        best = best_other(rows)
        if not figure_done and "abslrp" in gae_results and best is not None:
            curves_figure(model_name, images,
                          [("abslrp", methods["abslrp"][0], gae_results["abslrp"]),
                           (best.method, methods[best.method][0], gae_results[best.method])],
                          args.out / "gae_curves.png")
            figure_done = True

    md = [f"# Paper tables on the digits zoo ({'quick' if args.quick else 'full'} run)", "",
          f"GAE steps {args.steps}, Sensitivity-n {args.n_subsets} subsets per n (pixel "
          f"features), insertion/deletion {args.insertion_steps} steps, zero baseline, seed "
          f"{args.seed}. Best value of each column in bold.", ""]
    for k, (model_name, rows) in enumerate(results.items()):
        m = meta[model_name]
        md += [gae_table(f"digits {model_name}", rows, k + 1, m["n_mosaics"], m["accuracy"]),
               ""]
        test = m["wilcoxon"]
        if test:
            md += [f"Wilcoxon signed-rank (two-sided), per-mosaic GAE, abslrp vs "
                   f"{test['against']}: n = {test['n']}, statistic {test['statistic']:.1f}, "
                   f"p = {test['p']:.3g}; median difference {test['median_diff']:+.3f}, "
                   f"abslrp higher on {test['abslrp_wins']}/{test['n']} mosaics "
                   f"({test['ties']} ties).", ""]
    for k, (model_name, rows) in enumerate(results.items()):
        md += [sens_table(f"digits {model_name}", rows, len(results) + k + 1,
                          meta[model_name]["n_images"]), ""]
    (args.out / "results.md").write_text("\n".join(md))
    (args.out / "results.json").write_text(json.dumps(
        {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
         "models": meta,
         "rows": {m: [r.__dict__ for r in rows] for m, rows in results.items()}}, indent=1))
    if results:
        bar_chart({f"digits {m}": rows for m, rows in results.items()}, args.out / "gae_bars.png")
    print("\n".join(md))
    print(f"\nwrote {args.out}/results.md, results.json, gae_bars.png, gae_curves.png "
          f"in {time.perf_counter() - total:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
