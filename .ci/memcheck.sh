#!/usr/bin/env bash
# Valgrind memcheck on a short script that exercises every normcpp op: forward, *_forward,
# backward, statistics, modules (forward, backward, state_dict), the conversion paths
# (channels-last, strided copy, float16, lists, out=) and the error paths.
#
# Fails (exit 1) if
#   * a "definitely lost" leak record has a normcpp frame (_core*.so) in its stack, or
#   * memcheck reports an invalid read/write, a use of uninitialised memory or an invalid free
#     whose stack has a normcpp frame.
# Leaks and errors inside CPython, NumPy or libgomp alone are reported in the summary but do
# not fail the check (CPython does not free everything at exit).
#
# It runs the real interpreter (`python -c "import sys; print(sys.executable)"`: `python` may
# be a pyenv shim script, and valgrind must not trace the shell) with PYTHONMALLOC=malloc so
# that every Python allocation is visible to memcheck.
#
# Usage:  .ci/memcheck.sh              the in-tree package (python/, built by cmake --build build)
#         NORMCPP_MEMCHECK_INSTALLED=1 .ci/memcheck.sh     the installed normcpp instead
#         PYTHON=/path/to/python .ci/memcheck.sh          another interpreter
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
REAL_PY="$("$PYTHON" -c 'import sys; print(sys.executable)')"

# valgrind from Debian's packages when missing (a fresh CI machine has none).
if ! command -v valgrind >/dev/null && command -v apt-get >/dev/null; then
  SUDO=()
  [[ $(id -u) -eq 0 ]] || SUDO=(sudo -n)
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get install -y --no-install-recommends valgrind ||
    { "${SUDO[@]}" apt-get update -q || true; "${SUDO[@]}" apt-get install -y --no-install-recommends valgrind; } ||
    true
fi
command -v valgrind >/dev/null || { echo "memcheck: valgrind is not installed" >&2; exit 1; }

if [[ "${NORMCPP_MEMCHECK_INSTALLED:-0}" != "1" ]]; then
  if ! compgen -G "$ROOT/python/normcpp/_core*.so" >/dev/null; then
    echo "memcheck: no built extension in python/normcpp; run 'cmake --build build' first" >&2
    exit 1
  fi
  export PYTHONPATH="$ROOT/python${PYTHONPATH:+:$PYTHONPATH}"
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/normcpp-memcheck.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
LOG="$WORK/valgrind.log"

cat >"$WORK/exercise.py" <<'EOF'
"""Every op a few times on small inputs (under valgrind, so kept short)."""
import numpy as np

import normcpp as nc

print("normcpp", nc.__version__, "from", nc.__file__, "isa", nc.config()["isa"])
rng = np.random.default_rng(0)
x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
big = rng.standard_normal((4, 8, 32, 32)).astype(np.float32)  # may take the threaded path
x64, x16 = x.astype(np.float64), x.astype(np.float16)
x_cl = np.moveaxis(np.ascontiguousarray(np.moveaxis(x, 1, -1)), -1, 1)
x_sl = np.repeat(x, 2, axis=3)[..., ::2]
w, b = np.ones(3, np.float32), np.zeros(3)
g = np.ones_like(x)


def expect(exc, fn, *a, **k):
    try:
        fn(*a, **k)
    except exc:
        return
    raise AssertionError(f"{fn} did not raise {exc}")


