"""Global Attribution Evaluation (GAE; Vukadin et al., ACM TIST 2024, §3.2; DESIGN.md §6).

GAE scores an attribution method on a set of images by two properties, both computed for one
*positive* image per mosaic of four:

- **local consistency** LC: do the attributions follow what the model does when its input is
  masked? LC averages *robustness* LC_R (the change of the map under MoRF/LeRF masking tracks the
  change of the output) and *faithfulness* LC_F (the map lies where masking matters, as told by
  the input×gradient impact maps of the masking runs);
- **contrastiveness** C: on the mosaic, is the map for the positive image's class inside that
  image's quadrant (and in quadrants of images the model finds similar)?

GAE = LC · C, per mosaic; the paper reports the mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lrpfx.metrics.base import (
    CHANNEL_MODES,
    EPS,
    ExplainFn,
    call_explain,
    check_images,
    check_indices,
    check_int,
    chunks,
    eval_model,
    forward_logits,
    logits_of,
    max_one_eps,
    model_device,
    positive_max_one,
    progress_bar,
    reduce_channels,
    safe_unit_l1,
    unit_l1_eps,
)

__all__ = ["COMPAT_MODES", "MASKING_MODES", "GAEResult", "gae", "make_mosaics"]

MASKING_MODES = ("reference", "cumulative")
"""How MoRF/LeRF masking picks the elements to zero at each step (see :func:`gae`)."""

COMPAT_MODES = (None, "reference")
"""None: GAE as DESIGN.md §6 defines it; ``"reference"``: as the paper's code computes it."""


@dataclass(frozen=True)
class _Convention:
    """The choices where the paper's code and DESIGN.md §6 differ (docs/metrics.md's table)."""

    channels: str  # "sum", "keep", or "broadcast": maps as returned, against C-channel impacts
    masking: str  # MASKING_MODES
    centre: str  # "cross" (two middle rows and columns) or "square" (the 2×2 centre)
    float32_counts: bool  # masked counts int(float32 linspace(1/T, 1, T)[t] · n), not ⌊(t+1)n/T⌋
    stabilised: bool  # + ε in every unit-L1 and max normalisation, maps scaled by max|R| first


@dataclass(frozen=True)
class GAEResult:
    """Per-mosaic GAE components (``M`` mosaics, ``T`` masking steps), on the CPU.

    Attributes
    ----------
    lc_r, lc_f, lc, c, gae
        ``(M,)``: robustness LC_R, faithfulness LC_F, local consistency
        ``LC = max(0, (LC_R + LC_F) / 2)``, contrastiveness C and ``GAE = LC · C``.
    c_raw
        ``(M,)``: contrastiveness before the clamp at 0 (negative where the mosaic's map lies
        mostly on quadrants of other classes).
    morf_outputs, lerf_outputs
        ``(M, T)``: the positive class's logit ``o_t`` at each MoRF / LeRF masking step
        (``t = 0`` is the unmasked image).
    morf_similarity, lerf_similarity
        ``(M, T)``: ``sim_t = 1 − ‖A₀ − A_t‖₁ / (‖A₀‖₁ + ‖A_t‖₁)`` between the map of the
        unmasked image and the map of the image masked for ``t`` steps (``sim_0 = 1``).
    output_diff, similarity_diff
        ``(M, T − 1)``: ``d^o_t = (o^Le_t − o^Mo_t) / o₀`` and ``d^A_t = sim^Le_t − sim^Mo_t``
        for ``t = 1..T−1``, the two curves LC_R compares.
    positive_index, positive_class, positive_quadrant
        ``(M,)``: index of the positive image in ``images``, its predicted class, and its
        quadrant (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right).
    mosaic_index, mosaic_classes, mosaic_probs, quadrant_scores
        ``(M, 4)`` per quadrant: index into ``images``, predicted class, probability of being
        drawn as the positive (also where ``positives`` forced the draw), and the
        contrastiveness score ``S`` of the quadrant.
    """

    lc_r: Tensor
    lc_f: Tensor
    lc: Tensor
    c: Tensor
    gae: Tensor
    c_raw: Tensor
    morf_outputs: Tensor
    lerf_outputs: Tensor
    morf_similarity: Tensor
    lerf_similarity: Tensor
    output_diff: Tensor
    similarity_diff: Tensor
    positive_index: Tensor
    positive_class: Tensor
    positive_quadrant: Tensor
    mosaic_index: Tensor
    mosaic_classes: Tensor
    mosaic_probs: Tensor
    quadrant_scores: Tensor

    @property
    def means(self) -> dict[str, float]:
        """Mean of each score over the mosaics: ``{"lc_r", "lc_f", "lc", "c", "gae"}``."""
        return {k: float(getattr(self, k).mean()) for k in ("lc_r", "lc_f", "lc", "c", "gae")}

    def __len__(self) -> int:
        return len(self.gae)

    def __str__(self) -> str:
        m = self.means
        return (f"GAE {m['gae']:.4f} = LC {m['lc']:.4f} (LC_R {m['lc_r']:.4f}, "
                f"LC_F {m['lc_f']:.4f}) · C {m['c']:.4f}, mean over {len(self)} mosaics")


