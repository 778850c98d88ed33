"""Frozen BatchNorm (``freeze``/``unfreeze``, ``freeze_batchnorm``) and exact recalibration of
the running statistics (``recalibrate``, both forms)."""

from __future__ import annotations

import sys
import types
from typing import ClassVar

import normcpp as nc
import numpy as np
import pytest
from normcpp.sync import SyncBatchNorm
from normcpp.training import freeze_batchnorm, recalibrate, unfreeze_batchnorm

BN_CASES = [(nc.BatchNorm1d, (6, 3)), (nc.BatchNorm1d, (4, 3, 5)), (nc.BatchNorm2d, (3, 3, 4, 5)),
            (nc.BatchNorm3d, (2, 3, 2, 3, 4)), (SyncBatchNorm, (4, 3, 5))]
BN_IDS = [f"{c.__name__}-{len(s)}d" for c, s in BN_CASES]


def randomized(cls, rng, **kwargs):
    m = cls(3, **kwargs)
    if m.weight is not None:
        m.weight[...] = rng.uniform(0.5, 1.5, 3)
    if m.bias is not None:
        m.bias[...] = rng.standard_normal(3)
    m.running_mean[...] = rng.standard_normal(3)
    m.running_var[...] = rng.uniform(0.5, 2.0, 3)
    return m


def snapshot(m):
    return {k: v.copy() for k, v in m.state_dict().items()}


def assert_state(m, expected):
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, expected[k], err_msg=k)


# --------------------------------------------------------------------------------------------
# freeze / unfreeze


@pytest.mark.parametrize(("cls", "shape"), BN_CASES, ids=BN_IDS)
def test_frozen_normalizes_with_running_stats_in_train_mode(cls, shape, rng):
    m = randomized(cls, rng)
    ref = randomized(cls, np.random.default_rng(0))
    ref.load_state_dict(m.state_dict())
    ref.eval()
    before = snapshot(m)
    x = rng.standard_normal(shape).astype(np.float32)
    assert m.freeze() is m and m.frozen
    assert m.train() is m and m.training and m.frozen  # train() does not unfreeze
    for _ in range(3):
        np.testing.assert_array_equal(m(x), ref(x))
    assert_state(m, before)  # running statistics and num_batches_tracked untouched
    m.eval()
    np.testing.assert_array_equal(m(x), ref(x))
    assert m.unfreeze() is m and not m.frozen
    m.train()(x)
    assert int(m.num_batches_tracked) == 1
    assert not np.array_equal(m.running_mean, before["running_mean"])


def test_frozen_accepts_batch_of_one(rng):
    """Batch statistics of one value are impossible, but a frozen module needs none."""
    m = nc.BatchNorm1d(3).freeze()
    assert m(np.ones((1, 3), np.float32)).shape == (1, 3)
    with pytest.raises(ValueError, match="more than 1 value"):
        m.unfreeze()(np.ones((1, 3), np.float32))


def test_frozen_state_dict_unchanged_and_repr():
    m = nc.BatchNorm2d(4).freeze()
    assert list(m.state_dict()) == list(nc.BatchNorm2d(4).state_dict())
    assert repr(m).endswith("track_running_stats=True, frozen=True)")
    assert "frozen" not in repr(m.unfreeze())


def test_freeze_without_running_stats_raises():
    m = nc.BatchNorm1d(3, track_running_stats=False)
    with pytest.raises(ValueError, match="track_running_stats=False"):
        m.freeze()
    assert not m.frozen


def test_freeze_batchnorm_counts_and_skips_others():
    bns = [nc.BatchNorm1d(3), nc.BatchNorm2d(4), SyncBatchNorm(2)]
    others = [nc.LayerNorm(3), nc.GroupNorm(1, 2), nc.InstanceNorm1d(2), "not a module", None]
    model = [bns[0], others[0], bns[1], others[1], bns[2], bns[0], *others[2:]]
    assert freeze_batchnorm(model) == 3
    assert all(m.frozen for m in bns)
    assert freeze_batchnorm(iter(bns)) == 3  # any iterable; idempotent
    assert unfreeze_batchnorm({"a": bns[0], "b": others[0]}) == 1  # a mapping: its values
    assert not bns[0].frozen and bns[1].frozen
    assert unfreeze_batchnorm(bns[1]) == 1  # a single module
    assert unfreeze_batchnorm(m for m in bns) == 3
    assert not any(m.frozen for m in bns)
    assert freeze_batchnorm([]) == 0


