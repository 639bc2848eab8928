"""deploy/systemd: the unit files pass `systemd-analyze verify` (skipped, saying so, where systemd is absent)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parent.parent / "deploy" / "systemd"
ANALYZE = shutil.which("systemd-analyze")
INSTALLED = "/opt/tinyfed/bin/tinyfed"  # where docs/operations.md installs tinyfed


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed (apt-get install systemd)")
@pytest.mark.parametrize("role", ["gateway", "device", "bridge"])
def test_unit_files_verify_cleanly(role: str, tmp_path: Path) -> None:
    """verify checks every directive and that ExecStart's program exists: the units are checked against this
    environment's tinyfed, put where the installed one would be (the only line changed)."""
    source = (UNITS / f"tinyfed-{role}.service").read_text()
    assert f"ExecStart={INSTALLED} {role} run " in source
    assert "User=tinyfed" in source and "StateDirectory=tinyfed" in source and "Restart=on-failure" in source
    assert "KillSignal=SIGTERM" in source and "RestartPreventExitStatus=2 5" in source
    tinyfed = Path(sys.executable).with_name("tinyfed")
    assert tinyfed.is_file(), f"{tinyfed}: the venv's tinyfed script (pip install -e .)"
    unit = tmp_path / f"tinyfed-{role}.service"
    unit.write_text(source.replace(INSTALLED, str(tinyfed)))
    done = subprocess.run([ANALYZE, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == "", done.stderr  # an unknown key is only a warning: none allowed


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed (apt-get install systemd)")
def test_verify_catches_a_misspelt_directive(tmp_path: Path) -> None:
    """The check above can fail: a unit with a typo in a key does not pass it."""
    unit = tmp_path / "tinyfed-device.service"
    source = (UNITS / "tinyfed-device.service").read_text().replace(INSTALLED, str(Path(sys.executable)))
    unit.write_text(source.replace("Restart=on-failure", "Restat=on-failure"))
    done = subprocess.run([ANALYZE, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    assert "Unknown key 'Restat'" in done.stderr
