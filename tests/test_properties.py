"""Property tests (Hypothesis) over random small shapes, memory layouts, dtypes and parameters.

* every op agrees with the float64 reference of ``tests/reference.py``;
* shift/scale invariance: batch/instance/group/layer norm of ``a * x + b`` (a > 0) with
  ``eps * a**2`` equals the norm of ``x`` with ``eps`` (exact algebra; rms_norm: scale only);
* ``group_norm(x, 1)`` equals ``layer_norm`` over ``(C, ...)``, ``group_norm(x, C)`` equals
  ``instance_norm``;
* ``batch_norm`` in eval mode with the batch's own statistics (biased variance, from
  ``batch_norm_stats``) equals ``batch_norm`` in training mode;
* every ``*_backward`` equals central finite differences of its forward in float64 (input,
  weight and bias gradients) on tiny shapes;
* ``fold_batchnorm`` folds an eval BatchNorm into a linear or 1x1 conv layer exactly.

The number of examples run is printed at the end of the module ("Hypothesis examples run: N")
and written to ``$NORMCPP_HYPOTHESIS_COUNT_FILE`` when that is set. The whole file runs in
well under 30 s.
"""

from __future__ import annotations

import collections
import os

import normcpp as nc
import numpy as np
import pytest
import reference as ref
from conftest import to_layout
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

F16, F32, F64 = np.float16, np.float32, np.float64

EXAMPLES: collections.Counter = collections.Counter()


def count(name: str) -> None:
    EXAMPLES[name] += 1


class _ExampleReport:
    """A plugin registered at run time (no conftest needed): adds the example count to the
    terminal summary and, with ``$NORMCPP_HYPOTHESIS_COUNT_FILE`` set, appends it there."""

    def pytest_terminal_summary(self, terminalreporter):
        total = sum(EXAMPLES.values())
        detail = ", ".join(f"{k} {v}" for k, v in sorted(EXAMPLES.items()))
        terminalreporter.write_line(f"Hypothesis examples run: {total} ({detail})")
        path = os.environ.get("NORMCPP_HYPOTHESIS_COUNT_FILE")
        if path:
            with open(path, "a") as f:
                f.write(f"{total}\n")


@pytest.fixture(scope="module", autouse=True)
def _report_examples(request):
    manager = request.config.pluginmanager
    if not manager.has_plugin("normcpp-hypothesis-examples"):
        manager.register(_ExampleReport(), "normcpp-hypothesis-examples")
    yield


def props(n: int):
    """Hypothesis settings for one property: ``n`` examples, no deadline (first calls pay for
    thread start-up), no database writes into the source tree, no "explain" phase (it imports
    modules that warn, and warnings are errors here)."""
    return settings(max_examples=n, deadline=None, database=None, print_blob=True,
                    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target,
                            Phase.shrink],
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


LAYOUTS = ["contiguous", "channels_last", "sliced", "negative", "batch_strided"]


@st.composite
def tensors(draw, *, min_spatial=0, max_spatial=3, max_c=7, max_n=4, dtypes=(F32, F64),
            layouts=LAYOUTS, max_side=5):
    """An (N, C, *spatial) array in some memory layout, with its float64 values."""
    n = draw(st.integers(1, max_n))
    c = draw(st.integers(1, max_c))
    spatial = tuple(draw(st.lists(st.integers(1, max_side), min_size=min_spatial,
                                  max_size=max_spatial)))
    dtype = draw(st.sampled_from(dtypes))
    layout = draw(st.sampled_from(layouts))
    seed = draw(st.integers(0, 2**32 - 1))
    if dtype == F16:
        scale, loc = draw(st.floats(0.5, 4.0)), draw(st.floats(-2.0, 2.0))
    else:
        scale, loc = draw(st.floats(0.05, 20.0)), draw(st.floats(-10.0, 10.0))
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, c) + spatial) * scale + loc).astype(dtype)
    return to_layout(x, layout)


