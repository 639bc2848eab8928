"""tinyfed on an emulated Raspberry Pi (arm64 userland under qemu-user): it installs, agrees, and federates.

Emulation runs the real aarch64 wheels (numpy, ai-edge-litert, cryptography) on an emulated Cortex-A72 (a Pi 4)
or A76 (a Pi 5); it is not a Pi's speed nor its kernel, and systemd does not run as PID 1 in a chroot, so the
unit is installed and enabled but started by hand here, with its own ExecStart line and user.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.pi_userland import PREFIX, REPO, Userland
from edge_runtime.data.dataset import DataSplit
from edge_runtime.model.backends.litert import LitertBackend
from edge_runtime.model.graph import Graph
from edge_runtime.model.info import quantize_input
from edge_runtime.model.reference import run_reference
from edge_runtime.model.writer import write_graph
from edge_runtime.train.build import build_model
from gateway.pki.layout import Layout
from tests.helpers import wait_for
from tests.pi.conftest import DEVICE, Installed
from tests.test_conformance import every_kernel_model
from tests.trust import Secured

PROBE = REPO / "bench" / "pi_probe.py"
PYTHON = f"{PREFIX}/bin/python"
WAIT = 600.0  # an upper bound for an emulated device's start and round (about 20x a host's): never a claim


def inside(board: Userland, *argv: str) -> str:
    return board.run(list(argv)).stdout


def test_the_pi_owners_one_step_installs_a_device_ready_to_start(board: Userland, installed: Installed) -> None:
    assert inside(board, "uname", "-m").strip() == "aarch64"
    print(f"pi-install.sh in the emulated Pi: {installed.seconds:.0f} s\n{installed.output}")
    # tinyfed[device] picked ai-edge-litert by its marker; nothing of the data or gateway stacks came along.
    listed = {
        line.split()[0].lower()
        for line in inside(board, PYTHON, "-m", "pip", "list", "--format=freeze").replace("==", " ").splitlines()
    }
    assert {"tinyfed", "ai-edge-litert", "numpy", "paho-mqtt", "cryptography", "cbor2"} <= listed
    assert not listed & {"scikit-learn", "scipy", "tflite-runtime"}, listed
    machine = inside(board, PYTHON, "-c", "import platform, ai_edge_litert, numpy; print(platform.machine())")
    assert machine.strip() == "aarch64"
    # The unit from deploy/systemd, enabled; the tinyfed system user; the bundle's keys private to it.
    unit = Path(REPO / "deploy/systemd/tinyfed-device.service").read_text()
    assert board.path("/etc/systemd/system/tinyfed-device.service").read_text() == unit
    wants = inside(board, "readlink", "/etc/systemd/system/multi-user.target.wants/tinyfed-device.service")
    assert wants.strip() == "/etc/systemd/system/tinyfed-device.service"
    modes = inside(board, "stat", "-c", "%n %U %a", "/etc/tinyfed/signing.key", "/etc/tinyfed/tls.key",
                   "/etc/tinyfed/device.toml", "/etc/tinyfed")
    assert modes.split("\n")[:2] == ["/etc/tinyfed/signing.key tinyfed 600", "/etc/tinyfed/tls.key tinyfed 600"]
    assert "/etc/tinyfed tinyfed 700" in modes
    config = tomllib.loads(inside(board, "cat", "/etc/tinyfed/device.toml"))
    assert config["device"]["id"] == DEVICE and config["data"]["source"] == "/etc/tinyfed/data.npz"
    # Run again (an upgrade, a re-run after a typo): idempotent.
    rerun = board.run(["bash", str(REPO / "scripts/pi-install.sh"), "--bundle", "/etc/tinyfed", "--no-apt",
                       "--from", str(next((Path(board.binds[0]) / "wheel").glob("*.whl")))])
    assert "pi-install: done" in rerun.stdout


def conformance_inputs(digits_split: DataSplit) -> dict[str, tuple[Graph, np.ndarray]]:
    """test_conformance.py's models and inputs: the digits MLP, a 1-D CNN, every kernel the trainer has."""
    rng = np.random.default_rng(1)
    t = np.linspace(0, 8 * np.pi, 128, dtype=np.float32)
    phase = rng.uniform(0, 2 * np.pi, (256, 1, 9)).astype(np.float32)
    windows = (np.sin(t[None, :, None] + phase) + 0.3 * rng.standard_normal((256, 128, 9))).astype(np.float32)
    mlp = build_model("mlp", digits_split.train.x, digits_split.train.classes, seed=0)
    cnn = build_model("cnn1d", windows, ["a", "b", "c", "d"], seed=3)
    kernels = every_kernel_model()
    return {
        "digits_mlp": (mlp, quantize_input(mlp, digits_split.test.x[:100])),
        "cnn1d": (cnn, quantize_input(cnn, windows[:40])),
        "every_kernel": (kernels, np.random.default_rng(0).integers(-128, 128, (64, 32, 3)).astype(np.int8)),
    }


