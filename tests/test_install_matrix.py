"""docs/install.md's board matrix against the package index, and what a device install pulls.

Both ask pip's own resolver (``--dry-run --report``), which reads wheel
metadata from the index and downloads no wheels. Skipped, naming the index,
only when the index cannot be reached; any other failure fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "check_wheels.py"
INDEX = "https://pypi.org/simple/"
LIMIT = 1200.0  # seconds: the script's pip runs are bounded each; this only stops a hung one


def _reachable_or_skip() -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import check_wheels
    finally:
        sys.path.remove(str(SCRIPT.parent))
    reason = check_wheels.reachable(INDEX)
    if reason is not None:
        pytest.skip(reason)


def test_the_board_matrix_is_what_the_index_has_now(tmp_path: Path) -> None:
    _reachable_or_skip()
    findings = tmp_path / "findings.json"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--check", str(ROOT / "docs" / "install.md"), "--json", str(findings),
         "--index-url", INDEX],
        capture_output=True, text=True, timeout=LIMIT, cwd=ROOT,
    )  # fmt: skip
    if run.returncode == 3:
        pytest.skip(run.stderr.strip())  # the index went away between the probe and the run
    assert run.returncode == 0, run.stdout + run.stderr
    boards = json.loads(findings.read_text())
    for name, board in boards.items():
        device = board["installs"]["device"]
        packages = set(device["packages"]) | set(device["with_os_numpy"] or ())
        assert not packages & {"scipy", "scikit-learn"}, f"{name}: a device install pulls {packages}"
        if packages:  # wherever a device installs, it installs an interpreter with it
            assert packages & {"ai-edge-litert", "tflite-runtime"}, f"{name}: a device without an interpreter"
    assert boards["Raspberry Pi 3/4/5, Raspberry Pi OS 64-bit Bookworm"]["installs"]["device"]["ok"]


def test_a_device_install_here_brings_its_interpreter_and_no_scipy(tmp_path: Path) -> None:
    """The real packaging path on this machine: pyproject -> metadata -> pip's markers, for `.[device]`."""
    _reachable_or_skip()
    report = tmp_path / "report.json"
    run = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--isolated", "--disable-pip-version-check", "--quiet", "--dry-run",
         "--ignore-installed", "--report", str(report), "--index-url", INDEX, "--prefer-binary", f"{ROOT}[device]"],
        capture_output=True, text=True, timeout=LIMIT,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    names = {item["metadata"]["name"].lower().replace("_", "-") for item in json.loads(report.read_text())["install"]}
    assert {"tinyfed", "paho-mqtt", "numpy", "ai-edge-litert"} <= names, names
    assert not names & {"scipy", "scikit-learn", "matplotlib", "tflite-micro"}, names


def test_the_readme_installs_a_device_with_the_extra_the_matrix_checks() -> None:
    readme = (ROOT / "README.md").read_text()
    line = next(ln for ln in readme.splitlines() if ln.startswith("pip install 'tinyfed[device"))
    assert line.split()[2] == "'tinyfed[device]'", line  # the one extra a device needs; data is optional
    assert "tinyfed[device]" in (ROOT / "docs" / "install.md").read_text()


def test_an_unreachable_index_is_a_skip_reason_that_names_it() -> None:
    from edge_runtime.transport.broker import free_port

    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import check_wheels
    finally:
        sys.path.remove(str(SCRIPT.parent))
    index = f"http://127.0.0.1:{free_port()}/simple/"  # nothing listens there
    reason = check_wheels.reachable(index, timeout=10)
    assert reason is not None and reason.startswith(f"the package index {index} is unreachable"), reason
    run = subprocess.run([sys.executable, str(SCRIPT), "--index-url", index], capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert run.returncode == 3 and index in run.stderr, run.stderr
