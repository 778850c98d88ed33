"""The output buffer cache: outputs of at least 1 MiB take their memory from the buffers of
freed earlier outputs (no page faults and zeroing on every call). A buffer is reused only
once no array (or view) refers to it, results never depend on the cache, tracemalloc sees a
cached output like a NumPy one, and the cache keeps at most ``get_output_cache_bytes()``
bytes of free buffers (0 turns it off)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import tracemalloc

import normcpp as nc
import numpy as np
import pytest
import reference as ref
from normcpp import _core

BIG = (4, 64, 32, 32)  # 1 MiB of float32
RNG = np.random.default_rng(11)


@pytest.fixture
def cache_limit():
    """Yields a setter for the cache limit and restores the default afterwards."""
    old = _core.get_output_cache_bytes()
    yield _core.set_output_cache_bytes
    _core.set_output_cache_bytes(old)


def _x(shape=BIG, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype) * 2 + 0.5


def test_freed_output_buffer_is_reused(cache_limit):
    cache_limit(64 << 20)
    x = _x()
    y = nc.batch_norm(x, training=True)
    p = y.ctypes.data
    assert y.nbytes >= 1 << 20 and not y.flags.owndata
    assert y.flags.c_contiguous and y.flags.writeable and y.flags.aligned
    del y
    assert _core.output_cache_held_bytes() >= x.nbytes
    y2 = nc.batch_norm(x, training=True)
    assert y2.ctypes.data == p  # the same memory, handed out again
    np.testing.assert_allclose(y2, ref.batch_norm(x, training=True)[0], rtol=1e-4, atol=1e-5)


def test_buffer_of_a_live_view_is_not_reused(cache_limit):
    cache_limit(64 << 20)
    x = _x()
    y = nc.layer_norm(x, x.shape[1:])
    view = y[1:3, ::2]
    keep = view.copy()
    p = y.ctypes.data
    del y  # the view still holds the buffer
    x2 = _x(seed=1)
    y2 = nc.layer_norm(x2, x2.shape[1:])
    assert y2.ctypes.data != p
    np.testing.assert_array_equal(view, keep)
    del view
    y3 = nc.layer_norm(x2, x2.shape[1:])  # now it may be reused, and the values are right
    assert y3.ctypes.data == p
    np.testing.assert_array_equal(y3, y2)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_results_do_not_depend_on_the_cache(cache_limit, dtype, layout):
    x = _x(dtype=dtype)
    if layout == "nhwc":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    pdt = np.float64 if dtype == np.float64 else np.float32  # parameters: float32/float64
    w = RNG.random(x.shape[1]).astype(pdt) + 0.5
    b = RNG.standard_normal(x.shape[1]).astype(pdt)
    calls = [lambda: nc.batch_norm(x, None, None, w, b, training=True),
             lambda: nc.instance_norm(x, weight=w, bias=b),
             lambda: nc.group_norm(x, 8, w, b),
             lambda: nc.rms_norm(x, x.shape[-1])]
    cache_limit(0)
    want = [f() for f in calls]
    assert _core.output_cache_held_bytes() == 0
    cache_limit(64 << 20)
    for _ in range(3):  # later calls reuse the buffers of the earlier ones
        for f, w_ in zip(calls, want):
            y = f()
            assert y.dtype == w_.dtype and y.strides == w_.strides
            np.testing.assert_array_equal(y, w_)


def test_off_keeps_nothing(cache_limit):
    cache_limit(0)
    y = nc.batch_norm(_x(), training=True)
    assert y.flags.owndata  # NumPy's own memory when off
    del y
    assert _core.output_cache_held_bytes() == 0
    cache_limit(64 << 20)
    del_later = nc.batch_norm(_x(), training=True)
    del del_later
    assert _core.output_cache_held_bytes() > 0
    cache_limit(0)  # lowering the limit frees what is held
    assert _core.output_cache_held_bytes() == 0
    cache_limit(-1)  # the default
    assert _core.get_output_cache_bytes() == 64 << 20 or "NORMCPP_OUTPUT_CACHE_BYTES" in os.environ


def test_limit_bounds_what_is_held(cache_limit):
    nbytes = int(np.prod(BIG)) * 4
    cache_limit(2 * nbytes)
    ys = [nc.batch_norm(_x(seed=s), training=True) for s in range(5)]
    del ys
    held = _core.output_cache_held_bytes()
    assert 0 < held <= 2 * nbytes
    small = nc.batch_norm(_x((2, 3, 4, 4)), training=True)  # below 1 MiB: NumPy's memory
    assert small.flags.owndata


def test_tracemalloc_sees_a_cached_output(cache_limit):
    cache_limit(64 << 20)
    x = _x()
    del_me = nc.batch_norm(x, training=True)  # warm the cache
    del del_me
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        y = nc.batch_norm(x, training=True)
        during, _ = tracemalloc.get_traced_memory()
        del y
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert during - before >= x.nbytes
    assert after - before < 0.1 * x.nbytes


def test_cached_output_pickles_and_outlives_the_call(cache_limit):
    cache_limit(64 << 20)
    x = _x()
    y = nc.group_norm(x, 4)
    z = pickle.loads(pickle.dumps(y))
    np.testing.assert_array_equal(z, y)
    y[...] = 0  # writable; neither the unpickled copy nor later outputs are affected
    assert np.abs(z).max() > 0
    y2 = nc.group_norm(x, 4)
    np.testing.assert_array_equal(y2, z)


def test_env_var_sets_the_default():
    code = textwrap.dedent("""
        import numpy as np, normcpp as nc
        from normcpp import _core
        print(_core.get_output_cache_bytes())
        y = nc.batch_norm(np.ones((4, 64, 32, 32), np.float32), training=True)
        print(int(y.flags.owndata))
    """)
    env = dict(os.environ, NORMCPP_OUTPUT_CACHE_BYTES="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["0", "1"]