def test_freeze_batchnorm_all_or_nothing():
    ok = nc.BatchNorm1d(3)
    bad = nc.BatchNorm1d(3, track_running_stats=False)
    with pytest.raises(ValueError, match="without running statistics"):
        freeze_batchnorm([ok, bad])
    assert not ok.frozen


@pytest.mark.parametrize("bad", [3, "bn", b"x"])
def test_freeze_batchnorm_type_error(bad):
    with pytest.raises(TypeError, match="iterable of modules"):
        freeze_batchnorm(bad)


def test_transfer_learning_recipe(rng):
    """Pretrained statistics survive fine-tuning steps on shifted data; the head still gets
    the input gradient through the frozen layer."""
    bn = nc.BatchNorm1d(4, dtype=np.float64)
    for _ in range(50):  # "pretraining" data: mean 0, std 1
        bn(rng.standard_normal((32, 4)))
    pretrained = snapshot(bn)
    freeze_batchnorm([bn])
    for _ in range(5):  # fine-tuning data: mean 5
        x = rng.standard_normal((8, 4)) + 5.0
        y = bn(x)
        dx = bn.backward(np.ones_like(y))
        expected = np.broadcast_to(bn.weight / np.sqrt(bn.running_var + bn.eps), x.shape)
        np.testing.assert_allclose(dx, expected, rtol=1e-13)
    assert_state(bn, pretrained)


# --------------------------------------------------------------------------------------------
# recalibrate: modules fed directly


def make_batches(rng, sizes, c=3, spatial=(), offset=2000.0, dtype=np.float32):
    return [(rng.standard_normal((n, c) + spatial) * 3.0 + offset).astype(dtype) for n in sizes]


def population(batches):
    data = np.concatenate([b.astype(np.float64) for b in batches])
    axes = (0,) + tuple(range(2, data.ndim))
    return data.mean(axis=axes), data.var(axis=axes, ddof=1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("cls", "shape"), BN_CASES, ids=BN_IDS)
def test_recalibrate_module_is_exact_population_stats(cls, shape, dtype, rng):
    batches = make_batches(rng, [5, 1, 17, 0, 9], spatial=shape[2:], dtype=dtype)
    m = randomized(cls, rng, dtype=np.float64)
    m.num_batches_tracked.fill(123)
    assert recalibrate(m, batches, progress=False) == 5
    mean, var = population(batches)
    rtol = 1e-12 if dtype == np.float64 else 1e-7
    np.testing.assert_allclose(m.running_mean, mean, rtol=rtol)
    np.testing.assert_allclose(m.running_var, var, rtol=rtol * 100)
    assert int(m.num_batches_tracked) == 5


def test_recalibrate_is_independent_of_batching(rng):
    data = make_batches(rng, [60], spatial=(4,))[0]
    results = []
    for cuts in ([60], [1, 59], [7, 13, 20, 20], [3] * 20):
        bn = nc.BatchNorm1d(3, dtype=np.float64)
        recalibrate(bn, np.split(data, np.cumsum(cuts)[:-1]), progress=False)
        results.append((bn.running_mean.copy(), bn.running_var.copy()))
    for mean, var in results[1:]:
        np.testing.assert_allclose(mean, results[0][0], rtol=1e-14)
        np.testing.assert_allclose(var, results[0][1], rtol=1e-12)


def test_recalibrate_list_feeds_the_same_batch_to_each(rng):
    batches = make_batches(rng, [4, 6])
    a, b = nc.BatchNorm1d(3), nc.BatchNorm1d(3, dtype=np.float64).freeze()
    assert recalibrate([a, b, a], iter(batches), progress=False) == 2  # duplicates once
    mean, var = population(batches)
    for m in (a, b):
        np.testing.assert_allclose(m.running_mean, mean, rtol=1e-6)
        np.testing.assert_allclose(m.running_var, var, rtol=1e-5)
    assert b.frozen and a.training and b.training


