"""Bad input: ``TypeError`` for a wrong type or dtype, ``ValueError`` for a wrong shape or
value, each message naming the argument, and a failed call changes nothing (not the input,
not ``out``, not the running statistics). NaN propagates only where the math says so."""

from __future__ import annotations

import normcpp as nc
import numpy as np
import pytest
import reference as ref
from conftest import to_layout

OPS = {
    "batch_norm": nc.batch_norm,
    "instance_norm": nc.instance_norm,
    "group_norm": nc.group_norm,
    "layer_norm": nc.layer_norm,
    "rms_norm": nc.rms_norm,
}


def base_args(op):
    """Valid keyword arguments for ``op`` (fresh arrays on every call)."""
    rng = np.random.default_rng(0)
    if op in ("batch_norm", "instance_norm"):
        x = rng.standard_normal((4, 3, 5)).astype(np.float32)
        args = {"input": x, "running_mean": rng.standard_normal(3).astype(np.float32),
                    "running_var": rng.uniform(0.5, 2, 3).astype(np.float32),
                    "weight": rng.uniform(0.5, 2, 3).astype(np.float32),
                    "bias": rng.standard_normal(3).astype(np.float32), "momentum": 0.1, "eps": 1e-5}
        if op == "batch_norm":
            args["training"] = True
        else:
            args["use_input_stats"] = True
        return args
    if op == "group_norm":
        return {"input": rng.standard_normal((2, 6, 5)).astype(np.float32), "num_groups": 3,
                    "weight": rng.uniform(0.5, 2, 6), "bias": rng.standard_normal(6), "eps": 1e-5}
    x = rng.standard_normal((2, 3, 5)).astype(np.float32)
    args = {"input": x, "normalized_shape": (3, 5), "weight": rng.uniform(0.5, 2, (3, 5)), "eps": 1e-5}
    if op == "layer_norm":
        args["bias"] = rng.standard_normal((3, 5)).astype(np.float32)
    return args


def _readonly(a):
    a = np.array(a)
    a.flags.writeable = False
    return a


def _snapshot(args):
    return {k: v.copy() for k, v in args.items() if isinstance(v, np.ndarray)}


def _assert_unchanged(args, snap):
    for k, before in snap.items():
        after = args[k]
        assert after.dtype == before.dtype and after.shape == before.shape, k
        equal_nan = before.dtype.kind in "fc"
        assert np.array_equal(after, before, equal_nan=equal_nan), f"{k} changed by a failed call"


def expect_error(op, overrides, exc, match):
    """Call ``op`` with its base arguments updated by ``overrides`` (a value, or a callable
    that takes the argument dict) and check the error and that nothing changed."""
    args = base_args(op)
    for k, v in overrides.items():
        args[k] = v(args) if callable(v) else v
    snap = _snapshot(args)
    with pytest.raises(exc, match=match):
        OPS[op](**args)
    _assert_unchanged(args, snap)


ALL = list(OPS)
STATS_OPS = ["batch_norm", "instance_norm"]
C_OPS = ["batch_norm", "instance_norm", "group_norm"]

# ---- TypeError: input of the wrong type or dtype

BAD_INPUTS = {
    "int32": lambda a: a["input"].astype(np.int32),
    "int64": lambda a: a["input"].astype(np.int64),
    "uint8": lambda a: a["input"].astype(np.uint8),
    "bool": lambda a: a["input"] > 0,
    "complex64": lambda a: a["input"].astype(np.complex64),
    "complex128": lambda a: a["input"].astype(np.complex128),
    "object": lambda a: a["input"].astype(object),
    "str_array": lambda a: a["input"].astype(str),
    "str": "not an array",
    "None": None,
}


@pytest.mark.parametrize("bad", list(BAD_INPUTS))
@pytest.mark.parametrize("op", ALL)
def test_input_wrong_type(op, bad):
    expect_error(op, {"input": BAD_INPUTS[bad]}, TypeError, "input")


