"""Field hardening of the explainer (issue 16): the state taken at compile, low precision from
all tensors, bounded memory across input shapes, threads, input errors, pickling and small API
edges."""

from __future__ import annotations

import copy
import io
import pickle
import threading

import pytest
import torch
from torch import Tensor, nn

import lrpfx
from lrpfx.core.graph_cache import low_precision


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean((2, 3)))


@pytest.fixture
def model() -> SmallCNN:
    m = SmallCNN()
    with torch.no_grad():
        m.features[1].running_mean.uniform_(-0.5, 0.5)
        m.features[1].running_var.uniform_(0.5, 2.0)
    return m.eval()


def _storage_bytes(module: nn.Module) -> int:
    """Bytes of the distinct storages behind every tensor of ``module``."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for t in (*module.parameters(), *module.buffers())}
    return sum(storages.values())


# ------------------------------------------------------------------- (3) state taken at compile

def test_edits_after_compile_change_nothing(model):
    reference = lrpfx.compile(copy.deepcopy(model))
    explainer = lrpfx.compile(model)
    small, large = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 12, 12)
    before = explainer.explain(small)
    with torch.no_grad():  # the user edits the model, then puts it in training mode
        model.features[0].weight.mul_(-3)
        model.features[1].running_mean.add_(1)
    model.train()
    # a shape captured before the edit and one captured after: both see the compiled state
    torch.testing.assert_close(explainer.explain(small), before, rtol=0, atol=0)
    torch.testing.assert_close(explainer.explain(large), reference.explain(large),
                               rtol=0, atol=0)
    torch.testing.assert_close(explainer(large), reference(large), rtol=0, atol=0)
    assert model.training  # still the user's choice


def test_train_mode_at_compile_explains_eval_mode(model):
    model.train()
    with pytest.warns(UserWarning, match="training mode"):
        explainer = lrpfx.compile(model)
    x = torch.randn(2, 3, 8, 8)
    running = model.features[1].running_mean.clone()
    torch.testing.assert_close(explainer(x), copy.deepcopy(model).eval()(x))
    explainer.explain(x)
    assert torch.equal(model.features[1].running_mean, running) and model.training


# ------------------------------------------------------------------- (5) low precision

class IndexedHead(nn.Module):
    """A model whose first buffer is an integer index (the low-precision check read only that)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("order", torch.tensor([2, 0, 1]))
        self.net = SmallCNN()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x[:, self.order])


def test_half_model_with_integer_first_buffer_runs_in_float32():
    model = IndexedHead().eval()
    x = torch.randn(2, 3, 8, 8)
    full = lrpfx.compile(model).explain(x)
    explainer = lrpfx.compile(copy.deepcopy(model).half())
    gm = explainer.cache.graph_for((x.half(),), {})
    assert next(gm.buffers()).dtype == torch.int64 and low_precision(gm)
    r = explainer.explain(x.half())
    assert r.dtype == torch.float16 and torch.isfinite(r).all()
    torch.testing.assert_close(r.float(), full, rtol=0.05, atol=0.02)


# ------------------------------------------------------------------- (6) bounded memory

def test_memory_across_eight_shapes_is_bounded(model):
    explainer = lrpfx.compile(model, cache_size=8)
    explainer.explain(torch.randn(1, 3, 8, 8))
    one = _storage_bytes(explainer)
    weights = _storage_bytes(model)
    for size in range(9, 16):
        explainer.explain(torch.randn(1, 3, size, size))
    assert len(explainer.graphs) == 8
    eight = _storage_bytes(explainer)
    # weights and derived tensors are shared: eight graphs hold what one holds, plus at most
    # a fraction of the weights (unshared scalars); copied, they would hold ~8x
    assert eight <= one + weights // 4, (one, eight, weights)


