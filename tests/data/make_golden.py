"""Make the golden PyTorch fixtures ``golden_<op>.npz`` next to this script.

Run from anywhere with PyTorch installed (the fixtures were made with torch 2.13.0):

    python tests/data/make_golden.py

Each file holds, for a handful of cases, the inputs (made with a fixed seed), the arguments,
PyTorch's output and, where the op updates them, the running statistics after the call.
Arrays are stored as ``<case>__<name>``; ``cases`` is a JSON list of
``{"name", "layout", "args"}`` where ``args`` are the op's scalar arguments and ``layout``
says how ``tests/test_golden.py`` lays out the (C-contiguous) stored input before the call.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import torch
import torch.nn.functional as F

HERE = pathlib.Path(__file__).resolve().parent
SEED = 20240613


def _t(a):
    return None if a is None else torch.from_numpy(np.ascontiguousarray(a))


def _to_torch_layout(x, layout):
    t = torch.from_numpy(x)
    if layout == "channels_last":
        perm = (0,) + tuple(range(2, x.ndim)) + (1,)
        inv = np.argsort(perm)
        t = t.permute(*perm).contiguous().permute(*inv)  # channels-last memory, NC... shape
    return t


def batch_norm_cases(rng):
    specs = [
        ("f32_nchw_train", (4, 3, 5, 5), np.float32, "contiguous",
         {"training": True, "momentum": 0.1, "eps": 1e-5}, True, True),
        ("f64_ncl_eval", (3, 5, 17), np.float64, "contiguous",
         {"training": False, "momentum": 0.1, "eps": 1e-5}, True, True),
        ("f32_nhwc_train", (2, 7, 4, 6), np.float32, "channels_last",
         {"training": True, "momentum": 0.25, "eps": 1e-3}, True, True),
        ("f32_nc_train_nostats", (6, 4), np.float32, "contiguous",
         {"training": True, "momentum": 0.1, "eps": 1e-5}, False, False),
        ("f64_ncdhw_train", (2, 3, 2, 3, 5), np.float64, "contiguous",
         {"training": True, "momentum": 0.3, "eps": 1e-5}, True, True),
        ("f32_ndhwc_eval", (2, 5, 2, 3, 4), np.float32, "channels_last",
         {"training": False, "momentum": 0.1, "eps": 1e-5}, True, False),
    ]
    for name, shape, dtype, layout, args, stats, affine in specs:
        c = shape[1]
        arrays = {"x": (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)}
        if affine:
            arrays["weight"] = rng.uniform(0.5, 2, c).astype(dtype)
            arrays["bias"] = rng.standard_normal(c).astype(dtype)
        if stats:
            arrays["running_mean"] = rng.standard_normal(c).astype(dtype)
            arrays["running_var"] = rng.uniform(0.5, 2, c).astype(dtype)
        rm = arrays.get("running_mean")
        rv = arrays.get("running_var")
        rm_t = None if rm is None else _t(rm.copy())
        rv_t = None if rv is None else _t(rv.copy())
        y = F.batch_norm(_to_torch_layout(arrays["x"], layout), rm_t, rv_t,
                         _t(arrays.get("weight")), _t(arrays.get("bias")), **args)
        arrays["y"] = y.contiguous().numpy()
        if stats:
            arrays["new_running_mean"] = rm_t.numpy()
            arrays["new_running_var"] = rv_t.numpy()
        yield name, layout, args, arrays


def instance_norm_cases(rng):
    specs = [
        ("f32_nchw", (2, 3, 5, 5), np.float32, "contiguous",
         {"use_input_stats": True, "momentum": 0.1, "eps": 1e-5}, False, False),
        ("f64_ncl_stats_affine", (3, 4, 17), np.float64, "contiguous",
         {"use_input_stats": True, "momentum": 0.2, "eps": 1e-5}, True, True),
        ("f32_running", (2, 3, 4, 4), np.float32, "contiguous",
         {"use_input_stats": False, "momentum": 0.1, "eps": 1e-5}, True, True),
        ("f32_nhwc_stats", (2, 6, 3, 5), np.float32, "channels_last",
         {"use_input_stats": True, "momentum": 0.1, "eps": 1e-3}, True, True),
        ("f64_ncdhw", (2, 2, 2, 3, 4), np.float64, "contiguous",
         {"use_input_stats": True, "momentum": 0.1, "eps": 1e-5}, False, True),
    ]
    for name, shape, dtype, layout, args, stats, affine in specs:
        c = shape[1]
        arrays = {"x": (rng.standard_normal(shape) * 1.5 - 0.3).astype(dtype)}
        if affine:
            arrays["weight"] = rng.uniform(0.5, 2, c).astype(dtype)
            arrays["bias"] = rng.standard_normal(c).astype(dtype)
        if stats:
            arrays["running_mean"] = rng.standard_normal(c).astype(dtype)
            arrays["running_var"] = rng.uniform(0.5, 2, c).astype(dtype)
        rm_t = _t(arrays["running_mean"].copy()) if stats else None
        rv_t = _t(arrays["running_var"].copy()) if stats else None
        y = F.instance_norm(_to_torch_layout(arrays["x"], layout), rm_t, rv_t,
                            _t(arrays.get("weight")), _t(arrays.get("bias")), **args)
        arrays["y"] = y.contiguous().numpy()
        if stats:
            arrays["new_running_mean"] = rm_t.numpy()
            arrays["new_running_var"] = rv_t.numpy()
        yield name, layout, args, arrays


def group_norm_cases(rng):
    specs = [
        ("f32_g3", (2, 6, 5, 5), np.float32, "contiguous", 3, True),
        ("f64_g2_ncl", (3, 4, 17), np.float64, "contiguous", 2, True),
        ("f32_g_eq_c_5d", (2, 8, 2, 3, 3), np.float32, "contiguous", 8, False),
        ("f32_g1_nc", (4, 6), np.float32, "contiguous", 1, True),
        ("f32_nhwc_g4", (2, 12, 3, 5), np.float32, "channels_last", 4, True),
    ]
    for name, shape, dtype, layout, groups, affine in specs:
        c = shape[1]
        arrays = {"x": (rng.standard_normal(shape) + 1.0).astype(dtype)}
        if affine:
            arrays["weight"] = rng.uniform(0.5, 2, c).astype(dtype)
            arrays["bias"] = rng.standard_normal(c).astype(dtype)
        args = {"num_groups": groups, "eps": 1e-5}
        y = F.group_norm(_to_torch_layout(arrays["x"], layout), groups,
                         _t(arrays.get("weight")), _t(arrays.get("bias")), eps=1e-5)
        arrays["y"] = y.contiguous().numpy()
        yield name, layout, args, arrays


def layer_norm_cases(rng):
    specs = [
        ("f32_row33", (4, 33), np.float32, [33], "both"),
        ("f64_3x17", (2, 3, 17), np.float64, [3, 17], "both"),
        ("f32_row257_noaffine", (2, 5, 257), np.float32, [257], "none"),
        ("f32_weight_only", (3, 2, 4, 5), np.float32, [4, 5], "weight"),
        ("f64_row1", (5, 1), np.float64, [1], "both"),
    ]
    for name, shape, dtype, ns, affine in specs:
        arrays = {"x": (rng.standard_normal(shape) * 3 - 1).astype(dtype)}
        if affine != "none":
            arrays["weight"] = rng.uniform(0.5, 2, ns).astype(dtype)
        if affine == "both":
            arrays["bias"] = rng.standard_normal(ns).astype(dtype)
        args = {"normalized_shape": ns, "eps": 1e-5}
        y = F.layer_norm(_t(arrays["x"]), ns, _t(arrays.get("weight")),
                         _t(arrays.get("bias")), eps=1e-5)
        arrays["y"] = y.numpy()
        yield name, "contiguous", args, arrays


def rms_norm_cases(rng):
    specs = [
        ("f32_row33_eps_default", (4, 33), np.float32, [33], True, None),
        ("f64_3x17_eps", (2, 3, 17), np.float64, [3, 17], True, 1e-6),
        ("f32_noweight", (3, 31), np.float32, [31], False, None),
        ("f32_row1027", (2, 1027), np.float32, [1027], True, 1e-5),
    ]
    for name, shape, dtype, ns, weighted, eps in specs:
        arrays = {"x": (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)}
        if weighted:
            arrays["weight"] = rng.uniform(0.5, 2, ns).astype(dtype)
        args = {"normalized_shape": ns, "eps": eps}
        y = F.rms_norm(_t(arrays["x"]), ns, _t(arrays.get("weight")), eps=eps)
        arrays["y"] = y.numpy()
        yield name, "contiguous", args, arrays


MAKERS = {
    "batch_norm": batch_norm_cases,
    "instance_norm": instance_norm_cases,
    "group_norm": group_norm_cases,
    "layer_norm": layer_norm_cases,
    "rms_norm": rms_norm_cases,
}


def main() -> None:
    torch.set_num_threads(1)
    total = 0
    for op, maker in MAKERS.items():
        rng = np.random.default_rng([SEED, len(op)])
        cases, payload = [], {}
        for name, layout, args, arrays in maker(rng):
            cases.append({"name": name, "layout": layout, "args": args})
            for key, value in arrays.items():
                payload[f"{name}__{key}"] = np.ascontiguousarray(value)
        payload["cases"] = np.array(json.dumps(cases))
        payload["torch_version"] = np.array(torch.__version__)
        path = HERE / f"golden_{op}.npz"
        np.savez_compressed(path, **payload)
        total += path.stat().st_size
        print(f"{path.name}: {len(cases)} cases, {path.stat().st_size} bytes")
    print(f"total {total} bytes")


if __name__ == "__main__":
    main()
