#!/usr/bin/env bash
# Run tinyfed's whole test suite on a fresh machine.
#
# Two environments, because the interpreter wheels disagree about numpy:
#   .venv      numpy 2: ai-edge-litert + tflite-micro (+ the sktime wheel, for its bundled data sets)
#   .venv-np1  numpy 1.26: tflite-runtime 2.14, which fails under numpy 2 (and ai-edge-litert, which the
#              device extra brings on x86-64, so litert is also tested under numpy 1)
# The whole suite runs in .venv; .venv-np1 runs what numpy 1 and tflite-runtime can change (every test that
# uses an interpreter, the numpy code: --numpy-1-subset, tests/conftest.py), so every backend is tested. ruff, mypy,
# the import contracts (lint-imports) and the extras smoke test (each role's
# extra installed alone into a clean venv, scripts/extras-smoke.sh) run
# first; any failure fails the script. Last, tests/pi/ run inside an emulated Raspberry Pi (an arm64 userland
# under qemu-user, scripts/pi-userland.sh; root, debootstrap and qemu-user-static, which .ci/run installs):
# the Pi owner's install, the conformance outputs against the host's, a device in a federation on the host.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

# The gateway's C intake path (edge_runtime/wire/_cwire.c) is optional for users; here it must build (setup.py
# fails without it), and tests/test_cwire.py fails rather than skips if it is missing. The tests of the batched
# decoder run both it and the numpy path.
make_env() {
    local dir=$1 extras=$2
    [ -x "$dir/bin/python" ] || "$PYTHON" -m venv "$dir"
    TINYFED_BUILD_C_EXTENSION=1 "$dir/bin/python" -m pip install -q --disable-pip-version-check -e ".[$extras]"
}
export TINYFED_REQUIRE_C_EXTENSION=1

echo "== environment .venv (numpy 2: litert, micro)"
make_env .venv "dev,data,device,gateway,litert,micro"
# Only the data files inside the wheel are read; sktime itself is never imported.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps sktime
echo "== environment .venv-np1 (numpy 1.26: tflite-runtime)"
make_env .venv-np1 "dev,data,device,gateway,tflite-runtime"

echo "== ruff"
.venv/bin/ruff check .
echo "== mypy"
.venv/bin/mypy
echo "== import contracts"
.venv/bin/lint-imports
echo "== extras: each role's extra installs and runs alone"
PYTHON="$PYTHON" bash scripts/extras-smoke.sh

# Both cores: most tests wait on a broker, a pty or a child process. --dist loadfile keeps a file's tests (and its
# module fixtures, some of which train a model) on one worker. PYTEST_WORKERS=0 runs in one process.
workers=(-n "${PYTEST_WORKERS:-2}" --dist loadfile)
[ "${PYTEST_WORKERS:-2}" = 0 ] && workers=()
status=0
# The emulated Pi's userland is built once per machine (debootstrap, 2-5 minutes, mostly downloading) and cached
# outside the checkout: the build runs beside the tests below, which it does not touch; its tests run last.
pi_build=
pi_log=$(mktemp)
if [ "$(id -u)" = 0 ] && command -v debootstrap >/dev/null && command -v qemu-aarch64-static >/dev/null; then
    echo "== emulated Raspberry Pi: its userland builds in the background"
    bash scripts/pi-userland.sh build >"$pi_log" 2>&1 &
    pi_build=$!
fi
echo "== the C board: firmware unit tests on the host, then the HIL suite against the firmware under QEMU"
make -s -C firmware host-test || status=$?
.venv/bin/python -m pytest -q tests/test_hil.py tests/test_serial_patch.py --hil-qemu mps2-an386 -rs || status=$?
echo "== tests on numpy 2 (litert, micro)"
.venv/bin/python -m pytest "${workers[@]}" "$@" || status=$?
echo "== tests on numpy 1.26 (tflite-runtime): what numpy 1 and the tflite-runtime wheel can change"
.venv-np1/bin/python -m pytest "${workers[@]}" --numpy-1-subset "$@" || status=$?
echo "== emulated Raspberry Pi (arm64 userland under qemu-user): tests/pi"
if [ -n "$pi_build" ]; then
    if wait "$pi_build"; then
        PI_USERLAND_TESTS=1 .venv/bin/python -m pytest tests/pi -q -rs -s || status=$?
    else
        cat "$pi_log" >&2
        status=1
    fi
elif [ -n "${REQUIRE_PI_USERLAND:-}" ]; then
    echo "REQUIRE_PI_USERLAND is set, but the emulated Pi needs root, debootstrap and qemu-user-static" >&2
    status=1
else
    echo "skipped: needs root, debootstrap and qemu-user-static (.ci/run installs them)"
fi
exit $status