PARAM_BAD = {
    "int": lambda v: v.astype(np.int32),
    "bool": lambda v: v > 0,
    "complex": lambda v: v.astype(np.complex128),
    "object": lambda v: v.astype(object),
    "str": lambda v: "weights",
}


def _param_cases():
    for op in ALL:
        names = [k for k in base_args(op) if k in ("weight", "bias", "running_mean",
                                                     "running_var")]
        for name in names:
            for bad in PARAM_BAD:
                yield op, name, bad


@pytest.mark.parametrize("op,name,bad", list(_param_cases()))
def test_param_wrong_type(op, name, bad):
    expect_error(op, {name: lambda a: PARAM_BAD[bad](a[name])}, TypeError, name)


@pytest.mark.parametrize("op", STATS_OPS)
@pytest.mark.parametrize("name", ["running_mean", "running_var"])
def test_running_stats_wrong_type_in_eval(op, name):
    mode = {"training": False} if op == "batch_norm" else {"use_input_stats": False}
    expect_error(op, {name: lambda a: a[name].astype(np.int64), **mode}, TypeError, name)


@pytest.mark.parametrize("op", ALL)
def test_out_wrong_type(op):
    expect_error(op, {"out": [0.0] * 60}, TypeError, "out")


# ---- ValueError: rank


@pytest.mark.parametrize("shape", [(), (3,)], ids=str)
@pytest.mark.parametrize("op", ["batch_norm", "group_norm"])
def test_wrong_rank(op, shape):
    x = np.ones(shape, np.float32)
    over = {"input": x, "weight": None, "bias": None}
    if op == "batch_norm":
        over.update(running_mean=None, running_var=None)
    if op == "group_norm":
        over["num_groups"] = 1
    expect_error(op, over, ValueError, "input")


@pytest.mark.parametrize("shape", [(), (3,), (4, 3)], ids=str)
def test_instance_norm_wrong_rank(shape):
    x = np.ones(shape, np.float32)
    expect_error("instance_norm", {"input": x, "weight": None, "bias": None,
                                   "running_mean": None, "running_var": None},
                 ValueError, "input")


# ---- ValueError: parameter and statistic lengths


def _wrong_len(name, n):
    return {name: lambda a: np.resize(a[name], n)}


@pytest.mark.parametrize("n", [2, 4, 0])
@pytest.mark.parametrize("name", ["weight", "bias", "running_mean", "running_var"])
@pytest.mark.parametrize("op", STATS_OPS)
def test_stats_op_param_length(op, name, n):
    expect_error(op, _wrong_len(name, n), ValueError, name)


@pytest.mark.parametrize("op", STATS_OPS)
@pytest.mark.parametrize("name", ["running_mean", "running_var"])
def test_running_stats_length_in_eval(op, name):
    mode = {"training": False} if op == "batch_norm" else {"use_input_stats": False}
    expect_error(op, {**_wrong_len(name, 4), **mode}, ValueError, name)


@pytest.mark.parametrize("name", ["weight", "bias", "running_mean", "running_var"])
@pytest.mark.parametrize("op", STATS_OPS)
def test_param_two_dimensional(op, name):
    expect_error(op, {name: lambda a: a[name].reshape(3, 1)}, ValueError, name)


@pytest.mark.parametrize("n", [5, 7, 12])
@pytest.mark.parametrize("name", ["weight", "bias"])
def test_group_norm_param_length(name, n):
    expect_error("group_norm", _wrong_len(name, n), ValueError, name)


@pytest.mark.parametrize("shape", [(5,), (15,), (5, 3), (1, 3, 5), (3, 6)], ids=str)
@pytest.mark.parametrize("op,name", [("layer_norm", "weight"), ("layer_norm", "bias"),
                                     ("rms_norm", "weight")])
def test_row_op_param_shape(op, name, shape):
    expect_error(op, {name: np.ones(shape)}, ValueError, name)


