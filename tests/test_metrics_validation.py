"""The metrics never touch the user's model (issue 16, item 4) and reject bad arguments with a
ValueError that says what to pass, before any model call (item 12; all checks live in
``lrpfx/metrics/base.py``)."""

from __future__ import annotations

import copy
import math
import threading

import pytest
import torch
from torch import nn

from lrpfx.metrics import gae, insertion_deletion, sensitivity_n
from lrpfx.metrics.base import eval_model
from lrpfx.metrics.distributed import evaluate

# ----------------------------------------------------------------------------- never mutated


def _bn_dropout_cnn() -> nn.Module:
    """A train-mode model whose forward would update BN statistics and drop activations."""
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 5))
    with torch.no_grad():  # non-trivial running statistics, so eval and train differ
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    return model.train()


def _grad_x_input(model: nn.Module):
    frozen = copy.deepcopy(model).eval()  # the attribution must not touch the model either

    def explain(x, target):
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(frozen(xg).gather(1, target[:, None]).sum(), xg)
        return xg.detach() * g

    return explain


METRICS = {
    "gae": lambda m, fn, x: gae(m, fn, x, steps=3, shuffle=False, positives=torch.tensor([1, 2]),
                                progress=False),
    "sensitivity_n": lambda m, fn, x: sensitivity_n(
        m, fn, x, ns=[2, 9], n_subsets=6, generator=torch.Generator().manual_seed(0),
        progress=False),
    "insertion_deletion": lambda m, fn, x: insertion_deletion(m, fn, x, steps=4, progress=False),
}


def _state(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[bool]]:
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [m.training for m in model.modules()])


def _assert_same(a, b) -> None:
    for name in a.__dataclass_fields__:
        va, vb = getattr(a, name), getattr(b, name)
        assert torch.equal(va, vb) if not va.is_floating_point() else torch.allclose(
            va, vb, rtol=0, atol=0, equal_nan=True), name


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_metrics_leave_a_train_mode_model_untouched_and_evaluate_it_in_eval_mode(metric):
    model = _bn_dropout_cnn()
    images = torch.rand(8, 3, 6, 6, generator=torch.Generator().manual_seed(2))
    fn = _grad_x_input(model)
    before, modes = _state(model)
    result = METRICS[metric](model, fn, images)
    after, modes_after = _state(model)
    assert modes_after == modes and all(modes)
    assert before.keys() == after.keys()
    for k in before:  # bit-identical: BN running stats and num_batches_tracked included
        assert torch.equal(before[k], after[k]), k
    assert all(p.grad is None for p in model.parameters())
    _assert_same(result, METRICS[metric](copy.deepcopy(model).eval(), fn, images))


def test_the_eval_copy_shares_the_models_tensors():
    model = _bn_dropout_cnn()
    twin = eval_model(model)
    assert twin is not model and not any(m.training for m in twin.modules())
    assert all(m.training for m in model.modules())
    for (name, a), b in zip(model.state_dict(keep_vars=True).items(),
                            twin.state_dict(keep_vars=True).values()):
        assert a is b, name  # no second copy of the weights
    model.eval()
    assert eval_model(model) is model  # nothing to copy


def test_concurrent_metrics_on_one_train_mode_model():
    # nothing is switched and restored, so threads cannot see each other's mode
    model = _bn_dropout_cnn()
    images = torch.rand(8, 3, 6, 6, generator=torch.Generator().manual_seed(2))
    fn = _grad_x_input(model)
    expected = METRICS["insertion_deletion"](copy.deepcopy(model).eval(), fn, images)
    results: list = [None] * 4

    def work(i: int) -> None:
        results[i] = METRICS["insertion_deletion"](model, fn, images)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        _assert_same(r, expected)
    assert model.training and model[1].num_batches_tracked.item() == 0


# ----------------------------------------------------------------------------- validation


class Refuses(nn.Module):
    """A model that must not be called: argument errors come before any forward pass."""

    def forward(self, x):
        raise AssertionError("the model was called before the arguments were checked")


def _calls(metric: str, model: nn.Module, fn, images, **options):
    defaults = {"gae": {}, "sensitivity_n": {"ns": [2], "n_subsets": 4},
                "insertion_deletion": {"steps": 4}}[metric]
    run = {"gae": gae, "sensitivity_n": sensitivity_n, "insertion_deletion": insertion_deletion}
    return run[metric](model, fn, images, progress=False, **{**defaults, **options})


def identity(x, t):
    return x


