"""Backward passes: every functional ``*_backward`` against central finite differences of the
forward op in float64 and against PyTorch autograd (when importable), in contiguous and
channels-last layouts and in float32/float16; ``Module.backward`` in training, eval and frozen
modes; the SyncBatchNorm building blocks; and the errors."""

from __future__ import annotations

import os
import sys

import normcpp as nc
import numpy as np
import pytest

try:
    import conftest
except ImportError:  # tests/conftest.py normally puts tests/ on sys.path
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import conftest

NF = nc.functional
EPS = 1e-5

# --------------------------------------------------------------------------------------------
# The ops as functions of (x, weight, bias), with their backward from the *_forward variant.

RM = np.array([0.3, -0.5, 1.2, 0.1, -2.0, 0.7])  # running statistics for eval-mode batch norm
RV = np.array([0.8, 1.7, 0.4, 2.5, 1.1, 0.6])


def _ns(x, k):
    return tuple(x.shape[x.ndim - k:])


class Op:
    """One differentiable op: ``forward(x, w, b)`` and ``backward(g, x, w, b)``."""

    def __init__(self, id, name, shapes, per_channel, has_bias=True, k=None):
        self.id, self.name, self.shapes, self.per_channel, self.bias_ok, self.k = (
            id, name, shapes, per_channel, has_bias, k)

    def param_shape(self, shape):
        return (shape[1],) if self.per_channel else tuple(shape[len(shape) - self.k:])

    def forward(self, x, w, b):
        n = self.name
        if n == "batch_train":
            return NF.batch_norm(x, None, None, w, b, True, 0.1, EPS)
        if n == "batch_eval":
            c = x.shape[1]
            return NF.batch_norm(x, RM[:c], RV[:c], w, b, False, 0.1, EPS)
        if n == "instance":
            return NF.instance_norm(x, None, None, w, b, True, 0.1, EPS)
        if n == "group":
            return NF.group_norm(x, 3, w, b, EPS)
        if n == "layer":
            return NF.layer_norm(x, _ns(x, self.k), w, b, EPS)
        if n == "rms":
            return NF.rms_norm(x, _ns(x, self.k), w, EPS)
        raise AssertionError(n)

    def backward(self, g, x, w, b):
        n, hb = self.name, b is not None
        if n == "batch_train":
            _, m, s = NF.batch_norm_forward(x, None, None, w, b, True, 0.1, EPS)
            return NF.batch_norm_backward(g, x, w, m, s, True, has_bias=hb)
        if n == "batch_eval":
            c = x.shape[1]
            _, m, s = NF.batch_norm_forward(x, RM[:c].copy(), RV[:c].copy(), w, b, False, 0.1,
                                            EPS)
            return NF.batch_norm_backward(g, x, w, m, s, False, has_bias=hb)
        if n == "instance":
            _, m, s = NF.instance_norm_forward(x, None, None, w, b, True, 0.1, EPS)
            return NF.instance_norm_backward(g, x, w, m, s, has_bias=hb)
        if n == "group":
            _, m, s = NF.group_norm_forward(x, 3, w, b, EPS)
            return NF.group_norm_backward(g, x, 3, w, m, s, has_bias=hb)
        if n == "layer":
            ns = _ns(x, self.k)
            _, m, s = NF.layer_norm_forward(x, ns, w, b, EPS)
            return NF.layer_norm_backward(g, x, ns, w, m, s, has_bias=hb)
        if n == "rms":
            ns = _ns(x, self.k)
            _, r = NF.rms_norm_forward(x, ns, w, EPS)
            dx, dw = NF.rms_norm_backward(g, x, ns, w, r)
            return dx, dw, None
        raise AssertionError(n)


OPS = [
    # (3, 96, 3, 3): channels-last rows of >= 64 elements take the row-block reductions;
    # C = 8, 16, 32, 48, 64: channel periods of one to four vectors (dx with the coefficients
    # in registers, sums over four-vector patterns)
    Op("batch_train", "batch_train",
       [(4, 3), (3, 3, 5), (2, 3, 2, 3), (2, 2, 2, 2, 3), (3, 96, 3, 3), (2, 16, 3, 5),
        (2, 64, 2, 3), (2, 8, 4, 4)], True),
    Op("batch_eval", "batch_eval", [(4, 3), (3, 5, 4), (2, 3, 2, 3)], True),
    Op("instance", "instance", [(2, 3, 5), (2, 3, 2, 3), (2, 96, 3, 3), (2, 32, 3, 3)], True),
    Op("group", "group", [(2, 6, 4), (3, 3, 2, 2), (2, 96, 3, 3), (2, 48, 2, 3)], True),
    Op("layer", "layer", [(3, 7), (2, 3, 4, 5)], False, k=1),
    Op("layer2d", "layer", [(3, 4, 5)], False, k=2),
    Op("rms", "rms", [(3, 7), (2, 3, 6)], False, has_bias=False, k=1),
    Op("rms2d", "rms", [(2, 3, 4)], False, has_bias=False, k=2),
]
CASES = [(op, shape) for op in OPS for shape in op.shapes]
CASE_IDS = [f"{op.id}-{'x'.join(map(str, s))}" for op, s in CASES]
AFFINE = ["weight+bias", "weight", "none"]