def test_recalibrate_restores_modes(rng):
    batches = make_batches(rng, [4, 4])
    modules = [nc.BatchNorm1d(3).eval(), nc.BatchNorm1d(3).freeze(), nc.BatchNorm1d(3)]
    recalibrate(modules, batches, progress=False)
    assert [(m.training, m.frozen) for m in modules] == [(False, False), (True, True),
                                                         (True, False)]
    assert all(m._recorder is None for m in modules)


def test_recalibrate_failure_changes_nothing(rng):
    m = randomized(nc.BatchNorm1d, rng)
    before = snapshot(m)
    good = make_batches(rng, [4])[0]
    with pytest.raises(ValueError, match="num_features=3"):
        recalibrate(m, [good, np.ones((4, 5), np.float32)], progress=False)
    assert_state(m, before)
    assert m._recorder is None

    def gen():
        yield good
        raise KeyError("data loader broke")

    with pytest.raises(KeyError):
        recalibrate(m, gen(), progress=False)
    assert_state(m, before)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        recalibrate(m, [good.tolist()], progress=False)
    with pytest.raises(ValueError, match="no batches"):
        recalibrate(m, [], progress=False)
    with pytest.raises(ValueError, match="saw 1 value"):
        recalibrate(m, [np.ones((1, 3), np.float32), np.ones((0, 3), np.float32)],
                    progress=False)
    assert_state(m, before)


def test_recalibrate_argument_errors():
    bn = nc.BatchNorm1d(3)
    with pytest.raises(TypeError, match="BatchNorm modules"):
        recalibrate([bn, nc.LayerNorm(3)], [np.ones((2, 3), np.float32)])
    with pytest.raises(ValueError, match="no running statistics"):
        recalibrate(nc.BatchNorm1d(3, track_running_stats=False), [np.ones((2, 3))])
    with pytest.raises(ValueError, match="at least one"):
        recalibrate([], [np.ones((2, 3))])
    with pytest.raises(TypeError, match="modules= is only"):
        recalibrate(bn, [np.ones((2, 3))], modules=[bn])
    with pytest.raises(TypeError, match="needs modules="):
        recalibrate(lambda b: b, [np.ones((2, 3))])
    with pytest.raises(TypeError, match="iterable of modules"):
        recalibrate(3, [np.ones((2, 3))])
    with pytest.raises(TypeError, match="progress"):
        recalibrate(bn, [np.ones((2, 3))], progress="yes")


# --------------------------------------------------------------------------------------------
# recalibrate: a model function (precise BN)


class TinyNet:
    """linear -> BN -> ReLU -> linear -> BN, in NumPy."""

    def __init__(self, rng, frozen_first=False):
        self.w1 = rng.standard_normal((5, 4))
        self.w2 = rng.standard_normal((4, 3))
        self.bn1 = nc.BatchNorm1d(4, dtype=np.float64)
        self.bn2 = nc.BatchNorm1d(3, dtype=np.float64)
        self.bn1.weight[...] = rng.uniform(0.5, 1.5, 4)
        self.bn1.bias[...] = rng.standard_normal(4)
        if frozen_first:
            self.bn1.freeze()
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        h = np.maximum(self.bn1(x @ self.w1), 0.0)
        return self.bn2(h @ self.w2)

    def expected_stats(self, batches):
        """Population statistics of each BN's input when every BN normalizes with the
        statistics of its own batch (training-style forward)."""
        h1 = [x @ self.w1 for x in batches]
        h2 = []
        for h in h1:
            mu, var = h.mean(axis=0), h.var(axis=0)
            y = (h - mu) / np.sqrt(var + self.bn1.eps) * self.bn1.weight + self.bn1.bias
            h2.append(np.maximum(y, 0.0) @ self.w2)
        return population(h1), population(h2)


