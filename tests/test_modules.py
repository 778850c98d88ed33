"""Tests of the stateful modules (normcpp.modules): against the float64 references in
``reference.py`` and, when it is importable, against ``torch.nn``."""

from __future__ import annotations

import os
import sys

import normcpp as nc
import numpy as np
import pytest

try:
    import conftest
    import reference as ref
except ImportError:  # tests/conftest.py normally puts tests/ on sys.path
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import conftest
    import reference as ref

tolerance = ref.tolerance

DTYPES = (np.float32, np.float64)

BATCH_NORMS = {
    nc.BatchNorm1d: [(6, 3), (4, 3, 5)],
    nc.BatchNorm2d: [(3, 3, 4, 5)],
    nc.BatchNorm3d: [(2, 3, 2, 3, 4)],
}
INSTANCE_NORMS = {
    nc.InstanceNorm1d: [(4, 3, 7), (3, 7)],
    nc.InstanceNorm2d: [(2, 3, 4, 5), (3, 4, 5)],
    nc.InstanceNorm3d: [(2, 3, 2, 3, 4), (3, 2, 3, 4)],
}


def assert_close(actual, expected, dtype, scale=1.0):
    rtol, atol = tolerance(dtype)
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol,
                               atol=atol * scale)


def randomize(module, rng):
    """Give the parameters and running statistics of ``module`` non-trivial values."""
    for name, value in module.named_parameters():
        value[...] = rng.uniform(0.5, 1.5, value.shape) if name == "weight" else (
            rng.standard_normal(value.shape))
    if getattr(module, "running_mean", None) is not None:
        module.running_mean[...] = rng.standard_normal(module.running_mean.shape)
        module.running_var[...] = rng.uniform(0.5, 2.0, module.running_var.shape)


def snapshot(module):
    return {k: v.copy() for k, v in module.state_dict().items()}


def assert_unchanged(module, before):
    after = module.state_dict()
    assert list(after) == list(before)
    for key in before:
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)
        assert after[key].dtype == before[key].dtype


def make_input(rng, shape, dtype, shift=0.5, scale=2.0):
    return (rng.standard_normal(shape) * scale + shift).astype(dtype)


def all_modules():
    """One instance of each module class (default arguments)."""
    return [
        nc.BatchNorm1d(3), nc.BatchNorm2d(3), nc.BatchNorm3d(3),
        nc.InstanceNorm1d(3), nc.InstanceNorm2d(3), nc.InstanceNorm3d(3),
        nc.GroupNorm(1, 3), nc.LayerNorm(3), nc.RMSNorm(3),
    ]


# --------------------------------------------------------------------------------------------
# construction


