"""``from_torch`` and ``from_keras_batchnorm``: same hyper-parameters, state, mode, outputs and
running-statistics updates as the source layer (PyTorch itself when importable; a NumPy
implementation of Keras' inference formula for Keras)."""

from __future__ import annotations

import normcpp as nc
import numpy as np
import pytest
from normcpp.interop import BatchNormNd, from_keras_batchnorm, from_torch

# --------------------------------------------------------------------------------------------
# from_torch

#: (torch class name, constructor args, kwargs, normcpp class, input shape)
TORCH_CASES = [
    ("BatchNorm1d", (3,), {}, nc.BatchNorm1d, (8, 3)),
    ("BatchNorm1d", (4,), {"momentum": None}, nc.BatchNorm1d, (5, 4, 7)),
    ("BatchNorm1d", (4,), {"affine": False}, nc.BatchNorm1d, (5, 4, 7)),
    ("BatchNorm2d", (5,), {"eps": 1e-3, "momentum": 0.3}, nc.BatchNorm2d, (2, 5, 6, 7)),
    ("BatchNorm2d", (3,), {"bias": False}, nc.BatchNorm2d, (2, 3, 4, 4)),
    ("BatchNorm2d", (3,), {"track_running_stats": False}, nc.BatchNorm2d, (2, 3, 4, 4)),
    ("BatchNorm3d", (2,), {}, nc.BatchNorm3d, (2, 2, 3, 4, 5)),
    ("SyncBatchNorm", (3,), {}, BatchNormNd, (2, 3, 4, 5)),
    ("SyncBatchNorm", (3,), {"momentum": None}, BatchNormNd, (6, 3)),
    ("SyncBatchNorm", (3,), {}, BatchNormNd, (2, 3, 2, 3, 2, 2)),
    ("InstanceNorm1d", (3,), {}, nc.InstanceNorm1d, (2, 3, 9)),
    ("InstanceNorm1d", (3,), {"affine": True, "track_running_stats": True}, nc.InstanceNorm1d,
     (2, 3, 9)),
    ("InstanceNorm2d", (4,), {"affine": True, "track_running_stats": True, "momentum": 0.2},
     nc.InstanceNorm2d, (2, 4, 5, 6)),
    ("InstanceNorm2d", (4,), {"affine": True, "bias": False}, nc.InstanceNorm2d, (2, 4, 5, 6)),
    ("InstanceNorm3d", (2,), {"track_running_stats": True}, nc.InstanceNorm3d, (2, 2, 3, 3, 4)),
    ("InstanceNorm1d", (3,), {"track_running_stats": True, "momentum": None}, nc.InstanceNorm1d,
     (2, 3, 6)),
    ("GroupNorm", (2, 6), {}, nc.GroupNorm, (3, 6, 5, 4)),
    ("GroupNorm", (3, 6), {"eps": 1e-3, "affine": False}, nc.GroupNorm, (3, 6, 10)),
    ("GroupNorm", (1, 4), {"bias": False}, nc.GroupNorm, (3, 4)),
    ("LayerNorm", (8,), {}, nc.LayerNorm, (4, 8)),
    ("LayerNorm", ((3, 5),), {"eps": 1e-4, "bias": False}, nc.LayerNorm, (2, 4, 3, 5)),
    ("LayerNorm", (6,), {"elementwise_affine": False}, nc.LayerNorm, (2, 3, 6)),
    ("RMSNorm", (8,), {}, nc.RMSNorm, (4, 8)),
    ("RMSNorm", ((2, 6),), {"eps": 1e-6}, nc.RMSNorm, (3, 2, 6)),
    ("RMSNorm", (5,), {"elementwise_affine": False}, nc.RMSNorm, (4, 5)),
]