# ---- ValueError: num_groups, normalized_shape


@pytest.mark.parametrize("g", [0, -1, -3, 4, 5, 7, 12])
def test_num_groups(g):
    expect_error("group_norm", {"num_groups": g}, ValueError, "num_groups")


@pytest.mark.parametrize("ns", [(4, 5), (5, 3), 4, (2, 3, 5, 1), (1, 2, 3, 5), (3, 0),
                                (3, -5), ()], ids=str)
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_normalized_shape(op, ns):
    # weight/bias are left out so that only normalized_shape can be wrong
    expect_error(op, {"normalized_shape": ns, "weight": None,
                      **({"bias": None} if op == "layer_norm" else {})},
                 ValueError, "normalized_shape")


# ---- ValueError: eps and momentum


@pytest.mark.parametrize("eps", [-1e-5, -1.0, float("nan"), float("-inf")])
@pytest.mark.parametrize("op", ALL)
def test_eps(op, eps):
    expect_error(op, {"eps": eps}, ValueError, "eps")


@pytest.mark.parametrize("momentum", [-0.1, 1.0001, 2.0, float("nan"), float("inf")])
@pytest.mark.parametrize("op", STATS_OPS)
def test_momentum(op, momentum):
    expect_error(op, {"momentum": momentum}, ValueError, "momentum")


# ---- ValueError: out


@pytest.mark.parametrize("kind", ["shape", "transposed_shape", "dtype", "f16_dtype", "readonly",
                                  "readonly_input_in_place"])
@pytest.mark.parametrize("op", ALL)
def test_out(op, kind):
    def make_out(a):
        x = a["input"]
        if kind == "shape":
            return np.empty(x.shape[:-1] + (x.shape[-1] + 1,), x.dtype)
        if kind == "transposed_shape":
            return np.empty(x.shape[::-1], x.dtype)
        if kind == "dtype":
            return np.empty(x.shape, np.float64)
        if kind == "f16_dtype":
            return np.empty(x.shape, np.float16)
        if kind == "readonly":
            return _readonly(np.empty_like(x))
        x.flags.writeable = False  # out=input where input is read-only
        return x

    expect_error(op, {"out": make_out}, ValueError, "out")


# ---- ValueError: running statistics


@pytest.mark.parametrize("name", ["running_mean", "running_var"])
@pytest.mark.parametrize("op", STATS_OPS)
def test_readonly_running_stats_in_training(op, name):
    """A read-only statistic is an error in training, and the other one is not updated."""
    expect_error(op, {name: lambda a: _readonly(a[name])}, ValueError, name)


@pytest.mark.parametrize("shape", [(1, 3), (1, 3, 1), (1, 3, 1, 1), (1, 3, 1, 1, 1)], ids=str)
def test_one_value_per_channel_in_training(shape):
    x = np.ones(shape, np.float32)
    expect_error("batch_norm", {"input": x}, ValueError, "input")
    expect_error("batch_norm", {"input": x, "running_mean": None, "running_var": None},
                 ValueError, "input")


@pytest.mark.parametrize("op", STATS_OPS)
def test_eval_without_running_stats(op):
    mode = {"training": False} if op == "batch_norm" else {"use_input_stats": False}
    expect_error(op, {"running_mean": None, "running_var": None, **mode}, ValueError,
                 "running_mean")


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("op", STATS_OPS)
def test_only_one_running_stat(op, training):
    mode = {"training": training} if op == "batch_norm" else {"use_input_stats": training}
    expect_error(op, {"running_var": None, **mode}, ValueError, "running_var")
    expect_error(op, {"running_mean": None, **mode}, ValueError, "running_mean")


# ---- a failed call changes nothing, even when out is the input or one statistic is valid