@pytest.fixture(scope="module")
def probe_inputs(exchange: Path, digits_split: DataSplit) -> tuple[Path, dict[str, dict[str, np.ndarray]]]:
    """The models and inputs for the board, and what the host's interpreter and the int8 reference say."""
    models = conformance_inputs(digits_split)
    arrays: dict[str, np.ndarray] = {}
    host: dict[str, dict[str, np.ndarray]] = {}
    for name, (graph, x) in models.items():
        model = write_graph(graph)
        arrays[f"model:{name}"] = np.frombuffer(model, np.uint8)
        arrays[f"x:{name}"] = x
        builtin = LitertBackend().load(model).run_batch(x)[0]
        host[name] = {
            "reference": run_reference(graph, x)[0].reshape(builtin.shape),
            "builtin": builtin,
            "xnnpack": LitertBackend(xnnpack=True).load(model).run_batch(x)[0],
        }
    path = exchange / "conformance-in.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path, host


def run_probe(board: Userland, inputs: Path, label: str, **kwargs: Any) -> dict[str, np.ndarray]:
    out = inputs.parent / f"conformance-{label}.npz"
    board.run([PYTHON, str(PROBE), "conformance", str(inputs), str(out)], **kwargs)
    with np.load(out) as data:
        return {key: data[key] for key in data.files}


def lsb(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int32) - b.astype(np.int32)).max())


@pytest.mark.parametrize("pi", [4, 5])
def test_conformance_inputs_give_the_hosts_int8_outputs_on_a_pinned_cpu(
    board: Userland, installed: Installed, probe_inputs: tuple[Path, dict[str, dict[str, np.ndarray]]], pi: int
) -> None:
    inputs, host = probe_inputs
    pinned = Userland(board.overlay, pi=pi, binds=board.binds)
    got = run_probe(pinned, inputs, f"pi{pi}")
    where = json.loads(str(got["where"]))
    assert where["machine"] == "aarch64" and where["qemu_cpu"] == {4: "cortex-a72", 5: "cortex-a76"}[pi]
    assert where["cpuinfo_model"].startswith(f"Raspberry Pi {pi}")
    for name, want in host.items():
        # The device's interpreter (no delegate) against the reference, at the conformance suite's bar...
        assert lsb(got[f"builtin:{name}"], want["reference"]) <= 1, name
        assert lsb(got[f"builtin:{name}"], want["builtin"]) <= 1, name
        # ...and XNNPACK on the emulated Cortex against XNNPACK on the host.
        assert lsb(got[f"xnnpack:{name}"], want["xnnpack"]) <= 1, name


def test_without_pinning_qemus_max_cpu_gives_wrong_xnnpack_outputs(
    board: Userland, installed: Installed, probe_inputs: tuple[Path, dict[str, dict[str, np.ndarray]]]
) -> None:
    """Why scripts/pi-userland.sh pins QEMU_CPU: with qemu's default `max`, XNNPACK's outputs go wrong, silently.

    If this starts failing, qemu's `max` model stopped misleading XNNPACK: the pin is then a precaution only."""
    inputs, host = probe_inputs
    got = run_probe(board, inputs, "max", cpu="max")
    assert json.loads(str(got["where"]))["qemu_cpu"] == "max"
    worst = {name: lsb(got[f"xnnpack:{name}"], want["xnnpack"]) for name, want in host.items()}
    agree = {
        name: float((got[f"xnnpack:{name}"].argmax(-1) == want["xnnpack"].argmax(-1)).mean())
        for name, want in host.items()
    }
    print(f"QEMU_CPU=max: XNNPACK's largest difference from the host's, in LSB: {worst}; argmax agreement {agree}")
    assert max(worst.values()) > 1, worst