def make(op, shape, affine, rng, dtype=np.float64):
    x = rng.standard_normal(shape) * 1.5 + 0.7
    g = rng.standard_normal(shape)
    ps = op.param_shape(shape)
    w = rng.uniform(0.5, 1.5, ps) if affine != "none" else None
    b = rng.standard_normal(ps) if affine == "weight+bias" and op.bias_ok else None
    cast = (lambda a: None if a is None else a.astype(dtype))
    return cast(x), cast(g), cast(w), cast(b)


def numeric_grad(f, a, h=1e-6):
    """Central finite differences of the scalar ``f()`` with respect to ``a`` (in place)."""
    grad = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        old = a[i]
        a[i] = old + h
        fp = f()
        a[i] = old - h
        fm = f()
        a[i] = old
        grad[i] = (fp - fm) / (2 * h)
    return grad


# --------------------------------------------------------------------------------------------
# finite differences (float64)


@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize(("op", "shape"), CASES, ids=CASE_IDS)
def test_backward_matches_finite_differences(op, shape, affine, rng):
    x, g, w, b = make(op, shape, affine, rng)

    def loss():
        return float(np.sum(op.forward(x, w, b) * g))

    dx, dw, db = op.backward(g, x, w, b)
    assert dx.shape == x.shape and dx.dtype == np.float64
    np.testing.assert_allclose(dx, numeric_grad(loss, x), rtol=1e-6, atol=1e-7)
    if w is None:
        assert dw is None
    else:
        assert dw.shape == w.shape and dw.dtype == w.dtype
        np.testing.assert_allclose(dw, numeric_grad(loss, w), rtol=1e-6, atol=1e-7)
    if b is None:
        assert db is None
    else:
        assert db.shape == b.shape and db.dtype == b.dtype
        np.testing.assert_allclose(db, numeric_grad(loss, b), rtol=1e-6, atol=1e-7)


def test_bias_without_weight(rng):
    """``has_bias`` defaults to ``weight is not None``; asked for explicitly it works with
    ``weight=None`` and gives a float64 ``grad_bias``."""
    x = rng.standard_normal((4, 3, 5))
    g = rng.standard_normal(x.shape)
    b = rng.standard_normal(3).astype(np.float32)
    _, m, s = NF.batch_norm_forward(x, None, None, None, b, True, 0.1, EPS)
    dx, dw, db = NF.batch_norm_backward(g, x, None, m, s, True, has_bias=True)
    dx_ref, _, db_default = NF.batch_norm_backward(g, x, None, m, s, True)
    assert dw is None and db_default is None and db.dtype == np.float64
    np.testing.assert_array_equal(dx, dx_ref)
    np.testing.assert_allclose(db, g.sum(axis=(0, 2)), rtol=1e-12)
    _, _, s_eval = NF.batch_norm_forward(x, np.zeros(3), np.ones(3), None, b, False, 0.1, EPS)
    dx_eval, _, _ = NF.batch_norm_backward(g, x, None, np.zeros(3), s_eval, False)
    np.testing.assert_allclose(dx_eval, g / np.sqrt(1 + EPS), rtol=1e-13)


# --------------------------------------------------------------------------------------------
# layouts and dtypes


@pytest.mark.parametrize("layout", ["channels_last", "sliced"])
@pytest.mark.parametrize(("op", "shape"), CASES, ids=CASE_IDS)
def test_backward_layouts_match_contiguous(op, shape, layout, rng):
    x, g, w, b = make(op, shape, "weight+bias", rng)
    expected = op.backward(g, x, w, b)
    xl, gl = conftest.to_layout(x, layout), conftest.to_layout(g, layout)
    got = op.backward(gl, xl, w, b)
    for e, a in zip(expected, got):
        if e is None:
            assert a is None
        else:
            np.testing.assert_allclose(a, e, rtol=1e-11, atol=1e-12)