@pytest.mark.parametrize("cls", list(BATCH_NORMS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm_defaults(cls, dtype):
    m = cls(5, dtype=dtype)
    assert m.training is True
    assert m.dtype == np.dtype(dtype)
    assert (m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats) == (
        5, 1e-5, 0.1, True, True)
    for name, value in [("weight", 1), ("bias", 0), ("running_mean", 0), ("running_var", 1)]:
        arr = getattr(m, name)
        assert isinstance(arr, np.ndarray) and arr.shape == (5,) and arr.dtype == dtype, name
        assert (arr == value).all(), name
    assert isinstance(m.num_batches_tracked, np.ndarray)
    assert m.num_batches_tracked.shape == () and m.num_batches_tracked.dtype == np.int64
    assert int(m.num_batches_tracked) == 0


@pytest.mark.parametrize("cls", list(INSTANCE_NORMS))
def test_instance_norm_defaults(cls):
    m = cls(4)
    assert (m.affine, m.track_running_stats, m.momentum, m.eps) == (False, False, 0.1, 1e-5)
    assert m.weight is None and m.bias is None
    assert m.running_mean is None and m.running_var is None and m.num_batches_tracked is None
    m = cls(4, affine=True, track_running_stats=True)
    assert m.weight.shape == (4,) and m.bias.shape == (4,) and m.running_var.shape == (4,)
    assert m.num_batches_tracked.dtype == np.int64


def test_optional_state():
    m = nc.BatchNorm2d(3, affine=False, track_running_stats=False)
    assert m.weight is None and m.bias is None and m.running_mean is None
    assert m.running_var is None and m.num_batches_tracked is None
    assert m.state_dict() == {}
    m = nc.BatchNorm1d(3, bias=False)
    assert m.weight is not None and m.bias is None
    assert list(m.state_dict()) == ["weight", "running_mean", "running_var",
                                    "num_batches_tracked"]
    assert nc.GroupNorm(2, 4, affine=False).weight is None
    assert nc.GroupNorm(2, 4, bias=False).bias is None
    ln = nc.LayerNorm((2, 3), bias=False)
    assert ln.weight.shape == (2, 3) and ln.bias is None
    ln = nc.LayerNorm(3, elementwise_affine=False)
    assert ln.weight is None and ln.bias is None and ln.state_dict() == {}
    rms = nc.RMSNorm([2, 3], dtype=np.float64)
    assert rms.weight.shape == (2, 3) and rms.weight.dtype == np.float64
    assert (rms.weight == 1).all() and rms.eps is None
    assert nc.RMSNorm(3, elementwise_affine=False).weight is None


def test_normalized_shape_forms():
    assert nc.LayerNorm(5).normalized_shape == (5,)
    assert nc.LayerNorm(np.int64(5)).normalized_shape == (5,)
    assert nc.LayerNorm([2, 3]).normalized_shape == (2, 3)
    assert nc.RMSNorm((4, np.int32(2))).normalized_shape == (4, 2)


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda: nc.BatchNorm2d(3.0), TypeError, "num_features"),
        (lambda: nc.BatchNorm2d("3"), TypeError, "num_features"),
        (lambda: nc.BatchNorm2d(True), TypeError, "num_features"),
        (lambda: nc.BatchNorm2d(0), ValueError, "num_features"),
        (lambda: nc.InstanceNorm1d(-2), ValueError, "num_features"),
        (lambda: nc.BatchNorm2d(3, eps=-1e-5), ValueError, "eps"),
        (lambda: nc.BatchNorm2d(3, eps=float("nan")), ValueError, "eps"),
        (lambda: nc.LayerNorm(3, eps=float("inf")), ValueError, "eps"),
        (lambda: nc.GroupNorm(1, 3, eps="1e-5"), TypeError, "eps"),
        (lambda: nc.RMSNorm(3, eps=-1.0), ValueError, "eps"),
        (lambda: nc.BatchNorm2d(3, momentum=1.5), ValueError, "momentum"),
        (lambda: nc.BatchNorm2d(3, momentum=-0.1), ValueError, "momentum"),
        (lambda: nc.InstanceNorm2d(3, momentum=float("nan")), ValueError, "momentum"),
        (lambda: nc.BatchNorm2d(3, momentum="0.1"), TypeError, "momentum"),
        (lambda: nc.BatchNorm2d(3, dtype=np.int32), TypeError, "dtype"),
        (lambda: nc.BatchNorm2d(3, dtype=np.float16), TypeError, "dtype"),
        (lambda: nc.LayerNorm(3, dtype="not a dtype"), TypeError, "dtype"),
        (lambda: nc.RMSNorm(3, dtype=None), TypeError, "dtype"),
        (lambda: nc.GroupNorm(4, 6), ValueError, "divisible"),
        (lambda: nc.GroupNorm(0, 6), ValueError, "num_groups"),
        (lambda: nc.GroupNorm(2.0, 6), TypeError, "num_groups"),
        (lambda: nc.GroupNorm(2, -4), ValueError, "num_channels"),
        (lambda: nc.LayerNorm(()), ValueError, "normalized_shape"),
        (lambda: nc.LayerNorm((3, 0)), ValueError, "normalized_shape"),
        (lambda: nc.LayerNorm(-3), ValueError, "normalized_shape"),
        (lambda: nc.LayerNorm(3.0), TypeError, "normalized_shape"),
        (lambda: nc.RMSNorm("abc"), TypeError, "normalized_shape"),
        (lambda: nc.RMSNorm([2, 2.5]), TypeError, "normalized_shape"),
    ],
)
def test_constructor_validation(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_repr():
    assert repr(nc.BatchNorm2d(64)) == (
        "BatchNorm2d(64, eps=1e-05, momentum=0.1, affine=True, bias=True, "
        "track_running_stats=True)")
    assert repr(nc.BatchNorm1d(3, momentum=None, affine=False)) == (
        "BatchNorm1d(3, eps=1e-05, momentum=None, affine=False, bias=False, "
        "track_running_stats=True)")
    assert repr(nc.InstanceNorm3d(8)) == (
        "InstanceNorm3d(8, eps=1e-05, momentum=0.1, affine=False, bias=False, "
        "track_running_stats=False)")
    assert repr(nc.GroupNorm(32, 64)) == "GroupNorm(32, 64, eps=1e-05, affine=True, bias=True)"
    assert repr(nc.LayerNorm(768)) == (
        "LayerNorm((768,), eps=1e-05, elementwise_affine=True, bias=True)")
    assert repr(nc.LayerNorm([2, 3], eps=1e-6, bias=False)) == (
        "LayerNorm((2, 3), eps=1e-06, elementwise_affine=True, bias=False)")
    assert repr(nc.RMSNorm(768)) == "RMSNorm((768,), eps=None, elementwise_affine=True)"


# --------------------------------------------------------------------------------------------
# mode, parameters, buffers


@pytest.mark.parametrize("module", all_modules(), ids=lambda m: type(m).__name__)
def test_train_eval(module):
    assert module.training is True
    assert module.eval() is module and module.training is False
    assert module.train() is module and module.training is True
    assert module.train(False) is module and module.training is False
    with pytest.raises(TypeError, match="mode"):
        module.train("yes")
    assert module.training is False
    assert isinstance(module, nc.Module)


def test_parameters_and_buffers_are_the_arrays():
    m = nc.BatchNorm2d(3)
    names = [n for n, _ in m.named_parameters()]
    assert names == ["weight", "bias"]
    assert [p is q for p, q in zip(m.parameters(), (m.weight, m.bias))] == [True, True]
    assert [n for n, _ in m.named_buffers()] == [
        "running_mean", "running_var", "num_batches_tracked"]
    assert all(b is getattr(m, n) for (n, _), b in zip(m.named_buffers(), m.buffers()))
    for p in m.parameters():  # a training-loop style in-place update reaches the module
        p -= 0.5
    np.testing.assert_array_equal(m.weight, 0.5)
    np.testing.assert_array_equal(m.bias, -0.5)
    assert list(nc.InstanceNorm1d(3).parameters()) == []
    assert list(nc.InstanceNorm1d(3).buffers()) == []
    assert [n for n, _ in nc.RMSNorm(4).named_parameters()] == ["weight"]


def test_reset_running_stats_and_parameters(rng):
    m = nc.BatchNorm1d(3)
    randomize(m, rng)
    m(make_input(rng, (8, 3), np.float32))
    weight = m.weight
    m.reset_running_stats()
    np.testing.assert_array_equal(m.running_mean, 0)
    np.testing.assert_array_equal(m.running_var, 1)
    assert int(m.num_batches_tracked) == 0
    assert not (m.weight == 1).all()
    m.reset_parameters()
    assert m.weight is weight  # in place
    np.testing.assert_array_equal(m.weight, 1)
    np.testing.assert_array_equal(m.bias, 0)
    for mod in (nc.GroupNorm(1, 3), nc.LayerNorm(3), nc.RMSNorm(3)):
        randomize(mod, rng)
        mod.reset_parameters()
        np.testing.assert_array_equal(mod.weight, 1)
        if getattr(mod, "bias", None) is not None:
            np.testing.assert_array_equal(mod.bias, 0)
    nc.InstanceNorm2d(3).reset_parameters()  # nothing to reset: no error


# --------------------------------------------------------------------------------------------
# BatchNorm against the reference


def batch_norm_steps(cls, shape, dtype, momentum, rng, steps=3, **kwargs):
    """Run ``steps`` training steps and one eval step, checking each against the reference."""
    m = cls(shape[1], momentum=momentum, dtype=dtype, **kwargs)
    randomize(m, rng)
    tracking = m.track_running_stats
    for step in range(1, steps + 1):
        x = make_input(rng, shape, dtype, shift=step)
        rm = None if not tracking else m.running_mean.copy()
        rv = None if not tracking else m.running_var.copy()
        factor = (1.0 / step) if momentum is None else momentum
        y_ref, rm_ref, rv_ref = ref.batch_norm(x, rm, rv, m.weight, m.bias, True, factor, m.eps)
        y = m(x)
        assert y.dtype == dtype and y.shape == x.shape
        assert_close(y, y_ref, dtype, scale=10)
        if tracking:
            assert_close(m.running_mean, rm_ref, dtype)
            assert_close(m.running_var, rv_ref, dtype)
            assert m.running_mean.dtype == dtype
            assert int(m.num_batches_tracked) == step
    m.eval()
    x = make_input(rng, shape, dtype)
    before = snapshot(m)
    if tracking:
        y_ref, _, _ = ref.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False,
                                     0.1, m.eps)
    else:  # no running statistics: the batch statistics normalize in eval mode too
        y_ref, _, _ = ref.batch_norm(x, None, None, m.weight, m.bias, True, 0.1, m.eps)
    assert_close(m(x), y_ref, dtype, scale=10)
    assert_unchanged(m, before)
    return m


