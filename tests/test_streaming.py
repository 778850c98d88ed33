"""Streaming (non-temporal) stores: outputs at or above ``get_stream_threshold()`` bytes are
written past the caches. The values must be bitwise those of plain stores, whatever the output's
alignment (a streamed row starts and ends with lanes of the same vector arithmetic), in place
too, and for every kernel that streams: the NCHW apply (batch/instance/group norm), the
channels-last apply, the row apply (layer/rms norm, with activations) and the backward
elementwise pass; float32 and, where F16C converts in registers, float16. Only rows of at least
4 cache lines stream, so every row here is longer than 64 float32 elements (and some longer
than 128 float16 ones)."""

from __future__ import annotations

import os

import normcpp as nc
import numpy as np
import pytest
from normcpp import _core


@pytest.fixture
def stream_threshold():
    """Yields a setter for the threshold and restores the default afterwards (-1: the
    automatic policy, or NORMCPP_STREAM_BYTES where set)."""
    yield _core.set_stream_threshold
    _core.set_stream_threshold(-1)


def _buffer(shape, dtype, offset_bytes):
    """An aligned-for-dtype but otherwise arbitrarily placed output array."""
    itemsize = np.dtype(dtype).itemsize
    n = int(np.prod(shape))
    raw = np.empty(n * itemsize + 64 + offset_bytes, np.uint8)
    base = (-raw.ctypes.data) % 64 + offset_bytes
    out = raw[base : base + n * itemsize].view(dtype).reshape(shape)
    assert out.ctypes.data % 64 == offset_bytes
    return out


RNG = np.random.default_rng(7)

# (name, input shape, call(x, out) -> array): every path whose output kernel streams.
FORWARD = [
    ("batch_norm eval", (3, 5, 9, 11), lambda x, out: nc.batch_norm(
        x, np.linspace(-1, 1, 5), np.linspace(0.5, 2, 5), np.linspace(0.5, 1.5, 5),
        np.linspace(-0.2, 0.2, 5), out=out)),
    ("batch_norm train", (2, 4, 97), lambda x, out: nc.batch_norm(x, training=True, out=out)),
    ("instance_norm", (2, 3, 11, 13), lambda x, out: nc.instance_norm(x, out=out)),
    ("group_norm", (2, 6, 9, 11), lambda x, out: nc.group_norm(
        x, 3, np.linspace(0.5, 1.5, 6), np.linspace(-1, 1, 6), out=out)),
    ("group_norm silu", (2, 6, 83), lambda x, out: nc.group_norm(
        x, 2, out=out, activation="silu")),
    ("layer_norm", (6, 101), lambda x, out: nc.layer_norm(
        x, (101,), np.linspace(0.5, 1.5, 101), np.linspace(-1, 1, 101), out=out)),
    ("layer_norm gelu", (5, 200), lambda x, out: nc.layer_norm(
        x, (200,), out=out, activation="gelu")),
    ("layer_norm weight only", (4, 3, 37), lambda x, out: nc.layer_norm(
        x, (3, 37), np.linspace(0.5, 1.5, 111).reshape(3, 37), out=out)),
    ("rms_norm", (7, 145), lambda x, out: nc.rms_norm(x, (145,), np.linspace(1, 2, 145), out=out)),
    # rows of whole cache lines: the weight and bias are copied to the output's offset in a
    # line (stream_grid_offset), so that the streamed vectors read them on lines
    ("layer_norm rows of lines", (6, 128), lambda x, out: nc.layer_norm(
        x, (128,), np.linspace(0.5, 1.5, 128), np.linspace(-1, 1, 128), out=out)),
    ("layer_norm rows of lines relu", (7, 64), lambda x, out: nc.layer_norm(
        x, (64,), np.linspace(0.5, 1.5, 64), np.linspace(-1, 1, 64), out=out,
        activation="relu")),
    ("rms_norm rows of lines", (5, 96), lambda x, out: nc.rms_norm(
        x, (96,), np.linspace(1, 2, 96), out=out)),
    # rows and planes of 4 lines or more that are not whole lines, under 3 KB: streamed line
    # after line across rows, each row completing the line its predecessor left (LineCarry)
    ("layer_norm rows of 250", (9, 250), lambda x, out: nc.layer_norm(
        x, (250,), np.linspace(0.5, 1.5, 250), np.linspace(-1, 1, 250), out=out)),
    ("rms_norm rows of 300", (8, 300), lambda x, out: nc.rms_norm(
        x, (300,), np.linspace(1, 2, 300), out=out)),
    ("batch_norm eval planes of 14x14", (3, 5, 14, 14), lambda x, out: nc.batch_norm(
        x, np.linspace(-1, 1, 5), np.linspace(0.5, 2, 5), np.linspace(0.5, 1.5, 5),
        np.linspace(-0.2, 0.2, 5), out=out)),
    ("instance_norm planes of 14x14", (2, 5, 14, 14), lambda x, out: nc.instance_norm(
        x, out=out)),
    ("group_norm planes of 14x14", (2, 6, 14, 14), lambda x, out: nc.group_norm(
        x, 3, np.linspace(0.5, 1.5, 6), np.linspace(-1, 1, 6), out=out, activation="relu")),
    # planes and rows of over 3 KB of float16 (which stream whole lines from any offset)
    ("batch_norm eval long planes", (2, 3, 40, 41), lambda x, out: nc.batch_norm(
        x, np.linspace(-1, 1, 3), np.linspace(0.5, 2, 3), np.linspace(0.5, 1.5, 3),
        np.linspace(-0.2, 0.2, 3), out=out)),
    ("instance_norm long planes", (2, 3, 40, 41), lambda x, out: nc.instance_norm(x, out=out)),
    ("layer_norm long rows", (3, 1601), lambda x, out: nc.layer_norm(
        x, (1601,), np.linspace(0.5, 1.5, 1601), np.linspace(-1, 1, 1601), out=out)),
]


