"""Every op on every memory layout: C-contiguous and channels-last (read in place, output in
the input's layout) and other strides (sliced, strided batch, Fortran order, negative strides,
padded channels-last), in every dtype, with sizes that leave SIMD remainders."""

from __future__ import annotations

import tracemalloc

import normcpp as nc
import numpy as np
import pytest
import reference as ref
from conftest import LAYOUTS, is_channels_last, off_line, to_layout

DTYPES = [np.float16, np.float32, np.float64]
# (C = 8, 16, 32: channel periods of one or two vectors, reduced as four-vector patterns;
# 120-256 rows a sample: the sampled shift of the channels-last statistics)
SHAPES = [(4, 7), (2, 3, 33), (3, 17, 5), (2, 5, 4, 7), (2, 33, 2, 3), (1, 3, 16, 16),
          (2, 3, 2, 3, 5), (2, 1, 3, 1, 9), (2, 16, 10, 12), (1, 8, 16, 16), (2, 32, 3, 5)]
NC_OPS = ["batch_norm_train", "batch_norm_eval", "instance_norm", "instance_norm_eval",
          "group_norm"]
ROW_OPS = ["layer_norm", "rms_norm"]


def _input(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 1.5 + 0.25
    return x.astype(dtype)


def run_op(op, x):
    """Run ``op`` on ``x`` with fixed parameters; returns (y, y_ref, [(new, ref) stats])."""
    rng = np.random.default_rng(3)
    c = x.shape[1]
    w = rng.uniform(0.5, 2, c).astype(np.float32)
    b = rng.standard_normal(c)
    rm = rng.standard_normal(c).astype(np.float32)
    rv = rng.uniform(0.5, 2, c)
    if op == "batch_norm_train":
        y_ref, rm_ref, rv_ref = ref.batch_norm(x, rm, rv, w, b, training=True)
        y = nc.batch_norm(x, rm, rv, w, b, training=True)
        return y, y_ref, [(rm, rm_ref), (rv, rv_ref)]
    if op == "batch_norm_eval":
        y_ref, _, _ = ref.batch_norm(x, rm, rv, w, b)
        return nc.batch_norm(x, rm, rv, w, b), y_ref, []
    if op == "instance_norm":
        y_ref, rm_ref, rv_ref = ref.instance_norm(x, rm, rv, w, b)
        y = nc.instance_norm(x, rm, rv, w, b)
        return y, y_ref, [(rm, rm_ref), (rv, rv_ref)]
    if op == "instance_norm_eval":
        y_ref, _, _ = ref.instance_norm(x, rm, rv, w, b, use_input_stats=False)
        return nc.instance_norm(x, rm, rv, w, b, use_input_stats=False), y_ref, []
    if op == "group_norm":
        g = next(d for d in (3, 2, 1) if c % d == 0)
        return nc.group_norm(x, g, w, b), ref.group_norm(x, g, w, b), []
    ns = x.shape[1:] if x.ndim <= 3 else x.shape[-2:]
    w = rng.uniform(0.5, 2, ns)
    if op == "layer_norm":
        b = rng.standard_normal(ns).astype(np.float32)
        return nc.layer_norm(x, ns, w, b), ref.layer_norm(x, ns, w, b), []
    assert op == "rms_norm"
    return nc.rms_norm(x, ns, w), ref.rms_norm(x, ns, w), []


def _check(op, shape, dtype, layout):
    x = to_layout(_input(shape, dtype), layout)
    x0 = x.copy()
    y, y_ref, stats = run_op(op, x)
    assert y.shape == x.shape and y.dtype == x.dtype
    rtol, atol = ref.tolerance(dtype)
    np.testing.assert_allclose(y.astype(np.float64), y_ref, rtol=rtol, atol=atol)
    for new, expected in stats:
        np.testing.assert_allclose(new.astype(np.float64), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(x, x0)
    return x, y


CHANNEL_CASES = [(op, shape) for op in NC_OPS for shape in SHAPES
                 if len(shape) >= 3 or not op.startswith("instance_norm")]


#: every dtype on the in-place layouts and plain slicing; float32 on the other strides
LAYOUT_DTYPES = [(lay, dt) for lay in LAYOUTS for dt in DTYPES
                 if lay in ("contiguous", "channels_last", "sliced") or dt == np.float32]
LD_IDS = [f"{lay}-{np.dtype(dt).name}" for lay, dt in LAYOUT_DTYPES]


@pytest.mark.parametrize("layout,dtype", LAYOUT_DTYPES, ids=LD_IDS)
@pytest.mark.parametrize("op,shape", CHANNEL_CASES, ids=str)
def test_channel_ops_layouts(op, shape, dtype, layout):
    x, y = _check(op, shape, dtype, layout)
    if layout == "contiguous":
        assert y.flags.c_contiguous
    elif layout == "channels_last":
        assert is_channels_last(y), y.strides
        assert [abs(s) for s in y.strides] == [abs(s) for s in x.strides]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("c", [272, 384, 1024])
@pytest.mark.parametrize("op", ["batch_norm_eval", "batch_norm_train", "instance_norm"])
def test_channels_last_wide_channel_periods(op, c, dtype):
    """Channels-last with more than 16 vectors of channels (up to the periodic kernels' 1024):
    the apply goes by column groups of 4 vectors over tiles of rows; every channel must get
    its own coefficients (float64 reference)."""
    _check(op, (3, c, 5, 2), dtype, "channels_last")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("c", [40, 80, 120, 128, 256, 384, 1024])
@pytest.mark.parametrize("op", ["batch_norm_eval", "batch_norm_train", "instance_norm",
                                "group_norm"])
def test_channels_last_beyond_the_l2(op, c, dtype):
    """Channels-last tensors (and instance/group samples) whose input and output do not fit
    in an L2 of up to 2 MiB are normalized as read from the last-level cache or memory: front
    to back, not by tiles -- periods of 5-16 vectors with their means in registers, wider ones
    (C = 384, 1024) loading every coefficient. Every channel must get its own coefficients
    (float64 reference); an odd number of rows leaves half a period to the tail (C = 40:
    periods of 80 channels); eval is bitwise the NCHW kernel's result."""
    hw = (560_000 // c) | 1
    x, y = _check(op, (2, c, hw, 1), dtype, "channels_last")
    if op == "batch_norm_eval":
        y_nchw = run_op(op, np.ascontiguousarray(x))[0]
        np.testing.assert_array_equal(y, y_nchw)


@pytest.mark.parametrize("layout,dtype", LAYOUT_DTYPES, ids=LD_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("op", ROW_OPS)
def test_row_ops_layouts(op, shape, dtype, layout):
    _x, y = _check(op, shape, dtype, layout)
    if layout == "contiguous":
        assert y.flags.c_contiguous


@pytest.mark.parametrize("op", NC_OPS)
@pytest.mark.parametrize("ndim", [3, 4, 5])
def test_channels_last_matches_contiguous(op, ndim):
    """The same values in both in-place layouts give the same results (within rounding)."""
    shape = (2, 19, 3, 5, 7)[:ndim]
    x = _input(shape, np.float32, seed=ndim)
    y_c = run_op(op, to_layout(x, "contiguous"))[0]
    y_l = run_op(op, to_layout(x, "channels_last"))[0]
    assert y_c.flags.c_contiguous and is_channels_last(y_l)
    np.testing.assert_allclose(y_l, y_c, rtol=1e-5, atol=1e-6)


def test_channels_last_from_transpose():
    """The documented way to get channels-last input: ``nhwc.transpose(0, 3, 1, 2)``."""
    rng = np.random.default_rng(1)
    nhwc = rng.standard_normal((2, 5, 6, 3)).astype(np.float32)
    x = nhwc.transpose(0, 3, 1, 2)
    y = nc.batch_norm(x, training=True)
    assert y.shape == (2, 3, 5, 6)
    assert y.transpose(0, 2, 3, 1).flags.c_contiguous
    y_ref, _, _ = ref.batch_norm(x, training=True)
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=2e-5)
    # 3-D (N, L, C) and 5-D (N, D, H, W, C) analogues
    nlc = rng.standard_normal((2, 9, 4)).astype(np.float32)
    y = nc.instance_norm(nlc.transpose(0, 2, 1))
    assert y.transpose(0, 2, 1).flags.c_contiguous
    y_ref, _, _ = ref.instance_norm(nlc.transpose(0, 2, 1))
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=2e-5)
    ndhwc = rng.standard_normal((2, 3, 4, 5, 6)).astype(np.float32)
    y = nc.group_norm(ndhwc.transpose(0, 4, 1, 2, 3), 3)
    assert y.transpose(0, 2, 3, 4, 1).flags.c_contiguous
    np.testing.assert_allclose(y, ref.group_norm(ndhwc.transpose(0, 4, 1, 2, 3), 3),
                               rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("op,layout", [(op, lay) for op in NC_OPS + ROW_OPS
                                       for lay in ("contiguous", "channels_last")
                                       if op in NC_OPS or lay == "contiguous"])
def test_no_allocation_proportional_to_input(op, layout):
    """Contiguous and channels-last input are read in place: a call allocates (through NumPy)
    at most the output, and nothing proportional to the input when ``out`` is given.
    (layer_norm/rms_norm rows of channels-last memory are strided, so a copy is allowed.)"""
    x = to_layout(_input((4, 16, 32, 32), np.float32), layout)
    out = np.empty_like(x)
    _call_with_out(op, x, None)  # warm up (first-call caches)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        y = _call_with_out(op, x, None)
        _, peak_alloc = tracemalloc.get_traced_memory()
        del y
        tracemalloc.reset_peak()
        _call_with_out(op, x, out)
        _, peak_out = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_alloc < 1.5 * x.nbytes
    assert peak_out < 0.25 * x.nbytes


def _channel_op(op, x, out, act):
    c = x.shape[1]
    rng = np.random.default_rng(5)
    w, b = rng.uniform(0.5, 2, c).astype(np.float32), rng.standard_normal(c)
    rm, rv = rng.standard_normal(c).astype(np.float32), rng.uniform(0.5, 2, c)
    if op == "batch_norm_eval":
        y = nc.batch_norm(x, rm, rv, w, b, out=out, activation=act)
        y_ref = ref.batch_norm(x, rm, rv, w, b)[0]
    elif op == "instance_norm":
        y = nc.instance_norm(x, None, None, w, b, out=out)
        y_ref = ref.instance_norm(x, None, None, w, b)[0]
    else:
        y = nc.group_norm(x, 1, w, b, out=out, activation=act)
        y_ref = ref.group_norm(x, 1, w, b)
    return y, (np.maximum(y_ref, 0) if act == "relu" else y_ref)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("c", [3, 16, 40, 64, 1024])
@pytest.mark.parametrize("op,layout,act", [("batch_norm_eval", "channels_last", None),
                                           ("batch_norm_eval", "2d", None),
                                           ("batch_norm_eval", "2d", "relu"),
                                           ("instance_norm", "channels_last", None),
                                           ("group_norm", "channels_last", "relu")])
def test_out_off_a_cache_line(op, layout, act, c, dtype):
    """An out= that starts off a cache line (NumPy puts large arrays 16 or 48 bytes past one):
    hot channels-last data is then written on out's lines, the channel pattern read from out's
    first line boundary on and the elements before it stored last (in place: computed before
    anything is written). The values must be bitwise those written to an out= on a line, at
    every offset, in place too, and match the float64 reference."""
    item = np.dtype(dtype).itemsize
    shape = (3, c, 5, 7) if layout == "channels_last" else (37, c)
    x = _input(shape, dtype, seed=c)
    if layout == "channels_last":
        x = to_layout(x, "channels_last")
    nat = x.transpose(0, 2, 3, 1) if layout == "channels_last" else x  # memory order

    def as_input(a):  # an array in memory order viewed as x is
        return a.transpose(0, 3, 1, 2) if layout == "channels_last" else a

    on_line = off_line(nat.shape, dtype, 0)
    y0, y_ref = _channel_op(op, x, as_input(on_line), act)
    rtol, atol = ref.tolerance(dtype)
    np.testing.assert_allclose(y0.astype(np.float64), y_ref, rtol=rtol, atol=atol)
    for offset in sorted({item, 16, 48, 64 - item}):
        out = off_line(nat.shape, dtype, offset)
        _channel_op(op, x, as_input(out), act)
        np.testing.assert_array_equal(out.view(np.uint8), on_line.view(np.uint8),
                                      err_msg=f"out= {offset} bytes past a line")
        inplace = off_line(nat.shape, dtype, offset)
        inplace[...] = nat
        _channel_op(op, as_input(inplace), as_input(inplace), act)
        np.testing.assert_array_equal(inplace.view(np.uint8), on_line.view(np.uint8),
                                      err_msg=f"in place {offset} bytes past a line")


def _call_with_out(op, x, out):
    c = x.shape[1]
    w, b = np.ones(c, np.float32), np.zeros(c, np.float32)
    rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
    if op == "batch_norm_train":
        return nc.batch_norm(x, rm, rv, w, b, training=True, out=out)
    if op == "batch_norm_eval":
        return nc.batch_norm(x, rm, rv, w, b, out=out)
    if op == "instance_norm":
        return nc.instance_norm(x, rm, rv, w, b, out=out)
    if op == "instance_norm_eval":
        return nc.instance_norm(x, rm, rv, w, b, use_input_stats=False, out=out)
    if op == "group_norm":
        return nc.group_norm(x, 4, w, b, out=out)
    ns = x.shape[-2:]
    if op == "layer_norm":
        return nc.layer_norm(x, ns, out=out)
    return nc.rms_norm(x, ns, out=out)