def test_backward_mixed_layouts(rng):
    """grad_output in another layout than the input (channels-last x, contiguous dy)."""
    op = OPS[0]
    x, g, w, b = make(op, (2, 3, 4, 5), "weight+bias", rng)
    expected = op.backward(g, x, w, b)
    got = op.backward(g, conftest.to_layout(x, "channels_last"), w, b)
    got2 = op.backward(conftest.to_layout(g, "channels_last"), x, w, b)
    for e, a, a2 in zip(expected, got, got2):
        np.testing.assert_allclose(a, e, rtol=1e-11, atol=1e-12)
        np.testing.assert_allclose(a2, e, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize(("op", "shape"), CASES, ids=CASE_IDS)
def test_backward_low_precision(op, shape, layout, dtype, rng):
    """float32/float16 data (float32 parameters) against float64 on the same rounded values."""
    x, g, w, b = make(op, shape, "weight+bias", rng, dtype)
    w = None if w is None else w.astype(np.float32)
    b = None if b is None else b.astype(np.float32)
    up = (lambda a: None if a is None else a.astype(np.float64))
    expected = op.backward(up(g), up(x), up(w), up(b))
    got = op.backward(conftest.to_layout(g, layout), conftest.to_layout(x, layout), w, b)
    assert got[0].dtype == dtype and got[0].shape == x.shape
    if w is not None:
        assert got[1].dtype == np.float32
    rtol, atol = (1e-4, 1e-4) if dtype == np.float32 else (2e-2, 2e-2)
    for e, a in zip(expected, got):
        if e is None:
            assert a is None
        else:
            scale = max(1.0, float(np.abs(e).max()))
            np.testing.assert_allclose(np.asarray(a, np.float64), e, rtol=rtol,
                                       atol=atol * scale)


def _backward_same_for_threads(op, g, x, w, b, restore_threads):
    """op.backward at 1, 2, 3 and 4 threads, asserted bitwise equal; the 1-thread grads."""
    results = []
    for threads in (1, 2, 3, 4):
        restore_threads(threads)
        results.append(op.backward(g, x, w, b))
    for other in results[1:]:
        for a, c in zip(results[0], other):
            if a is None:
                assert c is None
            else:
                np.testing.assert_array_equal(a, c)
    return results[0]


@pytest.mark.parametrize("op", OPS, ids=lambda o: o.id)
@pytest.mark.parametrize("shape", [(64, 6, 33, 17), (3000, 6, 1, 16)], ids=["big", "many-rows"])
def test_backward_threads_bitwise(op, shape, rng, restore_threads):
    """The backward reductions have a fixed order: results do not depend on the threads
    (many rows: the row ops' column sums come from several row chunks)."""
    x = rng.standard_normal(shape).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    pshape = op.param_shape(shape)
    w = rng.uniform(0.5, 1.5, pshape).astype(np.float32)
    b = rng.standard_normal(pshape).astype(np.float32) if op.bias_ok else None
    _backward_same_for_threads(op, g, x, w, b, restore_threads)


@pytest.mark.parametrize("op", [o for o in OPS if o.id in ("instance", "group")],
                         ids=lambda o: o.id)
def test_backward_channels_last_samples_threads(op, rng, restore_threads):
    """Channels-last samples of several chunks (> 112K elements each), 4 of them: at 2 and 4
    threads each thread takes whole samples, at 3 rounds of chunks -- the same bits, and
    float64's values."""
    shape = (4, 18, 90, 80)
    x = (rng.standard_normal(shape) * 1.5 + 0.7).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    w = rng.uniform(0.5, 1.5, shape[1]).astype(np.float32)
    b = rng.standard_normal(shape[1]).astype(np.float32)
    xl, gl = conftest.to_layout(x, "channels_last"), conftest.to_layout(g, "channels_last")
    got = _backward_same_for_threads(op, gl, xl, w, b, restore_threads)
    up = (lambda a: a.astype(np.float64))
    expected = op.backward(up(g), up(x), up(w), up(b))
    for e, a in zip(expected, got):
        scale = max(1.0, float(np.abs(e).max()))
        np.testing.assert_allclose(np.asarray(a, np.float64), e, rtol=1e-4, atol=1e-4 * scale)


# --------------------------------------------------------------------------------------------
# PyTorch autograd


def _torch_forward(torch, op, xt, wt, bt):
    tf = torch.nn.functional
    n = op.name
    if n == "batch_train":
        return tf.batch_norm(xt, None, None, wt, bt, True, 0.1, EPS)
    if n == "batch_eval":
        c = xt.shape[1]
        return tf.batch_norm(xt, torch.from_numpy(RM[:c].copy()), torch.from_numpy(RV[:c].copy()),
                             wt, bt, False, 0.1, EPS)
    if n == "instance":
        return tf.instance_norm(xt, None, None, wt, bt, True, 0.1, EPS)
    if n == "group":
        return tf.group_norm(xt, 3, wt, bt, EPS)
    ns = tuple(xt.shape[xt.ndim - op.k:])
    if n == "layer":
        return tf.layer_norm(xt, ns, wt, bt, EPS)
    return tf.rms_norm(xt, ns, wt, EPS)


@pytest.mark.parametrize("affine", ["weight+bias", "none"])
@pytest.mark.parametrize(("op", "shape"), CASES, ids=CASE_IDS)
def test_backward_matches_torch_autograd(op, shape, affine, rng):
    torch = pytest.importorskip("torch")
    x, g, w, b = make(op, shape, affine, rng)
    leaf = (lambda a: None if a is None else torch.tensor(a, requires_grad=True))
    xt, wt, bt = leaf(x), leaf(w), leaf(b)
    yt = _torch_forward(torch, op, xt, wt, bt)
    (yt * torch.from_numpy(g)).sum().backward()
    dx, dw, db = op.backward(g, x, w, b)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-11)
    if w is not None:
        np.testing.assert_allclose(dw, wt.grad.numpy(), rtol=1e-9, atol=1e-11)
    if b is not None:
        np.testing.assert_allclose(db, bt.grad.numpy(), rtol=1e-9, atol=1e-11)


# --------------------------------------------------------------------------------------------
# SyncBatchNorm building blocks


def _bn_axes(x):
    return (0,) + tuple(range(2, x.ndim))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(5, 3), (4, 7, 9), (2, 3, 5, 6)])
