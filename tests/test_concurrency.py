"""Concurrency: Python threads and processes.

* 8 Python threads call every functional op (forward, ``*_forward``, backward, statistics)
  and drive their own module instances at the same time; every result is bitwise equal to
  the result of the same call made serially (normcpp releases the GIL, keeps no shared
  mutable state between calls, and fixes its reduction order by block, not by thread).
* Processes: after the parent has run a multi-threaded op (so that the OpenMP thread pool
  exists), children started with ``fork`` and with ``spawn`` compute the same results
  bitwise. A forked child must not hang in OpenMP (GNU libgomp's pool does not survive
  ``fork``): the join has a timeout and a hang fails the test. normcpp registers a
  ``pthread_atfork`` handler that drops a forked child to one thread (so that N forked workers
  do not oversubscribe the cores either); the test checks ``get_num_threads() >= 1`` there and
  reports the value.

A summary line ("concurrency: ...") is added to the terminal summary.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import warnings

import normcpp as nc
import numpy as np
import pytest

N_THREADS = 8
ITERATIONS = 5  # passes over every task per thread
JOIN_TIMEOUT_S = {"fork": 90.0, "spawn": 180.0}

SUMMARY: dict[str, str] = {}


class _SummaryReport:
    def pytest_terminal_summary(self, terminalreporter):
        for key in sorted(SUMMARY):
            terminalreporter.write_line(f"concurrency: {key}: {SUMMARY[key]}")


@pytest.fixture(scope="module", autouse=True)
def _report(request):
    manager = request.config.pluginmanager
    if not manager.has_plugin("normcpp-concurrency-summary"):
        manager.register(_SummaryReport(), "normcpp-concurrency-summary")
    yield


@pytest.fixture(autouse=True)
def _threads():
    """At least two normcpp threads (so that each Python thread also runs OpenMP regions),
    restored afterwards."""
    n = nc.get_num_threads()
    nc.set_num_threads(max(2, n))
    yield
    nc.set_num_threads(n)


# ------------------------------------------------------------------------------------ tasks
# Each task is a function of no arguments that builds its inputs deterministically and
# returns a flat tuple of arrays. Module-level functions, so that a spawned child can run
# them by name.


def _inputs():
    rng = np.random.default_rng(2024)
    x = rng.standard_normal((8, 16, 24, 24)).astype(np.float32)  # 74k elements
    x_cl = np.moveaxis(np.ascontiguousarray(np.moveaxis(x, 1, -1)), -1, 1)  # channels-last
    x64 = rng.standard_normal((6, 12, 40)).astype(np.float64)
    rows = rng.standard_normal((512, 96)).astype(np.float32)
    w16, b16 = rng.uniform(0.5, 2, 16), rng.standard_normal(16)
    g = rng.standard_normal(x.shape).astype(np.float32)
    return x, x_cl, x64, rows, w16, b16, g


_CACHE: dict[str, tuple] = {}


def inputs():
    if "x" not in _CACHE:
        _CACHE["x"] = _inputs()
    return _CACHE["x"]


def t_batch_norm_train():
    x, *_ , w, b, _g = inputs()
    rm, rv = np.zeros(16, np.float32), np.ones(16, np.float32)
    y = nc.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5)
    return y, rm, rv


def t_batch_norm_channels_last_eval():
    _x, x_cl, *_ = inputs()
    rm, rv = np.linspace(-1, 1, 16), np.linspace(0.5, 2, 16)
    return (nc.batch_norm(x_cl, rm, rv),)


def t_batch_norm_forward_backward():
    x, _xc, _x64, _r, w, b, g = inputs()
    y, m, r = nc.batch_norm_forward(x, None, None, w, b, True)
    return (y, m, r) + tuple(nc.batch_norm_backward(g, x, w, m, r))


def t_batch_norm_sync_pieces():
    x, _xc, _x64, _r, w, _b, g = inputs()
    n, mean, m2 = nc.batch_norm_stats(x)
    invstd = 1.0 / np.sqrt(m2 / n + 1e-5)
    sd, sx = nc.batch_norm_backward_reduce(g, x, mean, invstd)
    dx = nc.batch_norm_backward_elemt(g, x, w, mean, invstd, sd, sx, float(n[0]))
    return n, mean, m2, sd, sx, dx


def t_instance_norm():
    _x, x_cl, *_ = inputs()
    rm, rv = np.zeros(16), np.ones(16)
    y, m, r = nc.instance_norm_forward(x_cl, rm, rv)
    g = np.ones_like(x_cl)
    return (y, m, r, rm, rv) + tuple(
        a for a in nc.instance_norm_backward(g, x_cl, None, m, r) if a is not None)


def t_group_norm():
    x, _xc, _x64, _r, w, b, g = inputs()
    y, m, r = nc.group_norm_forward(x, 4, w, b)
    return (y, m, r) + tuple(nc.group_norm_backward(g, x, 4, w, m, r))


def t_group_norm_f64():
    _x, _xc, x64, *_ = inputs()
    return (nc.group_norm(x64, 3),)


def t_layer_norm():
    _x, _xc, _x64, rows, *_ = inputs()
    w = np.linspace(0.5, 1.5, 96)
    y, m, r = nc.layer_norm_forward(rows, 96, w, w[::-1].copy())
    dx, dw, db = nc.layer_norm_backward(np.ones_like(rows), rows, 96, w, m, r)
    return y, m, r, dx, dw, db


def t_layer_norm_in_place():
    _x, _xc, x64, *_ = inputs()
    y = x64.copy()
    nc.layer_norm(y, (12, 40), out=y)
    return (y,)


def t_rms_norm():
    _x, _xc, _x64, rows, *_ = inputs()
    w = np.linspace(0.5, 1.5, 96).astype(np.float32)
    y, r = nc.rms_norm_forward(rows, 96, w)
    dx, dw = nc.rms_norm_backward(np.ones_like(rows), rows, 96, w, r)
    return y, r, dx, dw


def t_float16():
    x, *_ = inputs()
    h = x[:, :, :8, :8].astype(np.float16)
    return nc.layer_norm(h, (8, 8)), nc.group_norm(h, 2), nc.rms_norm(h, 8)


def t_modules():
    """Fresh modules driven through training, backward and eval: outputs and final state."""
    x, x_cl, x64, rows, *_ = inputs()
    out = []
    bn = nc.BatchNorm2d(16)
    for _ in range(3):
        out.append(bn(x))
    out.append(bn.backward(np.ones_like(x)))
    out += [bn.grad_weight, bn.grad_bias]
    out.append(bn.eval()(x_cl))
    out += list(bn.state_dict().values())
    inorm = nc.InstanceNorm1d(12, affine=True, track_running_stats=True, dtype=np.float64)
    out.append(inorm(x64))
    out.append(inorm.backward(np.ones_like(x64)))
    out += list(inorm.state_dict().values())
    gn = nc.GroupNorm(4, 16)
    out.append(gn(x_cl))
    out.append(gn.backward(np.ones_like(x_cl)))
    ln, rms = nc.LayerNorm(96), nc.RMSNorm(96)
    out += [ln(rows), ln.backward(np.ones_like(rows)), rms(rows), rms.backward(rows)]
    return tuple(out)


TASKS = {name[2:]: fn for name, fn in globals().items() if name.startswith("t_")}


def run_task(name: str) -> tuple:
    return tuple(np.array(a, copy=True) for a in TASKS[name]())


def _same(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(
        x.shape == y.shape and x.dtype == y.dtype
        and np.array_equal(x, y, equal_nan=x.dtype.kind == "f")
        for x, y in zip(a, b))


# ---------------------------------------------------------------------------------- threads


def test_threads_match_serial_bitwise():
    serial = {name: run_task(name) for name in TASKS}
    names = list(TASKS)
    barrier = threading.Barrier(N_THREADS)
    mismatches: list[str] = []
    errors: list[BaseException] = []
    calls = [0] * N_THREADS

    def worker(k: int) -> None:
        try:
            barrier.wait(timeout=60)
            order = names[k % len(names):] + names[:k % len(names)]  # all start on other ops
            for _ in range(ITERATIONS):
                for name in order:
                    if not _same(run_task(name), serial[name]):
                        mismatches.append(f"thread {k}: {name}")
                    calls[k] += 1
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(N_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a worker thread hung"
    assert not errors, errors
    assert not mismatches, mismatches
    SUMMARY["threads"] = (f"{N_THREADS} Python threads x {ITERATIONS} passes x {len(names)} "
                          f"tasks = {sum(calls)} task runs, bitwise equal to serial "
                          f"(normcpp threads {nc.get_num_threads()})")


def test_separate_modules_in_threads_match_serial():
    """Each thread trains its own BatchNorm on its own batches; the final state of every
    module equals that of the same training run serially."""
    rng = np.random.default_rng(7)
    batches = [rng.standard_normal((16, 8, 12, 12)).astype(np.float32) for _ in range(N_THREADS)]

    def train(k: int):
        m = nc.BatchNorm2d(8, momentum=None)
        outs = [m(batches[(k + i) % N_THREADS]) for i in range(4)]
        dx = m.backward(np.ones_like(outs[-1]))
        return tuple(outs) + (dx,) + tuple(m.state_dict().values())

    serial = [train(k) for k in range(N_THREADS)]
    results: list = [None] * N_THREADS
    barrier = threading.Barrier(N_THREADS)

    def worker(k):
        barrier.wait(timeout=60)
        results[k] = train(k)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(N_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert all(r is not None for r in results), "a worker thread failed or hung"
    for k in range(N_THREADS):
        assert _same(results[k], serial[k]), f"thread {k}"


# -------------------------------------------------------------------------------- processes


def _child(conn, names) -> None:
    """Child process: report the thread count and the results of the named tasks."""
    try:
        report = {"num_threads": nc.get_num_threads(),
                  "results": {name: run_task(name) for name in names}}
        # set_num_threads must not break anything in a child
        nc.set_num_threads(2)
        report["after_set"] = nc.get_num_threads()
        report["big"] = _big_op()
        conn.send(report)
    except BaseException as exc:  # noqa: BLE001 (sent to the parent)
        conn.send({"error": repr(exc)})
    finally:
        conn.close()


def _big_op():
    """Large enough that the parent runs it on several OpenMP threads."""
    x = np.arange(16 * 32 * 48 * 48, dtype=np.float32).reshape(16, 32, 48, 48) % 97.0
    y = nc.batch_norm(x, None, None, None, None, True)
    return np.array(y[:, :, :4, :4])


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_child_processes_match_parent(method):
    if method not in mp.get_all_start_methods():
        pytest.skip(f"start method {method!r} is not available here")
    nc.set_num_threads(max(2, nc.get_num_threads()))
    big = _big_op()  # the parent's OpenMP pool now exists (and is busy-waiting, maybe)
    names = list(TASKS)
    expected = {name: run_task(name) for name in names}
    ctx = mp.get_context(method)
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, names))
    with warnings.catch_warnings():
        # Python >= 3.12 warns that fork() in a multi-threaded process may deadlock: that is
        # exactly what this test checks does not happen.
        warnings.simplefilter("ignore", DeprecationWarning)
        proc.start()
    send.close()
    timeout = JOIN_TIMEOUT_S[method]
    report = receive.recv() if receive.poll(timeout) else None
    proc.join(timeout=30)
    if proc.is_alive():
        proc.kill()
        proc.join()
        pytest.fail(f"{method} child hung (no result within {timeout:.0f} s)")
    assert report is not None, f"{method} child exited with {proc.exitcode} and no result"
    assert "error" not in report, report.get("error")
    assert proc.exitcode == 0
    assert report["num_threads"] >= 1
    assert report["after_set"] >= 1
    for name in names:
        assert _same(report["results"][name], expected[name]), f"{method} child: {name}"
    np.testing.assert_array_equal(report["big"], big)
    SUMMARY[f"{method} child"] = (
        f"{len(names)} tasks + a multi-threaded op, bitwise equal to the parent; "
        f"get_num_threads() = {report['num_threads']} in the child "
        f"({report['after_set']} after set_num_threads(2)), {nc.get_num_threads()} in the "
        "parent")


def test_forked_children_in_a_pool():
    """A fork-based Pool of workers (the usual data-loader pattern) after multi-threaded work
    in the parent: every worker computes, none hangs."""
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("fork is not available here")
    _big_op()
    expected = run_task("layer_norm")
    ctx = mp.get_context("fork")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pool = ctx.Pool(3)
    try:
        async_result = pool.map_async(run_task, ["layer_norm"] * 6)
        results = async_result.get(timeout=JOIN_TIMEOUT_S["fork"])
    except mp.TimeoutError:
        pool.terminate()
        pytest.fail("forked pool workers hung")
    finally:
        pool.terminate()
        pool.join()
    for r in results:
        assert _same(r, expected)