def test_the_hosts_x86_cpuinfo_crashes_the_interpreter(
    board: Userland, installed: Installed, probe_inputs: tuple[Path, dict[str, dict[str, np.ndarray]]]
) -> None:
    """Why scripts/pi-userland.sh binds a Pi's /proc/cpuinfo: qemu-user shows the host's, and the interpreter's
    CPU detection (run when an interpreter is made, with or without XNNPACK) segfaults on it."""
    inputs, _ = probe_inputs
    with_pi = board.run([PYTHON, str(PROBE), "conformance", str(inputs), str(inputs.parent / "with-pi.npz")])
    assert with_pi.returncode == 0
    with_host = board.run([PYTHON, str(PROBE), "conformance", str(inputs), str(inputs.parent / "with-host.npz")],
                          host_cpuinfo=True, check=False)
    assert with_host.returncode in (-signal.SIGSEGV, 128 + signal.SIGSEGV), (with_host.returncode, with_host.stderr)
    assert not (inputs.parent / "with-host.npz").exists()


def write_toml(path: Path, settings: dict[str, dict[str, object]]) -> Path:
    lines = []
    for table, values in settings.items():
        lines.append(f"[{table}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def gateway_status(config: Path) -> dict[str, Any] | None:
    """`tinyfed gateway status --json`, or None before the gateway has made its store."""
    proc = subprocess.run([sys.executable, "-m", "tinyfed", "gateway", "status", "--config", str(config), "--json"],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode == 2 and "the gateway has not run with this storage" in proc.stderr:
        return None
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_the_emulated_device_joins_the_hosts_federation_trains_and_is_counted(
    board: Userland, installed: Installed, hub: Layout, digits_split: DataSplit, tmp_path: Path
) -> None:
    """Mosquitto (TLS, ACL) and the gateway on the host; the device as its unit would start it, inside the board."""
    model = tmp_path / "initial.tflite"
    model.write_bytes(write_graph(build_model("mlp", digits_split.train.x, digits_split.train.classes, seed=0)))
    secured = Secured.start(hub, tmp_path / "broker")
    config = write_toml(tmp_path / "gateway.toml", secured.gateway_settings(  # type: ignore[arg-type]
        tmp_path / "gateway", model, min_devices=1, rounds=1, deadline=WAIT))
    gateway = subprocess.Popen([sys.executable, "-m", "tinyfed", "gateway", "run", "--config", str(config)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # The unit's own command line, as its user, from its working directory (systemd does not run in a chroot).
    unit = (REPO / "deploy/systemd/tinyfed-device.service").read_text()
    (exec_start,) = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart=")]
    device = board.popen(
        # Not setpriv --reset-env: it would drop QEMU_CPU, and the device would run on qemu's `max` CPU.
        ["setpriv", "--reuid=tinyfed", "--regid=tinyfed", "--init-groups", "env", "HOME=/var/lib/tinyfed",
         "USER=tinyfed", "LOGNAME=tinyfed", "PYTHONUNBUFFERED=1", "sh", "-c",
         f"cd /var/lib/tinyfed && exec {exec_start}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        def counted() -> bool:
            status = gateway_status(config)
            if status is not None and any(r.get("updates", 0) >= 1 for r in status["rounds"]):
                return True
            for name, proc in (("the device", device), ("the gateway", gateway)):  # a failed start: its output
                assert proc.poll() is None, f"{name} exited {proc.returncode}: {proc.communicate()[0]}"
            return False

        wait_for(counted, WAIT, "the emulated device's update counted by the host's gateway")
        status = gateway_status(config)
        assert status is not None
        print(json.dumps({"rounds": status["rounds"], "devices": status["devices"]}, indent=1))
        (row,) = [d for d in status["devices"] if d["device"] == DEVICE]
        assert row["samples"] > 0 and row["refusals"] == 0 and row["backend"] == "litert"
        (train,) = [r for r in status["rounds"] if r["mode"] == "sync"]
        assert train["status"] == "closed" and train["updates"] == 1 and train["refused"] == 0
        device.send_signal(signal.SIGTERM)
        out, _ = device.communicate(timeout=WAIT)
        assert device.returncode == 0, out
    finally:
        for proc in (device, gateway):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
        secured.close()
