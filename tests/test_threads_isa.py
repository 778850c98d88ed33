"""Thread-count invariance (bit for bit), every ISA level this CPU supports (forced with
``NORMCPP_ISA`` in a subprocess and checked against the reference), the fallback for a level
the CPU lacks, ``NORMCPP_NUM_THREADS`` and ``config()``."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import normcpp as nc
import numpy as np
import pytest
from conftest import to_layout

TESTS_DIR = pathlib.Path(__file__).resolve().parent
PKG_PARENT = pathlib.Path(nc.__file__).resolve().parent.parent
THREADS = (1, 2, 3)


# --------------------------------------------------------------------------------------------
# config and thread settings


def test_config():
    cfg = nc.config()
    assert set(cfg) == {"version", "isa", "isas_compiled", "isas_supported", "openmp",
                        "num_threads"}
    assert cfg["version"] == nc.__version__
    assert isinstance(cfg["isa"], str)
    assert cfg["isa"] in cfg["isas_supported"]
    assert set(cfg["isas_supported"]) <= set(cfg["isas_compiled"])
    assert cfg["isas_supported"], "at least the baseline level runs everywhere"
    assert isinstance(cfg["openmp"], bool)
    assert isinstance(cfg["num_threads"], int) and cfg["num_threads"] >= 1
    assert cfg["num_threads"] == nc.get_num_threads()


def test_set_num_threads(restore_threads):
    nc.set_num_threads(1)
    assert nc.get_num_threads() == 1
    assert nc.config()["num_threads"] == 1
    nc.set_num_threads(np.int64(2))
    if nc.config()["openmp"]:
        assert nc.get_num_threads() == 2
    for bad, exc in ((0, ValueError), (-1, ValueError), (1.5, TypeError), ("2", TypeError),
                     (None, TypeError), (True, TypeError)):
        before = nc.get_num_threads()
        with pytest.raises(exc):
            nc.set_num_threads(bad)
        assert nc.get_num_threads() == before


# --------------------------------------------------------------------------------------------
# bitwise identical results for any thread count


def _rand(shape, dtype, seed=0, offset=3.0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + offset).astype(dtype)


def _run(case):
    """Compute one case; returns a list of arrays (output and updated statistics)."""
    op, shape, dtype, layout = case
    x = to_layout(_rand(shape, dtype), layout)
    if op in ("batch_norm", "instance_norm"):
        c = shape[1]
        rng = np.random.default_rng(1)
        w, b = rng.uniform(0.5, 2, c).astype(np.float32), rng.standard_normal(c)
        rm, rv = np.zeros(c), np.ones(c, np.float32)
        if op == "batch_norm":
            y = nc.batch_norm(x, rm, rv, w, b, training=True)
        else:
            y = nc.instance_norm(x, rm, rv, w, b)
        return [y, rm, rv]
    if op == "group_norm":
        return [nc.group_norm(x, 8 if shape[1] % 8 == 0 else 1)]
    ns = shape[-1]
    if op == "layer_norm":
        return [nc.layer_norm(x, ns, np.linspace(0.5, 2, ns), np.linspace(-1, 1, ns))]
    return [nc.rms_norm(x, ns, np.linspace(0.5, 2, ns))]


THREAD_CASES = [
    ("batch_norm", (2, 3, 512, 512), np.float32, "contiguous"),
    ("batch_norm", (1, 1, 2**21), np.float32, "contiguous"),
    # channels of several planes, reduced and normalized in rounds of channels whose size
    # depends on the threads (and the caches): the same bits for any rounds
    ("batch_norm", (32, 24, 40, 40), np.float32, "contiguous"),
    ("batch_norm", (16, 40, 48, 48), np.float16, "contiguous"),
    ("batch_norm", (16, 64, 32, 32), np.float32, "channels_last"),
    ("batch_norm", (4, 3, 256, 256), np.float16, "channels_last"),
    ("batch_norm", (4096, 96), np.float64, "contiguous"),
    ("instance_norm", (2, 3, 256, 256), np.float32, "contiguous"),
    ("instance_norm", (1, 2, 2**20), np.float64, "contiguous"),
    ("instance_norm", (4, 32, 64, 64), np.float32, "channels_last"),
    ("instance_norm", (2, 5, 128, 128), np.float16, "sliced"),
    ("group_norm", (4, 32, 64, 64), np.float32, "contiguous"),
    ("group_norm", (1, 1, 2**21), np.float32, "contiguous"),
    ("group_norm", (4, 32, 32, 32), np.float64, "channels_last"),
    # samples of several chunks (> 112K elements), as many as 2 threads split evenly: each
    # thread takes its samples whole (3 threads: rounds of chunks)
    ("group_norm", (4, 16, 96, 96), np.float16, "channels_last"),
    ("instance_norm", (2, 24, 80, 80), np.float32, "channels_last"),
    ("layer_norm", (1, 2**21), np.float32, "contiguous"),
    ("layer_norm", (4096, 512), np.float32, "contiguous"),
    ("layer_norm", (3, 2**20 + 3), np.float16, "contiguous"),
    ("layer_norm", (37, 4100), np.float32, "contiguous"),  # groups of 4 rows, in chunks
    ("layer_norm", (2, 2**20), np.float64, "contiguous"),
    ("rms_norm", (1, 2**21), np.float32, "contiguous"),
    ("rms_norm", (8192, 257), np.float64, "contiguous"),
]


@pytest.mark.parametrize("case", THREAD_CASES,
                         ids=lambda c: f"{c[0]}-{'x'.join(map(str, c[1]))}-"
                                       f"{np.dtype(c[2]).name}-{c[3]}")
def test_threads_bitwise_identical(case, restore_threads):
    results = []
    for n in THREADS:
        nc.set_num_threads(n)
        results.append(_run(case))
    for n, other in zip(THREADS[1:], results[1:]):
        for a, b in zip(results[0], other):
            assert a.dtype == b.dtype
            assert np.array_equal(a, b), f"{n} threads differ from 1 thread"


# --------------------------------------------------------------------------------------------
# every ISA level, forced in a fresh process

CHILD = r"""
import json, warnings
warnings.simplefilter("error")
import numpy as np
import normcpp as nc
import reference as ref
from conftest import to_layout

