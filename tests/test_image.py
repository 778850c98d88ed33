"""Fused image normalize and ChannelStats: against float64 NumPy references for every input
dtype, both input and output layouts, float32/float16 output, odd sizes and channel counts,
``out=``, bad input; exact integer statistics (including 10^8 uint8 values with mean 200),
merge/update order, ddof, min/max and NaN, ``allreduce`` over a simulated communicator,
``from_batches``, seeding ``normalize`` and BatchNorm, thread-count invariance (bit for bit)
and every ISA level this CPU runs (forced with ``NORMCPP_ISA`` in a subprocess)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import threading
from fractions import Fraction

import normcpp as nc
import numpy as np
import pytest
from conftest import off_line
from normcpp.image import ChannelStats, normalize

DTYPES = (np.uint8, np.uint16, np.float16, np.float32, np.float64)
EPS32 = 2.0 ** -23
# The package's parent directory (not resolved: a symlinked dev tree keeps its own _core).
PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(nc.__file__)))


def _images(rng, shape, dtype):
    """Random images of ``dtype`` spanning the type's useful range."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return rng.integers(0, 256, shape, dtype=np.uint8)
    if dtype == np.uint16:
        return rng.integers(0, 65536, shape, dtype=np.uint16)
    return rng.uniform(-3.0, 4.0, shape).astype(dtype)


def _default_scale(dtype):
    return {np.dtype(np.uint8): 1 / 255, np.dtype(np.uint16): 1 / 65535}.get(np.dtype(dtype), 1.0)


def _ref_normalize(x_nhwc, mean, std, scale):
    """(x * scale - mean) / std in float64 on NHWC data, and the error scale per element."""
    x = x_nhwc.astype(np.float64)
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    y = (x * scale - mean) / std
    mag = np.abs(x * scale / std) + np.abs(mean / std)
    return y, mag


def _check(y, ref, mag, odt):
    """|y - ref| within a few float32 ulps of the terms (plus float16 rounding of the result)."""
    tol = 4 * EPS32 * mag + 1e-30
    if np.dtype(odt) == np.float16:
        tol = tol + 2.0 ** -11 * np.abs(ref) + 2.0 ** -24
    err = np.abs(y.astype(np.float64) - ref)
    assert np.all(err <= tol), f"max err {err.max()} (tol there {tol.flat[np.argmax(err - tol)]})"


def _params(c, seed=1):
    rng = np.random.default_rng(seed)
    return rng.uniform(-0.5, 0.8, c), rng.uniform(0.1, 2.0, c)


