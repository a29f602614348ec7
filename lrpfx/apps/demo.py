"""End-to-end demos. ``python -m lrpfx.apps.demo`` explains real photos with a pretrained
ImageNet CNN (:mod:`lrpfx.apps.demo_photos`); ``--digits`` runs the faster digits demo below.

The digits demo: explain a digits CNN with contrastive absLRP. Run it with::

    python -m lrpfx.apps.demo --digits [--out DIR] [--n 8] [--device cpu]

It trains (first run, a few seconds on CPU) or loads (later runs) the small VGG-style CNN of
:mod:`lrpfx.data.digits`, compiles it with :func:`lrpfx.compile`, explains ``n`` test digits for
their predicted class and for their runner-up class (second-highest logit), and writes
``DIR/heatmaps.png`` (input | map for the predicted class | map for the runner-up) and
``DIR/report.md`` (accuracy, logits, relevance statistics, timings, the forward check). The
report is printed too. Needs the ``demo`` extra (scikit-learn, matplotlib).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

import lrpfx
from lrpfx.apps.viz import save_grid
from lrpfx.data.digits import NUM_CLASSES, cache_path, stroke_mask, train_digits_cnn
from lrpfx.data.photos import PHOTOS

__all__ = ["DemoResult", "main", "pick_examples", "relevance_stats", "run_demo"]


@dataclass
class DemoResult:
    """Everything the demo computed (what :func:`run_demo` returns).

    Attributes
    ----------
    accuracy
        Test accuracy of the model.
    indices
        Indices of the explained examples in the test split.
    inputs, labels
        The explained images ``(n, 1, H, W)`` and their true labels.
    logits
        The model's logits ``(n, 10)``.
    predicted, second
        The predicted class and the runner-up class (second-highest logit) per example.
    maps_predicted, maps_second
        Contrastive absLRP maps for the two classes, shape of ``inputs``, max |R| = 1 each.
    forward_max_abs_diff
        ``max |explainer(x) - model(x)|`` over the whole test split.
    timings
        Seconds per stage.
    stats
        Per-example relevance statistics (see :func:`relevance_stats`), one dict per example.
    report
        The Markdown report.
    weights_path
        The cached weights of the model.
    png_path, report_path
        Files written.
    """

    accuracy: float
    indices: Tensor
    inputs: Tensor
    labels: Tensor
    logits: Tensor
    predicted: Tensor
    second: Tensor
    maps_predicted: Tensor
    maps_second: Tensor
    forward_max_abs_diff: float
    timings: dict[str, float] = field(default_factory=dict)
    stats: list[dict[str, float]] = field(default_factory=list)
    report: str = ""
    weights_path: Path | None = None
    png_path: Path | None = None
    report_path: Path | None = None


def pick_examples(labels: Tensor, n: int) -> Tensor:
    """Indices of ``n`` examples cycling through the classes: the first 0, the first 1, ...,
    the first 9, then the second 0, and so on (deterministic, every class shown when n ≥ 10).

    Parameters
    ----------
    labels
        Labels ``(N,)``.
    n
        How many indices to return (at most ``N``).

    Returns
    -------
    Tensor
        LongTensor of ``min(n, N)`` distinct indices.
    """
    labels = labels.cpu()
    per_class = [torch.nonzero(labels == c).flatten().tolist() for c in range(NUM_CLASSES)]
    chosen: list[int] = []
    rank = 0
    while len(chosen) < min(n, len(labels)):
        for idx in per_class:
            if rank < len(idx) and len(chosen) < n:
                chosen.append(idx[rank])
        rank += 1
    return torch.tensor(chosen, dtype=torch.long)


def relevance_stats(relevance: Tensor, strokes: Tensor) -> dict[str, float]:
    """Where one relevance map puts its mass, relative to the digit's strokes.

    Parameters
    ----------
    relevance
        One map (any shape).
    strokes
        Boolean stroke mask of the same shape (see :func:`lrpfx.data.digits.stroke_mask`).

    Returns
    -------
    dict
        ``pos_on_strokes``: share of the positive relevance that lies on strokes;
        ``neg_on_strokes``: the same for negative relevance; ``stroke_area``: share of pixels
        that are strokes (what a map spread uniformly would score); ``pos_fraction``:
        ``Σ R⁺ / Σ |R|``.
    """
    r = relevance.detach().double().flatten()
    m = strokes.flatten().to(r.device)
    pos, neg = r.clamp(min=0), (-r).clamp(min=0)
    tiny = 1e-30
    return {
        "pos_on_strokes": float(pos[m].sum() / (pos.sum() + tiny)),
        "neg_on_strokes": float(neg[m].sum() / (neg.sum() + tiny)),
        "stroke_area": float(m.double().mean()),
        "pos_fraction": float(pos.sum() / (r.abs().sum() + tiny)),
    }


def _timed(fn, repeats: int = 3) -> tuple[Tensor, float]:  # noqa: ANN001 - private helper
    """Result of ``fn()`` and the median seconds of ``repeats`` calls."""
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def run_demo(
    out_dir: str | os.PathLike = "demo_out",
    n: int = 8,
    device: str | torch.device = "cpu",
    *,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    progress: bool = True,
    num_threads: int | None = 1,
) -> DemoResult:
    """Train or load the digits CNN, explain ``n`` test digits, write the PNG and the report.

    Parameters
    ----------
    out_dir
        Output directory (created); ``heatmaps.png`` and ``report.md`` are written there.
    n
        Number of test digits to explain.
    device
        Torch device for the model and the explanations.
    cache_dir
        Cache of trained weights (default ``$LRPFX_CACHE`` or ``./.cache/lrpfx``).
    seed
        Seed of the data split and the training.
    progress
        Show progress bars.
    num_threads
        CPU threads torch may use during the demo (restored afterwards); None keeps the current
        setting. The default, 1, is the fastest for these tiny tensors: on a busy two-core
        machine two threads made ``explain`` about 50 times slower.

    Returns
    -------
    DemoResult
        Maps, logits, statistics, timings, the report text and the paths written.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        return _run_demo(Path(out_dir), n, device, cache_dir=cache_dir, seed=seed,
                         progress=progress)
    finally:
        torch.set_num_threads(threads)


