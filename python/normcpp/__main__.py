"""``python -m normcpp``: check and time every op on this machine.

Prints :func:`normcpp.config`, then for each op (functional ``batch_norm`` in eval and
training mode, ``instance_norm``, ``group_norm``, ``layer_norm``, ``rms_norm``, and the
``BatchNorm`` modules in train and eval mode and ``LayerNorm``) on built-in shapes a table row
with the median time of normcpp and of a vectorised NumPy reference that computes in float32
(the same formulas as PyTorch), the speedup, and normcpp's largest absolute error against a
float64 NumPy reference. Exits with status 1 if any error is out of tolerance (or any op
raised), 0 otherwise.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

import normcpp as nc

Shape = tuple[int, ...]
Arrays = tuple[np.ndarray, ...]

MOMENTUM = 0.1
EPS = 1e-5
MAX_GROUPS = 32

# Built-in shapes. "channel" shapes are (N, C, *spatial) for batch/instance/group norm;
# "row" shapes are (..., D) for layer/rms norm over the last dim. Each entry is
# (family, shape, dtype, channels_last).
_CaseSpec = tuple[str, Shape, str, bool]
SHAPE_SETS: dict[str, list[_CaseSpec]] = {
    "small": [
        ("channel", (1, 16, 28, 28), "float32", False),
        ("channel", (1, 64, 7, 7), "float32", False),
        ("row", (1, 32, 256), "float32", False),
        ("channel", (4, 16, 28, 28), "float32", False),
        ("row", (4, 64, 256), "float32", False),
        ("channel", (1, 16, 28, 28), "float16", False),
        ("row", (1, 32, 256), "float16", False),
        ("channel", (4, 16, 28, 28), "float32", True),
    ],
    "default": [
        # edge inference
        ("channel", (1, 64, 56, 56), "float32", False),
        ("channel", (1, 256, 14, 14), "float32", False),
        ("row", (1, 128, 768), "float32", False),
        # training
        ("channel", (32, 64, 56, 56), "float32", False),
        ("row", (8, 512, 768), "float32", False),
        # half precision at the edge, and channels-last training
        ("channel", (1, 64, 56, 56), "float16", False),
        ("row", (1, 128, 768), "float16", False),
        ("channel", (32, 64, 56, 56), "float32", True),
    ],
    "large": [
        ("channel", (64, 128, 56, 56), "float32", False),
        ("channel", (64, 128, 56, 56), "float32", True),
        ("channel", (16, 64, 112, 112), "float16", False),
        ("row", (32, 1024, 1024), "float32", False),
        ("row", (32, 1024, 1024), "float16", False),
    ],
}

# Tolerance on max |normcpp - float64 reference|, in units of the dtype's machine epsilon
# times max(1, max |reference|). float16 results are one rounding of an accurate float32
# value, so a few eps suffice; float32 allows for rounding of the per-channel scale/shift.
_TOL_EPS = {np.dtype(np.float16): 4.0, np.dtype(np.float32): 16.0, np.dtype(np.float64): 256.0}


# ---------------------------------------------------------------------------------------------
# NumPy reference: the same formulas as PyTorch, computed in `ct` (float32 for timing, float64
# for the error check). Each returns (output, *updated running stats) in `ct`.
# ---------------------------------------------------------------------------------------------


def _per_channel(v: np.ndarray, ndim: int) -> np.ndarray:
    """A length-C vector shaped to broadcast over (N, C, *spatial)."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def ref_batch_norm(
    x: np.ndarray,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    training: bool,
    ct: type,
) -> Arrays:
    """BatchNorm: scale/shift per channel from batch (biased var) or running statistics."""
    xc: np.ndarray = x.astype(ct, copy=False)
    rm: np.ndarray = running_mean.astype(ct, copy=False)
    rv: np.ndarray = running_var.astype(ct, copy=False)
    if training:
        axes = (0,) + tuple(range(2, x.ndim))
        mean = xc.mean(axis=axes)
        var = xc.var(axis=axes)
        n = x.size // x.shape[1]
        rm = (1 - MOMENTUM) * rm + MOMENTUM * mean
        rv = (1 - MOMENTUM) * rv + MOMENTUM * var * (n / (n - 1))
    else:
        mean, var = rm, rv
    a = weight.astype(ct, copy=False) / np.sqrt(var + ct(EPS))
    b = bias.astype(ct, copy=False) - mean * a
    y = xc * _per_channel(a, x.ndim)
    y += _per_channel(b, x.ndim)
    return (y, rm, rv) if training else (y,)


