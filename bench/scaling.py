"""OpenMP thread scaling of normcpp on large float32 cells, and bitwise equality across thread
counts (results must not depend on the number of threads).

    python bench/scaling.py [--threads 1,2,4,8,16] [--repeats 7] [--markdown FILE]

Each cell is timed with ``out=`` (no allocation in the timing) at every thread count, median
of ``--repeats`` calls after a warm-up; the output of every thread count is compared bitwise
with the one-thread output. A same-size ``np.copyto`` (one thread) is printed as a yardstick.
Run it on a machine with more cores than the 2 of the development VM to see beyond 2 threads.
"""

from __future__ import annotations

import argparse
import os
import platform

import numpy as np
from image_bench import _import_normcpp, _median_ms  # same folder (run as a script)

nc = _import_normcpp()[0]


def _cells(rng):
    def arr(shape, layout="nchw"):
        x = rng.standard_normal(shape, dtype=np.float32)
        if layout == "nhwc":
            x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
            x = np.moveaxis(x, -1, 1)
        return x

    def ch(c):
        return (rng.standard_normal(c).astype(np.float32),
                rng.uniform(0.5, 2, c).astype(np.float32))

    cells = []
    for layout in ("nchw", "nhwc"):
        x = arr((32, 64, 56, 56), layout)
        m, v = ch(64)
        cells += [
            (f"batch_norm eval 32x64x56x56 {layout}", x,
             lambda x, o, m=m, v=v: nc.batch_norm(x, m, v, out=o)),
            (f"batch_norm train 32x64x56x56 {layout}", x,
             lambda x, o: nc.batch_norm(x, training=True, out=o)),
            (f"instance_norm 32x64x56x56 {layout}", x,
             lambda x, o: nc.instance_norm(x, out=o)),
            (f"group_norm G=32 32x64x56x56 {layout}", x,
             lambda x, o: nc.group_norm(x, 32, out=o)),
        ]
    x = arr((32, 3, 224, 224))
    cells.append(("batch_norm train 32x3x224x224 nchw (C < threads)", x,
                  lambda x, o: nc.batch_norm(x, training=True, out=o)))
    x = arr((8, 512, 768))
    cells.append(("layer_norm 8x512x768", x, lambda x, o: nc.layer_norm(x, 768, out=o)))
    cells.append(("rms_norm 8x512x768", x, lambda x, o: nc.rms_norm(x, 768, out=o)))
    x = arr((2, 1 << 21))
    cells.append(("layer_norm 2 rows of 2M (rows < threads)", x,
                  lambda x, o: nc.layer_norm(x, x.shape[-1], out=o)))
    # channels-last samples cut into strips of channels (few rows, wide C)
    for shape in ((256, 1024), (64, 4096)):
        x = arr(shape)
        cells.append((f"batch_norm train {shape[0]}x{shape[1]} (channel strips)", x,
                      lambda x, o: nc.batch_norm(x, training=True, out=o)))
    x = arr((16, 512, 16, 16), "nhwc")
    cells.append(("instance_norm 16x512x16x16 nhwc (channel strips)", x,
                  lambda x, o: nc.instance_norm(x, out=o)))
    return cells


def _time(fn, repeats):
    """Median us over ``repeats`` calls after a warm-up."""
    return _median_ms(fn, repeats) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default=None,
                    help="comma-separated thread counts (default: powers of 2 up to the cores)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--markdown", default=None, help="also write the table to this file")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if args.threads:
        threads = [int(t) for t in args.threads.split(",")]
    else:
        threads = [1]
        while threads[-1] * 2 <= cores:
            threads.append(threads[-1] * 2)
        if threads[-1] != cores:
            threads.append(cores)
    rng = np.random.default_rng(0)
    lines = [
        (f"normcpp {nc.__version__} ({nc.config()['isa']}), "
         f"{platform.processor() or platform.machine()}, {cores} cores, "
         f"Python {platform.python_version()}, NumPy {np.__version__}"),
        "",
        "| " + " | ".join(["cell", "MB", "copy us (1 thr)"] + [f"t={t} us" for t in threads]
                         + [f"x{t}" for t in threads[1:]] + ["bitwise"]) + " |",
        "|---|---:|---:|" + "---:|" * (2 * len(threads) - 1) + "---|",
    ]
    print("\n".join(lines))
    for label, x, call in _cells(rng):
        out = np.empty_like(x, order="K")
        copy_us = _time(lambda out=out, x=x: np.copyto(out, x), args.repeats)
        times, first, same = [], None, True
        for t in threads:
            nc.set_num_threads(t)
            times.append(_time(lambda call=call, x=x, out=out: call(x, out), args.repeats))
            call(x, out)
            if first is None:
                first = out.copy()
            else:
                same = same and np.array_equal(first.view(np.uint32), out.view(np.uint32))
        row = "| " + " | ".join([label, f"{x.nbytes / 1e6:.1f}", f"{copy_us:.0f}"]
                                + [f"{t:.0f}" for t in times]
                                + [f"{times[0] / t:.2f}" for t in times[1:]]
                                + ["yes" if same else "NO"]) + " |"
        print(row, flush=True)
        lines.append(row)
    nc.set_num_threads(cores)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