def test_cache_is_lru_of_configured_size(model):
    explainer = lrpfx.compile(model, cache_size=2)
    xs = [torch.randn(2, 3, s, s) for s in (8, 9, 10)]
    maps = [explainer.explain(x) for x in xs]
    assert len(explainer.graphs) == 2
    explainer.explain(xs[2])  # most recent: kept
    assert len(explainer.graphs) == 2
    torch.testing.assert_close(explainer.explain(xs[0]), maps[0], rtol=0, atol=0)  # recaptured
    fresh = lrpfx.compile(model)
    for x, r in zip(xs, maps):
        torch.testing.assert_close(r, fresh.explain(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="cache_size"):
        lrpfx.compile(model, cache_size=0)


def test_shared_tensors_survive_conversion(model):
    explainer = lrpfx.compile(model)
    explainer.explain(torch.randn(1, 3, 8, 8))
    explainer.double()
    explainer.explain(torch.randn(1, 3, 9, 9, dtype=torch.float64))
    explainer.explain(torch.randn(1, 3, 10, 10, dtype=torch.float64))
    one_graph = 2 * sum(t.numel() * 8 for t in model.state_dict().values())  # W and |W|
    assert _storage_bytes(explainer) <= one_graph * 1.5
    assert all(t.dtype in (torch.float64, torch.int64) for t in explainer.buffers())


# ------------------------------------------------------------------- (7) threads

def test_threads_first_calls_at_and_audit_match_serial(model):
    model = model.double()  # float64: kernels chosen under load differ only in rounding
    sizes = [8, 9]
    xs = {s: torch.randn(2, 3, s, s, dtype=torch.float64) for s in sizes}
    at = ["features.2", "features.4"]
    serial = lrpfx.compile(model)
    want = {s: serial.explain(xs[s], at=at) for s in sizes}
    audits = {s: [(n.node, n.out_l1) for n in serial.audit(xs[s]).nodes] for s in sizes}
    shared = lrpfx.compile(model)
    jobs = sizes * 2  # two threads per graph: they share its modules
    barrier = threading.Barrier(len(jobs))
    wrong: list[str] = []

    def work(s: int) -> None:
        try:
            barrier.wait()  # first calls (captures) at once, then calls that interleave
            for _ in range(8):
                maps = shared.explain(xs[s], at=at)
                if maps.keys() != want[s].keys() or not all(
                        torch.allclose(maps[k], want[s][k], rtol=1e-9, atol=1e-12) for k in maps):
                    wrong.append(f"maps at size {s}")
                audit = [(n.node, n.out_l1) for n in shared.audit(xs[s]).nodes]
                if [n for n, _ in audit] != [n for n, _ in audits[s]] or not all(
                        torch.allclose(a, b, rtol=1e-9, atol=1e-12)
                        for (_, a), (_, b) in zip(audit, audits[s])):
                    wrong.append(f"audit at size {s}")
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            wrong.append(repr(e))

    threads = [threading.Thread(target=work, args=(s,)) for s in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong, wrong
    assert len(shared.graphs) == len(sizes)


# ------------------------------------------------------------------- (10) input errors

@pytest.mark.parametrize("shape, match", [
    ((2, 4, 8, 8), "to have 3 channels"),  # channels
    ((2, 3, 8), "cannot take an input of shape \\(2, 3, 8\\)"),  # rank
    ((2, 3, 1, 1), "cannot take an input"),  # too small for the mean of an empty map? no: conv
])
def test_input_the_model_rejects_is_a_value_error(model, shape, match, capfd):
    explainer = lrpfx.compile(model, example_inputs=torch.randn(2, 3, 8, 8))
    capfd.readouterr()
    bad = torch.randn(*shape)
    try:
        model(bad)
    except Exception:  # noqa: BLE001 - the model itself rejects it
        with pytest.raises(ValueError, match=match) as info:
            explainer.explain(bad)
        assert "Inputs it has taken: (B, 3, 8, 8)" in str(info.value)
    else:
        explainer.explain(bad)  # the model accepts it: so does the explainer
    out, err = capfd.readouterr()
    assert err == ""


def test_model_rejecting_the_first_input_is_a_value_error(model):
    with pytest.raises(ValueError, match="cannot take an input of shape \\(2, 5, 8, 8\\)"):
        lrpfx.compile(model, example_inputs=torch.randn(2, 5, 8, 8))


# ------------------------------------------------------------------- (13) capture and API edges

class KeywordOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, *, x: Tensor, scale: float = 1.0) -> Tensor:
        return self.fc(torch.relu(x) * scale)


def test_keyword_only_model_inputs():
    model = KeywordOnly().eval()
    x = torch.randn(2, 4)
    explainer = lrpfx.compile(model, example_inputs=x)
    torch.testing.assert_close(explainer(x=x), model(x=x), rtol=0, atol=0)
    r = explainer.explain(x)
    torch.testing.assert_close(explainer.explain(x, scale=2.0), r)  # scale cancels in absLRP
    assert r.shape == x.shape and torch.isfinite(r).all()


def test_list_example_inputs(model):
    x = torch.randn(2, 3, 8, 8)
    explainer = lrpfx.compile(model, example_inputs=[x])
    assert len(explainer.graphs) == 1
    torch.testing.assert_close(explainer(x), model(x), rtol=0, atol=0)


def test_at_a_single_name_is_not_split(model):
    explainer = lrpfx.compile(model)
    x = torch.randn(2, 3, 8, 8)
    one = explainer.explain(x, at="features.2")
    assert set(one) == {"input", "features.2"}
    torch.testing.assert_close(one["features.2"],
                               explainer.explain(x, at=["features.2"])["features.2"])


def test_inference_mode_is_reported(model):
    explainer = lrpfx.compile(model)
    with torch.inference_mode():
        x = torch.randn(2, 3, 8, 8)
        with pytest.raises(RuntimeError, match="outside inference_mode"):
            explainer.explain(x)
    # a tensor made under inference_mode is fine outside it
    torch.testing.assert_close(explainer.explain(x), explainer.explain(x.clone()))


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_pickle_round_trip(model, how):
    x = torch.randn(2, 3, 8, 8)
    explainer = lrpfx.compile(model, example_inputs=x, max_pool_divide=True)
    explainer.double()
    want = explainer.explain(x.double(), at="features.2")
    if how == "pickle":
        loaded = pickle.loads(pickle.dumps(explainer))
    else:
        buf = io.BytesIO()
        torch.save(explainer, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)  # trusted-load: the explainer saved just above
    got = loaded.explain(x.double(), at="features.2")
    # the loaded explainer derives |W|, BN scales from the converted (float64) weights, the
    # original derived them in float32 before .double(): equal to float32 precision
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-7)
    assert loaded.ruleset.options["max_pool_divide"] is True
    # a new shape after loading: captured from the loaded snapshot, converted like the rest
    y = torch.randn(1, 3, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(loaded.explain(y), explainer.explain(y), rtol=1e-5, atol=1e-7)


def test_torch_logs_during_capture_are_collected_not_printed(capfd):
    import logging

    from lrpfx.core.capture import _quiet_torch_logs

    capfd.readouterr()
    with _quiet_torch_logs() as lines:
        logging.getLogger("torch._dynamo").warning("guard failed: s0 > 2")
        logging.getLogger("torch.fx.experimental.symbolic_shapes").error("constraint violated")
    assert lines == ["guard failed: s0 > 2", "constraint violated"]
    assert capfd.readouterr().err == ""
    logging.getLogger("torch._dynamo").warning("after")  # printed again afterwards
    assert "after" in capfd.readouterr().err
