"""``fold_batchnorm``: the folded layer equals the layer followed by the eval-mode BatchNorm.

References: direct NumPy convolutions (NCHW, with groups, stride, padding) written here,
checked against PyTorch's when it is importable, and PyTorch's ``F.conv2d`` /
``F.conv_transpose2d`` / ``F.linear`` themselves.
"""

from __future__ import annotations

import types

import normcpp as nc
import numpy as np
import pytest
from normcpp.fold import fold_batchnorm

# --------------------------------------------------------------------------------------------
# NumPy references (float64)


def conv2d_ref(x, w, b=None, *, stride=1, padding=0, groups=1):
    """Direct NCHW cross-correlation: x (N, Cin, H, W), w (Cout, Cin/groups, kh, kw)."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    n, cin, _, _ = x.shape
    cout, cin_g, kh, kw = w.shape
    assert cin == cin_g * groups and cout % groups == 0
    cout_g = cout // groups
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ho = (xp.shape[2] - kh) // stride + 1
    wo = (xp.shape[3] - kw) // stride + 1
    out = np.zeros((n, cout, ho, wo))
    for g in range(groups):
        xg = xp[:, g * cin_g:(g + 1) * cin_g]
        wg = w[g * cout_g:(g + 1) * cout_g]
        for i in range(kh):
            for j in range(kw):
                patch = xg[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride]
                out[:, g * cout_g:(g + 1) * cout_g] += np.einsum("nchw,oc->nohw", patch,
                                                                  wg[:, :, i, j])
    if b is not None:
        out += np.asarray(b, np.float64)[None, :, None, None]
    return out


def conv_transpose2d_ref(x, w, b=None, *, stride=1, padding=0, groups=1):
    """Direct NCHW transposed convolution: x (N, Cin, H, W), w (Cin, Cout/groups, kh, kw);
    each input pixel scatters ``x * w`` into the output."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    n, cin, h, wd = x.shape
    cin_w, cout_g, kh, kw = w.shape
    assert cin == cin_w and cin % groups == 0
    cin_g = cin // groups
    cout = cout_g * groups
    hf, wf = (h - 1) * stride + kh, (wd - 1) * stride + kw
    out = np.zeros((n, cout, hf, wf))
    for g in range(groups):
        xg = x[:, g * cin_g:(g + 1) * cin_g]
        wg = w[g * cin_g:(g + 1) * cin_g]
        for i in range(kh):
            for j in range(kw):
                out[:, g * cout_g:(g + 1) * cout_g, i:i + stride * h:stride,
                    j:j + stride * wd:stride] += np.einsum("nchw,co->nohw", xg, wg[:, :, i, j])
    out = out[:, :, padding:hf - padding, padding:wf - padding]
    if b is not None:
        out = out + np.asarray(b, np.float64)[None, :, None, None]
    return out


def linear_ref(x, w, b=None):
    out = np.asarray(x, np.float64) @ np.asarray(w, np.float64).T
    return out if b is None else out + np.asarray(b, np.float64)


def bn_eval_ref(y, bn):
    """Eval-mode batch norm in float64 over axis 1 of ``y``, from ``bn``'s numbers."""
    shape = (1, -1) + (1,) * (y.ndim - 2)
    mean = np.asarray(bn.running_mean, np.float64).reshape(shape)
    var = np.asarray(bn.running_var, np.float64).reshape(shape)
    out = (y - mean) / np.sqrt(var + bn.eps)
    if bn.weight is not None:
        out = out * np.asarray(bn.weight, np.float64).reshape(shape)
    if bn.bias is not None:
        out = out + np.asarray(bn.bias, np.float64).reshape(shape)
    return out


def random_bn(cls, channels, rng, *, dtype=np.float32, affine=True, bias=True, eps=1e-5):
    bn = cls(channels, eps=eps, affine=affine, dtype=dtype, bias=bias)
    bn.running_mean[:] = rng.standard_normal(channels) * 2.0
    bn.running_var[:] = rng.uniform(0.2, 3.0, channels)
    if bn.weight is not None:
        bn.weight[:] = rng.standard_normal(channels)
    if bn.bias is not None:
        bn.bias[:] = rng.standard_normal(channels)
    return bn.eval()