@pytest.mark.parametrize("cls, shape", [(c, s) for c, ss in BATCH_NORMS.items() for s in ss])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
def test_batch_norm_train_then_eval(cls, shape, dtype, momentum, rng):
    m = batch_norm_steps(cls, shape, dtype, momentum, rng)
    assert int(m.num_batches_tracked) == 3


@pytest.mark.parametrize("cls, shape", [(c, s) for c, ss in BATCH_NORMS.items() for s in ss])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_without_running_stats(cls, shape, dtype, affine, rng):
    m = batch_norm_steps(cls, shape, dtype, 0.1, rng, affine=affine, track_running_stats=False)
    assert m.running_mean is None and m.num_batches_tracked is None


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm_affine_false_and_no_bias(dtype, rng):
    batch_norm_steps(nc.BatchNorm2d, (2, 3, 3, 3), dtype, 0.1, rng, affine=False)
    batch_norm_steps(nc.BatchNorm2d, (2, 3, 3, 3), dtype, 0.1, rng, bias=False)


def test_batch_norm_momentum_none_is_cumulative_average(rng):
    m = nc.BatchNorm1d(2, momentum=None, dtype=np.float64)
    xs = [make_input(rng, (5, 2), np.float64, shift=i) for i in range(4)]
    for x in xs:
        m(x)
    np.testing.assert_allclose(m.running_mean, np.mean([x.mean(axis=0) for x in xs], axis=0),
                               rtol=1e-12)
    np.testing.assert_allclose(m.running_var,
                               np.mean([x.var(axis=0, ddof=1) for x in xs], axis=0),
                               rtol=1e-12)


def test_batch_norm_momentum_zero_and_one(rng):
    x = make_input(rng, (6, 3), np.float64)
    m = nc.BatchNorm1d(3, momentum=0.0, dtype=np.float64)
    m(x)
    np.testing.assert_array_equal(m.running_mean, 0)
    assert int(m.num_batches_tracked) == 1
    m = nc.BatchNorm1d(3, momentum=1.0, dtype=np.float64)
    m(x)
    np.testing.assert_allclose(m.running_mean, x.mean(axis=0), rtol=1e-12)


@pytest.mark.parametrize("module_dtype, input_dtype",
                         [(np.float64, np.float32), (np.float32, np.float64),
                          (np.float32, np.float16)])
def test_mixed_dtypes(module_dtype, input_dtype, rng):
    m = nc.BatchNorm2d(3, dtype=module_dtype)
    randomize(m, rng)
    x = make_input(rng, (2, 3, 4, 4), input_dtype)
    rm, rv = m.running_mean.copy(), m.running_var.copy()
    y_ref, rm_ref, _ = ref.batch_norm(x, rm, rv, m.weight, m.bias, True, 0.1, m.eps)
    y = m(x)
    assert y.dtype == input_dtype and m.running_mean.dtype == module_dtype
    assert_close(y, y_ref, input_dtype, scale=10)
    loosest = max(np.dtype(module_dtype), np.dtype(input_dtype),
                  key=lambda d: tolerance(d)[0])
    assert_close(m.running_mean, rm_ref, loosest)
    ln = nc.LayerNorm(4, dtype=module_dtype)
    assert_close(ln(x), ref.layer_norm(x, 4, ln.weight, ln.bias), input_dtype, scale=10)


@pytest.mark.parametrize("layout", conftest.LAYOUTS)
@pytest.mark.parametrize("cls", [nc.BatchNorm2d, nc.InstanceNorm2d])
def test_layouts_update_running_stats(cls, layout, rng):
    """Strided and channels-last inputs give the same outputs and running statistics."""
    kwargs = {} if cls is nc.BatchNorm2d else {"affine": True, "track_running_stats": True}
    a, b = cls(5, **kwargs), cls(5, **kwargs)
    randomize(a, rng)
    b.load_state_dict(a.state_dict())
    for step in range(2):
        x = make_input(rng, (3, 5, 4, 6), np.float32, shift=step)
        view = conftest.to_layout(x, layout)
        expected = a(x)
        y = b(view)
        assert_close(y, expected.astype(np.float64), np.float32, scale=10)
    for key, value in a.state_dict().items():
        assert_close(getattr(b, key), value.astype(np.float64), np.float32)