def _pair(call, x, out, threshold, setter):
    setter(threshold)
    return call(x, out)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("case", FORWARD, ids=[c[0] for c in FORWARD])
def test_forward_streamed_equals_plain(case, dtype, stream_threshold):
    _, shape, call = case
    x = (RNG.standard_normal(shape) * 3 + 1).astype(dtype)
    stream_threshold(2**62)
    plain = call(x, None)
    stream_threshold(0)
    assert _core.get_stream_threshold() == 0
    fresh = call(x, None)
    np.testing.assert_array_equal(fresh, plain)
    for offset in range(0, 64, np.dtype(dtype).itemsize):
        out = _buffer(shape, dtype, offset)
        got = call(x, out)
        assert got is out
        np.testing.assert_array_equal(out, plain, err_msg=f"output at 64k + {offset} bytes")
    inplace = x.copy()
    call(inplace, inplace)
    np.testing.assert_array_equal(inplace, plain, err_msg="in place")


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("case", FORWARD, ids=[c[0] for c in FORWARD])
def test_forward_plain_any_output_offset(case, dtype, stream_threshold):
    """Plain stores into an output off a cache line go on the output's lines (write_row's
    grid: the row's first and last vectors stored whole across lines, over the ends of the
    vectors between): every offset, and in place from every offset, gives the same values."""
    _, shape, call = case
    itemsize = np.dtype(dtype).itemsize
    x = (RNG.standard_normal(shape) * 3 + 1).astype(dtype)
    stream_threshold(2**62)
    plain = call(x, None)
    for offset in range(0, 64, itemsize):
        out = _buffer(shape, dtype, offset)
        assert call(x, out) is out
        np.testing.assert_array_equal(out, plain, err_msg=f"output at 64k + {offset} bytes")
        inplace = _buffer(shape, dtype, offset)
        inplace[...] = x
        call(inplace, inplace)
        np.testing.assert_array_equal(inplace, plain, err_msg=f"in place at 64k + {offset}")


def _p(c, lo, hi):
    return np.linspace(lo, hi, c)