ATOMIC_CASES = [
    ("batch_norm", {"out": lambda a: a["input"], "momentum": 1.5}, "momentum"),
    ("batch_norm", {"out": lambda a: a["input"], "running_var": lambda a: _readonly(
        a["running_var"])}, "running_var"),
    ("batch_norm", {"out": lambda a: a["input"], "bias": lambda a: np.resize(a["bias"], 4)},
     "bias"),
    ("batch_norm", {"out": lambda a: a["input"], "eps": -1.0}, "eps"),
    ("batch_norm", {"running_var": lambda a: np.resize(a["running_var"], 2)}, "running_var"),
    ("instance_norm", {"out": lambda a: a["input"], "running_var": lambda a: _readonly(
        a["running_var"])}, "running_var"),
    ("instance_norm", {"out": lambda a: a["input"], "weight": lambda a: np.ones(4)}, "weight"),
    ("instance_norm", {"out": lambda a: a["input"], "momentum": float("nan")}, "momentum"),
    ("group_norm", {"out": lambda a: a["input"], "weight": lambda a: np.ones(5)}, "weight"),
    ("group_norm", {"out": lambda a: a["input"], "num_groups": 4}, "num_groups"),
    ("layer_norm", {"out": lambda a: a["input"], "bias": lambda a: np.ones(5)}, "bias"),
    ("layer_norm", {"out": lambda a: a["input"], "eps": float("nan")}, "eps"),
    ("rms_norm", {"out": lambda a: a["input"], "weight": lambda a: np.ones((5, 3))}, "weight"),
]


@pytest.mark.parametrize("op,over,name", ATOMIC_CASES)
def test_failed_call_changes_nothing(op, over, name):
    expect_error(op, over, ValueError, name)


def test_failed_call_with_wrong_type_in_place_changes_nothing():
    expect_error("batch_norm", {"out": lambda a: a["input"],
                                "bias": lambda a: a["bias"].astype(np.int32)}, TypeError, "bias")


def test_nothing_changes_after_repeated_failures():
    args = base_args("batch_norm")
    snap = _snapshot(args)
    for _ in range(3):
        with pytest.raises(ValueError, match="momentum"):
            nc.batch_norm(**{**args, "momentum": -1.0})
    _assert_unchanged(args, snap)
    nc.batch_norm(**args)  # a good call still works afterwards
    assert not np.array_equal(args["running_mean"], snap["running_mean"])


# ---- NaN propagates where the math says so, and nowhere else

NAN_AT = (1, 2, 3)  # (n, c, s) of the NaN


def _nan_input(dtype, layout, shape=(3, 6, 17)):
    rng = np.random.default_rng(11)
    x = rng.standard_normal(shape).astype(dtype)
    x[NAN_AT] = np.nan
    return to_layout(x, layout)


def _assert_nan_pattern(y, y_ref, dtype, expected_nan):
    assert np.array_equal(np.isnan(y), expected_nan), np.argwhere(np.isnan(y) != expected_nan)
    rtol, atol = ref.tolerance(dtype)
    np.testing.assert_allclose(y[~expected_nan].astype(np.float64), y_ref[~expected_nan],
                               rtol=rtol, atol=atol)


NAN_LAYOUTS = ["contiguous", "channels_last", "sliced"]
NAN_DTYPES = [np.float16, np.float32, np.float64]


