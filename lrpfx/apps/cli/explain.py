"""``lrpfx explain``: heatmaps (PNG) and a JSON + Markdown summary for images."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import lrpfx
from lrpfx.apps.cli.common import (
    class_scores_of,
    compile_model,
    finite_maps,
    load_image_model,
    run_model,
)
from lrpfx.apps.cli.errors import CLIError, ExplainError, first_line
from lrpfx.apps.cli.options import add_model_args, at_least, parse_rule_options, parse_target
from lrpfx.apps.cli.output import (
    check_out_dir,
    class_name,
    label,
    map_stats,
    note,
    out_names,
    prob,
    recorded_arguments,
    write_json,
)
from lrpfx.apps.preprocess import check_image, find_images, load_image

__all__ = ["register", "run"]


def register(sub: Any, epilog: str, fmt: type[argparse.HelpFormatter]) -> None:
    """Add the ``explain`` command and its flags."""
    p = sub.add_parser(
        "explain", formatter_class=fmt, epilog=epilog,
        help="heatmaps (PNG) and a JSON + Markdown summary for images",
        description="Explain images: one PNG per image (input, heatmap and overlay for each "
                    "target class), summary.json and summary.md in --out.")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files or folders (searched recursively)")
    add_model_args(p)
    p.add_argument("--target", "-t", default="top1",
                   help="top1 (default), topK, a class index or a class name")
    p.add_argument("--out", "-o", default="lrpfx_out", help="output folder (default: lrpfx_out)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    p.add_argument("--batch-size", "-b", type=at_least(1), default=8,
                   help="images per batch (8)")
    p.add_argument("--positive-only", action="store_true",
                   help="the target's positive map instead of the contrastive one")
    p.add_argument("--shared-scale", action="store_true",
                   help="one colour scale for all maps of an image (compare targets)")
    p.add_argument("--style", choices=("both", "heatmap", "overlay"), default="both",
                   help="panels after the input: heatmap and overlay (default), or one")
    p.add_argument("--save-maps", action="store_true",
                   help="also write each image's raw maps as NAME.npy, shape (targets, C, H, W)")
    p.add_argument("--quiet", "-q", action="store_true",
                   help="no progress bar, no per-image lines")
    p.set_defaults(func=run)


def _targets(mode: str, value: int, scores: torch.Tensor) -> torch.Tensor:
    """The classes to explain, ``(K, B)``."""
    n_classes = scores.shape[1]
    if mode == "top":
        if value > n_classes:
            raise CLIError(f"--target top{value}: the model has only {n_classes} classes")
        return scores.topk(value, dim=1).indices.T
    if not 0 <= value < n_classes:
        raise CLIError(f"--target {value}: out of range, the model has {n_classes} classes "
                       f"(0..{n_classes - 1})")
    return torch.full((1, len(scores)), value, dtype=torch.long, device=scores.device)


def run(args: argparse.Namespace) -> int:
    """Run ``lrpfx explain``; the exit code."""
    from tqdm.auto import tqdm

    from lrpfx.apps.cli.options import resolve_device
    from lrpfx.apps.viz import save_explanation

    device = resolve_device(args.device)
    out_dir = check_out_dir(args.out)
    rule_options = parse_rule_options(args.option)
    try:
        paths = find_images(args.images)
        for p in paths:  # fail before any work: headers only, so this is quick
            check_image(p)
    except ValueError as e:
        raise CLIError(str(e)) from e
    loaded = load_image_model(args)
    if loaded.preprocessor is None:
        raise CLIError(f"{args.model} is not an image model; use lrpfx explain-text")
    mode, value = parse_target(args.target, loaded.labels)
    for msg in loaded.notes:
        note(msg)
    if loaded.random_init:
        note(f"{args.model} has random weights (pass --weights FILE): the maps explain an "
             "untrained model")
    explainer = compile_model(loaded, args).to(device)
    model = loaded.model.to(device)
    contrastive = not args.positive_only
    names = out_names(paths, args.images)
    prep = loaded.preprocessor
    records: list[dict[str, Any]] = []
    start = time.perf_counter()
    bar = tqdm(total=len(paths), unit="image", desc="lrpfx explain",
               disable=True if args.quiet else None)
    for i in range(0, len(paths), args.batch_size):
        chunk = paths[i:i + args.batch_size]
        try:
            x = torch.stack([prep(load_image(p)) for p in chunk]).to(device)
        except ValueError as e:
            raise CLIError(str(e)) from e
        if i == 0:  # the plain model first: a shape it rejects is the user's, not lrpfx's
            run_model(loaded, model, x[:1])
        scores = class_scores_of(run_model(loaded, explainer, x), [str(p) for p in chunk])
        targets = _targets(mode, value, scores)
        if i == 0 and loaded.labels is not None and len(loaded.labels) != scores.shape[1]:
            note(f"{len(loaded.labels)} class names for {scores.shape[1]} outputs: classes "
                 "without a name are shown by index")
        keyword: dict[str, Any] = {loaded.keyword: x} if loaded.keyword else {}
        maps = []
        for t in targets:
            try:  # Hugging Face image models take pixel_values=x, the others x
                parts = (explainer.explain_parts(target=t, negative=contrastive, **keyword)
                         if keyword else explainer.explain_parts(x, target=t,
                                                                 negative=contrastive))
            except ValueError as e:  # no relevance can be defined (lrpfx says why)
                raise ExplainError(f"{chunk[0]}…: {first_line(e)}") from e
            maps.append(finite_maps(parts.contrastive if contrastive else parts.positive,
                                    f"{len(chunk)} image(s) from {chunk[0]}").cpu())
        probs = scores.float().softmax(1).cpu()
        scores = scores.float().cpu()
        targets = targets.cpu()
        out_dir.mkdir(parents=True, exist_ok=True)  # only now: a bad target leaves no folder
        for b, p in enumerate(chunk):
            pred = int(scores[b].argmax())
            png = out_dir / f"{names[i + b]}.png"
            entries, titles = [], []
            for k, t in enumerate(targets[:, b].tolist()):
                name = label(loaded.labels, t)
                entries.append({"target": t, "label": name, "logit": float(scores[b, t]),
                                "probability": float(probs[b, t]),
                                "stats": map_stats(maps[k][b])})
                titles.append(f"{name or 'class ' + str(t)} (p={prob(probs[b, t])})")
            if args.save_maps:  # the raw maps, (K, C, H, W), one per target, as explained
                np.save(out_dir / f"{names[i + b]}.npy",
                        torch.stack([m[b] for m in maps]).float().numpy())
            save_explanation(prep.to_display(x[b].cpu()), [m[b] for m in maps], png,
                             titles=titles, positive_only=args.positive_only,
                             shared_scale=args.shared_scale,
                             panels=("heatmap", "overlay") if args.style == "both"
                             else (args.style,), image_title=p.name)
            records.append({
                "image": str(p), "heatmap": png.name,
                "maps": f"{names[i + b]}.npy" if args.save_maps else None,
                "predicted": {"class": pred, "label": label(loaded.labels, pred),
                              "logit": float(scores[b, pred]),
                              "probability": float(probs[b, pred])},
                "explanations": entries,
            })
            if not args.quiet:
                bar.write(f"{p}: predicted {class_name(loaded.labels, pred)} "
                          f"(p={prob(probs[b, pred])}) -> {png}")
        bar.update(len(chunk))
    bar.close()
    summary = {
        "lrpfx_version": lrpfx.__version__, "command": "explain", "model": args.model,
        "weights": args.weights, "random_init": loaded.random_init, "rule": args.rule,
        "rule_options": rule_options,
        "map": "contrastive" if contrastive else "positive",
        "preprocessing": prep.source, "input_size": list(prep.input_size),
        "mean": list(prep.mean) if prep.mean is not None else None,
        "std": list(prep.std) if prep.std is not None else None,
        "class_names": len(loaded.labels) if loaded.labels is not None else 0,
        "device": str(device), "target": args.target, "seconds": time.perf_counter() - start,
        "arguments": recorded_arguments(args),
        "images": records,
    }
    write_json(out_dir / "summary.json", summary)
    (out_dir / "summary.md").write_text(markdown(summary), encoding="utf-8")
    print(f"explained {len(records)} image(s) in {summary['seconds']:.1f} s; wrote "
          f"{out_dir / 'summary.json'}, {out_dir / 'summary.md'} and {len(records)} PNG(s) "
          f"in {out_dir}")
    return 0


def markdown(summary: dict[str, Any]) -> str:
    """``summary.md``: the settings, then one table row per (image, target)."""
    kind = summary["map"]
    opts = ", ".join(f"{k}={v}" for k, v in summary["rule_options"].items())
    lines = [
        "# lrpfx explain",
        "",
        f"- Model: `{summary['model']}`" + (f", weights `{summary['weights']}`"
                                            if summary["weights"] else
                                            " (random weights)" if summary["random_init"]
                                            else ""),
        f"- Rule: `{summary['rule']}`{f' ({opts})' if opts else ''}, {kind} maps "
        + ("(red: for the target, blue: for the other classes; max |R| = 1 per map)"
           if kind == "contrastive" else "(positive map, unit L1)"),
        f"- Preprocessing: {summary['preprocessing']}, input "
        f"{'×'.join(map(str, summary['input_size']))}; device `{summary['device']}`; "
        f"{len(summary['images'])} image(s) in {summary['seconds']:.1f} s",
        "- Command line options: " + ", ".join(
            f"`{k}={v}`" for k, v in summary["arguments"].items() if k != "images"),
        "",
        "*positive area* is the share of pixels with R > 0; *top 10 %* is the share of Σ |R| "
        "in the 10 % of pixels with the largest |R| (0.1 for a flat map); *centre* is the "
        "(row, column) centre of mass of the positive relevance, as fractions of the height "
        "and width.",
        "",
        "| image | predicted (p) | target (p) | positive area | top 10 % | centre | heatmap |",
        "|---|---|---|---|---|---|---|",
    ]
    for rec in summary["images"]:
        pred = rec["predicted"]
        image = Path(rec["image"]).name
        predicted = f"{pred['label'] or pred['class']} ({prob(pred['probability'])})"
        link = f"[{rec['heatmap']}]({rec['heatmap']})"
        for k, e in enumerate(rec["explanations"]):
            first = k == 0  # one row per target; the image's columns only on its first
            st = e["stats"]
            yx = st.get("positive_centroid_yx")
            centre = f"({yx[0]:.2f}, {yx[1]:.2f})" if yx else "-"
            lines.append(
                f"| {image if first else ''} | {predicted if first else ''} "
                f"| {e['label'] or e['target']} ({prob(e['probability'])}) "
                f"| {st['positive_area']:.2f} | {st['top10pct_share']:.2f} | {centre} "
                f"| {link if first else ''} |")
    return "\n".join(lines) + "\n"
