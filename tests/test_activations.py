"""Fused activations (``activation=`` of eval batch_norm, group_norm and layer_norm) against the
float64 reference normalization followed by the activation in float64, in every dtype and both
layouts; and the activations' special values (inf, NaN, signed zero) against the float64 path."""
from __future__ import annotations

import math

import normcpp as nc
import numpy as np
import pytest
import reference as ref

_erfc = np.vectorize(math.erfc, otypes=[np.float64])


def activate(y: np.ndarray, act: str) -> np.ndarray:
    """The activation in float64, written from its definition."""
    with np.errstate(over="ignore", invalid="ignore"):
        if act == "relu":
            return np.where(y < 0, 0.0, y)
        if act == "relu6":
            return np.where(y < 0, 0.0, np.where(y > 6, 6.0, y))
        if act == "silu":
            return y / (1.0 + np.exp(-y))
        if act == "gelu":
            return 0.5 * y * _erfc(-y / math.sqrt(2.0))
    raise AssertionError(act)


ACTS = ["relu", "relu6", "silu", "gelu"]
DTYPES = [np.float16, np.float32, np.float64]


def _case(op, shape, dtype, layout, rng):
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    if layout == "channels_last":
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1)).transpose(0, 3, 1, 2)
    C = shape[1]
    w = rng.uniform(0.5, 2.0, C).astype(np.float32)
    b = rng.uniform(-1.0, 1.0, C).astype(np.float32)
    if op == "batch_norm":
        rm = rng.uniform(-1.0, 1.0, C).astype(np.float32)
        rv = rng.uniform(0.5, 3.0, C).astype(np.float32)
        want = ref.batch_norm(x, rm, rv, w, b)[0]
        return x, lambda act: nc.batch_norm(x, rm, rv, w, b, activation=act), want
    if op == "group_norm":
        want = ref.group_norm(x, 4, w, b)
        return x, lambda act: nc.group_norm(x, 4, w, b, activation=act), want
    lw = rng.uniform(0.5, 2.0, shape[-1]).astype(np.float32)
    lb = rng.uniform(-1.0, 1.0, shape[-1]).astype(np.float32)
    want = ref.layer_norm(x, (shape[-1],), lw, lb)
    return x, lambda act: nc.layer_norm(x, (shape[-1],), lw, lb, activation=act), want


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op,layout", [("batch_norm", "contiguous"),
                                       ("batch_norm", "channels_last"),
                                       ("group_norm", "contiguous"),
                                       ("group_norm", "channels_last"),
                                       ("layer_norm", "contiguous")])
def test_fused_activation_matches_reference(op, layout, dtype, act):
    rng = np.random.default_rng(len(op) * 7 + len(act) + np.dtype(dtype).itemsize)
    # 8 channels, 67 positions: vector bodies and scalar tails in both layouts
    x, call, y = _case(op, (3, 8, 67, 1) if op != "layer_norm" else (3, 8, 1, 67), dtype,
                       layout, rng)
    got = call(act)
    assert got.dtype == x.dtype and got.shape == x.shape
    rtol, atol = ref.tolerance(dtype)
    np.testing.assert_allclose(got.astype(np.float64), activate(y, act), rtol=rtol,
                               atol=atol * 4, err_msg=f"{op} {layout} {act}")


SPECIAL = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-30, -1e-30, 3.0, -3.0, 12.0, -12.0,
                    20.0, -20.0, 100.0, -100.0, 88.0, -88.0, 3e38, -3e38])


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activation_special_values(act, dtype):
    # identity affine (mean 0, var 1 - eps, eps): the activation sees the input itself, in every
    # lane position of the vector body and the scalar tail
    v = np.tile(SPECIAL, 5).astype(dtype)
    x = v.reshape(1, 1, -1)
    y = nc.batch_norm(x, np.zeros(1, dtype), np.full(1, 0.5, dtype), eps=0.5, activation=act)
    y = y.ravel().astype(np.float64)
    want = activate(v.astype(np.float64), act)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(want), err_msg=f"{act} NaN pattern")
    fin = ~np.isnan(want)
    np.testing.assert_array_equal(np.isinf(y[fin]), np.isinf(want[fin]), err_msg=act)
    # float32: exp(-v^2/2) of a rounded v^2/2 is off by up to ~v^2/2 * 2^-23 relative (1e-5 at
    # v = -12, where gelu is ~1e-32); float64 goes through libm
    inf = np.isinf(want)
    np.testing.assert_array_equal(y[inf], want[inf], err_msg=f"{act} infinities")
    fin = np.isfinite(want)
    vv, got, exp = v.astype(np.float64)[fin], y[fin], want[fin]
    rtol = 2e-6 + 2.4e-7 * np.where(np.isfinite(vv), vv, 0.0) ** 2 / 2 if dtype == np.float32 \
        else 1e-13
    bad = np.abs(got - exp) > 1e-37 + rtol * np.abs(exp)
    assert not bad.any(), f"{act}: {vv[bad]} -> {got[bad]}, want {exp[bad]}"
