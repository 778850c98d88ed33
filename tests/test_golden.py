"""normcpp against PyTorch outputs stored in ``tests/data/golden_<op>.npz`` (made by
``tests/data/make_golden.py``), so parity with PyTorch is checked without torch installed."""

from __future__ import annotations

import json
import pathlib

import normcpp as nc
import numpy as np
import pytest
import reference as ref
from conftest import is_channels_last, to_layout

DATA = pathlib.Path(__file__).resolve().parent / "data"
OPS = ["batch_norm", "instance_norm", "group_norm", "layer_norm", "rms_norm"]


def _load(op):
    with np.load(DATA / f"golden_{op}.npz") as f:
        arrays = {k: f[k] for k in f.files}
    cases = json.loads(str(arrays.pop("cases")))
    arrays.pop("torch_version", None)
    out = []
    for case in cases:
        prefix = case["name"] + "__"
        case_arrays = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
        out.append((op, case, case_arrays))
    return out


CASES = [c for op in OPS for c in _load(op)]


def test_fixtures_present_and_small():
    files = sorted(DATA.glob("golden_*.npz"))
    assert [f.name for f in files] == sorted(f"golden_{op}.npz" for op in OPS)
    assert sum(f.stat().st_size for f in files) < 1_000_000
    assert len(CASES) >= 5 * 4


def _run(op, case, a):
    """Call normcpp for a stored case; returns (y, {name: updated statistic}, x as passed)."""
    x = to_layout(a["x"], case["layout"])
    args = dict(case["args"])
    w, b = a.get("weight"), a.get("bias")
    stats = {}
    if op in ("batch_norm", "instance_norm"):
        rm = a["running_mean"].copy() if "running_mean" in a else None
        rv = a["running_var"].copy() if "running_var" in a else None
        y = getattr(nc, op)(x, rm, rv, w, b, **args)
        if rm is not None:
            stats = {"running_mean": rm, "running_var": rv}
    elif op == "group_norm":
        y = nc.group_norm(x, args["num_groups"], w, b, eps=args["eps"])
    elif op == "layer_norm":
        y = nc.layer_norm(x, args["normalized_shape"], w, b, eps=args["eps"])
    else:
        y = nc.rms_norm(x, args["normalized_shape"], w, eps=args["eps"])
    return y, stats, x


def _tol(dtype):
    rtol, atol = ref.tolerance(dtype)
    return {"rtol": 2 * rtol, "atol": 2 * atol}


@pytest.mark.parametrize("op,case,arrays", CASES, ids=[f"{c[0]}-{c[1]['name']}" for c in CASES])
def test_golden(op, case, arrays):
    y, stats, _x = _run(op, case, arrays)
    expected = arrays["y"]
    assert y.dtype == expected.dtype and y.shape == expected.shape
    np.testing.assert_allclose(y, expected, **_tol(y.dtype))
    if case["layout"] == "channels_last":
        assert is_channels_last(y)
    for name, new in stats.items():
        if case["args"].get("training", True) and case["args"].get("use_input_stats", True):
            np.testing.assert_allclose(new, arrays["new_" + name], **_tol(new.dtype))
        else:  # eval: running statistics are only read, and PyTorch left them alone too
            np.testing.assert_array_equal(new, arrays[name])
            np.testing.assert_array_equal(arrays["new_" + name], arrays[name])


@pytest.mark.parametrize("op,case,arrays", CASES, ids=[f"{c[0]}-{c[1]['name']}" for c in CASES])
def test_golden_fixture_matches_reference(op, case, arrays):
    """The fixtures themselves agree with the float64 reference (guards the fixtures)."""
    x = arrays["x"]
    args = dict(case["args"])
    w, b = arrays.get("weight"), arrays.get("bias")
    if op in ("batch_norm", "instance_norm"):
        y, rm, rv = getattr(ref, op)(x, arrays.get("running_mean"), arrays.get("running_var"),
                                     w, b, **args)
        if rm is not None:
            np.testing.assert_allclose(arrays["new_running_mean"], rm, **_tol(x.dtype))
            np.testing.assert_allclose(arrays["new_running_var"], rv, **_tol(x.dtype))
    elif op == "group_norm":
        y = ref.group_norm(x, args["num_groups"], w, b, eps=args["eps"])
    elif op == "layer_norm":
        y = ref.layer_norm(x, args["normalized_shape"], w, b, eps=args["eps"])
    else:
        y = ref.rms_norm(x, args["normalized_shape"], w, eps=args["eps"])
    np.testing.assert_allclose(arrays["y"], y, **_tol(x.dtype))