# --------------------------------------------------------------------------------------------
# normalize


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("in_layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("out_layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("odt", [np.float32, np.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("c", [1, 3, 4, 5])
def test_normalize_matches_reference(dtype, in_layout, out_layout, odt, c):
    rng = np.random.default_rng(c)
    for n, h, w in ((2, 7, 5), (1, 1, 1), (3, 16, 17), (1, 3, 37)):
        x = _images(rng, (n, h, w, c), dtype)
        mean, std = _params(c)
        if np.dtype(dtype).kind == "f":
            mean, std = mean * 2, std * 2
        scale = _default_scale(dtype)
        ref, mag = _ref_normalize(x, mean, std, scale)
        xin = x if in_layout == "NHWC" else np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        axis = -1 if in_layout == "NHWC" else 1
        y = normalize(xin, mean, std, channel_axis=axis, out_layout=out_layout, dtype=odt)
        assert y.dtype == odt and y.flags.c_contiguous
        if out_layout == "NCHW":
            assert y.shape == (n, c, h, w)
            y = y.transpose(0, 2, 3, 1)
        else:
            assert y.shape == (n, h, w, c)
        _check(y, ref, mag, odt)


@pytest.mark.parametrize("c", [1, 3, 4])
def test_normalize_uint8_large_multi_chunk(c, restore_threads):
    """More pixels than one work item (16384), all SIMD main-loop and remainder paths."""
    rng = np.random.default_rng(7)
    x = _images(rng, (2, 131, 129, c), np.uint8)
    mean, std = _params(c)
    ref, mag = _ref_normalize(x, mean, std, 1 / 255)
    ys = []
    for t in (1, 2):
        restore_threads(t)
        y = normalize(x, mean, std)
        _check(y.transpose(0, 2, 3, 1), ref, mag, np.float32)
        ys.append(y)
    np.testing.assert_array_equal(ys[0], ys[1])


def test_normalize_single_image_and_defaults():
    rng = np.random.default_rng(3)
    img = _images(rng, (6, 9, 3), np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ref, mag = _ref_normalize(img[None], mean, std, 1 / 255)
    y = normalize(img, mean, std)
    assert y.shape == (3, 6, 9)
    _check(y[None].transpose(0, 2, 3, 1), ref, mag, np.float32)
    y2 = normalize(img, mean, std, out_layout="HWC")
    assert y2.shape == (6, 9, 3)
    _check(y2[None], ref, mag, np.float32)
    chw = np.ascontiguousarray(img.transpose(2, 0, 1))
    for axis in (0, -3, 1):
        np.testing.assert_array_equal(normalize(chw, mean, std, channel_axis=axis), y)
    # Scalars broadcast over channels; float input defaults to scale 1.
    xf = _images(rng, (2, 4, 4, 3), np.float32)
    ref, mag = _ref_normalize(xf, 0.5, 2.0, 1.0)
    _check(normalize(xf, 0.5, 2.0, out_layout="NHWC"), ref, mag, np.float32)
    ref, mag = _ref_normalize(xf, 0.5, 2.0, 3.0)
    _check(normalize(xf, [0.5], [2.0], scale=3.0, out_layout="NHWC"), ref, mag, np.float32)


def test_normalize_no_integer_wraparound():
    x = np.array([[[[255, 0, 65535 // 257]]]], np.uint8)
    y = normalize(x, 0.0, 1.0, scale=1.0, out_layout="NHWC")
    np.testing.assert_array_equal(y, [[[[255.0, 0.0, 255.0]]]])
    y = normalize(x, 300.0, 1.0, scale=1.0, out_layout="NHWC")
    np.testing.assert_array_equal(y, [[[[-45.0, -300.0, -45.0]]]])
    u = np.array([[[[65535, 0]]]], np.uint16)
    np.testing.assert_array_equal(normalize(u, 0.0, 1.0, scale=2.0, out_layout="NHWC"),
                                  [[[[131070.0, 0.0]]]])


def test_normalize_out_and_in_place():
    rng = np.random.default_rng(4)
    x = _images(rng, (3, 5, 7, 3), np.uint8)
    mean, std = _params(3)
    expected = normalize(x, mean, std)
    out = np.full((3, 3, 5, 7), np.nan, np.float32)
    res = normalize(x, mean, std, out=out)
    assert res is out
    np.testing.assert_array_equal(out, expected)
    out16 = np.empty((3, 5, 7, 3), np.float16)
    assert normalize(x, mean, std, out=out16, out_layout="NHWC", dtype=np.float16) is out16
    np.testing.assert_array_equal(out16, normalize(x, mean, std, out_layout="NHWC",
                                                   dtype="float16"))
    one = np.empty((3, 5, 7), np.float32)
    assert normalize(x[1], mean, std, out=one) is one
    np.testing.assert_array_equal(one, expected[1])
    # In place: float32 input, same layout.
    xf = _images(rng, (2, 5, 7, 3), np.float32)
    want = normalize(xf, mean, std, out_layout="NHWC")
    assert normalize(xf, mean, std, out_layout="NHWC", out=xf) is xf
    np.testing.assert_array_equal(xf, want)


@pytest.mark.parametrize("odt", [np.float32, np.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("c", [3, 4])
def test_normalize_out_off_a_cache_line(c, odt, restore_threads):
    """uint8 RGB/RGBA to planar into an out= off a cache line (NumPy puts large arrays 16 or
    48 bytes past one): the pixels before out's first line boundary are written one by one,
    the rest with vector stores on its lines. Bitwise the values written to an out= on a line,
    at every offset and thread count, and within float32 rounding of the float64 reference."""
    rng = np.random.default_rng(9)
    x = _images(rng, (3, 21, 23, c), np.uint8)  # planes of 483 pixels: not whole lines
    x2 = _images(rng, (2, 32, 16, c), np.uint8)  # planes of 512 pixels: whole lines
    mean, std = _params(c)
    item = np.dtype(odt).itemsize
    for images in (x, x2):
        shape = (images.shape[0], c) + images.shape[1:3]
        ref, mag = _ref_normalize(images, mean, std, 1 / 255)
        ref, mag = ref.transpose(0, 3, 1, 2), mag.transpose(0, 3, 1, 2)
        for threads in (1, 2):
            nc.set_num_threads(threads)
            outs = []
            for offset in range(0, 64, item):
                out = off_line(shape, odt, offset)
                assert normalize(images, mean, std, out=out, dtype=odt) is out
                outs.append(out)
            _check(outs[0], ref, mag, odt)
            for offset, out in zip(range(0, 64, item), outs):
                np.testing.assert_array_equal(out.view(np.uint8), outs[0].view(np.uint8),
                                              err_msg=f"out= {offset} bytes past a line")


def test_normalize_strided_inputs():
    rng = np.random.default_rng(5)
    big = _images(rng, (6, 9, 8, 3), np.uint8)
    mean, std = _params(3)
    for view in (big[::2], big[:, 1:-1, ::2], big[..., ::-1]):
        ref, mag = _ref_normalize(view, mean, std, 1 / 255)
        _check(normalize(view, mean, std, out_layout="NHWC"), ref, mag, np.float32)
    # An (N, C, H, W) view of NHWC memory is read in place as channels-last.
    ref, mag = _ref_normalize(big, mean, std, 1 / 255)
    y = normalize(big.transpose(0, 3, 1, 2), mean, std, channel_axis=1)
    _check(y.transpose(0, 2, 3, 1), ref, mag, np.float32)


def test_normalize_errors():
    x = np.zeros((2, 4, 4, 3), np.uint8)
    m, s = (0.5, 0.5, 0.5), (0.2, 0.2, 0.2)
    cases = [
        (TypeError, {"images": [[1, 2], [3, 4]]}),          # int64
        (TypeError, {"images": "abc"}),
        (TypeError, {"images": x.astype(np.int32)}),
        (ValueError, {"images": np.zeros((4, 4), np.uint8)}),
        (ValueError, {"images": np.zeros((1, 2, 4, 4, 3), np.uint8)}),
        (ValueError, {"channel_axis": 2}),
        (TypeError, {"channel_axis": 1.0}),
        (TypeError, {"channel_axis": True}),
        (ValueError, {"mean": (0.5, 0.5)}),
        (ValueError, {"std": np.ones((3, 1))}),
        (ValueError, {"std": (0.2, 0.0, 0.2)}),
        (ValueError, {"std": (0.2, np.nan, 0.2)}),
        (ValueError, {"mean": (0.2, np.inf, 0.2)}),
        (TypeError, {"mean": "abc"}),
        (TypeError, {"std": None}),
        (TypeError, {"mean": True}),
        (TypeError, {"scale": "1"}),
        (ValueError, {"scale": float("inf")}),
        (TypeError, {"dtype": np.float64}),
        (TypeError, {"dtype": np.uint8}),
        (TypeError, {"dtype": "not a dtype"}),
        (ValueError, {"out_layout": "NCWH"}),
        (TypeError, {"out_layout": 1}),
        (ValueError, {"out": np.empty((2, 4, 4, 3), np.float32)}),       # NHWC shape for NCHW
        (TypeError, {"out": np.empty((2, 3, 4, 4), np.float64)}),
        (TypeError, {"out": [0.0]}),
        (ValueError, {"out": np.empty((2, 3, 4, 8), np.float32)[..., ::2]}),
    ]
    for exc, kw in cases:
        args = {"images": x, "mean": m, "std": s}
        args.update(kw)
        images, mean, std = args.pop("images"), args.pop("mean"), args.pop("std")
        with pytest.raises(exc):
            normalize(images, mean, std, **args)
    ro = np.empty((2, 3, 4, 4), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        normalize(x, m, s, out=ro)
    # out overlapping the input without being the same view.
    buf = np.zeros(2 * 3 * 4 * 4 + 1, np.float32)
    xf, o = buf[:-1].reshape(2, 4, 4, 3), buf[1:].reshape(2, 4, 4, 3)
    with pytest.raises(ValueError, match="overlap"):
        normalize(xf, m, s, out_layout="NHWC", out=o)
    with pytest.raises(ValueError, match="overlap"):
        normalize(xf, m, s, out=buf[:-1].reshape(2, 3, 4, 4))


def test_normalize_empty():
    y = normalize(np.zeros((0, 4, 4, 3), np.uint8), 0.0, 1.0)
    assert y.shape == (0, 3, 4, 4) and y.dtype == np.float32
    assert normalize(np.zeros((1, 0, 4, 3), np.uint8), 0.0, 1.0).shape == (1, 3, 0, 4)


# --------------------------------------------------------------------------------------------
# ChannelStats


def _ref_stats(data, axis, ddof=0):
    """float64 NumPy statistics over every axis but ``axis``."""
    x = np.moveaxis(np.asarray(data), axis, -1).reshape(-1, data.shape[axis]).astype(np.float64)
    return {"mean": x.mean(0), "var": x.var(0, ddof=ddof), "min": x.min(0), "max": x.max(0),
                "count": x.shape[0]}


def _assert_stats(st, ref, rtol=1e-12):
    assert st.count == ref["count"]
    np.testing.assert_allclose(st.mean, ref["mean"], rtol=rtol, atol=0)
    np.testing.assert_allclose(st.var, ref["var"], rtol=rtol, atol=0)
    np.testing.assert_allclose(st.std, np.sqrt(ref["var"]), rtol=rtol, atol=0)
    np.testing.assert_array_equal(st.min, ref["min"])
    np.testing.assert_array_equal(st.max, ref["max"])


def _stat_data(rng, shape, dtype, offset=200.0):
    dtype = np.dtype(dtype)
    if dtype.kind == "u":
        hi = 256 if dtype == np.uint8 else 65536
        return rng.integers(0, hi, shape, dtype=dtype)
    return (offset + 7.0 * rng.standard_normal(shape)).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape,axis", [
    ((4, 3, 7, 5), 1), ((4, 7, 5, 3), -1), ((9, 3), 1), ((6, 5, 11), 1), ((5, 1, 9, 9), 1),
    ((2, 9, 9, 1), 3), ((3, 300, 7), 1), ((3, 7, 300), 1), ((70, 13, 4), 1), ((17,), 0),
])
def test_channel_stats_matches_numpy(dtype, shape, axis):
    rng = np.random.default_rng(11)
    x = _stat_data(rng, shape, dtype)
    c = x.shape[axis]
    for ddof in (0, 1):
        st = ChannelStats(c, channel_axis=axis, ddof=ddof)
        assert st.update(x) is st
        assert st.exact == (np.dtype(dtype).kind == "u")
        if st.count <= ddof:
            assert np.all(np.isnan(st.var))
            continue
        _assert_stats(st, _ref_stats(x, axis, ddof))


@pytest.mark.parametrize("dtype", [np.uint8, np.float32], ids=["uint8", "float32"])
def test_channel_stats_layouts_and_streaming(dtype):
    rng = np.random.default_rng(12)
    x = _stat_data(rng, (10, 6, 9, 3), dtype)  # NHWC
    ref = _ref_stats(x, -1)
    views = {
        "nhwc": (x, -1),
        "nchw_view_of_nhwc": (x.transpose(0, 3, 1, 2), 1),
        "nchw": (np.ascontiguousarray(x.transpose(0, 3, 1, 2)), 1),
        "sliced": (np.ascontiguousarray(x.transpose(0, 3, 1, 2))[:, :, :, :], 1),
    }
    for (v, axis) in views.values():
        _assert_stats(ChannelStats(3, channel_axis=axis).update(v), ref)
    # Streaming: batches of every size, and a strided batch, give the same statistics.
    st = ChannelStats(3, channel_axis=-1)
    for a, b in ((0, 1), (1, 4), (4, 4), (4, 9), (9, 10)):
        st.update(x[a:b])
    _assert_stats(st, ref)
    big = np.concatenate([x, x[::-1]])
    _assert_stats(ChannelStats(3, -1).update(big[::2]), _ref_stats(big[::2], -1))


def test_channel_stats_order_invariance_and_merge():
    rng = np.random.default_rng(13)
    batches = [_stat_data(rng, (n, 3, 5, 4), np.uint8) for n in (1, 3, 2, 7)]
    ref = _ref_stats(np.concatenate(batches), 1)
    forward = ChannelStats(3)
    for b in batches:
        forward.update(b)
    backward = ChannelStats(3)
    for b in batches[::-1]:
        backward.update(b)
    halves = ChannelStats(3).update(batches[0]).update(batches[1])
    other = ChannelStats(3).update(batches[2]).update(batches[3])
    before = (other.count, other.mean.tolist(), other.var.tolist())
    assert halves.merge(other) is halves
    assert (other.count, other.mean.tolist(), other.var.tolist()) == before  # unchanged
    for st in (forward, backward, halves):
        _assert_stats(st, ref)
        # Integer data: exact, so every order gives the same bits.
        np.testing.assert_array_equal(st.mean, forward.mean)
        np.testing.assert_array_equal(st.var, forward.var)
    # Float data: Chan's merge in float64, equal to ~1e-15 in any order.
    fb = [b.astype(np.float32) for b in batches]
    f1, f2 = ChannelStats(3), ChannelStats(3)
    for b in fb:
        f1.update(b)
    for b in fb[::-1]:
        f2.update(b)
    _assert_stats(f1, ref)
    np.testing.assert_allclose(f1.var, f2.var, rtol=1e-14)
    # Mixed integer and float batches.
    mixed = ChannelStats(3).update(batches[0]).update(fb[1]).merge(
        ChannelStats(3).update(batches[2]).update(batches[3]))
    assert not mixed.exact
    _assert_stats(mixed, ref)
    # Merging empty statistics changes nothing; copies are independent.
    cp = forward.copy().merge(ChannelStats(3))
    np.testing.assert_array_equal(cp.var, forward.var)
    cp.update(batches[0])
    assert cp.count == forward.count + batches[0].size // 3


def test_channel_stats_ddof_empty_and_nan():
    st = ChannelStats(2, ddof=1)
    for v in (st.mean, st.var, st.std, st.min, st.max):
        assert v.shape == (2,) and np.all(np.isnan(v))
    st.update(np.zeros((0, 2), np.uint8))
    assert st.count == 0
    st.update(np.array([[3, 4]], np.uint8))
    np.testing.assert_array_equal(st.mean, [3.0, 4.0])
    assert np.all(np.isnan(st.var))  # one value, ddof=1
    st.update(np.array([[5, 4]], np.uint8))
    np.testing.assert_array_equal(st.var, [2.0, 0.0])
    # NaN propagates like np.min / np.mean; the other channel is untouched.
    x = np.arange(240, dtype=np.float32).reshape(4, 3, 20)
    x[2, 1, 13] = np.nan
    ref = _ref_stats(x[:, [0, 2]], 1)
    for data, axis in ((x, 1), (np.ascontiguousarray(x.transpose(0, 2, 1)), -1)):
        for dt in (np.float16, np.float32, np.float64):
            s = ChannelStats(3, channel_axis=axis).update(data.astype(dt))
            assert np.isnan(s.mean[1]) and np.isnan(s.var[1])
            assert np.isnan(s.min[1]) and np.isnan(s.max[1])
            np.testing.assert_allclose(s.mean[[0, 2]], ref["mean"], rtol=1e-15)
            np.testing.assert_array_equal(s.min[[0, 2]], ref["min"])
            np.testing.assert_array_equal(s.max[[0, 2]], ref["max"])
    s = ChannelStats(3).update(x).update(np.ones((1, 3, 2), np.float32))
    assert np.isnan(s.min[1]) and not np.isnan(s.min[0])
    inf = np.array([[1.0, -np.inf], [np.inf, 2.0]], np.float64)
    s2 = ChannelStats(2).update(inf)
    np.testing.assert_array_equal(s2.min, [1.0, -np.inf])
    np.testing.assert_array_equal(s2.max, [np.inf, 2.0])


def test_channel_stats_constant_and_large_offset():
    x = np.full((3, 2, 40, 40), 1e6 + 0.25, np.float64)
    s = ChannelStats(2).update(x)
    np.testing.assert_array_equal(s.mean, [1e6 + 0.25] * 2)
    np.testing.assert_array_equal(s.var, [0.0, 0.0])
    rng = np.random.default_rng(14)
    y = (1e4 + rng.standard_normal((5, 3, 64, 64))).astype(np.float32)
    _assert_stats(ChannelStats(3).update(y), _ref_stats(y, 1))


def _exact_ref_from_counts(counts):
    """Exact (mean, var) of values 0..len-1 with these counts (Fractions, rounded once)."""
    k = np.arange(len(counts), dtype=object)
    cnt = counts.astype(object)
    n = int(cnt.sum())
    s = int((k * cnt).sum())
    q = int((k * k * cnt).sum())
    return float(Fraction(s, n)), float(Fraction(n * q - s * s, n * n)), n


def test_channel_stats_1e8_uint8_exact():
    """10^8 uint8 values (mean ~200) in two layouts: exact to the last bit of float64."""
    rng = np.random.default_rng(2024)
    x = rng.integers(185, 216, size=(34, 1000, 1000, 3), dtype=np.uint8)  # 1.02e8 values
    x[0, 0, 0] = (0, 255, 7)
    st = ChannelStats(3, channel_axis=-1).update(x)
    counts = np.zeros((3, 256), np.int64)
    flat = x.reshape(-1, 3)
    for r0 in range(0, flat.shape[0], 1 << 22):
        chunk = flat[r0:r0 + (1 << 22)]
        for c in range(3):
            counts[c] += np.bincount(chunk[:, c], minlength=256)
    for c in range(3):
        mean, var, n = _exact_ref_from_counts(counts[c])
        assert st.count == n == 34_000_000
        assert st.mean[c] == mean and abs(st.var[c] - var) <= 1e-15 * var
        assert abs(st.mean[c] - 200) < 0.01
        assert st.min[c] == np.flatnonzero(counts[c]).min()
        assert st.max[c] == np.flatnonzero(counts[c]).max()
    del x, flat
    # One channel, planar: 10^8 pixels.
    y = rng.integers(180, 221, size=(100, 1, 1000, 1000), dtype=np.uint8)
    s1 = ChannelStats(1).update(y)
    cnt = np.zeros(256, np.int64)
    flat = y.reshape(-1)
    for r0 in range(0, flat.size, 1 << 24):
        cnt += np.bincount(flat[r0:r0 + (1 << 24)], minlength=256)
    mean, var, n = _exact_ref_from_counts(cnt)
    assert s1.count == n == 10**8
    assert s1.mean[0] == mean and abs(s1.var[0] - var) <= 1e-15 * var


def test_channel_stats_uint16_large_sums_exact():
    """uint16 sums of squares beyond 64 bits (merging doubles the data): totals stay exact."""
    x = np.full((16, 4, 128, 128), 65535, np.uint16)
    x[0, :, 0, 0] = 0
    x[1, 2, 5, 5] = 12345
    st = ChannelStats(4).update(x)
    for _ in range(16):
        st.merge(st.copy())
    assert st.exact
    rep = 2 ** 16
    for c in range(4):
        v = x[:, c].astype(np.int64).ravel()
        n, s, q = rep * v.size, rep * int(v.sum()), rep * int((v * v).sum())
        assert q > 2 ** 64 and st.count == n
        assert st.mean[c] == float(Fraction(s, n))
        assert st.var[c] == float(Fraction(n * q - s * s, n * n))
    assert st.min.tolist() == [0.0] * 4 and st.max.tolist() == [65535.0] * 4


class _ThreadComm:
    """An in-process stand-in for an mpi4py communicator: ranks are threads."""

    def __init__(self, rank, box, barrier):
        self.rank, self._box, self._barrier = rank, box, barrier

    def allgather(self, obj):
        self._box[self.rank] = pickle.dumps(obj)
        self._barrier.wait()
        out = [pickle.loads(b) for b in self._box]
        self._barrier.wait()
        return out


@pytest.mark.parametrize("dtype", [np.uint8, np.float32], ids=["uint8", "float32"])
def test_channel_stats_allreduce(dtype):
    rng = np.random.default_rng(15)
    parts = [_stat_data(rng, (n, 3, 6, 5), dtype) for n in (2, 0, 5)]  # rank 1 has no data
    ref = _ref_stats(np.concatenate(parts), 1)
    ranks = [ChannelStats(3).update(p) for p in parts]
    box, barrier = [None] * len(parts), threading.Barrier(len(parts))
    errors = []

    def run(r):
        try:
            ranks[r].allreduce(_ThreadComm(r, box, barrier))
        except (ValueError, TypeError, RuntimeError, threading.BrokenBarrierError) as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(r,)) for r in range(len(parts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for st in ranks:
        _assert_stats(st, ref)
        np.testing.assert_array_equal(st.mean, ranks[0].mean)
        np.testing.assert_array_equal(st.var, ranks[0].var)
    with pytest.raises(TypeError, match="allgather"):
        ranks[0].allreduce(object())

    class Mismatch:
        def allgather(self, obj):
            other = dict(obj, num_channels=4)
            return [obj, other]

    with pytest.raises(ValueError, match="num_channels"):
        ChannelStats(3).allreduce(Mismatch())


def test_from_batches(capsys):
    rng = np.random.default_rng(16)
    batches = [_stat_data(rng, (n, 4, 3, 3), np.uint8) for n in (2, 3, 1)]
    ref = _ref_stats(np.concatenate(batches), 1)
    _assert_stats(ChannelStats.from_batches(batches, progress=False), ref)
    _assert_stats(ChannelStats.from_batches(iter(batches), 4), ref)
    _assert_stats(ChannelStats.from_batches(((b, None) for b in batches), progress=False), ref)
    nhwc = [np.ascontiguousarray(b.transpose(0, 2, 3, 1)) for b in batches]
    st = ChannelStats.from_batches(nhwc, channel_axis=-1, ddof=1, progress=False)
    _assert_stats(st, _ref_stats(np.concatenate(batches), 1, ddof=1))
    with pytest.raises(ValueError, match="no batches"):
        ChannelStats.from_batches([], progress=False)
    assert ChannelStats.from_batches([], num_channels=2).count == 0
    with pytest.raises(TypeError):
        ChannelStats.from_batches(batches, progress="yes")
    with pytest.raises(ValueError):
        ChannelStats.from_batches(batches, num_channels=3, progress=False)
    pytest.importorskip("tqdm")
    capsys.readouterr()
    ChannelStats.from_batches(batches, progress=True)
    assert "ChannelStats" in capsys.readouterr().err


def test_seed_normalize():
    rng = np.random.default_rng(17)
    x = _stat_data(rng, (6, 9, 8, 3), np.uint8)
    st = ChannelStats(3, channel_axis=-1).update(x)
    kw = st.normalize_kwargs()
    assert set(kw) == {"mean", "std", "scale"} and kw["scale"] == 1.0
    y = normalize(x, **kw).astype(np.float64)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1.0, rtol=1e-5)
    kw255 = st.normalize_kwargs(scale=1 / 255)
    np.testing.assert_allclose(kw255["mean"], st.mean / 255, rtol=1e-15)
    np.testing.assert_allclose(normalize(x, **kw255), normalize(x, **kw), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="no data"):
        ChannelStats(3).normalize_kwargs()
    with pytest.raises(ValueError):
        st.normalize_kwargs(scale=0.0)


def test_seed_batchnorm():
    rng = np.random.default_rng(18)
    x = _stat_data(rng, (5, 3, 4, 4), np.float32)
    st = ChannelStats(3).update(x)
    ref = _ref_stats(x, 1, ddof=1)
    bn = nc.BatchNorm2d(3)
    assert st.seed_batchnorm(bn) is bn
    np.testing.assert_allclose(bn.running_mean, ref["mean"], rtol=1e-6)
    np.testing.assert_allclose(bn.running_var, ref["var"], rtol=1e-6)
    with pytest.raises(ValueError, match="running statistics"):
        st.seed_batchnorm(nc.BatchNorm2d(3, track_running_stats=False))
    with pytest.raises(ValueError, match="channels"):
        st.seed_batchnorm(nc.BatchNorm2d(4))
    with pytest.raises(ValueError, match="at least 2"):
        ChannelStats(3).update(x[:1, :, :1, :1]).seed_batchnorm(bn)
    torch = pytest.importorskip("torch")
    tbn = torch.nn.BatchNorm2d(3).double()
    st.seed_batchnorm(tbn)
    np.testing.assert_allclose(tbn.running_mean.numpy(), ref["mean"], rtol=1e-12)
    np.testing.assert_allclose(tbn.running_var.numpy(), ref["var"], rtol=1e-12)


def test_channel_stats_errors():
    for exc, args in ((ValueError, (0,)), (TypeError, (3.0,)), (TypeError, (True,)),
                      (ValueError, (3, 1, -1)), (TypeError, (3, "1")), (TypeError, (3, 1, 0.5))):
        with pytest.raises(exc):
            ChannelStats(*args)
    st = ChannelStats(3)
    with pytest.raises(ValueError, match="3 channels"):
        st.update(np.zeros((2, 4, 5), np.uint8))
    with pytest.raises(ValueError, match="axis"):
        st.update(np.zeros((3,), np.uint8))
    with pytest.raises(ValueError, match="axis"):
        st.update(np.float32(1.0))
    with pytest.raises(TypeError, match="dtype"):
        st.update(np.zeros((2, 3), np.int32))
    with pytest.raises(TypeError):
        st.update("abc")
    with pytest.raises(TypeError):
        st.merge(object())
    with pytest.raises(ValueError):
        st.merge(ChannelStats(4))
    assert st.count == 0
    assert "ChannelStats(num_channels=3" in repr(st.update(np.ones((2, 3), np.float32)))


# --------------------------------------------------------------------------------------------
# threads and ISA levels


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float16, np.float32, np.float64],
                         ids=lambda d: np.dtype(d).name)
def test_stats_bitwise_identical_for_any_thread_count(dtype, restore_threads):
    rng = np.random.default_rng(19)
    x = _stat_data(rng, (6, 3, 150, 170), dtype)
    cases = [(x, 1), (np.ascontiguousarray(x.transpose(0, 2, 3, 1)), -1),
             (x.reshape(-1, 51), 1)]
    for data, axis in cases:
        got = []
        for t in (1, 2, 3):
            restore_threads(t)
            s = ChannelStats(data.shape[axis], channel_axis=axis).update(data)
            got.append((s.mean, s.var, s.min, s.max))
        for g in got[1:]:
            for a, b in zip(got[0], g):
                np.testing.assert_array_equal(a, b)


_ISA_CHILD = r"""
import json
import numpy as np, normcpp as nc
from normcpp.image import ChannelStats, normalize
rng = np.random.default_rng(5)
out = {"isa": nc.config()["isa"], "norm": [], "stats": []}
for dt in (np.uint8, np.uint16, np.float16, np.float32, np.float64):
    kind = np.dtype(dt).kind
    for c in (1, 3, 4, 5):
        if kind == "u":
            x = rng.integers(0, np.iinfo(dt).max + 1, (2, 19, 23, c), dtype=dt)
            scale = 1.0 / np.iinfo(dt).max
        else:
            x = rng.uniform(-3, 4, (2, 19, 23, c)).astype(dt)
            scale = 1.0
        mean, std = rng.uniform(-0.5, 0.5, c), rng.uniform(0.2, 2, c)
        xd = x.astype(np.float64)
        ref = (xd * scale - mean) / std
        mag = np.abs(xd * scale / std) + np.abs(mean / std)
        for axis in (-1, 1):
            xin = x if axis == -1 else np.ascontiguousarray(x.transpose(0, 3, 1, 2))
            for lay in ("NCHW", "NHWC"):
                for odt in (np.float32, np.float16):
                    y = normalize(xin, mean, std, channel_axis=axis, out_layout=lay, dtype=odt)
                    y = y.transpose(0, 2, 3, 1) if lay == "NCHW" else y
                    tol = 4 * 2.0**-23 * mag
                    if odt == np.float16:
                        tol = tol + 2.0**-11 * np.abs(ref) + 2.0**-24
                    ok = bool(np.all(np.abs(y.astype(np.float64) - ref) <= tol))
                    out["norm"].append([dt.__name__, c, axis, lay, np.dtype(odt).name, ok])
            s = ChannelStats(c, channel_axis=axis).update(xin)
            flat = xd.reshape(-1, c)
            ok = (np.allclose(s.mean, flat.mean(0), rtol=1e-12, atol=0)
                  and np.allclose(s.var, flat.var(0), rtol=1e-12, atol=0)
                  and s.min.tolist() == flat.min(0).tolist()
                  and s.max.tolist() == flat.max(0).tolist())
            out["stats"].append([dt.__name__, c, axis, bool(ok)])
print(json.dumps(out))
"""


def _run_isa_child(isa):
    env = {k: v for k, v in os.environ.items() if k != "NORMCPP_ISA"}
    env["PYTHONPATH"] = os.pathsep.join(
        [PKG_PARENT] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
    env["NORMCPP_ISA"] = isa
    proc = subprocess.run([sys.executable, "-c", _ISA_CHILD], env=env, capture_output=True,
                          text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("isa", nc.config()["isas_supported"])
def test_every_isa_level(isa):
    """Each level (forced in a fresh process) against the float64 NumPy reference."""
    res = _run_isa_child(isa)
    assert res["isa"] == isa
    assert [r for r in res["norm"] if not r[-1]] == []
    assert [r for r in res["stats"] if not r[-1]] == []
