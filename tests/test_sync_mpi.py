"""SyncBatchNorm: outputs, running statistics and gradients over several ranks equal those of a
single-process BatchNorm on the concatenated batch (uneven batch sizes, an empty rank).

The same worker code (``mpi_sync_worker.py``) runs twice: in-process, with one thread per rank
and a thread-backed communicator (always), and under real MPI with ``mpiexec -n 2`` and
``-n 3`` (skipped when mpi4py or mpiexec is missing).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import threading

import normcpp as nc
import numpy as np
import pytest

TESTS_DIR = pathlib.Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

import mpi_sync_worker as worker
from normcpp.sync import SyncBatchNorm

# --------------------------------------------------------------------------------------------
# a communicator for ranks that are threads of this process


class _Shared:
    def __init__(self, size: int) -> None:
        self.size = size
        self.slots: list = [None] * size
        self.barrier = threading.Barrier(size, timeout=30)


class ThreadComm:
    """``allgather``/``Get_size``/``Get_rank`` for ranks that are threads."""

    def __init__(self, shared: _Shared, rank: int) -> None:
        self.shared, self.rank = shared, rank

    def allgather(self, obj):
        self.shared.slots[self.rank] = obj
        self.shared.barrier.wait()
        result = list(self.shared.slots)
        self.shared.barrier.wait()
        return result

    def Get_size(self):
        return self.shared.size

    def Get_rank(self):
        return self.rank


def run_threads(size, fn):
    """``fn(comm)`` on ``size`` thread ranks; the list of results, or the first exception."""
    shared = _Shared(size)
    results: list = [None] * size
    errors: list = [None] * size

    def target(rank):
        try:
            results[rank] = fn(ThreadComm(shared, rank))
        except BaseException as exc:  # noqa: BLE001 (re-raised in the test thread)
            errors[rank] = exc
            shared.barrier.abort()

    threads = [threading.Thread(target=target, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for exc in errors:
        if exc is not None and not isinstance(exc, threading.BrokenBarrierError):
            raise exc
    for exc in errors:
        if exc is not None:
            raise exc
    return results


def worker_results_in_threads(sizes):
    def fn(comm):
        out: dict = {}
        for name in worker.CASES:
            worker.run_case(name, list(sizes), comm, out)
        worker.run_errors(list(sizes), comm, out)
        return out

    return run_threads(len(sizes), fn)


# --------------------------------------------------------------------------------------------
# the comparison with single-process BatchNorm


def _tol(dtype):
    return (1e-10, 1e-10) if dtype == np.float64 else (2e-5, 2e-5)


def reference_case(name, sizes):
    """Single-process BatchNorm on the concatenated batches of case ``name``."""
    tail, dtype, _, momentum, affine = worker.CASES[name]
    data = worker.case_data(name, sum(sizes))
    cls = nc.BatchNorm1d if len(tail) <= 2 else nc.BatchNorm2d
    m = cls(tail[0], momentum=momentum, affine=affine, dtype=dtype)
    if affine:
        m.weight[...] = data["weight"]
        m.bias[...] = data["bias"]
    ref = {}
    for step in (1, 2):
        ref[f"y{step}"] = m(data[f"x{step}"])
        ref[f"dx{step}"] = m.backward(data[f"g{step}"])
        ref[f"gw{step}"], ref[f"gb{step}"] = m.grad_weight, m.grad_bias
        ref[f"rm{step}"], ref[f"rv{step}"] = m.running_mean.copy(), m.running_var.copy()
        ref[f"nbt{step}"] = m.num_batches_tracked.copy()
    ref["y_eval"] = m.eval()(data["x1"])
    ref["dx_eval"] = m.backward(data["g1"])
    both = np.concatenate([data["x1"], data["x2"]]).astype(np.float64)
    axes = (0,) + tuple(range(2, both.ndim))
    ref["rm_recal"] = both.mean(axis=axes)
    ref["rv_recal"] = both.var(axis=axes, ddof=1)
    return ref


def check_results(results, sizes):
    """Compare the per-rank results (dicts) with single-process BatchNorm."""
    size = len(sizes)
    assert len(results) == size
    for name, (_, dtype, channels_last, _, affine) in worker.CASES.items():
        ref = reference_case(name, sizes)
        rtol, atol = _tol(dtype)
        get = (lambda key, r, name=name: results[r][f"{name}__{key}"])
        for r in range(size):
            assert get("y1", r).shape[0] == sizes[r]
        for key in ("y1", "dx1", "y2", "dx2", "y_eval", "dx_eval"):
            got = np.concatenate([get(key, r) for r in range(size)])
            assert got.dtype == dtype
            scale = max(1.0, float(np.abs(ref[key]).max()))
            np.testing.assert_allclose(got, ref[key], rtol=rtol, atol=atol * scale,
                                       err_msg=f"{name} {key}")
        np.testing.assert_array_equal(
            np.concatenate([get("y_frozen", r) for r in range(size)]),
            np.concatenate([get("y_eval", r) for r in range(size)]))
        for key in ("rm1", "rv1", "nbt1", "rm2", "rv2", "nbt2", "rm_recal", "rv_recal",
                    "rm_recal_fn", "rv_recal_fn"):
            for r in range(1, size):  # bitwise identical on every rank
                np.testing.assert_array_equal(get(key, r), get(key, 0), err_msg=f"{name} {key}")
            expected = ref[key.replace("_fn", "")]
            np.testing.assert_allclose(get(key, 0), expected, rtol=max(rtol, 1e-6),
                                       atol=atol, err_msg=f"{name} {key}")
        assert int(get("nbt2", 0)) == 2
        if affine:  # local sums; their sum over the ranks is the single-process gradient
            for key in ("gw1", "gb1", "gw2", "gb2"):
                total = sum(get(key, r).astype(np.float64) for r in range(size))
                scale = max(1.0, float(np.abs(ref[key]).max()))
                np.testing.assert_allclose(total, ref[key], rtol=rtol, atol=atol * scale,
                                           err_msg=f"{name} {key}")
        assert int(get("train_calls", 0)) == 4  # forward + backward, two steps
        assert int(get("eval_frozen_calls", 0)) == 0  # eval and frozen never communicate
        assert not bool(get("training_after_recal", 0))
    for r in range(size):
        msg = str(results[r]["err_channels"])
        assert msg.startswith("ValueError") and "channels" in msg, msg
        if r != size - 1:
            assert f"rank {size - 1}" in msg, msg
        msg = str(results[r]["err_count1"])
        assert msg.startswith("ValueError") and "more than 1 value per channel" in msg, msg
        np.testing.assert_array_equal(results[r]["rm_after_errors"], 0.0)


SIZES = [(5, 3), (4, 0, 7), (0, 6), (1, 1, 1, 2)]


@pytest.mark.parametrize("sizes", SIZES, ids=lambda s: "-".join(map(str, s)))
def test_sync_in_threads_matches_batchnorm(sizes):
    check_results(worker_results_in_threads(sizes), sizes)


# --------------------------------------------------------------------------------------------
# real MPI


def _mpiexec() -> str | None:
    """The mpiexec of this Python's environment (pip's mpich puts it next to python)."""
    local = pathlib.Path(sys.executable).parent / "mpiexec"
    if local.exists():
        return str(local)
    return shutil.which("mpiexec")


# Open MPI's mpiexec refuses to start as root unless told (containers, CI images often run as
# root); MPICH ignores these.
_ROOT_OK = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def _run_mpi(sizes, tmp_path):
    pytest.importorskip("mpi4py")
    mpiexec = _mpiexec()
    if mpiexec is None:
        pytest.skip("mpiexec not found")
    env = dict(os.environ, **_ROOT_OK)
    env["OMP_NUM_THREADS"] = "1"
    env["NORMCPP_NUM_THREADS"] = "1"
    package_root = str(pathlib.Path(nc.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(
        [package_root, str(TESTS_DIR)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    cmd = [mpiexec, "-n", str(len(sizes)), sys.executable, str(TESTS_DIR / "mpi_sync_worker.py"),
           str(tmp_path), ",".join(map(str, sizes))]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(cmd)} timed out:\n{exc.stdout}\n{exc.stderr}")
    errors = "".join(p.read_text() for p in sorted(tmp_path.glob("rank*.error")))
    assert proc.returncode == 0 and not errors, (
        f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n{errors}")
    print(proc.stdout.strip())
    results = []
    for r in range(len(sizes)):
        with np.load(tmp_path / f"rank{r}.npz") as f:
            results.append({k: f[k] for k in f.files})
    return results


@pytest.mark.parametrize("sizes", [(5, 3), (4, 0, 7)], ids=["n2-uneven", "n3-one-empty"])
def test_sync_mpi_matches_batchnorm(sizes, tmp_path):
    results = _run_mpi(sizes, tmp_path)
    check_results(results, sizes)
    size = len(sizes)
    for r in range(size):  # comm=None is COMM_WORLD: the mean of the ranks' constants
        assert int(results[r]["default_comm_size"]) == size
        np.testing.assert_allclose(results[r]["default_comm_mean"],
                                   0.1 * (size - 1) / 2.0, rtol=1e-12)


# --------------------------------------------------------------------------------------------
# one process, conversion, errors


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5), (2, 3, 4, 5), (2, 3, 2, 2, 3)])
def test_single_process_is_batchnorm(shape, rng):
    """Without communicator peers (size 1, or mpi4py's COMM_WORLD of one process, or no
    mpi4py), SyncBatchNorm is exactly BatchNorm, for every input rank."""
    x = rng.standard_normal(shape).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    comm = ThreadComm(_Shared(1), 0)
    for sbn in (SyncBatchNorm(3, comm=comm), SyncBatchNorm(3)):
        bn = {2: nc.BatchNorm1d, 3: nc.BatchNorm1d, 4: nc.BatchNorm2d, 5: nc.BatchNorm3d}[
            len(shape)](3)
        for step in range(2):
            np.testing.assert_array_equal(sbn(x + step), bn(x + step))
            np.testing.assert_array_equal(sbn.backward(g), bn.backward(g))
            np.testing.assert_array_equal(sbn.grad_weight, bn.grad_weight)
            np.testing.assert_array_equal(sbn.grad_bias, bn.grad_bias)
        for a, b in zip(sbn.state_dict().values(), bn.state_dict().values()):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(sbn.eval()(x), bn.eval()(x))


def test_no_mpi4py_means_batchnorm(monkeypatch, rng):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py raises ImportError
    sbn = SyncBatchNorm(2)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    np.testing.assert_array_equal(sbn(x), nc.BatchNorm1d(2)(x))
    assert sbn.comm is None


def test_eval_does_not_resolve_comm(monkeypatch):
    def boom():
        raise AssertionError("eval looked up the communicator")

    monkeypatch.setattr("normcpp.sync._default_comm", boom)
    SyncBatchNorm(2).eval()(np.ones((3, 2), np.float32))


def test_sync_rejects_bad_input_everywhere():
    """Rank-independent checks: at least 2-D, channel count, comm type, count > 1."""
    m = SyncBatchNorm(3)
    with pytest.raises(ValueError, match="at least 2-D"):
        m(np.ones(3, np.float32))
    with pytest.raises(ValueError, match="num_features=3"):
        m(np.ones((2, 4), np.float32))
    with pytest.raises(TypeError, match="numpy.ndarray"):
        m([[1.0, 2.0, 3.0]])
    with pytest.raises(TypeError, match="comm"):
        SyncBatchNorm(3, comm="world")
    with pytest.raises(ValueError, match="more than 1 value"):
        m(np.ones((1, 3), np.float32))


def test_sync_out_and_wrong_grad_raise_on_every_rank(rng):
    x = rng.standard_normal((4, 3, 2))

    def fn(comm):
        m = SyncBatchNorm(3, comm=comm, dtype=np.float64)
        out_bad = np.empty((4, 3, 2), np.float32) if comm.Get_rank() == 1 else None
        try:
            m(x, out=out_bad)
            first = "no error"
        except ValueError as exc:
            first = str(exc)
        y = np.empty_like(x)
        m(x, out=y)
        grad = np.ones((4, 3, 3)) if comm.Get_rank() == 0 else np.ones_like(x)
        try:
            m.backward(grad)
            second = "no error"
        except ValueError as exc:
            second = str(exc)
        return first, second, m.backward(np.ones_like(x)), int(m.num_batches_tracked)

    results = run_threads(2, fn)
    for first, second, dx, nbt in results:
        assert "dtype" in first and "no error" not in first
        assert "shape" in second and "no error" not in second
        np.testing.assert_allclose(dx, 0.0, atol=1e-12)  # loss = sum(y): no gradient
        assert nbt == 1  # the failed forward changed nothing
    assert "rank 1" in results[0][0] and "rank 0" in results[1][1]


def test_backward_without_forward_raises():
    with pytest.raises(RuntimeError, match="before forward"):
        SyncBatchNorm(3).backward(np.ones((2, 3), np.float32))


@pytest.mark.parametrize("cls", [nc.BatchNorm1d, nc.BatchNorm2d, nc.BatchNorm3d])
def test_from_batchnorm_and_back(cls, rng):
    bn = cls(4, eps=1e-3, momentum=None, bias=False, dtype=np.float64)
    bn.weight[...] = rng.uniform(0.5, 1.5, 4)
    bn.running_mean[...] = rng.standard_normal(4)
    bn.num_batches_tracked.fill(7)
    bn.eval().freeze()
    sbn = SyncBatchNorm.from_batchnorm(bn)
    assert isinstance(sbn, SyncBatchNorm)
    assert (sbn.eps, sbn.momentum, sbn.affine, sbn.dtype) == (1e-3, None, True, np.float64)
    assert sbn.bias is None and not sbn.training and sbn.frozen
    for name in ("weight", "running_mean", "running_var", "num_batches_tracked"):
        assert getattr(sbn, name) is getattr(bn, name)  # shared, as torch does
    back = sbn.to_batchnorm()
    assert type(back) is cls and back.frozen and not back.training
    assert back.running_mean is bn.running_mean
    assert list(back.state_dict()) == list(bn.state_dict())
    again = SyncBatchNorm.from_batchnorm(sbn)
    assert type(again.to_batchnorm()) is cls


def test_to_batchnorm_default_class_and_comm_kept():
    comm = ThreadComm(_Shared(1), 0)
    sbn = SyncBatchNorm(3, affine=False, track_running_stats=False, comm=comm)
    bn = sbn.to_batchnorm()
    assert type(bn) is nc.BatchNorm2d and bn.weight is None and bn.running_mean is None
    assert SyncBatchNorm.from_batchnorm(sbn).comm is comm
    with pytest.raises(TypeError, match="BatchNorm"):
        SyncBatchNorm.from_batchnorm(nc.LayerNorm(3))


def test_sync_state_dict_keys_are_torchs():
    assert list(SyncBatchNorm(3).state_dict()) == [
        "weight", "bias", "running_mean", "running_var", "num_batches_tracked"]


def test_example_trains_under_mpiexec(tmp_path):
    """examples/sync_bn_train.py under ``mpiexec -n 2``: the loss goes down and the running
    statistics are identical on both ranks."""
    script = TESTS_DIR.parent / "examples" / "sync_bn_train.py"
    if not script.exists():
        pytest.skip("examples/ is not part of this checkout")
    pytest.importorskip("mpi4py")
    mpiexec = _mpiexec()
    if mpiexec is None:
        pytest.skip("mpiexec not found")
    env = dict(os.environ, OMP_NUM_THREADS="1", **_ROOT_OK)
    package_root = str(pathlib.Path(nc.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(
        [package_root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    proc = subprocess.run([mpiexec, "-n", "2", sys.executable, str(script)], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    losses = [float(line.split()[-1]) for line in proc.stdout.splitlines()
              if line.startswith("epoch")]
    assert len(losses) == 12 and losses[-1] < 0.6 * losses[0], proc.stdout
    assert "identical on all 2 rank(s): True" in proc.stdout, proc.stdout
