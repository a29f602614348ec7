"""The metrics (lrpfx.metrics) on hand-built cases with known answers, plus a slow per-sample
oracle of GAE written from DESIGN.md §6 and compared with the batched implementation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import lrpfx
from lrpfx.metrics import (
    default_ns,
    gae,
    gaussian_blur,
    insertion_deletion,
    make_mosaics,
    sensitivity_n,
)

# ----------------------------------------------------------------------------- models and maps


class SumModel(nn.Module):
    """Two classes: logit 0 is ``Σx``, logit 1 is ``−Σx`` (so positive images are class 0)."""

    def forward(self, x):
        s = x.flatten(1).sum(1)
        return torch.stack([s, -s], 1)


class ChannelMeanModel(nn.Module):
    """Class ``q``'s logit is ``beta`` times the mean of channel ``q``."""

    def __init__(self, beta: float) -> None:
        super().__init__()
        self.beta = beta

    def forward(self, x):
        return self.beta * x.mean((2, 3))


class LinearModel(nn.Module):
    def __init__(self, shape: tuple[int, int, int], classes: int = 3) -> None:
        super().__init__()
        self.fc = nn.Linear(math.prod(shape), classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


def grad_x_input(model: nn.Module):
    """Gradient×Input of the target logit: ``x ⊙ ∂z_t/∂x``, per example."""

    def fn(x, target):
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            z = model(xg).gather(1, target[:, None]).sum()
            (g,) = torch.autograd.grad(z, xg)
        return xg.detach() * g

    return fn


def two_level_images(n: int, a: float = 2.0, b: float = 1.0, seed: int = 0) -> torch.Tensor:
    """``n`` images ``(1, 4, 4)``: 8 pixels at ``a`` and 8 at ``b``, in a random arrangement."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.tensor([a] * 8 + [b] * 8)
    return torch.stack([base[torch.randperm(16, generator=gen)] for _ in range(n)]).reshape(
        n, 1, 4, 4)


def run_gae(model, fn, images, **kw):
    kw.setdefault("generator", torch.Generator().manual_seed(0))
    return gae(model, fn, images, progress=False, **kw)


# ----------------------------------------------------------------------------- GAE: components
#
# SumModel on two-level images (8 pixels at a = 2, 8 at b = 1), T = 2 steps, n = 16 elements.
# The impact map is ∝ x. Step 0 records o₀ = 8a + 8b = 24; MoRF then zeroes the 8 a-pixels
# (o₁ = 8b = 8), LeRF the 8 b-pixels (o₁ = 8a = 16): d^o = (16 − 8)/24 = 1/3.
# Σ impact: MoRF = m₀ + (1/8 on b), LeRF = m₀ + (1/8 on a), so I_c = +1 on a, −1 on b.
# Every image predicts class 0, so every quadrant scores 1 and C = 1 for any map ≥ 0.


def test_gae_identity_map_closed_form():
    # A = x / max: A₀ = 1 on a, 1/2 on b; A^Mo₁ = 1 on b; A^Le₁ = 1 on a.
    # sim^Mo = 1 − (8 + 4)/(12 + 8) = 0.4, sim^Le = 1 − 4/(12 + 8) = 0.8, d^A = 0.4
    # LC_R = 1 − 2·|1/3 − 0.4|/(1/3 + 0.4) = 9/11; LC_F = (8 − 4)/12 = 1/3; LC = 19/33
    r = run_gae(SumModel(), lambda x, t: x, two_level_images(8), steps=2)
    ones = torch.ones(2, dtype=torch.float64)
    torch.testing.assert_close(r.morf_outputs, ones[:, None] * torch.tensor([24.0, 8.0]).double())
    torch.testing.assert_close(r.lerf_outputs, ones[:, None] * torch.tensor([24.0, 16.0]).double())
    torch.testing.assert_close(r.output_diff, ones[:, None] / 3)
    torch.testing.assert_close(r.morf_similarity[:, 1], 0.4 * ones)
    torch.testing.assert_close(r.lerf_similarity[:, 1], 0.8 * ones)
    torch.testing.assert_close(r.morf_similarity[:, 0], ones)
    torch.testing.assert_close(r.similarity_diff, 0.4 * ones[:, None])
    torch.testing.assert_close(r.lc_r, 9 / 11 * ones)
    torch.testing.assert_close(r.lc_f, 1 / 3 * ones)
    torch.testing.assert_close(r.lc, 19 / 33 * ones)
    torch.testing.assert_close(r.c, ones)
    torch.testing.assert_close(r.gae, 19 / 33 * ones)
    assert r.means["gae"] == pytest.approx(19 / 33)


def test_gae_map_equal_to_combined_impact_gives_faithfulness_one():
    # A = 1 exactly where I_c = +1 (the a-pixels): LC_F = 1. After MoRF the map is all zero
    # (sim 0), after LeRF it is unchanged (sim 1): d^A = 1, LC_R = 1 − 2·(2/3)/(4/3) = 0.
    r = run_gae(SumModel(), lambda x, t: (x > 1.5).to(x.dtype), two_level_images(4), steps=2)
    torch.testing.assert_close(r.lc_f, torch.ones(1, dtype=torch.float64))
    torch.testing.assert_close(r.lc_r, torch.zeros(1, dtype=torch.float64))
    torch.testing.assert_close(r.gae, torch.full((1,), 0.5, dtype=torch.float64))


def test_gae_opposite_map_is_clamped_to_zero():
    # A = 1 on the b-pixels only: LC_F = −1; MoRF keeps the map (sim 1), LeRF empties it
    # (sim 0): d^A = −1 against d^o = 1/3, LC_R = −1; LC = max(0, −1) = 0.
    r = run_gae(SumModel(), lambda x, t: ((x > 0.5) & (x < 1.5)).to(x.dtype),
                two_level_images(4), steps=2)
    torch.testing.assert_close(r.lc_f, -torch.ones(1, dtype=torch.float64))
    torch.testing.assert_close(r.lc_r, -torch.ones(1, dtype=torch.float64))
    assert float(r.lc) == 0.0 and float(r.gae) == 0.0


def test_gae_matching_curves_give_robustness_one():
    # A map worth 1 on a and ρ on b has d^A = (2 − 2ρ)/(2 + ρ); ρ = 4/7 makes it d^o = 1/3.
    rho = 4 / 7

    def fn(x, t):
        return (x > 1.5).to(x.dtype) + rho * ((x > 0.5) & (x < 1.5)).to(x.dtype)

    r = run_gae(SumModel(), fn, two_level_images(4), steps=2)
    torch.testing.assert_close(r.similarity_diff, r.output_diff)
    torch.testing.assert_close(r.lc_r, torch.ones(1, dtype=torch.float64))
    # LC_F = (8 − 8ρ)/(8 + 8ρ) = 3/11
    torch.testing.assert_close(r.lc_f, torch.full((1,), 3 / 11, dtype=torch.float64))


@pytest.mark.parametrize("masking, morf", [("reference", [136, 78, 10, 0]),
                                           ("cumulative", [136, 78, 36, 10])])
def test_gae_masking_modes(masking, morf):
    # pixels 1..16, T = 4: each step zeroes the top/bottom 4, 8, 12 elements of the current
    # impact map (∝ x). Reference MoRF zeroes 16..13, then 12..5 (the zeros have no impact),
    # then everything; cumulative MoRF keeps the zeros in the count: 16..13, 16..9, 16..5.
    # LeRF re-selects its zeros either way: 1..4, 1..8, 1..12.
    gen = torch.Generator().manual_seed(1)
    images = torch.stack([torch.randperm(16, generator=gen) + 1.0 for _ in range(4)])
    r = run_gae(SumModel(), lambda x, t: x, images.reshape(4, 1, 4, 4), steps=4,
                masking=masking)
    torch.testing.assert_close(r.morf_outputs[0], torch.tensor(morf, dtype=torch.float64))
    torch.testing.assert_close(r.lerf_outputs[0],
                               torch.tensor([136, 126, 100, 58], dtype=torch.float64))


def test_gae_channel_modes_agree_on_one_channel():
    images, fn = two_level_images(8), (lambda x, t: x)
    a, b = run_gae(SumModel(), fn, images, channels="sum"), \
        run_gae(SumModel(), fn, images, channels="keep")
    for name in ("lc_r", "lc_f", "c", "gae"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name))


# ChannelMeanModel with beta = ln 2 on 4-channel images: image q is v_q in channel q, 0 elsewhere.
# A mosaic's logit for class q is beta·v_q/4; the positive image's softmax gives
# s_p[c_q]/s_p[c_p] = e^(−beta·v_p), so with v = 1 every negative quadrant scores 2·½ − 1 = 0.


def class_images(values: list[float], size: int = 8) -> torch.Tensor:
    x = torch.zeros(len(values), 4, size, size)
    for i, v in enumerate(values):
        x[i, i % 4] = v
    return x


def test_gae_contrastiveness():
    model = ChannelMeanModel(math.log(2))
    images = class_images([1.0] * 8)
    inside = run_gae(model, lambda x, t: x[torch.arange(len(x)), t], images, steps=2,
                     shuffle=False)
    torch.testing.assert_close(inside.c, torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(inside.mosaic_probs, torch.full((2, 4), 0.25, dtype=torch.float64))
    expected = torch.zeros(2, 4, dtype=torch.float64)
    expected[torch.arange(2), inside.positive_quadrant] = 1.0
    torch.testing.assert_close(inside.quadrant_scores, expected)
    # a uniform map on the 8×8 mosaic: the centre cross (28 pixels) and the positive quadrant's
    # other 9 pixels score 1, the other 27 score 0: C = 37/64
    uniform = run_gae(model, lambda x, t: torch.ones_like(x), images, steps=2, shuffle=False)
    torch.testing.assert_close(uniform.c, torch.full((2,), 37 / 64, dtype=torch.float64))


def test_gae_positive_sampling_distribution():
    beta = 2.0
    values = [1.0, 2.0, 3.0, 4.0]
    model = ChannelMeanModel(beta)
    images = class_images(values * 150, size=4)
    r = run_gae(model, lambda x, t: x.abs(), images, steps=2, batch_size=200, shuffle=False)
    probs = torch.tensor([beta * v / 4 for v in values], dtype=torch.float64).softmax(0)
    torch.testing.assert_close(r.mosaic_probs, probs.expand(150, 4))
    assert torch.equal(r.mosaic_index, torch.arange(600).reshape(150, 4))
    assert torch.equal(r.positive_index, r.mosaic_index[torch.arange(150), r.positive_quadrant])
    freq = torch.bincount(r.positive_quadrant, minlength=4).double() / 150
    assert (freq - probs).abs().max() < 0.12
    # the positive image's logits are beta·v_p at its class and 0 elsewhere, so every other
    # quadrant scores 2·exp(−beta·v_p) − 1
    v = torch.tensor(values, dtype=torch.float64)
    vp = v[r.positive_quadrant][:, None]
    expected = (2 * torch.exp(-beta * vp) - 1).expand(150, 4).clone()
    expected[torch.arange(150), r.positive_quadrant] = 1.0
    torch.testing.assert_close(r.quadrant_scores, expected)


def test_make_mosaics_layout():
    x = torch.arange(4 * 16, dtype=torch.float32).reshape(4, 1, 4, 4)
    m = make_mosaics(x)
    assert m.shape == (1, 1, 4, 4)
    # nearest-neighbour ×2 keeps the top-left pixel of each 2×2 block
    for q in range(4):
        r, c = divmod(q, 2)
        assert torch.equal(m[0, 0, 2 * r:2 * r + 2, 2 * c:2 * c + 2], x[q, 0, ::2, ::2])


# ----------------------------------------------------------------------------- GAE: determinism


class TinyCNN(nn.Module):
    def __init__(self, channels: int = 2, classes: int = 5, act: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.act = act()
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        h = self.act(self.conv1(x))
        h = self.act(self.conv2(h))
        return self.fc(h.mean((2, 3)))


def test_gae_is_deterministic_given_a_generator():
    torch.manual_seed(3)
    model = TinyCNN(channels=3).eval()
    images = torch.randn(16, 3, 8, 8)
    explain = lrpfx.compile(model, frontend="symbolic_trace").explain  # fast to capture
    runs = [gae(model, explain, images, steps=4, batch_size=8, progress=False,
                generator=torch.Generator().manual_seed(s)) for s in (0, 0, 1)]
    for name, value in vars(runs[0]).items():
        assert torch.equal(value, getattr(runs[1], name)), name
    assert not torch.equal(runs[0].mosaic_index, runs[2].mosaic_index)
    assert runs[0].gae.shape == (4,) and torch.isfinite(runs[0].gae).all()
    assert ((runs[0].gae >= 0) & (runs[0].gae <= 1)).all()


# ----------------------------------------------------------------------------- GAE: slow oracle


def _unit_max_pos(a):
    a = a.clamp(min=0)
    return a / a.max() if a.max() > 0 else a


def _sim(a, b):
    return 1 - (a - b).abs().sum() / (a.abs().sum() + b.abs().sum() + 1e-9)


def oracle_gae(model, fn, images, quadrants, steps, channels="sum"):
    """DESIGN.md §6 one mosaic and one image at a time, given the drawn positive quadrant of
    each mosaic; maps and impact maps summed over channels, or ("keep") compared element-wise."""
    reduce = (lambda t: t.sum(0)) if channels == "sum" else (lambda t: t)
    out = {k: [] for k in ("probs", "lc_r", "lc_f", "c", "gae", "o_mo", "o_le")}
    n, _, h, w = images.shape

    def attribution(x, c):
        r = fn(x[None], torch.tensor([c]))[0]
        return _unit_max_pos(reduce(r))

    for j in range(n // 4):
        imgs = images[4 * j:4 * j + 4]
        preds = [int(model(im[None]).argmax()) for im in imgs]
        mosaic = torch.zeros_like(imgs[0])
        for q, im in enumerate(imgs):
            r, c = divmod(q, 2)
            mosaic[:, r * h // 2:(r + 1) * h // 2, c * w // 2:(c + 1) * w // 2] = im[:, ::2, ::2]
        zm = model(mosaic[None])[0].detach()
        probs = torch.stack([zm[p] for p in preds]).softmax(0)
        q = int(quadrants[j])
        x0, cp = imgs[q], preds[q]
        a0 = attribution(x0, cp)
        curves = {}
        for order in ("mo", "le"):
            x, outs, imps, sims = x0.clone(), [], [], [torch.tensor(1.0, dtype=x0.dtype)]
            for t in range(steps):
                if t > 0:
                    sims.append(_sim(a0, attribution(x, cp)))
                xg = x.clone().requires_grad_(True)
                o = model(xg[None])[0, cp]
                (g,) = torch.autograd.grad(o.abs(), xg)
                imp = (xg * g).abs().detach()
                imp = imp / imp.sum() if imp.sum() > 0 else imp  # MoRF can zero everything
                outs.append(o.detach())
                imps.append(imp)
                if t + 1 < steps:
                    k = (t + 1) * x.numel() // steps
                    idx = imp.flatten().argsort(descending=order == "mo")[:k]
                    x = x.clone()
                    x.view(-1)[idx] = 0.0
            curves[order] = (torch.stack(outs), torch.stack(sims), reduce(sum(imps)))
        (o_mo, s_mo, i_mo), (o_le, s_le, i_le) = curves["mo"], curves["le"]
        d_o = (o_le[1:] - o_mo[1:]) / (o_mo[0] + 1e-9)
        d_a = s_le[1:] - s_mo[1:]
        lc_r = 1 - 2 * (d_o - d_a).abs().sum() / (d_o.abs().sum() + d_a.abs().sum() + 1e-9)
        ic = torch.sign(i_le / i_le.sum() - i_mo / i_mo.sum())
        lc_f = (a0 * ic).sum() / (a0.sum() + 1e-9)
        lc = max(0.0, float(lc_r + lc_f) / 2)
        sp = model(x0[None])[0].softmax(0).detach()
        score = torch.ones(h, w, dtype=x0.dtype)
        for qq in range(4):
            r, c = divmod(qq, 2)
            s = 1.0 if qq == q else 2 * sp[preds[qq]] / sp[cp] - 1
            score[r * h // 2:(r + 1) * h // 2, c * w // 2:(c + 1) * w // 2] = s
        score[h // 2 - 1:h // 2 + 1, :] = 1.0
        score[:, w // 2 - 1:w // 2 + 1] = 1.0
        am = attribution(mosaic, cp)
        contrast = max(0.0, float((am * score).sum() / (am.sum() + 1e-9)))
        lc_r, lc_f = lc_r.detach(), lc_f.detach()
        for key, val in (("probs", probs), ("lc_r", lc_r), ("lc_f", lc_f), ("c", contrast),
                         ("gae", lc * contrast), ("o_mo", o_mo), ("o_le", o_le)):
            out[key].append(torch.as_tensor(val, dtype=torch.float64))
    return {k: torch.stack(v) for k, v in out.items()}


class FlatCNN(nn.Module):
    """Smooth (tanh), so no input element has exactly zero gradient and the masking order
    has no ties except among already-zeroed elements; no pooling, so predictions vary."""

    def __init__(self, channels: int = 2, size: int = 6, classes: int = 5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 4, 3, padding=1)
        self.fc = nn.Linear(4 * size * size, classes)
        with torch.no_grad():  # the input, not the bias, decides the class
            self.fc.weight.mul_(4.0)
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


@pytest.mark.parametrize("channels, steps", [("sum", 4), ("keep", 4), ("sum", 10)])
def test_gae_matches_per_sample_oracle(channels, steps):
    # steps=10: MoRF blanks the input from step 5 on (the batched code reuses blank rows)
    torch.manual_seed(7)
    model = FlatCNN().double().eval()
    images = torch.randn(16, 2, 6, 6, dtype=torch.float64)
    fn = grad_x_input(model)
    r = gae(model, fn, images, steps=steps, batch_size=8, shuffle=False, progress=False,
            channels=channels, generator=torch.Generator().manual_seed(0))
    assert len(set(r.mosaic_classes.flatten().tolist())) > 2  # a non-degenerate case
    assert (r.c < 1).any() and (r.lc_f != 0).all() and r.lc_f.abs().max() > 0.1
    if steps == 10:  # 72 elements: MoRF zeroes 7, 21, 42, 70, then all; one output from step 5
        assert (r.morf_outputs[:, 5:] == r.morf_outputs[:, 5:6]).all()
    ref = oracle_gae(model, fn, images, r.positive_quadrant, steps=steps, channels=channels)
    torch.testing.assert_close(r.mosaic_probs, ref["probs"])
    torch.testing.assert_close(r.morf_outputs, ref["o_mo"])
    torch.testing.assert_close(r.lerf_outputs, ref["o_le"])
    for name in ("lc_r", "lc_f", "c", "gae"):
        torch.testing.assert_close(getattr(r, name), ref[name], msg=name)


def test_gae_rejects_bad_arguments():
    model, images = SumModel(), two_level_images(4)
    with pytest.raises(ValueError, match="multiple of 4"):
        gae(model, lambda x, t: x, images, batch_size=6, progress=False)
    with pytest.raises(ValueError, match="even"):
        gae(model, lambda x, t: x, torch.ones(4, 1, 5, 5), progress=False)
    with pytest.raises(ValueError, match="explain_fn returned"):
        gae(model, lambda x, t: x[:, :, :2], images, steps=2, progress=False)


# ----------------------------------------------------------------------------- Sensitivity-n


@pytest.mark.parametrize("feature", [1, 2])
def test_sensitivity_n_linear_gradient_x_input_is_one(feature):
    torch.manual_seed(0)
    model = LinearModel((2, 4, 4)).double()
    images = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    r = sensitivity_n(model, grad_x_input(model), images, n_subsets=20, feature=feature,
                      generator=torch.Generator().manual_seed(0), progress=False, batch_size=32)
    assert r.ns.tolist() == default_ns((4 // feature) ** 2)
    torch.testing.assert_close(r.correlation, torch.ones_like(r.correlation))
    torch.testing.assert_close(r.mean, torch.ones_like(r.mean))


def test_sensitivity_n_known_answers():
    torch.manual_seed(1)
    model = LinearModel((1, 4, 4)).double()
    images = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    gxi = grad_x_input(model)
    kw = dict(ns=[1, 5, 16], n_subsets=16, generator=torch.Generator().manual_seed(0),
              progress=False)
    neg = sensitivity_n(model, lambda x, t: -gxi(x, t), images, **kw).correlation
    torch.testing.assert_close(neg[:, :2], -torch.ones(2, 2, dtype=torch.float64))
    assert torch.isnan(neg[:, 2]).all()  # n = all features: every subset is the same
    # a baseline b: (x − b) ⊙ w is exact, x ⊙ w is not
    b = 0.5
    shifted = sensitivity_n(model, lambda x, t: gxi(x - b, t), images, baseline=b,
                            **kw).correlation
    torch.testing.assert_close(shifted[:, :2], torch.ones(2, 2, dtype=torch.float64))
    plain = sensitivity_n(model, gxi, images, baseline=b, **kw).correlation
    assert (plain[:, 1] < 0.999).all()


def test_sensitivity_n_targets_and_batching():
    torch.manual_seed(2)
    model = TinyCNN(channels=1).double().eval()
    images = torch.randn(5, 1, 4, 4, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 3, 4])
    kw = dict(ns=[2, 6], n_subsets=10, target=target, progress=False)
    a = sensitivity_n(model, grad_x_input(model), images, batch_size=7,
                      generator=torch.Generator().manual_seed(5), **kw)
    assert torch.equal(a.target, target)
    assert a.correlation.shape == (5, 2) and torch.isfinite(a.correlation).all()
    b = sensitivity_n(model, grad_x_input(model), images, batch_size=7,
                      generator=torch.Generator().manual_seed(5), **kw)
    assert torch.equal(a.correlation, b.correlation)


# ----------------------------------------------------------------------------- insertion/deletion
#
# Two classes, logits (Σx − 5, 0): the target probability is sigmoid(Σx − 5). The image
# [[4, 3], [2, 1]] with the map x ranks the pixels 4, 3, 2, 1.


class ThresholdModel(nn.Module):
    def forward(self, x):
        z = x.flatten(1).sum(1) - 5
        return torch.stack([z, torch.zeros_like(z)], 1)


def _sigmoid(z):
    return 1 / (1 + math.exp(-z))


def _trapezoid(ys, xs):
    return sum((xs[i + 1] - xs[i]) * (ys[i] + ys[i + 1]) / 2 for i in range(len(xs) - 1))


IMAGE = torch.tensor([[[[4.0, 3.0], [2.0, 1.0]]]], dtype=torch.float64)


@pytest.mark.parametrize("steps, fractions", [(4, [0, 0.25, 0.5, 0.75, 1]),
                                              (3, [0, 0.25, 0.5, 1])])
def test_insertion_deletion_closed_form(steps, fractions):
    kept = {0: 0, 0.25: 4, 0.5: 7, 0.75: 9, 1: 10}  # sum of the top-ranked pixels
    ins = [_sigmoid(kept[f] - 5) for f in fractions]
    dele = [_sigmoid(10 - kept[f] - 5) for f in fractions]
    r = insertion_deletion(ThresholdModel(), lambda x, t: x, IMAGE, steps=steps, progress=False)
    torch.testing.assert_close(r.fractions, torch.tensor(fractions, dtype=torch.float64))
    torch.testing.assert_close(r.insertion_curve[0], torch.tensor(ins, dtype=torch.float64))
    torch.testing.assert_close(r.deletion_curve[0], torch.tensor(dele, dtype=torch.float64))
    assert float(r.insertion) == pytest.approx(_trapezoid(ins, fractions))
    assert float(r.deletion) == pytest.approx(_trapezoid(dele, fractions))
    assert float(r.difference) == pytest.approx(_trapezoid(ins, fractions)
                                                - _trapezoid(dele, fractions))
    # the reversed ranking inserts 1, 2, 3, 4: worse on both curves
    worse = insertion_deletion(ThresholdModel(), lambda x, t: -x, IMAGE, steps=steps,
                               progress=False)
    assert float(worse.insertion) < float(r.insertion)
    assert float(worse.deletion) > float(r.deletion)
    assert float(worse.difference) < 0 < float(r.difference)


def test_insertion_deletion_batching_target_and_blur():
    torch.manual_seed(4)
    model = TinyCNN(channels=1).double().eval()
    images = torch.randn(5, 1, 4, 4, dtype=torch.float64)
    fn = grad_x_input(model)
    a = insertion_deletion(model, fn, images, steps=5, target=2, progress=False)
    b = insertion_deletion(model, fn, images, steps=5, target=2, batch_size=3, progress=False)
    for name in ("insertion", "deletion", "insertion_curve", "deletion_curve"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name))
    assert torch.equal(a.target, torch.full((5,), 2))
    # both curves start and end at the unperturbed image or the baseline
    probs = model(images).softmax(1)[:, 2]
    base = model(torch.zeros_like(images)).softmax(1)[:, 2]
    torch.testing.assert_close(a.deletion_curve[:, 0], probs)
    torch.testing.assert_close(a.insertion_curve[:, -1], probs)
    torch.testing.assert_close(a.insertion_curve[:, 0], base)
    # a constant image blurs to itself, so with the blur baseline nothing changes
    const = torch.full((2, 1, 4, 4), 0.3, dtype=torch.float64)
    torch.testing.assert_close(gaussian_blur(const), const)
    flat = insertion_deletion(model, fn, const, steps=4, baseline="blur", progress=False)
    p = model(const).softmax(1).max(1).values
    torch.testing.assert_close(flat.insertion, p)
    torch.testing.assert_close(flat.deletion, p)


def test_gaussian_blur_is_normalised_and_smooths():
    x = torch.zeros(1, 2, 9, 9)
    x[0, :, 4, 4] = 1.0
    y = gaussian_blur(x, kernel_size=5, sigma=1.0)
    torch.testing.assert_close(y.sum((2, 3)), torch.ones(1, 2))
    assert y[0, 0, 4, 4] < 1 and y[0, 0, 4, 5] > 0