@pytest.mark.parametrize("layout", NAN_LAYOUTS)
@pytest.mark.parametrize("dtype", NAN_DTYPES)
def test_nan_batch_norm_training(dtype, layout):
    """A NaN poisons its channel's batch statistics, so that channel for every sample; with
    nonfinite="propagate" the running statistics take the NaN too (PyTorch's behaviour)."""
    x = _nan_input(dtype, layout)
    rm, rv = np.zeros(6), np.ones(6)
    y_ref, rm_ref, rv_ref = ref.batch_norm(x, rm, rv, training=True)
    y = nc.batch_norm(x, rm, rv, training=True, nonfinite="propagate")
    expected = np.zeros(x.shape, bool)
    expected[:, NAN_AT[1]] = True
    _assert_nan_pattern(y, y_ref, dtype, expected)
    stat_nan = np.arange(6) == NAN_AT[1]
    assert np.array_equal(np.isnan(rm), stat_nan) and np.array_equal(np.isnan(rv), stat_nan)
    np.testing.assert_allclose(rm[~stat_nan], rm_ref[~stat_nan], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rv[~stat_nan], rv_ref[~stat_nan], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout", NAN_LAYOUTS)
@pytest.mark.parametrize("dtype", NAN_DTYPES)
def test_nan_batch_norm_eval(dtype, layout):
    x = _nan_input(dtype, layout)
    rm, rv = np.linspace(-1, 1, 6), np.linspace(0.5, 2, 6)
    y_ref, _, _ = ref.batch_norm(x, rm, rv)
    expected = np.zeros(x.shape, bool)
    expected[NAN_AT] = True
    _assert_nan_pattern(nc.batch_norm(x, rm, rv), y_ref, dtype, expected)


@pytest.mark.parametrize("layout", NAN_LAYOUTS)
@pytest.mark.parametrize("dtype", NAN_DTYPES)
def test_nan_instance_norm(dtype, layout):
    """Only the (sample, channel) with the NaN; with nonfinite="propagate", the running stats
    of that channel only."""
    x = _nan_input(dtype, layout)
    expected = np.zeros(x.shape, bool)
    expected[NAN_AT[:2]] = True
    y_ref, _, _ = ref.instance_norm(x)
    _assert_nan_pattern(nc.instance_norm(x), y_ref, dtype, expected)
    rm, rv = np.zeros(6, np.float32), np.ones(6, np.float32)
    y_ref, rm_ref, rv_ref = ref.instance_norm(x, rm, rv)
    _assert_nan_pattern(nc.instance_norm(x, rm, rv, nonfinite="propagate"), y_ref, dtype,
                        expected)
    stat_nan = np.arange(6) == NAN_AT[1]
    assert np.array_equal(np.isnan(rm), stat_nan) and np.array_equal(np.isnan(rv), stat_nan)
    np.testing.assert_allclose(rm[~stat_nan], rm_ref[~stat_nan], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rv[~stat_nan], rv_ref[~stat_nan], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout", NAN_LAYOUTS)
@pytest.mark.parametrize("dtype", NAN_DTYPES)
def test_nan_group_norm(dtype, layout):
    """Only the (sample, group) with the NaN: channels 2 and 3 of sample 1 for 3 groups."""
    x = _nan_input(dtype, layout)
    expected = np.zeros(x.shape, bool)
    expected[NAN_AT[0], 2:4] = True
    _assert_nan_pattern(nc.group_norm(x, 3), ref.group_norm(x, 3), dtype, expected)


@pytest.mark.parametrize("layout", NAN_LAYOUTS)
@pytest.mark.parametrize("dtype", NAN_DTYPES)
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_nan_row_ops(op, dtype, layout):
    """Only the row with the NaN, for rows of one or two trailing dims."""
    x = _nan_input(dtype, layout)
    for ns, nan_index in ((17, NAN_AT[:2]), ((6, 17), NAN_AT[:1])):
        expected = np.zeros(x.shape, bool)
        expected[nan_index] = True
        y = getattr(nc, op)(x, ns)
        _assert_nan_pattern(y, getattr(ref, op)(x, ns), dtype, expected)


@pytest.mark.parametrize("op", ["batch_norm", "instance_norm", "group_norm", "layer_norm"])
def test_nan_in_param_only_poisons_its_channel(op):
    x = np.random.default_rng(3).standard_normal((2, 6, 9))
    w = np.ones(6)
    w[4] = np.nan
    if op == "batch_norm":
        y = nc.batch_norm(x, None, None, w, training=True)
    elif op == "instance_norm":
        y = nc.instance_norm(x, None, None, w)
    elif op == "group_norm":
        y = nc.group_norm(x, 2, w)
    else:
        y = nc.layer_norm(x.transpose(0, 2, 1), 6, w).transpose(0, 2, 1)
    expected = np.zeros(x.shape, bool)
    expected[:, 4] = True
    assert np.array_equal(np.isnan(y), expected)


@pytest.mark.parametrize("op", ["batch_norm", "instance_norm"])
@pytest.mark.parametrize("layout", NAN_LAYOUTS)
def test_nan_batch_statistics_raise_by_default(op, layout):
    """By default a non-finite batch statistic raises before the running stats change."""
    x = _nan_input(np.float32, layout)
    rm, rv = np.linspace(-1, 1, 6), np.linspace(1, 2, 6)
    rm0, rv0 = rm.copy(), rv.copy()
    fn = getattr(nc, op)
    with pytest.raises(ValueError, match="non-finite batch statistics.*running_mean"):
        fn(x, rm, rv, None, None, True)
    assert np.array_equal(rm, rm0) and np.array_equal(rv, rv0)
    with pytest.raises(ValueError, match="nonfinite"):
        fn(x, rm, rv, None, None, True, nonfinite="ignore")
    with pytest.raises(TypeError, match="nonfinite"):
        fn(x, rm, rv, None, None, True, nonfinite=None)
    x_inf = np.ones((2, 3, 4), np.float32)
    x_inf[0, 1, 2] = np.inf
    with pytest.raises(ValueError, match="channel 1"):
        fn(x_inf, np.zeros(3), np.ones(3), None, None, True)


# The compiled entry points (normcpp._core) parse their arguments themselves: every argument
# is required, by position or by name, and a bad call is a TypeError naming the problem.
CORE_ARGS = {
    "batch_norm": ["input", "running_mean", "running_var", "weight", "bias", "training",
                   "momentum", "eps", "out", "nonfinite", "activation"],
    "instance_norm": ["input", "running_mean", "running_var", "weight", "bias",
                      "use_input_stats", "momentum", "eps", "out", "nonfinite"],
    "group_norm": ["input", "num_groups", "weight", "bias", "eps", "out", "activation"],
    "layer_norm": ["input", "normalized_shape", "weight", "bias", "eps", "out", "activation"],
    "rms_norm": ["input", "normalized_shape", "weight", "eps", "out"],
}


def core_values(op):
    a = base_args(op)
    defaults = {"out": None, "nonfinite": "raise", "activation": None, "bias": None,
                "training": True, "use_input_stats": True}
    return [a.get(name, defaults.get(name)) for name in CORE_ARGS[op]]


@pytest.mark.parametrize("forward", [False, True])
@pytest.mark.parametrize("op", list(CORE_ARGS))
def test_core_argument_parsing(op, forward):
    from normcpp import _core

    fn = getattr(_core, op + ("_forward" if forward else ""))
    names, values = CORE_ARGS[op], core_values(op)
    want = fn(*values)
    # by name, in any order, and mixed
    got = fn(**dict(zip(reversed(names), reversed(values))))
    got2 = fn(*values[:2], **dict(zip(names[2:], values[2:])))
    for g in (got, got2):
        for a, b in zip(want if forward else [want], g if forward else [g]):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(TypeError, match=f"missing required argument '{names[-1]}'"):
        fn(*values[:-1])
    with pytest.raises(TypeError, match=f"missing required argument '{names[0]}'"):
        fn(**dict(zip(names[1:], values[1:])))
    with pytest.raises(TypeError, match="positional arguments but"):
        fn(*values, None)
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        fn(*values, bogus=1)
    with pytest.raises(TypeError, match=f"multiple values for argument '{names[1]}'"):
        fn(*values, **{names[1]: values[1]})
    # the argument checks inside still name the argument
    bad = list(values)
    bad[0] = "not an array"
    with pytest.raises(TypeError, match="input"):
        fn(*bad)
