#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer (-DNORMCPP_SANITIZE=ON):
#   1. the C++ tests (ctest, --quick shapes, every ISA level this CPU runs), leaks checked;
#   2. the Python extension built the same way, copied with the Python sources into a
#      temporary package (the developer copy in python/normcpp/ is left alone), then the pytest
#      suite with libasan preloaded (Python itself leaks by design: no leak check there) and
#      torch hidden (.ci/run's run of the suite without torch: the golden fixtures carry parity).
# Any sanitizer report fails the script (reports go to files that are checked at the end, so
# a report from a subprocess or a swallowed exit status still counts).
# Build tree: build/ci-asan (NORMCPP_ASAN_BUILD overrides). Extra pytest arguments: "$@".
# NORMCPP_SANITIZE_BUILD_ONLY=1: configure and build, then stop (.ci/run starts this in the
# background while its single-threaded test steps leave a core idle; the later full run finds
# the tree built). NORMCPP_PYTEST_WORKERS=N: the pytest suite in N processes (pytest-xdist).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${NORMCPP_ASAN_BUILD:-$ROOT/build/ci-asan}"
PYTHON="${PYTHON:-python3}"
JOBS="$(nproc 2>/dev/null || echo 2)"
GEN=()
command -v ninja >/dev/null 2>&1 && GEN=(-G Ninja)
START=$SECONDS
WORK="$(mktemp -d "${TMPDIR:-/tmp}/normcpp-asan.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
REPORTS="$WORK/reports"
mkdir -p "$REPORTS"

step() { echo; echo "==== $* ($((SECONDS - START)) s)"; }
die() { echo "sanitize.sh FAILED: $*" >&2; exit 1; }