for it in range(2):
    for inp in (x, x64, x16, x_cl, x_sl, big):
        c = inp.shape[1]
        rm, rv = np.zeros(c, np.float32), np.ones(c)
        nc.batch_norm(inp, rm, rv, None, None, True)
        nc.batch_norm(inp, rm, rv, np.ones(c), np.zeros(c))
        y, m, r = nc.batch_norm_forward(inp, None, None, np.ones(c), None, True)
        nc.batch_norm_backward(np.ones_like(inp), inp, np.ones(c), m, r)
        nc.batch_norm_backward(np.ones_like(inp), inp, None, m, r, False)
        nc.instance_norm(inp, rm, rv)
        y, m, r = nc.instance_norm_forward(inp, None, None, np.ones(c), np.zeros(c))
        nc.instance_norm_backward(np.ones_like(inp), inp, np.ones(c), m, r)
        y, m, r = nc.group_norm_forward(inp, 1, np.ones(c), np.zeros(c))
        nc.group_norm_backward(np.ones_like(inp), inp, 1, np.ones(c), m, r)
        nc.group_norm(inp, c)
        ns = inp.shape[2:]
        y, m, r = nc.layer_norm_forward(inp, ns, np.ones(ns), np.zeros(ns))
        nc.layer_norm_backward(np.ones_like(inp), inp, ns, np.ones(ns), m, r)
        y, r = nc.rms_norm_forward(inp, inp.shape[-1], np.ones(inp.shape[-1]))
        nc.rms_norm_backward(np.ones_like(inp), inp, inp.shape[-1], np.ones(inp.shape[-1]), r)
        n, mean, m2 = nc.batch_norm_stats(inp)
        invstd = 1 / np.sqrt(m2 / n + 1e-5)
        sd, sx = nc.batch_norm_backward_reduce(np.ones_like(inp), inp, mean, invstd)
        nc.batch_norm_backward_elemt(np.ones_like(inp), inp, None, mean, invstd, sd, sx, n[0])
    out = np.empty_like(x)
    nc.layer_norm(x, 5, out=out)
    y = x.copy()
    nc.group_norm(y, 3, out=y)
    nc.rms_norm(x.tolist(), 5)
    for m in (nc.BatchNorm2d(3), nc.InstanceNorm2d(3, affine=True, track_running_stats=True),
              nc.GroupNorm(3, 3), nc.LayerNorm((4, 5)), nc.RMSNorm(5), nc.BatchNormNd(3)):
        m(x)
        m.backward(g)
        m.eval()(x)
        m.load_state_dict(m.state_dict())
    bn = nc.BatchNorm2d(3)
    nc.recalibrate(bn, [x, x64.astype(np.float32)])
    nc.freeze_batchnorm(bn)
    nc.unfreeze_batchnorm(bn)
    # error paths, from C++ and from Python
    expect(TypeError, nc.batch_norm, x.astype(np.int32))
    expect(ValueError, nc.group_norm, x, 2)
    expect(ValueError, nc.layer_norm, x, 5, out=x[::-1])
    expect(ValueError, nc.layer_norm, x, 5, np.ones(4))
    x_nan = x.copy()
    x_nan[0, 0, 0, 0] = np.nan
    expect(ValueError, nc.batch_norm, x_nan, np.zeros(3), np.ones(3), training=True)
    expect(ValueError, nc.batch_norm_backward, g, x, None, np.zeros(2), np.ones(3))
    expect(ValueError, nc.BatchNorm2d(3), x[0])
    expect(ValueError, nc.BatchNorm2d(3).load_state_dict, {"weight": np.ones(4)})
    expect(TypeError, nc.set_num_threads, "2")
print("exercise done")
EOF

echo "memcheck: $REAL_PY under valgrind $(valgrind --version | sed 's/valgrind-//')"
start=$SECONDS
set +e
PYTHONMALLOC=malloc NORMCPP_NUM_THREADS="${NORMCPP_NUM_THREADS:-2}" \
  valgrind --tool=memcheck --leak-check=full --show-leak-kinds=definite \
  --errors-for-leak-kinds=definite --num-callers=60 --track-origins=no \
  --log-file="$LOG" "$REAL_PY" "$WORK/exercise.py"
rc=$?
set -e
echo "memcheck: the script ran in $((SECONDS - start)) s under valgrind (exit $rc)"
if [[ $rc -ne 0 ]]; then
  tail -n 40 "$LOG"
  echo "memcheck FAILED: the exercise script exited with status $rc" >&2
  exit 1
fi

"$REAL_PY" - "$LOG" <<'EOF'
import re
import sys

text = open(sys.argv[1]).read()
lines = text.splitlines()
# "==PID== " prefix stripped; records are separated by blank (prefix-only) lines
body = [re.sub(r"^==\d+== ?", "", ln) for ln in lines]
records, cur = [], []
for ln in body:
    if ln.strip() == "":
        if cur:
            records.append(cur)
        cur = []
    else:
        cur.append(ln)
if cur:
    records.append(cur)


# a normcpp frame: code in the extension module (without debug info valgrind names the
# object file, "(in /.../normcpp/_core.cpython-311-x86_64-linux-gnu.so)"; with it, the
# function, e.g. "normcpp::ops::batch_norm_t<float>(...)")
OURS = re.compile(r"\(in [^)]*/_core[.][^)/]*\.so\)|\bnormcpp::")


def ours(rec):
    return any(OURS.search(ln) for ln in rec if "at 0x" in ln or "by 0x" in ln)


leaks = [r for r in records if "definitely lost in loss record" in r[0]]
error_kinds = ("Invalid read", "Invalid write", "Conditional jump", "Use of uninitialised",
               "Invalid free", "Mismatched free", "Syscall param", "Source and destination")
errors = [r for r in records if r[0].startswith(error_kinds)]
bad_leaks = [r for r in leaks if ours(r)]
bad_errors = [r for r in errors if ours(r)]

summary = []
take = False
for ln in body:
    if ln.startswith("LEAK SUMMARY") or ln.startswith("ERROR SUMMARY"):
        take = True
    if take and ln.strip():
        summary.append(ln)
    if ln.startswith("ERROR SUMMARY"):
        take = False
print("---- valgrind summary")
print("\n".join(summary))
print(f"---- definitely-lost records: {len(leaks)} ({len(bad_leaks)} with a normcpp frame); "
      f"memory errors: {len(errors)} ({len(bad_errors)} with a normcpp frame)")
for rec in bad_leaks + bad_errors:
    print("\n".join(rec))
    print()
if bad_leaks or bad_errors:
    print("memcheck FAILED: normcpp leaks or memory errors (above)")
    sys.exit(1)
print("memcheck passed: no definite leak and no memory error from normcpp")
EOF