# --------------------------------------------------------------------------------------------
# out=


@pytest.mark.parametrize("module, shape", [
    (nc.BatchNorm2d(3), (2, 3, 4, 4)),
    (nc.InstanceNorm1d(3, affine=True), (2, 3, 5)),
    (nc.InstanceNorm1d(3, affine=True), (3, 5)),
    (nc.InstanceNorm3d(3, track_running_stats=True), (3, 2, 2, 2)),
    (nc.GroupNorm(3, 3), (2, 3, 5)),
    (nc.LayerNorm((3, 5)), (2, 3, 5)),
    (nc.RMSNorm(5), (2, 3, 5)),
], ids=lambda v: type(v).__name__ if isinstance(v, nc.Module) else str(v))
def test_out_argument(module, shape, rng):
    x = make_input(rng, shape, np.float32)
    expected = module.eval()(x)
    out = np.empty_like(x)
    assert module(x, out=out) is out
    np.testing.assert_array_equal(out, expected)
    assert module.forward(x.copy(), out=out) is out
    inplace = x.copy()
    assert module(inplace, out=inplace) is inplace
    np.testing.assert_array_equal(inplace, expected)


# --------------------------------------------------------------------------------------------
# failed calls change nothing


def bad_calls(good_shape):
    """(input, kwargs) pairs that must fail for a module accepting ``good_shape``."""
    wrong_c = list(good_shape)
    wrong_c[1] += 1
    return [
        (np.zeros(wrong_c, np.float32), {}, ValueError),
        (np.zeros(good_shape, np.int32), {}, TypeError),
        (np.zeros(good_shape, np.complex64), {}, TypeError),
        (np.zeros((3,), np.float32), {}, ValueError),
        (np.zeros((2, 3, 1, 1, 1, 1), np.float32), {}, ValueError),
        (np.zeros(good_shape, np.float32).tolist(), {}, TypeError),
        (np.zeros(good_shape, np.float32), {"out": np.zeros(good_shape, np.float64)}, None),
        (np.zeros(good_shape, np.float32), {"out": np.zeros(good_shape[:-1] + (1,),
                                                             np.float32)}, None),
    ]


@pytest.mark.parametrize("cls, shape", [
    (nc.BatchNorm1d, (4, 3)), (nc.BatchNorm1d, (4, 3, 5)), (nc.BatchNorm2d, (2, 3, 4, 4)),
    (nc.BatchNorm3d, (2, 3, 2, 2, 2)),
])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_failed_batch_norm_forward_changes_nothing(cls, shape, momentum, rng):
    m = cls(3, momentum=momentum)
    randomize(m, rng)
    m(make_input(rng, shape, np.float32))
    before = snapshot(m)
    for x, kwargs, exc in bad_calls(shape):
        with pytest.raises(exc or (TypeError, ValueError)):
            m(x, **kwargs)
        assert_unchanged(m, before)
    # after the failures the next step uses the right count (momentum=None: 1/2)
    x = make_input(rng, shape, np.float32)
    factor = 0.5 if momentum is None else momentum
    _, rm_ref, _ = ref.batch_norm(x, m.running_mean, m.running_var, None, None, True, factor)
    m(x)
    assert int(m.num_batches_tracked) == 2
    assert_close(m.running_mean, rm_ref, np.float32)


def test_batch_norm_one_value_per_channel(rng):
    m = nc.BatchNorm1d(3)
    before = snapshot(m)
    for shape in [(1, 3), (1, 3, 1)]:
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            m(np.ones(shape, np.float32))
        assert_unchanged(m, before)
    y = m.eval()(np.ones((1, 3), np.float32))  # eval with running stats is fine
    assert y.shape == (1, 3)


