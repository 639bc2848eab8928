"""Where a federation's trust material lives in the provisioning directory, and its ``federation.json``.

```
DIR/                       0700, the federation's root of trust: keep it on the hub, backed up
  federation.json          what `init` was given (federation, broker hosts and port, where the broker reads its files)
  ca/ca.key ca/ca.crt      the CA: signs every TLS certificate and the CRL
  broker/                  Mosquitto's side: copy it to the broker's directory (docs/security.md)
    mosquitto.conf acl crl.pem ca.crt server.crt server.key
  gateway/                 the gateway's side, read in place on the hub
    ca.crt tls.crt tls.key signing.key signing.pub
    devices.json           the device registry: each device's public signing key and whether it is revoked
    broker.toml            the [broker] table for gateway.toml
  devices/ID/              one device's bundle: copy it to the device's install directory
    ca.crt tls.crt tls.key signing.key gateway.pub device.toml
  devices/ID.tar.gz        the same bundle as one archive (--archive)
  retired/<time>/...       material replaced with --force or revoked, moved here, never deleted
```

Each directory is self-contained for the machine it goes to, hence the copies of ``ca.crt``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .files import PUBLIC, ProvisionError, replace_file

FORMAT = 1


@dataclass
class FederationMeta:
    """``federation.json``: the answers `init` was given, so `device` and `revoke` need only the directory."""

    federation: str
    broker_hosts: list[str]
    port: int
    broker_dir: str  # where Mosquitto reads the broker/ files on the hub (the paths in mosquitto.conf)
    gateway_identity: str  # the gateway certificate's common name: its MQTT username and client id
    tls_key: str  # p256 or ed25519
    created: str
    crl_number: int = 1
    format: int = field(default=FORMAT)

    @property
    def broker_url(self) -> str:
        host = self.broker_hosts[0]
        return f"mqtts://{f'[{host}]' if ':' in host else host}:{self.port}"


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def meta_path(self) -> Path:
        return self.root / "federation.json"

    # -- the CA ---------------------------------------------------------------------------------------------------
    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    @property
    def ca_key(self) -> Path:
        return self.ca_dir / "ca.key"

    @property
    def ca_cert(self) -> Path:
        return self.ca_dir / "ca.crt"

    # -- the broker -----------------------------------------------------------------------------------------------
    @property
    def broker_dir(self) -> Path:
        return self.root / "broker"

    @property
    def mosquitto_conf(self) -> Path:
        return self.broker_dir / "mosquitto.conf"

    @property
    def acl(self) -> Path:
        return self.broker_dir / "acl"

    @property
    def crl(self) -> Path:
        return self.broker_dir / "crl.pem"

    @property
    def broker_ca(self) -> Path:
        return self.broker_dir / "ca.crt"

    @property
    def server_cert(self) -> Path:
        return self.broker_dir / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.broker_dir / "server.key"

    # -- the gateway ----------------------------------------------------------------------------------------------
    @property
    def gateway_dir(self) -> Path:
        return self.root / "gateway"

    @property
    def registry(self) -> Path:
        return self.gateway_dir / "devices.json"

    @property
    def gateway_broker_toml(self) -> Path:
        return self.gateway_dir / "broker.toml"

    # -- devices --------------------------------------------------------------------------------------------------
    @property
    def devices_dir(self) -> Path:
        return self.root / "devices"

    def bundle(self, device: str) -> Path:
        return self.devices_dir / device

    def archive(self, device: str) -> Path:
        return self.devices_dir / f"{device}.tar.gz"

    # -- federation.json ----------------------------------------------------------------------------------------------
    def read_meta(self) -> FederationMeta:
        try:
            data: Any = json.loads(self.meta_path.read_text())
        except FileNotFoundError as exc:
            raise ProvisionError(
                f"{self.meta_path}: not found; is {self.root} a directory made by `tinyfed provision init`?"
            ) from exc
        except (OSError, ValueError) as exc:
            raise ProvisionError(f"{self.meta_path}: unreadable: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ProvisionError(f"{self.meta_path}: format {data.get('format') if isinstance(data, dict) else '?'}"
                                 f" is not {FORMAT}")  # fmt: skip
        try:
            return FederationMeta(**data)
        except TypeError as exc:
            raise ProvisionError(f"{self.meta_path}: {exc}") from exc

    def write_meta(self, meta: FederationMeta) -> None:
        replace_file(self.meta_path, (json.dumps(asdict(meta), indent=2) + "\n").encode(), PUBLIC)
