"""A device's configuration: ``device.toml`` with ``TINYFED_<TABLE>_<KEY>`` environment overrides.

```toml
[device]
id = "pi-kitchen"            # topic level: letters, digits, '.', '_', '-'
federation = "home"
storage = "/var/lib/tinyfed" # models, outbox, error-feedback residual
backend = "auto"             # litert | tflite-runtime | micro | auto
trainable_layers = 1         # weighted layers trained on the device (0 = all)

[data]
source = "har"               # see `tinyfed device train --help` for names
group = 7                    # this device's natural group (HAR subject), or:
# shard = "3/30"             # share i of n of the training split
# partition = "dirichlet:0.5"
holdout = 0.2                # share kept for local evaluation

[broker]
url = "mqtts://hub.local:8883"
username = "pi-kitchen"      # password: TINYFED_BROKER_PASSWORD
ca_file = "/etc/tinyfed/ca.pem"
protocol = "auto"            # 5, 3.1.1 or auto

[transport]
max_payload = 65536          # larger updates travel as fragments

[trust]                      # written by `tinyfed provision device` (docs/security.md)
signing_key = "/etc/tinyfed/signing.key"   # this device's Ed25519 key: signs its updates and presence
gateway_key = "/etc/tinyfed/gateway.pub"   # the gateway's public key, pinned: verifies the models
```
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .config import ConfigError, broker_section, check_tables, read_toml, section, table
from .transport.broker_config import BrokerConfig
from .transport.fragments import DEFAULT_MAX_PAYLOAD
from .transport.topics import check_id
from .wire.errors import SchemaError


@dataclass
class DeviceSection:
    id: str = ""
    federation: str = "default"
    storage: str = "tinyfed-device"
    backend: str = "auto"
    trainable_layers: int = 1
    seed: int = 0
    connect_timeout: float = 15.0  # seconds to reach the broker at start before giving a clear error


@dataclass
class DataSection:
    source: str = "digits"
    group: int | None = None
    shard: str | None = None
    partition: str = "iid"
    holdout: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.group is not None and self.shard is not None:
            raise ValueError("set group or shard, not both")
        if not 0.0 <= self.holdout < 1.0:
            raise ValueError(f"holdout must be in [0, 1), got {self.holdout}")


@dataclass
class TransportSection:
    max_payload: int = DEFAULT_MAX_PAYLOAD
    ack_timeout: float = 10.0  # seconds to wait for the broker's PUBACK
    resend_after: float = 30.0  # seconds without a receipt before an update is sent again

    def __post_init__(self) -> None:
        if self.max_payload < 1024:
            raise ValueError(f"max_payload {self.max_payload} is below 1024 bytes")


@dataclass
class TrustSection:
    """Key files from the device's provisioning bundle (formats: ``edge_runtime/keys.py``); unset: none given."""

    signing_key: str | None = None
    gateway_key: str | None = None


@dataclass
class DeviceConfig:
    device: DeviceSection = field(default_factory=DeviceSection)
    data: DataSection = field(default_factory=DataSection)
    broker: BrokerConfig = field(default_factory=lambda: BrokerConfig(protocol="auto"))
    transport: TransportSection = field(default_factory=TransportSection)
    trust: TrustSection = field(default_factory=TrustSection)
    source: str = "defaults"

    @property
    def storage(self) -> Path:
        return Path(self.device.storage)

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, object], source: str = "<config>", env: Mapping[str, str] | None = None
    ) -> DeviceConfig:
        check_tables(data, ("device", "data", "broker", "transport", "trust"), source)
        config = cls(
            device=section(DeviceSection, table(data, "device"), "device", source, env),
            data=section(DataSection, table(data, "data"), "data", source, env),
            broker=broker_section(data, source, env),
            transport=section(TransportSection, table(data, "transport"), "transport", source, env),
            trust=section(TrustSection, table(data, "trust"), "trust", source, env),
            source=source,
        )
        if not config.device.id:
            config.device.id = socket.gethostname().split(".")[0]
        try:
            check_id("device id", config.device.id)
            check_id("federation", config.device.federation)
        except SchemaError as exc:
            raise ConfigError(f"{source} [device]: {exc}") from exc
        return config

    @classmethod
    def load(cls, path: str | Path, env: Mapping[str, str] | None = None) -> DeviceConfig:
        return cls.from_mapping(read_toml(path), str(path), env)