def _run_demo(
    out: Path,
    n: int,
    device: str | torch.device,
    *,
    cache_dir: str | os.PathLike | None,
    seed: int,
    progress: bool,
) -> DemoResult:
    from tqdm.auto import tqdm

    timings: dict[str, float] = {}
    stages = tqdm(total=4, desc="demo", unit="stage", disable=not progress, leave=False)

    weights = cache_path("vgg", cache_dir=cache_dir, seed=seed)
    was_cached = weights.is_file()
    stages.set_postfix_str("load model" if was_cached else "train model")
    start = time.perf_counter()
    model, (x_test, y_test), acc = train_digits_cnn(cache_dir=cache_dir, seed=seed,
                                                    device=device, progress=progress)
    stage = "load data and cached model" if was_cached else "load data and train model"
    timings[stage] = time.perf_counter() - start
    stages.update()

    stages.set_postfix_str("compile")
    idx = pick_examples(y_test, n).to(y_test.device)
    x, y = x_test[idx], y_test[idx]
    start = time.perf_counter()
    explainer = lrpfx.compile(model, example_inputs=(x,))
    timings["lrpfx.compile (capture + rewrite)"] = time.perf_counter() - start
    with torch.no_grad():
        logits = model(x)
        compiled_logits = explainer(x)
        diff = float((compiled_logits - logits).abs().max())
        # the same check on the whole test split (another batch size: a second capture at most)
        diff = max(diff, float((explainer(x_test) - model(x_test)).abs().max()))
    stages.update()

    stages.set_postfix_str("explain")
    top2 = logits.topk(2, dim=1)
    predicted, second = top2.indices[:, 0], top2.indices[:, 1]
    explainer.explain(x, predicted)  # warm-up: the first backward pass is slower
    maps_pred, t_pred = _timed(lambda: explainer.explain(x, predicted))
    maps_second, t_second = _timed(lambda: explainer.explain(x, second))
    timings[f"explain, predicted class (batch of {len(x)}, median of 3)"] = t_pred
    timings[f"explain, runner-up class (batch of {len(x)}, median of 3)"] = t_second
    stages.update()

    stages.set_postfix_str("write")
    strokes = stroke_mask(x)
    stats = []
    for b in range(len(x)):
        sp = relevance_stats(maps_pred[b], strokes[b])
        ss = relevance_stats(maps_second[b], strokes[b])
        cos = torch.nn.functional.cosine_similarity(
            maps_pred[b].flatten().double(), maps_second[b].flatten().double(), dim=0)
        stats.append({**{f"pred_{k}": v for k, v in sp.items()},
                      **{f"second_{k}": v for k, v in ss.items()}, "cosine": float(cos)})

    out.mkdir(parents=True, exist_ok=True)
    lg = logits.detach().cpu()
    titles = [[f"true {int(y[b])}", f"pred {int(predicted[b])} ({lg[b, predicted[b]]:.1f})",
               f"2nd {int(second[b])} ({lg[b, second[b]]:.1f})"] for b in range(len(x))]
    png = save_grid(x, [maps_pred, maps_second], out / "heatmaps.png", titles=titles,
                    column_titles=["input", "predicted class", "runner-up class"])
    result = DemoResult(
        accuracy=acc, indices=idx.cpu(), inputs=x.detach().cpu(), labels=y.cpu(), logits=lg,
        predicted=predicted.cpu(), second=second.cpu(), maps_predicted=maps_pred.detach().cpu(),
        maps_second=maps_second.detach().cpu(), forward_max_abs_diff=diff, timings=timings,
        stats=stats, png_path=png, weights_path=weights)
    result.report = _report(result, model, n_test=len(y_test), device=str(device))
    result.report_path = out / "report.md"
    result.report_path.write_text(result.report, encoding="utf-8")
    stages.update()
    stages.close()
    return result


