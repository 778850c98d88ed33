"""Malformed calls, exhaustively: a matrix over every public function and module.

Each case builds one call (fresh arrays every time) and states what must happen:

* ``raise``: ``TypeError``/``ValueError`` (as the case says) whose message names the argument
  (``match``), and afterwards nothing changed: the inputs, the outputs the call was not asked
  to write, the running statistics, every module's parameters and buffers (values *and* array
  identity), its mode, its gradients and what its next ``backward`` returns.
* ``ok_or_raise``: a legal but hostile call (``out`` aliasing a parameter, odd strides,
  zero-size dims, huge fake shapes): either it raises the stated error (with a message naming
  the argument, and nothing changed) or it returns the correct result. A silent wrong answer
  or a crash is a bug.

Cases that show a known core bug carry ``xfail(strict=True)`` with the reproducer in the
reason (see ``KNOWN_BUGS``); strict, so that a fix turns them into failures to remove.
``test_matrix_size_and_coverage`` checks that the matrix has at least 60 calls and reaches
every callable in ``normcpp.__all__``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

import normcpp as nc
import numpy as np
import pytest
import reference as ref
from numpy.lib.stride_tricks import as_strided

F16, F32, F64 = np.float16, np.float32, np.float64

# ---------------------------------------------------------------------------------- builders


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def xin(shape=(4, 3, 5), dtype=F32, seed=0) -> np.ndarray:
    """A fresh random input."""
    return _rng(seed).standard_normal(shape).astype(dtype)


def vec(n=3, dtype=F32, lo=0.5, hi=2.0, seed=1) -> np.ndarray:
    """A fresh per-channel vector with values in [lo, hi)."""
    return _rng(seed).uniform(lo, hi, n).astype(dtype)


def stats(n=3, dtype=F32) -> tuple[np.ndarray, np.ndarray]:
    """Fresh (running_mean, running_var)."""
    return vec(n, dtype, -1.0, 1.0, seed=2), vec(n, dtype, 0.5, 2.0, seed=3)


def readonly(a: np.ndarray) -> np.ndarray:
    a = np.array(a)
    a.flags.writeable = False
    return a


def odd_stride(a: np.ndarray) -> np.ndarray:
    """``a``'s values in a view whose strides are not multiples of the item size (a field of a
    packed structured array)."""
    packed = np.zeros(a.shape, dtype=np.dtype([("pad", "u1"), ("v", a.dtype)]))
    packed["v"] = a
    view = packed["v"]
    assert any(s % view.itemsize for s in view.strides)
    return view


def zero_stride(shape, dtype=F32) -> np.ndarray:
    """A *writeable* array of ``shape`` whose elements all share one memory location."""
    return as_strided(np.zeros(1, dtype), shape=shape, strides=(0,) * len(shape))


def huge(shape, dtype=F32) -> np.ndarray:
    """A fake array of a huge shape that takes no memory (zero strides, read-only)."""
    a = as_strided(np.zeros(1, dtype), shape=shape, strides=(0,) * len(shape))
    a.flags.writeable = False
    return a


def overlapping_pair(shape, dtype=F32, shift=3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(input, out, buffer)``: input and out are C-contiguous views of one buffer that
    overlap partially (out starts ``shift`` elements after input)."""
    size = int(np.prod(shape))
    buf = _rng(5).standard_normal(size + shift).astype(dtype)
    return buf[:size].reshape(shape), buf[shift:shift + size].reshape(shape), buf


def trained(module, x: np.ndarray):
    """Run one good forward so that the module has something to differentiate; returns the
    gradient that probes its ``backward`` before and after a bad call."""
    module(x)
    return np.ones_like(x)


# ------------------------------------------------------------------------------ the harness


@dataclass
class Call:
    """One call: ``fn(*args, **kwargs)``, and what must not change if it raises."""

    fn: Callable[..., Any]
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    #: Extra arrays that must not change (memory that an argument aliases).
    watch: tuple = ()
    #: (module, grad_output) pairs: the module's state must not change, and
    #: ``module.backward(grad_output)`` (if grad_output is not None) must return the same.
    modules: tuple = ()
    #: Arrays the call was asked to write (``out``): they may change when it raises.
    may_change: tuple = ()
    #: ok_or_raise: checks the result of a call that did not raise.
    check: Callable[[Any], None] | None = None


@dataclass
class Case:
    id: str
    targets: tuple[str, ...]  # the public names this call exercises
    build: Callable[[], Call]
    exc: Any
    match: str
    kind: str = "raise"


CASES: list[Case] = []


def case(id: str, targets: str, exc: Any = ValueError, match: str = "", kind: str = "raise"):
    """Register ``build`` (a function returning a :class:`Call`) as a case."""

    def deco(build: Callable[[], Call]) -> Callable[[], Call]:
        assert all(c.id != id for c in CASES), f"duplicate case id {id}"
        CASES.append(Case(id, tuple(targets.split()), build, exc, match, kind))
        return build

    return deco


_SNAPSHOT_LIMIT = 10**7  # fake huge (zero-stride) arrays are watched through their buffer


def _arrays(obj: Any, path: str):
    """Every ndarray inside ``obj`` (tuples, lists and dict values included), with a path."""
    if isinstance(obj, np.ndarray):
        yield path, obj
    elif isinstance(obj, (tuple, list)):
        for i, item in enumerate(obj):
            yield from _arrays(item, f"{path}[{i}]")
    elif isinstance(obj, dict):
        for k, item in obj.items():
            yield from _arrays(item, f"{path}[{k!r}]")


