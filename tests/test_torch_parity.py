"""Live parity with ``torch.nn.functional`` (skipped when torch is not importable; the golden
fixtures in ``tests/data`` check the same without it)."""

from __future__ import annotations

import normcpp as nc
import numpy as np
import pytest
import reference as ref
from conftest import is_channels_last, to_layout

torch = pytest.importorskip("torch")
F = torch.nn.functional

DTYPES = [np.float32, np.float64]
LAYOUTS = ["contiguous", "channels_last", "sliced"]
NC_SHAPES = [(8, 6), (4, 3, 7), (2, 6, 33), (2, 5, 4, 6), (3, 6, 1, 17), (2, 3, 2, 3, 5)]
ROW_CASES = [((4, 33), 33), ((2, 3, 17), (3, 17)), ((2, 3, 4, 5), (4, 5)), ((3, 1, 257), 257),
             ((5, 1), 1)]


def _t(a):
    return None if a is None else torch.from_numpy(a)


def _np(t):
    return t.detach().numpy()


def assert_parity(y, y_torch, dtype):
    rtol, atol = ref.tolerance(dtype)
    assert y.dtype == y_torch.dtype and y.shape == y_torch.shape
    np.testing.assert_allclose(y, y_torch, rtol=2 * rtol, atol=2 * atol)


def _data(shape, dtype, layout, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 1.7 + 0.3).astype(dtype)
    return to_layout(x, layout), rng


def _params(rng, c, dtype):
    return (rng.uniform(0.5, 2, c).astype(dtype), rng.standard_normal(c).astype(dtype),
            rng.standard_normal(c).astype(dtype), rng.uniform(0.5, 2, c).astype(dtype))


@pytest.mark.parametrize("mode", ["train_stats", "train", "eval"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", NC_SHAPES, ids=str)
def test_batch_norm(shape, dtype, layout, mode, momentum=0.3):
    x, rng = _data(shape, dtype, layout)
    w, b, rm, rv = _params(rng, shape[1], dtype)
    if mode == "train":
        rm = rv = None
    rm_t = None if rm is None else rm.copy()
    rv_t = None if rv is None else rv.copy()
    training = mode != "eval"
    y_t = F.batch_norm(_t(x), _t(rm_t), _t(rv_t), _t(w), _t(b), training=training,
                       momentum=momentum, eps=1e-5)
    y = nc.batch_norm(x, rm, rv, w, b, training=training, momentum=momentum, eps=1e-5)
    assert_parity(y, _np(y_t), dtype)
    if rm is not None:
        assert_parity(rm, rm_t, dtype)
        assert_parity(rv, rv_t, dtype)
    if layout == "channels_last" and len(shape) > 2:
        assert is_channels_last(y)


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("mode", ["input_stats", "input_stats_running", "running"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [s for s in NC_SHAPES if len(s) >= 3], ids=str)
def test_instance_norm(shape, dtype, layout, mode, affine):
    x, rng = _data(shape, dtype, layout, seed=1)
    w, b, rm, rv = _params(rng, shape[1], dtype)
    if not affine:
        w = b = None
    if mode == "input_stats":
        rm = rv = None
    use_input_stats = mode != "running"
    rm_t = None if rm is None else rm.copy()
    rv_t = None if rv is None else rv.copy()
    y_t = F.instance_norm(_t(x), _t(rm_t), _t(rv_t), _t(w), _t(b),
                          use_input_stats=use_input_stats, momentum=0.2, eps=1e-5)
    y = nc.instance_norm(x, rm, rv, w, b, use_input_stats=use_input_stats, momentum=0.2,
                         eps=1e-5)
    assert_parity(y, _np(y_t), dtype)
    if rm is not None:
        assert_parity(rm, rm_t, dtype)
        assert_parity(rv, rv_t, dtype)


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", NC_SHAPES, ids=str)
def test_group_norm(shape, dtype, layout, affine):
    x, rng = _data(shape, dtype, layout, seed=2)
    w, b, _, _ = _params(rng, shape[1], dtype)
    if not affine:
        w = b = None
    for g in sorted({1, shape[1]} | ({3} if shape[1] % 3 == 0 else set())):
        y_t = F.group_norm(_t(x), g, _t(w), _t(b), eps=1e-5)
        assert_parity(nc.group_norm(x, g, w, b, eps=1e-5), _np(y_t), dtype)


@pytest.mark.parametrize("affine", ["none", "weight", "both"])
@pytest.mark.parametrize("layout", ["contiguous", "sliced", "negative"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,ns", ROW_CASES, ids=str)
def test_layer_norm(shape, ns, dtype, layout, affine):
    x, rng = _data(shape, dtype, "contiguous" if layout == "negative" else layout, seed=3)
    nst = (ns,) if isinstance(ns, int) else tuple(ns)
    w = rng.uniform(0.5, 2, nst).astype(dtype) if affine != "none" else None
    b = rng.standard_normal(nst).astype(dtype) if affine == "both" else None
    xt = _t(x)
    if layout == "negative":  # torch has no negative strides: flip a copy on both sides
        x = to_layout(x, "negative")
    y_t = F.layer_norm(xt, nst, _t(w), _t(b), eps=1e-5)
    assert_parity(nc.layer_norm(x, ns, w, b, eps=1e-5), _np(y_t), dtype)


@pytest.mark.parametrize("eps", [None, 1e-6])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "sliced"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,ns", ROW_CASES, ids=str)
def test_rms_norm(shape, ns, dtype, layout, weighted, eps):
    x, rng = _data(shape, dtype, layout, seed=4)
    nst = (ns,) if isinstance(ns, int) else tuple(ns)
    w = rng.uniform(0.5, 2, nst).astype(dtype) if weighted else None
    y_t = F.rms_norm(_t(x), list(nst), _t(w), eps=eps)
    assert_parity(nc.rms_norm(x, ns, w, eps=eps), _np(y_t), dtype)


def test_batch_norm_training_sequence_matches_torch():
    """Ten training steps then eval: the running statistics track PyTorch's."""
    rng = np.random.default_rng(9)
    rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
    rm_t, rv_t = torch.zeros(4), torch.ones(4)
    for _ in range(10):
        x = (rng.standard_normal((6, 4, 5, 5)) * 3 + 1).astype(np.float32)
        nc.batch_norm(x, rm, rv, training=True, momentum=0.1)
        F.batch_norm(torch.from_numpy(x), rm_t, rv_t, training=True, momentum=0.1)
    np.testing.assert_allclose(rm, rm_t.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rv, rv_t.numpy(), rtol=1e-5, atol=1e-6)
    x = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    assert_parity(nc.batch_norm(x, rm, rv), _np(F.batch_norm(torch.from_numpy(x), rm_t, rv_t)),
                  np.float32)
