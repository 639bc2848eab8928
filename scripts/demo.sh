#!/usr/bin/env bash
# tinyfed's main job on a fresh machine: install into .venv and run the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[data,litert,device,gateway,demo]"
exec .venv/bin/tinyfed demo "$@"
