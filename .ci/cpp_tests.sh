#!/usr/bin/env bash
# C++ API without Python: build libnormcpp + the C++ tests (-DNORMCPP_PYTHON=OFF, warnings are
# errors), run them with ctest (every op vs a scalar reference, per ISA level), then install
# the library to a prefix and build + run examples/cpp against it with find_package(normcpp).
# Exits non-zero on any failure. Build trees under build/ci-cpp (NORMCPP_CPP_BUILD overrides).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${NORMCPP_CPP_BUILD:-$ROOT/build/ci-cpp}"
PREFIX="$BUILD/install"
JOBS="$(nproc 2>/dev/null || echo 2)"
GEN=()
command -v ninja >/dev/null 2>&1 && GEN=(-G Ninja)
START=$SECONDS

step() { echo; echo "==== $* ($((SECONDS - START)) s)"; }

step "configure: -DNORMCPP_PYTHON=OFF -DNORMCPP_TESTS=ON -DNORMCPP_WERROR=ON"
# A tree configured with another generator cannot be reused.
if [[ -f "$BUILD/CMakeCache.txt" ]] && ! grep -q "CMAKE_GENERATOR:INTERNAL=${GEN[1]:-Unix Makefiles}" "$BUILD/CMakeCache.txt"; then
  rm -rf "$BUILD"
fi
cmake -S "$ROOT" -B "$BUILD" "${GEN[@]}" \
  -DCMAKE_BUILD_TYPE=Release \
  -DNORMCPP_PYTHON=OFF -DNORMCPP_TESTS=ON -DNORMCPP_WERROR=ON \
  -DCMAKE_INSTALL_PREFIX="$PREFIX"

step "build"
cmake --build "$BUILD" --parallel "$JOBS"

step "ctest"
# Tests run nproc at a time (each uses several threads itself; they check values, never
# speed). A failure is recorded; the install and example steps still run, and the script
# fails at the end.
CTEST_RC=0
(cd "$BUILD" && ctest --output-on-failure --timeout 600 --parallel "$JOBS") || CTEST_RC=$?

step "per-ISA counts"
grep -h '^\[normcpp-tests\] isa=' "$BUILD/Testing/Temporary/LastTest.log" || {
  echo "no per-ISA summary lines found in the ctest log" >&2
  exit 1
}
grep -h '^SKIPPED' "$BUILD/Testing/Temporary/LastTest.log" || true

step "install to $PREFIX"
rm -rf "$PREFIX"
cmake --install "$BUILD" --prefix "$PREFIX"
test -f "$PREFIX/include/normcpp/normcpp.hpp"
ls "$PREFIX"/lib*/cmake/normcpp/normcppConfig.cmake

step "examples/cpp against the installed package (find_package(normcpp CONFIG))"
EX="$BUILD/example"
rm -rf "$EX"
cmake -S "$ROOT/examples/cpp" -B "$EX" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$PREFIX" -DEDGE_REQUIRE_PACKAGE=ON -DCMAKE_CXX_FLAGS="-Werror"
cmake --build "$EX" --parallel "$JOBS"
"$EX/edge_server" --batches 10
"$EX/edge_server" --isa baseline --threads 1 --batches 5

echo
if [[ $CTEST_RC -ne 0 ]]; then
  echo "cpp_tests.sh FAILED: ctest exited with status $CTEST_RC ($((SECONDS - START)) s)" >&2
  exit 1
fi
echo "cpp_tests.sh: passed in $((SECONDS - START)) s"