def test_wrong_rank_message():
    with pytest.raises(ValueError, match=r"BatchNorm2d expected 4-D input \(N, C, H, W\), "
                                         r"got 3-D input of shape \(2, 3, 4\)"):
        nc.BatchNorm2d(3)(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match=r"2-D input \(N, C\) or 3-D input \(N, C, L\)"):
        nc.BatchNorm1d(3)(np.zeros((2, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"InstanceNorm2d expected 4-D input \(N, C, H, W\) or "
                                         r"3-D input \(C, H, W\)"):
        nc.InstanceNorm2d(3)(np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="num_features=3"):
        nc.BatchNorm2d(3)(np.zeros((2, 4, 2, 2), np.float32))
    with pytest.raises(ValueError, match="at least 2-D"):
        nc.GroupNorm(1, 3)(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="num_channels=3"):
        nc.GroupNorm(1, 3)(np.zeros((2, 6), np.float32))
    with pytest.raises(ValueError, match=r"LayerNorm expected input whose trailing dims equal "
                                         r"normalized_shape=\(3, 4\)"):
        nc.LayerNorm((3, 4))(np.zeros((2, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"RMSNorm expected .* got input of shape \(4,\)"):
        nc.RMSNorm((3, 4))(np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="GroupNorm expected input with num_channels=4") as e:
        nc.GroupNorm(2, 4)(np.zeros((2, 6, 3), np.float32))  # divisible, but not 4 channels
    assert e.value.__suppress_context__  # the core's own error is not chained in the traceback
    with pytest.raises(TypeError, match="input"):
        nc.LayerNorm(3)([1.0, 2.0, 3.0])


def test_no_channel_state_accepts_any_channel_count(rng):
    # As in PyTorch: without per-channel arrays num_features is not used.
    x = make_input(rng, (4, 5, 6), np.float64)
    y = nc.BatchNorm1d(3, affine=False, track_running_stats=False)(x)
    assert_close(y, ref.batch_norm(x, training=True)[0], np.float64)
    y = nc.InstanceNorm1d(3)(x)
    assert_close(y, ref.instance_norm(x)[0], np.float64)
    y = nc.GroupNorm(1, 3, affine=False)(x)
    assert_close(y, ref.group_norm(x, 1), np.float64)
    with pytest.raises(ValueError, match="num_features"):
        nc.InstanceNorm1d(3, track_running_stats=True)(x)
    with pytest.raises(ValueError, match="num_features"):
        nc.InstanceNorm1d(3, affine=True)(x[0])


# --------------------------------------------------------------------------------------------
# InstanceNorm against the reference


@pytest.mark.parametrize("cls, shape", [(c, s) for c, ss in INSTANCE_NORMS.items() for s in ss])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [False, True])
def test_instance_norm_no_tracking(cls, shape, dtype, affine, rng):
    m = cls(3, affine=affine, dtype=dtype)
    randomize(m, rng)
    batched = len(shape) == len(INSTANCE_NORMS[cls][0])
    for mode in (True, False):  # input statistics in both modes
        m.train(mode)
        x = make_input(rng, shape, dtype)
        xb = x if batched else x[None]
        y_ref = ref.instance_norm(xb, None, None, m.weight, m.bias)[0]
        y = m(x)
        assert y.shape == x.shape and y.dtype == dtype
        assert_close(y, y_ref if batched else y_ref[0], dtype, scale=10)


@pytest.mark.parametrize("cls, shape", [(c, s) for c, ss in INSTANCE_NORMS.items() for s in ss])
@pytest.mark.parametrize("dtype", DTYPES)
def test_instance_norm_tracking(cls, shape, dtype, rng):
    m = cls(3, affine=True, track_running_stats=True, momentum=0.3, dtype=dtype)
    randomize(m, rng)
    batched = len(shape) == len(INSTANCE_NORMS[cls][0])
    for step in range(3):
        x = make_input(rng, shape, dtype, shift=step)
        xb = x if batched else x[None]
        y_ref, rm_ref, rv_ref = ref.instance_norm(xb, m.running_mean, m.running_var, m.weight,
                                                  m.bias, True, 0.3, m.eps)
        y = m(x)
        assert_close(y, y_ref if batched else y_ref[0], dtype, scale=10)
        assert_close(m.running_mean, rm_ref, dtype)
        assert_close(m.running_var, rv_ref, dtype)
    assert int(m.num_batches_tracked) == 0  # PyTorch never counts InstanceNorm batches
    m.eval()
    x = make_input(rng, shape, dtype)
    xb = x if batched else x[None]
    before = snapshot(m)
    y_ref = ref.instance_norm(xb, m.running_mean, m.running_var, m.weight, m.bias, False)[0]
    assert_close(m(x), y_ref if batched else y_ref[0], dtype, scale=10)
    assert_unchanged(m, before)


def test_instance_norm_momentum_none_does_not_update(rng):
    m = nc.InstanceNorm1d(3, track_running_stats=True, momentum=None)
    before = snapshot(m)
    m(make_input(rng, (2, 3, 5), np.float32))
    assert_unchanged(m, before)


def test_instance_norm_failures_change_nothing(rng):
    m = nc.InstanceNorm2d(3, affine=True, track_running_stats=True)
    randomize(m, rng)
    before = snapshot(m)
    for x in [np.zeros((2, 4, 3, 3), np.float32), np.zeros((4, 3, 3), np.float32),
              np.zeros((2, 3, 3, 3), np.int32), np.zeros((2, 3, 1, 1), np.float32),
              np.zeros((3, 1, 1), np.float32), np.zeros((3, 3), np.float32)]:
        with pytest.raises((TypeError, ValueError)):
            m(x)
        assert_unchanged(m, before)
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        m(np.zeros((2, 3, 1, 1), np.float32))
    m.eval()(np.ones((2, 3, 1, 1), np.float32))  # running statistics: fine


# --------------------------------------------------------------------------------------------
# GroupNorm, LayerNorm, RMSNorm against the reference


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("groups, shape", [(1, (2, 6)), (3, (2, 6, 5)), (6, (3, 6, 2, 3)),
                                           (2, (1, 6, 2, 2, 3))])
@pytest.mark.parametrize("affine", [True, False])
def test_group_norm(dtype, groups, shape, affine, rng):
    m = nc.GroupNorm(groups, 6, affine=affine, dtype=dtype)
    randomize(m, rng)
    x = make_input(rng, shape, dtype)
    for mode in (True, False):
        y = m.train(mode)(x)
        assert y.dtype == dtype
        assert_close(y, ref.group_norm(x, groups, m.weight, m.bias), dtype, scale=10)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("normalized_shape, shape", [(7, (3, 7)), ((4, 5), (2, 3, 4, 5)),
                                                     (5, (5,)), ([2, 3], (2, 3))])
@pytest.mark.parametrize("kwargs", [{}, {"bias": False}, {"elementwise_affine": False},
                                    {"eps": 0.1}])
def test_layer_norm(dtype, normalized_shape, shape, kwargs, rng):
    m = nc.LayerNorm(normalized_shape, dtype=dtype, **kwargs)
    randomize(m, rng)
    x = make_input(rng, shape, dtype)
    y = m(x)
    assert y.dtype == dtype
    assert_close(y, ref.layer_norm(x, normalized_shape, m.weight, m.bias, m.eps), dtype,
                 scale=10)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("normalized_shape, shape", [(7, (3, 7)), ((4, 5), (2, 3, 4, 5))])
@pytest.mark.parametrize("kwargs", [{}, {"eps": 1e-3}, {"elementwise_affine": False}])
def test_rms_norm(dtype, normalized_shape, shape, kwargs, rng):
    m = nc.RMSNorm(normalized_shape, dtype=dtype, **kwargs)
    randomize(m, rng)
    x = make_input(rng, shape, dtype)
    y = m(x)
    assert y.dtype == dtype
    expected = ref.rms_norm(x, normalized_shape, m.weight, m.eps, input_dtype=dtype)
    assert_close(y, expected, dtype, scale=10)


def test_rms_norm_eps_none_uses_input_dtype():
    x = np.full((1, 4), 1e-4)
    for dtype in (np.float32, np.float64):
        y = nc.RMSNorm(4, dtype=np.float64)(x.astype(dtype))
        expected = ref.rms_norm(x, 4, None, None, input_dtype=dtype)
        assert_close(y, expected, dtype)


# --------------------------------------------------------------------------------------------
# state_dict / load_state_dict


@pytest.mark.parametrize("module, keys", [
    (nc.BatchNorm2d(3), ["weight", "bias", "running_mean", "running_var",
                         "num_batches_tracked"]),
    (nc.BatchNorm1d(3, track_running_stats=False), ["weight", "bias"]),
    (nc.BatchNorm3d(3, affine=False), ["running_mean", "running_var", "num_batches_tracked"]),
    (nc.InstanceNorm2d(3), []),
    (nc.InstanceNorm1d(3, affine=True, track_running_stats=True),
     ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]),
    (nc.GroupNorm(1, 3), ["weight", "bias"]),
    (nc.LayerNorm(3), ["weight", "bias"]),
    (nc.LayerNorm(3, bias=False), ["weight"]),
    (nc.RMSNorm(3), ["weight"]),
], ids=repr)
def test_state_dict_keys(module, keys):
    sd = module.state_dict()
    assert list(sd) == keys
    for key, value in sd.items():
        assert isinstance(value, np.ndarray)
        assert value is not getattr(module, key)
        value[...] = 7  # a copy: the module is untouched
        assert not (getattr(module, key) == 7).any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_load_state_dict_round_trip(dtype, rng):
    src = nc.BatchNorm2d(4, dtype=dtype)
    randomize(src, rng)
    src(make_input(rng, (2, 4, 3, 3), dtype))
    dst = nc.BatchNorm2d(4, dtype=dtype)
    weight = dst.weight
    result = dst.load_state_dict(src.state_dict())
    assert result == ([], []) and result.missing_keys == [] and result.unexpected_keys == []
    assert dst.weight is weight  # updated in place
    for key, value in src.state_dict().items():
        np.testing.assert_array_equal(getattr(dst, key), value)
        assert getattr(dst, key).dtype == value.dtype
    x = make_input(rng, (2, 4, 3, 3), dtype)
    np.testing.assert_array_equal(src.eval()(x), dst.eval()(x))


def test_load_state_dict_casts_and_accepts_array_likes():
    m = nc.BatchNorm1d(2)
    m.load_state_dict({"weight": [1, 2], "bias": (0.5, 0.25),
                       "running_mean": np.array([1.0, 2.0], np.float64),
                       "running_var": np.array([3.0, 4.0], np.float16),
                       "num_batches_tracked": 5.0})
    for key in ("weight", "bias", "running_mean", "running_var"):
        assert getattr(m, key).dtype == np.float32, key
    np.testing.assert_array_equal(m.weight, [1, 2])
    np.testing.assert_array_equal(m.running_var, [3, 4])
    assert m.num_batches_tracked.dtype == np.int64 and m.num_batches_tracked.shape == ()
    assert int(m.num_batches_tracked) == 5
    m.load_state_dict({"weight": [1, 2], "bias": [0, 0], "running_mean": [0, 0],
                       "running_var": [1, 1], "num_batches_tracked": np.array([9])})
    assert int(m.num_batches_tracked) == 9 and m.num_batches_tracked.shape == ()


def test_load_state_dict_missing_num_batches_tracked_keeps_value(rng):
    m = nc.BatchNorm1d(3)
    for _ in range(4):
        m(make_input(rng, (5, 3), np.float32))
    sd = m.state_dict()
    del sd["num_batches_tracked"]
    fresh = nc.BatchNorm1d(3)
    assert fresh.load_state_dict(sd) == ([], [])
    assert int(fresh.num_batches_tracked) == 0
    np.testing.assert_array_equal(fresh.running_mean, m.running_mean)
    assert m.load_state_dict(sd) == ([], [])  # as PyTorch: the current count is kept
    assert int(m.num_batches_tracked) == 4


def test_load_state_dict_strict(rng):
    m = nc.BatchNorm1d(3)
    randomize(m, rng)
    before = snapshot(m)
    sd = {k: np.zeros_like(v) for k, v in m.state_dict().items()}
    del sd["running_var"]
    sd["extra"] = np.zeros(3)
    with pytest.raises(ValueError, match=r"(?s)missing.*'running_var'.*unexpected.*'extra'"):
        m.load_state_dict(sd)
    assert_unchanged(m, before)
    result = m.load_state_dict(sd, strict=False)
    assert result.missing_keys == ["running_var"] and result.unexpected_keys == ["extra"]
    np.testing.assert_array_equal(m.weight, 0)
    np.testing.assert_array_equal(m.running_var, before["running_var"])
    with pytest.raises(ValueError, match="unexpected"):
        nc.InstanceNorm1d(3).load_state_dict({"running_mean": np.zeros(3)})
    assert nc.InstanceNorm1d(3).load_state_dict({}) == ([], [])


@pytest.mark.parametrize("key, value, exc, match", [
    ("weight", np.zeros(4), ValueError, r"weight.*\(3,\).*\(4,\)"),
    ("running_mean", np.zeros((3, 1)), ValueError, "running_mean"),
    ("num_batches_tracked", np.zeros(2, np.int64), ValueError, "num_batches_tracked"),
    ("bias", np.array([0, 1j, 2]), TypeError, "bias"),
    ("bias", np.array(["a", "b", "c"]), TypeError, "bias"),
    ("bias", ["a", "b", "c"], TypeError, "bias"),
    ("running_var", np.array([1.0, np.nan, 1.0]), ValueError, "running_var"),
    ("running_mean", np.array([1.0, np.inf, 1.0]), ValueError, "running_mean"),
    ("running_mean", np.array([1.0, 1e300, 1.0]), ValueError, "running_mean"),
    ("num_batches_tracked", 2.5, ValueError, "num_batches_tracked"),
    ("num_batches_tracked", -1, ValueError, "num_batches_tracked"),
    ("weight", np.array([True, False, True]), TypeError, "weight"),
    ("weight", object(), TypeError, "weight"),
])
def test_load_state_dict_bad_value_changes_nothing(key, value, exc, match, rng):
    m = nc.BatchNorm1d(3)
    randomize(m, rng)
    m(make_input(rng, (4, 3), np.float32))
    before = snapshot(m)
    sd = {k: v + 1 for k, v in m.state_dict().items()}  # every other key is valid
    sd[key] = value
    with pytest.raises(exc, match=match):
        m.load_state_dict(sd)
    with pytest.raises(exc, match=match):
        m.load_state_dict(sd, strict=False)
    assert_unchanged(m, before)


def test_load_state_dict_not_a_mapping():
    with pytest.raises(TypeError, match="state_dict"):
        nc.LayerNorm(3).load_state_dict([("weight", np.ones(3))])


# --------------------------------------------------------------------------------------------
# PyTorch parity

TORCH_CASES = [
    # (our class name, constructor kwargs, input shape)
    ("BatchNorm1d", {"num_features": 3}, (6, 3)),
    ("BatchNorm1d", {"num_features": 3, "momentum": None}, (4, 3, 5)),
    ("BatchNorm2d", {"num_features": 3}, (2, 3, 4, 5)),
    ("BatchNorm2d", {"num_features": 3, "momentum": None, "affine": False}, (2, 3, 4, 5)),
    ("BatchNorm2d", {"num_features": 3, "track_running_stats": False}, (2, 3, 4, 5)),
    ("BatchNorm2d", {"num_features": 3, "affine": False, "track_running_stats": False},
     (2, 3, 4, 5)),
    ("BatchNorm2d", {"num_features": 3, "bias": False, "eps": 1e-3}, (2, 3, 4, 5)),
    ("BatchNorm3d", {"num_features": 3, "momentum": 0.3}, (2, 3, 2, 3, 4)),
    ("InstanceNorm1d", {"num_features": 3}, (2, 3, 7)),
    ("InstanceNorm1d", {"num_features": 3, "affine": True, "track_running_stats": True},
     (3, 7)),
    ("InstanceNorm2d", {"num_features": 3, "affine": True}, (2, 3, 4, 5)),
    ("InstanceNorm2d", {"num_features": 3, "track_running_stats": True, "momentum": 0.2},
     (2, 3, 4, 5)),
    ("InstanceNorm2d", {"num_features": 3, "track_running_stats": True, "momentum": None},
     (3, 4, 5)),
    ("InstanceNorm3d", {"num_features": 3, "affine": True, "track_running_stats": True},
     (2, 3, 2, 3, 4)),
    ("GroupNorm", {"num_groups": 2, "num_channels": 4}, (3, 4, 5)),
    ("GroupNorm", {"num_groups": 4, "num_channels": 4, "affine": False}, (3, 4, 2, 3)),
    ("GroupNorm", {"num_groups": 1, "num_channels": 4, "bias": False}, (3, 4)),
    ("LayerNorm", {"normalized_shape": 6}, (4, 6)),
    ("LayerNorm", {"normalized_shape": (3, 4), "bias": False}, (2, 5, 3, 4)),
    ("LayerNorm", {"normalized_shape": 6, "elementwise_affine": False, "eps": 1e-3}, (4, 6)),
    ("RMSNorm", {"normalized_shape": 6}, (4, 6)),
    ("RMSNorm", {"normalized_shape": [3, 4], "eps": 1e-6}, (2, 3, 4)),
    ("RMSNorm", {"normalized_shape": 6, "elementwise_affine": False}, (4, 6)),
]


def case_id(case):
    name, kwargs, shape = case
    return name + "-" + "-".join(f"{k}={v}" for k, v in kwargs.items()) + f"-{shape}"


def make_pair(torch, name, kwargs, dtype, rng):
    """Our module and the torch.nn one, with the same (random) parameters and statistics."""
    tdtype = torch.float32 if dtype == np.float32 else torch.float64
    ours = getattr(nc, name)(dtype=dtype, **kwargs)
    theirs = getattr(torch.nn, name)(dtype=tdtype, **kwargs)
    randomize(ours, rng)
    sd = {k: torch.from_numpy(v) for k, v in ours.state_dict().items()}
    theirs.load_state_dict(sd)
    return ours, theirs


def assert_state_equal(ours, theirs, dtype, torch):
    tsd = theirs.state_dict()
    osd = ours.state_dict()
    assert list(osd) == list(tsd)
    for key in tsd:
        expected = tsd[key].detach().numpy()
        assert osd[key].shape == expected.shape, key
        if key == "num_batches_tracked":
            assert int(osd[key]) == int(expected)
        else:
            assert_close(osd[key], expected.astype(np.float64), dtype, scale=10)


@pytest.mark.parametrize("case", TORCH_CASES, ids=case_id)
@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_parity_train_then_eval(case, dtype, rng):
    torch = pytest.importorskip("torch")
    name, kwargs, shape = case
    ours, theirs = make_pair(torch, name, kwargs, dtype, rng)
    assert repr(ours) == repr(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for step in range(3):
        x = make_input(rng, shape, dtype, shift=step)
        y = ours(x)
        with torch.no_grad():
            expected = theirs(torch.from_numpy(x)).numpy()
        assert y.dtype == expected.dtype and y.shape == expected.shape
        assert_close(y, expected.astype(np.float64), dtype, scale=10)
        assert_state_equal(ours, theirs, dtype, torch)
    ours.eval()
    theirs.eval()
    x = make_input(rng, shape, dtype)
    with torch.no_grad():
        expected = theirs(torch.from_numpy(x)).numpy()
    assert_close(ours(x), expected.astype(np.float64), dtype, scale=10)
    assert_state_equal(ours, theirs, dtype, torch)


@pytest.mark.parametrize("case", TORCH_CASES, ids=case_id)
def test_torch_state_dict_round_trip(case, rng):
    torch = pytest.importorskip("torch")
    name, kwargs, shape = case
    dtype = np.float32
    theirs = getattr(torch.nn, name)(**kwargs)
    with torch.no_grad():
        for value in theirs.parameters():
            value.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, tuple(value.shape))))
    theirs(torch.from_numpy(make_input(rng, shape, dtype)))  # moves the running statistics
    if getattr(theirs, "num_batches_tracked", None) is not None:
        theirs.num_batches_tracked.fill_(11)
    # torch -> ours (tensors, including requires_grad parameters, load directly)
    ours = getattr(nc, name)(**kwargs)
    assert ours.load_state_dict(theirs.state_dict()) == ([], [])
    assert_state_equal(ours, theirs, dtype, torch)
    for key, value in theirs.state_dict().items():
        np.testing.assert_array_equal(ours.state_dict()[key], value.numpy())
    # ours -> torch
    randomize(ours, rng)
    back = getattr(torch.nn, name)(**kwargs)
    back.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    for key, value in back.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), ours.state_dict()[key])
    x = make_input(rng, shape, dtype)
    with torch.no_grad():
        expected = back.eval()(torch.from_numpy(x)).numpy()
    assert_close(ours.eval()(x), expected.astype(np.float64), dtype, scale=10)


