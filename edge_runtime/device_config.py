"""A device's configuration: ``device.toml`` with ``TINYFED_<TABLE>_<KEY>`` environment overrides.

```toml
[device]
id = "pi-kitchen"            # topic level: letters, digits, '.', '_', '-'; default: see default_device_id
federation = "home"
storage = "/var/lib/tinyfed" # models, outbox, error-feedback residual
backend = "auto"             # litert | tflite-runtime | micro | auto
# trainable_layers: the gateway's manifest decides; a value here that differs is ignored with a warning
group = "site-a"             # optional: the gateway's final evaluation is broken down by this label

[data]
source = "har"               # see `tinyfed device train --help` for names
group = 7                    # this device's natural group (HAR subject), or:
# shard = "3/30"             # share i of n of the training split
# partition = "dirichlet:0.5"
# label_column = "activity"  # a .csv's label column: header name or index (default -1, the last)
holdout = 0.2                # share kept for local evaluation (docs/data.md)

[broker]
url = "mqtts://hub.local:8883"
username = "pi-kitchen"      # password: TINYFED_BROKER_PASSWORD
ca_file = "/etc/tinyfed/ca.pem"
protocol = "auto"            # 5, 3.1.1 or auto

[transport]
max_payload = 65536          # larger updates travel as fragments

[trust]                      # written by `tinyfed provision device` (docs/security.md)
mode = "signed"              # the default; "insecure" (no keys, nothing signed or checked) must be asked for
signing_key = "/etc/tinyfed/signing.key"   # this device's Ed25519 key: signs its updates, reports and presence
gateway_key = "/etc/tinyfed/gateway.pub"   # the gateway's public key, pinned: verifies models, tasks, receipts
```

Without ``[trust]`` the mode is ``signed`` and both keys are missing, so the device refuses to start
(``edge_runtime.trust.member_trust``); ``mode = "insecure"`` runs it without signatures, with a warning.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .config import (
    ConfigError,
    broker_section,
    check_environment,
    check_tables,
    keys_of,
    read_toml,
    section,
    table,
)
from .storage import atomic_write
from .transport.broker_config import BrokerConfig
from .transport.fragments import DEFAULT_MAX_PAYLOAD
from .transport.topics import DEFAULT_FEDERATION, check_id
from .wire.errors import SchemaError

MACHINE_ID_FILES = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))
SUFFIX_FILE = "device-id-suffix"  # in the device's storage, when the machine has no id
_MACHINE_ID = re.compile(r"^[0-9a-f]{32}$")
_SUFFIX = re.compile(r"^[0-9a-f]{8}$")


def default_device_id(
    storage: Path, hostname: str | None = None, machine_ids: Sequence[Path] = MACHINE_ID_FILES
) -> str:
    """The id of a device whose configuration names none: its host name and 8 hex digits of its own.

    Host names alone collide: every fresh Raspberry Pi is ``raspberrypi``, and two clients with one id
    take the broker connection from each other. The digits come from the machine id (systemd's
    /etc/machine-id, or D-Bus's), as an HMAC keyed by it, as systemd advises for an application's id:
    stable across restarts and reinstalls, unique per installed system, and not the machine id itself.
    A system without one (a container, say) gets random digits, kept in the device's storage so they
    stay the same at every start. An SD card cloned after first boot clones its machine id too: such
    devices need an ``id`` each.
    """
    host = re.sub(r"[^A-Za-z0-9-]+", "-", (hostname or socket.gethostname()).split(".")[0]).strip("-")[:40]
    return f"{host or 'device'}-{_machine_digits(machine_ids) or _stored_digits(storage)}"


def _machine_digits(machine_ids: Sequence[Path]) -> str | None:
    for path in machine_ids:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if _MACHINE_ID.match(text):  # not "uninitialized" (first boot) nor empty (an image not yet booted)
            return hmac.new(bytes.fromhex(text), b"tinyfed device id", hashlib.sha256).hexdigest()[:8]
    return None


def _stored_digits(storage: Path) -> str:
    path = storage / SUFFIX_FILE
    try:
        text = path.read_text().strip()
        if _SUFFIX.match(text):
            return text
    except OSError:
        pass
    digits = secrets.token_hex(4)
    try:
        storage.mkdir(parents=True, exist_ok=True)
        atomic_write(path, digits.encode())
    except OSError as exc:
        raise ConfigError(
            f"[device] id: this system has no machine id, and the digits that stand in for one cannot be kept in "
            f"{path}: {exc.strerror or exc}. Set [device] id, or make [device] storage writable"
        ) from exc
    return digits


@dataclass
class DeviceSection:
    id: str = ""
    federation: str = DEFAULT_FEDERATION
    storage: str = "tinyfed-device"
    backend: str = "auto"
    trainable_layers: int = 0  # 0: what the gateway's manifest lists (it decides; another value is only checked)
    seed: int = 0
    connect_timeout: float = 15.0  # seconds to reach the broker at start before giving a clear error
    max_task_seconds: float = 86400.0  # a task whose deadline is further away than this is refused
    max_model_bytes: int = 0  # a larger model is refused before download; 0: half of this machine's RAM
    group: str = ""  # a label for per-group evaluation (site, hardware class): 1-32 letters, digits, '.', '_', '-'

    def __post_init__(self) -> None:
        if self.max_task_seconds <= 0 or self.max_model_bytes < 0:
            raise ValueError("max_task_seconds must be > 0 and max_model_bytes >= 0")
        if self.group:
            from .wire.messages import GROUP_PATTERN

            if not GROUP_PATTERN.fullmatch(self.group):
                raise ValueError(f"group {self.group!r} is not 1-32 characters of letters, digits, '.', '_' or '-'")


@dataclass
class DataSection:
    source: str = "digits"
    group: int | None = None
    shard: str | None = None
    partition: str = "iid"
    holdout: float = 0.2
    seed: int = 0
    label_column: int | str = -1  # a .csv source's label column: an index (negative from the end) or header name

    def __post_init__(self) -> None:
        if self.group is not None and self.shard is not None:
            raise ValueError("set group or shard, not both")
        if not 0.0 <= self.holdout < 1.0:
            raise ValueError(f"holdout must be in [0, 1), got {self.holdout}")


UPDATE_FORMATS = ("cbor", "compact")


@dataclass
class TransportSection:
    max_payload: int = DEFAULT_MAX_PAYLOAD
    ack_timeout: float = 10.0  # seconds to wait for the broker's PUBACK
    resend_after: float = 30.0  # seconds without a receipt before an update is sent again
    # "compact": the bit-packed update (type 10, docs/protocol.md), about half the bytes at 1% density, read by
    # gateways of this version or later (the default); "cbor": the update every gateway reads (type 1).
    update_format: str = "compact"

    def __post_init__(self) -> None:
        if self.max_payload < 1024:
            raise ValueError(f"max_payload {self.max_payload} is below 1024 bytes")
        if self.update_format not in UPDATE_FORMATS:
            raise ValueError(f"update_format {self.update_format!r} is not one of {', '.join(UPDATE_FORMATS)}")


@dataclass
class TrustSection:
    """Key files from the device's provisioning bundle (formats: ``edge_runtime/keys.py``); unset: none given."""

    mode: str = "signed"  # or "insecure" (edge_runtime.trust)
    signing_key: str | None = None
    gateway_key: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("signed", "insecure"):
            raise ValueError(f"mode {self.mode!r} is not 'signed' or 'insecure'")


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

    @staticmethod
    def tables() -> dict[str, list[str]]:
        """Each table's keys: what ``TINYFED_<TABLE>_<KEY>`` may override."""
        tables = {
            "device": DeviceSection, "data": DataSection, "broker": BrokerConfig, "transport": TransportSection,
            "trust": TrustSection,
        }  # fmt: skip
        return {name: keys_of(cls) for name, cls in tables.items()}

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, object], source: str = "<config>", env: Mapping[str, str] | None = None
    ) -> DeviceConfig:
        check_tables(data, ("device", "data", "broker", "transport", "trust"), source)
        check_environment("device", cls.tables(), env)
        config = cls(
            device=section(DeviceSection, table(data, "device"), "device", source, env),
            data=section(DataSection, table(data, "data"), "data", source, env),
            broker=broker_section(data, source, env),
            transport=section(TransportSection, table(data, "transport"), "transport", source, env),
            trust=section(TrustSection, table(data, "trust"), "trust", source, env),
            source=source,
        )
        if not config.device.id:
            config.device.id = default_device_id(config.storage)
        try:
            check_id("device id", config.device.id)
            check_id("federation", config.device.federation)
        except SchemaError as exc:
            raise ConfigError(f"{source} [device]: {exc}") from exc
        return config

    @classmethod
    def load(cls, path: str | Path, env: Mapping[str, str] | None = None) -> DeviceConfig:
        return cls.from_mapping(read_toml(path), str(path), env)