def _report(r: DemoResult, model: nn.Module, *, n_test: int, device: str) -> str:
    n_params = sum(p.numel() for p in model.parameters())
    correct = round(r.accuracy * n_test)
    shape = "×".join(str(s) for s in r.inputs.shape[1:])
    lines = [
        "# lrpfx demo: contrastive absLRP on scikit-learn digits",
        "",
        f"- Model: small VGG-style CNN (`lrpfx.data.digits.digits_vgg`, {n_params:,} parameters), "
        f"input {shape}, device `{device}`; weights `{r.weights_path}`.",
        f"- Test accuracy: **{r.accuracy:.4f}** ({correct}/{n_test} test digits).",
        f"- Forward check: max |explainer(x) − model(x)| = {r.forward_max_abs_diff:.3g} "
        f"over the {n_test} test digits "
        f"({'OK' if r.forward_max_abs_diff <= 1e-5 else 'MISMATCH'}).",
        "- Maps: `explainer.explain(x, target)` (contrastive absLRP, per-example max |R| = 1); "
        "red = evidence for the class, blue = evidence against it.",
        "",
        "## Examples",
        "",
        "Logits in brackets. *On strokes* is the share of the map's positive relevance that lies "
        "on the digit's strokes (ink > 0.25); *area* is the strokes' share of the pixels (what a "
        "uniform map would score). *cos* is the cosine similarity of the two maps.",
        "",
        "| # | test idx | true | predicted | runner-up | on strokes (pred) "
        "| on strokes (runner-up) | area | cos |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for b, s in enumerate(r.stats):
        p, q = int(r.predicted[b]), int(r.second[b])
        lines.append(
            f"| {b} | {int(r.indices[b])} | {int(r.labels[b])} | {p} ({r.logits[b, p]:.2f}) "
            f"| {q} ({r.logits[b, q]:.2f}) | {s['pred_pos_on_strokes']:.2f} "
            f"| {s['second_pos_on_strokes']:.2f} | {s['pred_stroke_area']:.2f} "
            f"| {s['cosine']:+.2f} |")

    def mean(key: str) -> float:
        return statistics.fmean(s[key] for s in r.stats)

    lines += [
        "",
        "## Relevance statistics (means over the examples)",
        "",
        f"- Share of positive relevance on strokes: {mean('pred_pos_on_strokes'):.2f} for the "
        f"predicted class, {mean('second_pos_on_strokes'):.2f} for the runner-up; the strokes "
        f"cover {mean('pred_stroke_area'):.2f} of the pixels.",
        f"- Share of negative relevance on strokes: {mean('pred_neg_on_strokes'):.2f} "
        f"(predicted), {mean('second_neg_on_strokes'):.2f} (runner-up).",
        f"- Positive part of the total |R|: {mean('pred_pos_fraction'):.2f} (predicted), "
        f"{mean('second_pos_fraction'):.2f} (runner-up).",
        f"- Cosine similarity between the predicted-class and runner-up maps: mean "
        f"{mean('cosine'):+.2f}, from {min(s['cosine'] for s in r.stats):+.2f} "
        f"to {max(s['cosine'] for s in r.stats):+.2f}.",
        f"- All maps finite: "
        f"{bool(torch.isfinite(r.maps_predicted).all() and torch.isfinite(r.maps_second).all())}.",
        "",
        "## Runtime",
        "",
    ]
    lines += [f"- {name}: {sec * 1000:.1f} ms" if sec < 1 else f"- {name}: {sec:.2f} s"
              for name, sec in r.timings.items()]
    lines += ["", "## Files", "", "- `heatmaps.png`: input | predicted class | runner-up class", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point of ``python -m lrpfx.apps.demo``.

    Without ``--digits``: the photo demo (:mod:`lrpfx.apps.demo_photos`, pretrained
    EfficientNet-Lite0 on scikit-image's photos). With ``--digits``: the faster digits demo.

    Parameters
    ----------
    argv
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status (0; 2 when the photo demo's packages are missing).
    """
    parser = argparse.ArgumentParser(
        prog="python -m lrpfx.apps.demo",
        description="Explain real photos with a pretrained ImageNet CNN (EfficientNet-Lite0) "
                    "and contrastive absLRP; write photos.png and report.md. With --digits: "
                    "explain a small digits CNN trained on the spot; write heatmaps.png and "
                    "report.md.")
    parser.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    parser.add_argument("--digits", action="store_true",
                        help="the digits demo instead of the photos (faster, no pretrained model)")
    parser.add_argument("--photos", default=",".join(PHOTOS),
                        help="comma-separated scikit-image photos (default: %(default)s)")
    parser.add_argument("--n", type=int, default=8,
                        help="--digits: number of test digits (default: 8)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--cache-dir", default=None,
                        help="--digits: cache of trained weights (default: $LRPFX_CACHE or "
                             "./.cache/lrpfx)")
    parser.add_argument("--seed", type=int, default=0,
                        help="--digits: data split and training seed")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch (default: 1; 0: torch's default). One thread "
                             "is fastest for the digits model, and on a busy machine it also "
                             "is for the photos: on 2 shared cores, 2 threads made the photo "
                             "explanations 13x slower (147 s vs 11.6 s)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    if args.digits:
        result = run_demo(args.out, n=args.n, device=args.device, cache_dir=args.cache_dir,
                          seed=args.seed, progress=not args.no_progress,
                          num_threads=args.threads or None)
        print(result.report)
        print(f"wrote {result.png_path}")
        print(f"wrote {result.report_path}")
        return 0
    from lrpfx.apps.demo_photos import run_photo_demo
    from lrpfx.data.models import ModelLoadError

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        photo = run_photo_demo(args.out, photos=[p for p in args.photos.split(",") if p],
                               device=args.device, progress=not args.no_progress)
    except ModelLoadError as e:
        print(f"lrpfx demo: {e} (or run the digits demo: --digits)", file=sys.stderr)
        return 2
    print(photo.report)
    print(f"wrote {photo.png_path}")
    print(f"wrote {photo.report_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