IMAGES = torch.rand(4, 2, 4, 4, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("metric", sorted(METRICS))
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_images_are_rejected(metric, bad):
    images = IMAGES.clone()
    images[2, 1, 0, 3] = bad
    with pytest.raises(ValueError, match=r"images contain NaN or inf \(images 2\)"):
        _calls(metric, Refuses(), identity, images)


COUNTS = [("gae", "steps"), ("gae", "batch_size"), ("insertion_deletion", "steps"),
          ("insertion_deletion", "batch_size"), ("sensitivity_n", "n_subsets"),
          ("sensitivity_n", "feature"), ("sensitivity_n", "batch_size"), ("sensitivity_n", "ns")]


@pytest.mark.parametrize(("metric", "option"), COUNTS)
@pytest.mark.parametrize("value", [2.5, "3", True, torch.tensor([4, 4]), 0])
def test_counts_must_be_integers(metric, option, value):
    options = {option: [2, value] if option == "ns" else value}
    with pytest.raises(ValueError, match=rf"({option}|every n in ns) must be (an integer|at le)"):
        _calls(metric, Refuses(), identity, IMAGES, **options)


def test_counts_accept_integer_like_values():
    numpy = pytest.importorskip("numpy")
    r = insertion_deletion(nn.Flatten(), identity, IMAGES, steps=numpy.int64(4),
                           batch_size=torch.tensor(3), progress=False)
    assert r.insertion_curve.shape == (4, 5)


@pytest.mark.parametrize("metric", ["sensitivity_n", "insertion_deletion"])
@pytest.mark.parametrize("baseline", [torch.zeros(3, 4, 4), torch.zeros(4, 2, 4, 4),
                                      torch.zeros(2, 5), torch.zeros(2, 4, 4, 1)])
def test_baselines_must_broadcast_to_one_image(metric, baseline):
    with pytest.raises(ValueError, match=r"does not broadcast to one image \(2, 4, 4\); pass a "):
        _calls(metric, Refuses(), identity, IMAGES, baseline=baseline)


@pytest.mark.parametrize("metric", ["sensitivity_n", "insertion_deletion"])
@pytest.mark.parametrize("baseline", [math.nan, torch.tensor([0.0, math.inf])[:, None, None]])
def test_baselines_must_be_finite(metric, baseline):
    with pytest.raises(ValueError, match="baseline contains NaN or inf"):
        _calls(metric, Refuses(), identity, IMAGES, baseline=baseline)


@pytest.mark.parametrize("metric", ["sensitivity_n", "insertion_deletion"])
def test_baselines_that_broadcast_work(metric):
    model = nn.Flatten()  # 32 "classes"
    per_channel = torch.tensor([0.1, 0.9])[:, None, None]
    a = _calls(metric, model, identity, IMAGES, baseline=per_channel,
               **({"generator": torch.Generator().manual_seed(0)}
                  if metric == "sensitivity_n" else {}))
    b = _calls(metric, model, identity, IMAGES, baseline=per_channel.expand(2, 4, 4),
               **({"generator": torch.Generator().manual_seed(0)}
                  if metric == "sensitivity_n" else {}))
    _assert_same(a, b)


def test_insertion_baseline_words():
    with pytest.raises(ValueError, match=r"baseline must be 'blur', a number, a tensor; got 'x'"):
        insertion_deletion(Refuses(), identity, IMAGES, baseline="x", progress=False)


@pytest.mark.parametrize("metric", ["sensitivity_n", "insertion_deletion"])
def test_targets_must_have_one_class_per_image(metric):
    with pytest.raises(ValueError, match=r"target must have shape \(4,\)"):
        _calls(metric, Refuses(), identity, IMAGES, target=torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="integer class indices"):
        _calls(metric, Refuses(), identity, IMAGES, target=torch.tensor([0.0, 1, 2, 3]))


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_non_finite_maps_are_rejected(metric):
    def nan_map(x, t):
        r = x.clone()
        r[-1, 0, 0, 0] = math.nan
        return r

    with pytest.raises(ValueError, match="explain_fn returned a map with NaN or inf values"):
        _calls(metric, nn.Flatten(), nan_map, IMAGES)


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_non_finite_model_outputs_are_rejected(metric):
    class Overflows(nn.Module):
        def forward(self, x):
            return x.flatten(1) * 1e38 * 1e38  # inf in float32

    with pytest.raises(ValueError, match="the model returned NaN or inf class scores"):
        _calls(metric, Overflows(), identity, IMAGES)


def test_gae_specific_arguments():
    with pytest.raises(ValueError, match=r"positives must have shape \(1,\)"):
        gae(Refuses(), identity, IMAGES, positives=torch.tensor([0, 1]), progress=False)
    with pytest.raises(ValueError, match=r"positives must hold indices 0..3"):
        gae(Refuses(), identity, IMAGES, positives=torch.tensor([4]), progress=False)
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        gae(Refuses(), identity, IMAGES, labels=torch.tensor([0, 1]), progress=False)
    with pytest.raises(ValueError, match="leave channels and masking out"):
        gae(Refuses(), identity, IMAGES, compat="reference", channels="sum", progress=False)
    with pytest.raises(ValueError, match="unknown compat 'paper'"):
        gae(Refuses(), identity, IMAGES, compat="paper", progress=False)
    with pytest.raises(ValueError, match="batch_size must be a positive multiple of 4"):
        gae(Refuses(), identity, IMAGES, batch_size=6, progress=False)


def test_distributed_evaluate_validates_through_the_metric():
    with pytest.raises(ValueError, match="steps"):
        evaluate("insertion_deletion", Refuses(), identity, IMAGES, steps=2.5, progress=False)