def test_torch_state_dict_float64_and_bfloat16_cast():
    torch = pytest.importorskip("torch")
    theirs = torch.nn.BatchNorm1d(3, dtype=torch.float64)
    with torch.no_grad():
        theirs.weight.fill_(2.5)
    ours = nc.BatchNorm1d(3)
    ours.load_state_dict(theirs.state_dict())
    assert ours.weight.dtype == np.float32
    np.testing.assert_array_equal(ours.weight, 2.5)
    theirs = torch.nn.LayerNorm(4, dtype=torch.bfloat16)
    with torch.no_grad():
        theirs.bias.fill_(0.5)
    ours = nc.LayerNorm(4, dtype=np.float64)
    ours.load_state_dict(theirs.state_dict())
    np.testing.assert_array_equal(ours.bias, 0.5)


def test_torch_missing_num_batches_tracked_matches():
    torch = pytest.importorskip("torch")
    theirs = torch.nn.BatchNorm2d(3)
    ours = nc.BatchNorm2d(3)
    theirs.num_batches_tracked.fill_(6)
    ours.num_batches_tracked.fill(6)
    sd = {k: v for k, v in theirs.state_dict().items() if k != "num_batches_tracked"}
    theirs.load_state_dict(dict(sd))
    ours.load_state_dict(sd)
    assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 6


