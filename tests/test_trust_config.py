"""Signed is the default: a gateway, device or bridge without keys refuses to start, and insecure must be asked for.

What ``[trust]`` (device.toml, gateway.toml) and the bridge's ``--bundles``/``--insecure`` do at start, before
any connection: the refusals name the missing keys or files and the way out. The signatures themselves,
on a real broker, are tests/test_signatures.py's.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from edge_runtime.agent import DeviceAgent, LocalData
from edge_runtime.config import ConfigError
from edge_runtime.data.dataset import DataSplit
from edge_runtime.device_config import DeviceConfig
from edge_runtime.errors import ExitCode
from edge_runtime.model.backends.base import Backend
from edge_runtime.trust import Bundle, MemberTrust
from gateway.config import GatewayConfig
from gateway.service import Gateway
from tests.trust import installed, provisioned

WAIT = 120.0  # a command that imports numpy and an interpreter: an upper bound, never a timing assertion


def data(digits: DataSplit) -> LocalData:
    return LocalData(digits.train.subset(range(50)), digits.train.subset(range(50, 60)))


def test_a_device_without_keys_refuses_to_start_and_says_how(
    tmp_path: Path, digits: DataSplit, backend: Backend
) -> None:
    config = DeviceConfig.from_mapping({"device": {"id": "pi-1", "storage": str(tmp_path / "d")}}, "device.toml",
                                       env={})  # fmt: skip
    assert config.trust.mode == "signed"  # the default, with no [trust] at all
    with pytest.raises(ConfigError) as refused:
        DeviceAgent(config, data(digits), backend)
    message = str(refused.value)
    assert message.startswith("device.toml [trust]: signing_key and gateway_key not set")
    assert "tinyfed provision device" in message and 'mode = "insecure"' in message
    assert not (tmp_path / "d").exists()  # refused before anything was made


def test_a_gateway_without_keys_refuses_to_start_and_says_how(tmp_path: Path, initial_model: Path) -> None:
    settings = {"gateway": {"storage": str(tmp_path / "gw"), "model": str(initial_model)}}
    with pytest.raises(ConfigError) as refused:
        Gateway(GatewayConfig.from_mapping(settings, "gateway.toml", env={}))
    message = str(refused.value)
    assert message.startswith("gateway.toml [trust]: signing_key and devices not set")
    assert "tinyfed provision init" in message and 'mode = "insecure"' in message
    assert not (tmp_path / "gw").exists()


def test_insecure_must_be_asked_for_and_says_so_at_every_start(
    tmp_path: Path, initial_model: Path, digits: DataSplit, backend: Backend, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    caplog.set_level(logging.WARNING)
    gateway = Gateway(GatewayConfig.from_mapping(
        {"gateway": {"storage": str(tmp_path / "gw"), "model": str(initial_model)}, "trust": {"mode": "insecure"}},
        "gateway.toml", env={}))  # fmt: skip
    gateway.store.close()
    assert not gateway.trust.signed and gateway.trust.seal(b"\xa0") == b"\xa0"
    monkeypatch.setenv("TINYFED_TRUST_MODE", "insecure")  # the environment may say it too
    config = DeviceConfig.from_mapping({"device": {"id": "pi-1", "storage": str(tmp_path / "d")}}, "device.toml")
    agent = DeviceAgent(config, data(digits), backend)
    assert not agent.trust.signed
    warnings = [r.getMessage() for r in caplog.records if "runs INSECURE" in r.getMessage()]
    assert len(warnings) == 2
    assert 'the gateway runs INSECURE (gateway.toml [trust] mode = "insecure")' in warnings[0]
    assert 'device pi-1 runs INSECURE (TINYFED_TRUST_MODE = "insecure")' in warnings[1]
    with pytest.raises(ConfigError, match=r"device.toml \[trust\]: mode 'secure' is not 'signed' or 'insecure'"):
        DeviceConfig.from_mapping({"trust": {"mode": "secure"}}, "device.toml", env={})


def test_provisioned_keys_load_and_a_key_others_can_read_is_refused_naming_it(
    tmp_path: Path, digits: DataSplit, backend: Backend
) -> None:
    layout = provisioned(tmp_path / "pki", ["dev-a"])
    here = installed(layout, "dev-a")
    config = DeviceConfig.load(here / "device.toml", env={})
    config.device.storage = str(tmp_path / "storage")
    agent = DeviceAgent(config, data(digits), backend)
    assert agent.trust.signed and agent.trust.signer is not None
    (here / "signing.key").chmod(0o644)
    with pytest.raises(ConfigError, match=r"signing\.key: signing key is readable by others \(mode 0644\)"):
        DeviceAgent(config, data(digits), backend)

    settings = {
        "gateway": {"storage": str(tmp_path / "gw"), "federation": "home"},
        "trust": {"signing_key": str(layout.gateway_dir / "signing.key"), "devices": str(tmp_path / "nope.json")},
    }
    with pytest.raises(ConfigError, match=r"nope\.json: cannot read the device registry"):
        Gateway(GatewayConfig.from_mapping(settings, "gateway.toml", env={}))


def test_a_bundle_names_what_it_lacks(tmp_path: Path) -> None:
    layout = provisioned(tmp_path / "pki", ["mcu-1"])
    bundle = Bundle(installed(layout, "mcu-1"))
    assert bundle.trust("board mcu-1").signed
    (bundle.root / "gateway.pub").unlink()
    with pytest.raises(ConfigError, match=r"gateway\.pub: missing from the bundle of board mcu-1"):
        bundle.trust("board mcu-1")
    with pytest.raises(ConfigError, match="no bundle for board mcu-2"):
        Bundle(bundle.root.parent / "mcu-2").trust("board mcu-2")
    assert not MemberTrust.insecure().signed


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tinyfed", *args], capture_output=True, text=True, timeout=WAIT,
                          cwd=cwd)  # fmt: skip


def test_device_run_and_bridge_run_without_keys_exit_2_naming_the_way_out(tmp_path: Path) -> None:
    toml = tmp_path / "device.toml"
    toml.write_text(f'[device]\nid = "pi-1"\nstorage = "{tmp_path / "state"}"\n[data]\nsource = "digits"\n')
    device = run("device", "run", "--config", str(toml), cwd=tmp_path)
    assert device.returncode == ExitCode.BAD_INPUT, device.stderr
    assert "signing_key and gateway_key not set" in device.stderr.strip().splitlines()[-1]
    bridge = run("bridge", "run", "--port", "socket://127.0.0.1:9", cwd=tmp_path)
    assert bridge.returncode == ExitCode.BAD_INPUT, bridge.stderr
    last = bridge.stderr.strip().splitlines()[-1]
    assert last.startswith("tinyfed: error: signatures are on by default") and "--bundles DIR" in last
    assert "--insecure" in last
    missing = run("bridge", "run", "--port", "socket://127.0.0.1:9#mcu-9", "--bundles", str(tmp_path), cwd=tmp_path)
    assert missing.returncode == ExitCode.BAD_INPUT, missing.stderr
    assert "--port socket://127.0.0.1:9#mcu-9:" in missing.stderr and "no bundle for board mcu-9" in missing.stderr
    unnamed = run("bridge", "run", "--port", "socket://127.0.0.1:9", "--bundles", str(tmp_path), cwd=tmp_path)
    assert unnamed.returncode == ExitCode.BAD_INPUT, unnamed.stderr
    assert "with --bundles every port names its board, as --port 'socket://127.0.0.1:9#ID'" in unnamed.stderr
    dots = run("bridge", "run", "--port", "socket://127.0.0.1:9#..", "--bundles", str(tmp_path), cwd=tmp_path)
    assert dots.returncode == ExitCode.BAD_INPUT and "'..' is not 1-64 characters" in dots.stderr, dots.stderr
