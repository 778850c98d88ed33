#!/usr/bin/env python
"""normcpp benchmark: normcpp against NumPy, PyTorch and ONNX Runtime, in one process.

Usage::

    PYTHONPATH=python python bench/run.py                 # full matrix, threads 1 and all
    python bench/run.py --quick                           # a few cells, < 60 s
    python bench/run.py --threads 1,2 --filter group_norm --markdown

Every cell runs on the same arrays for every implementation:

* ``normcpp``      -- the public functional API, without ``out=`` (it allocates, as the peers
                      do); the time with a preallocated ``out=`` is an extra column.
* ``numpy``        -- a vectorised NumPy implementation (single-threaded; timed once per
                      cell and reused for every thread count).
* ``torch``        -- ``torch.nn.functional`` on ``torch.from_numpy`` views (no copies timed;
                      channels-last cells use the NHWC memory viewed as NCHW), if importable.
* ``onnxruntime``  -- one-node ONNX models built with ``onnx.helper`` (``ir_version=10``),
                      CPU provider, ``intra_op_num_threads = threads``, if importable. ORT
                      wants contiguous NCHW: channels-last cells feed it a contiguous NCHW
                      copy made outside the timing (marked ``ort_input = "nchw-copy"``).
* ``copy``         -- ``np.copyto`` of the same bytes into a preallocated array: the memory
                      roofline (the faster of a 1-thread copy and a ``threads``-way split copy).

For each cell: the median time in microseconds (adaptive repeats: warm-up, then repeat until
``--min-time`` seconds or at least ``--min-repeats`` repeats; tiny calls are batched so the
timer overhead is negligible). normcpp, torch, ONNX Runtime and the copy of a cell are timed
together, interleaved in turns of about ``--min-time``/8 seconds (one untimed call opens
each turn; with several threads a pause after each turn, 0.1 s after ONNX Runtime's, lets
the previous contender's spinning thread pool go idle), so a machine whose speed drifts
during the cell slows all of them alike; NumPy, the slow one, is timed on its own once per
case. Then ``speedup = fastest peer / normcpp``
(peers: torch and onnxruntime; NumPy only when neither produced a verified time), and
``ratio = normcpp / copy``. Each normcpp result (and each peer's) is checked once per cell
against a float64 NumPy reference, so a fast but wrong kernel cannot win: a wrong normcpp cell
is marked WRONG, gets no speedup and makes the script exit with status 1.

Noise: the script measures how many CPUs other processes kept busy during each case
(``foreign_cpus`` in results.json; "NOISE" in the summary). On a 2-core machine a single busy
neighbour makes every OpenMP parallel region wait a scheduler time slice (milliseconds), so
run it on an idle machine -- ``--wait-quiet SEC`` waits for one before starting.

Outputs (in ``--out``, default ``bench/``): ``results.json`` (every raw number and the
machine), ``speedup.png`` (if matplotlib imports) and, with ``--markdown``, ``RESULTS.md``.

EXTENDING: a benchmark row is a :class:`Case` (op name, shape, layout, dtype, params) in the
list built by :func:`build_cases`; an op is an :class:`OpSpec` in ``OPS`` that says how to
make its arguments and how to call normcpp, NumPy, torch and ONNX Runtime on them. To add
one, write an ``OpSpec`` (peers that lack the op return ``None`` and show as n/a) and append
``Case`` rows -- see the marked sections "ADD NEW OPS HERE" and "ADD NEW ROWS HERE".

Rows beyond the plain forward ops (all float32 unless noted; ``--filter '+|normalize'``
selects exactly these):

* ``<op>+bwd`` -- one training step, forward + backward: normcpp ``*_forward`` then
  ``*_backward`` vs PyTorch autograd (``x.requires_grad_(); y = F.op(...); y.backward(dy)``,
  weight and bias requiring grad) vs NumPy's closed form, for batch_norm (train),
  instance_norm, group_norm, layer_norm and rms_norm. The result is grad_input; normcpp's is
  checked against PyTorch's (rtol 1e-3, atol 1e-4), the peers against float64 NumPy.
* ``<op>+relu|silu|gelu`` -- eval batch_norm / group_norm / layer_norm with normcpp's fused
  ``activation=`` vs the norm followed by the activation (NumPy; torch ``F.relu``/``F.silu``
  in place, ``F.gelu``).
* ``normalize`` -- ``normcpp.normalize`` of uint8 NHWC images to float32 NCHW vs the NumPy
  expression and the torchvision-style tensor pipeline; its ``copy`` is of the output bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import functools
import gc
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

# ----------------------------------------------------------------------------------------
# Optional imports: normcpp, torch, onnx + onnxruntime, matplotlib
# ----------------------------------------------------------------------------------------


def _import_normcpp():
    try:
        import normcpp
    except ImportError:
        sys.path.insert(0, os.path.join(REPO, "python"))
        try:
            import normcpp  # noqa: F401
        except Exception as exc:  # build missing or broken: benchmark the peers alone
            return None, f"{type(exc).__name__}: {exc}"
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"
    import normcpp as nc

    return nc, None


def _import_torch():
    try:
        import torch
        import torch.nn.functional as F

        return torch, F
    except Exception:
        return None, None


def _import_ort():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import onnx
            import onnxruntime as ort
        from onnx import helper, numpy_helper  # noqa: F401

        ort.set_default_logger_severity(3)
        return onnx, ort
    except Exception:
        return None, None


nc, NC_IMPORT_ERROR = _import_normcpp()
torch, F = _import_torch()
onnx, ort = _import_ort()

PEERS = ("torch", "onnxruntime")  # "numpy" is the fallback peer when neither has a time

# ----------------------------------------------------------------------------------------
# Case specs
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One row of the matrix (timed once per thread count).

    op      -- key into ``OPS``
    shape   -- the logical (PyTorch) shape, e.g. (N, C, H, W)
    layout  -- "nchw" (C-contiguous), "nhwc" (channels-last: NHWC memory viewed as NCHW) or
               "rows" (C-contiguous, for non-image shapes)
    dtype   -- "float32" / "float16" / ...
    params  -- op parameters as a tuple of (name, value) pairs (hashable), e.g.
               (("num_groups", 32),) or (("normalized_shape", (768,)),)
    """

    op: str
    shape: tuple[int, ...]
    layout: str = "nchw"
    dtype: str = "float32"
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def p(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def label(self) -> str:
        extra = ""
        p = self.p
        if "normalized_shape" in p:
            extra = " ns=" + "x".join(map(str, p["normalized_shape"]))
        if "num_groups" in p:
            extra = f" G={p['num_groups']}"
        if "to" in p:
            extra = f" -> {p['to']}"
        shape = "x".join(map(str, self.shape))
        return f"{self.op} {shape} {self.layout} {self.dtype}{extra}"

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize


CNN_SHAPES = [
    (1, 16, 8, 8),
    (1, 64, 56, 56),
    (1, 256, 14, 14),
    (8, 256, 28, 28),
    (32, 64, 56, 56),
    (32, 3, 224, 224),
]
BN2D_SHAPES = [(256, 1024), (4096, 64)]
SEQ_SHAPES = [(8, 512, 768), (1, 128, 4096), (64, 197, 384)]
LN_CHW_SHAPES = [(1, 64, 56, 56)]

# new rows: forward+backward, fused activations, normalize (uint8 images, logical NCHW)
BWD_CNN_SHAPES = [(8, 256, 28, 28), (32, 64, 56, 56)]
BWD_CL_SHAPE = (32, 64, 56, 56)
BWD_SEQ_SHAPES = [(8, 512, 768), (64, 197, 384)]
FUSED_CNN_SHAPE = (32, 64, 56, 56)
FUSED_SEQ_SHAPE = (8, 512, 768)
NORMALIZE_SHAPE = (32, 3, 224, 224)

QUICK_SHAPES = {(1, 16, 8, 8), (8, 256, 28, 28), (256, 1024), (1, 128, 4096)}


def build_cases(quick: bool = False) -> list[Case]:
    """The benchmark matrix, in run order (cells that share an input are adjacent)."""
    cases: list[Case] = []
    keep = (lambda s: s in QUICK_SHAPES) if quick else (lambda s: True)

    # --- float32: image-shaped norms, NCHW and channels-last --------------------------
    for shape in CNN_SHAPES:
        if not keep(shape):
            continue
        groups = min(32, shape[1])
        for layout in ("nchw", "nhwc"):
            cases += [
                Case("batch_norm_eval", shape, layout),
                Case("batch_norm_train", shape, layout),
                Case("instance_norm", shape, layout),
                Case("group_norm", shape, layout, params=(("num_groups", groups),)),
            ]
    # --- float32: BatchNorm1d on (N, C) -----------------------------------------------
    for shape in BN2D_SHAPES:
        if keep(shape):
            cases += [Case("batch_norm_eval", shape, "rows"), Case("batch_norm_train", shape, "rows")]
    # --- float32: layer_norm / rms_norm over the last dim, layer_norm over (C, H, W) ---
    for shape in SEQ_SHAPES:
        if keep(shape):
            ns = (("normalized_shape", shape[-1:]),)
            cases += [Case("layer_norm", shape, "rows", params=ns), Case("rms_norm", shape, "rows", params=ns)]
    for shape in LN_CHW_SHAPES:
        if keep(shape):
            cases.append(Case("layer_norm", shape, "nchw", params=(("normalized_shape", shape[1:]),)))

    # --- float16 column: batch_norm eval, group_norm, layer_norm ----------------------
    f16 = "float16"
    for shape in CNN_SHAPES:
        if not keep(shape):
            continue
        groups = min(32, shape[1])
        for layout in ("nchw", "nhwc"):
            cases += [
                Case("batch_norm_eval", shape, layout, f16),
                Case("group_norm", shape, layout, f16, (("num_groups", groups),)),
            ]
    for shape in BN2D_SHAPES:
        if keep(shape):
            cases.append(Case("batch_norm_eval", shape, "rows", f16))
    for shape in SEQ_SHAPES:
        if keep(shape):
            cases.append(Case("layer_norm", shape, "rows", f16, (("normalized_shape", shape[-1:]),)))
    for shape in LN_CHW_SHAPES:
        if keep(shape):
            cases.append(Case("layer_norm", shape, "nchw", f16, (("normalized_shape", shape[1:]),)))

    # --- ADD NEW ROWS HERE (backward passes, normalize, fused activations, ...) -------
    # e.g. cases.append(Case("batch_norm_backward", (32, 64, 56, 56), "nhwc"))

    # --- float32: forward + backward vs PyTorch autograd (labels "<op>+bwd") ---------
    for shape, layout in [(s, "nchw") for s in BWD_CNN_SHAPES] + [(BWD_CL_SHAPE, "nhwc")]:
        if keep(shape):
            g = (("num_groups", min(32, shape[1])),)
            cases += [Case("batch_norm_train+bwd", shape, layout),
                      Case("instance_norm+bwd", shape, layout),
                      Case("group_norm+bwd", shape, layout, params=g)]
    for shape in BWD_SEQ_SHAPES:
        if keep(shape):
            ns = (("normalized_shape", shape[-1:]),)
            cases += [Case("layer_norm+bwd", shape, "rows", params=ns),
                      Case("rms_norm+bwd", shape, "rows", params=ns)]
    # --- float32: eval norms with a fused activation (labels "<op>+relu|silu|gelu") ---
    if keep(FUSED_CNN_SHAPE):
        for layout in ("nchw", "nhwc"):
            cases += [Case(f"batch_norm_eval+{a}", FUSED_CNN_SHAPE, layout) for a in FUSED_ACTS]
        cases += [Case(f"group_norm+{a}", FUSED_CNN_SHAPE, "nchw",
                       params=(("num_groups", 32),)) for a in FUSED_ACTS]
    if keep(FUSED_SEQ_SHAPE):
        cases += [Case(f"layer_norm+{a}", FUSED_SEQ_SHAPE, "rows",
                       params=(("normalized_shape", FUSED_SEQ_SHAPE[-1:]),)) for a in FUSED_ACTS]
    # --- normalize: uint8 NHWC images -> float32 NCHW ---------------------------------
    if keep(NORMALIZE_SHAPE):
        cases.append(Case("normalize", NORMALIZE_SHAPE, "nhwc", "uint8",
                          (("to", "float32 nchw"),)))
    return cases


# ----------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------


class Data(dict):
    """Arguments of one cell: ``x`` (the input as normcpp/torch see it), ``base`` (the
    contiguous memory behind it), parameters, and lazily ``x_nchw`` for ONNX Runtime."""

    @property
    def x_nchw(self) -> np.ndarray:
        if "_x_nchw" not in self:
            self["_x_nchw"] = np.ascontiguousarray(self["x"])
        return self["_x_nchw"]


_INPUT_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def make_input(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """(x, base): random data with a non-zero mean; ``base`` is x's contiguous memory."""
    key = (case.shape, case.layout, case.dtype)
    if key not in _INPUT_CACHE:
        _INPUT_CACHE.clear()  # one live input at a time (they reach 25 MB)
        rng = np.random.default_rng(abs(hash(key)) % (2**32))
        if case.layout == "nhwc":
            n, c, h, w = case.shape
            mem_shape = (n, h, w, c)
        else:
            mem_shape = case.shape
        if np.dtype(case.dtype).kind in "iu":  # images: uniform over the whole range
            base = rng.integers(0, np.iinfo(case.dtype).max, mem_shape, dtype=case.dtype,
                                endpoint=True)
        else:
            base = rng.standard_normal(mem_shape, dtype=np.float32)
            base *= 2.0
            base += 0.5
            base = base.astype(case.dtype, copy=False)
        x = base.transpose(0, 3, 1, 2) if case.layout == "nhwc" else base
        _INPUT_CACHE[key] = (x, base)
    return _INPUT_CACHE[key]


def channel_params(rng, c, with_stats=True) -> dict[str, np.ndarray]:
    d = {
        "weight": rng.uniform(0.5, 1.5, c).astype(np.float32),
        "bias": (0.1 * rng.standard_normal(c)).astype(np.float32),
    }
    if with_stats:
        d["running_mean"] = (0.5 + 0.1 * rng.standard_normal(c)).astype(np.float32)
        d["running_var"] = rng.uniform(0.5, 2.0, c).astype(np.float32)
    return d


def _bcast(v: np.ndarray, ndim: int, axis: int = 1) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = v.shape[0]
    return v.reshape(shape)


# ----------------------------------------------------------------------------------------
# Op registry
# ----------------------------------------------------------------------------------------


@dataclass
class OpSpec:
    """How to run one op on every implementation.

    make(case, x, rng) -> Data         arguments (parameters in float32)
    normcpp(d, out) -> callable        zero-argument call of the public normcpp API
    ref(d, ct) -> ndarray | tuple      NumPy implementation computing in dtype ``ct``; the
                                       first element is the output (extra elements are
                                       checked by ``check_extra``)
    torch(d) -> callable | None        zero-argument torch call (None: unsupported)
    onnx(d) -> (op_type, opset, attrs, {init_name: array}, n_outputs) | None
    fresh(d) -> None                   reset mutable state (running stats) before a
                                       verification call

    Optional, for ops whose result is not "the input's shape, dtype and layout":

    out_dtype                          result dtype when it is not the input's (normalize:
                                       uint8 in, float32 out); verification and NumPy use it
    out_like(d) -> ndarray             preallocated ``out=`` (default ``empty_like(x)``);
                                       ``has_out=False``: no ``out=`` column (fwd+bwd rows)
    keeps_layout                       False: the result is NCHW whatever the input layout
    copy_of(d) -> ndarray              the array whose copy is the roofline (default: the
                                       input's memory; normalize: its float32 output)
    autograd                           True: the torch callable runs outside
                                       ``torch.inference_mode()`` (it calls ``.backward``)
    nc_ref(d) -> ndarray | None        what normcpp's result is checked against instead of the
                                       float64 NumPy reference (fwd+bwd rows: PyTorch's dx),
                                       with tolerance ``nc_tol`` (rtol, atol); None: the
                                       float64 reference, still with ``nc_tol``
    """

    name: str
    make: Callable[[Case, np.ndarray, Any], Data]
    normcpp: Callable[[Data, np.ndarray | None], Callable[[], Any]]
    ref: Callable[[Data, Any], Any]
    torch: Callable[[Data], Callable[[], Any] | None] | None = None
    onnx: Callable[[Data], tuple | None] | None = None
    fresh: Callable[[Data], None] | None = None
    check_extra: Callable[[Data, Any], str | None] | None = None
    out_dtype: str | None = None
    out_like: Callable[[Data], np.ndarray] | None = None
    has_out: bool = True
    keeps_layout: bool = True
    copy_of: Callable[[Data], np.ndarray] | None = None
    autograd: bool = False
    nc_ref: Callable[[Data], np.ndarray | None] | None = None
    nc_tol: tuple[float, float] | None = None


def _ort_params(d: Data, names: Sequence[str]) -> dict[str, np.ndarray]:
    """ONNX wants parameters in the input's type T."""
    dt = d["x"].dtype
    return {n: d[n].astype(dt) for n in names}


def _torch_x(d: Data):
    x, base = d["x"], d["base"]
    if d["case"].layout == "nhwc":
        return torch.from_numpy(base).permute(0, 3, 1, 2)  # channels_last strides
    return torch.from_numpy(x)


def _tp(a: np.ndarray):
    return torch.from_numpy(a)


# --- batch_norm, eval ------------------------------------------------------------------


def _make_channels(case: Case, x: np.ndarray, rng) -> Data:
    d = Data(case=case, x=x, base=make_input(case)[1])
    d.update(channel_params(rng, case.shape[1]))
    d["eps"] = 1e-5
    d["momentum"] = 0.1
    return d


def _ref_bn_eval(d: Data, ct):
    x = d["x"].astype(ct, copy=False)
    a = d["weight"].astype(ct) / np.sqrt(d["running_var"].astype(ct) + ct(d["eps"]))
    b = d["bias"].astype(ct) - d["running_mean"].astype(ct) * a
    y = x * _bcast(a, x.ndim)
    y += _bcast(b, x.ndim)
    return y


BN_EVAL = OpSpec(
    name="batch_norm_eval",
    make=_make_channels,
    normcpp=lambda d, out: functools.partial(
        nc.batch_norm, d["x"], d["running_mean"], d["running_var"], d["weight"], d["bias"],
        False, d["momentum"], d["eps"], out=out),
    ref=_ref_bn_eval,
    torch=lambda d: functools.partial(
        F.batch_norm, _torch_x(d), _tp(d["running_mean"]), _tp(d["running_var"]),
        _tp(d["weight"]), _tp(d["bias"]), False, d["momentum"], d["eps"]),
    onnx=lambda d: ("BatchNormalization", 15, {"epsilon": d["eps"]},
                    _ort_params(d, ["weight", "bias", "running_mean", "running_var"]), 1),
)

# --- batch_norm, train -----------------------------------------------------------------


def _bn_axes(ndim):
    return (0,) + tuple(range(2, ndim))


def _ref_bn_train(d: Data, ct):
    x = d["x"].astype(ct, copy=False)
    axes = _bn_axes(x.ndim)
    mean = x.mean(axis=axes)
    var = x.var(axis=axes)
    a = d["weight"].astype(ct) / np.sqrt(var + ct(d["eps"]))
    b = d["bias"].astype(ct) - mean * a
    y = x * _bcast(a, x.ndim)
    y += _bcast(b, x.ndim)
    n = x.size // x.shape[1]
    m = d["momentum"]
    rm = (1 - m) * d["rm0"].astype(ct) + m * mean
    rv = (1 - m) * d["rv0"].astype(ct) + m * var * (n / max(n - 1, 1))
    return y, rm, rv


def _make_bn_train(case, x, rng):
    d = _make_channels(case, x, rng)
    d["rm0"] = np.zeros(case.shape[1], np.float32)
    d["rv0"] = np.ones(case.shape[1], np.float32)
    _fresh_bn(d)
    return d


def _fresh_bn(d: Data):
    d["running_mean"][...] = d["rm0"]
    d["running_var"][...] = d["rv0"]


def _check_bn_train(d: Data, ref) -> str | None:
    """After one normcpp call from fresh running stats, they must match the reference."""
    _, rm, rv = ref
    errs = []
    for name, want in (("running_mean", rm), ("running_var", rv)):
        got = d["running_mean"] if name == "running_mean" else d["running_var"]
        if not np.allclose(got, want, rtol=1e-4, atol=1e-5):
            errs.append(f"{name} max err {np.max(np.abs(got - want)):.3g}")
    return "; ".join(errs) or None


def _torch_bn_train(d: Data):
    rm, rv = _tp(d["running_mean"].copy()), _tp(d["running_var"].copy())
    return functools.partial(F.batch_norm, _torch_x(d), rm, rv, _tp(d["weight"]), _tp(d["bias"]),
                             True, d["momentum"], d["eps"])


BN_TRAIN = OpSpec(
    name="batch_norm_train",
    make=_make_bn_train,
    normcpp=lambda d, out: functools.partial(
        nc.batch_norm, d["x"], d["running_mean"], d["running_var"], d["weight"], d["bias"],
        True, d["momentum"], d["eps"], out=out),
    ref=_ref_bn_train,
    torch=_torch_bn_train,
    # ONNX momentum is the weight of the old value; outputs Y, running_mean, running_var.
    onnx=lambda d: ("BatchNormalization", 15,
                    {"epsilon": d["eps"], "momentum": 1 - d["momentum"], "training_mode": 1},
                    _ort_params(d, ["weight", "bias", "running_mean", "running_var"]), 3),
    fresh=_fresh_bn,
    check_extra=_check_bn_train,
)

# --- instance_norm ---------------------------------------------------------------------


def _ref_instance(d: Data, ct):
    x = d["x"].astype(ct, copy=False)
    axes = tuple(range(2, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    a = _bcast(d["weight"].astype(ct), x.ndim) / np.sqrt(var + ct(d["eps"]))
    b = _bcast(d["bias"].astype(ct), x.ndim) - mean * a
    y = x * a
    y += b
    return y


INSTANCE = OpSpec(
    name="instance_norm",
    make=_make_channels,
    normcpp=lambda d, out: functools.partial(
        nc.instance_norm, d["x"], None, None, d["weight"], d["bias"], True, d["momentum"],
        d["eps"], out=out),
    ref=_ref_instance,
    torch=lambda d: functools.partial(
        F.instance_norm, _torch_x(d), None, None, _tp(d["weight"]), _tp(d["bias"]), True,
        d["momentum"], d["eps"]),
    onnx=lambda d: ("InstanceNormalization", 6, {"epsilon": d["eps"]},
                    _ort_params(d, ["weight", "bias"]), 1),
)

# --- group_norm ------------------------------------------------------------------------


def _ref_group(d: Data, ct):
    x = d["x"].astype(ct, copy=False)
    n, c = x.shape[:2]
    g = d["num_groups"]
    xr = x.reshape(n, g, -1)  # copies for channels-last, as a NumPy user's code would
    mean = xr.mean(axis=-1)
    var = xr.var(axis=-1)
    inv = 1.0 / np.sqrt(var + ct(d["eps"]))  # (n, g)
    inv_c = np.repeat(inv, c // g, axis=1)  # (n, c)
    mean_c = np.repeat(mean, c // g, axis=1)
    a = d["weight"].astype(ct)[None, :] * inv_c
    b = d["bias"].astype(ct)[None, :] - mean_c * a
    tail = (1,) * (x.ndim - 2)
    y = x * a.reshape(n, c, *tail)
    y += b.reshape(n, c, *tail)
    return y


def _make_group(case, x, rng):
    d = _make_channels(case, x, rng)
    d["num_groups"] = case.p["num_groups"]
    return d


GROUP = OpSpec(
    name="group_norm",
    make=_make_group,
    normcpp=lambda d, out: functools.partial(
        nc.group_norm, d["x"], d["num_groups"], d["weight"], d["bias"], d["eps"], out=out),
    ref=_ref_group,
    torch=lambda d: functools.partial(
        F.group_norm, _torch_x(d), d["num_groups"], _tp(d["weight"]), _tp(d["bias"]), d["eps"]),
    # opset 21: scale and bias per channel (opset 18 had them per group).
    onnx=lambda d: ("GroupNormalization", 21, {"epsilon": d["eps"], "num_groups": d["num_groups"]},
                    _ort_params(d, ["weight", "bias"]), 1),
)

# --- layer_norm / rms_norm -------------------------------------------------------------


def _make_last(case: Case, x: np.ndarray, rng) -> Data:
    ns = tuple(case.p["normalized_shape"])
    d = Data(case=case, x=x, base=make_input(case)[1], normalized_shape=ns)
    d["weight"] = rng.uniform(0.5, 1.5, ns).astype(np.float32)
    d["bias"] = (0.1 * rng.standard_normal(ns)).astype(np.float32)
    d["eps"] = 1e-5 if case.op == "layer_norm" else 1e-6
    return d


def _ref_layer(d: Data, ct):
    x = d["x"].astype(ct, copy=False)
    axes = tuple(range(x.ndim - len(d["normalized_shape"]), x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    y = x - mean
    y *= 1.0 / np.sqrt(var + ct(d["eps"]))
    y *= d["weight"].astype(ct)
    y += d["bias"].astype(ct)
    return y


def _ref_rms(d: Data, ct):
    x = d["x"].astype(ct, copy=False)
    axes = tuple(range(x.ndim - len(d["normalized_shape"]), x.ndim))
    ms = np.mean(np.square(x), axis=axes, keepdims=True)
    y = x * (1.0 / np.sqrt(ms + ct(d["eps"])))
    y *= d["weight"].astype(ct)
    return y


def _ln_axis(d: Data) -> int:
    return d["x"].ndim - len(d["normalized_shape"])


LAYER = OpSpec(
    name="layer_norm",
    make=_make_last,
    normcpp=lambda d, out: functools.partial(
        nc.layer_norm, d["x"], d["normalized_shape"], d["weight"], d["bias"], d["eps"], out=out),
    ref=_ref_layer,
    torch=lambda d: functools.partial(
        F.layer_norm, _torch_x(d), d["normalized_shape"], _tp(d["weight"]), _tp(d["bias"]),
        d["eps"]),
    onnx=lambda d: ("LayerNormalization", 17, {"epsilon": d["eps"], "axis": _ln_axis(d)},
                    _ort_params(d, ["weight", "bias"]), 1),
)

RMS = OpSpec(
    name="rms_norm",
    make=_make_last,
    normcpp=lambda d, out: functools.partial(
        nc.rms_norm, d["x"], d["normalized_shape"], d["weight"], d["eps"], out=out),
    ref=_ref_rms,
    torch=lambda d: (functools.partial(F.rms_norm, _torch_x(d), d["normalized_shape"],
                                       _tp(d["weight"]), d["eps"])
                     if hasattr(F, "rms_norm") else None),
    # RMSNormalization is ONNX opset 23 (needs IR version 11).
    onnx=lambda d: ("RMSNormalization", 23, {"epsilon": d["eps"], "axis": _ln_axis(d)},
                    _ort_params(d, ["weight"]), 1),
)

OPS: dict[str, OpSpec] = {s.name: s for s in (BN_EVAL, BN_TRAIN, INSTANCE, GROUP, LAYER, RMS)}

# ---- ADD NEW OPS HERE ------------------------------------------------------------------
# A new op is one OpSpec: e.g. a backward pass
#   OPS["batch_norm_backward"] = OpSpec(name=..., make=<also makes grad_output>,
#       normcpp=lambda d, out: partial(nc.<backward>, ...), ref=<NumPy formula>,
#       torch=<closure over torch.autograd.grad or torch.ops.aten.native_batch_norm_backward>,
#       onnx=lambda d: None)                       # ORT has no backward on CPU: n/a
# or a fused activation (normcpp "activation=relu" vs torch F.relu(F.batch_norm(...))).
# Then add Case rows in build_cases() under "ADD NEW ROWS HERE".

# ---- forward + backward (one training step) vs PyTorch autograd ------------------------
# normcpp: ``*_forward`` then ``*_backward`` (the public functional API; grad_input, and
# grad_weight/grad_bias, are all computed); torch: ``x.requires_grad_(); y = F.op(...);
# y.backward(dy)`` with weight and bias as parameters (requires_grad, grads reset per call);
# NumPy: the same forward and the closed-form backward. The cell's result is grad_input;
# normcpp's is checked against PyTorch's (rtol 1e-3, atol 1e-4), the peers against a
# float64 NumPy reference. grad_output has the input's shape and memory layout.

BWD_TOL = (1e-3, 1e-4)


def _with_grad_out(make):
    def _make(case: Case, x: np.ndarray, rng) -> Data:
        d = make(case, x, rng)
        dyb = rng.standard_normal(d["base"].shape, dtype=np.float32).astype(case.dtype, copy=False)
        d["dy_base"] = dyb
        d["dy"] = dyb.transpose(0, 3, 1, 2) if case.layout == "nhwc" else dyb
        return d

    return _make


def _norm_bwd(g, xhat, invstd, axes, center=True):
    """grad_input of ``y = xhat * w + b`` with ``g = dy * w``, the statistics over ``axes``."""
    gx = (g * xhat).mean(axis=axes, keepdims=True)
    dx = g - xhat * gx
    if center:
        dx -= g.mean(axis=axes, keepdims=True)
    dx *= invstd
    return dx


def _ref_fwd_bwd(x, dy, w, b, axes, eps, ct, center=True):
    """(dx, y, dw_full, db_full): forward and backward over ``axes`` (w, b broadcastable)."""
    x = x.astype(ct, copy=False)
    dy = dy.astype(ct, copy=False)
    if center:
        mean = x.mean(axis=axes, keepdims=True)
        xc = x - mean
    else:
        xc = x
    invstd = 1.0 / np.sqrt(np.mean(np.square(xc), axis=axes, keepdims=True) + ct(eps))
    xhat = xc * invstd
    y = xhat * w
    if b is not None:
        y += b
    dx = _norm_bwd(dy * w, xhat, invstd, axes, center)
    return dx, y, dy * xhat


def _ref_bn_bwd(d: Data, ct):
    x = d["x"]
    w = _bcast(d["weight"].astype(ct), x.ndim)
    b = _bcast(d["bias"].astype(ct), x.ndim)
    dx, y, dyx = _ref_fwd_bwd(x, d["dy"], w, b, _bn_axes(x.ndim), d["eps"], ct)
    axes = _bn_axes(x.ndim)
    return dx, y, dyx.sum(axis=axes), d["dy"].astype(ct).sum(axis=axes)


def _ref_in_bwd(d: Data, ct):
    x = d["x"]
    w = _bcast(d["weight"].astype(ct), x.ndim)
    b = _bcast(d["bias"].astype(ct), x.ndim)
    dx, y, dyx = _ref_fwd_bwd(x, d["dy"], w, b, tuple(range(2, x.ndim)), d["eps"], ct)
    return dx, y, dyx.sum(axis=_bn_axes(x.ndim))


def _ref_gn_bwd(d: Data, ct):
    x = d["x"]
    n, c = x.shape[:2]
    g = d["num_groups"]
    gs = (n, g, c // g, -1)  # reshape copies for channels-last, as a NumPy user's code would
    w = d["weight"].astype(ct).reshape(1, g, c // g, 1)
    b = d["bias"].astype(ct).reshape(1, g, c // g, 1)
    dx, y, dyx = _ref_fwd_bwd(x.reshape(gs), d["dy"].reshape(gs), w, b, (2, 3), d["eps"], ct)
    return dx.reshape(x.shape), y.reshape(x.shape), dyx.sum(axis=(0, 3)).reshape(c)


def _ref_ln_bwd(d: Data, ct, rms=False):
    x = d["x"]
    axes = tuple(range(_ln_axis(d), x.ndim))
    w = d["weight"].astype(ct)
    b = None if rms else d["bias"].astype(ct)
    dx, y, dyx = _ref_fwd_bwd(x, d["dy"], w, b, axes, d["eps"], ct, center=not rms)
    return dx, y, dyx.sum(axis=tuple(range(_ln_axis(d))))


def _torch_fwd_bwd(fwd, bias=True):
    """torch(d): a call doing ``y = fwd(d, x, w, b); y.backward(dy)`` and returning x.grad."""

    def make(d: Data):
        if fwd is None:
            return None
        x0 = _torch_x(d)
        dy = (torch.from_numpy(d["dy_base"]).permute(0, 3, 1, 2)
              if d["case"].layout == "nhwc" else torch.from_numpy(d["dy"]))
        wt = _tp(d["weight"]).detach().requires_grad_()
        bt = _tp(d["bias"]).detach().requires_grad_() if bias else None

        def call():
            wt.grad = None  # a training step zeroes the parameter grads
            if bt is not None:
                bt.grad = None
            xt = x0.detach().requires_grad_()
            y = fwd(d, xt, wt, bt)
            y.backward(dy)
            return xt.grad

        return call

    return make


def _torch_dx(torch_make):
    """nc_ref: PyTorch's grad_input (computed once per cell), or None without torch."""

    def get(d: Data):
        if torch is None:
            return None
        if "_torch_dx" not in d:
            call = torch_make(d)
            d["_torch_dx"] = None if call is None else call().numpy().astype(np.float64)
        return d["_torch_dx"]

    return get


def _bwd_spec(name, make, normcpp, ref, torch_make, fresh=None) -> OpSpec:
    return OpSpec(name=name, make=_with_grad_out(make), normcpp=normcpp, ref=ref,
                  torch=torch_make, onnx=lambda d: None, fresh=fresh, has_out=False,
                  autograd=True, nc_ref=_torch_dx(torch_make), nc_tol=BWD_TOL)


def _nc_bn_bwd(d: Data, out):
    x, dy, w = d["x"], d["dy"], d["weight"]

    def call():
        _, m, r = nc.batch_norm_forward(x, d["running_mean"], d["running_var"], w, d["bias"],
                                        True, d["momentum"], d["eps"])
        return nc.batch_norm_backward(dy, x, w, m, r, True)[0]

    return call


def _nc_in_bwd(d: Data, out):
    x, dy, w = d["x"], d["dy"], d["weight"]

    def call():
        _, m, r = nc.instance_norm_forward(x, None, None, w, d["bias"], True, d["momentum"],
                                           d["eps"])
        return nc.instance_norm_backward(dy, x, w, m, r)[0]

    return call


def _nc_gn_bwd(d: Data, out):
    x, dy, w, g = d["x"], d["dy"], d["weight"], d["num_groups"]

    def call():
        _, m, r = nc.group_norm_forward(x, g, w, d["bias"], d["eps"])
        return nc.group_norm_backward(dy, x, g, w, m, r)[0]

    return call


def _nc_ln_bwd(d: Data, out):
    x, dy, w, ns = d["x"], d["dy"], d["weight"], d["normalized_shape"]

    def call():
        _, m, r = nc.layer_norm_forward(x, ns, w, d["bias"], d["eps"])
        return nc.layer_norm_backward(dy, x, ns, w, m, r)[0]

    return call


def _nc_rms_bwd(d: Data, out):
    x, dy, w, ns = d["x"], d["dy"], d["weight"], d["normalized_shape"]

    def call():
        _, r = nc.rms_norm_forward(x, ns, w, d["eps"])
        return nc.rms_norm_backward(dy, x, ns, w, r)[0]

    return call


def _t_bn_train(d, x, w, b):
    rm, rv = _tp(d["rm0"].copy()), _tp(d["rv0"].copy())
    return F.batch_norm(x, rm, rv, w, b, True, d["momentum"], d["eps"])


BWD_SPECS = [
    _bwd_spec("batch_norm_train+bwd", _make_bn_train, _nc_bn_bwd, _ref_bn_bwd,
              _torch_fwd_bwd(_t_bn_train), fresh=_fresh_bn),
    _bwd_spec("instance_norm+bwd", _make_channels, _nc_in_bwd, _ref_in_bwd,
              _torch_fwd_bwd(lambda d, x, w, b: F.instance_norm(
                  x, None, None, w, b, True, d["momentum"], d["eps"]))),
    _bwd_spec("group_norm+bwd", _make_group, _nc_gn_bwd, _ref_gn_bwd,
              _torch_fwd_bwd(lambda d, x, w, b: F.group_norm(x, d["num_groups"], w, b, d["eps"]))),
    _bwd_spec("layer_norm+bwd", _make_last, _nc_ln_bwd, _ref_ln_bwd,
              _torch_fwd_bwd(lambda d, x, w, b: F.layer_norm(x, d["normalized_shape"], w, b,
                                                             d["eps"]))),
    _bwd_spec("rms_norm+bwd", _make_last, _nc_rms_bwd,
              functools.partial(_ref_ln_bwd, rms=True),
              _torch_fwd_bwd((lambda d, x, w, b: F.rms_norm(x, d["normalized_shape"], w, d["eps"]))
                             if F is not None and hasattr(F, "rms_norm") else None, bias=False)),
]
OPS.update({s.name: s for s in BWD_SPECS})

# ---- fused activation (inference) vs norm-then-activation ------------------------------
# normcpp: ``op(..., activation=act)`` (one pass); NumPy: the op's formula, then the
# activation in place; torch: F.op then F.relu/F.silu (inplace=True) or F.gelu (exact erf).

FUSED_ACTS = ("relu", "silu", "gelu")


def _erf(z: np.ndarray) -> np.ndarray:
    try:
        from scipy.special import erf

        return erf(z)
    except ImportError:  # Abramowitz-Stegun 7.1.26, |error| < 1.5e-7
        s = np.sign(z)
        a = np.abs(z)
        t = 1.0 / (1.0 + 0.3275911 * a)
        p = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027
                                                                          + t * 1.061405429))))
        return (s * (1.0 - p * np.exp(-a * a))).astype(z.dtype, copy=False)


def _np_act(act: str, y: np.ndarray) -> np.ndarray:
    """``act(y)`` in y's dtype, in place where it can be."""
    one = y.dtype.type(1)
    if act == "relu":
        np.maximum(y, 0, out=y)
    elif act == "silu":
        t = np.exp(-y)
        t += one
        y /= t
    elif act == "gelu":
        t = _erf(y * y.dtype.type(1 / math.sqrt(2)))
        t += one
        t *= y.dtype.type(0.5)
        y *= t
    else:
        raise ValueError(act)
    return y


def _torch_act(act: str, y):
    if act == "relu":
        return F.relu(y, inplace=True)
    if act == "silu":
        return F.silu(y, inplace=True)
    return F.gelu(y)


def _fused(base: OpSpec, act: str) -> OpSpec:
    def torch_call(d):
        f = base.torch(d)
        return None if f is None else (lambda: _torch_act(act, f()))

    return OpSpec(
        name=f"{base.name}+{act}",
        make=base.make,
        normcpp=lambda d, out: functools.partial(base.normcpp(d, out), activation=act),
        ref=lambda d, ct: _np_act(act, base.ref(d, ct)),
        torch=torch_call,
        onnx=lambda d: None,  # two nodes: the one-node ONNX harness does not cover it
        fresh=base.fresh,
    )


OPS.update({s.name: s for s in (_fused(b, a) for b in (BN_EVAL, GROUP, LAYER) for a in FUSED_ACTS)})

# ---- normalize: uint8 NHWC images -> float32 NCHW, (x / 255 - mean) / std -------------
# Case layout "nhwc": the images are (N, H, W, C) uint8 memory (``base``), shape the logical
# NCHW. NumPy: ``((x.astype(np.float32) / 255 - mean) / std).transpose(0, 3, 1, 2)`` made
# contiguous (mean/std float32 arrays, so it stays float32); torch: the torchvision-style
# tensor pipeline ``from_numpy(x).permute(0, 3, 1, 2).float().div(255).sub(m).div(s)
# .contiguous()``. The copy roofline is a copy of the float32 output's bytes.

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _make_normalize(case: Case, x: np.ndarray, rng) -> Data:
    base = make_input(case)[1]
    n, h, w, c = base.shape
    d = Data(case=case, x=x, base=base)
    d["mean"] = np.resize(np.array(IMAGENET_MEAN, np.float32), c)
    d["std"] = np.resize(np.array(IMAGENET_STD, np.float32), c)
    d["out_shape"] = (n, c, h, w)
    return d


def _ref_normalize(d: Data, ct):
    x = d["base"]
    y = (x.astype(ct) / ct(255) - d["mean"].astype(ct)) / d["std"].astype(ct)
    return np.ascontiguousarray(y.transpose(0, 3, 1, 2))


def _torch_normalize(d: Data):
    xt = torch.from_numpy(d["base"])
    m = torch.from_numpy(d["mean"]).view(-1, 1, 1)
    s = torch.from_numpy(d["std"]).view(-1, 1, 1)
    return lambda: xt.permute(0, 3, 1, 2).float().div(255).sub(m).div(s).contiguous()


def _normalize_copy_src(d: Data) -> np.ndarray:
    if "_y32" not in d:
        d["_y32"] = np.full(d["out_shape"], 1.0, np.float32)  # touched pages, not calloc'd
    return d["_y32"]


OPS["normalize"] = OpSpec(
    name="normalize",
    make=_make_normalize,
    normcpp=lambda d, out: functools.partial(nc.normalize, d["base"], d["mean"], d["std"], out=out),
    ref=_ref_normalize,
    torch=_torch_normalize,
    onnx=lambda d: None,
    out_dtype="float32",
    out_like=lambda d: np.empty(d["out_shape"], np.float32),
    keeps_layout=False,
    copy_of=_normalize_copy_src,
)

# ----------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------


@dataclass
class Timing:
    median_us: float
    min_us: float
    q1_us: float
    q3_us: float
    repeats: int
    number: int

    def as_dict(self):
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def _calibrate(fn: Callable[[], Any]) -> tuple[int, float]:
    """Warm ``fn`` up (first touch, lazy init, thread pool start) and return (calls per timed
    batch, seconds per call): tiny calls are batched to >= ~200 us, as single-call timings of
    sub-microsecond calls are noisy."""
    pc = time.perf_counter
    t0 = pc()
    fn()
    t1 = pc()
    fn()
    one = max(min(t1 - t0, pc() - t1), 1e-8)
    if one >= 2e-4:
        return 1, one
    k = max(1, int(2e-4 / one))
    t = pc()
    for _ in range(k):
        fn()
    one = max((pc() - t) / k, 1e-8)
    return max(1, math.ceil(2e-4 / one)), one


def measure(fn: Callable[[], Any], min_time: float, min_repeats: int,
            max_time: float | None = None) -> Timing:
    """Median per-call time: warm up, batch tiny calls (>= ~200 us per repeat), then repeat
    until ``min_time`` seconds have passed and at least ``min_repeats`` repeats were taken."""
    pc = time.perf_counter
    max_time = max_time if max_time is not None else 4 * min_time
    number, _ = _calibrate(fn)
    times: list[float] = []
    start = pc()
    gc_was = gc.isenabled()
    gc.disable()
    try:
        rng = range(number)
        while True:
            t = pc()
            for _ in rng:
                fn()
            times.append((pc() - t) / number)
            el = pc() - start
            if len(times) >= min_repeats and el >= min_time:
                break
            if el >= max_time and len(times) >= min_repeats:
                break
            if len(times) >= 1_000_000:
                break
    finally:
        if gc_was:
            gc.enable()
    a = np.array(times) * 1e6
    return Timing(float(np.median(a)), float(a.min()), float(np.percentile(a, 25)),
                  float(np.percentile(a, 75)), len(times), number)


def measure_interleaved(fns: dict[str, Callable[[], Any]], min_time: float, min_repeats: int,
                        pause: float = 0.0, pause_after: dict[str, float] | None = None,
                        rounds: int = 8) -> dict[str, Timing]:
    """``measure`` for several callables at once, interleaved: each takes a turn of about
    ``min_time / rounds`` seconds (one untimed call, then timed batches) until each has had
    ``min_time`` seconds and ``min_repeats`` repeats. A machine whose speed drifts (a shared VM
    that flips between a fast and a slow state for seconds at a time) then slows every
    contender alike, instead of whichever happened to be timed in the slow moment. ``pause``
    seconds of sleep after each turn (``pause_after[name]`` after ``name``'s) let a thread pool
    that spins after its work (OpenMP, ONNX Runtime) go idle so it does not steal the next
    contender's cores."""
    pc = time.perf_counter
    number: dict[str, int] = {}
    per_turn: dict[str, int] = {}
    if pause_after:  # the callers' checks just ran every contender once
        time.sleep(max(pause_after.values()))
    for name, fn in fns.items():
        number[name], one = _calibrate(fn)
        # turns of at least 20 ms: the first milliseconds after a pause run slow (idle vCPUs
        # wake, thread pools restart), which short --quick turns would be made of
        turn = max(min_time / rounds, 0.02)
        per_turn[name] = max(1, min(int(turn / (one * number[name])), 1000))
        wait = (pause_after or {}).get(name, pause)  # as after a turn (below)
        if wait:
            time.sleep(wait)
    times: dict[str, list[float]] = {name: [] for name in fns}
    spent = dict.fromkeys(fns, 0.0)
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(1000 * rounds):
            todo = [n for n in fns if spent[n] < min_time or len(times[n]) < min_repeats]
            if not todo:
                break
            for name in todo:
                fn, rng = fns[name], range(number[name])
                fn()  # caches and thread pools: as the previous turn left them, not as ours
                start = pc()
                for _ in range(per_turn[name]):
                    t = pc()
                    for _ in rng:
                        fn()
                    times[name].append((pc() - t) / number[name])
                spent[name] += pc() - start
                wait = (pause_after or {}).get(name, pause)
                if wait:
                    time.sleep(wait)
    finally:
        if gc_was:
            gc.enable()
    out = {}
    for name, ts in times.items():
        a = np.array(ts) * 1e6
        out[name] = Timing(float(np.median(a)), float(a.min()), float(np.percentile(a, 25)),
                           float(np.percentile(a, 75)), len(ts), number[name])
    return out


class SplitCopy:
    """``np.copyto`` of ``src`` into ``dst`` split over ``threads`` Python threads (NumPy
    releases the GIL for large copies): the roofline for multi-threaded cells."""

    def __init__(self, dst: np.ndarray, src: np.ndarray, threads: int):
        d = dst.reshape(-1).view(np.uint8)
        s = src.reshape(-1).view(np.uint8)
        bounds = np.linspace(0, d.size, threads + 1).astype(np.int64) // 64 * 64
        bounds[-1] = d.size
        self.parts = [(d[a:b], s[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        self.pool = ThreadPoolExecutor(max_workers=threads)

    def __call__(self):
        futs = [self.pool.submit(np.copyto, a, b) for a, b in self.parts[1:]]
        np.copyto(*self.parts[0])
        for f in futs:
            f.result()

    def close(self):
        self.pool.shutdown()


# ----------------------------------------------------------------------------------------
# Verification
# ----------------------------------------------------------------------------------------

TOL = {  # (rtol, atol) against the float64 reference
    "normcpp": {"float32": (1e-4, 1e-4), "float16": (1e-2, 1e-2), "float64": (1e-9, 1e-9)},
    "peer": {"float32": (1e-3, 1e-3), "float16": (3e-2, 3e-2), "float64": (1e-6, 1e-6)},
}


def check_close(got, want: np.ndarray, dtype: str, who: str,
                tol: tuple[float, float] | None = None) -> str | None:
    """None if ``got`` matches the reference (``tol`` = (rtol, atol) overrides ``TOL``), else a
    short message."""
    if got is None:
        return "no result"
    got = np.asarray(got)
    if got.shape != want.shape:
        return f"shape {got.shape} != {want.shape}"
    if who == "normcpp" and got.dtype != np.dtype(dtype):
        return f"dtype {got.dtype} != {dtype}"
    rtol, atol = tol or TOL["normcpp" if who == "normcpp" else "peer"][dtype]
    g = got.astype(np.float64)
    bad = ~np.isclose(g, want, rtol=rtol, atol=atol)
    if bad.any() or not np.isfinite(g).all():
        err = np.abs(g - want)
        i = np.unravel_index(int(np.nanargmax(np.where(np.isfinite(err), err, np.inf))), err.shape)
        return (f"{int(bad.sum())}/{bad.size} elements off, max abs err "
                f"{float(np.nanmax(err)):.3g} at {tuple(int(v) for v in i)} "
                f"(got {g[i]:.6g}, want {want[i]:.6g})")
    return None


# ----------------------------------------------------------------------------------------
# Peers: torch and ONNX Runtime callables
# ----------------------------------------------------------------------------------------


def torch_callable(spec: OpSpec, d: Data):
    if torch is None or spec.torch is None:
        return None
    return spec.torch(d)  # called (and timed) inside torch.inference_mode()


def onnx_model_bytes(spec: OpSpec, d: Data) -> bytes | None:
    if onnx is None or spec.onnx is None:
        return None
    desc = spec.onnx(d)
    if desc is None:
        return None
    from onnx import helper, numpy_helper

    op_type, opset, attrs, inits, n_out = desc
    x = d.x_nchw
    tp = helper.np_dtype_to_tensor_dtype(x.dtype)
    X = helper.make_tensor_value_info("X", tp, list(x.shape))
    outs = ["Y"] + [f"Y{i}" for i in range(1, n_out)]
    Y = [helper.make_tensor_value_info(o, tp, None) for o in outs]
    init = [numpy_helper.from_array(np.ascontiguousarray(a), name=k) for k, a in inits.items()]
    node = helper.make_node(op_type, ["X"] + list(inits), outs, **attrs)
    graph = helper.make_graph([node], op_type, [X], Y, init)
    ir = 10 if opset <= 21 else 11  # opset 23 (RMSNormalization) requires IR version 11
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir)
    return model.SerializeToString()


def ort_session(model: bytes, threads: int):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


# ----------------------------------------------------------------------------------------
# Machine info
# ----------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "logical_cpus": os.cpu_count(),
    }
    try:
        info["affinity_cpus"] = len(os.sched_getaffinity(0))
    except Exception:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            txt = f.read()
        model, flags, cores = None, set(), None
        for line in txt.splitlines():
            k, _, v = line.partition(":")
            k = k.strip()
            if k == "model name" and model is None:
                model = v.strip()
            elif k == "flags" and not flags:
                flags = set(v.split())
            elif k == "cpu cores" and cores is None:
                cores = int(v)
        info["cpu_model"] = model
        info["physical_cores_per_socket"] = cores
        want = ["sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                "avx512dq", "avx512_fp16", "avx512_bf16", "amx_tile"]
        info["flags"] = {k: (k in flags) for k in want}
    except Exception:
        pass
    try:
        caches = {}
        root = "/sys/devices/system/cpu/cpu0/cache"
        for idx in sorted(os.listdir(root)):
            if not idx.startswith("index"):
                continue
            p = os.path.join(root, idx)
            with open(os.path.join(p, "level")) as f:
                lvl = f.read().strip()
            with open(os.path.join(p, "type")) as f:
                typ = f.read().strip()
            with open(os.path.join(p, "size")) as f:
                size = f.read().strip()
            caches[f"L{lvl}{'d' if typ == 'Data' else 'i' if typ == 'Instruction' else ''}"] = size
        info["caches"] = caches
    except Exception:
        pass
    try:
        with open("/proc/meminfo") as f:
            info["mem_total"] = f.readline().split(":")[1].strip()
    except Exception:
        pass
    try:
        info["loadavg_start"] = [round(v, 2) for v in os.getloadavg()]
    except Exception:
        pass
    info["normcpp"] = nc.config() if nc is not None else f"unavailable ({NC_IMPORT_ERROR})"
    info["torch"] = torch.__version__ if torch is not None else None
    info["onnxruntime"] = ort.__version__ if ort is not None else None
    info["onnx"] = onnx.__version__ if onnx is not None else None
    env = {k: os.environ[k] for k in sorted(os.environ)
           if k.startswith(("OMP_", "NORMCPP_", "MKL_", "OPENBLAS_", "KMP_", "GOMP_"))}
    info["env"] = env
    try:
        info["git"] = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                                     capture_output=True, text=True, timeout=5).stdout.strip() or None
    except Exception:
        info["git"] = None
    return info


# ----------------------------------------------------------------------------------------
# Running one case
# ----------------------------------------------------------------------------------------


def _short_err(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0][:160] if msg else ''}"


def _cpu_busy_s() -> float | None:
    """CPU-seconds all processes have been busy (from /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        busy = v[0] + v[1] + v[2] + sum(v[5:8])  # user nice system irq softirq steal
        return busy / os.sysconf("SC_CLK_TCK")
    except Exception:
        return None


class ForeignLoad:
    """How many CPUs other processes kept busy while a block ran (a noise indicator:
    multi-threaded timings are meaningless when other processes take the cores)."""

    def __enter__(self):
        self.b0, self.t0, self.w0 = _cpu_busy_s(), os.times(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        b1, t1, w1 = _cpu_busy_s(), os.times(), time.perf_counter()
        self.cpus = None
        if self.b0 is not None and b1 is not None and w1 > self.w0:
            own = (t1.user + t1.system) - (self.t0.user + self.t0.system)
            self.cpus = max(0.0, ((b1 - self.b0) - own) / (w1 - self.w0))
        return False


NOISY_CPUS = 0.25  # a cell is flagged "noisy" when others used more than this many CPUs


def set_threads(t: int):
    if nc is not None:
        nc.set_num_threads(t)
    if torch is not None:
        torch.set_num_threads(t)


def run_case(case: Case, threads_list: Sequence[int], args) -> list[dict[str, Any]]:
    spec = OPS[case.op]
    rng = np.random.default_rng(12345)
    x, base = make_input(case)
    d = spec.make(case, x, rng)
    mt = lambda fn: measure(fn, args.min_time, args.min_repeats)

    # float64 reference (verification) -- for stateful ops from fresh running stats
    if spec.fresh:
        spec.fresh(d)
    ref_full = spec.ref(d, np.float64)
    ref = ref_full[0] if isinstance(ref_full, tuple) else ref_full
    rdt = spec.out_dtype or case.dtype  # the result's dtype
    nc_want, nc_tol = ref, spec.nc_tol  # what normcpp is checked against
    if spec.nc_ref is not None:
        alt = spec.nc_ref(d)
        if alt is not None:
            nc_want = alt

    rows: list[dict[str, Any]] = []
    shared: dict[str, Any] = {}  # thread-independent: the NumPy timing and its verdict
    nc_first_out = None
    model = None
    model_err = None
    try:
        model = onnx_model_bytes(spec, d) if ort is not None else None
    except Exception as exc:
        model_err = _short_err(exc)

    for t in threads_list:
        set_threads(t)
        row: dict[str, Any] = {
            "label": case.label, "op": case.op, "shape": list(case.shape), "layout": case.layout,
            "dtype": case.dtype, "params": {k: (list(v) if isinstance(v, tuple) else v)
                                            for k, v in case.params},
            "threads": t, "nbytes": case.nbytes, "times": {}, "verify": {}, "notes": [],
        }
        times, verify = row["times"], row["verify"]

        # Every contender is verified first, then all are timed together, interleaved
        # (measure_interleaved), so a drift of the machine's speed hits them alike.
        timers: dict[str, Callable[[], Any]] = {}
        closers: list[Callable[[], Any]] = []

        # -- copy roofline --------------------------------------------------------------
        csrc = spec.copy_of(d) if spec.copy_of else base
        dst = np.empty_like(csrc)
        timers["copy_1t"] = functools.partial(np.copyto, dst, csrc)
        if t > 1 and csrc.nbytes >= (1 << 20):
            sc = SplitCopy(dst, csrc, t)
            closers.append(sc.close)
            timers["copy_mt"] = sc

        # -- normcpp --------------------------------------------------------------------
        out = None
        if nc is None:
            verify["normcpp"] = f"not importable: {NC_IMPORT_ERROR}"
        else:
            try:
                if spec.fresh:
                    spec.fresh(d)
                y = spec.normcpp(d, None)()
                err = check_close(y, nc_want, rdt, "normcpp", nc_tol)
                if err is None and spec.check_extra:
                    err = spec.check_extra(d, ref_full)
                if (err is None and case.layout == "nhwc" and spec.keeps_layout
                        and isinstance(y, np.ndarray)):
                    if not y.transpose(0, 2, 3, 1).flags.c_contiguous:
                        row["notes"].append("normcpp output is not channels-last")
                if err is None:
                    if nc_first_out is None:
                        nc_first_out = np.array(y, copy=True)
                    elif not np.array_equal(y, nc_first_out, equal_nan=True):
                        diff = np.max(np.abs(y.astype(np.float64) - nc_first_out))
                        row["notes"].append(
                            f"normcpp result differs across thread counts (max {diff:.3g})")
                        row["bitwise_across_threads"] = False
                    else:
                        row["bitwise_across_threads"] = True
                verify["normcpp"] = err or "ok"
                del y
                timers["normcpp"] = spec.normcpp(d, None)
                if spec.has_out:
                    try:
                        out = spec.out_like(d) if spec.out_like else np.empty_like(x)
                        fn = spec.normcpp(d, out)
                        fn()
                        timers["normcpp_out"] = fn
                    except Exception as exc:
                        out = None
                        row["notes"].append(f"normcpp out=: {_short_err(exc)}")
            except Exception as exc:
                verify["normcpp"] = _short_err(exc)
                if args.traceback:
                    traceback.print_exc()

        # -- numpy (single-threaded: timed once per case, on its own: it is the slow one) -
        if "numpy" not in shared:
            ct = np.float32 if rdt in ("float16", "float32") else np.float64

            def np_call(d=d, ct=ct, dt=np.dtype(rdt)):
                r = spec.ref(d, ct)
                r = r[0] if isinstance(r, tuple) else r
                return r.astype(dt, copy=False)

            if spec.fresh:
                spec.fresh(d)
            shared["numpy_verify"] = check_close(np_call(), ref, rdt, "peer") or "ok"
            shared["numpy"] = mt(np_call)
        times["numpy"] = shared["numpy"].as_dict()
        verify["numpy"] = shared["numpy_verify"]

        # -- torch ----------------------------------------------------------------------
        # autograd rows call .backward(): no inference mode for them
        tmode = (torch.inference_mode() if torch is not None and not spec.autograd
                 else contextlib.nullcontext())
        if torch is not None:
            try:
                fn = torch_callable(spec, d)
                if fn is None:
                    verify["torch"] = "n/a"
                else:
                    with tmode:
                        verify["torch"] = check_close(fn().numpy(), ref, rdt, "peer") or "ok"
                    timers["torch"] = fn
            except Exception as exc:
                verify["torch"] = _short_err(exc)

        # -- onnxruntime ----------------------------------------------------------------
        sess = None
        if ort is not None:
            if model is None:
                verify["onnxruntime"] = model_err or "n/a"
            else:
                try:
                    sess = ort_session(model, t)
                    fn = functools.partial(sess.run, ["Y"], {"X": d.x_nchw})
                    verify["onnxruntime"] = check_close(fn()[0], ref, rdt, "peer") or "ok"
                    timers["onnxruntime"] = fn
                    if case.layout == "nhwc":
                        row["ort_input"] = "nchw-copy"
                except Exception as exc:
                    verify["onnxruntime"] = _short_err(exc)

        # -- timing: all together, interleaved ------------------------------------------
        try:
            with tmode:
                # with several threads: OpenMP pools spin ~ms after a parallel region, ONNX
                # Runtime's for 50-70 ms after a run (measured here: normcpp 2-thread
                # rms_norm (1,128,4096) took 810 us within 30 ms of an ORT run, 90-100 us
                # after 70-100 ms)
                got = measure_interleaved(
                    timers, args.min_time, args.min_repeats, pause=0.005 if t > 1 else 0.0,
                    pause_after={"onnxruntime": 0.1} if t > 1 else None)
        finally:
            for close in closers:
                close()
            timers = fn = sess = None  # drop the ORT session: its spinning pool must go
            time.sleep(0.005)
        for name, tm in got.items():
            times[name] = tm.as_dict()
        row["copy_us"] = min(times[k]["median_us"] for k in ("copy_1t", "copy_mt") if k in times)
        if out is not None and "normcpp_out" in times:
            # y depends only on x and the (batch or frozen) statistics, so the last out=
            # result must still match the reference
            err_out = check_close(out, nc_want, rdt, "normcpp", nc_tol)
            if err_out is not None and verify["normcpp"] == "ok":
                verify["normcpp"] = "out=: " + err_out
        del out, dst, csrc

        finish_row(row)
        rows.append(row)
    return rows


def finish_row(row: dict[str, Any]):
    """speedup = fastest verified peer / normcpp; ratio = normcpp / copy."""
    times, verify = row["times"], row["verify"]
    peers = {p: times[p]["median_us"] for p in PEERS if p in times and verify.get(p) == "ok"}
    if not peers and "numpy" in times and verify.get("numpy") == "ok":
        peers = {"numpy": times["numpy"]["median_us"]}
    nc_ok = "normcpp" in times and verify.get("normcpp") == "ok"
    row["peer"] = min(peers, key=peers.get) if peers else None
    row["peer_us"] = peers[row["peer"]] if peers else None
    row["normcpp_us"] = times["normcpp"]["median_us"] if "normcpp" in times else None
    row["normcpp_out_us"] = times["normcpp_out"]["median_us"] if "normcpp_out" in times else None
    row["speedup"] = (row["peer_us"] / row["normcpp_us"]) if (nc_ok and peers) else None
    row["ratio"] = (row["normcpp_us"] / row["copy_us"]) if nc_ok else None
    row["ratio_out"] = (row["normcpp_out_us"] / row["copy_us"]) if (nc_ok and row["normcpp_out_us"]) else None
    row["wrong"] = "normcpp" in verify and verify["normcpp"] not in ("ok",) and "normcpp" in times
    row["normcpp_error"] = None if nc_ok else verify.get("normcpp")


# ----------------------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------------------


def _fmt_us(v) -> str:
    if v is None:
        return "n/a"
    if v >= 1e5:
        return f"{v:.0f}"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def _fmt_x(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _peer_cell(row, name) -> str:
    t = row["times"].get(name)
    v = row["verify"].get(name)
    if t is None:
        return "n/a" if v in (None, "n/a", "ok") else "err"
    s = _fmt_us(t["median_us"])
    return s if v == "ok" else s + "(wrong)"


COLUMNS = ["op", "shape", "layout", "dtype", "thr", "MB", "normcpp", "nc out=", "numpy",
           "torch", "ort", "copy", "speedup", "vs", "ratio", "ratio out="]


def table_rows(rows) -> list[list[str]]:
    out = []
    for r in rows:
        if r["speedup"] is not None:
            sp = _fmt_x(r["speedup"])
        elif r["wrong"]:
            sp = "WRONG"
        else:
            sp = "n/a"
        ort_s = _peer_cell(r, "onnxruntime")
        if r.get("ort_input") == "nchw-copy" and ort_s not in ("n/a", "err"):
            ort_s += "*"
        out.append([
            r["op"], "x".join(map(str, r["shape"])), r["layout"], r["dtype"].replace("float", "f"),
            str(r["threads"]), f"{r['nbytes'] / 1e6:.2f}",
            _fmt_us(r["normcpp_us"]) if r["normcpp_us"] is not None else (
                "err" if r.get("normcpp_error") else "n/a"),
            _fmt_us(r["normcpp_out_us"]), _peer_cell(r, "numpy"), _peer_cell(r, "torch"), ort_s,
            _fmt_us(r["copy_us"]), sp, r["peer"] or "-", _fmt_x(r["ratio"]), _fmt_x(r["ratio_out"]),
        ])
    return out


def print_table(rows, file=sys.stdout):
    body = table_rows(rows)
    widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c) for i, c in enumerate(COLUMNS)]
    right = set(range(4, len(COLUMNS))) - {13}
    fmt = lambda cells: "  ".join(c.rjust(w) if i in right else c.ljust(w)
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    print(fmt(COLUMNS), file=file)
    print("  ".join("-" * w for w in widths), file=file)
    for b in body:
        print(fmt(b), file=file)


def markdown_table(rows) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |",
             "|" + "|".join("---:" if i >= 4 and i != 13 else "---" for i in range(len(COLUMNS))) + "|"]
    for b in table_rows(rows):
        lines.append("| " + " | ".join(b) + " |")
    return "\n".join(lines)


def geomean(vals):
    vals = [v for v in vals if v is not None and v > 0]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else None


BIG = 8 * 10**6  # "tensors >= 8 MB"


def summarize(rows) -> dict[str, Any]:
    s: dict[str, Any] = {}
    f32 = [r for r in rows if r["dtype"] == "float32"]
    s["geomean_speedup_float32"] = geomean([r["speedup"] for r in f32])
    s["geomean_speedup_all"] = geomean([r["speedup"] for r in rows])
    s["geomean_speedup_by_threads"] = {
        str(t): geomean([r["speedup"] for r in f32 if r["threads"] == t])
        for t in sorted({r["threads"] for r in rows})}
    s["cells"] = len(rows)
    s["noisy_cells"] = sum(bool(r.get("noisy")) for r in rows)
    fc = [r["foreign_cpus"] for r in rows if r.get("foreign_cpus") is not None]
    s["foreign_cpus_mean"] = (sum(fc) / len(fc)) if fc else None
    s["cells_with_speedup"] = sum(r["speedup"] is not None for r in rows)
    s["wrong_cells"] = [f"{r['label']} t={r['threads']}: {r['verify'].get('normcpp')}"
                        for r in rows if r["wrong"]]
    s["normcpp_errors"] = sorted({f"{r['label']}: {r['normcpp_error']}" for r in rows
                                  if r["normcpp_error"] and not r["wrong"]})

    def cell(r):
        return {"label": r["label"], "threads": r["threads"], "normcpp_us": r["normcpp_us"],
                "normcpp_out_us": r["normcpp_out_us"],
                "peer": r["peer"], "peer_us": r["peer_us"], "speedup": r["speedup"],
                "copy_us": r["copy_us"], "ratio": r["ratio"], "ratio_out": r["ratio_out"]}

    sp = [r for r in rows if r["speedup"] is not None]
    if sp:
        s["slowest_cell"] = cell(min(sp, key=lambda r: r["speedup"]))
        s["slowest_cell_float32"] = cell(min([r for r in sp if r["dtype"] == "float32"] or sp,
                                             key=lambda r: r["speedup"]))
        s["float32_cells_slower_than_peer"] = [
            f"{r['label']} t={r['threads']}: {r['speedup']:.2f}x vs {r['peer']}"
            for r in sp if r["dtype"] == "float32" and r["speedup"] < 1.0]
    big = [r for r in rows if r["nbytes"] >= BIG and r["ratio"] is not None]
    if big:
        s["worst_copy_ratio_ge_8MB"] = cell(max(big, key=lambda r: r["ratio"]))
        bo = [r for r in big if r["ratio_out"] is not None]
        if bo:
            s["worst_copy_ratio_out_ge_8MB"] = cell(max(bo, key=lambda r: r["ratio_out"]))
        per_op = {}
        for r in big:
            k = f"{r['op']} {r['dtype']}"
            cur = per_op.get(k)
            if cur is None or r["ratio"] > cur["ratio"]:
                per_op[k] = cell(r)
        s["worst_copy_ratio_ge_8MB_by_op"] = per_op
    # thread scaling of normcpp on cells >= 8 MB (max threads vs 1 thread)
    ts = sorted({r["threads"] for r in rows})
    if len(ts) > 1 and 1 in ts:
        tmax = ts[-1]
        by = {(r["label"], r["threads"]): r for r in rows}
        sc = {}
        for r in rows:
            if r["threads"] == tmax and r["nbytes"] >= BIG and r["normcpp_us"]:
                r1 = by.get((r["label"], 1))
                if r1 and r1["normcpp_us"]:
                    sc[r["label"]] = r1["normcpp_us"] / r["normcpp_us"]
        s[f"thread_scaling_{tmax}_vs_1_ge_8MB"] = sc
    tiny = [r for r in rows if tuple(r["shape"]) == (1, 16, 8, 8) and r["dtype"] == "float32"
            and r["normcpp_us"] is not None]
    if tiny:
        s["tiny_1x16x8x8_us"] = {f"{r['op']} {r['layout']} t={r['threads']}": r["normcpp_us"]
                                 for r in tiny}
    return s


def tiny_module_calls(args) -> dict[str, dict[str, float | None]]:
    """Target 3 of issue 3: one module call on (1, 16, 8, 8) float32, end to end from Python,
    normcpp against torch.nn (under ``torch.no_grad()``, as inference runs), 1 thread.
    Returns {name: {"normcpp": us, "torch": us}}."""
    x = np.random.default_rng(7).standard_normal((1, 16, 8, 8)).astype(np.float32)
    out: dict[str, dict[str, float | None]] = {}
    old_nc = nc.get_num_threads()
    old_torch = torch.get_num_threads() if torch is not None else None
    nc.set_num_threads(1)
    if torch is not None:
        torch.set_num_threads(1)
    try:
        makers = {
            "BatchNorm2d eval": (lambda: nc.BatchNorm2d(16).eval(),
                                 lambda: torch.nn.BatchNorm2d(16).eval()),
            "BatchNorm2d train": (lambda: nc.BatchNorm2d(16), lambda: torch.nn.BatchNorm2d(16)),
            "GroupNorm(4, 16)": (lambda: nc.GroupNorm(4, 16), lambda: torch.nn.GroupNorm(4, 16)),
            "LayerNorm(8)": (lambda: nc.LayerNorm(8), lambda: torch.nn.LayerNorm(8)),
        }
        for name, (make_nc, make_torch) in makers.items():
            m = make_nc()
            fns: dict[str, Callable[[], Any]] = {"normcpp": lambda m=m: m(x)}
            if torch is not None:
                tm = make_torch()
                xt = torch.from_numpy(x)

                def call_torch(tm=tm, xt=xt):
                    with torch.no_grad():
                        return tm(xt)

                fns["torch"] = call_torch
            got = measure_interleaved(fns, args.min_time, args.min_repeats)
            out[name] = {k: (got[k].median_us if k in got else None) for k in ("normcpp", "torch")}
    finally:
        nc.set_num_threads(old_nc)
        if torch is not None:
            torch.set_num_threads(old_torch)
    return out


def tiny_functional_calls(args, cases: Sequence[Case]) -> dict[str, float]:
    """Target 3 of issue 3, functional calls: every float32 (1, 16, 8, 8) cell of the matrix,
    normcpp's call (no out=) end to end from Python, 1 thread, all timed together
    (``measure_interleaved``, 4x the rounds) beside the copy of the same bytes. The matrix
    times each cell apart, seconds after the previous one, so a slow spell of a shared VM (the
    copy's 0.45 us becoming 0.8-0.9) lands on a few tiny cells only; here it lands on all of
    them alike. Returns {"op layout": median us, ..., "copy": median us}."""
    tiny = [c for c in cases if tuple(c.shape) == (1, 16, 8, 8) and c.dtype == "float32"]
    if not tiny:
        return {}
    fns: dict[str, Callable[[], Any]] = {}
    base = None
    for case in tiny:
        spec = OPS[case.op]
        x, base = make_input(case)
        d = spec.make(case, x, np.random.default_rng(12345))
        if spec.fresh:
            spec.fresh(d)
        fns[f"{case.op} {case.layout}"] = spec.normcpp(d, None)
    dst = np.empty_like(base)
    fns["copy"] = functools.partial(np.copyto, dst, base)
    old_nc = nc.get_num_threads()
    nc.set_num_threads(1)
    try:
        got = measure_interleaved(fns, 4 * args.min_time, args.min_repeats, rounds=32)
    finally:
        nc.set_num_threads(old_nc)
    return {k: round(v.median_us, 3) for k, v in got.items()}


def summary_lines(s: dict[str, Any]) -> list[str]:
    L = []
    g = s.get("geomean_speedup_float32")
    L.append(f"geometric-mean speedup over the fastest peer (float32 cells): {_fmt_x(g)}x"
             + f"   (all cells: {_fmt_x(s.get('geomean_speedup_all'))}x; by threads: "
             + ", ".join(f"t={k}: {_fmt_x(v)}x" for k, v in s.get("geomean_speedup_by_threads", {}).items())
             + ")")
    c = s.get("slowest_cell")
    if c:
        L.append(f"slowest cell vs its peer: {c['label']} t={c['threads']}: normcpp "
                 f"{_fmt_us(c['normcpp_us'])} us vs {c['peer']} {_fmt_us(c['peer_us'])} us "
                 f"= {c['speedup']:.2f}x")
    c2 = s.get("slowest_cell_float32")
    if c2 and c and c2["label"] != c["label"]:
        L.append(f"slowest float32 cell: {c2['label']} t={c2['threads']}: {c2['speedup']:.2f}x vs {c2['peer']}")
    slower = s.get("float32_cells_slower_than_peer")
    if slower is not None:
        L.append(f"float32 cells slower than the fastest peer: {len(slower)}")
    for key, what in (("worst_copy_ratio_ge_8MB", "ratio"), ("worst_copy_ratio_out_ge_8MB", "ratio_out")):
        c = s.get(key)
        if c:
            L.append(f"worst ratio to copy, tensors >= 8 MB ({'with out=' if what == 'ratio_out' else 'no out='}): "
                     f"{c['label']} t={c['threads']}: {c[what]:.2f}x "
                     f"(normcpp {_fmt_us(c['normcpp_out_us' if what == 'ratio_out' else 'normcpp_us'])} us, "
                     f"copy {_fmt_us(c['copy_us'])} us)")
    fun = s.get("tiny_functional_1x16x8x8_us")
    if fun:
        L.append("tiny (1,16,8,8) float32 functional call, 1 thread, all timed together: "
                 + ", ".join(f"{k} {_fmt_us(v)} us" for k, v in fun.items() if k != "copy")
                 + f" (np.copyto of the same bytes {_fmt_us(fun.get('copy'))} us)")
    mods = s.get("tiny_module_1x16x8x8_us")
    if mods:
        L.append("tiny (1,16,8,8) float32 module call, 1 thread: " + "; ".join(
            f"{k} normcpp {_fmt_us(v['normcpp'])} us vs torch {_fmt_us(v['torch'])} us"
            for k, v in mods.items()))
    if s.get("noisy_cells"):
        L.append(f"NOISE: {s['noisy_cells']} of {s['cells']} cells ran while other processes kept "
                 f"> {NOISY_CPUS} CPUs busy (mean {s['foreign_cpus_mean']:.2f} CPUs): their timings, "
                 "the multi-threaded ones above all, are unreliable")
    if s.get("wrong_cells"):
        L.append(f"WRONG normcpp results: {len(s['wrong_cells'])} cells (see results.json)")
    if s.get("normcpp_errors"):
        L.append(f"normcpp raised on {len(s['normcpp_errors'])} cases (see results.json)")
    return L


def write_markdown(path, rows, summary, machine, args, elapsed):
    m = machine
    nccfg = m.get("normcpp")
    flags = m.get("flags", {})
    lines = [
        "# normcpp benchmark results",
        "",
        (f"Generated by `python bench/run.py{' ' + ' '.join(args.argv) if args.argv else ''}` on "
        f"{m['date']} in {elapsed:.0f} s."),
        "",
        "## Machine",
        "",
        (f"- CPU: {m.get('cpu_model')} — {m.get('logical_cpus')} logical CPUs"
        f" (affinity {m.get('affinity_cpus')}), caches {m.get('caches')}, memory {m.get('mem_total')}"),
        "- flags: " + ", ".join(k for k, v in flags.items() if v),
        f"- normcpp: {nccfg}",
        (f"- Python {m['python']}, NumPy {m['numpy']}, torch {m.get('torch')}, "
        f"onnxruntime {m.get('onnxruntime')}, onnx {m.get('onnx')}"),
        f"- {m['platform']}" + (f"; env {m['env']}" if m.get("env") else ""),
        f"- load average at start {m.get('loadavg_start')}, at end {m.get('loadavg_end')}",
        "",
        "## Summary",
        "",
    ]
    lines += [f"- {l}" for l in summary_lines(summary)]
    big = summary.get("worst_copy_ratio_ge_8MB_by_op")
    if big:
        lines += ["", "Worst ratio to a same-size copy per op, tensors >= 8 MB:", "",
                  "| op | cell | threads | ratio | ratio out= |", "|---|---|---:|---:|---:|"]
        for k, c in big.items():
            lines.append(f"| {k} | {c['label']} | {c['threads']} | {_fmt_x(c['ratio'])} | {_fmt_x(c['ratio_out'])} |")
        lines += ["", ("What one core allows a training op's two visits (statistics, then the "
                       "normalization) against a copy: bench/ROOFLINE.md (bench/roofline.cpp).")]
    sc = next((v for k, v in summary.items() if k.startswith("thread_scaling_")), None)
    if sc:
        vals = sorted(sc.values())
        lines += ["", (f"normcpp thread scaling on cells >= 8 MB (all threads vs 1): min "
                      f"{vals[0]:.2f}x, median {vals[len(vals) // 2]:.2f}x, max {vals[-1]:.2f}x.")]
    tiny = summary.get("tiny_1x16x8x8_us")
    if tiny:
        lines += ["", "Tiny tensor (1,16,8,8) float32, functional call end to end: "
                  + ", ".join(f"{k} {_fmt_us(v)} us" for k, v in tiny.items()) + "."]
    lines += [
        "",
        "## Table",
        "",
        ("Times are medians in µs. `normcpp` allocates its output like the peers; `nc out=` "
        "writes into a preallocated array. `speedup` = fastest peer (`vs`; torch or "
        "onnxruntime, NumPy only when neither has a verified time) / normcpp. `ratio` = "
        "normcpp / copy, where `copy` is `np.copyto` of the same bytes (the faster of 1 thread "
        "and a threads-way split). `*`: ONNX Runtime was fed a contiguous NCHW copy of the "
        "channels-last input (conversion not timed). NumPy is single-threaded (timed once). "
        "`(wrong)`: result did not match the float64 reference; WRONG: normcpp did not."),
        "",
        markdown_table(rows),
        "",
    ]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def write_chart(path, rows) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:
        return f"matplotlib unavailable ({type(exc).__name__})"
    labels = []
    for r in rows:
        if r["label"] not in labels:
            labels.append(r["label"])
    threads = sorted({r["threads"] for r in rows})
    by = {(r["label"], r["threads"]): r["speedup"] for r in rows}
    h = 0.8 / max(len(threads), 1)
    fig, ax = plt.subplots(figsize=(10, max(3.0, 0.28 * len(labels) + 1.5)))
    ys = np.arange(len(labels))
    for i, t in enumerate(threads):
        vals = [by.get((lab, t)) for lab in labels]
        v = np.array([x if x else np.nan for x in vals], dtype=float)
        ax.barh(ys + (i - (len(threads) - 1) / 2) * h, v, height=h, label=f"{t} thread{'s' if t > 1 else ''}")
    ax.set_xscale("log")
    ax.axvline(1.0, color="k", lw=1)
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_ylim(len(labels) - 0.5, -0.5)  # first case on top, no empty margins
    ax.set_xlabel("speedup over the fastest peer (torch / onnxruntime), log scale; > 1: normcpp faster")
    ax.set_title("normcpp speedup per cell")
    ax.legend(loc="lower right")
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return None


# ----------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default=None,
                    help="comma-separated thread counts (default: 1,<os.cpu_count()>)")
    ap.add_argument("--quick", action="store_true", help="few shapes and short timings (< 60 s)")
    ap.add_argument("--filter", default=None,
                    help="only cells whose label contains SUBSTR (case-insensitive), e.g. "
                         "'group_norm', 'nhwc', 'float16', '32x64x56x56'; '|' separates alternatives")
    ap.add_argument("--out", default=HERE, help="output directory (default: bench/)")
    ap.add_argument("--markdown", action="store_true", help="also write RESULTS.md")
    ap.add_argument("--min-time", type=float, default=None,
                    help="seconds of repeats per timing (default 0.2; --quick 0.02)")
    ap.add_argument("--min-repeats", type=int, default=None, help="default 5; --quick 3")
    ap.add_argument("--wait-quiet", type=float, default=0, metavar="SEC",
                    help="before starting, wait up to SEC seconds for other processes to leave "
                         "the CPUs idle (timings on a busy machine are noise)")
    ap.add_argument("--list", action="store_true", help="list the cells and exit")
    ap.add_argument("--no-chart", action="store_true", help="skip speedup.png")
    ap.add_argument("--traceback", action="store_true", help="print tracebacks of normcpp errors")
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.min_time is None:
        args.min_time = 0.02 if args.quick else 0.2
    if args.min_repeats is None:
        args.min_repeats = 3 if args.quick else 5
    ncpu = os.cpu_count() or 1
    if args.threads:
        args.threads_list = sorted({int(v) for v in args.threads.split(",") if v.strip()})
    else:
        args.threads_list = sorted({1, ncpu})
    if any(t < 1 for t in args.threads_list):
        ap.error("--threads must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    cases = build_cases(args.quick)
    if args.filter:
        alts = [a.strip().lower() for a in args.filter.split("|") if a.strip()]
        cases = [c for c in cases if any(a in c.label.lower() for a in alts)]
    if args.list:
        for c in cases:
            print(c.label)
        print(f"{len(cases)} cases x threads {args.threads_list}")
        return 0
    if not cases:
        print("no cells match --filter", file=sys.stderr)
        return 2

    if args.wait_quiet > 0:
        deadline = time.perf_counter() + args.wait_quiet
        while True:
            with ForeignLoad() as fl:
                time.sleep(2.0)
            if fl.cpus is None or fl.cpus <= NOISY_CPUS:
                break
            if time.perf_counter() > deadline:
                print(f"  still busy (others use {fl.cpus:.2f} CPUs); starting anyway", flush=True)
                break
            print(f"  waiting for a quiet machine: others use {fl.cpus:.2f} CPUs", flush=True)
            time.sleep(8.0)
    machine = machine_info()
    print(f"normcpp benchmark: {len(cases)} cases x threads {args.threads_list}; "
          f"cpu {machine.get('cpu_model')} ({machine.get('logical_cpus')} cpus)", flush=True)
    print(f"  normcpp: {machine['normcpp']}", flush=True)
    print(f"  torch {machine['torch']}, onnxruntime {machine['onnxruntime']}, numpy {np.__version__}",
          flush=True)

    la = machine.get("loadavg_start")
    if la and la[0] > 0.5:
        print(f"  WARNING: load average {la} -- other processes are running; multi-threaded "
              "timings will be noisy", flush=True)
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    old_torch_threads = torch.get_num_threads() if torch is not None else None
    old_nc_threads = nc.get_num_threads() if nc is not None else None
    try:
        for i, case in enumerate(cases):
            t0 = time.perf_counter()
            try:
                with ForeignLoad() as fl:
                    crow = run_case(case, args.threads_list, args)
            except Exception as exc:  # a broken case must not lose the rest of the run
                print(f"[{i + 1}/{len(cases)}] {case.label}: FAILED {_short_err(exc)}", flush=True)
                if args.traceback:
                    traceback.print_exc()
                continue
            for r in crow:
                r["foreign_cpus"] = None if fl.cpus is None else round(fl.cpus, 3)
                r["noisy"] = fl.cpus is not None and fl.cpus > NOISY_CPUS
            rows += crow
            msg = "; ".join(
                f"t={r['threads']} nc {_fmt_us(r['normcpp_us'])}us "
                f"{'x' + _fmt_x(r['speedup']) if r['speedup'] else ('WRONG' if r['wrong'] else 'n/a')}"
                for r in crow)
            noise = f", others used {fl.cpus:.2f} CPUs" if fl.cpus is not None and fl.cpus > NOISY_CPUS else ""
            print(f"[{i + 1}/{len(cases)}] {case.label}: {msg}  ({time.perf_counter() - t0:.1f} s{noise})",
                  flush=True)
    finally:
        if torch is not None:
            torch.set_num_threads(old_torch_threads)
        if nc is not None:
            nc.set_num_threads(old_nc_threads)
        _INPUT_CACHE.clear()
    elapsed = time.perf_counter() - start
    try:
        machine["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    except Exception:
        pass

    # sort by thread count then case order, so each table block is one thread count
    order = {c.label: i for i, c in enumerate(cases)}
    rows.sort(key=lambda r: (r["threads"], order.get(r["label"], 0)))
    print()
    print_table(rows)
    summary = summarize(rows)
    if nc is not None and not args.filter:
        try:
            summary["tiny_functional_1x16x8x8_us"] = tiny_functional_calls(args, cases)
        except Exception as exc:  # the table above must still be written
            print(f"tiny functional calls: FAILED {_short_err(exc)}", flush=True)
        try:
            summary["tiny_module_1x16x8x8_us"] = tiny_module_calls(args)
        except Exception as exc:  # the table above must still be written
            print(f"tiny module calls: FAILED {_short_err(exc)}", flush=True)
    print()
    for line in summary_lines(summary):
        print(line)
    print(f"\nelapsed {elapsed:.1f} s")

    os.makedirs(args.out, exist_ok=True)
    res = {"machine": machine, "args": {k: v for k, v in vars(args).items() if k != "argv"},
           "argv": args.argv, "elapsed_s": round(elapsed, 2), "summary": summary, "cells": rows,
           "notes": {
               "speedup": "fastest verified peer (torch, onnxruntime; numpy if neither) / normcpp, median times",
               "ratio": "normcpp (no out=) / copy; ratio_out uses the out= time",
               "copy": "np.copyto of the same bytes: min(1 thread, threads-way split)",
               "onnxruntime": "channels-last cells feed ORT a contiguous NCHW copy (not timed)",
               "numpy": "single-threaded; timed once per case and repeated for each thread count",
           }}
    json_path = os.path.join(args.out, "results.json")
    with open(json_path, "w") as f:
        json.dump(res, f, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o))
    print(f"wrote {json_path}")
    if not args.no_chart:
        png = os.path.join(args.out, "speedup.png")
        err = write_chart(png, rows)
        print(f"wrote {png}" if err is None else f"no chart: {err}")
    if args.markdown:
        md = os.path.join(args.out, "RESULTS.md")
        write_markdown(md, rows, summary, machine, args, elapsed)
        print(f"wrote {md}")
    return 1 if summary.get("wrong_cells") else 0


if __name__ == "__main__":
    sys.exit(main())