checked, failures = 0, []

def check(name, y, y_ref, dtype):
    global checked
    checked += 1
    rtol, atol = ref.tolerance(dtype)
    y = np.asarray(y, dtype=np.float64)
    if y.shape != y_ref.shape or not np.allclose(y, y_ref, rtol=rtol, atol=atol):
        err = float(np.nanmax(np.abs(y - y_ref))) if y.shape == y_ref.shape else "shape"
        failures.append(f"{name}: max abs error {err}")

rng = np.random.default_rng(42)
for dtype in (np.float16, np.float32, np.float64):
    dn = np.dtype(dtype).name
    for layout in ("contiguous", "channels_last", "sliced"):
        for shape in ((3, 17, 33), (2, 7, 5, 5), (2, 3, 1, 257), (2, 33, 2, 3, 5), (4, 1, 31)):
            x = to_layout((rng.standard_normal(shape) * 2 + 1).astype(dtype), layout)
            c = shape[1]
            w, b = rng.uniform(0.5, 2, c), rng.standard_normal(c).astype(np.float32)
            rm, rv = rng.standard_normal(c).astype(np.float32), rng.uniform(0.5, 2, c)
            tag = f"{dn}/{layout}/{shape}"
            y_ref, rm_ref, rv_ref = ref.batch_norm(x, rm, rv, w, b, training=True)
            y = nc.batch_norm(x, rm, rv, w, b, training=True)
            check("batch_norm train " + tag, y, y_ref, dtype)
            check("batch_norm running_mean " + tag, rm, rm_ref, np.float32)
            check("batch_norm running_var " + tag, rv, rv_ref, np.float32)
            y_ref, _, _ = ref.batch_norm(x, rm, rv, w, b)
            check("batch_norm eval " + tag, nc.batch_norm(x, rm, rv, w, b), y_ref, dtype)
            y_ref, rm_ref, rv_ref = ref.instance_norm(x, rm, rv, w, b)
            check("instance_norm " + tag, nc.instance_norm(x, rm, rv, w, b), y_ref, dtype)
            check("instance_norm running_var " + tag, rv, rv_ref, np.float32)
            g = 1 if c % 3 else 3
            check("group_norm " + tag, nc.group_norm(x, g, w, b), ref.group_norm(x, g, w, b),
                  dtype)
            const = np.broadcast_to(np.float32(0.1), x.shape).astype(dtype)
            if not np.array_equal(nc.instance_norm(const, None, None, w, b),
                                  np.broadcast_to(b.reshape((1, c) + (1,) * (len(shape) - 2)),
                                                  shape).astype(dtype)):
                failures.append("constant input not exactly bias " + tag)
    for n in (1, 5, 31, 33, 257, 1027):
        for layout in ("contiguous", "sliced"):
            x = to_layout((rng.standard_normal((3, 2, n)) + 0.5).astype(dtype), layout)
            w, b = rng.uniform(0.5, 2, n), rng.standard_normal(n)
            tag = f"{dn}/{layout}/{n}"
            check("layer_norm " + tag, nc.layer_norm(x, n, w, b), ref.layer_norm(x, n, w, b),
                  dtype)
            check("layer_norm 2d " + tag, nc.layer_norm(x, (2, n)), ref.layer_norm(x, (2, n)),
                  dtype)
            check("rms_norm " + tag, nc.rms_norm(x, n, w), ref.rms_norm(x, n, w), dtype)