def _module_state(module, grad_output) -> dict[str, Any]:
    state: dict[str, Any] = {"training": module.training, "repr": repr(module),
                             "frozen": getattr(module, "frozen", None)}
    for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        a = getattr(module, name, None)
        state[name] = None if a is None else (id(a), a.dtype, a.shape, np.array(a, copy=True))
    for name in ("grad_weight", "grad_bias"):
        a = getattr(module, name, None)
        state[name] = None if a is None else np.array(a, copy=True)
    if grad_output is not None:
        dx = module.backward(grad_output)
        state["backward"] = (np.array(dx, copy=True),
                             None if module.grad_weight is None else module.grad_weight.copy(),
                             None if module.grad_bias is None else module.grad_bias.copy())
        # the probe itself set the gradients: they are the reference from here on
        state["grad_weight"], state["grad_bias"] = state["backward"][1:]
    return state


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
            return False
        return (a.shape == b.shape and a.dtype == b.dtype
                and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def _snapshot(call: Call):
    skip = {id(a) for a in call.may_change}
    arrays = []
    for path, a in _arrays((call.args, call.kwargs, call.watch), "call"):
        if id(a) in skip or a.size > _SNAPSHOT_LIMIT:
            continue
        arrays.append((path, a, np.array(a, copy=True)))
    modules = [(m, g, _module_state(m, g)) for m, g in call.modules]
    return arrays, modules


def _assert_unchanged(snapshot) -> None:
    arrays, modules = snapshot
    for path, a, before in arrays:
        assert _equal(np.asarray(a), before), f"{path} changed by a failed call"
    for m, g, before in modules:
        after = _module_state(m, g)
        for key in before:
            assert _equal(after[key], before[key]), (
                f"{type(m).__name__}.{key} changed by a failed call")


def run_case(c: Case) -> None:
    call = c.build()
    snap = _snapshot(call)
    if c.kind == "raise":
        with pytest.raises(c.exc, match=c.match):
            call.fn(*call.args, **call.kwargs)
        _assert_unchanged(snap)
        return
    assert c.kind == "ok_or_raise" and call.check is not None
    try:
        result = call.fn(*call.args, **call.kwargs)
    except c.exc as exc:  # a clear refusal is fine ...
        assert re.search(c.match, str(exc)), f"{exc!r} does not match {c.match!r}"
        _assert_unchanged(snap)
    else:  # ... and so is the right answer; a wrong one is not
        call.check(result)


def close(actual, expected, dtype=F32) -> None:
    rtol, atol = ref.tolerance(dtype)
    np.testing.assert_allclose(np.asarray(actual, dtype=F64), np.asarray(expected, dtype=F64),
                               rtol=rtol * 10, atol=atol * 10)


# =============================================================================================
# A. out aliasing a parameter or a running statistic, overlapping out, shared statistics
# =============================================================================================


def _stats_alias(op: str, alias: str, forward: bool = False):
    """Training with ``out`` laid over ``running_mean``/``running_var``: the statistics update
    and the output cannot both be right, so this must raise before writing anything."""

    def build() -> Call:
        if op == "batch_norm":
            x = xin((2, 4), seed=11)
        else:
            x = xin((2, 4, 3), seed=11)
        buf = np.zeros(x.size, F32)
        rm, rv = stats(4)
        if alias == "running_mean":
            rm = buf[:4]
            rm[:] = stats(4)[0]
        else:
            rv = buf[4:8]
            rv[:] = stats(4)[1]
        fn = getattr(nc, op + ("_forward" if forward else ""))
        mode = {"training": True} if op == "batch_norm" else {"use_input_stats": True}
        return Call(fn, (x, rm, rv), dict(mode, out=buf.reshape(x.shape)), watch=(buf,))

    return build


for _op, _alias, _fwd in [("batch_norm", "running_mean", False),
                          ("batch_norm", "running_var", True),
                          ("instance_norm", "running_mean", True),
                          ("instance_norm", "running_var", False)]:
    _name = _op + ("_forward" if _fwd else "")
    case(f"{_name}-train-out-aliases-{_alias}", _name, ValueError, _alias)(
        _stats_alias(_op, _alias, _fwd))


@case("BatchNorm2d-train-out-aliases-running_mean", "BatchNorm2d", ValueError, "running_mean")
def _():
    m = nc.BatchNorm2d(4)
    x = xin((1, 4, 1, 2), seed=4)
    trained(m, xin((2, 4, 1, 2), seed=5))
    # re-seat running_mean on the memory of the output
    buf = np.zeros(8, F32)
    buf[:4] = m.running_mean
    m.running_mean = buf[:4]
    return Call(m, (x,), {"out": buf.reshape(1, 4, 1, 2)}, watch=(buf,), modules=((m, None),))


def _shared_stats(op: str, how: str):
    def build() -> Call:
        x = xin((2, 3, 4), seed=6)
        if how == "same":
            rm = rv = np.ones(3, F32)
        elif how == "partial":
            buf = np.ones(4, F32)
            rm, rv = buf[0:3], buf[1:4]
        else:  # one statistic whose channels share one float
            rm, rv = zero_stride((3,)), np.ones(3, F32)
        mode = {"training": True} if op == "batch_norm" else {"use_input_stats": True}
        return Call(getattr(nc, op), (x, rm, rv), mode)

    return build


case("batch_norm-train-running_mean-is-running_var", "batch_norm", ValueError,
     "running_(mean|var)")(_shared_stats("batch_norm", "same"))
case("instance_norm-train-running_mean-overlaps-running_var", "instance_norm", ValueError,
     "running_(mean|var)")(_shared_stats("instance_norm", "partial"))
case("batch_norm-train-running_mean-internal-overlap", "batch_norm", ValueError,
     "running_mean")(_shared_stats("batch_norm", "zero_stride"))


def _param_alias(op: str, param: str, rows: int = 64):
    """``out`` laid over a parameter that the op only reads: either a ValueError naming the
    two, or exactly the result computed from the original parameter values."""

    def build() -> Call:
        c = 16
        if op in ("layer_norm", "rms_norm") or op == "batch_norm_eval":
            x = xin((rows, c), F64, seed=7)
        else:
            x = xin((rows // 4, c, 4), F64, seed=7)
        buf = np.zeros(x.size, F64)
        p = buf[:c]
        p[:] = vec(c, F64, 0.5, 2.0, seed=8) if param == "running_var" else vec(c, F64, -2.0, 2.0,
                                                                                seed=8)
        saved = p.copy()
        args: dict[str, Any] = {}
        if op == "batch_norm_eval":
            rm, rv = vec(c, F64, -1, 1, seed=9), vec(c, F64, 0.5, 2, seed=10)
            if param == "running_mean":
                rm = p
            args = {"running_mean": rm, "running_var": rv, "weight": None if param == "running_mean"
                        else p, "training": False}
            fn = nc.batch_norm

            def expected():
                kw = dict(args)
                kw["running_mean" if param == "running_mean" else "weight"] = saved
                return ref.batch_norm(x, **kw)[0]
        elif op == "instance_norm_eval":
            rm, rv = vec(c, F64, -1, 1, seed=9), vec(c, F64, 0.5, 2, seed=10)
            rv = p if param == "running_var" else rv
            args = {"running_mean": rm, "running_var": rv, "use_input_stats": False}
            fn = nc.instance_norm

            def expected():
                return ref.instance_norm(x, rm, saved, use_input_stats=False)[0]
        elif op == "batch_norm":
            args = {param: p, "training": True}
            fn = nc.batch_norm

            def expected():
                return ref.batch_norm(x, **{param: saved, "training": True})[0]
        elif op == "instance_norm":
            args = {param: p}
            fn = nc.instance_norm

            def expected():
                return ref.instance_norm(x, **{param: saved})[0]
        elif op == "group_norm":
            args = {"num_groups": 4, param: p}
            fn = nc.group_norm

            def expected():
                return ref.group_norm(x, 4, **{param: saved})
        else:
            args = {"normalized_shape": c, param: p}
            fn = getattr(nc, op)

            def expected():
                return getattr(ref, op)(x, c, **{param: saved})

        out = buf.reshape(x.shape)

        def check(result):
            assert result is out
            close(out, expected(), F64)

        return Call(fn, (x,), dict(args, out=out), watch=(buf,), may_change=(out,), check=check)

    return build


for _op, _param in [("batch_norm", "weight"), ("batch_norm", "bias"), ("instance_norm", "weight"),
                    ("group_norm", "weight"), ("group_norm", "bias"), ("layer_norm", "weight"),
                    ("layer_norm", "bias"), ("rms_norm", "weight"),
                    ("batch_norm_eval", "running_mean"), ("batch_norm_eval", "weight"),
                    ("instance_norm_eval", "running_var")]:
    _target = _op.replace("_eval", "")
    case(f"{_op}-out-aliases-{_param}", _target, ValueError, f"out|{_param}",
         kind="ok_or_raise")(_param_alias(_op, _param))


@case("batch_norm-train-input-aliases-running_mean", "batch_norm", ValueError,
      "input|running_mean", kind="ok_or_raise")
def _():
    """The input lives where the running mean is updated: the output must come from the input
    as it was, and the running mean must be the right update of its old values."""
    buf = xin((24,), seed=12)
    x = buf.reshape(8, 3)
    rm, rv = buf[:3], np.ones(3, F32)
    x0, rm0 = x.copy(), rm.copy()
    y_ref, rm_ref, rv_ref = ref.batch_norm(x0, rm0, np.ones(3), training=True)

    def check(y):
        close(y, y_ref)
        close(rv, rv_ref)
        close(buf[:3], rm_ref)

    return Call(nc.batch_norm, (x, rm, rv), {"training": True}, watch=(buf,), check=check)


# overlapping out and input (a partial overlap, or the same memory as another view)

_FWD_CALLS = {
    "batch_norm": lambda x, **kw: nc.batch_norm(x, None, None, training=True, **kw),
    "batch_norm_forward": lambda x, **kw: nc.batch_norm_forward(x, None, None, training=True,
                                                                **kw),
    "instance_norm": lambda x, **kw: nc.instance_norm(x, **kw),
    "instance_norm_forward": lambda x, **kw: nc.instance_norm_forward(x, **kw),
    "group_norm": lambda x, **kw: nc.group_norm(x, 3, **kw),
    "group_norm_forward": lambda x, **kw: nc.group_norm_forward(x, 3, **kw),
    "layer_norm": lambda x, **kw: nc.layer_norm(x, x.shape[-1], **kw),
    "layer_norm_forward": lambda x, **kw: nc.layer_norm_forward(x, x.shape[-1], **kw),
    "rms_norm": lambda x, **kw: nc.rms_norm(x, x.shape[-1], **kw),
    "rms_norm_forward": lambda x, **kw: nc.rms_norm_forward(x, x.shape[-1], **kw),
}


def _overlap(op: str, how: str):
    def build() -> Call:
        shape = (4, 6, 5)
        if how == "partial":
            x, out, buf = overlapping_pair(shape)
        elif how == "reversed":  # same memory, a view with negative strides
            x = xin(shape)
            buf = x
            out = x[::-1, ::-1, ::-1]
        elif how == "channels_last_view":  # same memory, other strides
            x = xin(shape)
            buf = x
            out = x.reshape(4, 5, 6).transpose(0, 2, 1)
        elif how == "internal":  # out whose elements share one float
            x = xin(shape)
            buf = x
            out = zero_stride(shape)
        else:  # read-only out
            x = xin(shape)
            buf = x
            out = readonly(np.zeros(shape, F32))
        fn = _FWD_CALLS[op]
        return Call(lambda x, out: fn(x, out=out), (x, out), watch=(buf,))

    return build


for _op in ["batch_norm", "instance_norm_forward", "group_norm", "layer_norm_forward", "rms_norm"]:
    case(f"{_op}-out-partially-overlaps-input", _op, ValueError, "out")(_overlap(_op, "partial"))
for _op in ["batch_norm_forward", "instance_norm", "group_norm_forward", "layer_norm",
            "rms_norm_forward"]:
    case(f"{_op}-out-read-only", _op, ValueError, "out")(_overlap(_op, "readonly"))
case("layer_norm-out-reversed-view-of-input", "layer_norm", ValueError, "out")(
    _overlap("layer_norm", "reversed"))
case("batch_norm-out-other-view-of-input", "batch_norm", ValueError, "out")(
    _overlap("batch_norm", "channels_last_view"))
case("group_norm-out-internal-overlap", "group_norm", ValueError, "out")(
    _overlap("group_norm", "internal"))


# =============================================================================================
# B. wrong types and dtypes (the *_forward, stats and backward entry points; the plain ops'
#    input/param types are in test_bad_input.py)
# =============================================================================================

x_ = xin  # short alias for the tables below

TYPE_CASES = [
    ("batch_norm_stats-int-input", "batch_norm_stats", TypeError, "input",
     lambda: Call(nc.batch_norm_stats, (np.ones((4, 3), np.int32),))),
    ("batch_norm_forward-complex-input", "batch_norm_forward", TypeError, "input",
     lambda: Call(nc.batch_norm_forward, (x_().astype(np.complex64),), {"training": True})),
    ("batch_norm_forward-big-endian-input", "batch_norm_forward", TypeError, "input",
     lambda: Call(nc.batch_norm_forward, (x_().astype(">f4"),), {"training": True})),
    ("batch_norm-big-endian-weight", "batch_norm", TypeError, "weight",
     lambda: Call(nc.batch_norm, (x_(), None, None, np.ones(3, ">f8")), {"training": True})),
    ("instance_norm_forward-int-running_mean", "instance_norm_forward", TypeError,
     "running_mean",
     lambda: Call(nc.instance_norm_forward, (x_(), np.zeros(3, np.int64), np.ones(3, F32)))),
    ("instance_norm-float16-weight", "instance_norm", TypeError, "weight",
     lambda: Call(nc.instance_norm, (x_(), None, None, np.ones(3, F16)))),
    ("group_norm_forward-complex-weight", "group_norm_forward", TypeError, "weight",
     lambda: Call(nc.group_norm_forward, (x_((2, 6, 5)), 3, np.ones(6, np.complex128)))),
    ("layer_norm_forward-str-normalized_shape", "layer_norm_forward", TypeError,
     "normalized_shape", lambda: Call(nc.layer_norm_forward, (x_(), "5"))),
    ("layer_norm-float-normalized_shape", "layer_norm", TypeError, "normalized_shape",
     lambda: Call(nc.layer_norm, (x_(), [5.0]))),
    ("layer_norm-None-normalized_shape", "layer_norm", TypeError, "normalized_shape",
     lambda: Call(nc.layer_norm, (x_(), None))),
    ("rms_norm_forward-str-eps", "rms_norm_forward", TypeError, "eps",
     lambda: Call(nc.rms_norm_forward, (x_(), 5), {"eps": "1e-6"})),
    ("batch_norm-None-training", "batch_norm", TypeError, "training",
     lambda: Call(nc.batch_norm, (x_(), *stats()), {"training": None})),
    ("batch_norm-int2-training", "batch_norm", TypeError, "training",
     lambda: Call(nc.batch_norm, (x_(), *stats()), {"training": 2})),
    ("instance_norm-str-use_input_stats", "instance_norm", TypeError, "use_input_stats",
     lambda: Call(nc.instance_norm, (x_(), *stats()), {"use_input_stats": "yes"})),
    ("group_norm-float-num_groups", "group_norm", TypeError, "num_groups",
     lambda: Call(nc.group_norm, (x_((2, 6, 5)), 3.0))),
    ("group_norm-bool-num_groups", "group_norm", TypeError, "num_groups",
     lambda: Call(nc.group_norm, (x_((2, 6, 5)), True))),
    ("batch_norm-str-momentum", "batch_norm", TypeError, "momentum",
     lambda: Call(nc.batch_norm, (x_(), *stats()), {"training": True, "momentum": "0.1"})),
    ("batch_norm-None-momentum", "batch_norm", TypeError, "momentum",
     lambda: Call(nc.batch_norm, (x_(), *stats()), {"training": True, "momentum": None})),
    ("batch_norm-complex-eps", "batch_norm", TypeError, "eps",
     lambda: Call(nc.batch_norm, (x_(), *stats()), {"training": True, "eps": 1e-5j})),
    ("batch_norm_forward-int-nonfinite", "batch_norm_forward", TypeError, "nonfinite",
     lambda: Call(nc.batch_norm_forward, (x_(), *stats()), {"training": True, "nonfinite": 1})),
    ("instance_norm_forward-bad-nonfinite", "instance_norm_forward", ValueError, "nonfinite",
     lambda: Call(nc.instance_norm_forward, (x_(), *stats()), {"nonfinite": "warn"})),
]

# ---------------------------------------------------------------- ranks, lengths, values

SHAPE_CASES = [
    ("batch_norm_stats-1d-input", "batch_norm_stats", ValueError, "input",
     lambda: Call(nc.batch_norm_stats, (np.ones(3, F32),))),
    ("batch_norm_forward-2d-weight", "batch_norm_forward", ValueError, "weight",
     lambda: Call(nc.batch_norm_forward, (x_(), None, None, np.ones((3, 1), F32)),
                  {"training": True})),
    ("batch_norm_forward-long-running_var", "batch_norm_forward", ValueError, "running_var",
     lambda: Call(nc.batch_norm_forward, (x_(), np.zeros(3, F32), np.ones(4, F32)),
                  {"training": True})),
    ("instance_norm_forward-2d-input", "instance_norm_forward", ValueError, "input",
     lambda: Call(nc.instance_norm_forward, (np.ones((4, 3), F32),))),
    ("group_norm_forward-1d-input", "group_norm_forward", ValueError, "input",
     lambda: Call(nc.group_norm_forward, (np.ones(6, F32), 3))),
    ("group_norm_forward-zero-num_groups", "group_norm_forward", ValueError, "num_groups",
     lambda: Call(nc.group_norm_forward, (x_((2, 6, 5)), 0))),
    ("group_norm_forward-negative-num_groups", "group_norm_forward", ValueError, "num_groups",
     lambda: Call(nc.group_norm_forward, (x_((2, 6, 5)), -2**62))),
    ("layer_norm_forward-normalized_shape-longer-than-input", "layer_norm_forward",
     ValueError, "normalized_shape",
     lambda: Call(nc.layer_norm_forward, (x_((3, 5)), (2, 3, 5)))),
    ("rms_norm_forward-weight-transposed", "rms_norm_forward", ValueError, "weight",
     lambda: Call(nc.rms_norm_forward, (x_((2, 3, 5)), (3, 5), np.ones((5, 3))))),
    ("instance_norm-one-value-per-instance", "instance_norm", ValueError, "input",
     lambda: Call(nc.instance_norm, (np.ones((2, 3, 1), F32), *stats()))),
    ("batch_norm_forward-readonly-running_mean", "batch_norm_forward", ValueError,
     "running_mean",
     lambda: Call(nc.batch_norm_forward, (x_(), readonly(np.zeros(3, F32)), np.ones(3, F32)),
                  {"training": True})),
]

# ------------------------------------------------------------------------ NaN / inf values


def _nan_x(shape=(4, 3, 5), where=(1, 2, 3), value=np.nan, dtype=F32):
    x = xin(shape, dtype)
    x[where] = value
    return x


VALUE_CASES = [
    ("group_norm-inf-eps", "group_norm", ValueError, "eps",
     lambda: Call(nc.group_norm, (x_((2, 6, 5)), 3), {"eps": float("inf")})),
    ("layer_norm_forward-inf-eps", "layer_norm_forward", ValueError, "eps",
     lambda: Call(nc.layer_norm_forward, (x_(), 5), {"eps": float("inf")})),
    ("rms_norm-nan-eps", "rms_norm", ValueError, "eps",
     lambda: Call(nc.rms_norm, (x_(), 5), {"eps": float("nan")})),
    ("batch_norm_forward-nan-momentum", "batch_norm_forward", ValueError, "momentum",
     lambda: Call(nc.batch_norm_forward, (x_(), *stats()), {"training": True,
                                                           "momentum": float("nan")})),
    ("instance_norm_forward-train-inf-batch", "instance_norm_forward", ValueError,
     "running_mean",
     lambda: Call(nc.instance_norm_forward, (_nan_x(value=np.inf), *stats()))),
]


def _nan_in_place(op: str, value: float):
    """A non-finite batch statistic in training raises: also when ``out`` is the input, whose
    values must then still be the input's (a failed call changes nothing)."""

    def build() -> Call:
        x = _nan_x(value=value)
        rm, rv = stats()
        mode = {"training": True} if op.startswith("batch") else {"use_input_stats": True}
        return Call(getattr(nc, op), (x, rm, rv), dict(mode, out=x))

    return build


case("batch_norm-train-nan-batch-in-place", "batch_norm", ValueError, "running_mean")(
    _nan_in_place("batch_norm", np.nan))
case("instance_norm-train-inf-batch-in-place", "instance_norm", ValueError, "running_mean")(
    _nan_in_place("instance_norm", -np.inf))


@case("batch_norm_forward-train-nan-batch-separate-out", "batch_norm_forward", ValueError,
      "running_mean")
def _():
    x = _nan_x(dtype=F64)
    out = np.zeros_like(x)
    return Call(nc.batch_norm_forward, (x, *stats(3, F64)), {"training": True, "out": out},
                may_change=(out,))


# ------------------------------------------------------------------- backward entry points


def _bwd_args(kind: str, **over):
    """Valid arguments of one backward function, with ``over`` replacing some."""
    x = xin((4, 6, 5), F64, seed=20)
    g = xin((4, 6, 5), F64, seed=21)
    if kind == "batch":
        _, m, r = nc.batch_norm_forward(x, None, None, np.ones(6), None, True)
        a = {"grad_output": g, "input": x, "weight": np.ones(6), "save_mean": m, "save_invstd": r}
    elif kind == "instance":
        _, m, r = nc.instance_norm_forward(x)
        a = {"grad_output": g, "input": x, "weight": np.ones(6), "save_mean": m, "save_invstd": r}
    elif kind == "group":
        _, m, r = nc.group_norm_forward(x, 3)
        a = {"grad_output": g, "input": x, "num_groups": 3, "weight": np.ones(6),
             "save_mean": m, "save_invstd": r}
    elif kind == "layer":
        _, m, r = nc.layer_norm_forward(x, 5)
        a = {"grad_output": g, "input": x, "normalized_shape": 5, "weight": np.ones(5),
             "save_mean": m, "save_invstd": r}
    elif kind == "rms":
        _, r = nc.rms_norm_forward(x, 5)
        a = {"grad_output": g, "input": x, "normalized_shape": 5, "weight": np.ones(5),
             "save_invrms": r}
    elif kind == "reduce":
        _, m, r = nc.batch_norm_forward(x, None, None, None, None, True)
        a = {"grad_output": g, "input": x, "mean": m, "invstd": r}
    else:  # elemt
        _, m, r = nc.batch_norm_forward(x, None, None, None, None, True)
        sd, sx = nc.batch_norm_backward_reduce(g, x, m, r)
        a = {"grad_output": g, "input": x, "weight": np.ones(6), "mean": m, "invstd": r,
             "sum_dy": sd, "sum_dy_xhat": sx, "count": 20}
    a.update({k: (v(a) if callable(v) else v) for k, v in over.items()})
    return a


_BWD_FN = {"batch": "batch_norm_backward", "instance": "instance_norm_backward",
           "group": "group_norm_backward", "layer": "layer_norm_backward",
           "rms": "rms_norm_backward", "reduce": "batch_norm_backward_reduce",
           "elemt": "batch_norm_backward_elemt"}


def _bwd(kind: str, **over):
    return lambda: Call(getattr(nc, _BWD_FN[kind]), (), _bwd_args(kind, **over))


BACKWARD_CASES = [
    ("batch_norm_backward-long-save_mean", "batch", ValueError, "save_mean",
     {"save_mean": np.zeros(7)}),
    ("batch_norm_backward-empty-save_invstd", "batch", ValueError, "save_invstd",
     {"save_invstd": np.zeros(0)}),
    ("instance_norm_backward-per-channel-save_mean", "instance", ValueError, "save_mean",
     {"save_mean": np.zeros(6)}),
    ("group_norm_backward-per-sample-save_invstd", "group", ValueError, "save_invstd",
     {"save_invstd": np.ones(4)}),
    ("layer_norm_backward-short-save_mean", "layer", ValueError, "save_mean",
     {"save_mean": np.zeros(23)}),
    ("rms_norm_backward-long-save_invrms", "rms", ValueError, "save_invrms",
     {"save_invrms": np.ones(25)}),
    ("batch_norm_backward_reduce-short-mean", "reduce", ValueError, "mean",
     {"mean": np.zeros(5)}),
    ("batch_norm_backward_elemt-long-sum_dy", "elemt", ValueError, "sum_dy",
     {"sum_dy": np.zeros(12)}),
    ("batch_norm_backward_elemt-str-sum_dy_xhat", "elemt", TypeError, "sum_dy_xhat",
     {"sum_dy_xhat": "0"}),
    ("batch_norm_backward-str-save_mean", "batch", TypeError, "save_mean",
     {"save_mean": "mean"}),
    ("instance_norm_backward-complex-save_invstd", "instance", TypeError, "save_invstd",
     {"save_invstd": lambda a: a["save_invstd"].astype(np.complex128)}),
    ("group_norm_backward-object-save_mean", "group", TypeError, "save_mean",
     {"save_mean": lambda a: a["save_mean"].astype(object)}),
    ("rms_norm_backward-None-save_invrms", "rms", TypeError, "save_invrms",
     {"save_invrms": None}),
    ("batch_norm_backward-grad_output-shape", "batch", ValueError, "grad_output",
     {"grad_output": np.ones((4, 6, 4))}),
    ("layer_norm_backward-grad_output-dtype", "layer", TypeError, "grad_output",
     {"grad_output": lambda a: a["grad_output"].astype(F32)}),
    ("instance_norm_backward-grad_output-None", "instance", TypeError, "grad_output",
     {"grad_output": None}),
    ("group_norm_backward-short-weight", "group", ValueError, "weight",
     {"weight": np.ones(5)}),
    ("rms_norm_backward-weight-shape", "rms", ValueError, "weight",
     {"weight": np.ones((1, 5))}),
    ("batch_norm_backward_elemt-long-weight", "elemt", ValueError, "weight",
     {"weight": np.ones(7)}),
    ("batch_norm_backward-str-has_bias", "batch", TypeError, "has_bias",
     {"has_bias": "yes"}),
    ("group_norm_backward-num_groups-not-dividing", "group", ValueError, "num_groups",
     {"num_groups": 4}),
    ("group_norm_backward-huge-num_groups", "group", ValueError, "num_groups",
     {"num_groups": 2**62}),
    ("layer_norm_backward-normalized_shape-mismatch", "layer", ValueError, "normalized_shape",
     {"normalized_shape": (6, 4)}),
    ("batch_norm_backward_reduce-int-input", "reduce", TypeError, "input",
     {"input": lambda a: a["input"].astype(np.int64)}),
    ("batch_norm_backward_elemt-zero-count", "elemt", ValueError, "count",
     {"count": 0}),
    ("batch_norm_backward_elemt-nan-count", "elemt", ValueError, "count",
     {"count": float("nan")}),
    ("batch_norm_backward_elemt-inf-count", "elemt", ValueError, "count",
     {"count": float("inf")}),
    ("batch_norm_backward_elemt-str-count", "elemt", TypeError, "count",
     {"count": "20"}),
]


@case("batch_norm_backward-str-training", "batch_norm_backward", TypeError, "training")
def _():
    a = _bwd_args("batch")
    return Call(nc.batch_norm_backward, (), dict(a, training="no"))


for _id, _kind, _exc, _match, _over in BACKWARD_CASES:
    case(_id, _BWD_FN[_kind], _exc, _match)(_bwd(_kind, **_over))

for _id, _target, _exc, _match, _build in TYPE_CASES + SHAPE_CASES + VALUE_CASES:
    case(_id, _target, _exc, _match)(_build)


# =============================================================================================
# D. strides: every odd layout either works exactly or is refused clearly
# =============================================================================================


def _stride_case(what: str):
    def build() -> Call:
        x = xin((4, 3, 5), F64, seed=30)
        w, b = vec(3, F64, seed=31), vec(3, F64, -1, 1, seed=32)
        rm, rv = stats(3, F64)
        if what == "weight":
            wv = odd_stride(w)
            return Call(nc.batch_norm, (x, None, None, wv, b), {"training": True},
                        check=lambda y: close(y, ref.batch_norm(x, None, None, w, b, True)[0],
                                              F64))
        if what == "running_mean-eval":
            rmv = odd_stride(rm)
            return Call(nc.batch_norm, (x, rmv, rv),
                        check=lambda y: close(y, ref.batch_norm(x, rm, rv)[0], F64))
        if what == "running_var-train":
            rvv = odd_stride(rv)
            _, rm_ref, rv_ref = ref.batch_norm(x, rm, rv, training=True)

            def check(y):
                close(rm_l, rm_ref, F64)
                close(rvv, rv_ref, F64)
            rm_l = rm.copy()
            return Call(nc.batch_norm, (x, rm_l, rvv), {"training": True}, check=check)
        if what == "running_mean-negative-stride":
            buf = np.zeros(6)
            rmn = buf[::-2]
            rmn[:] = rm
            _, rm_ref, _ = ref.batch_norm(x, rm, rv, training=True)
            return Call(nc.batch_norm, (x, rmn, rv.copy()), {"training": True},
                        check=lambda y: (close(rmn, rm_ref, F64),
                                         np.testing.assert_array_equal(buf[0::2], 0)))
        if what == "layer_norm-weight":
            w5 = vec(5, F64, seed=33)
            return Call(nc.layer_norm, (x, 5, odd_stride(w5)),
                        check=lambda y: close(y, ref.layer_norm(x, 5, w5), F64))
        if what == "input":
            return Call(nc.group_norm, (odd_stride(x), 3),
                        check=lambda y: close(y, ref.group_norm(x, 3), F64))
        if what == "out":
            out = odd_stride(np.zeros_like(x))

            def check(y):
                assert y is out
                close(out, ref.instance_norm(x)[0], F64)
            return Call(nc.instance_norm, (x,), {"out": out}, may_change=(out,), check=check)
        if what == "out-negative":
            out = np.zeros_like(x)[::-1, :, ::-1]
            return Call(nc.rms_norm, (x, 5), {"out": out}, may_change=(out,),
                        check=lambda y: close(out, ref.rms_norm(x, 5), F64))
        if what == "grad_output":
            a = _bwd_args("layer")
            expected = nc.layer_norm_backward(**a)
            a["grad_output"] = odd_stride(a["grad_output"])
            return Call(nc.layer_norm_backward, (), a,
                        check=lambda r: [close(u, v, F64) for u, v in zip(r, expected)])
        if what == "save_mean":
            a = _bwd_args("batch")
            expected = nc.batch_norm_backward(**a)
            a["save_mean"] = odd_stride(a["save_mean"])
            return Call(nc.batch_norm_backward, (), a,
                        check=lambda r: [close(u, v, F64) for u, v in zip(r, expected)])
        if what == "weight-broadcast":
            wb = np.broadcast_to(np.float64(1.5), (3,))
            return Call(nc.instance_norm, (x, None, None, wb),
                        check=lambda y: close(y, ref.instance_norm(x, None, None, wb)[0], F64))
        assert what == "input-broadcast"
        xb = np.broadcast_to(np.arange(5.0), (4, 3, 5))
        return Call(nc.batch_norm, (xb, rm, rv),
                    check=lambda y: close(y, ref.batch_norm(xb, rm, rv)[0], F64))

    return build


for _what, _target, _match in [
        ("weight", "batch_norm", "weight"), ("running_mean-eval", "batch_norm", "running_mean"),
        ("running_var-train", "batch_norm", "running_var"),
        ("running_mean-negative-stride", "batch_norm", "running_mean"),
        ("layer_norm-weight", "layer_norm", "weight"), ("input", "group_norm", "input"),
        ("out", "instance_norm", "out"), ("out-negative", "rms_norm", "out"),
        ("grad_output", "layer_norm_backward", "grad_output"),
        ("save_mean", "batch_norm_backward", "save_mean"),
        ("weight-broadcast", "instance_norm", "weight"),
        ("input-broadcast", "batch_norm", "input")]:
    case(f"stride-{_what}", _target, ValueError, _match, kind="ok_or_raise")(_stride_case(_what))


# =============================================================================================
# E. huge dims: fake shapes (zero strides) and sizes whose products overflow int64
# =============================================================================================

# A clear refusal of a huge size: ValueError or MemoryError whose message names the argument
# or says how much it tried to allocate ("std::bad_alloc" alone is not clear).


def _clear(name: str) -> str:
    return rf"{name}|Unable to allocate \d"


def _refuse_huge(fn, *args, **kwargs):
    def build() -> Call:
        return Call(fn, args, kwargs)

    return build


HUGE_X = (2**20, 3, 2**20)  # 3.3e12 elements, 12 TiB as float32, in one float of memory
HUGE_ROWS = (2**30, 2**30)  # 2**60 elements

HUGE_CASES = [
    ("batch_norm-huge-fake-input", "batch_norm", "input",
     lambda: Call(nc.batch_norm, (huge(HUGE_X), None, None), {"training": True})),
    ("instance_norm_forward-huge-fake-input", "instance_norm_forward", "input",
     lambda: Call(nc.instance_norm_forward, (huge(HUGE_X),))),
    ("layer_norm-huge-fake-input", "layer_norm", "input",
     lambda: Call(nc.layer_norm, (huge(HUGE_ROWS), 2**30))),
    ("rms_norm_forward-huge-fake-input", "rms_norm_forward", "input",
     lambda: Call(nc.rms_norm_forward, (huge(HUGE_ROWS, F16), 2**30))),
    ("batch_norm_stats-huge-fake-input", "batch_norm_stats", "input",
     lambda: Call(nc.batch_norm_stats, (huge(HUGE_X),))),
    ("group_norm_backward-huge-fake-input", "group_norm_backward", "input",
     lambda: Call(nc.group_norm_backward, (huge(HUGE_X), huge(HUGE_X), 3, None,
                                           np.zeros(2**20 * 3), np.ones(2**20 * 3)))),
    # N * num_groups = 2 * 2**62 overflows int64 (the saved statistics have that size)
    ("group_norm_forward-num_groups-overflows-int64", "group_norm_forward", "num_groups",
     lambda: Call(nc.group_norm_forward, (xin((2, 4, 3)), 2**62))),
    ("group_norm-num_groups-beyond-int64", "group_norm", "num_groups",
     lambda: Call(nc.group_norm, (xin((2, 4, 3)), 2**70))),
    ("layer_norm-normalized_shape-beyond-int64", "layer_norm", "normalized_shape",
     lambda: Call(nc.layer_norm, (xin((2, 4, 3)), 2**70))),
    ("layer_norm_backward-normalized_shape-overflows-int64", "layer_norm_backward",
     "normalized_shape",
     lambda: Call(nc.layer_norm_backward, (), _bwd_args("layer", normalized_shape=(2**32,
                                                                                    2**32)))),
    ("BatchNorm1d-num_features-overflows", "BatchNorm1d", "num_features",
     lambda: Call(nc.BatchNorm1d, (2**62,))),
    ("LayerNorm-normalized_shape-product-overflows-int64", "LayerNorm", "normalized_shape",
     lambda: Call(nc.LayerNorm, ((2**32, 2**32),))),
    ("GroupNorm-num_channels-overflows", "GroupNorm", "num_channels",
     lambda: Call(nc.GroupNorm, (1, 2**62))),
    ("RMSNorm-normalized_shape-beyond-int64", "RMSNorm", "normalized_shape",
     lambda: Call(nc.RMSNorm, (2**64,))),
    ("set_num_threads-beyond-int32", "set_num_threads", r"\bn (must|is)",
     lambda: Call(nc.set_num_threads, (2**31,))),
    ("set_num_threads-beyond-int64", "set_num_threads", r"\bn (must|is)",
     lambda: Call(nc.set_num_threads, (2**70,))),
]

for _id, _target, _name, _build in HUGE_CASES:
    _exc = (ValueError, MemoryError) if _target != "set_num_threads" else (ValueError, TypeError)
    case(_id, _target, _exc, _clear(_name))(_build)


def _empty_huge(op: str):
    """An empty input with one huge dim needs no memory: it must work (an empty result) or be
    refused clearly."""

    def build() -> Call:
        if op == "batch_norm":
            x = np.empty((0, 2**60), F32)
            return Call(nc.batch_norm, (x, None, None), {"training": True},
                        check=lambda y: (y.shape == x.shape) or pytest.fail(str(y.shape)))
        if op == "instance_norm":
            x = np.empty((0, 2**40, 3), F32)
            return Call(nc.instance_norm, (x,),
                        check=lambda y: (y.shape == x.shape) or pytest.fail(str(y.shape)))
        if op == "group_norm":
            x = np.empty((2**40, 3, 0), F32)
            return Call(nc.group_norm, (x, 3),
                        check=lambda y: (y.shape == x.shape) or pytest.fail(str(y.shape)))
        x = np.empty((2**40, 0), F32)
        return Call(nc.layer_norm, (x, 0),
                    check=lambda y: (y.shape == x.shape) or pytest.fail(str(y.shape)))

    return build


for _op, _match in [("batch_norm", "input"), ("instance_norm", "input"),
                    ("group_norm", "input"), ("layer_norm", "input|normalized_shape")]:
    case(f"{_op}-empty-input-with-a-huge-dim", _op, (ValueError, MemoryError), _clear(_match),
         kind="ok_or_raise")(_empty_huge(_op))


# =============================================================================================
# F. zero-size dims: every op works (an empty result, nothing else touched) or says "input"
# =============================================================================================

ZERO_SHAPES = [(0, 6, 5), (4, 6, 0), (4, 0, 5)]


def _zero_size(name: str, shape):
    def build() -> Call:
        x = np.zeros(shape, F32)
        c = shape[1]
        rm, rv = stats(c) if c else (np.zeros(0, F32), np.ones(0, F32))
        rm0, rv0 = rm.copy(), rv.copy()
        rows = int(np.prod(shape[:-1]))
        fwd = {
            "batch_norm": (nc.batch_norm, (x, rm, rv), {"training": True}),
            "batch_norm_forward": (nc.batch_norm_forward, (x, rm, rv, None, None, False), {}),
            "instance_norm": (nc.instance_norm, (x, rm, rv), {}),
            "instance_norm_forward": (nc.instance_norm_forward, (x,), {}),
            "group_norm": (nc.group_norm, (x, 3 if c else 1), {}),
            "group_norm_forward": (nc.group_norm_forward, (x, 1), {}),
            "layer_norm": (nc.layer_norm, (x, shape[-1]), {}),
            "layer_norm_forward": (nc.layer_norm_forward, (x, shape[1:]), {}),
            "rms_norm": (nc.rms_norm, (x, shape[-1]), {}),
            "rms_norm_forward": (nc.rms_norm_forward, (x, shape[-1]), {}),
            "batch_norm_stats": (nc.batch_norm_stats, (x,), {}),
            "batch_norm_backward": (nc.batch_norm_backward,
                                    (x, x, None, np.zeros(c), np.ones(c)), {}),
            "instance_norm_backward": (nc.instance_norm_backward,
                                       (x, x, None, np.zeros(shape[0] * c),
                                        np.ones(shape[0] * c)), {}),
            "group_norm_backward": (nc.group_norm_backward,
                                    (x, x, 1, None, np.zeros(shape[0]), np.ones(shape[0])), {}),
            "layer_norm_backward": (nc.layer_norm_backward,
                                    (x, x, shape[-1], None, np.zeros(rows), np.ones(rows)), {}),
            "rms_norm_backward": (nc.rms_norm_backward, (x, x, shape[-1], None, np.ones(rows)),
                                  {}),
            "batch_norm_backward_reduce": (nc.batch_norm_backward_reduce,
                                           (x, x, np.zeros(c), np.ones(c)), {}),
            "batch_norm_backward_elemt": (nc.batch_norm_backward_elemt,
                                          (x, x, None, np.zeros(c), np.ones(c), np.zeros(c),
                                           np.zeros(c), 2), {}),
        }
        fn, args, kwargs = fwd[name]

        def check(result):
            first = result[0] if isinstance(result, tuple) else result
            if name not in ("batch_norm_stats", "batch_norm_backward_reduce"):
                assert first.shape == shape and first.dtype == x.dtype
            # an empty batch updates no running statistics
            np.testing.assert_array_equal(rm, rm0)
            np.testing.assert_array_equal(rv, rv0)

        return Call(fn, args, kwargs, check=check)

    return build


for _name in ["batch_norm", "batch_norm_forward", "instance_norm", "instance_norm_forward",
              "group_norm", "group_norm_forward", "layer_norm", "layer_norm_forward", "rms_norm",
              "rms_norm_forward", "batch_norm_stats", "batch_norm_backward",
              "instance_norm_backward", "group_norm_backward", "layer_norm_backward",
              "rms_norm_backward", "batch_norm_backward_reduce", "batch_norm_backward_elemt"]:
    for _shape in ZERO_SHAPES:
        case(f"{_name}-zero-size-{'x'.join(map(str, _shape))}", _name, ValueError, "input",
             kind="ok_or_raise")(_zero_size(_name, _shape))


@case("BatchNorm2d-train-zero-size-batch", "BatchNorm2d", ValueError, "input",
      kind="ok_or_raise")
def _():
    m = nc.BatchNorm2d(3)
    m(xin((2, 3, 2, 2)))
    rm, rv = m.running_mean.copy(), m.running_var.copy()
    x = np.zeros((0, 3, 2, 2), F32)

    def check(y):
        assert y.shape == x.shape
        np.testing.assert_array_equal(m.running_mean, rm)
        np.testing.assert_array_equal(m.running_var, rv)

    return Call(m, (x,), modules=((m, None),), check=check)


@case("LayerNorm-zero-size-batch", "LayerNorm", ValueError, "input", kind="ok_or_raise")
def _():
    m = nc.LayerNorm((3, 4))
    x = np.zeros((0, 3, 4), F32)
    return Call(m, (x,), check=lambda y: (y.shape == x.shape) or pytest.fail(str(y.shape)))


# =============================================================================================
# G. modules: construction, forward, backward, mode
# =============================================================================================


def _module_call(make, x, bad, grad=True, **kwargs):
    """``bad(module)`` after one good forward of ``make()`` on ``x``; module state watched."""

    def build() -> Call:
        m = make()
        g = trained(m, x) if grad else None
        fn, args, kw = bad(m)
        return Call(fn, args, dict(kw, **kwargs), modules=((m, g),))

    return build


X2 = xin((4, 3), seed=40)
X3 = xin((4, 3, 5), seed=41)
X4 = xin((2, 3, 4, 4), seed=42)
X5 = xin((2, 3, 2, 2, 2), seed=43)

MODULE_CASES = [
    ("BatchNorm2d-3d-input", "BatchNorm2d", ValueError, "input",
     _module_call(lambda: nc.BatchNorm2d(3), X4, lambda m: (m, (X3,), {}))),
    ("BatchNorm1d-channel-mismatch", "BatchNorm1d", ValueError, "num_features",
     _module_call(lambda: nc.BatchNorm1d(3), X3, lambda m: (m, (xin((4, 5)),), {}))),
    ("BatchNorm3d-int-input", "BatchNorm3d", TypeError, "input",
     _module_call(lambda: nc.BatchNorm3d(3), X5, lambda m: (m, (X5.astype(np.int32),), {}))),
    ("BatchNormNd-1d-input", "BatchNormNd", ValueError, "input",
     _module_call(lambda: nc.BatchNormNd(3), X3, lambda m: (m, (np.ones(3, F32),), {}))),
    ("GroupNorm-channel-mismatch", "GroupNorm", ValueError, "num_channels",
     _module_call(lambda: nc.GroupNorm(3, 3), X3, lambda m: (m, (xin((4, 6, 5)),), {}))),
    ("LayerNorm-trailing-mismatch", "LayerNorm", ValueError, "normalized_shape",
     _module_call(lambda: nc.LayerNorm((3, 5)), X3, lambda m: (m, (xin((4, 5, 3)),), {}))),
    ("RMSNorm-list-input", "RMSNorm", TypeError, "input",
     _module_call(lambda: nc.RMSNorm(5), X3, lambda m: (m, (X3.tolist(),), {}))),
    ("InstanceNorm2d-2d-input", "InstanceNorm2d", ValueError, "input",
     _module_call(lambda: nc.InstanceNorm2d(3), X4, lambda m: (m, (X2,), {}))),
    ("InstanceNorm1d-unbatched-list-out", "InstanceNorm1d", TypeError, "out",
     _module_call(lambda: nc.InstanceNorm1d(3), X3, lambda m: (m, (X3[0],), {"out": [0.0] * 15}))),
    ("LayerNorm-read-only-out", "LayerNorm", ValueError, "out",
     _module_call(lambda: nc.LayerNorm(5), X3,
                  lambda m: (m, (X3,), {"out": readonly(np.zeros_like(X3))}))),
    ("GroupNorm-backward-grad_output-shape", "GroupNorm", ValueError, "grad_output",
     _module_call(lambda: nc.GroupNorm(3, 3), X3, lambda m: (m.backward, (np.ones((4, 3, 4),
                                                                                  F32),), {}))),
    ("RMSNorm-backward-grad_output-dtype", "RMSNorm", TypeError, "grad_output",
     _module_call(lambda: nc.RMSNorm(5), X3, lambda m: (m.backward, (np.ones((4, 3, 5)),), {}))),
    ("BatchNorm1d-backward-list-grad_output", "BatchNorm1d", TypeError, "grad_output",
     _module_call(lambda: nc.BatchNorm1d(3), X3,
                  lambda m: (m.backward, (np.ones((4, 3, 5)).tolist(),), {}))),
    ("InstanceNorm3d-train-str-mode", "InstanceNorm3d", TypeError, "mode",
     _module_call(lambda: nc.InstanceNorm3d(3, affine=True), X5,
                  lambda m: (m.train, ("yes",), {}))),
    ("BatchNorm2d-weight-replaced-wrong-length", "BatchNorm2d", ValueError, "weight",
     _module_call(lambda: nc.BatchNorm2d(3), X4,
                  lambda m: (setattr(m, "weight", np.ones(4, F32)) or m, (X4,), {}))),
    ("BatchNorm2d-train-read-only-running_mean", "BatchNorm2d", ValueError, "running_mean",
     _module_call(lambda: nc.BatchNorm2d(3), X4,
                  lambda m: (setattr(m, "running_mean", readonly(m.running_mean)) or m, (X4,),
                             {}))),
    ("BatchNorm1d-train-one-value-per-channel", "BatchNorm1d", ValueError, "input",
     _module_call(lambda: nc.BatchNorm1d(3), X2, lambda m: (m, (xin((1, 3)),), {}))),
    ("BatchNorm3d-freeze-without-running-stats", "BatchNorm3d", ValueError, "running",
     _module_call(lambda: nc.BatchNorm3d(3, track_running_stats=False), X5,
                  lambda m: (m.freeze, (), {}))),
    ("BatchNorm2d-train-nan-batch", "BatchNorm2d", ValueError, "running_mean",
     _module_call(lambda: nc.BatchNorm2d(3), X4,
                  lambda m: (m, (_nan_x((2, 3, 4, 4), (1, 2, 3, 3)),), {}))),
    ("InstanceNorm1d-train-inf-batch", "InstanceNorm1d", ValueError, "running_mean",
     _module_call(lambda: nc.InstanceNorm1d(3, track_running_stats=True), X3,
                  lambda m: (m, (_nan_x(value=-np.inf),), {}))),
    ("BatchNorm1d-eval-out-partially-overlaps-input", "BatchNorm1d", ValueError, "out",
     _module_call(lambda: nc.BatchNorm1d(6).eval(), X3[:, :1].repeat(6, 1),
                  lambda m: (lambda x, o: m(x, out=o), overlapping_pair((4, 6, 5))[:2], {}))),
]

for _id, _target, _exc, _match, _build in MODULE_CASES:
    case(_id, _target, _exc, _match)(_build)

CONSTRUCTOR_CASES = [
    ("Module-int-dtype", "Module", TypeError, "dtype", lambda: Call(nc.Module, (),
                                                                   {"dtype": np.int32})),
    ("Module-float16-dtype", "Module", TypeError, "dtype", lambda: Call(nc.Module, (),
                                                                       {"dtype": F16})),
    ("BatchNorm1d-zero-num_features", "BatchNorm1d", ValueError, "num_features",
     lambda: Call(nc.BatchNorm1d, (0,))),
    ("BatchNorm2d-float-num_features", "BatchNorm2d", TypeError, "num_features",
     lambda: Call(nc.BatchNorm2d, (3.0,))),
    ("BatchNorm3d-momentum-above-1", "BatchNorm3d", ValueError, "momentum",
     lambda: Call(nc.BatchNorm3d, (3,), {"momentum": 1.5})),
    ("BatchNorm1d-nan-momentum", "BatchNorm1d", ValueError, "momentum",
     lambda: Call(nc.BatchNorm1d, (3,), {"momentum": float("nan")})),
    ("BatchNormNd-negative-eps", "BatchNormNd", ValueError, "eps",
     lambda: Call(nc.BatchNormNd, (3,), {"eps": -1e-5})),
    ("InstanceNorm1d-str-eps", "InstanceNorm1d", TypeError, "eps",
     lambda: Call(nc.InstanceNorm1d, (3,), {"eps": "1e-5"})),
    ("InstanceNorm2d-int-dtype", "InstanceNorm2d", TypeError, "dtype",
     lambda: Call(nc.InstanceNorm2d, (3,), {"dtype": np.int64})),
    ("GroupNorm-groups-not-dividing", "GroupNorm", ValueError, "num_groups",
     lambda: Call(nc.GroupNorm, (4, 6))),
    ("GroupNorm-zero-num_groups", "GroupNorm", ValueError, "num_groups",
     lambda: Call(nc.GroupNorm, (0, 6))),
    ("LayerNorm-empty-normalized_shape", "LayerNorm", ValueError, "normalized_shape",
     lambda: Call(nc.LayerNorm, ((),))),
    ("LayerNorm-str-normalized_shape", "LayerNorm", TypeError, "normalized_shape",
     lambda: Call(nc.LayerNorm, ("8",))),
    ("LayerNorm-inf-eps", "LayerNorm", ValueError, "eps",
     lambda: Call(nc.LayerNorm, (4,), {"eps": float("inf")})),
    ("RMSNorm-str-eps", "RMSNorm", TypeError, "eps",
     lambda: Call(nc.RMSNorm, (4,), {"eps": "x"})),
    ("RMSNorm-negative-normalized_shape", "RMSNorm", ValueError, "normalized_shape",
     lambda: Call(nc.RMSNorm, ((4, -1),))),
]

for _id, _target, _exc, _match, _build in CONSTRUCTOR_CASES:
    case(_id, _target, _exc, _match)(_build)


# =============================================================================================
# H. state_dicts: wrong ones change nothing, and the module works as before afterwards
# =============================================================================================


def _load(make, x, sd_edit, strict=True):
    def build() -> Call:
        m = make()
        g = trained(m, x)
        sd = m.state_dict()
        for k, v in list(sd.items()):  # valid values that differ from the current ones
            if k != "num_batches_tracked":
                sd[k] = v + 0.25
        sd = sd_edit(sd)
        return Call(m.load_state_dict, (sd,), {"strict": strict}, modules=((m, g),))

    return build


def _set(**kv):
    def edit(sd):
        for k, v in kv.items():
            sd[k] = v(sd[k]) if callable(v) else v
        return sd

    return edit


def _drop(key):
    return lambda sd: {k: v for k, v in sd.items() if k != key}


BN = lambda: nc.BatchNorm2d(3)

STATE_CASES = [
    ("BatchNorm2d-load-list", "BatchNorm2d", TypeError, "state_dict",
     _load(BN, X4, lambda sd: list(sd.items()))),
    ("BatchNorm2d-load-missing-running_var", "BatchNorm2d", ValueError, "running_var",
     _load(BN, X4, _drop("running_var"))),
    ("BatchNorm1d-load-unexpected-key", "BatchNorm1d", ValueError, "extra",
     _load(lambda: nc.BatchNorm1d(3), X3, _set(extra=np.zeros(3)))),
    ("BatchNorm3d-load-wrong-shape", "BatchNorm3d", ValueError, "weight",
     _load(lambda: nc.BatchNorm3d(3), X5, _set(weight=np.ones(4)))),
    ("GroupNorm-load-complex", "GroupNorm", TypeError, "bias",
     _load(lambda: nc.GroupNorm(3, 3), X3, _set(bias=lambda v: v.astype(np.complex64)))),
    ("BatchNorm2d-load-strings", "BatchNorm2d", TypeError, "running_mean",
     _load(BN, X4, _set(running_mean=np.array(["0", "0", "0"])))),
    ("BatchNorm2d-load-negative-num_batches_tracked", "BatchNorm2d", ValueError,
     "num_batches_tracked", _load(BN, X4, _set(num_batches_tracked=np.array(-1)))),
    ("BatchNorm2d-load-fractional-num_batches_tracked", "BatchNorm2d", ValueError,
     "num_batches_tracked", _load(BN, X4, _set(num_batches_tracked=np.array(1.5)))),
    ("BatchNorm2d-load-overflows-float32", "BatchNorm2d", ValueError, "running_var",
     _load(BN, X4, _set(running_var=np.full(3, 1e300)))),
    ("BatchNorm2d-load-nan-running_var", "BatchNorm2d", ValueError, "running_var",
     _load(BN, X4, _set(running_var=lambda v: np.where(np.arange(3) == 1, np.nan, v)))),
    ("LayerNorm-load-inf-weight", "LayerNorm", ValueError, "weight",
     _load(lambda: nc.LayerNorm(5), X3, _set(weight=lambda v: v * np.inf))),
    ("InstanceNorm3d-load-wrong-shape-non-strict", "InstanceNorm3d", ValueError, "running_mean",
     _load(lambda: nc.InstanceNorm3d(3, affine=True, track_running_stats=True), X5,
           _set(running_mean=np.zeros((3, 1))), strict=False)),
    ("LayerNorm-load-other-normalized_shape", "LayerNorm", ValueError, "weight",
     _load(lambda: nc.LayerNorm((3, 5)), X3, _set(weight=np.ones(15), bias=np.zeros(15)))),
    ("RMSNorm-load-bias-key", "RMSNorm", ValueError, "bias",
     _load(lambda: nc.RMSNorm(5), X3, _set(bias=np.zeros(5)))),
    ("GroupNorm-load-None-value", "GroupNorm", TypeError, "weight",
     _load(lambda: nc.GroupNorm(1, 3), X3, _set(weight=None))),
    ("InstanceNorm1d-load-weight-without-affine", "InstanceNorm1d", ValueError, "weight",
     _load(lambda: nc.InstanceNorm1d(3), X3, _set(weight=np.ones(3)))),
    ("InstanceNorm2d-load-ragged", "InstanceNorm2d", TypeError, "running_var",
     _load(lambda: nc.InstanceNorm2d(3, track_running_stats=True), X4,
           _set(running_var=[[1.0], [1.0, 2.0], 3.0]))),
    ("BatchNormNd-load-bool", "BatchNormNd", TypeError, "weight",
     _load(lambda: nc.BatchNormNd(3), X3, _set(weight=np.ones(3, bool)))),
]

for _id, _target, _exc, _match, _build in STATE_CASES:
    case(_id, _target, _exc, _match)(_build)


# =============================================================================================
# K. the rest of the public API
# =============================================================================================


class _FakeBN:
    """A BatchNorm look-alike for fold_batchnorm."""

    def __init__(self, c=4, training=False, var=None):
        self.running_mean = np.zeros(c)
        self.running_var = np.ones(c) if var is None else var
        self.weight, self.bias = np.ones(c), np.zeros(c)
        self.eps, self.training = 1e-5, training


def _fold(**over):
    def build() -> Call:
        kw = {"weight": xin((4, 3, 3, 3), F64), "bias": np.zeros(4), "bn": _FakeBN()}
        kw.update({k: (v() if callable(v) else v) for k, v in over.items()})
        watch = (getattr(kw["bn"], "running_mean", None), getattr(kw["bn"], "running_var", None))
        return Call(nc.fold_batchnorm, (), kw, watch=watch)

    return build


def _keras(weights=None, **kw):
    def build() -> Call:
        w = weights() if weights else [np.ones(3), np.zeros(3), np.zeros(3), np.ones(3)]
        return Call(nc.from_keras_batchnorm, (w,), kw)

    return build


def _torch_linear():
    torch = pytest.importorskip("torch")
    return Call(nc.from_torch, (torch.nn.Linear(2, 2),))


def _onnx_call(fn_name, *args):
    def build() -> Call:
        pytest.importorskip("onnx")
        return Call(getattr(nc.onnx, fn_name), args)

    return build


def _normalize(images=None, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), **kw):
    def build() -> Call:
        x = images() if images else np.full((2, 4, 4, 3), 7, np.uint8)
        out = kw.get("out")
        if callable(out):
            kw["out"] = out()
        return Call(nc.normalize, (x, list(mean), list(std)), dict(kw),
                    may_change=(kw["out"],) if "out" in kw else ())

    return build


def _stats_update(batch):
    def build() -> Call:
        st = nc.ChannelStats(3).update(np.arange(24, dtype=np.float32).reshape(2, 3, 4))
        before = tuple(np.array(v, copy=True) for v in (st.count, st.mean, st.var))

        def call():
            try:
                return st.update(batch())
            finally:  # a failed update leaves the statistics as they were
                after = (st.count, st.mean, st.var)
                assert all(np.array_equal(a, b) for a, b in zip(before, after))

        return Call(call)

    return build


OTHER_CASES = [
    ("normalize-int32-images", "normalize", TypeError, "images",
     _normalize(images=lambda: np.zeros((2, 4, 4, 3), np.int32))),
    ("normalize-mean-length", "normalize", ValueError, "mean", _normalize(mean=(0.0, 0.0))),
    ("normalize-zero-std", "normalize", ValueError, "std", _normalize(std=(1.0, 0.0, 1.0))),
    ("normalize-out-dtype", "normalize", TypeError, "out",
     _normalize(out=lambda: np.zeros((2, 3, 4, 4), np.float64))),
    ("ChannelStats-zero-channels", "ChannelStats", ValueError, "num_channels",
     lambda: Call(nc.ChannelStats, (0,))),
    ("ChannelStats-negative-ddof", "ChannelStats", ValueError, "ddof",
     lambda: Call(nc.ChannelStats, (3,), {"ddof": -1})),
    ("ChannelStats-update-wrong-channels", "ChannelStats", ValueError, "channels",
     _stats_update(lambda: np.zeros((2, 4, 5), np.float32))),
    ("ChannelStats-update-str", "ChannelStats", TypeError, "batch", _stats_update(lambda: "a")),
    ("fold_batchnorm-unknown-kind", "fold_batchnorm", ValueError, "kind", _fold(kind="dense")),
    ("fold_batchnorm-zero-groups", "fold_batchnorm", ValueError, "groups", _fold(groups=0)),
    ("fold_batchnorm-int-weight", "fold_batchnorm", TypeError, "weight",
     _fold(weight=lambda: np.ones((4, 3, 3, 3), np.int32))),
    ("fold_batchnorm-bn-in-training", "fold_batchnorm", ValueError, "training",
     _fold(bn=lambda: _FakeBN(training=True))),
    ("fold_batchnorm-channel-mismatch", "fold_batchnorm", ValueError, "channels",
     _fold(bn=lambda: _FakeBN(c=5))),
    ("fold_batchnorm-bias-shape", "fold_batchnorm", ValueError, "bias",
     _fold(bias=lambda: np.zeros(3))),
    ("fold_batchnorm-nan-running_var", "fold_batchnorm", ValueError, "running_var",
     _fold(bn=lambda: _FakeBN(var=np.array([1.0, np.nan, 1.0, 1.0])))),
    ("fold_batchnorm-not-a-bn", "fold_batchnorm", TypeError, "bn", _fold(bn=object)),
    ("from_keras_batchnorm-wrong-count", "from_keras_batchnorm", ValueError, "weights",
     _keras(lambda: [np.ones(3), np.zeros(3), np.ones(3)])),
    ("from_keras_batchnorm-negative-epsilon", "from_keras_batchnorm", ValueError, "epsilon",
     _keras(epsilon=-1e-3)),
    ("from_keras_batchnorm-momentum-above-1", "from_keras_batchnorm", ValueError, "momentum",
     _keras(momentum=2.0)),
    ("from_keras_batchnorm-two-axes", "from_keras_batchnorm", ValueError, "axis",
     _keras(axis=[1, 2])),
    ("from_keras_batchnorm-inf-moving_variance", "from_keras_batchnorm", ValueError,
     "moving_variance",
     _keras(lambda: [np.ones(3), np.zeros(3), np.zeros(3), np.array([1.0, np.inf, 1.0])])),
    ("from_torch-str", "from_torch", TypeError, "from_torch", lambda: Call(nc.from_torch,
                                                                          ("bn",))),
    ("from_torch-not-a-norm", "from_torch", TypeError, "normalization", _torch_linear),
    ("onnx.load_norm_nodes-int", "onnx", TypeError, "path_or_model",
     _onnx_call("load_norm_nodes", 123)),
    ("onnx.run_node-not-a-node", "onnx", TypeError, "node", _onnx_call("run_node", "n", X3)),
    ("config-argument", "config", TypeError, "config", lambda: Call(nc.config, (1,))),
    ("get_num_threads-argument", "get_num_threads", TypeError, "get_num_threads",
     lambda: Call(nc.get_num_threads, (1,))),
    ("set_num_threads-str", "set_num_threads", TypeError, r"\bn must",
     lambda: Call(nc.set_num_threads, ("2",))),
    ("set_num_threads-bool", "set_num_threads", TypeError, r"\bn must",
     lambda: Call(nc.set_num_threads, (True,))),
    ("set_num_threads-zero", "set_num_threads", ValueError, r"\bn must",
     lambda: Call(nc.set_num_threads, (0,))),
]

for _id, _target, _exc, _match, _build in OTHER_CASES:
    case(_id, _target, _exc, _match)(_build)


# ---------------------------------------------------- training helpers and SyncBatchNorm


class _FakeComm:
    """Two ranks in one process: the other rank sends ``remote(payload)`` (by default the
    same payload as this rank, as if both had the same batch)."""

    def __init__(self, remote=None):
        self.remote = remote or (lambda payload: payload)

    def Get_size(self):
        return 2

    def Get_rank(self):
        return 0

    def allgather(self, payload):
        return [payload, self.remote(payload)]


def _sync_module(remote=None):
    m = nc.SyncBatchNorm(3, comm=_FakeComm(remote))
    return m


def _freeze_mixed() -> Call:
    """One freezable BatchNorm and one without running statistics: neither gets frozen."""
    a, b = nc.BatchNorm2d(3), nc.BatchNorm2d(3, track_running_stats=False)
    return Call(nc.freeze_batchnorm, ([a, b],), modules=((a, None), (b, None)))


def _recal(batches, *, make=BN, **kw):
    def build() -> Call:
        m = make()
        g = trained(m, X4)
        return Call(nc.recalibrate, (m, batches()), kw, modules=((m, g),))

    return build


TRAINING_CASES = [
    ("SyncBatchNorm-str-comm", "SyncBatchNorm", TypeError, "comm",
     lambda: Call(nc.SyncBatchNorm, (3,), {"comm": "world"})),
    ("SyncBatchNorm-1d-input", "SyncBatchNorm", ValueError, "input",
     _module_call(lambda: nc.SyncBatchNorm(3), X3, lambda m: (m, (np.ones(3, F32),), {}))),
    ("SyncBatchNorm-from_batchnorm-str", "SyncBatchNorm", TypeError, "bn",
     lambda: Call(nc.SyncBatchNorm.from_batchnorm, ("bn",))),
    ("SyncBatchNorm-other-rank-fails", "SyncBatchNorm", ValueError, "rank 1",
     _module_call(lambda: _sync_module(lambda p: (False, ("ValueError", "bad input"))), X3,
                  lambda m: (m, (X3,), {}), grad=False)),
    ("SyncBatchNorm-train-nan-batch", "SyncBatchNorm", ValueError, "running_mean|non-finite",
     _module_call(_sync_module, X3, lambda m: (m, (_nan_x(),), {}))),
    ("freeze_batchnorm-str", "freeze_batchnorm", TypeError, "modules",
     lambda: Call(nc.freeze_batchnorm, ("bn",))),
    ("freeze_batchnorm-one-without-running-stats", "freeze_batchnorm", ValueError,
     "running statistics",
     lambda: _freeze_mixed()),
    ("unfreeze_batchnorm-int", "unfreeze_batchnorm", TypeError, "modules",
     lambda: Call(nc.unfreeze_batchnorm, (5,))),
    ("recalibrate-junk-batch", "recalibrate", TypeError, "input",
     _recal(lambda: [X4, "junk"])),
    ("recalibrate-no-batches", "recalibrate", ValueError, "batches", _recal(list)),
    ("recalibrate-nan-batch", "recalibrate", ValueError, "running_mean|non-finite",
     _recal(lambda: [X4, _nan_x((2, 3, 4, 4), (1, 1, 2, 2))])),
    ("recalibrate-str-progress", "recalibrate", TypeError, "progress",
     _recal(lambda: [X4], progress="yes")),
    ("recalibrate-model_fn-without-modules", "recalibrate", TypeError, "modules",
     lambda: Call(nc.recalibrate, (lambda b: b, [X4]))),
    ("recalibrate-without-running-stats", "recalibrate", ValueError, "running statistics",
     _recal(lambda: [X4], make=lambda: nc.BatchNorm2d(3, track_running_stats=False))),
]

for _id, _target, _exc, _match, _build in TRAINING_CASES:
    case(_id, _target, _exc, _match)(_build)


# =============================================================================================
# known core bugs (reproducers in the reasons); strict, so a fix shows up as XPASS -> failure
# =============================================================================================

# Case id -> reason, for a bug found and not yet fixed: the case runs as a strict xfail, so a
# fix shows up as a failure that asks for the entry to be removed. (Empty: every bug the
# matrix found so far is fixed.)
KNOWN_BUGS: dict[str, str] = {}


def _params():
    for c in CASES:
        marks = []
        if c.id in KNOWN_BUGS:
            marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[c.id]))
        yield pytest.param(c, id=c.id, marks=marks)


