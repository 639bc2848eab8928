"""A provisioned federation on a secured Mosquitto, for tests: real certificates, TLS, ACL and CRL.

``provisioned(tmp_path, devices)`` runs ``tinyfed provision init`` and ``device`` (the functions
behind them) with the broker's port chosen here, then installs each bundle as an operator would:
copied, modes kept, to the install directory its ``device.toml`` names (``ROOT/../installed/ID``),
so every provisioned ``device.toml`` loads and connects as written, also after a revocation has
moved the bundle in the provisioning directory to ``retired/``.
:class:`Secured` starts Mosquitto on those files (``MosquittoProcess(tls=...)``) and makes links for
the gateway and for devices from the provisioned configuration, and the gateway's and devices'
configurations (signed, as provisioning wrote them). ``acl=False`` starts the same broker without its
ACL: any enrolled certificate may then publish and read anything, as on a broker an attacker owns.
"""

from __future__ import annotations

import shutil
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edge_runtime import wire
from edge_runtime.config import broker_section
from edge_runtime.device_config import DeviceConfig
from edge_runtime.keys import load_signer
from edge_runtime.transport.broker import MosquittoProcess, free_port
from edge_runtime.transport.mqtt import BrokerConfig, MqttLink
from edge_runtime.transport.topics import member_client_id
from gateway.pki import provision
from gateway.pki.layout import Layout

FEDERATION = "home"
# Bounds for loopback delivery (never a performance claim): each wait returns as soon as its event happens.
WAIT = 20.0


def fast(config: BrokerConfig) -> BrokerConfig:
    """Short reconnect backoff: a test that watches refusals need not wait a minute between attempts."""
    return replace(config, backoff_base=0.05, backoff_cap=0.5)


def provisioned(root: Path, devices: Iterable[str] = (), tls_key: str = "p256") -> Layout:
    port = free_port()
    provision.init(root, FEDERATION, ["127.0.0.1", "localhost"], port=port, tls_key=tls_key)
    layout = Layout(root)
    for device in devices:
        install(layout, device)
    return layout


def installed(layout: Layout, device: str) -> Path:
    return layout.root.parent / "installed" / device


def install(layout: Layout, device: str, **options: object) -> Path:
    """Enrol ``device`` and copy its bundle where its device.toml says it lives (``cp -p``: modes kept)."""
    target = installed(layout, device)
    provision.add_device(layout.root, device, install_dir=str(target), storage=str(target / "storage"), **options)  # type: ignore[arg-type]
    shutil.copytree(layout.bundle(device), target, dirs_exist_ok=True)
    return target


@dataclass
class Secured:
    layout: Layout
    broker: MosquittoProcess

    @classmethod
    def start(cls, layout: Layout, workdir: Path, acl: bool = True) -> Secured:
        meta = layout.read_meta()
        listener = provision.tls_listener(layout)
        if not acl:
            listener = replace(listener, acl_file=None)
        broker = MosquittoProcess(port=meta.port, workdir=workdir, tls=listener)
        return cls(layout, broker.start())

    def device_config(self, device: str, **device_table: object) -> DeviceConfig:
        """The installed bundle's device.toml as written (``[trust]`` signed), reconnecting quickly, with
        ``device_table`` over its ``[device]`` table."""
        path = installed(self.layout, device) / "device.toml"
        data: dict[str, Any] = tomllib.loads(path.read_text())
        data["device"].update(device_table)
        data["broker"].update(backoff_base=0.05, backoff_cap=0.5)
        return DeviceConfig.from_mapping(data, str(path), env={})

    def gateway_settings(self, storage: Path, model: Path, **rounds: object) -> dict[str, object]:
        """gateway.toml as a table: the [broker] and [trust] provisioning wrote (signed), small rounds."""
        written = tomllib.loads(self.layout.gateway_broker_toml.read_text())
        return {
            "gateway": {"federation": FEDERATION, "storage": str(storage), "model": str(model),
                        "connect_timeout": 20.0},
            "rounds": {"min_devices": 1, "deadline": 60.0, "report_every": 1, **rounds},
            "broker": {**written["broker"], "backoff_base": 0.05, "backoff_cap": 0.5},
            "trust": written["trust"],
        }

    def signer(self, device: str) -> wire.Ed25519Signer:
        return load_signer(installed(self.layout, device) / "signing.key")

    def gateway_signer(self) -> wire.Ed25519Signer:
        return load_signer(self.layout.gateway_dir / "signing.key")

    def gateway_broker(self) -> BrokerConfig:
        """The [broker] table provisioning wrote for gateway.toml, read the way gateway.toml's is."""
        path = self.layout.gateway_broker_toml
        return broker_section(tomllib.loads(path.read_text()), str(path), env={})

    def device_link(self, device: str, **kwargs: object) -> MqttLink:
        return MqttLink(fast(self.device_config(device).broker), member_client_id(FEDERATION, device), **kwargs)  # type: ignore[arg-type]

    def gateway_link(self, **kwargs: object) -> MqttLink:
        return MqttLink(fast(self.gateway_broker()), provision.gateway_identity(FEDERATION), **kwargs)  # type: ignore[arg-type]

    def probe_link(self) -> MqttLink:
        """A link with the gateway's probe identity, as a starting gateway makes one."""
        trust = tomllib.loads(self.layout.gateway_broker_toml.read_text())["trust"]
        config = replace(self.gateway_broker(), cert_file=trust["probe_cert_file"], key_file=trust["probe_key_file"])
        return MqttLink(fast(config), f"{provision.gateway_identity(FEDERATION)}-probe-test")

    def refusals(self, text: str) -> int:
        """How many TLS handshakes the broker refused with ``text`` (its log names no client before CONNECT)."""
        return self.broker.log_path.read_text(errors="replace").count(text)

    def close(self) -> None:
        self.broker.close()


NO_CERTIFICATE = "peer did not return a certificate"
BAD_CERTIFICATE = "certificate verify failed"  # another CA's certificate, or a revoked one (the CRL)