@st.composite
def per_channel(draw, c: int, *, positive=False, allow_none=True):
    """An optional float32/float64 vector of length ``c``."""
    if allow_none and draw(st.booleans()):
        return None
    dtype = draw(st.sampled_from([F32, F64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    v = rng.uniform(0.5, 2.0, c) if positive else rng.standard_normal(c)
    return v.astype(dtype)


def close(actual, expected, dtype, factor=1.0, atol_extra=0.0) -> None:
    rtol, atol = ref.tolerance(dtype)
    np.testing.assert_allclose(np.asarray(actual, F64), np.asarray(expected, F64),
                               rtol=rtol * factor, atol=atol * factor + atol_extra)


def mean_rounding_atol(slots, w, eps) -> float:
    """The float32 arithmetic of float16/float32 inputs subtracts the batch mean rounded to
    float32: x - mean is off by up to half an ulp of |mean|, so y = (x - mean) * w / std is off
    by up to 2**-24 |mean| |w| / std. Where the spread of a slot is tiny next to its mean (loc
    8, scale 0.05, four values in a row: |mean|/std ~ 160) that exceeds the plain atol near
    y = 0 (seen: 2.5e-5 against atol 2e-5). ``slots``: the input as (slots, elements), float64;
    returns the bound with a factor 2 of margin, 0 for float64 input."""
    if slots.dtype != F64:
        raise TypeError("slots must be float64")
    mean = slots.mean(axis=1)
    std = np.sqrt(slots.var(axis=1) + eps)
    wmax = 1.0 if w is None else float(np.abs(w).max())
    return float(2.0**-23 * np.max(np.abs(mean) / std) * wmax)


def batch_slots(x) -> np.ndarray:
    """(C, N * spatial) float64: BatchNorm's statistic slots."""
    return np.moveaxis(x.astype(F64), 1, 0).reshape(x.shape[1], -1)


def stats_close(actual, expected, input_dtype) -> None:
    """Running statistics (stored as float32 or float64) against float64; a float32/float16
    input has its batch statistics accumulated in float32 blocks."""
    rtol = 1e-10 if actual.dtype == F64 and input_dtype == F64 else 1e-5
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol)


def spatial_size(x) -> int:
    return int(np.prod(x.shape[2:], dtype=np.int64))


EPS = st.sampled_from([1e-5, 1e-3, 0.1])
MOMENTUM = st.floats(0.0, 1.0)

# =============================================================================================
# agreement with the float64 reference
# =============================================================================================


@props(100)
@given(data=st.data(), x=tensors(dtypes=(F16, F32, F64)))
def test_batch_norm_matches_reference(data, x):
    count("batch_norm")
    c = x.shape[1]
    training = data.draw(st.booleans())
    if training and x.shape[0] * spatial_size(x) < 2:
        training = False
    w, b = data.draw(per_channel(c)), data.draw(per_channel(c))
    eps, momentum = data.draw(EPS), data.draw(MOMENTUM)
    track = not training or data.draw(st.booleans())
    if track:
        rm = data.draw(per_channel(c, allow_none=False))
        rv = data.draw(per_channel(c, positive=True, allow_none=False)).astype(rm.dtype)
    else:
        rm = rv = None
    y_ref, rm_ref, rv_ref = ref.batch_norm(x, rm, rv, w, b, training, momentum, eps)
    y = nc.batch_norm(x, rm, rv, w, b, training, momentum, eps)
    assert y.shape == x.shape and y.dtype == x.dtype
    extra = mean_rounding_atol(batch_slots(x), w, eps) if training and x.dtype != F64 else 0.0
    close(y, y_ref, x.dtype, atol_extra=extra)
    if track:
        stats_close(rm, rm_ref, x.dtype)
        stats_close(rv, rv_ref, x.dtype)


@props(100)
@given(data=st.data(), x=tensors(min_spatial=1, dtypes=(F16, F32, F64)))
def test_instance_norm_matches_reference(data, x):
    count("instance_norm")
    c = x.shape[1]
    use_input_stats = spatial_size(x) >= 2 and data.draw(st.booleans())
    w, b = data.draw(per_channel(c)), data.draw(per_channel(c))
    eps, momentum = data.draw(EPS), data.draw(MOMENTUM)
    track = not use_input_stats or data.draw(st.booleans())
    rm = rv = None
    if track:
        rm = data.draw(per_channel(c, allow_none=False))
        rv = data.draw(per_channel(c, positive=True, allow_none=False))
    y_ref, rm_ref, rv_ref = ref.instance_norm(x, rm, rv, w, b, use_input_stats, momentum, eps)
    y = nc.instance_norm(x, rm, rv, w, b, use_input_stats, momentum, eps)
    extra = 0.0
    if use_input_stats and x.dtype != F64:
        extra = mean_rounding_atol(x.astype(F64).reshape(x.shape[0] * c, -1), w, eps)
    close(y, y_ref, x.dtype, atol_extra=extra)
    if track:
        stats_close(rm, rm_ref, x.dtype)
        stats_close(rv, rv_ref, x.dtype)


@props(50)
@given(data=st.data(), x=tensors(dtypes=(F16, F32, F64), max_c=8))
def test_group_norm_matches_reference(data, x):
    count("group_norm")
    c = x.shape[1]
    g = data.draw(st.sampled_from([d for d in range(1, c + 1) if c % d == 0]))
    w, b = data.draw(per_channel(c)), data.draw(per_channel(c))
    eps = data.draw(EPS)
    y, mean, invstd = nc.group_norm_forward(x, g, w, b, eps)
    extra = 0.0
    if x.dtype != F64:
        extra = mean_rounding_atol(x.astype(F64).reshape(x.shape[0] * g, -1), w, eps)
    close(y, ref.group_norm(x, g, w, b, eps), x.dtype, atol_extra=extra)
    assert mean.shape == invstd.shape == (x.shape[0], g)


def _trailing(data, x):
    k = data.draw(st.integers(1, x.ndim))
    return tuple(x.shape[x.ndim - k:])


def _row_param(data, shape, allow_none=True):
    if allow_none and data.draw(st.booleans()):
        return None
    dtype = data.draw(st.sampled_from([F32, F64]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    return rng.standard_normal(shape).astype(dtype)


@props(50)
@given(data=st.data(), x=tensors(dtypes=(F16, F32, F64)))
def test_layer_norm_matches_reference(data, x):
    count("layer_norm")
    ns = _trailing(data, x)
    w, b = _row_param(data, ns), _row_param(data, ns)
    eps = data.draw(EPS)
    y, mean, _ = nc.layer_norm_forward(x, ns, w, b, eps)
    extra = 0.0
    if x.dtype != F64:
        extra = mean_rounding_atol(x.astype(F64).reshape(-1, int(np.prod(ns))), w, eps)
    close(y, ref.layer_norm(x, ns, w, b, eps), x.dtype, atol_extra=extra)
    assert mean.shape == x.shape[:x.ndim - len(ns)]


@props(50)
@given(data=st.data(), x=tensors(dtypes=(F16, F32, F64)))
def test_rms_norm_matches_reference(data, x):
    count("rms_norm")
    ns = _trailing(data, x)
    w = _row_param(data, ns)
    eps = data.draw(st.one_of(st.none(), EPS))
    y = nc.rms_norm(x, ns, w, eps)
    close(y, ref.rms_norm(x, ns, w, eps, input_dtype=x.dtype), x.dtype)


# =============================================================================================
# invariances and identities
# =============================================================================================

INVARIANT_OPS = ["batch_norm", "instance_norm", "group_norm", "layer_norm", "rms_norm"]


def _norm(op, x, eps, c_groups=None):
    if op == "batch_norm":
        return nc.batch_norm(x, None, None, None, None, True, 0.1, eps)
    if op == "instance_norm":
        return nc.instance_norm(x, None, None, None, None, True, 0.1, eps)
    if op == "group_norm":
        return nc.group_norm(x, c_groups, None, None, eps)
    if op == "layer_norm":
        return nc.layer_norm(x, x.shape[1:], None, None, eps)
    return nc.rms_norm(x, x.shape[1:], None, eps)


@pytest.mark.parametrize("op", INVARIANT_OPS)
@props(40)
@given(data=st.data(), x=tensors(min_spatial=1, dtypes=(F32, F64)))
def test_shift_scale_invariance(op, data, x):
    """norm(a*x + b, eps*a**2) == norm(x, eps) for a > 0 (rms_norm: b = 0)."""
    assume(op != "batch_norm" or x.shape[0] * spatial_size(x) >= 2)
    assume(op != "instance_norm" or spatial_size(x) >= 2)
    count("shift_scale_invariance")
    x64 = np.asarray(x, F64)
    # enough spread that float32 rounding of the shifted data stays far below the tolerance
    a = data.draw(st.floats(0.05, 20.0))
    b = 0.0 if op == "rms_norm" else data.draw(st.floats(-50.0, 50.0))
    eps = data.draw(EPS)
    groups = data.draw(st.sampled_from([d for d in range(1, x.shape[1] + 1)
                                        if x.shape[1] % d == 0]))
    moved = to_layout((a * x64 + b).astype(x.dtype), "contiguous")
    base = to_layout(x64.astype(x.dtype), "contiguous")
    # the tolerance has to absorb the rounding of a*x + b to the input dtype
    if x.dtype == F32:
        spread = max(float(np.std(x64)), 1e-3)
        factor = 10.0 * (1.0 + abs(b) / (a * spread))
    else:
        factor = 10.0
    y0 = _norm(op, base, eps, groups)
    y1 = _norm(op, moved, eps * a * a, groups)
    close(y1, y0, x.dtype, factor=factor)


@props(50)
@given(x=tensors(dtypes=(F16, F32, F64)), eps=EPS)
def test_group_norm_one_group_is_layer_norm(x, eps):
    count("group_norm_G1_is_layer_norm")
    y_g = nc.group_norm(x, 1, None, None, eps)
    y_l = nc.layer_norm(x, x.shape[1:], None, None, eps)
    close(y_g, y_l, x.dtype, factor=2.0)


@props(50)
@given(x=tensors(min_spatial=1, dtypes=(F16, F32, F64)), eps=EPS)
def test_group_norm_c_groups_is_instance_norm(x, eps):
    assume(spatial_size(x) >= 2)  # instance_norm needs two values per instance
    count("group_norm_GC_is_instance_norm")
    y_g = nc.group_norm(x, x.shape[1], None, None, eps)
    y_i = nc.instance_norm(x, None, None, None, None, True, 0.1, eps)
    close(y_g, y_i, x.dtype, factor=2.0)


@props(50)
@given(data=st.data(), x=tensors(dtypes=(F16, F32, F64)))
def test_batch_norm_eval_with_batch_stats_is_training(data, x):
    assume(x.shape[0] * spatial_size(x) >= 2)
    count("batch_norm_eval_is_train")
    c = x.shape[1]
    w, b = data.draw(per_channel(c)), data.draw(per_channel(c))
    eps = data.draw(EPS)
    n, mean, m2 = nc.batch_norm_stats(x)
    var = m2 / n  # biased: what training normalizes with
    y_eval, m_eval, r_eval = nc.batch_norm_forward(x, mean, var, w, b, False, 0.1, eps)
    y_train, m_train, r_train = nc.batch_norm_forward(x, None, None, w, b, True, 0.1, eps)
    close(y_eval, y_train, x.dtype, factor=2.0)
    np.testing.assert_allclose(m_eval, m_train, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(r_eval, r_train, rtol=1e-10)


@props(40)
@given(data=st.data(), x=tensors(dtypes=(F32, F64), layouts=["contiguous"]))
def test_layouts_agree(data, x):
    """Every op gives the same result (to rounding) for each memory layout of one input."""
    count("layouts_agree")
    layout = data.draw(st.sampled_from(LAYOUTS[1:]))
    other = to_layout(x, layout)
    c = x.shape[1]
    for op in INVARIANT_OPS:
        if op == "batch_norm" and x.shape[0] * spatial_size(x) < 2:
            continue
        if op == "instance_norm" and spatial_size(x) < 2:
            continue
        close(_norm(op, other, 1e-5, c), _norm(op, x, 1e-5, c), x.dtype, factor=2.0)


# =============================================================================================
# backward against central finite differences (float64, tiny shapes)
# =============================================================================================

BACKWARD_OPS = ["batch_train", "batch_eval", "instance", "group", "layer", "rms"]
H = 1e-6


def _fd_forward(op, x, w, b, ctx):
    if op == "batch_train":
        return nc.batch_norm(x, None, None, w, b, True, 0.1, ctx["eps"])
    if op == "batch_eval":
        return nc.batch_norm(x, ctx["rm"], ctx["rv"], w, b, False, 0.1, ctx["eps"])
    if op == "instance":
        return nc.instance_norm(x, None, None, w, b, True, 0.1, ctx["eps"])
    if op == "group":
        return nc.group_norm(x, ctx["groups"], w, b, ctx["eps"])
    if op == "layer":
        return nc.layer_norm(x, ctx["ns"], w, b, ctx["eps"])
    return nc.rms_norm(x, ctx["ns"], w, ctx["eps"])


def _analytic(op, g, x, w, b, ctx):
    eps, has_bias = ctx["eps"], b is not None
    if op in ("batch_train", "batch_eval"):
        training = op == "batch_train"
        _, m, r = nc.batch_norm_forward(x, ctx.get("rm"), ctx.get("rv"), w, b, training, 0.1, eps)
        return nc.batch_norm_backward(g, x, w, m, r, training, has_bias=has_bias)
    if op == "instance":
        _, m, r = nc.instance_norm_forward(x, None, None, w, b, True, 0.1, eps)
        return nc.instance_norm_backward(g, x, w, m, r, has_bias=has_bias)
    if op == "group":
        _, m, r = nc.group_norm_forward(x, ctx["groups"], w, b, eps)
        return nc.group_norm_backward(g, x, ctx["groups"], w, m, r, has_bias=has_bias)
    if op == "layer":
        _, m, r = nc.layer_norm_forward(x, ctx["ns"], w, b, eps)
        return nc.layer_norm_backward(g, x, ctx["ns"], w, m, r, has_bias=has_bias)
    _, r = nc.rms_norm_forward(x, ctx["ns"], w, eps)
    dx, dw = nc.rms_norm_backward(g, x, ctx["ns"], w, r)
    return dx, dw, None


def _numeric_grad(f, a):
    """Central differences of the scalar f() with respect to every element of ``a`` (in place,
    restored)."""
    grad = np.zeros(a.shape)
    flat = a.reshape(-1) if a.flags.c_contiguous else None
    assert flat is not None
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + H
        up = f()
        flat[i] = old - H
        down = f()
        flat[i] = old
        grad.reshape(-1)[i] = (up - down) / (2 * H)
    return grad


def _grad_close(analytic, numeric):
    scale = max(1.0, float(np.max(np.abs(numeric))))
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=2e-6 * scale)


@pytest.mark.parametrize("op", BACKWARD_OPS)
@props(25)
@given(data=st.data(),
       x=tensors(max_n=3, max_c=4, max_spatial=2, max_side=3, dtypes=(F64,),
                 layouts=["contiguous"]))
def test_backward_matches_finite_differences(op, data, x):
    count("backward_fd")
    x = np.ascontiguousarray(x)
    # well-conditioned slots: unit-scale data (the strategy may have drawn a tiny spread)
    x = (x - x.mean()) / max(float(x.std()), 1e-12)
    n, c = x.shape[:2]
    s = spatial_size(x)
    if op == "batch_train" and n * s < 2:
        return
    if op == "instance" and s < 2:
        return
    ctx = {"eps": data.draw(st.sampled_from([1e-3, 0.1]))}
    if op in ("layer", "rms"):
        ctx["ns"] = _trailing(data, x)
        pshape = ctx["ns"]
    else:
        pshape = (c,)
    if op == "group":
        ctx["groups"] = data.draw(st.sampled_from([d for d in range(1, c + 1) if c % d == 0]))
        if x.size // (n * ctx["groups"]) < 2:
            return
    if op == "batch_eval":
        rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
        ctx["rm"], ctx["rv"] = rng.standard_normal(c), rng.uniform(0.5, 2.0, c)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    w = rng.uniform(0.5, 2.0, pshape) if data.draw(st.booleans()) else None
    b = rng.standard_normal(pshape) if op != "rms" and data.draw(st.booleans()) else None
    g = rng.standard_normal(x.shape)

    def loss():
        return float(np.sum(_fd_forward(op, x, w, b, ctx) * g))

    dx, dw, db = _analytic(op, g, x, w, b, ctx)
    _grad_close(dx, _numeric_grad(loss, x))
    if w is not None:
        _grad_close(dw, _numeric_grad(loss, w))
    else:
        assert dw is None
    if b is not None:
        _grad_close(db, _numeric_grad(loss, b))


# =============================================================================================
# fold_batchnorm: folding an eval BatchNorm into the layer before it changes nothing
# =============================================================================================


@props(40)
@given(data=st.data(), n=st.integers(1, 4), c_in=st.integers(1, 6), c_out=st.integers(1, 6),
       kind=st.sampled_from(["linear", "conv"]), seed=st.integers(0, 2**32 - 1))
def test_fold_batchnorm_identity(data, n, c_in, c_out, kind, seed):
    count("fold_batchnorm")
    rng = np.random.default_rng(seed)
    bn = nc.BatchNormNd(c_out, eps=data.draw(EPS), dtype=F64,
                        affine=data.draw(st.booleans()))
    bn.running_mean[:] = rng.standard_normal(c_out)
    bn.running_var[:] = rng.uniform(0.2, 3.0, c_out)
    if bn.weight is not None:
        bn.weight[:] = rng.standard_normal(c_out)
        bn.bias[:] = rng.standard_normal(c_out)
    bn.eval()
    bias = rng.standard_normal(c_out) if data.draw(st.booleans()) else None
    if kind == "linear":
        w = rng.standard_normal((c_out, c_in))
        x = rng.standard_normal((n, c_in))

        def layer(w_, b_):
            return x @ w_.T + (0.0 if b_ is None else b_)
    else:  # a 1x1 convolution over (n, c_in, 3, 2)
        w = rng.standard_normal((c_out, c_in, 1, 1))
        x = rng.standard_normal((n, c_in, 3, 2))

        def layer(w_, b_):
            y = np.einsum("oi,nihw->nohw", w_[:, :, 0, 0], x)
            return y + (0.0 if b_ is None else b_[None, :, None, None])
    w2, b2 = nc.fold_batchnorm(w, bias, bn, kind=kind)
    y_fold = layer(w2, b2)
    y_ref = bn(layer(w, bias))
    np.testing.assert_allclose(y_fold, y_ref, rtol=1e-10, atol=1e-10)
