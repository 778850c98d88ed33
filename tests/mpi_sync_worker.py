"""Worker for tests/test_sync_mpi.py, run as ``mpiexec -n P python mpi_sync_worker.py OUTDIR
SIZES`` (SIZES: the batch size of each rank, e.g. ``4,0,7``).

Every rank builds the same global data (:func:`case_data`), takes its own slice, runs
SyncBatchNorm through two training steps (forward + backward), an eval and a frozen forward
(counting the communication), recalibration, and the error paths, and writes what it got to
``OUTDIR/rank<r>.npz``. The test compares the ranks with single-process BatchNorm on the
concatenated batch. Importable without mpi4py (the test uses :func:`case_data`).
"""

from __future__ import annotations

import pathlib
import sys
import traceback

import numpy as np

#: name -> (trailing shape (C, *spatial), dtype, channels-last input, momentum, affine)
CASES = {
    "f64_ncl": ((3, 4), np.float64, False, 0.1, True),
    "f32_nchw_cl": ((4, 3, 5), np.float32, True, None, True),
    "f64_nc_noaffine": ((5,), np.float64, False, 0.3, False),
}


def case_data(name: str, total: int) -> dict[str, np.ndarray]:
    """The global batches, output gradients and parameters of case ``name`` (N = total)."""
    tail, dtype, _, _, _ = CASES[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    c = tail[0]
    data = {}
    for step in (1, 2):
        data[f"x{step}"] = (rng.standard_normal((total,) + tail) * 2.0 + 50.0 * step).astype(dtype)
        data[f"g{step}"] = rng.standard_normal((total,) + tail).astype(dtype)
    data["weight"] = rng.uniform(0.5, 1.5, c).astype(dtype)
    data["bias"] = rng.standard_normal(c).astype(dtype)
    return data


def rank_slice(sizes: list[int], rank: int) -> slice:
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def to_layout(x: np.ndarray, channels_last: bool) -> np.ndarray:
    if not channels_last or x.ndim < 3:
        return x
    return np.moveaxis(np.ascontiguousarray(np.moveaxis(x, 1, -1)), -1, 1)


class CountingComm:
    """Wraps a communicator and counts the ``allgather`` calls (to check that eval mode and a
    frozen module never communicate)."""

    def __init__(self, comm):
        self.comm = comm
        self.calls = 0

    def allgather(self, obj):
        self.calls += 1
        return self.comm.allgather(obj)

    def Get_size(self):
        return self.comm.Get_size()

    def Get_rank(self):
        return self.comm.Get_rank()


def run_case(name: str, sizes: list[int], comm, out: dict[str, np.ndarray]) -> None:
    from normcpp.sync import SyncBatchNorm

    tail, dtype, channels_last, momentum, affine = CASES[name]
    rank = comm.Get_rank()
    data = case_data(name, sum(sizes))
    sl = rank_slice(sizes, rank)
    counting = CountingComm(comm)
    m = SyncBatchNorm(tail[0], momentum=momentum, affine=affine, comm=counting, dtype=dtype)
    if affine:
        m.weight[...] = data["weight"]
        m.bias[...] = data["bias"]
    for step in (1, 2):
        x = to_layout(data[f"x{step}"][sl], channels_last)
        g = to_layout(data[f"g{step}"][sl], channels_last)
        y = m(x)
        dx = m.backward(g)
        out[f"{name}__y{step}"] = y
        out[f"{name}__dx{step}"] = dx
        if affine:
            out[f"{name}__gw{step}"] = m.grad_weight
            out[f"{name}__gb{step}"] = m.grad_bias
        out[f"{name}__rm{step}"] = m.running_mean.copy()
        out[f"{name}__rv{step}"] = m.running_var.copy()
        out[f"{name}__nbt{step}"] = m.num_batches_tracked.copy()
    out[f"{name}__train_calls"] = np.array(counting.calls)  # 2 per step: forward + backward

    # eval and frozen: no communication
    x1 = to_layout(data["x1"][sl], channels_last)
    before = counting.calls
    out[f"{name}__y_eval"] = m.eval()(x1)
    out[f"{name}__dx_eval"] = m.backward(to_layout(data["g1"][sl], channels_last))
    m.train().freeze()
    out[f"{name}__y_frozen"] = m(x1)
    m.unfreeze()
    out[f"{name}__eval_frozen_calls"] = np.array(counting.calls - before)

    # recalibration over both batches: the population statistics of all ranks together
    from normcpp.training import recalibrate

    x2 = to_layout(data["x2"][sl], channels_last)
    recalibrate(m, [x1, x2], progress=False)
    out[f"{name}__rm_recal"] = m.running_mean.copy()
    out[f"{name}__rv_recal"] = m.running_var.copy()
    m.eval()
    recalibrate(lambda b: m(b), [x1, x2], modules=[m], progress=False)
    out[f"{name}__rm_recal_fn"] = m.running_mean.copy()
    out[f"{name}__rv_recal_fn"] = m.running_var.copy()
    out[f"{name}__training_after_recal"] = np.array(m.training)


def run_errors(sizes: list[int], comm, out: dict[str, np.ndarray]) -> None:
    """A bad input on one rank raises on every rank (no rank left waiting); a global count of
    one value per channel is a ValueError everywhere."""
    from normcpp.sync import SyncBatchNorm

    rank, size = comm.Get_rank(), comm.Get_size()
    m = SyncBatchNorm(3, comm=comm, dtype=np.float64)
    x = np.ones((2, 3 if rank != size - 1 else 4, 5))  # the last rank has the wrong C
    try:
        m(x)
        out["err_channels"] = np.array("no error")
    except ValueError as exc:
        out["err_channels"] = np.array(f"ValueError: {exc}")
    # global count 1: rank 0 has one sample with no spatial dims, the others none
    x1 = np.ones((1 if rank == 0 else 0, 3))
    try:
        m(x1)
        out["err_count1"] = np.array("no error")
    except ValueError as exc:
        out["err_count1"] = np.array(f"ValueError: {exc}")
    out["rm_after_errors"] = m.running_mean.copy()


def run_default_comm(comm, out: dict[str, np.ndarray]) -> None:
    """``comm=None`` means ``MPI.COMM_WORLD``."""
    from normcpp.sync import SyncBatchNorm

    rank = comm.Get_rank()
    d = SyncBatchNorm(3, dtype=np.float64)
    xd = np.full((2, 3), float(rank))
    d(xd)
    out["default_comm_mean"] = d.running_mean.copy()
    out["default_comm_size"] = np.array(d.comm.Get_size())


def main(argv: list[str]) -> int:
    from mpi4py import MPI

    outdir = pathlib.Path(argv[1])
    sizes = [int(s) for s in argv[2].split(",")]
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    if comm.Get_size() != len(sizes):
        raise SystemExit(f"SIZES has {len(sizes)} entries for {comm.Get_size()} ranks")
    out: dict[str, np.ndarray] = {}
    try:
        for name in CASES:
            run_case(name, sizes, comm, out)
        run_errors(sizes, comm, out)
        run_default_comm(comm, out)
    except Exception:  # noqa: BLE001 (reported to the test, which fails)
        (outdir / f"rank{rank}.error").write_text(traceback.format_exc())
        comm.Abort(1)
    np.savez(outdir / f"rank{rank}.npz", **out)
    comm.Barrier()
    if rank == 0:
        print(f"mpi_sync_worker: {comm.Get_size()} ranks, sizes {sizes}: ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