def _randomize(torch, module, seed):
    """Random parameters and running statistics (and a random ``num_batches_tracked``)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            if name == "num_batches_tracked":
                tensor.fill_(int(torch.randint(0, 50, (), generator=gen)))
            elif name == "running_var":
                tensor.copy_(torch.rand(tensor.shape, generator=gen) * 2 + 0.3)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=gen))


def _torch_case(torch, case, seed, dtype=None):
    name, args, kwargs = case[:3]
    module = getattr(torch.nn, name)(*args, **kwargs)
    if dtype is not None:
        module = module.to(dtype)
    _randomize(torch, module, seed)
    return module


def _case_id(case):
    return f"{case[0]}-{case[4]}-" + ",".join(f"{k}={v}" for k, v in case[2].items())


def _assert_same_state(torch_module, module):
    sd = module.state_dict()
    tsd = torch_module.state_dict()
    assert list(sd) == list(tsd)
    for key, value in tsd.items():
        np.testing.assert_allclose(sd[key], value.detach().double().numpy(), rtol=1e-6,
                                   atol=1e-6, err_msg=key)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("case", TORCH_CASES, ids=_case_id)
def test_from_torch_round_trip(case, training):
    torch = pytest.importorskip("torch")
    tm = _torch_case(torch, case, seed=len(case[4]) + 17 * len(case[2])).train(training)
    m = from_torch(tm)
    assert type(m) is case[3]
    assert m.training is training and m.dtype == np.float32
    for attr in ("eps", "momentum", "affine", "track_running_stats", "num_features",
                 "num_groups", "num_channels", "elementwise_affine"):
        if hasattr(tm, attr):
            assert getattr(m, attr) == getattr(tm, attr), attr
    if hasattr(tm, "normalized_shape"):
        assert m.normalized_shape == tuple(tm.normalized_shape)
    assert (getattr(m, "bias", None) is None) == (getattr(tm, "bias", None) is None)
    _assert_same_state(tm, m)

    x = np.random.default_rng(3).standard_normal(case[4]).astype(np.float32) * 2 + 0.5
    with torch.no_grad():
        expected = tm(torch.from_numpy(x.copy())).numpy()
    got = m(x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # after the step (running statistics updated in training mode) the states agree again
    _assert_same_state(tm, m)
    with torch.no_grad():
        expected2 = tm(torch.from_numpy(x[::-1].copy())).numpy()
    np.testing.assert_allclose(m(np.ascontiguousarray(x[::-1])), expected2, rtol=1e-5,
                               atol=1e-5)
    _assert_same_state(tm, m)


def test_from_torch_state_is_a_copy():
    torch = pytest.importorskip("torch")
    tm = torch.nn.BatchNorm1d(3)
    m = from_torch(tm)
    with torch.no_grad():
        tm.weight.fill_(5.0)
        tm.running_mean.fill_(7.0)
    assert m.weight.tolist() == [1.0, 1.0, 1.0]
    assert m.running_mean.tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(("torch_dtype", "expected"), [("float64", np.float64),
                                                       ("float16", np.float32),
                                                       ("bfloat16", np.float32)])
def test_from_torch_dtype(torch_dtype, expected):
    torch = pytest.importorskip("torch")
    tdt = getattr(torch, torch_dtype)
    stateful = [next(c for c in TORCH_CASES if c[0] == name) for name in
                ("BatchNorm2d", "InstanceNorm2d", "GroupNorm", "LayerNorm", "RMSNorm")]
    for case in stateful:
        tm = _torch_case(torch, case, seed=5, dtype=tdt).eval()
        m = from_torch(tm)
        assert m.dtype == expected
        for key, value in tm.state_dict().items():
            if value.is_floating_point():
                np.testing.assert_array_equal(m.state_dict()[key],
                                              value.double().numpy().astype(expected))
    if expected == np.float64:
        tm = _torch_case(torch, stateful[0], seed=5, dtype=tdt).train()
        m = from_torch(tm)
        x = np.random.default_rng(0).standard_normal(stateful[0][4])
        with torch.no_grad():
            want = tm(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(m(x), want, rtol=1e-12, atol=1e-12)
        _assert_same_state(tm, m)


def test_from_torch_subclass_and_without_state():
    torch = pytest.importorskip("torch")

    class MyBN(torch.nn.BatchNorm2d):
        pass

    m = from_torch(MyBN(4, affine=False, track_running_stats=False))
    assert type(m) is nc.BatchNorm2d and m.state_dict() == {}
    m = from_torch(torch.nn.InstanceNorm2d(3))
    assert type(m) is nc.InstanceNorm2d and m.num_features == 3 and m.state_dict() == {}


def test_from_torch_momentum_none_cumulative_average():
    torch = pytest.importorskip("torch")
    tm = torch.nn.BatchNorm2d(3, momentum=None)
    m = from_torch(tm)
    rng = np.random.default_rng(8)
    for _ in range(4):
        x = (rng.standard_normal((4, 3, 5, 5)) * 3 + 1).astype(np.float32)
        with torch.no_grad():
            tm(torch.from_numpy(x))
        m(x)
    _assert_same_state(tm, m)
    assert int(m.num_batches_tracked) == 4


def test_from_torch_rejects_others():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="Linear"):
        from_torch(torch.nn.Linear(2, 3))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        from_torch(torch.zeros(3))
    lazy = torch.nn.LazyBatchNorm1d()
    with pytest.raises(ValueError, match="not initialized"):
        from_torch(lazy)
    lazy(torch.randn(4, 3))  # materialized: now a BatchNorm1d
    assert type(from_torch(lazy)) is nc.BatchNorm1d


def test_from_torch_rejects_non_torch_objects():
    for obj in (object(), nc.BatchNorm1d(3), None, "BatchNorm1d"):
        with pytest.raises(TypeError):
            from_torch(obj)


def test_batchnormnd_any_rank():
    m = BatchNormNd(3)
    rng = np.random.default_rng(1)
    for shape in [(4, 3), (2, 3, 5), (2, 3, 4, 5), (2, 3, 2, 2, 2), (2, 3, 1, 2, 2, 2)]:
        x = rng.standard_normal(shape).astype(np.float32)
        y = m(x)
        axes = (0,) + tuple(range(2, x.ndim))
        np.testing.assert_allclose(y.mean(axis=axes), 0, atol=1e-5)
    with pytest.raises(ValueError, match="at least 2-D"):
        m(np.ones(3, np.float32))
    with pytest.raises(ValueError, match="num_features=3"):
        m(np.ones((2, 4, 5), np.float32))


# --------------------------------------------------------------------------------------------
# from_keras_batchnorm


def keras_inference(x, gamma, beta, mean, var, eps, axis=-1):
    """Keras BatchNormalization in inference: ``(x - mean) / sqrt(var + eps) * gamma + beta``
    with the per-channel vectors broadcast along ``axis``."""
    shape = [1] * x.ndim
    shape[axis] = -1
    x = x.astype(np.float64)
    y = (x - np.reshape(mean, shape)) / np.sqrt(np.reshape(var, shape) + eps)
    if gamma is not None:
        y = y * np.reshape(gamma, shape)
    if beta is not None:
        y = y + np.reshape(beta, shape)
    return y


def _keras_weights(c, rng, dtype=np.float32):
    gamma = rng.standard_normal(c).astype(dtype)
    beta = rng.standard_normal(c).astype(dtype)
    mean = (rng.standard_normal(c) * 3).astype(dtype)
    var = rng.uniform(0.1, 4.0, c).astype(dtype)
    return gamma, beta, mean, var


@pytest.mark.parametrize(("center", "scale"), [(True, True), (True, False), (False, True),
                                               (False, False)])
@pytest.mark.parametrize("shape", [(5, 4), (3, 7, 4), (2, 5, 6, 4), (2, 3, 2, 3, 4)])
def test_keras_channels_last(shape, center, scale):
    rng = np.random.default_rng(len(shape))
    gamma, beta, mean, var = _keras_weights(4, rng)
    weights = ([gamma] if scale else []) + ([beta] if center else []) + [mean, var]
    m = from_keras_batchnorm(weights, center=center, scale=scale)
    assert isinstance(m, BatchNormNd) and not m.training
    assert m.eps == 1e-3 and m.momentum == pytest.approx(0.01)
    assert m.affine == (center or scale) and (m.bias is not None) == center
    x = rng.standard_normal(shape).astype(np.float32)
    channels_first = np.moveaxis(x, -1, 1)  # a view; NHWC is read in place
    y = np.moveaxis(m(channels_first), 1, -1)
    expected = keras_inference(x, gamma if scale else None, beta if center else None, mean, var,
                               1e-3)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_keras_channels_first_and_float64():
    rng = np.random.default_rng(2)
    gamma, beta, mean, var = _keras_weights(3, rng, np.float64)
    m = from_keras_batchnorm([gamma, beta, mean, var], epsilon=1e-5, momentum=0.9, axis=1)
    assert m.dtype == np.float64 and m.eps == 1e-5
    x = rng.standard_normal((2, 3, 4, 4))
    np.testing.assert_allclose(m(x), keras_inference(x, gamma, beta, mean, var, 1e-5, axis=1),
                               rtol=1e-12, atol=1e-12)


def test_keras_momentum_convention():
    """Keras: moving = moving * momentum + batch * (1 - momentum); the module reproduces it
    (the variance with PyTorch's unbiased batch variance, as documented)."""
    rng = np.random.default_rng(4)
    gamma, beta, mean, var = _keras_weights(3, rng, np.float64)
    m = from_keras_batchnorm([gamma, beta, mean, var], momentum=0.95).train()
    x = rng.standard_normal((10, 3)) * 2 + 1
    m(x)
    np.testing.assert_allclose(m.running_mean, mean * 0.95 + x.mean(axis=0) * 0.05, rtol=1e-12)
    np.testing.assert_allclose(m.running_var, var * 0.95 + x.var(axis=0, ddof=1) * 0.05,
                               rtol=1e-12)


def test_keras_errors():
    rng = np.random.default_rng(5)
    g, b, mu, v = _keras_weights(3, rng)
    with pytest.raises(ValueError, match=r"expected 4 weights \[gamma, beta, moving_mean"):
        from_keras_batchnorm([b, mu, v])
    with pytest.raises(ValueError, match=r"expected 3 weights \[beta, moving_mean"):
        from_keras_batchnorm([g, b, mu, v], scale=False)
    with pytest.raises(ValueError, match="same length"):
        from_keras_batchnorm([g, b, mu, np.ones(4)])
    with pytest.raises(ValueError, match="1-D"):
        from_keras_batchnorm([g, b, mu, v.reshape(1, 3)])
    with pytest.raises(ValueError, match="non-finite"):
        from_keras_batchnorm([g, b, np.array([0.0, np.nan, 1.0]), v])
    with pytest.raises(ValueError, match="negative.*order"):
        from_keras_batchnorm([g, b, v, mu - 10])
    with pytest.raises(TypeError, match="list of arrays"):
        from_keras_batchnorm(np.stack([g, b, mu, v]))
    with pytest.raises(ValueError, match="one channel axis"):
        from_keras_batchnorm([g, b, mu, v], axis=[1, 2])
    with pytest.raises(TypeError, match="axis"):
        from_keras_batchnorm([g, b, mu, v], axis="channels_last")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="momentum"):
        from_keras_batchnorm([g, b, mu, v], momentum=1.5)
    with pytest.raises(ValueError, match="epsilon"):
        from_keras_batchnorm([g, b, mu, v], epsilon=-1.0)
    with pytest.raises(TypeError, match="center"):
        from_keras_batchnorm([g, b, mu, v], center=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="real numbers"):
        from_keras_batchnorm([g, b, mu, np.array(["a", "b", "c"])])
    # a one-element axis list (what Keras stores after build) is fine
    assert from_keras_batchnorm([g, b, mu, v], axis=[-1]).num_features == 3