def ref_instance_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, ct: type) -> Arrays:
    """InstanceNorm: scale/shift per (sample, channel) from its spatial moments."""
    xc: np.ndarray = x.astype(ct, copy=False)
    axes = tuple(range(2, x.ndim))
    mean = xc.mean(axis=axes, keepdims=True)
    var = xc.var(axis=axes, keepdims=True)
    a = _per_channel(weight.astype(ct, copy=False), x.ndim) / np.sqrt(var + ct(EPS))
    b = _per_channel(bias.astype(ct, copy=False), x.ndim) - mean * a
    y = xc * a
    y += b
    return (y,)


def ref_group_norm(
    x: np.ndarray, groups: int, weight: np.ndarray, bias: np.ndarray, ct: type
) -> Arrays:
    """GroupNorm: moments per (sample, group) over the group's channels and all positions."""
    xc: np.ndarray = x.astype(ct, copy=False)
    n, c = x.shape[:2]
    grouped = xc.reshape((n, groups, c // groups) + x.shape[2:])
    axes = tuple(range(2, grouped.ndim))
    mean = grouped.mean(axis=axes)  # (N, G)
    var = grouped.var(axis=axes)
    invstd = np.repeat(1 / np.sqrt(var + ct(EPS)), c // groups, axis=1)  # (N, C)
    a = weight.astype(ct, copy=False) * invstd
    b = bias.astype(ct, copy=False) - np.repeat(mean, c // groups, axis=1) * a
    tail = (1,) * (x.ndim - 2)
    y = xc * a.reshape(a.shape + tail)
    y += b.reshape(b.shape + tail)
    return (y,)


def ref_layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, ct: type) -> Arrays:
    """LayerNorm over the last dim, elementwise weight and bias."""
    xc: np.ndarray = x.astype(ct, copy=False)
    mean = xc.mean(axis=-1, keepdims=True)
    var = xc.var(axis=-1, keepdims=True)
    y = xc - mean
    y *= 1 / np.sqrt(var + ct(EPS))
    y *= weight.astype(ct, copy=False)
    y += bias.astype(ct, copy=False)
    return (y,)


def ref_rms_norm(x: np.ndarray, weight: np.ndarray, eps: float, ct: type) -> Arrays:
    """RMSNorm over the last dim: x / sqrt(mean(x^2) + eps) * weight."""
    xc: np.ndarray = x.astype(ct, copy=False)
    ms = np.mean(np.square(xc), axis=-1, keepdims=True)
    y = xc * (1 / np.sqrt(ms + ct(eps)))
    y *= weight.astype(ct, copy=False)
    return (y,)


# ---------------------------------------------------------------------------------------------
# Cases and ops
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One input: which ops apply (family), its shape, dtype and memory layout."""

    family: str
    shape: Shape
    dtype: np.dtype
    channels_last: bool

    @property
    def label(self) -> str:
        layout = "ch-last" if self.channels_last else "contig"
        return f"{self.dtype.name} {layout}"


@dataclass
class Op:
    """A timed pair (normcpp, NumPy float32) and the check of normcpp against float64.

    ``check`` runs normcpp once on fresh state and returns its outputs; ``reference`` returns
    the matching float64 outputs.
    """

    name: str
    run_normcpp: Callable[[], object]
    run_numpy: Callable[[], object]
    check: Callable[[], Sequence[np.ndarray]]
    reference: Callable[[], Sequence[np.ndarray]]


def make_input(case: Case, rng: np.random.Generator) -> np.ndarray:
    """Random data, N(0.5, 2^2), in the case's dtype and layout."""
    shape = case.shape
    if case.channels_last:
        # (N, *spatial, C) memory seen as (N, C, *spatial)
        mem = (shape[0],) + shape[2:] + (shape[1],)
        base = rng.standard_normal(mem, dtype=np.float32) * 2 + 0.5
        return np.moveaxis(base.astype(case.dtype), -1, 1)
    x = rng.standard_normal(shape, dtype=np.float32) * 2 + 0.5
    return x.astype(case.dtype, copy=False)


def _numpy_side(ref: Callable[..., Arrays], x: np.ndarray, *args: object) -> Callable[[], object]:
    """The timed NumPy path: compute in float32 and give the result in the input's dtype."""
    if x.dtype == np.float32:
        return lambda: ref(x, *args, np.float32)
    return lambda: ref(x, *args, np.float32)[0].astype(x.dtype)


def _batch_norm_module(ndim: int) -> type:
    return {2: nc.BatchNorm1d, 3: nc.BatchNorm1d, 4: nc.BatchNorm2d, 5: nc.BatchNorm3d}[ndim]


def channel_ops(x: np.ndarray, rng: np.random.Generator) -> list[Op]:
    """batch_norm eval/train, instance_norm, group_norm and the BatchNorm module."""
    c: int = x.shape[1]
    f32 = np.float32
    w = rng.uniform(0.5, 1.5, size=c).astype(f32)
    b = rng.uniform(-0.5, 0.5, size=c).astype(f32)
    rm = rng.uniform(0.0, 1.0, size=c).astype(f32)
    rv = rng.uniform(2.0, 6.0, size=c).astype(f32)
    f64 = np.float64
    spatial = x.size // max(c * x.shape[0], 1)
    # Training needs more than one value per channel, instance_norm more than one position
    # (both raise ValueError otherwise, as in PyTorch); such --shape cases skip those ops.
    trainable = x.shape[0] * spatial > 1
    ops: list[Op] = []

    # batch_norm, eval: running statistics normalize
    ops.append(
        Op(
            "batch_norm eval",
            lambda: nc.batch_norm(x, rm, rv, w, b, False, MOMENTUM, EPS),
            _numpy_side(ref_batch_norm, x, rm, rv, w, b, False),
            lambda: (nc.batch_norm(x, rm, rv, w, b, False, MOMENTUM, EPS),),
            lambda: ref_batch_norm(x, rm, rv, w, b, False, f64),
        )
    )

    # batch_norm, training: batch statistics, running statistics updated in place
    t_rm, t_rv = rm.copy(), rv.copy()
    np_rm, np_rv = rm.copy(), rv.copy()

    def np_train() -> object:
        y, new_rm, new_rv = ref_batch_norm(x, np_rm, np_rv, w, b, True, f32)
        np_rm[...] = new_rm
        np_rv[...] = new_rv
        return y if x.dtype == f32 else y.astype(x.dtype)

    def check_train() -> Sequence[np.ndarray]:
        c_rm, c_rv = rm.copy(), rv.copy()
        y = nc.batch_norm(x, c_rm, c_rv, w, b, True, MOMENTUM, EPS)
        return y, c_rm, c_rv

    if trainable:
        ops.append(
            Op(
                "batch_norm train",
                lambda: nc.batch_norm(x, t_rm, t_rv, w, b, True, MOMENTUM, EPS),
                np_train,
                check_train,
                lambda: ref_batch_norm(x, rm, rv, w, b, True, f64),
            )
        )

    if spatial > 1:
        ops.append(
            Op(
                "instance_norm",
                lambda: nc.instance_norm(x, None, None, w, b, True, MOMENTUM, EPS),
                _numpy_side(ref_instance_norm, x, w, b),
                lambda: (nc.instance_norm(x, None, None, w, b, True, MOMENTUM, EPS),),
                lambda: ref_instance_norm(x, w, b, f64),
            )
        )

    groups = math.gcd(c, MAX_GROUPS)
    ops.append(
        Op(
            f"group_norm G={groups}",
            lambda: nc.group_norm(x, groups, w, b, EPS),
            _numpy_side(ref_group_norm, x, groups, w, b),
            lambda: (nc.group_norm(x, groups, w, b, EPS),),
            lambda: ref_group_norm(x, groups, w, b, f64),
        )
    )

    # The module, loaded with the same parameters and running statistics: a fresh one for each
    # check, and one per mode that the timing keeps calling (in training it keeps updating).
    module_cls = _batch_norm_module(x.ndim)
    state = {
        "weight": w,
        "bias": b,
        "running_mean": rm,
        "running_var": rv,
        "num_batches_tracked": np.array(0, dtype=np.int64),
    }

    def new_module(training: bool) -> Any:  # a BatchNorm1d/2d/3d
        m = module_cls(c, eps=EPS, momentum=MOMENTUM)
        m.load_state_dict(state)
        m.train(training)
        return m

    timed_train = new_module(True)
    timed_eval = new_module(False)

    def check_module_train() -> Sequence[np.ndarray]:
        m = new_module(True)
        y = m(x)
        return y, m.running_mean, m.running_var

    if trainable:
        ops.append(
            Op(
                f"{module_cls.__name__} train",
                lambda: timed_train(x),
                np_train,
                check_module_train,
                lambda: ref_batch_norm(x, rm, rv, w, b, True, f64),
            )
        )
    ops.append(
        Op(
            f"{module_cls.__name__} eval",
            lambda: timed_eval(x),
            _numpy_side(ref_batch_norm, x, rm, rv, w, b, False),
            lambda: (new_module(False)(x),),
            lambda: ref_batch_norm(x, rm, rv, w, b, False, f64),
        )
    )
    return ops


def row_ops(x: np.ndarray, rng: np.random.Generator) -> list[Op]:
    """layer_norm, rms_norm and the LayerNorm module over the last dim."""
    d: int = x.shape[-1]
    w = rng.uniform(0.5, 1.5, size=d).astype(np.float32)
    b = rng.uniform(-0.5, 0.5, size=d).astype(np.float32)
    rms_eps = float(np.finfo(x.dtype).eps)  # rms_norm's eps=None, as in PyTorch
    f64 = np.float64
    ops: list[Op] = []
    ops.append(
        Op(
            "layer_norm",
            lambda: nc.layer_norm(x, d, w, b, EPS),
            _numpy_side(ref_layer_norm, x, w, b),
            lambda: (nc.layer_norm(x, d, w, b, EPS),),
            lambda: ref_layer_norm(x, w, b, f64),
        )
    )
    ops.append(
        Op(
            "rms_norm",
            lambda: nc.rms_norm(x, d, w),
            _numpy_side(ref_rms_norm, x, w, rms_eps),
            lambda: (nc.rms_norm(x, d, w),),
            lambda: ref_rms_norm(x, w, rms_eps, f64),
        )
    )

    def new_module() -> nc.Module:
        m = nc.LayerNorm(d, eps=EPS)
        m.load_state_dict({"weight": w, "bias": b})
        return m

    timed = new_module()
    ops.append(
        Op(
            "LayerNorm",
            lambda: timed(x),
            _numpy_side(ref_layer_norm, x, w, b),
            lambda: (new_module()(x),),
            lambda: ref_layer_norm(x, w, b, f64),
        )
    )
    return ops


# ---------------------------------------------------------------------------------------------
# Timing and the table
# ---------------------------------------------------------------------------------------------


def time_us(fn: Callable[[], object], repeats: int | None, budget_s: float) -> float:
    """Median wall time of ``fn()`` in microseconds, after one warm-up call.

    With ``repeats`` given, exactly that many timed calls; otherwise up to 25 calls, stopping
    once ``budget_s`` seconds are spent (at least 3 calls).
    """
    fn()
    count = repeats if repeats is not None else 25
    deadline = time.perf_counter_ns() + int(budget_s * 1e9)
    samples: list[int] = []
    for _ in range(count):
        t0 = time.perf_counter_ns()
        fn()
        t1 = time.perf_counter_ns()
        samples.append(t1 - t0)
        if repeats is None and len(samples) >= 3 and t1 >= deadline:
            break
    samples.sort()
    mid = len(samples) // 2
    median = samples[mid] if len(samples) % 2 else (samples[mid - 1] + samples[mid]) / 2
    return median / 1e3


def max_error(got: Sequence[np.ndarray], want: Sequence[np.ndarray]) -> tuple[float, float]:
    """(max |got - want|, max(1, max |want|)) over all outputs, in float64."""
    err, scale = 0.0, 1.0
    for g, r in zip(got, want):
        g64 = np.asarray(g, dtype=np.float64)
        r64 = np.asarray(r, dtype=np.float64)
        if g64.shape != r64.shape:
            return math.inf, scale
        diff = np.abs(g64 - r64)
        err = max(err, float(np.max(diff)) if diff.size else 0.0)
        if np.isnan(diff).any():
            err = math.nan
        scale = max(scale, float(np.max(np.abs(r64))) if r64.size else 0.0)
    return err, scale


_COLUMNS = (
    ("op", 22, "<"),
    ("shape", 18, "<"),
    ("dtype/layout", 15, "<"),
    ("normcpp µs", 11, ">"),
    ("NumPy µs", 11, ">"),
    ("speedup", 8, ">"),
    ("max abs err", 11, ">"),
    ("tolerance", 9, ">"),
    ("", 4, "<"),
)


def _row(cells: Sequence[str]) -> str:
    return "  ".join(f"{cell:{align}{width}}" for cell, (_, width, align) in zip(cells, _COLUMNS))


def _fmt_us(us: float) -> str:
    return f"{us:.1f}" if us < 1e4 else f"{us:.0f}"


def _fmt_shape(shape: Shape) -> str:
    return "(" + ",".join(str(s) for s in shape) + ")"


def run_op(op: Op, case: Case, repeats: int | None, budget_s: float) -> tuple[str, bool, float]:
    """Check and time one op; returns its table row, whether it passed and the speedup."""
    tol_eps = _TOL_EPS[case.dtype] * float(np.finfo(case.dtype).eps)
    head = [op.name, _fmt_shape(case.shape), case.label]
    try:
        err, scale = max_error(op.check(), op.reference())
        tol = tol_eps * scale
        t_nc = time_us(op.run_normcpp, repeats, budget_s)
        t_np = time_us(op.run_numpy, repeats, budget_s)
    except Exception as exc:  # noqa: BLE001 - report any failure as a row and go on
        msg = f"ERROR {type(exc).__name__}: {exc}"
        return _row(head) + "  " + msg.splitlines()[0][:120], False, math.nan
    ok = err <= tol  # False for NaN
    speedup = t_np / t_nc if t_nc > 0 else math.inf
    cells = head + [
        _fmt_us(t_nc),
        _fmt_us(t_np),
        f"{speedup:.2f}x",
        f"{err:.2e}",
        f"{tol:.1e}",
        "OK" if ok else "FAIL",
    ]
    return _row(cells), ok, speedup


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def _parse_shape(text: str) -> Shape:
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a shape: {text!r} (expected e.g. 8,64,56,56)")
    if not shape or any(s < 1 for s in shape):
        raise argparse.ArgumentTypeError(f"shape dims must be positive integers, got {text!r}")
    return shape


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m normcpp",
        description=(
            "Check and time every normcpp op against a NumPy reference. For each op and "
            "shape it prints the median time of normcpp and of a vectorised NumPy float32 "
            "implementation (PyTorch's formulas), the speedup, and normcpp's max abs error "
            "against a float64 NumPy reference. Exits 1 if any error is out of tolerance."
        ),
        epilog=(
            "Shape sets: 'default' = edge inference (1,64,56,56), (1,256,14,14), (1,128,768) "
            "and training (32,64,56,56), (8,512,768) in float32, plus float16 and "
            "channels-last rows; 'small' = the same kinds of rows at toy sizes; 'large' = "
            "bigger training tensors. Environment: NORMCPP_ISA forces an ISA level, "
            "NORMCPP_NUM_THREADS sets the default thread count."
        ),
    )
    parser.add_argument(
        "--threads",
        type=_positive,
        metavar="N",
        help="number of normcpp threads (normcpp.set_num_threads); default: as configured",
    )
    parser.add_argument(
        "--shapes",
        choices=sorted(SHAPE_SETS),
        default=None,
        help="built-in shape set (default: 'default', or 'small' with --quick)",
    )
    parser.add_argument(
        "--shape",
        type=_parse_shape,
        action="append",
        metavar="N,C,...",
        help=(
            "time this float32 shape instead of a built-in set (repeatable); rank 2-5 runs "
            "the channel ops over dim 1, every rank runs layer/rms norm over the last dim"
        ),
    )
    parser.add_argument(
        "--repeats",
        type=_positive,
        metavar="N",
        help="timed calls per op and side (default: up to 25 within ~0.3 s), median reported",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 'small' shapes unless --shapes/--shape is given, and 3 repeats",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed for the data")
    return parser


def select_cases(args: argparse.Namespace) -> list[Case]:
    if args.shape:
        cases: list[Case] = []
        for shape in args.shape:
            if 2 <= len(shape) <= 5:
                cases.append(Case("channel", shape, np.dtype(np.float32), False))
            cases.append(Case("row", shape, np.dtype(np.float32), False))
        return cases
    name = args.shapes or ("small" if args.quick else "default")
    return [Case(fam, shape, np.dtype(dt), cl) for fam, shape, dt, cl in SHAPE_SETS[name]]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads is not None:
        nc.set_num_threads(args.threads)
    repeats: int | None = args.repeats
    if repeats is None and args.quick:
        repeats = 3
    budget_s = 0.3

    cfg = nc.config()
    print("normcpp.config():")
    for key, value in cfg.items():
        print(f"  {key:<15} {value}")
    print(
        f"  {'platform':<15} {platform.machine()} {platform.system()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, NumPy {np.__version__}"
    )
    print()
    print(_row([name for name, _, _ in _COLUMNS]))
    print(_row(["-" * width for _, width, _ in _COLUMNS]))

    rng = np.random.default_rng(args.seed)
    rows = failures = 0
    speedups: list[float] = []
    start = time.perf_counter_ns()
    for case in select_cases(args):
        x = make_input(case, rng)
        ops = channel_ops(x, rng) if case.family == "channel" else row_ops(x, rng)
        for op in ops:
            line, ok, speedup = run_op(op, case, repeats, budget_s)
            print(line, flush=True)
            rows += 1
            failures += not ok
            if ok and math.isfinite(speedup) and speedup > 0:
                speedups.append(speedup)
        del x, ops

    elapsed = (time.perf_counter_ns() - start) / 1e9
    print()
    geo = math.exp(sum(math.log(s) for s in speedups) / len(speedups)) if speedups else math.nan
    print(
        f"{rows} rows, {failures} out of tolerance or failed; "
        f"geometric-mean speedup over NumPy {geo:.2f}x; {elapsed:.1f} s"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
