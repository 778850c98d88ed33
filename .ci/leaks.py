#!/usr/bin/env python
"""Leak check: 10^5 calls of every op leave the resident set size (RSS) where it was.

For each op -- every functional forward, ``*_forward`` and backward, the statistics helpers,
the modules (forward, backward, state_dict round trips), the conversion paths (strided,
float16, list input, ``out=``) and the error paths (TypeError/ValueError raised from C++ and
from Python) -- on tiny inputs ((2, 3, 4, 4) and similar):

1. warm up (``--warmup`` calls), ``gc.collect()``, read RSS from ``/proc/self/statm``;
2. ``--calls`` calls (default 100000), ``gc.collect()``, read RSS again.

The growth must stay under ``--limit-kib`` (default 1024 KiB = 1 MB) for every op; the script
prints a table and exits with status 1 otherwise (or if an op raises what it should not).

Usage::

    PYTHONPATH=python python .ci/leaks.py            # all ops, 10^5 calls each
    python .ci/leaks.py --calls 20000 --filter norm   # quicker, a subset
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

import normcpp as nc
import numpy as np

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def build_ops():
    """name -> zero-argument callable. Inputs are built once, outside the timed calls."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    x64 = x.astype(np.float64)
    x16 = x.astype(np.float16)
    x_cl = np.moveaxis(np.ascontiguousarray(np.moveaxis(x, 1, -1)), -1, 1)
    x_sliced = np.repeat(x, 2, axis=3)[..., ::2]
    x_list = x[0].tolist()
    w, b = np.ones(3, np.float32), np.zeros(3, np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    out = np.empty_like(x)
    g = np.ones_like(x)
    w_ln = np.ones((4, 4))
    _, m_bn, r_bn = nc.batch_norm_forward(x, None, None, w, b, True)
    _, m_in, r_in = nc.instance_norm_forward(x)
    _, m_gn, r_gn = nc.group_norm_forward(x, 3)
    _, m_ln, r_ln = nc.layer_norm_forward(x, (4, 4), w_ln)
    _, r_rms = nc.rms_norm_forward(x, 4)
    n, mean, m2 = nc.batch_norm_stats(x)
    invstd = 1.0 / np.sqrt(m2 / n + 1e-5)
    sd, sx = nc.batch_norm_backward_reduce(g, x, mean, invstd)
    x_nan = x.copy()
    x_nan[0, 1, 0, 0] = np.nan
    rm_e, rv_e = np.zeros(3, np.float32), np.ones(3, np.float32)

    bn = nc.BatchNorm2d(3)
    bn_eval = nc.BatchNorm2d(3).eval()
    inorm = nc.InstanceNorm2d(3, affine=True, track_running_stats=True)
    gn = nc.GroupNorm(3, 3)
    ln = nc.LayerNorm((4, 4))
    rms = nc.RMSNorm(4)
    sd_bn = bn.state_dict()
    bad_sd = dict(sd_bn, running_var=np.full(3, np.nan))

    def module_step(m):
        def step():
            m(x)
            m.backward(g)
        return step

    def expect(exc, fn, *args, **kwargs):
        def call():
            try:
                fn(*args, **kwargs)
            except exc:
                return
            raise AssertionError(f"{fn.__name__} did not raise {exc.__name__}")
        return call

    ops = {
        # functional forward
        "batch_norm train": lambda: nc.batch_norm(x, rm, rv, w, b, True),
        "batch_norm eval": lambda: nc.batch_norm(x, rm, rv, w, b),
        "batch_norm_forward": lambda: nc.batch_norm_forward(x, None, None, w, b, True),
        "instance_norm": lambda: nc.instance_norm(x, rm, rv, w, b),
        "instance_norm_forward": lambda: nc.instance_norm_forward(x),
        "group_norm": lambda: nc.group_norm(x, 3, w, b),
        "group_norm_forward": lambda: nc.group_norm_forward(x, 3),
        "layer_norm": lambda: nc.layer_norm(x, (4, 4), w_ln, w_ln),
        "layer_norm_forward": lambda: nc.layer_norm_forward(x, 4),
        "rms_norm": lambda: nc.rms_norm(x, 4),
        "rms_norm_forward": lambda: nc.rms_norm_forward(x, (4, 4), w_ln),
        "batch_norm_stats": lambda: nc.batch_norm_stats(x),
        # layouts, dtypes and conversions
        "batch_norm channels-last": lambda: nc.batch_norm(x_cl, None, None, w, b, True),
        "group_norm strided copy": lambda: nc.group_norm(x_sliced, 3),
        "layer_norm float16": lambda: nc.layer_norm(x16, 4),
        "instance_norm float64": lambda: nc.instance_norm(x64),
        "rms_norm list input": lambda: nc.rms_norm(x_list, 4),
        "batch_norm out=": lambda: nc.batch_norm(x, rm, rv, w, b, out=out),
        "layer_norm out=input": lambda: nc.layer_norm(out, 4, out=out),
        # backward
        "batch_norm_backward": lambda: nc.batch_norm_backward(g, x, w, m_bn, r_bn),
        "instance_norm_backward": lambda: nc.instance_norm_backward(g, x, None, m_in, r_in),
        "group_norm_backward": lambda: nc.group_norm_backward(g, x, 3, None, m_gn, r_gn),
        "layer_norm_backward": lambda: nc.layer_norm_backward(g, x, (4, 4), w_ln, m_ln, r_ln),
        "rms_norm_backward": lambda: nc.rms_norm_backward(g, x, 4, None, r_rms),
        "batch_norm_backward_reduce": lambda: nc.batch_norm_backward_reduce(g, x, mean, invstd),
        "batch_norm_backward_elemt": lambda: nc.batch_norm_backward_elemt(
            g, x, w, mean, invstd, sd, sx, float(n[0])),
        # modules
        "BatchNorm2d fwd+bwd": module_step(bn),
        "BatchNorm2d eval": lambda: bn_eval(x),
        "InstanceNorm2d fwd+bwd": module_step(inorm),
        "GroupNorm fwd+bwd": module_step(gn),
        "LayerNorm fwd+bwd": module_step(ln),
        "RMSNorm fwd+bwd": module_step(rms),
        "state_dict round trip": lambda: bn.load_state_dict(bn.state_dict()),
        # error paths
        "error: int input (C++)": expect(TypeError, nc.batch_norm, x.astype(np.int32)),
        "error: bad num_groups": expect(ValueError, nc.group_norm, x, 2),
        "error: out overlaps": expect(ValueError, nc.layer_norm, x, 4, out=x[::-1]),
        "error: bad weight length": expect(ValueError, nc.layer_norm, x, 4, np.ones(5)),
        "error: NaN batch stats": expect(ValueError, nc.batch_norm, x_nan, rm_e, rv_e,
                                         training=True),
        "error: backward saved size": expect(ValueError, nc.batch_norm_backward, g, x, w,
                                             m_bn[:2], r_bn),
        "error: module wrong rank": expect(ValueError, bn, x[0]),
        "error: bad load_state_dict": expect(ValueError, bn.load_state_dict, bad_sd),
    }
    return ops


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=100_000)
    p.add_argument("--warmup", type=int, default=None, help="default: calls / 10")
    p.add_argument("--limit-kib", type=float, default=1024.0)
    p.add_argument("--filter", default="", help="only ops whose name contains this")
    args = p.parse_args(argv)
    warmup = args.warmup if args.warmup is not None else max(1, args.calls // 10)

    nc.set_num_threads(1)  # tiny inputs run on one thread anyway; keep the pool out of RSS
    ops = {k: v for k, v in build_ops().items() if args.filter in k}
    if not ops:
        print(f"no op matches --filter {args.filter!r}")
        return 1
    print(f"normcpp {nc.__version__} ({nc.config()['isa']}), {args.calls} calls per op after "
          f"{warmup} warm-up calls; limit {args.limit_kib:.0f} KiB of RSS growth per op")
    print(f"{'op':<30} {'us/call':>8} {'RSS MiB':>8} {'growth KiB':>11}  verdict")
    failed = []
    worst = 0.0
    start = time.perf_counter()
    for name, fn in ops.items():
        try:
            for _ in range(warmup):
                fn()
            gc.collect()
            before = rss_bytes()
            t0 = time.perf_counter()
            for _ in range(args.calls):
                fn()
            dt = time.perf_counter() - t0
            gc.collect()
            growth = (rss_bytes() - before) / 1024.0
        except Exception as exc:  # noqa: BLE001 (reported, then the script fails)
            print(f"{name:<30} {'':>8} {'':>8} {'':>11}  ERROR {exc!r}")
            failed.append(name)
            continue
        ok = growth < args.limit_kib
        worst = max(worst, growth)
        if not ok:
            failed.append(name)
        print(f"{name:<30} {dt / args.calls * 1e6:>8.2f} {before / 2**20:>8.1f} "
              f"{growth:>11.1f}  {'ok' if ok else 'LEAK'}")
    print(f"{len(ops)} ops x {args.calls} calls in {time.perf_counter() - start:.0f} s; "
          f"largest growth {worst:.1f} KiB")
    if failed:
        print(f"FAILED: {', '.join(failed)}")
        return 1
    print("no leaks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