# thread-count invariance under this level
big = (rng.standard_normal((2, 3, 300, 300)) + 3).astype(np.float32)
res = []
for t in (1, 2, 3):
    nc.set_num_threads(t)
    res.append((nc.batch_norm(big, training=True), nc.instance_norm(big),
                nc.group_norm(big, 3), nc.layer_norm(big.reshape(2, -1), 270000),
                nc.rms_norm(big.reshape(-1), 540000)))
for r in res[1:]:
    for a, b in zip(res[0], r):
        if not np.array_equal(a, b):
            failures.append("thread count changes the result")

print(json.dumps({"isa": nc.config()["isa"], "checked": checked, "failures": failures}))
"""


def _child_env(**overrides):
    env = {k: v for k, v in os.environ.items()
           if k not in ("NORMCPP_ISA", "NORMCPP_NUM_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(PKG_PARENT), str(TESTS_DIR)] + ([os.environ["PYTHONPATH"]]
                                             if os.environ.get("PYTHONPATH") else []))
    env.update(overrides)
    return env


def _run_child(code, **env):
    proc = subprocess.run([sys.executable, "-c", code], env=_child_env(**env), check=False,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.mark.parametrize("isa", nc.config()["isas_supported"])
def test_forced_isa_matches_reference(isa):
    proc = _run_child(CHILD, NORMCPP_ISA=isa)
    assert "Warning" not in proc.stderr, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["isa"] == isa
    assert result["checked"] > 400
    assert not result["failures"], "\n".join(result["failures"][:20])


PROBE = r"""
import json, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import normcpp as nc
print(json.dumps({"config": nc.config(), "threads": nc.get_num_threads(),
                  "warnings": [[w.category.__name__, str(w.message)] for w in caught]}))
"""


def _probe(**env):
    return json.loads(_run_child(PROBE, **env).stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def default_isa():
    """The level a fresh process picks with no NORMCPP_ISA (this run may itself be forced)."""
    result = _probe()
    assert result["warnings"] == []
    return result["config"]["isa"]


def test_default_isa_is_best_supported(default_isa):
    cfg = nc.config()
    order = ["baseline", "neon", "avx2", "avx512"]
    ranked = sorted(cfg["isas_supported"], key=lambda s: order.index(s) if s in order else -1)
    assert default_isa == ranked[-1]


def test_unsupported_isa_warns_and_falls_back(default_isa):
    cfg = nc.config()
    missing = [lvl for lvl in ("avx512", "avx2") if lvl not in cfg["isas_supported"]]
    if not missing:
        pytest.skip("this CPU supports every ISA level")
    for level in missing:
        result = _probe(NORMCPP_ISA=level)
        assert result["config"]["isa"] == default_isa
        kinds = [k for k, _ in result["warnings"]]
        assert kinds == ["RuntimeWarning"], result["warnings"]
        assert level in result["warnings"][0][1]


def test_unknown_isa_warns_and_falls_back(default_isa):
    result = _probe(NORMCPP_ISA="sse9000")
    assert result["config"]["isa"] == default_isa
    assert [k for k, _ in result["warnings"]] == ["RuntimeWarning"]
    assert "sse9000" in result["warnings"][0][1]


def test_isa_name_is_case_insensitive():
    level = nc.config()["isas_supported"][0]
    result = _probe(NORMCPP_ISA=f" {level.upper()} ")
    assert result["warnings"] == []
    assert result["config"]["isa"] == level


@pytest.mark.parametrize("n", ["1", "2", "3"])
def test_num_threads_env(n):
    result = _probe(NORMCPP_NUM_THREADS=n)
    assert result["warnings"] == []
    if n == "1" or result["config"]["openmp"]:
        assert result["config"]["num_threads"] == int(n)
        assert result["threads"] == int(n)


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_num_threads_env_invalid(value):
    result = _probe(NORMCPP_NUM_THREADS=value)
    assert [k for k, _ in result["warnings"]] == ["RuntimeWarning"]
    assert result["config"]["num_threads"] >= 1