def make_mosaics(images: Tensor) -> Tensor:
    """Tile each four consecutive images, downscaled ×2, into one mosaic of the original size.

    Image ``4j + q`` of ``images`` ``(4k, C, H, W)`` goes to quadrant ``q`` of mosaic ``j``
    (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right). Downscaling is nearest-neighbour
    (``F.interpolate``'s default, as in the paper's code). Returns ``(k, C, H, W)``.
    """
    n, c, h, w = images.shape
    if n % 4 or h % 2 or w % 2:
        raise ValueError(f"mosaics need a multiple of 4 images of even height and width; "
                         f"got {tuple(images.shape)}")
    small = F.interpolate(images, size=(h // 2, w // 2), mode="nearest")
    # (k, row, col, C, h/2, w/2) -> (k, C, row, h/2, col, w/2)
    return small.reshape(n // 4, 2, 2, c, h // 2, w // 2).permute(0, 3, 1, 4, 2, 5).reshape(
        n // 4, c, h, w)


def gae(
    model: nn.Module,
    explain_fn: ExplainFn,
    images: Tensor,
    *,
    steps: int = 10,
    batch_size: int = 16,
    channels: str | None = None,
    masking: str | None = None,
    compat: str | None = None,
    positives: Tensor | None = None,
    labels: Tensor | None = None,
    shuffle: bool = True,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> GAEResult:
    """Global Attribution Evaluation of ``explain_fn`` on ``model`` (paper §3.2, DESIGN.md §6).

    Images are grouped in fours; each group becomes a mosaic (each image downscaled ×2, one per
    quadrant, :func:`make_mosaics`). Per mosaic, a positive image is drawn with probability
    ``softmax_q(z_mosaic[c_q])``, where ``z_mosaic`` are the mosaic's logits and ``c_q`` the class
    the model predicts for quadrant ``q``'s (full-size) image. For the positive image, with its
    predicted class ``c_p``:

    - *masking*: ``steps = T`` steps of MoRF and of LeRF. At step ``t`` (``t = 0..T−1``), with
      ``o_t`` the logit of ``c_p``: the impact map is ``|x_t ⊙ ∂|o_t|/∂x_t|`` scaled to unit L1;
      ``o_t`` and the impact map are recorded; then (except at the last step) the
      ``⌊(t+1)·n/T⌋`` input elements (of ``n = C·H·W``) with the highest (MoRF) or lowest (LeRF)
      impact are set to 0, in the already masked ``x_t``, by the impact map of ``x_t``
      (``masking`` says how elements zeroed at earlier steps count).
    - *robustness*: ``LC_R = 1 − 2‖d^o − d^A‖₁ / (‖d^o‖₁ + ‖d^A‖₁)`` with
      ``d^o_t = (o^Le_t − o^Mo_t) / o₀`` and ``d^A_t = sim^Le_t − sim^Mo_t``, ``t = 1..T−1``,
      ``sim_t = 1 − ‖A₀ − A_t‖₁ / (‖A₀‖₁ + ‖A_t‖₁)``, ``A_t`` the map of the masked ``x_t``.
    - *faithfulness*: ``LC_F = Σ(A₀ ⊙ I_c) / ΣA₀`` with
      ``I_c = sign(unitL1(Σ_t impact^Le_t) − unitL1(Σ_t impact^Mo_t))``.
    - ``LC = max(0, (LC_R + LC_F) / 2)``.
    - *contrastiveness*: ``C = max(0, Σ(A_mosaic ⊙ S) / ΣA_mosaic)``, ``A_mosaic`` the map of
      the mosaic for class ``c_p``, ``S`` the score map: 1 in the positive quadrant,
      ``2·s_p[c_q] / s_p[c_p] − 1`` in quadrant ``q`` (``s_p`` = softmax of the positive
      image's logits), and 1 on the mosaic's centre lines (the two middle rows and the two
      middle columns).
    - ``GAE = LC · C``.

    Every map ``A`` is the positive part of ``explain_fn``'s output scaled to max 1 (all-zero
    maps stay zero), taken after the channel reduction below. ``ε = 1e-9`` stabilises the
    divisions as in the paper's code. ``compat="reference"`` computes what the paper's code
    computes instead, where the two differ (see ``compat``).

    Parameters
    ----------
    model
        Classifier ``(B, C, H, W) -> (B, K)`` logits; GAE runs on its device, in eval mode (a
        model in training mode is evaluated through an eval-mode copy; it is never changed).
        It must be differentiable with respect to its input (the impact maps are
        input×gradient) and take mosaics of the images' size.
    explain_fn
        ``explain_fn(x, target) -> map`` for ``x`` ``(B, C, H, W)`` on the model's device and
        ``target`` a LongTensor ``(B,)``; the map has shape ``(B, C, H, W)``, ``(B, 1, H, W)``
        or ``(B, H, W)`` and must be finite. For lrpfx: ``lrpfx.compile(model).explain``. It is
        called once per batch on at most ``batch_size · steps / 2`` images (the positives, their
        mosaics and every masked copy; lower ``batch_size`` if that does not fit in memory), and
        must treat each example on its own: a blank (all-zero) masked copy is explained once
        per positive and its map reused at every step where it occurs.
    images
        ``(N, C, H, W)``, finite, with even ``H`` and ``W``; ``N ≥ 4``. ``N mod 4`` images (the
        last ones after shuffling) are left out.
    steps
        ``T``, masking steps (an integer, at least 2; the paper uses 10).
    batch_size
        Images per batch (a multiple of 4): each batch of ``4k`` images forms ``k`` mosaics.
        Results do not depend on it.
    channels
        How maps and impact maps with several channels are compared: ``"sum"`` (the default)
        sums each over channels first, so faithfulness, robustness and contrastiveness are
        measured per pixel; ``"keep"`` compares element by element (maps with one channel are
        repeated over the image's channels). Masking always works on input elements. For
        one-channel images both agree.
    masking
        ``"reference"`` (the default) does what the paper's code does: the top (MoRF) or bottom
        (LeRF) ``⌊(t+1)·n/T⌋`` elements of the current impact map are zeroed. Zeroed elements
        have impact 0, so LeRF re-selects them and its masked total is ``(t+1)/T``, while MoRF
        selects new elements each time and its total grows as ``1/T, 3/T, 6/T, ...`` (with
        ``T = 10`` the MoRF input is blank from about step 4 on). ``"cumulative"`` keeps zeroed
        elements in the selection, so after step ``t`` exactly ``⌊(t+1)·n/T⌋`` elements are
        zero in both runs, the new ones picked by the current impact map.
    compat
        None (default): GAE as above. ``"reference"``: what the paper's code
        (``abslrp_gae/gae/gae.py``, commit 130e4e1) computes at batch size 4, to 1e-6 (tested
        against its own numbers): only the 2×2 centre square of the score map counts as
        positive; masked counts are ``int(float32(linspace(1/T, 1, T)[t]) · n)`` (127 instead
        of 128 of 256 at ``t = 4``); maps are compared element by element as ``explain_fn``
        returns them (a one-channel map against ``C``-channel impact and score maps, as the
        code broadcasts it); every normalisation adds ε, maps are first scaled by ``max|R|``.
        It fixes ``channels`` and ``masking`` (leave them out). Pass ``labels`` to use dataset
        labels in the score map as the code does (default: the predictions) and ``positives``
        to replace its random draw. Mosaics are always consecutive images (the code's
        strided mosaics at batch size > 4 are a bug). docs/metrics.md lists every difference.
    positives
        ``(M,)`` the positive quadrant (0..3) of each of the ``M = ⌊N/4⌋`` mosaics, in the order
        the mosaics are formed (use ``shuffle=False``), instead of drawing it; ``mosaic_probs``
        still reports the probabilities.
    labels
        ``(N,)`` class labels of ``images``: the score map compares the quadrants' labels, as
        the paper's code does, instead of the predicted classes. The positive's target is its
        predicted class either way.
    shuffle
        Group the images into mosaics in a random order drawn from ``generator`` (the paper's
        code shuffles its data set) instead of the given order.
    generator
        Random generator for the shuffle and for drawing the positives (any device); results
        are deterministic for a given generator state. None uses torch's global generator.
    progress
        Show a tqdm progress bar.

    Returns
    -------
    GAEResult
        Per-mosaic components and curves, and ``.means``.

    Notes
    -----
    Where DESIGN.md leaves room, the paper's code decides. Without ``compat``, four choices
    differ from it: (1) mosaics are formed from consecutive images and the positive is drawn
    among that same mosaic's images (the paper's code builds mosaics from strided images but
    draws from consecutive ones); (2) the score map uses the *predicted* classes, as DESIGN.md
    says (the code uses labels); (3) the centre lines are the full two-pixel-wide cross (the
    code sets only the 2×2 centre); (4) the masked counts are exact integers ``⌊(t+1)·n/T⌋``
    rather than ``int`` of a float32 fraction.
    """
    check_images(images)
    if compat not in COMPAT_MODES:
        raise ValueError(f"unknown compat {compat!r}; use one of {COMPAT_MODES}")
    if compat == "reference":
        if channels is not None or masking is not None:
            raise ValueError("compat='reference' compares channels and masks as the paper's code "
                             "does; leave channels and masking out")
        conv = _Convention("broadcast", "reference", "square", True, True)
    else:
        channels = "sum" if channels is None else channels
        masking = "reference" if masking is None else masking
        if channels not in CHANNEL_MODES:
            raise ValueError(f"unknown channels mode {channels!r}; use one of {CHANNEL_MODES}")
        if masking not in MASKING_MODES:
            raise ValueError(f"unknown masking mode {masking!r}; use one of {MASKING_MODES}")
        conv = _Convention(channels, masking, "cross", False, False)
    steps = check_int(steps, "steps", 2)  # GAE compares masked with unmasked
    batch_size = check_int(batch_size, "batch_size", 4)
    if batch_size % 4:
        raise ValueError(f"batch_size must be a positive multiple of 4, got {batch_size}")
    n_images, _, h, w = images.shape
    if n_images < 4 or h % 2 or w % 2:
        raise ValueError(f"GAE needs at least 4 images of even height and width; "
                         f"got {tuple(images.shape)}")
    used = n_images - n_images % 4
    positives = check_indices(positives, "positives", (used // 4,), 4)
    labels = check_indices(labels, "labels", (n_images,), None)
    model = eval_model(model)
    device = model_device(model, images.device)
    if shuffle:
        gen_device = generator.device if generator is not None else torch.device("cpu")
        order = torch.randperm(n_images, generator=generator, device=gen_device).cpu()[:used]
    else:
        order = torch.arange(used)

    parts: list[dict[str, Tensor]] = []
    with progress_bar(used, "GAE", progress) as bar:
        for sl in chunks(used, batch_size):
            index = order[sl]
            forced = None if positives is None else positives[sl.start // 4:sl.stop // 4]
            part = _gae_batch(model, explain_fn, images[index].to(device), steps=steps,
                              conv=conv, generator=generator, positives=forced,
                              labels=None if labels is None else labels[index])
            mosaic_index = index.reshape(-1, 4)
            part["mosaic_index"] = mosaic_index
            part["positive_index"] = mosaic_index.gather(
                1, part["positive_quadrant"][:, None]).squeeze(1)
            parts.append(part)
            bar.update(len(index))
    return GAEResult(**{f.name: torch.cat([p[f.name] for p in parts]) for f in fields(GAEResult)})


def _gae_batch(
    model: nn.Module,
    explain_fn: ExplainFn,
    x: Tensor,
    *,
    steps: int,
    conv: _Convention,
    generator: torch.Generator | None,
    positives: Tensor | None,
    labels: Tensor | None,
) -> dict[str, Tensor]:
    """GAE of one batch of ``4k`` images (``k`` mosaics), vectorised over the mosaics."""
    n, c, h, w = x.shape
    k = n // 4
    rows = torch.arange(k, device=x.device)
    logits = forward_logits(model, x)
    pred = logits.argmax(1)
    mosaics = make_mosaics(x)
    mosaic_logits = forward_logits(model, mosaics)

    # the positive: softmax over the mosaic's logits at its four images' predicted classes
    classes = pred.reshape(k, 4)
    probs = mosaic_logits.gather(1, classes).double().softmax(1)
    if positives is None:
        sample_device = generator.device if generator is not None else probs.device
        quadrant = torch.multinomial(probs.to(sample_device), 1, generator=generator)
        quadrant = quadrant.squeeze(1).to(x.device)
    else:
        quadrant = positives.to(x.device)
    positive = 4 * rows + quadrant
    xp, cp = x[positive], pred[positive]

    # score map S: 2·s_p[c_q]/s_p[c_p] − 1 per quadrant (1 in the positive one), c = labels
    # where given
    named = classes if labels is None else labels.to(x.device).reshape(k, 4)
    sp = logits[positive].double().softmax(1)
    scores = 2 * sp.gather(1, named) / sp.gather(1, named[rows, quadrant][:, None]) - 1
    scores[rows, quadrant] = 1.0

    outputs, summed_impact, masked = _masking(model, xp, cp, steps, conv)

    # every map of the batch in one call: positives, mosaics, then MoRF and LeRF copies per step
    a0, a_mosaic, a_copies = _maps(explain_fn, xp, cp, mosaics, torch.cat(masked), conv)
    a_steps = a_copies.reshape(steps - 1, 2, k, *a_copies.shape[1:])

    # robustness
    sim_morf = torch.cat([_similarity(a0, a0)[None], _similarity(a0[None], a_steps[:, 0])]).T
    sim_lerf = torch.cat([_similarity(a0, a0)[None], _similarity(a0[None], a_steps[:, 1])]).T
    o_morf, o_lerf = outputs[:, :k].T, outputs[:, k:].T
    o_0 = o_morf[:, :1] + EPS
    d_o = o_lerf[:, 1:] / o_0 - o_morf[:, 1:] / o_0
    d_a = sim_lerf[:, 1:] - sim_morf[:, 1:]
    lc_r = 1 - 2 * (d_o - d_a).abs().sum(1) / (d_o.abs().sum(1) + d_a.abs().sum(1) + EPS)

    # faithfulness (a one-channel map broadcasts over C-channel impacts in "broadcast" mode)
    impact = summed_impact if conv.channels == "broadcast" else reduce_channels(
        summed_impact, c, conv.channels)
    unit = unit_l1_eps if conv.stabilised else safe_unit_l1
    combined = torch.sign(unit(impact[k:]) - unit(impact[:k]))
    lc_f = (a0 * combined).flatten(1).sum(1) / (a0.flatten(1).sum(1) + EPS)
    lc = ((lc_r + lc_f) / 2).clamp(min=0)

    # contrastiveness (the paper's code builds its score map with the image's C channels)
    score_map = _score_map(scores, h, w, conv.centre)
    if conv.channels == "broadcast":
        score_map = score_map.expand(-1, c, -1, -1)
    c_raw = (a_mosaic * score_map).flatten(1).sum(1) / (a_mosaic.flatten(1).sum(1) + EPS)
    contrast = c_raw.clamp(min=0)

    out = {
        "lc_r": lc_r, "lc_f": lc_f, "lc": lc, "c": contrast, "gae": lc * contrast,
        "c_raw": c_raw, "morf_outputs": o_morf, "lerf_outputs": o_lerf,
        "morf_similarity": sim_morf, "lerf_similarity": sim_lerf,
        "output_diff": d_o, "similarity_diff": d_a,
        "positive_class": cp, "positive_quadrant": quadrant,
        "mosaic_classes": classes, "mosaic_probs": probs, "quadrant_scores": scores,
    }
    return {name: t.detach().cpu() for name, t in out.items()}


def _maps(explain_fn: ExplainFn, xp: Tensor, cp: Tensor, mosaics: Tensor, copies: Tensor,
          conv: _Convention) -> tuple[Tensor, Tensor, Tensor]:
    """Maps (positive part, max 1) of the positives, their mosaics and the masked copies (``k``
    positives, ``copies`` in blocks of ``k``), from one ``explain_fn`` call.

    A blank (all-zero) copy is the same image for every step it occurs at, so it is explained
    once per positive instead of once per step: with the reference masking and ``T = 10``,
    MoRF blanks the input from about step 4 on, about a quarter of all maps.
    """
    k = len(xp)
    owner = torch.arange(k, device=xp.device).repeat(len(copies) // k)
    blank = (copies.flatten(1) == 0).all(1)
    if blank.any():
        kept = copies[~blank]
        batch = torch.cat([xp, mosaics, kept, torch.zeros_like(xp)])
        targets = torch.cat([cp, cp, cp[owner[~blank]], cp])
    else:
        batch, targets = torch.cat([xp, mosaics, copies]), cp.repeat(2 + len(copies) // k)
    maps = call_explain(explain_fn, batch, targets).double()
    if conv.channels != "broadcast":
        maps = reduce_channels(maps, xp.shape[1], conv.channels)
    if conv.stabilised:  # the code's RelevancyMethod scales by max|R|, GAE then takes R⁺ / max
        maps = max_one_eps(max_one_eps(maps).clamp(min=0))
    else:
        maps = positive_max_one(maps)
    if blank.any():
        a_copies = maps.new_empty((len(copies), *maps.shape[1:]))
        a_copies[~blank] = maps[2 * k:2 * k + len(kept)]
        a_copies[blank] = maps[2 * k + len(kept):][owner[blank]]
    else:
        a_copies = maps[2 * k:]
    return maps[:k], maps[k:2 * k], a_copies


def _masking(model: nn.Module, xp: Tensor, cp: Tensor, steps: int, conv: _Convention
             ) -> tuple[Tensor, Tensor, list[Tensor]]:
    """MoRF and LeRF masking of the positives, both in one batch of ``2k``.

    Returns the positive logit at each step ``(T, 2k)`` (MoRF rows first), the impact maps summed
    over the steps ``(2k, C, H, W)`` (float64) and the inputs of steps ``1..T−1``, each
    ``(2k, C, H, W)``. A row whose input is blank (all zero) stays blank: its output is computed
    once and reused, and its impact map is 0 (``|x ⊙ ∂o/∂x|`` with ``x = 0``).
    """
    k = xp.shape[0]
    cur = torch.cat([xp, xp]).detach()
    target = torch.cat([cp, cp])[:, None]
    n_elements = cur[0].numel()
    counts = _mask_counts(n_elements, steps, conv.float32_counts)
    cumulative = conv.masking == "cumulative"
    unit = unit_l1_eps if conv.stabilised else safe_unit_l1
    outputs, masked = [], []
    summed = torch.zeros(cur.shape, dtype=torch.float64, device=cur.device)
    zeroed = torch.zeros(cur.shape[0], n_elements, dtype=torch.bool, device=cur.device)
    done = torch.zeros(cur.shape[0], dtype=torch.bool, device=cur.device)  # blank, output known
    o = torch.zeros(cur.shape[0], dtype=torch.float64, device=cur.device)
    for t in range(steps):
        if t > 0:
            masked.append(cur)
        live = (~done).nonzero().squeeze(1)
        impact = torch.zeros(cur.shape[0], n_elements, dtype=cur.dtype, device=cur.device)
        if len(live):
            with torch.enable_grad():
                xg = cur[live].detach().requires_grad_(True)
                o_live = logits_of(model(xg)).gather(1, target[live]).squeeze(1)
                (grad,) = torch.autograd.grad(o_live.abs().sum(), xg)
            impact[live] = unit((xg.detach() * grad).abs().flatten(1))
            o = o.clone()
            o[live] = o_live.detach().double()
        outputs.append(o)
        summed += impact.reshape(cur.shape)
        done = done | (cur.flatten(1) == 0).all(1)
        if t + 1 < steps and counts[t] > 0:
            # MoRF takes the largest impacts, LeRF the smallest (topk as the paper's code calls
            # it, so ties break alike); "cumulative" ranks the elements zeroed so far first
            key_mo, key_le = impact[:k], impact[k:]
            if cumulative:
                key_mo = key_mo.masked_fill(zeroed[:k], math.inf)
                key_le = key_le.masked_fill(zeroed[k:], -math.inf)
            idx = torch.cat([key_mo.topk(counts[t], dim=1, largest=True).indices,
                             key_le.topk(counts[t], dim=1, largest=False).indices])
            zeroed = zeroed.scatter(1, idx, True)
            cur = cur.flatten(1).scatter(1, idx, 0.0).reshape(cur.shape)
    return torch.stack(outputs), summed, masked


def _mask_counts(n: int, steps: int, float32: bool) -> list[int]:
    """Elements masked after step ``t = 0..T−1``: ``⌊(t+1)·n/T⌋``, or as the paper's code
    counts them, ``int`` of the float32 product ``linspace(1/T, 1, T)[t] · n``."""
    if not float32:
        return [(t + 1) * n // steps for t in range(steps)]
    fractions = torch.linspace(1 / steps, 1, steps, dtype=torch.float32)
    return [int(f * n) for f in fractions]


def _similarity(a: Tensor, b: Tensor) -> Tensor:
    """``1 − ‖a − b‖₁ / (‖a‖₁ + ‖b‖₁ + ε)`` over the last three dimensions."""
    dims = (-3, -2, -1)
    return 1 - (a - b).abs().sum(dims) / (a.abs().sum(dims) + b.abs().sum(dims) + EPS)


def _score_map(scores: Tensor, h: int, w: int, centre: str) -> Tensor:
    """``(k, 1, H, W)`` map of the per-quadrant ``scores`` ``(k, 4)`` with the centre set to 1:
    the two middle rows and columns (``"cross"``) or only the 2×2 centre (``"square"``)."""
    k = scores.shape[0]
    s = scores.reshape(k, 1, 2, 2).repeat_interleave(h // 2, 2).repeat_interleave(w // 2, 3)
    s = s.clone()
    rows, cols = slice(h // 2 - 1, h // 2 + 1), slice(w // 2 - 1, w // 2 + 1)
    if centre == "square":
        s[:, :, rows, cols] = 1.0
    else:
        s[:, :, rows, :] = 1.0
        s[:, :, :, cols] = 1.0
    return s