def test_torch_channel_mismatch_without_channel_state(rng):
    torch = pytest.importorskip("torch")
    x = make_input(rng, (4, 5, 6), np.float32)
    theirs = torch.nn.BatchNorm1d(3, affine=False, track_running_stats=False)
    ours = nc.BatchNorm1d(3, affine=False, track_running_stats=False)
    with torch.no_grad():
        expected = theirs(torch.from_numpy(x)).numpy()
    assert_close(ours(x), expected.astype(np.float64), np.float32, scale=10)


@pytest.mark.parametrize("shape", [(1, 3), (2, 3, 1)])
def test_torch_same_errors_on_degenerate_batches(shape):
    torch = pytest.importorskip("torch")
    cls = "BatchNorm1d" if len(shape) == 2 else "InstanceNorm1d"
    x = np.ones(shape, np.float32)
    with pytest.raises(ValueError, match="Expected more than 1"):
        getattr(torch.nn, cls)(3)(torch.from_numpy(x))
    with pytest.raises(ValueError, match="Expected more than 1"):
        getattr(nc, cls)(3)(x)


# ---- module(x) runs forward (the call is an alias of the class's forward)
def test_call_runs_the_subclass_forward_and_keeps_a_custom_call(rng):
    x = rng.standard_normal((4, 3, 5)).astype(np.float32)

    class Doubled(nc.BatchNorm1d):
        def forward(self, input, *, out=None):
            return 2 * super().forward(input, out=out)

    m = Doubled(3).eval()
    np.testing.assert_array_equal(m(x), 2 * nc.BatchNorm1d(3).eval()(x))

    calls = []

    class Hooked(nc.LayerNorm):
        def __call__(self, input, *, out=None):
            calls.append(input.shape)
            return self.forward(input, out=out)

    class HookedScaled(Hooked):  # overrides forward only: the base's __call__ still runs
        def forward(self, input, *, out=None):
            return super().forward(input, out=out) * 3

    h = HookedScaled(5)
    np.testing.assert_allclose(h(x), 3 * nc.LayerNorm(5)(x), rtol=1e-6)
    assert calls == [x.shape]
    y = np.empty_like(x)
    assert nc.BatchNorm1d(3).eval()(x, out=y) is y
