#!/usr/bin/env python
"""Fused image normalize (and ChannelStats) against NumPy and torchvision-style PyTorch.

Usage::

    PYTHONPATH=python python bench/image_bench.py               # 32x224x224x3, threads 1,2
    python bench/image_bench.py --threads 1,2,4 --repeats 30 --out bench/image_results.md

On a batch of uint8 NHWC images (default 32x224x224x3, ImageNet mean/std) it times:

* ``normcpp``        -- ``normcpp.normalize(x, mean, std)`` -> float32 NCHW (allocates), and
                        with a preallocated ``out=`` (column ``normcpp out=``);
* ``numpy``          -- ``((x.astype(np.float32) / 255 - mean) / std).transpose(0, 3, 1, 2)``
                        made contiguous (single-threaded; timed once, reused per thread count);
* ``torch``          -- torchvision-style tensor normalize, if torch imports:
                        ``torch.from_numpy(x).permute(0, 3, 1, 2).float().div(255)
                        .sub(mean[:, None, None]).div(std[:, None, None]).contiguous()``,
                        with ``torch.set_num_threads(threads)``;
* ``ChannelStats``   -- per-channel exact mean/var/min/max of the same batch, against
                        ``x.reshape(-1, 3).astype(np.float64)`` then ``mean``/``var``/``min``/
                        ``max`` (the obvious NumPy way).

Each timing is the median of ``--repeats`` runs after a warm-up; every implementation's output
is first checked against a float64 reference (a wrong result is marked WRONG and exits 1).
``speedup`` columns are peer time / normcpp time. The machine's load average is recorded:
on a small shared machine other processes make the threaded numbers noisy.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import statistics
import sys
import time
from typing import Callable

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def _import_normcpp():
    try:
        import normcpp
    except ImportError:
        sys.path.insert(0, str(HERE.parent / "python"))
        import normcpp
    from normcpp.image import ChannelStats, normalize

    return normcpp, normalize, ChannelStats


def _import_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (page faults, thread pool start)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _cpu_name() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out", default=str(HERE / "image_results.md"),
                    help="markdown file to write ('' to skip)")
    args = ap.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",") if t.strip()]

    nc, normalize, ChannelStats = _import_normcpp()
    torch = _import_torch()
    rng = np.random.default_rng(0)
    n, s = args.batch, args.size
    x = rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8)
    mean32, std32 = MEAN.astype(np.float32), STD.astype(np.float32)
    ref = ((x.astype(np.float64) / 255 - MEAN) / STD).transpose(0, 3, 1, 2)
    bytes_moved = x.nbytes + x.size * 4

    def check(name: str, y) -> bool:
        y = np.asarray(y)
        ok = y.shape == ref.shape and float(np.max(np.abs(y - ref))) <= 1e-5
        if not ok:
            print(f"WRONG: {name} differs from the float64 reference", file=sys.stderr)
        return ok

    def numpy_normalize():
        return np.ascontiguousarray(((x.astype(np.float32) / 255 - mean32) / std32)
                                    .transpose(0, 3, 1, 2))

    ok = check("normcpp", normalize(x, MEAN, STD)) and check("numpy", numpy_normalize())
    t_numpy = _median_ms(numpy_normalize, max(3, args.repeats // 3))
    out = np.empty((n, 3, s, s), np.float32)

    if torch is not None:
        tm = torch.tensor(MEAN, dtype=torch.float32)[:, None, None]
        ts = torch.tensor(STD, dtype=torch.float32)[:, None, None]

        def torch_normalize():
            return (torch.from_numpy(x).permute(0, 3, 1, 2).float().div(255).sub(tm).div(ts)
                    .contiguous())

        ok = check("torch", torch_normalize().numpy()) and ok

    # ChannelStats vs the NumPy way.
    st = ChannelStats(3, channel_axis=-1).update(x)
    flat = x.reshape(-1, 3).astype(np.float64)
    ok = bool(np.allclose(st.mean, flat.mean(0), rtol=1e-12) and
              np.allclose(st.var, flat.var(0), rtol=1e-12)) and ok
    del flat

    def numpy_stats():
        f = x.reshape(-1, 3).astype(np.float64)
        return f.mean(0), f.var(0), f.min(0), f.max(0)

    t_np_stats = _median_ms(numpy_stats, max(3, args.repeats // 3))

    load_before = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    rows = []
    saved_threads = nc.get_num_threads()
    saved_torch = torch.get_num_threads() if torch is not None else None
    try:
        for t in threads:
            nc.set_num_threads(t)
            t_nc = _median_ms(lambda: normalize(x, MEAN, STD), args.repeats)
            t_out = _median_ms(lambda: normalize(x, MEAN, STD, out=out), args.repeats)
            t_torch = None
            if torch is not None:
                torch.set_num_threads(t)
                t_torch = _median_ms(torch_normalize, args.repeats)
            t_stats = _median_ms(lambda: ChannelStats(3, channel_axis=-1).update(x), args.repeats)
            rows.append((t, t_nc, t_out, t_numpy, t_torch, t_stats, t_np_stats))
    finally:
        nc.set_num_threads(saved_threads)
        if torch is not None:
            torch.set_num_threads(saved_torch)
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3

    cfg = nc.config()
    lines = [
        f"## normalize: {n}x{s}x{s}x3 uint8 NHWC -> float32 NCHW (ImageNet mean/std)",
        "",
        f"Machine: {_cpu_name()}, {os.cpu_count()} CPUs, normcpp ISA `{cfg['isa']}`, "
        f"NumPy {np.__version__}" + (f", torch {torch.__version__}" if torch else ", no torch")
        + f". Load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f}.",
        (f"Median of {args.repeats} runs, milliseconds; GB/s counts the uint8 read and "
         f"float32 write ({bytes_moved / 1e6:.1f} MB)."),
        "",
        ("| threads | normcpp | normcpp out= | GB/s | numpy | speedup vs numpy | torch | "
         "speedup vs torch | ChannelStats | numpy stats | speedup |"),
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t, t_nc, t_out, t_np, t_t, t_st, t_nps in rows:
        torch_cells = (f"{t_t:.2f} | {t_t / t_nc:.1f}x" if t_t is not None else "- | -")
        lines.append(
            f"| {t} | {t_nc:.2f} | {t_out:.2f} | {bytes_moved / t_out / 1e6:.1f} | {t_np:.1f} | "
            f"**{t_np / t_nc:.1f}x** | {torch_cells} | {t_st:.2f} | {t_nps:.1f} | "
            f"{t_nps / t_st:.0f}x |")
    busy = max(load_before[0], load_after[0])
    if busy > 0.5 * (os.cpu_count() or 1):
        note = (f"Note: the machine was busy (load average {busy:.1f} on {os.cpu_count()} "
                "CPUs): multi-threaded times include waiting for a core that another process "
                "holds, so they can exceed the 1-thread times.")
        lines += ["", note]
    if not ok:
        lines += ["", "**WRONG results: see stderr.**"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