@pytest.fixture(autouse=True)
def _keep_threads():
    n = nc.get_num_threads()
    yield
    nc.set_num_threads(n)


@pytest.mark.parametrize("c", list(_params()))
def test_malformed(c: Case):
    run_case(c)


# =============================================================================================
# calls after a bad load_state_dict, and the size and reach of the matrix
# =============================================================================================


@pytest.mark.parametrize("make,x", [
    (lambda: nc.BatchNorm2d(3), X4), (lambda: nc.InstanceNorm1d(3, affine=True,
                                                                track_running_stats=True), X3),
    (lambda: nc.GroupNorm(3, 3), X3), (lambda: nc.LayerNorm(5), X3), (lambda: nc.RMSNorm(5), X3),
], ids=["BatchNorm2d", "InstanceNorm1d", "GroupNorm", "LayerNorm", "RMSNorm"])
def test_calls_after_bad_load_state_dict(make, x):
    """A load that fails on its last key leaves a module that computes, trains and
    differentiates exactly as an untouched twin does."""
    m, twin = make(), make()
    for mod in (m, twin):
        mod(x)
    sd = {k: v + 0.5 if k != "num_batches_tracked" else v for k, v in m.state_dict().items()}
    last = list(sd)[-1]
    sd[last] = np.full(np.shape(sd[last]), np.nan)
    with pytest.raises(ValueError, match=last):
        m.load_state_dict(sd)
    for mode in ("train", "eval"):
        getattr(m, mode)()
        getattr(twin, mode)()
        y, y_twin = m(x), twin(x)
        np.testing.assert_array_equal(y, y_twin)
        g = np.ones_like(x)
        np.testing.assert_array_equal(m.backward(g), twin.backward(g))
        for a, b in zip(m.state_dict().values(), twin.state_dict().values()):
            np.testing.assert_array_equal(a, b)


def test_matrix_size_and_coverage():
    assert len(CASES) >= 60, len(CASES)
    covered = {t.split(".")[0] for c in CASES for t in c.targets}
    public = {name for name in nc.__all__
              if name != "__version__" and (callable(getattr(nc, name))
                                            or name == "onnx")}
    missing = sorted(public - covered)
    assert not missing, f"public names without a malformed call: {missing}"