@pytest.mark.parametrize("mode", ["train", "eval", "frozen"])
def test_recalibrate_model_fn(mode, rng):
    net = TinyNet(rng, frozen_first=mode == "frozen")
    for bn in (net.bn1, net.bn2):
        bn.train(mode != "eval")
    batches = [rng.standard_normal((n, 5)) + 3.0 for n in (7, 12, 5)]
    assert recalibrate(net, batches, modules=[net.bn1, net.bn2], progress=False) == 3
    assert net.calls == 3
    (m1, v1), (m2, v2) = net.expected_stats(batches)
    np.testing.assert_allclose(net.bn1.running_mean, m1, rtol=1e-12)
    np.testing.assert_allclose(net.bn1.running_var, v1, rtol=1e-11)
    np.testing.assert_allclose(net.bn2.running_mean, m2, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(net.bn2.running_var, v2, rtol=1e-10)
    for bn in (net.bn1, net.bn2):
        assert int(bn.num_batches_tracked) == 3
        assert bn.training == (mode != "eval")
    assert net.bn1.frozen == (mode == "frozen") and not net.bn2.frozen


def test_recalibrate_model_fn_unlisted_module_behaves_as_usual(rng):
    net = TinyNet(rng)
    batches = [rng.standard_normal((6, 5)) for _ in range(2)]
    recalibrate(net, batches, modules=net.bn1, progress=False)
    assert int(net.bn2.num_batches_tracked) == 2  # an ordinary training-mode BatchNorm


def test_recalibrate_model_fn_module_not_called(rng):
    net = TinyNet(rng)
    idle = nc.BatchNorm1d(3)
    before = snapshot(net.bn1)
    with pytest.raises(ValueError, match="received no input"):
        recalibrate(net, [rng.standard_normal((4, 5))], modules=[net.bn1, idle],
                    progress=False)
    assert_state(net.bn1, before)


def test_recalibrate_then_precise_eval(rng):
    """After recalibration, eval mode normalizes the recalibration data to mean 0, var 1
    (up to the n/(n-1) factor)."""
    bn = nc.BatchNorm2d(3, dtype=np.float64)
    batches = make_batches(rng, [3, 5, 8], spatial=(4, 4), dtype=np.float64, offset=7.0)
    recalibrate(bn, batches, progress=False)
    y = np.concatenate([bn.eval()(b) for b in batches])
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0.0, atol=1e-12)
    n = y.size // 3
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)) * n / (n - 1), 1.0, rtol=1e-4)


# --------------------------------------------------------------------------------------------
# progress bar


class FakeTqdm:
    instances: ClassVar[list] = []

    def __init__(self, iterable, total=None, **kwargs):
        self.iterable, self.total, self.kwargs, self.closed = iterable, total, kwargs, False
        FakeTqdm.instances.append(self)

    def __iter__(self):
        return iter(self.iterable)

    def close(self):
        self.closed = True


@pytest.fixture
def fake_tqdm(monkeypatch):
    FakeTqdm.instances = []
    monkeypatch.setitem(sys.modules, "tqdm", types.SimpleNamespace(tqdm=FakeTqdm))
    return FakeTqdm


def test_progress_auto_with_len(fake_tqdm, rng):
    batches = make_batches(rng, [4, 4, 4])
    recalibrate(nc.BatchNorm1d(3), batches)
    assert len(fake_tqdm.instances) == 1
    bar = fake_tqdm.instances[0]
    assert bar.total == 3 and bar.closed


def test_progress_auto_without_len_and_off(fake_tqdm, rng):
    batches = make_batches(rng, [4, 4])
    recalibrate(nc.BatchNorm1d(3), iter(batches))
    recalibrate(nc.BatchNorm1d(3), batches, progress=False)
    assert fake_tqdm.instances == []
    recalibrate(nc.BatchNorm1d(3), iter(batches), progress=True)
    assert len(fake_tqdm.instances) == 1 and fake_tqdm.instances[0].total is None


def test_progress_bar_closed_on_error(fake_tqdm):
    with pytest.raises(ValueError):
        recalibrate(nc.BatchNorm1d(3), [np.ones((2, 4), np.float32)])
    assert fake_tqdm.instances[0].closed


def test_progress_without_tqdm(monkeypatch, rng):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm raises ImportError
    batches = make_batches(rng, [4, 4])
    assert recalibrate(nc.BatchNorm1d(3), batches) == 2  # auto: silently no bar
    with pytest.raises(ImportError, match="tqdm"):
        recalibrate(nc.BatchNorm1d(3), batches, progress=True)
