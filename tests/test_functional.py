"""Every functional op against the float64 NumPy reference in ``reference.py``: every input
dtype, parameter dtype, with and without affine parameters, odd sizes that leave SIMD
remainders, running-statistics updates, ``out=``, exact zeros for constant input, stable
statistics, and property tests (shift/scale invariance, group_norm special cases)."""

from __future__ import annotations

import normcpp as nc
import numpy as np
import pytest
import reference as ref
from conftest import is_channels_last, random_params, to_layout

DTYPES = [np.float16, np.float32, np.float64]
PDTYPES = [np.float32, np.float64]
#: (which affine parameters, their dtype): every kind of affine, both parameter dtypes
AFFINE = [("none", np.float32), ("weight", np.float64), ("bias", np.float32),
          ("both", np.float32), ("both", np.float64)]
AFFINE_IDS = [f"{a}-{np.dtype(p).name}" for a, p in AFFINE]


def make_input(rng, shape, dtype, offset=0.5, scale=2.0):
    """Random data with a per-channel offset (axis 1), so channel means differ."""
    x = rng.standard_normal(shape) * scale + offset
    if len(shape) >= 2:
        x += np.arange(shape[1]).reshape((1, shape[1]) + (1,) * (len(shape) - 2)) * 0.25
    return x.astype(dtype)


def affine_params(rng, shape, pdtype, affine):
    w = rng.uniform(0.5, 1.5, shape).astype(pdtype) if affine in ("weight", "both") else None
    b = rng.standard_normal(shape).astype(pdtype) if affine in ("bias", "both") else None
    return w, b


def assert_close(y, expected, dtype):
    rtol, atol = ref.tolerance(dtype)
    np.testing.assert_allclose(np.asarray(y, dtype=np.float64), expected, rtol=rtol, atol=atol)


def stat_tol(dtype, pdtype):
    """(rtol, atol) for running statistics stored in ``pdtype`` from ``dtype`` input."""
    if np.dtype(dtype) == np.float64 and np.dtype(pdtype) == np.float64:
        return 1e-10, 1e-12
    return 1e-5, 1e-6


def assert_stats_close(actual, expected, dtype, pdtype):
    rtol, atol = stat_tol(dtype, pdtype)
    assert actual.dtype == np.dtype(pdtype)
    np.testing.assert_allclose(actual.astype(np.float64), expected, rtol=rtol, atol=atol)


# --------------------------------------------------------------------------------------------
# batch_norm

BN_SHAPES = [(5, 3), (4, 1, 31), (2, 3, 5), (3, 17, 33), (2, 7, 5, 5), (1, 3, 1, 257),
             (3, 133, 2), (2, 3, 3, 4, 5)]


