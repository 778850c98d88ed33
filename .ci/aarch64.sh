#!/usr/bin/env bash
# aarch64 portability: cross-compile libnormcpp (NEON kernel level) and the C++ tests with
# Debian's g++-aarch64-linux-gnu (cmake/aarch64-toolchain.cmake) and run them under
# qemu-aarch64 against the scalar reference (ctest runs each test through the emulator).
# Installs the cross compiler and qemu-user with apt-get when missing; when they cannot be
# installed it says so and exits 0 (NORMCPP_REQUIRE_AARCH64=1 makes that a failure).
# Build tree: build/ci-aarch64 (NORMCPP_AARCH64_BUILD overrides).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${NORMCPP_AARCH64_BUILD:-$ROOT/build/ci-aarch64}"
JOBS="$(nproc 2>/dev/null || echo 2)"
GEN=()
command -v ninja >/dev/null 2>&1 && GEN=(-G Ninja)
START=$SECONDS

step() { echo; echo "==== $* ($((SECONDS - START)) s)"; }
skip() {
  echo "aarch64.sh: SKIPPED: $*"
  if [[ "${NORMCPP_REQUIRE_AARCH64:-0}" == 1 ]]; then exit 1; fi
  exit 0
}

step "tools: g++-aarch64-linux-gnu, qemu-aarch64"
if ! command -v aarch64-linux-gnu-g++ >/dev/null 2>&1 || ! command -v qemu-aarch64 >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=()
    [[ $(id -u) -eq 0 ]] || SUDO=(sudo -n)
    export DEBIAN_FRONTEND=noninteractive
    if ! "${SUDO[@]}" apt-get install -y --no-install-recommends g++-aarch64-linux-gnu qemu-user; then
      "${SUDO[@]}" apt-get update -q || true
      "${SUDO[@]}" apt-get install -y --no-install-recommends g++-aarch64-linux-gnu qemu-user ||
        skip "apt-get could not install g++-aarch64-linux-gnu and qemu-user"
    fi
  else
    skip "no aarch64 cross compiler / qemu-aarch64 and no apt-get to install them"
  fi
fi
aarch64-linux-gnu-g++ --version | head -n 1
qemu-aarch64 --version | head -n 1

step "configure (cross, NEON level, -Werror)"
cmake -S "$ROOT" -B "$BUILD" "${GEN[@]}" \
  -DCMAKE_TOOLCHAIN_FILE="$ROOT/cmake/aarch64-toolchain.cmake" \
  -DCMAKE_BUILD_TYPE=Release \
  -DNORMCPP_PYTHON=OFF -DNORMCPP_TESTS=ON -DNORMCPP_WERROR=ON \
  -DNORMCPP_TEST_ARGS=--quick

step "build"
cmake --build "$BUILD" --parallel "$JOBS"
if command -v file >/dev/null 2>&1; then file "$BUILD/tests/cpp/normcpp_tests"; fi

step "ctest under qemu-aarch64"
(cd "$BUILD" && ctest --output-on-failure --timeout 900 --parallel "$JOBS")

step "per-ISA counts (aarch64)"
grep -h '^\[normcpp-tests\] isa=' "$BUILD/Testing/Temporary/LastTest.log"
grep -q '^\[normcpp-tests\] isa=neon suite=ops' "$BUILD/Testing/Temporary/LastTest.log" ||
  { echo "the NEON level did not run" >&2; exit 1; }

echo
echo "aarch64.sh: passed in $((SECONDS - START)) s"