def tol(dtype):
    if np.dtype(dtype) == np.float32:
        return {"rtol": 2e-5, "atol": 2e-5}
    return {"rtol": 1e-12, "atol": 1e-12}


# --------------------------------------------------------------------------------------------
# the references themselves


def test_references_match_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 7, 5))
    w = rng.standard_normal((4, 3, 3, 2))
    b = rng.standard_normal(4)
    t = torch.from_numpy
    got = conv2d_ref(x, w, b, stride=2, padding=1, groups=2)
    want = F.conv2d(t(x), t(w), t(b), stride=2, padding=1, groups=2).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    wt = rng.standard_normal((6, 2, 3, 3))
    bt = rng.standard_normal(6)
    got = conv_transpose2d_ref(x, wt, bt, stride=2, padding=1, groups=3)
    want = F.conv_transpose2d(t(x), t(wt), t(bt), stride=2, padding=1, groups=3).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------
# folding vs the NumPy references

CONV_CASES = [
    # (cin, cout, groups)
    (3, 5, 1),
    (4, 6, 2),
    (6, 6, 6),  # depthwise
    (3, 6, 3),  # depthwise with channel multiplier 2
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize(("cin", "cout", "groups"), CONV_CASES)
def test_conv(cin, cout, groups, with_bias, dtype):
    rng = np.random.default_rng(cin * 100 + cout * 10 + groups)
    x = rng.standard_normal((2, cin, 7, 6))
    w = rng.standard_normal((cout, cin // groups, 3, 3)).astype(dtype)
    b = rng.standard_normal(cout).astype(dtype) if with_bias else None
    bn = random_bn(nc.BatchNorm2d, cout, rng, dtype=dtype)
    w_before, b_before = w.copy(), None if b is None else b.copy()
    new_w, new_b = fold_batchnorm(w, b, bn, kind="conv", groups=groups)
    assert new_w.dtype == dtype and new_b.dtype == dtype
    assert new_w.shape == w.shape and new_b.shape == (cout,)
    np.testing.assert_array_equal(w, w_before)  # inputs untouched
    if b is not None:
        np.testing.assert_array_equal(b, b_before)
    folded = conv2d_ref(x, new_w, new_b, padding=1, groups=groups)
    expected = bn_eval_ref(conv2d_ref(x, w, b, padding=1, groups=groups), bn)
    np.testing.assert_allclose(folded, expected, **tol(dtype))
    # the normcpp module itself, on the unfolded layer's output
    y = conv2d_ref(x, w, b, padding=1, groups=groups).astype(dtype)
    np.testing.assert_allclose(folded, bn(y), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize(("cin", "cout_g", "groups"), [(3, 4, 1), (4, 3, 2), (6, 2, 3),
                                                       (4, 1, 4)])
def test_conv_transpose(cin, cout_g, groups, with_bias, dtype):
    rng = np.random.default_rng(cin * 100 + cout_g * 10 + groups)
    cout = cout_g * groups
    x = rng.standard_normal((2, cin, 4, 5))
    w = rng.standard_normal((cin, cout_g, 3, 3)).astype(dtype)
    b = rng.standard_normal(cout).astype(dtype) if with_bias else None
    bn = random_bn(nc.BatchNorm2d, cout, rng, dtype=dtype)
    new_w, new_b = fold_batchnorm(w, b, bn, kind="conv_transpose", groups=groups)
    assert new_w.dtype == dtype and new_w.shape == w.shape and new_b.shape == (cout,)
    kw = {"stride": 2, "padding": 1, "groups": groups}
    folded = conv_transpose2d_ref(x, new_w, new_b, **kw)
    expected = bn_eval_ref(conv_transpose2d_ref(x, w, b, **kw), bn)
    np.testing.assert_allclose(folded, expected, **tol(dtype))


def test_conv_transpose_groups_matter():
    """Scaling axis 1 without regard to groups gives a wrong answer: the test can see it."""
    rng = np.random.default_rng(1)
    cin, cout_g, groups = 4, 2, 2
    w = rng.standard_normal((cin, cout_g, 2, 2))
    bn = random_bn(nc.BatchNorm2d, cout_g * groups, rng, dtype=np.float64)
    new_w, _ = fold_batchnorm(w, None, bn, kind="conv_transpose", groups=groups)
    s = bn.weight / np.sqrt(bn.running_var + bn.eps)
    # output channel o = g * cout_g + j lives at w[g * cin/groups:(g + 1) * cin/groups, j]
    for g in range(groups):
        for j in range(cout_g):
            rows = slice(g * cin // groups, (g + 1) * cin // groups)
            np.testing.assert_allclose(new_w[rows, j], w[rows, j] * s[g * cout_g + j])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear(with_bias, dtype):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((9, 5))
    w = rng.standard_normal((7, 5)).astype(dtype)
    b = rng.standard_normal(7).astype(dtype) if with_bias else None
    bn = random_bn(nc.BatchNorm1d, 7, rng, dtype=dtype)
    new_w, new_b = fold_batchnorm(w, b, bn, kind="linear")
    np.testing.assert_allclose(linear_ref(x, new_w, new_b), bn_eval_ref(linear_ref(x, w, b), bn),
                               **tol(dtype))


@pytest.mark.parametrize(("affine", "bias"), [(False, True), (True, False)])
def test_bn_without_affine_or_bias(affine, bias):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 5, 5))
    w = rng.standard_normal((4, 3, 1, 1))
    bn = random_bn(nc.BatchNorm2d, 4, rng, dtype=np.float64, affine=affine, bias=bias)
    new_w, new_b = fold_batchnorm(w, None, bn)
    np.testing.assert_allclose(conv2d_ref(x, new_w, new_b), bn_eval_ref(conv2d_ref(x, w), bn),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel", [(3,), (2, 2, 2)])
def test_conv1d_and_conv3d_weights(kernel):
    """Any number of kernel dims: every output channel's filter is scaled as a whole."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((4, 2) + kernel)
    b = rng.standard_normal(4)
    bn = random_bn(nc.BatchNorm1d, 4, rng, dtype=np.float64)
    new_w, new_b = fold_batchnorm(w, b, bn, groups=2)
    s = bn.weight / np.sqrt(bn.running_var + bn.eps)
    np.testing.assert_allclose(new_w, w * s.reshape((4,) + (1,) * (w.ndim - 1)), rtol=1e-14)
    np.testing.assert_allclose(new_b, (b - bn.running_mean) * s + bn.bias, rtol=1e-14)


def test_eps_and_float64_computation():
    """float32 weights and stats are combined in float64, then rounded once."""
    rng = np.random.default_rng(6)
    w = rng.standard_normal((3, 2)).astype(np.float32)
    bn = random_bn(nc.BatchNorm1d, 3, rng, eps=0.25)
    new_w, new_b = fold_batchnorm(w, None, bn, kind="linear")
    s = np.float64(bn.weight) / np.sqrt(np.float64(bn.running_var) + 0.25)
    np.testing.assert_array_equal(new_w, (w.astype(np.float64) * s[:, None]).astype(np.float32))
    expected_b = (-np.float64(bn.running_mean) * s + np.float64(bn.bias)).astype(np.float32)
    np.testing.assert_array_equal(new_b, expected_b)


def test_duck_typed_and_frozen_bn():
    rng = np.random.default_rng(7)
    w = rng.standard_normal((3, 4))
    stats = {"running_mean": rng.standard_normal(3), "running_var": rng.uniform(0.5, 2, 3),
             "weight": None, "bias": None, "eps": 1e-3, "track_running_stats": True}
    plain = types.SimpleNamespace(training=False, **stats)
    frozen = types.SimpleNamespace(training=True, frozen=True, **stats)
    a = fold_batchnorm(w, None, plain, kind="linear")
    b = fold_batchnorm(w, None, frozen, kind="linear")
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_allclose(a[1], -stats["running_mean"] / np.sqrt(stats["running_var"] + 1e-3))


def test_frozen_normcpp_bn_in_training_mode():
    """A frozen BatchNorm normalizes with its running statistics even in training mode."""
    if not hasattr(nc.BatchNorm2d, "freeze"):
        pytest.skip("this normcpp has no BatchNorm.freeze")
    rng = np.random.default_rng(8)
    bn = random_bn(nc.BatchNorm2d, 4, rng, dtype=np.float64)
    w = rng.standard_normal((4, 2, 3, 3))
    expected = fold_batchnorm(w, None, bn)
    bn.freeze().train()
    got = fold_batchnorm(w, None, bn)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


# --------------------------------------------------------------------------------------------
# vs PyTorch


@pytest.mark.parametrize(("cin", "cout", "groups"), CONV_CASES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_conv2d_torch(cin, cout, groups, with_bias):
    torch = pytest.importorskip("torch")
    torch.manual_seed(cin + cout + groups)
    conv = torch.nn.Conv2d(cin, cout, 3, padding=1, groups=groups, bias=with_bias)
    bn = torch.nn.BatchNorm2d(cout)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.2, 3.0)
        bn.weight.normal_()
        bn.bias.normal_()
    bn.eval()
    x = torch.randn(2, cin, 8, 7)
    with torch.no_grad():
        expected = bn(conv(x)).numpy()
        # a torch BN module works as bn directly, and so does its normcpp twin
        for bn_like in (bn, nc.BatchNorm2d(cout)):
            if isinstance(bn_like, nc.BatchNorm2d):
                bn_like.load_state_dict(bn.state_dict())
                bn_like.eval()
            new_w, new_b = fold_batchnorm(conv.weight.numpy(),
                                          None if conv.bias is None else conv.bias.numpy(),
                                          bn_like, kind="conv", groups=groups)
            got = torch.nn.functional.conv2d(x, torch.from_numpy(new_w),
                                             torch.from_numpy(new_b), padding=1, groups=groups)
            np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("cin", "cout", "groups"), [(4, 6, 1), (4, 6, 2), (6, 3, 3), (4, 4, 4)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_conv_transpose2d_torch(cin, cout, groups, with_bias):
    torch = pytest.importorskip("torch")
    torch.manual_seed(cin * cout + groups)
    conv = torch.nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, groups=groups,
                                    bias=with_bias).double()
    bn = torch.nn.BatchNorm2d(cout).double()
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.2, 3.0)
        bn.weight.normal_()
        bn.bias.normal_()
    bn.eval()
    x = torch.randn(2, cin, 5, 4, dtype=torch.float64)
    with torch.no_grad():
        expected = bn(conv(x)).numpy()
        new_w, new_b = fold_batchnorm(conv.weight, conv.bias, bn, kind="conv_transpose",
                                      groups=groups)
        got = torch.nn.functional.conv_transpose2d(x, torch.from_numpy(new_w),
                                                   torch.from_numpy(new_b), stride=2,
                                                   padding=1, groups=groups)
    assert new_w.dtype == np.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_torch(with_bias):
    torch = pytest.importorskip("torch")
    torch.manual_seed(11)
    lin = torch.nn.Linear(6, 5, bias=with_bias)
    bn = torch.nn.BatchNorm1d(5)
    bn.train()
    with torch.no_grad():
        for _ in range(3):
            bn(lin(torch.randn(16, 6) * 3 + 1))  # realistic running statistics
    bn.eval()
    x = torch.randn(4, 6)
    with torch.no_grad():
        expected = bn(lin(x)).numpy()
        new_w, new_b = fold_batchnorm(lin.weight, lin.bias, bn, kind="linear")
        got = torch.nn.functional.linear(x, torch.from_numpy(new_w), torch.from_numpy(new_b))
    assert new_w.dtype == np.float32
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# refusals


def _bn(channels=4, **kw):
    return random_bn(nc.BatchNorm2d, channels, np.random.default_rng(0), **kw)


def test_refuses_training_mode():
    bn = _bn().train()
    with pytest.raises(ValueError, match="training mode"):
        fold_batchnorm(np.ones((4, 2, 1, 1), np.float32), None, bn)


def test_refuses_missing_running_stats():
    bn = nc.BatchNorm2d(4, track_running_stats=False).eval()
    with pytest.raises(ValueError, match="running statistics"):
        fold_batchnorm(np.ones((4, 2, 1, 1), np.float32), None, bn)


@pytest.mark.parametrize("attr", ["running_mean", "running_var", "weight", "bias"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_refuses_non_finite(attr, bad):
    bn = types.SimpleNamespace(running_mean=np.zeros(4), running_var=np.ones(4),
                               weight=np.ones(4), bias=np.zeros(4), eps=1e-5, training=False)
    getattr(bn, attr)[1] = bad
    with pytest.raises(ValueError, match=f"bn.{attr}.*non-finite"):
        fold_batchnorm(np.ones((4, 2, 1, 1)), None, bn)


def test_refuses_negative_or_zero_variance():
    bn = types.SimpleNamespace(running_mean=np.zeros(2), running_var=np.array([1.0, -1.0]),
                               weight=None, bias=None, eps=1e-5, training=False)
    with pytest.raises(ValueError, match="negative"):
        fold_batchnorm(np.ones((2, 3)), None, bn, kind="linear")
    bn.running_var, bn.eps = np.array([1.0, 0.0]), 0.0
    with pytest.raises(ValueError, match="division by zero"):
        fold_batchnorm(np.ones((2, 3)), None, bn, kind="linear")


def test_refuses_channel_mismatch():
    with pytest.raises(ValueError, match="bn has 4 channels.*5 output channels"):
        fold_batchnorm(np.ones((5, 2, 3, 3), np.float32), None, _bn())
    with pytest.raises(ValueError, match="bn has 4 channels.*6 output channels"):
        fold_batchnorm(np.ones((4, 3, 3, 3), np.float32), None, _bn(), kind="conv_transpose",
                       groups=2)
    with pytest.raises(ValueError, match="bias must have shape"):
        fold_batchnorm(np.ones((4, 2, 3, 3), np.float32), np.ones(3), _bn())


def test_refuses_groups_not_dividing():
    with pytest.raises(ValueError, match="groups"):
        fold_batchnorm(np.ones((4, 2, 3, 3), np.float32), None, _bn(), groups=3)
    with pytest.raises(ValueError, match="groups"):
        fold_batchnorm(np.ones((5, 2, 3, 3), np.float32), None, _bn(10), kind="conv_transpose",
                       groups=2)
    with pytest.raises(ValueError, match="groups"):
        fold_batchnorm(np.ones((4, 2), np.float32), None, _bn(), kind="linear", groups=2)
    with pytest.raises(ValueError, match="groups"):
        fold_batchnorm(np.ones((4, 2, 3, 3), np.float32), None, _bn(), groups=0)


def test_refuses_wrong_types_and_shapes():
    w = np.ones((4, 2, 3, 3), np.float32)
    with pytest.raises(TypeError, match="kind"):
        fold_batchnorm(w, None, _bn(), kind=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kind"):
        fold_batchnorm(w, None, _bn(), kind="conv2d")
    with pytest.raises(TypeError, match="groups"):
        fold_batchnorm(w, None, _bn(), groups=2.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="float32 or float64"):
        fold_batchnorm(w.astype(np.int32), None, _bn())
    with pytest.raises(TypeError, match="weight"):
        fold_batchnorm(np.array(["a"]), None, _bn())
    with pytest.raises(TypeError, match="bn must be a BatchNorm"):
        fold_batchnorm(w, None, nc.LayerNorm(4))
    with pytest.raises(TypeError, match="bn must be a BatchNorm"):
        fold_batchnorm(w, None, object())
    with pytest.raises(ValueError, match="linear"):
        fold_batchnorm(w, None, _bn(), kind="linear")
    with pytest.raises(ValueError, match="conv"):
        fold_batchnorm(np.ones((4, 2), np.float32), None, _bn(), kind="conv")