# Channels-last (N, H, W, C) memory viewed as NCHW: the periodic channels-last apply kernel.
CHANNELS_LAST = [
    ("batch_norm eval C=3", (2, 9, 7, 3), lambda x, out: nc.batch_norm(
        x, _p(3, -1, 1), _p(3, 0.5, 2), _p(3, 0.5, 1.5), _p(3, -0.2, 0.2), out=out)),
    ("batch_norm train C=5", (3, 6, 5, 5), lambda x, out: nc.batch_norm(
        x, training=True, out=out)),
    ("batch_norm eval C=5 relu", (3, 6, 5, 5), lambda x, out: nc.batch_norm(
        x, _p(5, -1, 1), _p(5, 0.5, 2), out=out, activation="relu")),
    ("instance_norm C=24", (2, 4, 5, 24), lambda x, out: nc.instance_norm(x, out=out)),
    # periods of one and two vectors (streamed with the coefficients in registers)
    ("batch_norm eval C=16", (2, 6, 7, 16), lambda x, out: nc.batch_norm(
        x, _p(16, -1, 1), _p(16, 0.5, 2), out=out)),
    ("instance_norm C=32", (2, 5, 3, 32), lambda x, out: nc.instance_norm(x, out=out)),
    ("group_norm C=64 gelu", (1, 3, 3, 64), lambda x, out: nc.group_norm(
        x, 8, _p(64, 0.5, 1.5), _p(64, -1, 1), out=out, activation="gelu")),
    ("group_norm C=6", (2, 7, 9, 6), lambda x, out: nc.group_norm(x, 3, out=out)),
    # a period of 6 vectors over more rows than one L1 tile (column groups of 4 + 2 when plain)
    ("batch_norm eval C=48 relu6", (2, 10, 5, 48), lambda x, out: nc.batch_norm(
        x, _p(48, -1, 1), _p(48, 0.5, 2), out=out, activation="relu6")),
    # periods of >= 64 elements (written as period-rows when not streamed)
    ("instance_norm C=64", (2, 5, 3, 64), lambda x, out: nc.instance_norm(x, out=out)),
    ("batch_norm train C=100", (3, 5, 1, 100), lambda x, out: nc.batch_norm(
        x, training=True, out=out)),
    # lcm(C, lanes) > 1024: the row-by-row channels-last path
    ("batch_norm eval C=1030", (2, 3, 1, 1030), lambda x, out: nc.batch_norm(
        x, _p(1030, -1, 1), _p(1030, 0.5, 2), out=out, activation="relu")),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("case", CHANNELS_LAST, ids=[c[0] for c in CHANNELS_LAST])
def test_channels_last_streamed_equals_plain(case, dtype, stream_threshold):
    _, nhwc, call = case
    x = (RNG.standard_normal(nhwc) * 3 + 1).astype(dtype).transpose(0, 3, 1, 2)
    stream_threshold(2**62)
    plain = call(x, None)
    stream_threshold(0)
    np.testing.assert_array_equal(call(x, None), plain)
    for offset in range(0, 64, np.dtype(dtype).itemsize):
        out = _buffer(nhwc, dtype, offset).transpose(0, 3, 1, 2)
        assert call(x, out) is out
        np.testing.assert_array_equal(out, plain, err_msg=f"output at 64k + {offset} bytes")
    inplace = x.copy(order="K")
    assert inplace.strides == x.strides
    call(inplace, inplace)
    np.testing.assert_array_equal(inplace, plain, err_msg="in place")


BACKWARD = [
    ("batch_norm", (3, 4, 9, 11), lambda x, dy: nc.batch_norm_backward(
        dy, x, np.linspace(0.5, 1.5, x.shape[1]), *nc.batch_norm_forward(x, training=True)[1:])),
    ("instance_norm", (2, 3, 9, 11), lambda x, dy: nc.instance_norm_backward(
        dy, x, None, *nc.instance_norm_forward(x)[1:])),
    ("group_norm", (2, 6, 83), lambda x, dy: nc.group_norm_backward(
        dy, x, 3, np.linspace(0.5, 1.5, 6), *nc.group_norm_forward(x, 3)[1:])),
    ("layer_norm", (9, 177), lambda x, dy: nc.layer_norm_backward(
        dy, x, (177,), np.linspace(0.5, 1.5, 177), *nc.layer_norm_forward(x, (177,))[1:])),
    ("rms_norm", (5, 3, 40), lambda x, dy: nc.rms_norm_backward(
        dy, x, (3, 40), None, nc.rms_norm_forward(x, (3, 40))[1])),
    ("layer_norm long rows", (4, 1601), lambda x, dy: nc.layer_norm_backward(
        dy, x, (1601,), np.linspace(0.5, 1.5, 1601), *nc.layer_norm_forward(x, (1601,))[1:])),
]


# Channels-last backward (the periodic channels-last dx kernel): (N, H, W, C) viewed as NCHW.
BACKWARD_CL = [
    ("batch_norm channels-last C=3", (2, 9, 7, 3), BACKWARD[0][2]),
    ("instance_norm channels-last C=24", (2, 4, 5, 24), BACKWARD[1][2]),
    ("group_norm channels-last C=6", (2, 7, 9, 6), lambda x, dy: nc.group_norm_backward(
        dy, x, 3, np.linspace(0.5, 1.5, 6), *nc.group_norm_forward(x, 3)[1:])),
    ("batch_norm channels-last C=1030", (2, 3, 1, 1030), BACKWARD[0][2]),
    ("batch_norm channels-last C=96", (2, 3, 5, 96), BACKWARD[0][2]),
    # periods of one, two and four vectors: dx with the coefficients in registers
    ("batch_norm channels-last C=16", (2, 9, 7, 16), BACKWARD[0][2]),
    ("instance_norm channels-last C=32", (2, 5, 5, 32), BACKWARD[1][2]),
    ("batch_norm channels-last C=64", (2, 3, 5, 64), BACKWARD[0][2]),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("case", BACKWARD + BACKWARD_CL,
                         ids=[c[0] for c in BACKWARD + BACKWARD_CL])
def test_backward_streamed_equals_plain(case, dtype, stream_threshold):
    name, shape, call = case
    x = (RNG.standard_normal(shape) * 2 - 1).astype(dtype)
    dy = RNG.standard_normal(shape).astype(dtype)
    if "channels-last" in name:
        x, dy = x.transpose(0, 3, 1, 2), dy.transpose(0, 3, 1, 2)
    stream_threshold(2**62)
    plain = call(x, dy)
    stream_threshold(0)
    streamed = call(x, dy)
    assert len(plain) == len(streamed)
    for a, b in zip(plain, streamed):
        if a is None:
            assert b is None
        else:
            np.testing.assert_array_equal(b, a)


def test_threshold_setting(stream_threshold):
    default = _core.get_stream_threshold()
    env = os.environ.get("NORMCPP_STREAM_BYTES")
    if env is None:
        assert 4 * 2**20 <= default <= 8 * 2**20
    else:
        assert default == int(env)
    stream_threshold(12345)
    assert _core.get_stream_threshold() == 12345
    stream_threshold(-1)
    assert _core.get_stream_threshold() == default


def test_store_policy_keeps_outputs_a_threads_l2_holds(stream_threshold):
    """The automatic policy streams an out-of-place output from the threshold on, except where
    each thread's share of input and output (2 * bytes / threads) fits in half a core's L2
    (the output then stays cached for its reader); an explicit threshold streams from exactly
    that many bytes, whatever the threads."""
    if os.environ.get("NORMCPP_STREAM_BYTES") is not None:
        pytest.skip("NORMCPP_STREAM_BYTES set: the threshold is explicit")
    decide = _core._stream_decision
    thr, l2 = _core.get_stream_threshold(), _core._l2_cache_bytes()
    big = 4 * max(thr, l2)
    assert not decide(thr - 1, 1)
    if l2 == 0:  # unknown L2: the threshold alone
        assert decide(big, 1) and decide(big, 10**6)
    else:
        fits = -(-4 * big // l2)  # the fewest threads with 2 * big / threads <= l2 / 2
        assert decide(big, 1)
        assert decide(big, fits // 2)
        assert not decide(big, fits)
        stream_threshold(0)
        assert decide(big, fits) and decide(1, 10**6)
        stream_threshold(-1)
        assert not decide(big, fits)


def test_store_policy_keeps_outputs_the_last_level_cache_holds_for_several_threads(
        stream_threshold):
    """With several threads, the automatic policy does not stream an output whose inputs and
    itself fit in a last-level cache of at most 64 MiB (_small_llc_bytes; 0 where unknown or
    larger: no such rule); one thread, or inputs and output beyond that cache, stream as
    before; an explicit threshold streams whatever the cache."""
    if os.environ.get("NORMCPP_STREAM_BYTES") is not None:
        pytest.skip("NORMCPP_STREAM_BYTES set: the threshold is explicit")
    decide = _core._stream_decision
    thr, l2, llc = (_core.get_stream_threshold(), _core._l2_cache_bytes(),
                    _core._small_llc_bytes())
    if llc < 2 * max(thr, 2 * l2):
        pytest.skip("no last-level cache of at most 64 MiB that holds two outputs of the "
                    "threshold's size here")
    b = llc // 2  # input and output fill the cache: the largest kept in it
    assert b >= thr and 2 * b // 2 > l2 // 2  # the older rules alone would stream it
    assert decide(b, 1) and decide(b, 1, 2)  # one thread: streamed
    assert not decide(b, 2)  # input + output fit: plain
    assert decide(b + 1, 2)  # one byte more: streamed
    assert decide(b, 2, 2)  # two inputs (a backward's x and dy) + output do not fit
    assert not decide(llc // 3, 2, 2)
    stream_threshold(0)
    assert decide(b, 2)