@pytest.mark.parametrize("affine,pdtype", AFFINE, ids=AFFINE_IDS)
@pytest.mark.parametrize("mode", ["train_stats", "train", "eval"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
def test_batch_norm(shape, dtype, pdtype, mode, affine, rng):
    c = shape[1]
    x = make_input(rng, shape, dtype)
    x0 = x.copy()
    w, b = affine_params(rng, c, pdtype, affine)
    if mode == "train":
        rm = rv = None
    else:
        rm = rng.standard_normal(c).astype(pdtype)
        rv = rng.uniform(0.5, 3.0, c).astype(pdtype)
    training = mode != "eval"
    y_ref, rm_ref, rv_ref = ref.batch_norm(x, rm, rv, w, b, training=training, momentum=0.1,
                                           eps=1e-5)
    y = nc.batch_norm(x, rm, rv, w, b, training=training, momentum=0.1, eps=1e-5)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert y.flags.c_contiguous
    assert_close(y, y_ref, dtype)
    np.testing.assert_array_equal(x, x0)
    if rm is not None:
        assert_stats_close(rm, rm_ref, dtype, pdtype)
        assert_stats_close(rv, rv_ref, dtype, pdtype)


@pytest.mark.parametrize("momentum", [0.0, 1.0, 0.37])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_norm_momentum(momentum, dtype, rng):
    x = make_input(rng, (4, 3, 9), dtype)
    rm = rng.standard_normal(3)
    rv = rng.uniform(0.5, 2, 3)
    rm0, rv0 = rm.copy(), rv.copy()
    y_ref, rm_ref, rv_ref = ref.batch_norm(x, rm, rv, training=True, momentum=momentum)
    y = nc.batch_norm(x, rm, rv, training=True, momentum=momentum)
    assert_close(y, y_ref, dtype)
    if momentum == 0.0:  # the running statistics keep their exact values
        np.testing.assert_array_equal(rm, rm0)
        np.testing.assert_array_equal(rv, rv0)
    np.testing.assert_allclose(rm, rm_ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(rv, rv_ref, rtol=1e-6, atol=1e-7)


def test_batch_norm_default_momentum_and_eps(rng):
    x = make_input(rng, (6, 4, 5), np.float64)
    rm, rv = np.zeros(4), np.ones(4)
    y_ref, rm_ref, rv_ref = ref.batch_norm(x, rm, rv, training=True)
    y = nc.batch_norm(x, rm, rv, training=True)
    assert_close(y, y_ref, np.float64)
    np.testing.assert_allclose(rm, rm_ref, rtol=1e-12)
    np.testing.assert_allclose(rv, rv_ref, rtol=1e-12)


@pytest.mark.parametrize("eps", [0.0, 1e-3, 0.5])
def test_batch_norm_eps(eps, rng):
    x = make_input(rng, (3, 5, 7), np.float64)
    rm, rv = rng.standard_normal(5), rng.uniform(0.5, 2, 5)
    for training in (True, False):
        y_ref, _, _ = ref.batch_norm(x, rm.copy(), rv.copy(), training=training, eps=eps)
        y = nc.batch_norm(x, rm.copy(), rv.copy(), training=training, eps=eps)
        assert_close(y, y_ref, np.float64)


def test_batch_norm_eval_single_value_per_channel(rng):
    """Eval needs no batch statistics, so (1, C) is fine there."""
    x = make_input(rng, (1, 5), np.float32)
    rm, rv = rng.standard_normal(5), rng.uniform(0.5, 2, 5)
    y = nc.batch_norm(x, rm, rv)
    y_ref, _, _ = ref.batch_norm(x, rm, rv)
    assert_close(y, y_ref, np.float32)


def test_batch_norm_mixed_param_dtypes(rng):
    """Parameters and running statistics each have their own dtype."""
    x = make_input(rng, (3, 7, 11), np.float32)
    w = random_params(rng, 7, np.float32, positive=True)
    b = random_params(rng, 7, np.float64)
    rm = random_params(rng, 7, np.float64)
    rv = random_params(rng, 7, np.float32, positive=True)
    y_ref, rm_ref, rv_ref = ref.batch_norm(x, rm, rv, w, b, training=True, momentum=0.2)
    y = nc.batch_norm(x, rm, rv, w, b, training=True, momentum=0.2)
    assert_close(y, y_ref, np.float32)
    assert rm.dtype == np.float64 and rv.dtype == np.float32
    np.testing.assert_allclose(rm, rm_ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(rv, rv_ref, rtol=1e-6, atol=1e-7)


def test_batch_norm_strided_params_and_stats(rng):
    """Non-contiguous parameter vectors work; running stats update through the view."""
    c = 5
    x = make_input(rng, (4, c, 6), np.float64)
    wbuf, bbuf = rng.uniform(0.5, 2, 2 * c), rng.standard_normal(3 * c)
    rmbuf, rvbuf = rng.standard_normal(2 * c), rng.uniform(0.5, 2, 2 * c)
    w, b, rm, rv = wbuf[::2], bbuf[::-3], rmbuf[1::2], rvbuf[::2]
    rmbuf0, rvbuf0 = rmbuf.copy(), rvbuf.copy()
    y_ref, rm_ref, rv_ref = ref.batch_norm(x, rm, rv, w, b, training=True)
    y = nc.batch_norm(x, rm, rv, w, b, training=True)
    assert_close(y, y_ref, np.float64)
    np.testing.assert_allclose(rmbuf[1::2], rm_ref, rtol=1e-12)
    np.testing.assert_allclose(rvbuf[::2], rv_ref, rtol=1e-12)
    # the elements between the views are untouched
    np.testing.assert_array_equal(rmbuf[::2], rmbuf0[::2])
    np.testing.assert_array_equal(rvbuf[1::2], rvbuf0[1::2])


def test_batch_norm_eval_readonly_stats_and_params(rng):
    """Read-only running stats and parameters are fine when nothing is written to them."""
    x = make_input(rng, (2, 3, 4), np.float32)
    arrs = [rng.standard_normal(3), rng.uniform(0.5, 2, 3), rng.uniform(0.5, 2, 3),
            rng.standard_normal(3)]
    for a in arrs:
        a.flags.writeable = False
    x.flags.writeable = False
    y = nc.batch_norm(x, *arrs, training=False)
    y_ref, _, _ = ref.batch_norm(x, *arrs, training=False)
    assert_close(y, y_ref, np.float32)
    # training without running stats: read-only weight and bias are fine too
    y = nc.batch_norm(x, None, None, arrs[2], arrs[3], training=True)
    y_ref, _, _ = ref.batch_norm(x, None, None, arrs[2], arrs[3], training=True)
    assert_close(y, y_ref, np.float32)


def test_batch_norm_repeated_updates(rng):
    """Several training steps compound the running statistics as PyTorch's do."""
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    rm_ref, rv_ref = rm.astype(np.float64), rv.astype(np.float64)
    for _ in range(5):
        x = make_input(rng, (8, 3, 4, 4), np.float32)
        nc.batch_norm(x, rm, rv, training=True, momentum=0.1)
        _, rm_ref, rv_ref = ref.batch_norm(x, rm_ref, rv_ref, training=True, momentum=0.1)
    np.testing.assert_allclose(rm, rm_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rv, rv_ref, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# instance_norm

IN_SHAPES = [(2, 3, 5), (1, 1, 31), (3, 7, 33), (2, 17, 5, 5), (2, 3, 1, 257), (2, 3, 3, 4, 5)]


@pytest.mark.parametrize("affine,pdtype", AFFINE, ids=AFFINE_IDS)
@pytest.mark.parametrize("mode", ["input_stats", "input_stats_running", "running"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", IN_SHAPES, ids=str)
def test_instance_norm(shape, dtype, pdtype, mode, affine, rng):
    c = shape[1]
    x = make_input(rng, shape, dtype)
    x0 = x.copy()
    w, b = affine_params(rng, c, pdtype, affine)
    if mode == "input_stats":
        rm = rv = None
    else:
        rm = rng.standard_normal(c).astype(pdtype)
        rv = rng.uniform(0.5, 3.0, c).astype(pdtype)
    use_input_stats = mode != "running"
    rm0 = None if rm is None else rm.copy()
    rv0 = None if rv is None else rv.copy()
    y_ref, rm_ref, rv_ref = ref.instance_norm(x, rm, rv, w, b, use_input_stats=use_input_stats,
                                              momentum=0.1, eps=1e-5)
    y = nc.instance_norm(x, rm, rv, w, b, use_input_stats=use_input_stats, momentum=0.1,
                         eps=1e-5)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert y.flags.c_contiguous
    assert_close(y, y_ref, dtype)
    np.testing.assert_array_equal(x, x0)
    if mode == "input_stats_running":
        assert_stats_close(rm, rm_ref, dtype, pdtype)
        assert_stats_close(rv, rv_ref, dtype, pdtype)
    elif mode == "running":  # running statistics only read
        np.testing.assert_array_equal(rm, rm0)
        np.testing.assert_array_equal(rv, rv0)


@pytest.mark.parametrize("momentum", [0.0, 1.0, 0.3])
def test_instance_norm_momentum(momentum, rng):
    x = make_input(rng, (5, 4, 3, 3), np.float64)
    rm, rv = rng.standard_normal(4), rng.uniform(0.5, 2, 4)
    y_ref, rm_ref, rv_ref = ref.instance_norm(x, rm, rv, momentum=momentum)
    y = nc.instance_norm(x, rm, rv, momentum=momentum)
    assert_close(y, y_ref, np.float64)
    np.testing.assert_allclose(rm, rm_ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(rv, rv_ref, rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------------------------
# group_norm

GN_CASES = [((4, 6), 2), ((2, 1, 31), 1), ((2, 3, 5), 3), ((2, 3, 5), 1), ((3, 6, 33), 2),
            ((2, 8, 5, 5), 4), ((2, 17, 3, 3), 17), ((2, 6, 1, 257), 3), ((2, 4, 3, 4, 5), 2),
            ((1, 7, 1), 7)]


@pytest.mark.parametrize("affine,pdtype", AFFINE, ids=AFFINE_IDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,groups", GN_CASES, ids=str)
def test_group_norm(shape, groups, dtype, pdtype, affine, rng):
    x = make_input(rng, shape, dtype)
    x0 = x.copy()
    w, b = affine_params(rng, shape[1], pdtype, affine)
    y = nc.group_norm(x, groups, w, b, eps=1e-5)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert y.flags.c_contiguous
    assert_close(y, ref.group_norm(x, groups, w, b, eps=1e-5), dtype)
    np.testing.assert_array_equal(x, x0)


def test_group_norm_numpy_integer_groups(rng):
    x = make_input(rng, (2, 6, 7), np.float32)
    assert_close(nc.group_norm(x, np.int64(3)), ref.group_norm(x, 3), np.float32)


# --------------------------------------------------------------------------------------------
# layer_norm and rms_norm

LN_CASES = [((5,), 5), ((4, 1), 1), ((3, 31), 31), ((3, 33), (33,)), ((2, 5, 257), 257),
            ((2, 3, 17), (3, 17)), ((2, 3, 4, 5), [4, 5]), ((2, 2, 3, 4, 5), (3, 4, 5)),
            ((3, 1027), 1027), ((2, 3, 4), (2, 3, 4))]


def _ns_tuple(ns):
    return (ns,) if isinstance(ns, int) else tuple(ns)


@pytest.mark.parametrize("affine,pdtype", AFFINE, ids=AFFINE_IDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,ns", LN_CASES, ids=str)
def test_layer_norm(shape, ns, dtype, pdtype, affine, rng):
    x = make_input(rng, shape, dtype)
    x0 = x.copy()
    w, b = affine_params(rng, _ns_tuple(ns), pdtype, affine)
    y = nc.layer_norm(x, ns, w, b, eps=1e-5)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert y.flags.c_contiguous
    assert_close(y, ref.layer_norm(x, ns, w, b, eps=1e-5), dtype)
    np.testing.assert_array_equal(x, x0)


@pytest.mark.parametrize("eps", [None, 0.1])
@pytest.mark.parametrize("weighted,pdtype", [(False, None), (True, np.float32),
                                             (True, np.float64)], ids=["none", "f32", "f64"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,ns", LN_CASES, ids=str)
def test_rms_norm(shape, ns, dtype, pdtype, weighted, eps, rng):
    x = make_input(rng, shape, dtype)
    x0 = x.copy()
    w = rng.uniform(0.5, 1.5, _ns_tuple(ns)).astype(pdtype) if weighted else None
    y = nc.rms_norm(x, ns, w, eps=eps)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert y.flags.c_contiguous
    assert_close(y, ref.rms_norm(x, ns, w, eps=eps), dtype)
    np.testing.assert_array_equal(x, x0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,ns", [((9, 2100), 2100), ((6, 2, 5000), (2, 5000))], ids=str)
def test_norm_long_rows_each_own_statistics(shape, ns, dtype, rng, restore_threads):
    """Rows over 8 KB with a weight or bias are normalized in groups of rows (up to 4 and
    128 KB), 1024 elements at a time across the group: (9, 2100) is groups 4 + 4 + 1 with a
    52-element last chunk, (6, 2, 5000) float32 groups of 3. Every row has its own scale and
    offset, so a row normalized with another's statistics cannot pass."""
    ns_t = _ns_tuple(ns)
    rows = int(np.prod(shape[: len(shape) - len(ns_t)]))
    scale = 2.0 ** np.arange(-4, rows - 4).reshape((-1,) + (1,) * len(shape[1:]))
    x = (rng.standard_normal((rows,) + shape[1:]) * scale + 3 * scale).astype(dtype)
    x = x.reshape(shape)
    w = rng.uniform(0.5, 1.5, ns_t).astype(np.float32)
    b = rng.standard_normal(ns_t).astype(np.float32)
    for threads in (1, 2, 3):
        nc.set_num_threads(threads)
        for kw in ({"weight": w, "bias": b}, {"weight": w}, {"bias": b}):
            y = nc.layer_norm(x, ns, eps=1e-5, **kw)
            expected = ref.layer_norm(x, ns, kw.get("weight"), kw.get("bias"), eps=1e-5)
            assert_close(y, expected, dtype)
        assert_close(nc.rms_norm(x, ns, w), ref.rms_norm(x, ns, w), dtype)


def test_rms_norm_default_eps_is_dtype_eps():
    """eps=None means np.finfo(input.dtype).eps: visible on a tiny row."""
    for dtype in DTYPES:
        x = np.full((1, 4), 1e-4, dtype=dtype)
        eps = float(np.finfo(dtype).eps)
        expected = float(x[0, 0]) / np.sqrt(float(x[0, 0]) ** 2 + eps)
        y = nc.rms_norm(x, 4)
        assert_close(y, np.full((1, 4), expected), dtype)
        assert_close(nc.rms_norm(x, 4, eps=eps), np.full((1, 4), expected), dtype)


def test_layer_norm_default_eps(rng):
    x = make_input(rng, (3, 8), np.float64) * 1e-3
    assert_close(nc.layer_norm(x, 8), ref.layer_norm(x, 8, eps=1e-5), np.float64)


# --------------------------------------------------------------------------------------------
# out=


def _call(op, x, out=None, rng=None):
    """Run ``op`` on ``x`` with parameters drawn from ``rng``; returns (y, float64 reference)."""
    r = np.random.default_rng(7)
    c = x.shape[1]
    if op == "batch_norm":
        rm, rv = r.standard_normal(c), r.uniform(0.5, 2, c)
        w, b = r.uniform(0.5, 2, c), r.standard_normal(c)
        y_ref, _, _ = ref.batch_norm(x, rm, rv, w, b, training=False)
        return nc.batch_norm(x, rm, rv, w, b, out=out), y_ref
    if op == "batch_norm_train":
        w, b = r.uniform(0.5, 2, c), r.standard_normal(c)
        y_ref, _, _ = ref.batch_norm(x, None, None, w, b, training=True)
        return nc.batch_norm(x, None, None, w, b, training=True, out=out), y_ref
    if op == "instance_norm":
        w, b = r.uniform(0.5, 2, c), r.standard_normal(c)
        y_ref, _, _ = ref.instance_norm(x, None, None, w, b)
        return nc.instance_norm(x, None, None, w, b, out=out), y_ref
    if op == "group_norm":
        w, b = r.uniform(0.5, 2, c), r.standard_normal(c)
        y_ref = ref.group_norm(x, 2, w, b)
        return nc.group_norm(x, 2, w, b, out=out), y_ref
    ns = x.shape[-2:]
    w = r.uniform(0.5, 2, ns)
    if op == "layer_norm":
        b = r.standard_normal(ns)
        y_ref = ref.layer_norm(x, ns, w, b)
        return nc.layer_norm(x, ns, w, b, out=out), y_ref
    assert op == "rms_norm"
    y_ref = ref.rms_norm(x, ns, w)
    return nc.rms_norm(x, ns, w, out=out), y_ref


OPS = ["batch_norm", "batch_norm_train", "instance_norm", "group_norm", "layer_norm", "rms_norm"]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS)
def test_out(op, dtype, layout, rng):
    x = to_layout(make_input(rng, (3, 4, 5, 33), dtype), layout)
    x0 = x.copy()
    out = np.full_like(x, np.nan)  # empty_like keeps the layout of x
    y, y_ref = _call(op, x, out=out)
    assert y is out
    assert_close(out, y_ref, dtype)
    np.testing.assert_array_equal(x, x0)


@pytest.mark.parametrize("out_layout", ["contiguous", "channels_last", "sliced"])
@pytest.mark.parametrize("op", OPS)
def test_out_other_layout(op, out_layout, rng):
    """``out`` need not have the input's layout."""
    x = make_input(rng, (2, 4, 3, 17), np.float32)
    out = to_layout(np.full(x.shape, np.nan, np.float32), out_layout)
    y, y_ref = _call(op, x, out=out)
    assert y is out
    assert_close(out, y_ref, np.float32)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS)
def test_out_in_place(op, dtype, layout, rng):
    x = to_layout(make_input(rng, (3, 4, 5, 33), dtype), layout)
    _, y_ref = _call(op, x.copy())
    y, _ = _call(op, x, out=x)
    assert y is x
    assert_close(x, y_ref, dtype)


def test_out_in_place_updates_running_stats(rng):
    x = make_input(rng, (4, 3, 10), np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    y_ref, rm_ref, rv_ref = ref.batch_norm(x, rm, rv, training=True)
    y = nc.batch_norm(x, rm, rv, training=True, out=x)
    assert y is x
    assert_close(x, y_ref, np.float32)
    np.testing.assert_allclose(rm, rm_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rv, rv_ref, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# constant input: exactly zero before the affine, so the output is exactly the bias


def _const_input(shape, dtype, values):
    """(N, C, ...) input whose channel c is the constant values[c]."""
    v = np.asarray(values, dtype=np.float64).reshape((1, shape[1]) + (1,) * (len(shape) - 2))
    return np.broadcast_to(v, shape).astype(dtype)


CONST_VALUES = [0.1, 3.7, -1234.567, 1e4 + 0.1, 0.0, 7.0, -0.3]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 7, 1000), (2, 7, 5, 33), (1, 7, 2, 3, 17)], ids=str)
def test_constant_input_gives_bias(shape, dtype, layout, rng):
    c = shape[1]
    x = to_layout(_const_input(shape, dtype, CONST_VALUES), layout)
    w = rng.uniform(0.5, 2, c)
    b = rng.standard_normal(c)
    expected = np.broadcast_to(b.reshape((1, c) + (1,) * (len(shape) - 2)), shape).astype(dtype)
    rm, rv = np.zeros(c), np.ones(c)
    np.testing.assert_array_equal(nc.batch_norm(x, rm, rv, w, b, training=True), expected)
    np.testing.assert_array_equal(nc.instance_norm(x, None, None, w, b), expected)
    np.testing.assert_array_equal(nc.group_norm(x, 7, w, b), expected)
    # the batch statistics were exactly the constants, with zero variance
    np.testing.assert_allclose(rm, 0.1 * np.asarray(CONST_VALUES, dtype).astype(np.float64),
                               rtol=1e-12)
    np.testing.assert_allclose(rv, 0.9, rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 5, 31, 33, 257, 4099])
def test_constant_rows_layer_norm_gives_bias(n, dtype, rng):
    x = np.repeat(np.asarray(CONST_VALUES, dtype)[:, None], n, axis=1)
    w = rng.uniform(0.5, 2, n)
    b = rng.standard_normal(n)
    y = nc.layer_norm(x, n, w, b)
    np.testing.assert_array_equal(y, np.broadcast_to(b.astype(dtype), x.shape))
    # rms_norm of a zero row is exactly zero
    z = np.zeros((3, n), dtype)
    np.testing.assert_array_equal(nc.rms_norm(z, n, w), z)


def test_constant_input_without_affine_is_zero():
    x = np.full((2, 3, 1001), 0.1, np.float32)
    for y in (nc.batch_norm(x, training=True), nc.instance_norm(x), nc.group_norm(x, 3),
              nc.layer_norm(x, 1001)):
        np.testing.assert_array_equal(y, np.zeros_like(x))


# --------------------------------------------------------------------------------------------
# stable statistics


def test_stable_statistics_1e7_float32():
    """10^7 float32 values 1e4 + N(0, 1) in one channel: variance within 1e-4 relative."""
    rng = np.random.default_rng(2024)
    x = (1e4 + rng.standard_normal(10**7)).astype(np.float32).reshape(1, 1, -1)
    x64 = x.astype(np.float64).ravel()
    mean64 = x64.mean()
    var64 = x64.var(ddof=1)
    rm, rv = np.zeros(1), np.ones(1)
    y = nc.batch_norm(x, rm, rv, training=True, momentum=1.0)
    assert abs(rv[0] - var64) <= 1e-4 * var64
    assert abs(rm[0] - mean64) <= 1e-6 * abs(mean64)
    y64 = y.astype(np.float64).ravel()
    expected_std = np.sqrt(x64.var() / (x64.var() + 1e-5))
    assert abs(y64.std() - expected_std) <= 1e-4 * expected_std
    assert abs(y64.mean()) < 1e-2


@pytest.mark.parametrize("op", ["instance_norm", "group_norm", "layer_norm", "batch_norm"])
def test_stable_statistics_large_offset(op):
    """Statistics of 1e4 + N(0, 1) in float32 slots of 2^16 elements stay accurate."""
    rng = np.random.default_rng(99)
    x = (1e4 + rng.standard_normal((2, 3, 2**16))).astype(np.float32)
    if op == "instance_norm":
        y = nc.instance_norm(x)
        axes = (2,)
    elif op == "group_norm":
        y = nc.group_norm(x, 1)
        axes = (1, 2)
    elif op == "layer_norm":
        y = nc.layer_norm(x, 2**16)
        axes = (2,)
    else:
        y = nc.batch_norm(x, training=True)
        axes = (0, 2)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    var = x64.var(axis=axes)
    np.testing.assert_allclose(y64.std(axis=axes), np.sqrt(var / (var + 1e-5)), rtol=1e-4)
    np.testing.assert_allclose(y64.mean(axis=axes), 0, atol=1e-2)


@pytest.mark.parametrize("channels", [3, 16])
def test_channels_last_statistics_survive_an_unrepresentative_sample(channels):
    """Channels-last statistics take one pass about a shift K (the mean of 32 rows spread
    evenly over each block of 32768 elements) when K is close to the block's mean. Here those
    very rows are outliers (1000 among 1 + 0.01 N(0, 1)), so K is ~18 standard deviations off:
    the one-pass M2 would cancel ~300x and keep ~3 digits; the guard must fall back to the
    exact second pass (M2 within 3e-5 relative of float64)."""
    rng = np.random.default_rng(7)
    nr = 32768 // channels
    x = 1.0 + 1e-2 * rng.standard_normal((nr, channels))
    x[[(2 * i + 1) * nr // 64 for i in range(32)]] = 1000.0
    x = x.astype(np.float32)
    xl = x.reshape(1, 1, nr, channels).transpose(0, 3, 1, 2)  # NHWC (1, C, 1, nr)
    n, mean, m2 = nc.batch_norm_stats(xl)
    x64 = x.astype(np.float64)
    mean64 = x64.mean(axis=0)
    m2_64 = ((x64 - mean64) ** 2).sum(axis=0)
    np.testing.assert_array_equal(n, nr)
    np.testing.assert_allclose(m2, m2_64, rtol=3e-5)
    np.testing.assert_allclose(mean, mean64, rtol=0, atol=1e-6 * np.sqrt(m2_64 / nr).min())
    y = nc.batch_norm(xl, training=True).transpose(0, 2, 3, 1).reshape(nr, channels)
    np.testing.assert_allclose(y, (x64 - mean64) / np.sqrt(m2_64 / nr + 1e-5), atol=1e-4)


@pytest.mark.parametrize("length", [2, 9, 64, 200, 256])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_short_run_statistics_survive_an_outlier_first_element(length, dtype):
    """Runs of <= 256 elements (the channels of small NCHW tensors) take one pass about
    K = their first element when K is within sqrt(8) standard deviations of their mean. Here
    the first element is an outlier (0 before 50 + N(0, 1)): the one-pass M2 would cancel up to
    ~250x; the guard must fall back to the exact two passes. The other rows (first element
    typical) take the one pass and must be as accurate."""
    rng = np.random.default_rng(length)
    x = 50.0 + rng.standard_normal((4, length))
    x[0, 0] = 0.0  # outlier first element
    x[1, 0] = 50.0  # a typical first element
    x[2] = 7.25  # constant: mean exact, M2 exactly 0
    x = x.astype(dtype)
    n, mean, m2 = nc.batch_norm_stats(x.reshape(1, 4, length))  # one run per channel
    x64 = x.astype(np.float64)
    mean64 = x64.mean(axis=1)
    m2_64 = ((x64 - mean64[:, None]) ** 2).sum(axis=1)
    np.testing.assert_array_equal(n, length)
    assert mean[2] == 7.25 and m2[2] == 0.0
    keep = [0, 1, 3]
    np.testing.assert_allclose(m2[keep], m2_64[keep], rtol=3e-6 if length > 2 else 1e-6)
    np.testing.assert_allclose(mean, mean64, rtol=1e-7)


@pytest.mark.parametrize("length", [257, 300, 384, 1000, 2048, 2049])
@pytest.mark.parametrize("op", ["layer_norm", "layer_norm_w", "layer_norm_relu", "rms_norm"])
def test_float16_rows_kept_between_statistics_and_normalization(op, length):
    """float16 LayerNorm/RMSNorm rows of 257..2048 elements keep, between their statistics and
    their normalization, what the statistics converted (x - K about a shift K, or x) in
    float32, and normalize from it: every element, the vector tails (length % 16) included,
    must be within one float16 ulp of the float64 reference rounded to float16, also for a row
    whose shift sample is unrepresentative (its second pass keeps x - the block mean) and a
    constant row; the returned mean and 1/std must match float64. (2049: past the kept size,
    the plain path.)"""
    rng = np.random.default_rng(length)
    x64 = 3.0 + rng.standard_normal((6, length))
    x64[1] = 0.0
    x64[1, [(2 * j + 1) * length // 16 for j in range(8)]] = 100.0  # outliers at the samples
    x64[2] = 7.25  # constant
    x64[3] *= 40.0
    x = x64.astype(np.float16)
    xd = x.astype(np.float64)
    w = rng.standard_normal(length).astype(np.float32)
    b = rng.standard_normal(length).astype(np.float32)
    if op == "rms_norm":
        y = nc.rms_norm(x, (length,), w, eps=1e-5)
        mean = np.zeros(6)
        inv = 1.0 / np.sqrt((xd**2).mean(axis=1) + 1e-5)
        ref64 = xd * inv[:, None] * w
    else:
        weight, bias = (w, None) if op == "layer_norm_w" else (w, b)
        act = "relu" if op == "layer_norm_relu" else None
        y, save_mean, save_inv = nc.layer_norm_forward(x, (length,), weight, bias)
        y_act = nc.layer_norm(x, (length,), weight, bias, activation=act)
        mean = xd.mean(axis=1)
        inv = 1.0 / np.sqrt(xd.var(axis=1) + 1e-5)
        assert (np.abs(save_mean - mean) <= 1e-6 * xd.std(axis=1) + 1e-12).all()
        np.testing.assert_allclose(save_inv, inv, rtol=1e-6)
        ref64 = (xd - mean[:, None]) * inv[:, None] * w + (0.0 if bias is None else b)
        if act:
            np.testing.assert_array_equal(y_act, np.maximum(y, 0))
    expected = ref64.astype(np.float16)
    ulp = np.spacing(np.abs(expected)).astype(np.float64)
    err = np.abs(y.astype(np.float64) - expected.astype(np.float64))
    assert y.dtype == np.float16
    assert (err <= ulp).all(), f"row {np.argwhere(err > ulp)[0]} off by {err.max()}"


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("op", ["instance_norm", "group_norm", "batch_norm"])
def test_large_slots_in_several_rounds(op, layout):
    """Slots of 115,200 elements (past the fused size) are reduced in 4 chunks each, and
    several slots at a time go through statistics then normalization ("rounds" of ~512K
    elements a thread): at one thread 6 samples (12 BN channels) make 2-3 rounds. Every slot
    must get its own statistics, whatever the round, and the result must not depend on the
    thread count."""
    rng = np.random.default_rng(11)
    shape = (4, 12, 240, 120) if op == "batch_norm" else (6, 16, 80, 90)
    x64 = rng.standard_normal(shape) * rng.uniform(0.5, 3, (1, shape[1], 1, 1)) \
        + rng.uniform(-5, 5, (shape[0], shape[1], 1, 1))
    x = to_layout(x64.astype(np.float32), layout)
    w = rng.standard_normal(shape[1]).astype(np.float32)
    b = rng.standard_normal(shape[1]).astype(np.float32)
    if op == "instance_norm":
        run = lambda: nc.instance_norm(x, weight=w, bias=b)
        expected = ref.instance_norm(x, weight=w, bias=b)[0]
    elif op == "group_norm":
        run = lambda: nc.group_norm(x, 4, w, b)
        expected = ref.group_norm(x, 4, w, b)
    else:
        run = lambda: nc.batch_norm(x, None, None, w, b, training=True)
        expected = ref.batch_norm(x, None, None, w, b, training=True)[0]
    old = nc.get_num_threads()
    try:
        nc.set_num_threads(1)
        y1 = run()
        nc.set_num_threads(2)
        y2 = run()
    finally:
        nc.set_num_threads(old)
    assert_close(y1, expected, np.float32)
    np.testing.assert_array_equal(y1, y2)


def test_stable_rms_norm_large_values():
    rng = np.random.default_rng(5)
    x = (1e4 + rng.standard_normal((3, 2**16))).astype(np.float32)
    assert_close(nc.rms_norm(x, 2**16), ref.rms_norm(x, 2**16), np.float32)


# --------------------------------------------------------------------------------------------
# property tests

try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # the property tests need the test extra; the rest of the file does not
    def given(**_kwargs):
        return lambda f: pytest.mark.skip(reason="hypothesis is not installed")(f)

    def settings(**_kwargs):
        return lambda f: f

    class st:
        integers = floats = sampled_from = staticmethod(lambda *a, **k: None)

PROP = settings(max_examples=25, deadline=None)


@PROP
@given(n=st.integers(1, 4), c=st.integers(1, 9), s=st.integers(2, 70),
       seed=st.integers(0, 2**32 - 1), scale=st.floats(0.01, 100.0),
       shift=st.floats(-1000.0, 1000.0))
def test_shift_scale_invariance(n, c, s, seed, scale, shift):
    """norm(scale * x + shift) == norm(x) for batch/instance/group/layer norm (eps = 0)."""
    x = np.random.default_rng(seed).standard_normal((n, c, s))
    z = scale * x + shift
    for f in (lambda a: nc.instance_norm(a, eps=0.0),
              lambda a: nc.group_norm(a, 1, eps=0.0),
              lambda a: nc.layer_norm(a, s, eps=0.0),
              lambda a: nc.batch_norm(a, training=True, eps=0.0)):
        np.testing.assert_allclose(f(z), f(x), rtol=1e-7, atol=1e-7)
    # rms_norm is scale invariant only
    np.testing.assert_allclose(nc.rms_norm(scale * x, s, eps=0.0), nc.rms_norm(x, s, eps=0.0),
                               rtol=1e-9, atol=1e-9)


@PROP
@given(n=st.integers(1, 3), c=st.integers(1, 9), h=st.integers(1, 6), w=st.integers(2, 19),
       seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from([np.float32, np.float64]))
def test_group_norm_special_cases(n, c, h, w, seed, dtype):
    """One group is layer_norm over (C, H, W); C groups is instance_norm."""
    x = make_input(np.random.default_rng(seed), (n, c, h, w), dtype)
    rtol, atol = ref.tolerance(dtype)
    np.testing.assert_allclose(nc.group_norm(x, 1), nc.layer_norm(x, (c, h, w)),
                               rtol=2 * rtol, atol=2 * atol)
    np.testing.assert_allclose(nc.group_norm(x, c), nc.instance_norm(x),
                               rtol=2 * rtol, atol=2 * atol)


@PROP
@given(n=st.integers(2, 5), c=st.integers(1, 9), s=st.integers(1, 40),
       seed=st.integers(0, 2**32 - 1))
def test_batch_norm_is_layer_norm_of_transposed(n, c, s, seed):
    """batch_norm training on (N, C, S) == per-channel normalization over (N, S)."""
    x = np.random.default_rng(seed).standard_normal((n, c, s))
    y = nc.batch_norm(x, training=True)
    t = np.ascontiguousarray(x.transpose(1, 0, 2)).reshape(c, n * s)
    y2 = nc.layer_norm(t, n * s).reshape(c, n, s).transpose(1, 0, 2)
    np.testing.assert_allclose(y, y2, rtol=1e-10, atol=1e-12)


def test_channels_last_output_layout_kept(rng):
    x = to_layout(make_input(rng, (2, 3, 4, 5), np.float32), "channels_last")
    assert is_channels_last(nc.batch_norm(x, training=True))


# ---- short rows (normalized size <= 16 elements: float32 rows of 4, 8, 16 one vector each,
# the rest one plain loop per row)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("nshape", [(1,), (2,), (7,), (8,), (3, 5), (16,), (17,)])
@pytest.mark.parametrize("affine", ["none", "weight", "both"])
def test_short_rows_match_reference(dtype, nshape, affine):
    rng = np.random.default_rng(sum(nshape) + len(affine))
    x = (rng.standard_normal((131, *nshape)) * 4 + 2).astype(dtype)  # > two 64-row groups
    w = (rng.standard_normal(nshape) + 1).astype(np.float32) if affine != "none" else None
    b = rng.standard_normal(nshape).astype(np.float32) if affine == "both" else None
    rtol, atol = ref.tolerance(dtype)
    y, mean, invstd = nc.layer_norm_forward(x, nshape, w, b, 1e-5)
    np.testing.assert_allclose(y.astype(np.float64), ref.layer_norm(x, nshape, w, b),
                               rtol=rtol, atol=atol * 4)
    axes = tuple(range(1, 1 + len(nshape)))
    xd = x.astype(np.float64)
    srtol = 1e-12 if dtype == np.float64 else 1e-6  # (17,): the float32-block kernel path
    np.testing.assert_allclose(mean, xd.mean(axis=axes), rtol=srtol, atol=srtol)
    np.testing.assert_allclose(invstd, 1 / np.sqrt(xd.var(axis=axes) + 1e-5), rtol=srtol)
    z = nc.rms_norm(x, nshape, w)
    np.testing.assert_allclose(z.astype(np.float64), ref.rms_norm(x, nshape, w),
                               rtol=rtol, atol=atol * 4)
    inplace = x.copy()
    assert nc.layer_norm(inplace, nshape, w, b, out=inplace) is inplace
    np.testing.assert_array_equal(inplace, y)


@pytest.mark.parametrize("nshape", [(4,), (8,), (16,)])
@pytest.mark.parametrize("rms", [False, True])
def test_short_rows_do_not_depend_on_the_row_count(nshape, rms):
    # rows of 8 are reduced 8 at a time (the last few from a zero-padded copy): a row's
    # statistics and output must be the same bits whatever rows surround it
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((70, *nshape)) * 3 + 5).astype(np.float32)
    w = (rng.standard_normal(nshape) + 1).astype(np.float32)
    if rms:
        full = nc.rms_norm_forward(x, nshape, w, 1e-6)
        parts = [nc.rms_norm_forward(x[k:k + n], nshape, w, 1e-6)
                 for k, n in ((0, 1), (3, 5), (9, 8), (17, 53))]
    else:
        full = nc.layer_norm_forward(x, nshape, w, None, 1e-5)
        parts = [nc.layer_norm_forward(x[k:k + n], nshape, w, None, 1e-5)
                 for k, n in ((0, 1), (3, 5), (9, 8), (17, 53))]
    for (k, n), part in zip(((0, 1), (3, 5), (9, 8), (17, 53)), parts):
        for got, want in zip(part, full):
            np.testing.assert_array_equal(got, want[k:k + n])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", [0.5, -100.0])
@pytest.mark.parametrize("case", ["bn_rows", "bn_nhwc", "in_nhwc"])
def test_channel_strips(case, offset, dtype, rng):
    """Channels-last samples too large to normalize in one visit but with wide rows go by
    strips of channels over all rows (BatchNorm (300, 1003): strips of 336, 336 and 331
    channels, the last not whole vectors; InstanceNorm of 400 x 600 samples: 208, 208, 184).
    Against the float64 reference with the running statistics, with a large common offset
    (the statistics' one-pass shift), and bitwise the same for 1 and 2 threads."""
    shape = {"bn_rows": (300, 1003), "bn_nhwc": (3, 1003, 10, 10),
             "in_nhwc": (2, 600, 20, 20)}[case]
    x = make_input(rng, shape, dtype, offset=offset)
    if case != "bn_rows":
        x = to_layout(x, "channels_last")
    C = shape[1]
    w, b = random_params(rng, C, np.float32), random_params(rng, C, np.float32)
    rm0, rv0 = random_params(rng, C, np.float32), random_params(rng, C, np.float32, True)
    fn, rfn = ((nc.instance_norm, ref.instance_norm) if case == "in_nhwc" else
               (lambda *a, **k: nc.batch_norm(*a, training=True, **k),
                lambda *a, **k: ref.batch_norm(*a, training=True, **k)))
    y_ref, rm_ref, rv_ref = rfn(x, rm0, rv0, w, b, momentum=0.1)
    old = nc.get_num_threads()
    outs = []
    try:
        for t in (1, 2):
            nc.set_num_threads(t)
            rm, rv = rm0.copy(), rv0.copy()
            outs.append((fn(x, rm, rv, w, b, momentum=0.1), rm, rv))
    finally:
        nc.set_num_threads(old)
    (y1, rm1, rv1), (y2, rm2, rv2) = outs
    assert_close(y1, y_ref, dtype)
    assert_stats_close(rm1, rm_ref, dtype, np.float32)
    assert_stats_close(rv1, rv_ref, dtype, np.float32)
    for got, want in ((y2, y1), (rm2, rm1), (rv2, rv1)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["instance_norm", "group_norm", "batch_norm_one_sample"])
def test_slot_blocks(op, dtype, rng):
    """NCHW slots of small planes are normalized whole, blocks of slots at a time (planes of
    700: 2 slots a block for InstanceNorm, so blocks straddle the 5-channel samples; GroupNorm
    slots of 2 channels each; BatchNorm training of one sample the same way). Against the
    float64 reference with weight and bias (each run with its own channel's), and every sample
    bitwise the same normalized alone."""
    N, C = (1, 5) if op == "batch_norm_one_sample" else (7, 6)
    x = make_input(rng, (N, C, 20, 35), dtype, offset=2.0)
    w, b = random_params(rng, C, np.float32), random_params(rng, C, np.float32)
    if op == "instance_norm":
        def fn(a):
            return nc.instance_norm(a, weight=w, bias=b)
        want = ref.instance_norm(x, None, None, w, b, momentum=0.1)[0]
    elif op == "group_norm":
        def fn(a):
            return nc.group_norm(a, 3, w, b)
        want = ref.group_norm(x, 3, w, b)
    else:
        rm0, rv0 = random_params(rng, C, np.float32), random_params(rng, C, np.float32, True)
        rm, rv = rm0.copy(), rv0.copy()
        got = nc.batch_norm(x, rm, rv, w, b, training=True, momentum=0.1)
        want, rm_ref, rv_ref = ref.batch_norm(x, rm0, rv0, w, b, training=True, momentum=0.1)
        assert_close(got, want, dtype)
        assert_stats_close(rm, rm_ref, dtype, np.float32)
        assert_stats_close(rv, rv_ref, dtype, np.float32)
        # the statistics are those of batch_norm_stats (the channel pass), bit for bit
        _, mean, _ = nc.batch_norm_forward(x, None, None, w, b, training=True)
        np.testing.assert_array_equal(mean, nc.batch_norm_stats(x)[1])
        return
    y = fn(x)
    assert_close(y, want, dtype)
    for k in range(N):
        np.testing.assert_array_equal(fn(x[k:k + 1]), y[k:k + 1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_norm_eval_long_planes(dtype, rng):
    """Eval batch norm over planes longer than a work item (33,000 > 32,768 elements: the
    planes are cut in chunks, walked in memory order) against the float64 reference."""
    shape = (3, 2, 33000)
    x = make_input(rng, shape, dtype)
    rm = rng.standard_normal(2)
    rv = rng.uniform(0.5, 3.0, 2)
    w, b = rng.standard_normal(2), rng.standard_normal(2)
    y_ref, _, _ = ref.batch_norm(x, rm, rv, w, b, training=False, momentum=0.1, eps=1e-5)
    assert_close(nc.batch_norm(x, rm, rv, w, b, training=False), y_ref, dtype)
