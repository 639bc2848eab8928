"""The ``tinyfed`` command, run as a user runs it: a real subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge_runtime.model.backends import available_backends


def tinyfed(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_runtime.cli", *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


@pytest.mark.skipif(not available_backends(), reason="no interpreter backend installed")
def test_build_inspect_and_train_on_digits(tmp_path: Path) -> None:
    model = tmp_path / "m.tflite"
    out = tmp_path / "trained.tflite"
    built = tinyfed("model", "build", "--arch", "mlp", "--data", "digits", "--out", str(model))
    assert built.returncode == 0, built.stderr
    shown = tinyfed("model", "inspect", str(model))
    assert "FULLY_CONNECTED" in shown.stdout and "per-channel" in shown.stdout
    run = tinyfed("device", "train", "--model", str(model), "--data", "digits", "--epochs", "8", "--out", str(out))
    assert run.returncode == 0, run.stderr
    for name in available_backends():
        line = next(ln for ln in run.stdout.splitlines() if ln.startswith(name))
        before, after = (float(v) for v in line.split()[1:3])
        assert after > 0.9 > before
    assert "epoch 8/8" in run.stderr
    assert out.is_file() and out.read_bytes() != model.read_bytes()


def test_corrupt_model_gives_a_clear_error_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x00" * 10)
    run = tinyfed("model", "inspect", str(bad))
    assert run.returncode == 2
    assert "tinyfed: error:" in run.stderr and "TFLite identifier" in run.stderr
    assert "Traceback" not in run.stderr


def test_unknown_data_source_is_named(tmp_path: Path) -> None:
    run = tinyfed("model", "build", "--arch", "mlp", "--data", "mnist", "--out", str(tmp_path / "m.tflite"))
    assert run.returncode == 2 and "unknown data source 'mnist'" in run.stderr


def test_device_commands_do_not_load_gateway_or_unused_interpreters() -> None:
    code = (
        "import sys; from edge_runtime import cli; from edge_runtime.commands import device;"
        "bad = [m for m in sys.modules if m.split('.')[0] in"
        " ('gateway', 'firmware_bridge', 'hil', 'ai_edge_litert', 'tflite_runtime', 'tflite_micro')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_device_agent_and_the_gateway_load_only_their_own_side() -> None:
    interpreters = "('ai_edge_litert', 'tflite_runtime', 'tflite_micro')"
    agent = (
        "import sys; import edge_runtime.agent, edge_runtime.commands.device_run;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('gateway', 'firmware_bridge', 'hil')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    hub = (
        "import sys; import gateway.service, gateway.cli;"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {interpreters}];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    for code in (agent, hub):
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