# Fail (and show them) if any sanitizer wrote a report: an ASan/LSan ERROR, a UBSan "runtime
# error", a CHECK failure or a SUMMARY line. Warnings alone (e.g. "failed to allocate" for a
# size a test requests on purpose, answered by MemoryError) are shown and then cleared.
check_reports() {
  local found=0 f
  for f in "$REPORTS"/*; do
    [[ -e "$f" ]] || continue
    if grep -qE 'ERROR: (Address|Leak|UndefinedBehavior)Sanitizer|runtime error:|CHECK failed|^SUMMARY: ' "$f"; then
      found=1
      echo "---- sanitizer report $f"
      cat "$f"
    else
      echo "---- sanitizer warnings (not failures) in $f:"
      sort "$f" | uniq -c
      rm -f "$f"
    fi
  done
  [[ $found -eq 0 ]] || die "sanitizer reports after: $1"
}

# Only the kernel levels this CPU runs are compiled (a level it cannot run cannot be tested),
# and everything (kernels too) at -O1 with line tables only (-g1, enough for ASan's stack
# traces): the bindings' pybind11 templates under ASan + UBSan take minutes per file at -O2 -g,
# and kernels.cpp 156-221 s per level at -O3 against 108 s at -O1.
LEVELS="$("$PYTHON" - <<'PY'
import platform
flags = set()
try:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
except OSError:
    pass
if platform.machine().lower() in ("x86_64", "amd64"):
    levels = ["baseline"]
    if {"avx2", "fma", "f16c"} <= flags:
        levels.append("avx2")
        if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
            levels.append("avx512")
    print(";".join(levels))
PY
)"
echo "kernel levels built and tested: ${LEVELS:-all}"

step "configure $BUILD (ASan + UBSan, extension not copied into python/normcpp)"
PYBIND11_DIR="$("$PYTHON" -m pybind11 --cmakedir)"
cmake -S "$ROOT" -B "$BUILD" "${GEN[@]}" \
  -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g1" \
  ${LEVELS:+-DNORMCPP_ISA_LEVELS="$LEVELS"} \
  -DNORMCPP_SANITIZE=ON -DNORMCPP_DEV_COPY=OFF \
  -DNORMCPP_PYTHON=ON -DNORMCPP_TESTS=ON -DNORMCPP_TEST_ARGS=--quick \
  -DPython_EXECUTABLE="$(command -v "$PYTHON")" -Dpybind11_DIR="$PYBIND11_DIR"

step "build"
cmake --build "$BUILD" --parallel "$JOBS"
if [[ "${NORMCPP_SANITIZE_BUILD_ONLY:-0}" == 1 ]]; then
  echo "sanitize.sh: build only, done ($((SECONDS - START)) s)"
  exit 0
fi

# halt_on_error: the first report ends the process with a failure status.
UBSAN_COMMON="halt_on_error=1:print_stacktrace=1:log_path=$REPORTS/ubsan"
ASAN_COMMON="abort_on_error=0:halt_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1:log_path=$REPORTS/asan"

step "C++ tests under ASan + UBSan (leak detection on)"
# A failing test (not a sanitizer report) is recorded and the Python part still runs.
CPP_RC=0
(cd "$BUILD" && ASAN_OPTIONS="$ASAN_COMMON:detect_leaks=1" UBSAN_OPTIONS="$UBSAN_COMMON" \
  ctest --output-on-failure --timeout 900 --parallel "$JOBS") || CPP_RC=$?
check_reports "C++ tests"
grep -h '^\[normcpp-tests\] isa=' "$BUILD/Testing/Temporary/LastTest.log" || true

step "temporary package with the sanitized extension"
PKG="$WORK/pkg/normcpp"
mkdir -p "$PKG"
cp "$ROOT"/python/normcpp/*.py "$PKG"/
cp "$ROOT"/python/normcpp/*.pyi "$ROOT"/python/normcpp/py.typed "$PKG"/ 2>/dev/null || true
mapfile -t SOS < <(find "$BUILD" -maxdepth 1 -name '_core*.so')
[[ ${#SOS[@]} -eq 1 ]] || die "expected one _core*.so in $BUILD, found ${#SOS[@]}"
cp "${SOS[0]}" "$PKG"/
# Hide torch: its own libraries are not ours to sanitize (the golden fixtures carry parity).
cat >"$WORK/pkg/_normcpp_hide_torch.py" <<'PY'
import importlib.abc
import sys


class _HideTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _HideTorch())
PY

# libasan first; libstdc++ too, so ASan's __cxa_throw interceptor finds the real one when the
# Python binary (not linked to libstdc++) loads a C++ extension that throws.
LIBASAN="$(gcc -print-file-name=libasan.so)"
LIBSTDCXX="$(gcc -print-file-name=libstdc++.so)"
[[ -f "$LIBASAN" ]] || die "libasan.so not found (gcc -print-file-name=libasan.so gave $LIBASAN)"
[[ -f "$LIBSTDCXX" ]] || die "libstdc++.so not found (gcc gave $LIBSTDCXX)"
PRELOAD="$LIBASAN:$LIBSTDCXX"
export PYTHONPATH="$WORK/pkg"
export PYTHONMALLOC=malloc  # every Python allocation through ASan's malloc
export PYTHONDONTWRITEBYTECODE=1
export PYTHONFAULTHANDLER=1
# allocator_may_return_null: tests ask for absurd sizes on purpose and expect numpy's
# MemoryError ("Unable to allocate ..."), not an ASan abort.
export ASAN_OPTIONS="$ASAN_COMMON:detect_leaks=0:allocator_may_return_null=1"
export UBSAN_OPTIONS="$UBSAN_COMMON"

step "the sanitized extension is the one imported"
LD_PRELOAD="$PRELOAD" "$PYTHON" - "$WORK/pkg" <<'PY'
import os
import sys

import normcpp
from normcpp import _core

want = os.path.realpath(sys.argv[1])
got = os.path.realpath(_core.__file__)
print("normcpp._core:", got)
print("config:", normcpp.config())
if not got.startswith(want + os.sep):
    sys.exit(f"imported {got}, not the sanitized build under {want}")
PY
check_reports "import"

step "pytest under ASan + UBSan (torch hidden)"
cd "$ROOT"
rc=0
WORKERS=()
if [[ "${NORMCPP_PYTEST_WORKERS:-1}" -gt 1 ]]; then WORKERS=(-n "$NORMCPP_PYTEST_WORKERS"); fi
LD_PRELOAD="$PRELOAD" "$PYTHON" -m pytest -q -x -p no:cacheprovider -p _normcpp_hide_torch \
  "${WORKERS[@]}" tests "$@" || rc=$?
check_reports "pytest"
[[ $rc -eq 0 ]] || die "pytest exited with status $rc"
[[ $CPP_RC -eq 0 ]] || die "C++ tests failed under the sanitizers (ctest status $CPP_RC; no sanitizer report)"

echo
echo "sanitize.sh: no ASan/UBSan reports; C++ tests and pytest passed ($((SECONDS - START)) s)"