def test_batch_norm_stats(shape, dtype, layout, rng):
    x = (rng.standard_normal(shape) * 3.0 + 2000.0).astype(dtype)
    count, mean, m2 = NF.batch_norm_stats(conftest.to_layout(x, layout))
    x64 = x.astype(np.float64)
    axes = _bn_axes(x)
    n = x.size // x.shape[1]
    for a in (count, mean, m2):
        assert a.dtype == np.float64 and a.shape == (x.shape[1],)
    np.testing.assert_array_equal(count, np.full(x.shape[1], n))
    np.testing.assert_allclose(mean, x64.mean(axis=axes), rtol=1e-14)
    m2_ref = ((x64 - x64.mean(axis=axes, keepdims=True)) ** 2).sum(axis=axes)
    # float32 blocks are reduced in float32 SIMD lanes (two-pass), merged in float64
    np.testing.assert_allclose(m2, m2_ref, rtol=1e-6 if dtype == np.float32 else 1e-11)


def test_batch_norm_stats_constant_is_exact():
    x = np.full((4, 3, 5), 1234.5678, np.float32)
    _, mean, m2 = NF.batch_norm_stats(x)
    np.testing.assert_array_equal(mean, np.float64(np.float32(1234.5678)))
    np.testing.assert_array_equal(m2, 0.0)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_reduce_and_elemt(dtype, layout, rng):
    """Split over two "ranks": reduce locally, sum, elemt with the global count = the
    single-batch backward."""
    x = rng.standard_normal((7, 4, 3, 2)).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    w = rng.uniform(0.5, 1.5, 4)
    b = rng.standard_normal(4)
    _, mean, invstd = NF.batch_norm_forward(x, None, None, w, b, True, 0.1, EPS)
    dx_ref, dw_ref, db_ref = NF.batch_norm_backward(g, x, w, mean, invstd, True)
    parts = [(x[:3], g[:3]), (x[3:], g[3:])]
    sums = [NF.batch_norm_backward_reduce(conftest.to_layout(gp, layout),
                                          conftest.to_layout(xp, layout), mean, invstd)
            for xp, gp in parts]
    sum_dy = sums[0][0] + sums[1][0]
    sum_dy_xhat = sums[0][1] + sums[1][1]
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(sum_dy, db_ref, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(sum_dy_xhat, dw_ref, rtol=rtol, atol=rtol)
    count = x.size // x.shape[1]
    dx = np.concatenate([
        NF.batch_norm_backward_elemt(conftest.to_layout(gp, layout),
                                     conftest.to_layout(xp, layout), w, mean, invstd, sum_dy,
                                     sum_dy_xhat, count)
        for xp, gp in parts])
    assert dx.dtype == dtype
    np.testing.assert_allclose(dx, dx_ref, rtol=rtol * 10, atol=rtol * 10)


# --------------------------------------------------------------------------------------------
# Module.backward


def randomize(module, rng):
    for name, value in module.named_parameters():
        value[...] = rng.uniform(0.5, 1.5, value.shape) if name == "weight" else (
            rng.standard_normal(value.shape))
    if getattr(module, "running_mean", None) is not None:
        module.running_mean[...] = rng.standard_normal(module.running_mean.shape)
        module.running_var[...] = rng.uniform(0.5, 2.0, module.running_var.shape)


def _torch_module(torch, m):
    """The torch.nn equivalent of normcpp module ``m`` with the same state, float64."""
    name = type(m).__name__
    tnn = torch.nn
    if name.startswith(("BatchNorm", "InstanceNorm")):
        t = getattr(tnn, name)(m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine,
                               track_running_stats=m.track_running_stats)
    elif name == "GroupNorm":
        t = tnn.GroupNorm(m.num_groups, m.num_channels, eps=m.eps, affine=m.affine)
    elif name == "LayerNorm":
        t = tnn.LayerNorm(m.normalized_shape, eps=m.eps,
                          elementwise_affine=m.elementwise_affine, bias=m.bias is not None)
    else:
        t = tnn.RMSNorm(m.normalized_shape, eps=m.eps,
                        elementwise_affine=m.elementwise_affine)
    if getattr(m, "affine", False) and m.bias is None:  # torch's BatchNorm has no bias=False
        t.register_parameter("bias", None)
    t = t.double()
    t.load_state_dict({k: torch.from_numpy(np.asarray(v, np.float64) if v.dtype.kind == "f"
                                           else v) for k, v in m.state_dict().items()})
    t.train(m.training)
    return t


MODULES = [
    (lambda: nc.BatchNorm1d(3, dtype=np.float64), (6, 3)),
    (lambda: nc.BatchNorm1d(3, momentum=None, dtype=np.float64), (4, 3, 5)),
    (lambda: nc.BatchNorm2d(3, dtype=np.float64), (2, 3, 4, 5)),
    (lambda: nc.BatchNorm2d(3, affine=False, dtype=np.float64), (2, 3, 4, 5)),
    (lambda: nc.BatchNorm2d(3, track_running_stats=False, dtype=np.float64), (2, 3, 4, 5)),
    (lambda: nc.BatchNorm3d(2, bias=False, dtype=np.float64), (2, 2, 3, 2, 3)),
    (lambda: nc.InstanceNorm1d(3, affine=True, dtype=np.float64), (2, 3, 7)),
    (lambda: nc.InstanceNorm1d(3, affine=True, dtype=np.float64), (3, 7)),
    (lambda: nc.InstanceNorm2d(3, affine=True, track_running_stats=True, dtype=np.float64),
     (2, 3, 4, 5)),
    (lambda: nc.InstanceNorm2d(3, affine=True, track_running_stats=True, dtype=np.float64),
     (3, 4, 5)),
    (lambda: nc.InstanceNorm3d(2, dtype=np.float64), (2, 2, 2, 3, 2)),
    (lambda: nc.GroupNorm(2, 4, dtype=np.float64), (3, 4, 5)),
    (lambda: nc.GroupNorm(3, 3, affine=False, dtype=np.float64), (2, 3, 2, 2)),
    (lambda: nc.LayerNorm((4, 5), dtype=np.float64), (3, 4, 5)),
    (lambda: nc.LayerNorm(6, bias=False, dtype=np.float64), (2, 3, 6)),
    (lambda: nc.LayerNorm(6, elementwise_affine=False, dtype=np.float64), (5, 6)),
    (lambda: nc.RMSNorm(6, eps=1e-6, dtype=np.float64), (2, 3, 6)),
    (lambda: nc.RMSNorm((2, 3), elementwise_affine=False, dtype=np.float64), (4, 2, 3)),
]
MODULE_IDS = [f"{type(f()).__name__}-{i}" for i, (f, _) in enumerate(MODULES)]


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize(("factory", "shape"), MODULES, ids=MODULE_IDS)
def test_module_backward_matches_torch(factory, shape, mode, rng):
    torch = pytest.importorskip("torch")
    m = factory()
    randomize(m, rng)
    m.train(mode == "train")
    t = _torch_module(torch, m)
    x = rng.standard_normal(shape) * 2.0 + 0.5
    g = rng.standard_normal(shape)
    y = m(x)
    xt = torch.tensor(x, requires_grad=True)
    yt = t(xt)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-9, atol=1e-10)
    (yt * torch.from_numpy(g)).sum().backward()
    dx = m.backward(g)
    assert dx.shape == x.shape and dx.dtype == x.dtype
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-8, atol=1e-10)
    tw = getattr(t, "weight", None)
    tb = getattr(t, "bias", None)
    if m.weight is None:
        assert m.grad_weight is None
    else:
        assert m.grad_weight.shape == m.weight.shape and m.grad_weight.dtype == m.weight.dtype
        np.testing.assert_allclose(m.grad_weight, tw.grad.numpy(), rtol=1e-8, atol=1e-10)
    if getattr(m, "bias", None) is None:
        assert m.grad_bias is None
    else:
        np.testing.assert_allclose(m.grad_bias, tb.grad.numpy(), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize(("factory", "shape"), MODULES, ids=MODULE_IDS)
def test_module_backward_matches_finite_differences(factory, shape, mode, rng):
    """The module's backward is the derivative of the module's forward (state restored
    between the evaluations, so the running statistics do not drift)."""
    m = factory()
    randomize(m, rng)
    m.train(mode == "train")
    x = rng.standard_normal(shape) * 2.0 + 0.5
    g = rng.standard_normal(shape)
    buffers = {name: value.copy() for name, value in m.named_buffers()}
    m(x)
    dx = m.backward(g)
    grads = {"weight": m.grad_weight, "bias": m.grad_bias}

    def loss():
        for name, value in m.named_buffers():
            np.copyto(value, buffers[name])
        return float(np.sum(m(x) * g))

    np.testing.assert_allclose(dx, numeric_grad(loss, x), rtol=1e-6, atol=1e-7)
    for name, value in m.named_parameters():
        np.testing.assert_allclose(grads[name], numeric_grad(loss, value), rtol=1e-6,
                                   atol=1e-7)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_module_backward_float32_channels_last(dtype, layout, rng):
    m = nc.BatchNorm2d(5)
    randomize(m, rng)
    x64 = rng.standard_normal((4, 5, 3, 6))
    g64 = rng.standard_normal(x64.shape)
    x = conftest.to_layout(x64.astype(dtype), layout)
    g = conftest.to_layout(g64.astype(dtype), layout)
    ref = nc.BatchNorm2d(5, dtype=np.float64)
    ref.load_state_dict(m.state_dict())
    m(x)
    ref(x.astype(np.float64))
    dx = m.backward(g)
    dx_ref = ref.backward(g.astype(np.float64))
    assert dx.dtype == dtype and m.grad_weight.dtype == np.float32
    tol = 1e-4 if dtype == np.float32 else 2e-2
    np.testing.assert_allclose(dx.astype(np.float64), dx_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(m.grad_weight, ref.grad_weight, rtol=tol, atol=tol * 10)
    np.testing.assert_allclose(m.grad_bias, ref.grad_bias, rtol=tol, atol=tol * 10)


def test_eval_backward_is_frozen_affine_map(rng):
    m = nc.BatchNorm2d(3, dtype=np.float64)
    randomize(m, rng)
    x = rng.standard_normal((2, 3, 4, 4))
    g = rng.standard_normal(x.shape)
    m.eval()(x)
    dx = m.backward(g)
    invstd = 1.0 / np.sqrt(m.running_var + m.eps)
    b = (1, 3, 1, 1)
    np.testing.assert_allclose(dx, g * (m.weight * invstd).reshape(b), rtol=1e-13)
    xhat = (x - m.running_mean.reshape(b)) * invstd.reshape(b)
    np.testing.assert_allclose(m.grad_weight, (g * xhat).sum(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(m.grad_bias, g.sum(axis=(0, 2, 3)), rtol=1e-12)


@pytest.mark.parametrize("training", [True, False])
def test_frozen_backward_is_frozen_affine_map(training, rng):
    m = nc.BatchNorm1d(3, dtype=np.float64)
    randomize(m, rng)
    ref = nc.BatchNorm1d(3, dtype=np.float64)
    ref.load_state_dict(m.state_dict())
    ref.eval()
    m.freeze().train(training)
    x = rng.standard_normal((5, 3, 4))
    g = rng.standard_normal(x.shape)
    np.testing.assert_array_equal(m(x), ref(x))
    np.testing.assert_array_equal(m.backward(g), ref.backward(g))
    np.testing.assert_array_equal(m.grad_weight, ref.grad_weight)
    np.testing.assert_array_equal(m.grad_bias, ref.grad_bias)


def test_backward_uses_mode_of_the_forward(rng):
    """Switching train/eval between forward and backward does not change the backward."""
    m = nc.BatchNorm1d(3, dtype=np.float64)
    x = rng.standard_normal((6, 3))
    g = rng.standard_normal(x.shape)
    m.train()(x)
    dx_train = m.backward(g)
    m.eval()
    np.testing.assert_array_equal(m.backward(g), dx_train)
    np.testing.assert_allclose(dx_train.sum(axis=0), 0.0, atol=1e-12)  # through the stats


def test_backward_repeatable_and_grads_replaced(rng):
    m = nc.LayerNorm(4, dtype=np.float64)
    x = rng.standard_normal((3, 4))
    g = rng.standard_normal(x.shape)
    m(x)
    dx1 = m.backward(g)
    gw1 = m.grad_weight.copy()
    dx2 = m.backward(2 * g)
    np.testing.assert_allclose(dx2, 2 * dx1, rtol=1e-13)
    np.testing.assert_allclose(m.grad_weight, 2 * gw1, rtol=1e-13)  # set, not accumulated


def test_backward_saves_references_not_copies(rng):
    m = nc.GroupNorm(2, 4, dtype=np.float64)
    x = rng.standard_normal((2, 4, 3))
    m(x)
    assert m._saved_state().input is x
    assert m._saved_state().weight is m.weight


PACKED_CASES = [
    ("batch_norm", (4, 3, 5), lambda x: (None, None, None, None, True, 0.1, EPS, None, "raise",
                                         None)),
    ("batch_norm", (4, 3, 5), lambda x: (np.zeros(3), np.ones(3), np.ones(3), None, False, 0.1,
                                         EPS, None, "raise", None)),
    ("instance_norm", (2, 3, 5), lambda x: (None, None, None, None, True, 0.1, EPS, None,
                                            "raise")),
    ("instance_norm", (2, 3, 5), lambda x: (np.zeros(3), np.full(3, 2.0), None, None, False, 0.1,
                                            EPS, None, "raise")),
    ("group_norm", (2, 4, 5), lambda x: (2, None, None, EPS, None, None)),
    ("layer_norm", (2, 3, 5), lambda x: ((3, 5), None, None, EPS, None, None)),
    ("layer_norm", (5,), lambda x: (5, None, None, EPS, None, None)),  # 0-d statistics
    ("rms_norm", (2, 3, 5), lambda x: (5, None, None, None)),
]


@pytest.mark.parametrize(("name", "shape", "args"), PACKED_CASES,
                         ids=[f"{c[0]}-{len(c[1])}d-{i}" for i, c in enumerate(PACKED_CASES)])
def test_packed_statistics_are_the_forward_statistics(name, shape, args, rng):
    """The modules' ``_core._*_forward_packed`` returns exactly ``*_forward``'s output and
    statistics, stacked as rows (mean, invstd) or (invrms,)."""
    core = nc._core
    x = rng.standard_normal(shape)
    y, *stats = getattr(core, f"{name}_forward")(x, *args(x))
    yp, packed = getattr(core, f"_{name}_forward_packed")(x, *args(x))
    np.testing.assert_array_equal(yp, y)
    assert packed.dtype == np.float64 and packed.flags.c_contiguous
    assert packed.shape == (len(stats),) + stats[0].shape
    for row, expected in zip(packed, stats):
        np.testing.assert_array_equal(row, expected)
    assert np.all(packed[-1] > 0)  # the last row is the invstd (or invrms)


def test_module_backward_reads_packed_statistics(rng):
    """A module's saved state unpacks to the functional forward's (mean, invstd)."""
    x = rng.standard_normal((3, 4, 5))
    for m, fwd in [
        (nc.BatchNorm1d(4, dtype=np.float64), lambda: NF.batch_norm_forward(
            x, None, None, np.ones(4), np.zeros(4), True)),
        (nc.LayerNorm(5, dtype=np.float64), lambda: NF.layer_norm_forward(
            x, 5, np.ones(5), np.zeros(5))),
        (nc.RMSNorm(5, dtype=np.float64), lambda: NF.rms_norm_forward(x, 5, np.ones(5))),
    ]:
        m(x)
        saved = m._saved_state()
        _, *stats = fwd()
        if len(stats) == 1:
            assert saved.mean is None
        else:
            np.testing.assert_array_equal(saved.mean, stats[0])
        np.testing.assert_array_equal(saved.invstd, stats[-1])


# --------------------------------------------------------------------------------------------
# errors


ALL_FACTORIES = [f for f, _ in MODULES]


@pytest.mark.parametrize("factory", ALL_FACTORIES, ids=MODULE_IDS)
def test_backward_before_forward_raises(factory):
    m = factory()
    with pytest.raises(RuntimeError, match="before forward"):
        m.backward(np.zeros((2, 3)))


@pytest.mark.parametrize(("factory", "shape"), MODULES, ids=MODULE_IDS)
def test_backward_bad_grad_raises(factory, shape, rng):
    m = factory()
    x = rng.standard_normal(shape)
    m(x)
    with pytest.raises(ValueError, match="grad_output must have the forward input's shape"):
        m.backward(np.zeros(shape[:-1] + (shape[-1] + 1,)))
    with pytest.raises(ValueError, match="shape"):
        m.backward(np.zeros((1,) + shape))
    with pytest.raises(TypeError, match="dtype"):
        m.backward(np.zeros(shape, np.float32))
    with pytest.raises(TypeError, match="numpy.ndarray"):
        m.backward(np.zeros(shape).tolist())
    assert m.grad_weight is None and m.grad_bias is None  # nothing set by failed calls
    m.backward(np.zeros(shape))  # still usable


def test_backward_after_inplace_forward_raises(rng):
    m = nc.BatchNorm1d(3, dtype=np.float64)
    x = rng.standard_normal((4, 3))
    m(x, out=x)
    with pytest.raises(RuntimeError, match="out=input"):
        m.backward(np.ones_like(x))
    m(x)  # a later forward without out can be differentiated
    m.backward(np.ones_like(x))


def test_failed_forward_keeps_previous_saved_state(rng):
    m = nc.BatchNorm1d(3, dtype=np.float64)
    x = rng.standard_normal((4, 3))
    m(x)
    with pytest.raises(ValueError):
        m(rng.standard_normal((4, 5)))
    assert m.backward(np.ones_like(x)).shape == x.shape


@pytest.mark.parametrize(("factory", "shape"), MODULES, ids=MODULE_IDS)
def test_backward_after_forward_with_separate_out(factory, shape, rng):
    a, b = factory(), factory()
    x = rng.standard_normal(shape)
    g = rng.standard_normal(shape)
    out = np.empty_like(x)
    assert a(x, out=out) is out
    np.testing.assert_array_equal(out, b(x))
    np.testing.assert_array_equal(a.backward(g), b.backward(g))


# Tensors of 10-17 MB (above every machine's cutoff for the row planner's from-memory order:
# sums row by row, then column sums and dx in one sweep that prefetches the next tile). L =
# 256 float32: every row's output starts on a cache line (the sweep streams rows four at a
# time); 250: rows start anywhere (swept one at a time, each streamed from its first line,
# with partial vectors before it and after the last whole one); 100: rows too short to stream
# (swept four at a time with plain stores, a partial vector at the end); 16385 rows: a last
# tile of one row; float16 and float64 never stream; without weight, or without a bias
# gradient, the sweep's other forms.
def _closed_form_backward(x64, g64, w64, axis, centered):
    """float64 dx of a norm over ``axis`` (mean subtracted when ``centered``: LayerNorm,
    GroupNorm; not: RMSNorm) with per-element weight ``w64``, and the normalized input."""
    mu = x64.mean(axis=axis, keepdims=True) if centered else 0.0
    inv = 1.0 / np.sqrt(((x64 - mu) ** 2).mean(axis=axis, keepdims=True) + EPS)
    xhat = (x64 - mu) * inv
    gh = g64 * w64
    proj = (gh * xhat).mean(axis=axis, keepdims=True)
    return inv * (gh - proj * xhat - (gh.mean(axis=axis, keepdims=True) if centered else 0.0)), xhat


ROW_BIG = [
    ((16800, 250), np.float32, True, True),
    ((16800, 250), np.float32, False, True),
    ((16800, 250), np.float32, True, False),
    ((40009, 100), np.float32, True, True),
    ((16385, 256), np.float32, True, True),
    ((16391, 256), np.float32, False, True),
    ((16391, 256), np.float32, True, False),
    ((20003, 250), np.float16, True, True),
    ((5003, 264), np.float64, True, True),
    # rows of up to four vectors: whole vectors a row, the last rows through a padded copy
    ((40009, 10), np.float32, True, True),
    ((20011, 20), np.float32, True, True),
    ((15013, 32), np.float32, False, True),
    ((12007, 40), np.float32, True, False),
    ((10009, 50), np.float32, True, True),
    ((8009, 64), np.float32, True, True),
    ((9001, 40), np.float16, True, True),
    ((9001, 20), np.float64, True, True),
    ((30011, 13), np.float32, False, True),
    ((20011, 5), np.float32, True, False),
    ((10007, 7), np.float16, True, True),
    ((10007, 3), np.float64, True, True),
    ((9, 3), np.float32, True, True),
]


@pytest.mark.parametrize("shape,dtype,has_w,has_b", ROW_BIG,
                         ids=[f"{r}x{L}-{np.dtype(d).name}-w{int(w)}b{int(b)}"
                              for (r, L), d, w, b in ROW_BIG])
@pytest.mark.parametrize("rms", [False, True], ids=["layer_norm", "rms_norm"])
def test_row_backward_of_a_tensor_beyond_the_caches(rms, shape, dtype, has_w, has_b, rng,
                                                    restore_threads):
    """LayerNorm/RMSNorm backward of tensors read from memory against the float64 closed form
    written here, and bitwise the same at 1 and 2 threads."""
    rows, L = shape
    x = (rng.standard_normal((rows, L)) * 2 + 0.5).astype(dtype)
    g = rng.standard_normal((rows, L)).astype(dtype)
    pdt = np.float64 if dtype == np.float64 else np.float32
    w = rng.uniform(0.5, 1.5, L).astype(pdt) if has_w else None

    def run():
        if rms:
            _, s = NF.rms_norm_forward(x, (L,), w, EPS)
            return s, None, NF.rms_norm_backward(g, x, (L,), w, s)
        _, m, s = NF.layer_norm_forward(x, (L,), w, np.zeros(L, pdt), EPS)
        return s, m, NF.layer_norm_backward(g, x, (L,), w, m, s, has_bias=has_b)

    restore_threads(2)
    s, m, grads = run()
    restore_threads(1)
    for a, b in zip(grads, run()[2]):
        if a is None:
            assert b is None
        else:
            np.testing.assert_array_equal(a, b)
    dx, dw = grads[0], grads[1]
    db = None if rms else grads[2]
    assert (dw is None) == (not has_w)
    assert (db is None) == (rms or not has_b)
    x64, g64 = x.astype(np.float64), g.astype(np.float64)
    w64 = w.astype(np.float64) if has_w else np.ones(L)
    dx_ref, xhat = _closed_form_backward(x64, g64, w64, axis=1, centered=not rms)
    tol = 4e-3 if dtype == np.float16 else 1e-4
    np.testing.assert_allclose(dx.astype(np.float64), dx_ref, rtol=tol,
                               atol=tol * np.abs(dx_ref).max())
    if has_w:
        dw_ref = (g64 * xhat).sum(axis=0)
        np.testing.assert_allclose(dw, dw_ref, rtol=1e-4, atol=1e-4 * np.abs(dw_ref).max())
    if db is not None:
        db_ref = g64.sum(axis=0)
        np.testing.assert_allclose(db, db_ref, rtol=1e-4, atol=1e-4 * np.abs(db_ref).max())


# Many small NCHW groups: the kernel's slot loop takes them in blocks of slots, and a block
# may start in the middle of a sample (its first channel then is not 0).
GROUP_MANY = [((16, 64, 7, 7), 32), ((8, 30, 10, 10), 5), ((40, 50, 4, 4), 50),
              ((3, 6, 1, 1), 2)]


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
@pytest.mark.parametrize("has_w", [True, False], ids=["weight", "no-weight"])
@pytest.mark.parametrize("shape,groups", GROUP_MANY,
                         ids=[f"{'x'.join(map(str, s))}-g{G}" for s, G in GROUP_MANY])
def test_group_backward_of_many_small_groups(shape, groups, has_w, dtype, rng, restore_threads):
    """GroupNorm (InstanceNorm where groups == C) backward against the float64 closed form
    written here, and bitwise the same at 1 and 2 threads."""
    N, C = shape[:2]
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    pdt = np.float64 if dtype == np.float64 else np.float32
    w = rng.uniform(0.5, 1.5, C).astype(pdt) if has_w else None

    def run():
        _, m, s = NF.group_norm_forward(x, groups, w, np.zeros(C, pdt), EPS)
        return NF.group_norm_backward(g, x, groups, w, m, s, has_bias=True)

    restore_threads(2)
    grads = run()
    restore_threads(1)
    for a, b in zip(grads, run()):
        if a is None:
            assert b is None
        else:
            np.testing.assert_array_equal(a, b)
    dx, dw, db = grads
    gshape = (N, groups, -1)
    x64 = x.astype(np.float64).reshape(gshape)
    wfull = (w.astype(np.float64) if has_w else np.ones(C))
    w64 = np.broadcast_to(wfull[None, :, None], (N, C, int(np.prod(shape[2:])))).reshape(gshape)
    g64 = g.astype(np.float64).reshape(gshape)
    dx_ref, xhat = _closed_form_backward(x64, g64, w64, axis=2, centered=True)
    tol = 4e-3 if dtype == np.float16 else 1e-4
    np.testing.assert_allclose(dx.astype(np.float64).reshape(gshape), dx_ref, rtol=tol,
                               atol=tol * np.abs(dx_ref).max())
    axes = (0, 2)
    dw_ref = (g64 * xhat).reshape(N, C, -1).sum(axis=axes)
    db_ref = g64.reshape(N, C, -1).sum(axis=axes)
    if has_w:
        np.testing.assert_allclose(dw, dw_ref, rtol=1e-4, atol=1e-4 * np.abs(dw_ref).max())
    np.testing.assert_allclose(db, db_ref, rtol=1e-4, atol=1e-4 * np.abs(db_ref).max())
