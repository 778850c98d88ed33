#!/usr/bin/env python
"""Does normcpp release the GIL? Two Python threads on large inputs overlap in time.

With ``normcpp.set_num_threads(1)`` (each call runs on the calling thread only), it times

* ``serial``: one Python thread making ``2 * N`` calls, and
* ``two threads``: two Python threads making ``N`` calls each, started together,

and prints ``ratio = two threads / serial`` per op. A kernel that holds the GIL gives a ratio
near 1.0 (the threads take turns); one that releases it gives about 0.5 on a machine with two
idle cores (the threads run at once; memory bandwidth shared by both cores can push it
above 0.5 for the memory-bound ops). Every result is checked against a float64 NumPy
reference first, so a fast but wrong kernel cannot pass.

The ratio needs two idle cores. A second measure does not: ``py progress`` is how fast a
pure-Python counting thread advances while the main thread is inside one long normcpp call (on
an input 8x larger), relative to how fast it advances while the main thread sleeps. A control
row does the same around a C builtin that holds the GIL (``sum(range(n))``). A call that holds the GIL stops the
counter (about 0); a call that releases it lets the counter run (about 1 with a free core,
about 0.5 when the two threads share one core).

Usage::

    PYTHONPATH=python python bench/gil_overlap.py              # default sizes
    python bench/gil_overlap.py --calls 20 --size 8,64,56,56   # N and the (N, C, H, W) input
    python bench/gil_overlap.py --max-ratio 0.8                # exit 1 if any ratio is above

This is a benchmark, not a test: wall-clock numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

import normcpp as nc
import numpy as np


def _reference(name: str, x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    if name == "batch_norm (train)":
        axes = (0, 2, 3)
    elif name == "instance_norm":
        axes = (2, 3)
    elif name == "layer_norm (C, H, W)":
        axes = (1, 2, 3)
    elif name == "group_norm (G=8)":
        n = x.shape[0]
        g = x.reshape(n, 8, -1)
        y = (g - g.mean(2, keepdims=True)) / np.sqrt(g.var(2, keepdims=True) + 1e-5)
        return y.reshape(x.shape)
    else:  # rms_norm
        return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + np.finfo(np.float32).eps)
    return (x - x.mean(axes, keepdims=True)) / np.sqrt(x.var(axes, keepdims=True) + 1e-5)


def _ops(x: np.ndarray):
    shape_chw = x.shape[1:]
    return {
        "batch_norm (train)": lambda: nc.batch_norm(x, None, None, None, None, True),
        "instance_norm": lambda: nc.instance_norm(x),
        "group_norm (G=8)": lambda: nc.group_norm(x, 8),
        "layer_norm (C, H, W)": lambda: nc.layer_norm(x, shape_chw),
        "rms_norm": lambda: nc.rms_norm(x, x.shape[-1]),
    }


def _serial(fn, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return time.perf_counter() - t0


def _threaded(fn, calls_each: int, n_threads: int = 2) -> float:
    barrier = threading.Barrier(n_threads + 1)

    def work():
        barrier.wait()
        for _ in range(calls_each):
            fn()

    threads = [threading.Thread(target=work) for _ in range(n_threads)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def _python_progress(fn, repeats: int) -> float:
    """Counter speed in a pure-Python thread during one long call ``fn()`` in the main thread,
    relative to its speed while the main thread sleeps as long (best of ``repeats``). The
    switch interval is shortened meanwhile, so that handing the GIL back after the call does
    not credit the counter with a whole default 5 ms slice."""
    state = {"n": 0, "stop": False}

    def count():
        while not state["stop"]:
            state["n"] += 1

    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    t = threading.Thread(target=count)
    t.start()
    best = 0.0
    try:
        time.sleep(0.02)
        for _ in range(repeats):
            n0, t0 = state["n"], time.perf_counter()
            fn()
            n1, t1 = state["n"], time.perf_counter()
            time.sleep(t1 - t0)
            n2, t2 = state["n"], time.perf_counter()
            idle = (n2 - n1) / (t2 - t1)
            if idle > 0:
                best = max(best, ((n1 - n0) / (t1 - t0)) / idle)
    finally:
        state["stop"] = True
        t.join()
        sys.setswitchinterval(old_interval)
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=12, help="N: calls per thread (default 12)")
    p.add_argument("--size", default="8,64,56,56", help="input shape N,C,H,W (float32)")
    p.add_argument("--repeats", type=int, default=3, help="best of this many timings")
    p.add_argument("--max-ratio", type=float, default=None,
                   help="exit with status 1 if any op's ratio exceeds this")
    args = p.parse_args(argv)

    shape = tuple(int(s) for s in args.size.split(","))
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    nc.set_num_threads(1)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"normcpp {nc.__version__}, ISA {nc.config()['isa']}, normcpp threads 1, "
          f"{cpus} CPUs; input {shape} float32 ({x.nbytes / 2**20:.1f} MiB); "
          f"N = {args.calls} calls per thread")
    print(f"{'op':<22} {'1 call ms':>10} {'serial 2N s':>12} {'2 threads s':>12} {'ratio':>7} "
          f"{'py progress':>12}")
    # py progress: one long call on a bigger input (8x the elements)
    big = np.random.default_rng(1).standard_normal((shape[0] * 8,) + shape[1:]).astype(
        np.float32)
    big_ops = _ops(big)
    t0 = time.perf_counter()
    big_ops["batch_norm (train)"]()
    big_call_s = time.perf_counter() - t0
    worst = 0.0
    for name, fn in _ops(x).items():
        y = fn()
        err = np.max(np.abs(y.astype(np.float64) - _reference(name, x)))
        if not err < 1e-3:
            print(f"{name}: WRONG result (max abs error {err:.3g})")
            return 1
        fn()  # warm
        one = min(_serial(fn, 1) for _ in range(3))
        serial = min(_serial(fn, 2 * args.calls) for _ in range(args.repeats))
        two = min(_threaded(fn, args.calls) for _ in range(args.repeats))
        ratio = two / serial
        worst = max(worst, ratio)
        progress = _python_progress(big_ops[name], args.repeats)
        print(f"{name:<22} {one * 1e3:>10.2f} {serial:>12.3f} {two:>12.3f} {ratio:>7.2f} "
              f"{progress:>12.2f}")
    # control: a C call that holds the GIL for about as long as one big normcpp call
    t0 = time.perf_counter()
    sum(range(1_000_000))
    per_item = (time.perf_counter() - t0) / 1_000_000
    n_sum = max(100_000, int(big_call_s / per_item))

    def hold_gil():
        return sum(range(n_sum))

    hold_progress = _python_progress(hold_gil, args.repeats)
    print(f"{'control: GIL held':<22} {'':>10} {'':>12} {'':>12} {'':>7} {hold_progress:>12.2f}"
          "   (builtin sum(range(n)) in C, GIL held)")
    print(f"ratio = (2 threads x N calls) / (1 thread x 2N calls): ~0.5 = full overlap "
          f"(GIL released), ~1.0 = no overlap; worst {worst:.2f}")
    print("py progress = a Python thread's speed during normcpp calls / its speed alone: "
          "~0 = GIL held, >0.4 = GIL released")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if cpus and load > 0.5 * cpus:
        print(f"note: load average {load:.1f} on {cpus} CPUs: other processes compete for the "
              "cores, so the ratio cannot reach 0.5 here")
    if cpus is not None and cpus < 2:
        print("note: fewer than 2 CPUs, so no overlap is possible here")
    if args.max_ratio is not None and worst > args.max_ratio:
        print(f"FAIL: ratio {worst:.2f} > --max-ratio {args.max_ratio}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
