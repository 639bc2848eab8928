"""Every MQTT topic tinyfed uses, in one place: ``tinyfed/v1/<federation>/...``.

| topic | payload | retained | QoS |
|---|---|---|---|
| ``.../state`` | GatewayState | yes | 1 |
| ``.../model/manifest`` | ModelManifest | yes | 1 |
| ``.../model/<version hex>/chunk/<n>`` | ModelChunk | yes, until the version is retired | 1 |
| ``.../device/<id>/task`` | Task (expires at its deadline) | no | 1 |
| ``.../device/<id>/update`` | Update | no | 1 |
| ``.../device/<id>/receipt`` | Receipt: which update ids arrived | no | 1 |
| ``.../device/<id>/presence`` | Presence: birth, or death as the last will | yes | 1 |
| ``.../gateway/presence`` | Presence of the gateway (its host and storage), death as the last will | yes | 1 |
| ``.../client/<client id>/claim`` | Presence: a claim on the id, or a probe (mqtt.py ``_on_claim``) | claims | 1 |
"""

from __future__ import annotations

import re

from ..wire.errors import SchemaError

PREFIX = "tinyfed/v1"
# The federation a device, the gateway and the bridge join when none is named: one constant, so the three agree.
DEFAULT_FEDERATION = "default"
_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")  # not starting with ".": ids name folders too (".", "..")


def check_id(kind: str, value: str) -> str:
    """Federation and device ids become topic levels: no wildcards, separators or empty strings."""
    if not _ID.match(value):
        raise SchemaError(kind, f"{value!r} is not 1-64 characters of letters, digits, '.', '_' or '-' (not starting "
                                "with '.')")
    return value


def member_client_id(federation: str, device: str) -> str:
    """The MQTT client id of a device or bridged board: its claim topic, and its ACL grant, are named by it."""
    return f"tinyfed-{federation}-{device}"


def gateway_client_id(federation: str) -> str:
    """The gateway's MQTT client id: its certificate's common name on a provisioned broker."""
    return f"tinyfed-gateway-{federation}"


class Topics:
    def __init__(self, federation: str) -> None:
        self.federation = check_id("federation", federation)
        self.base = f"{PREFIX}/{federation}"

    @property
    def state(self) -> str:
        return f"{self.base}/state"

    @property
    def manifest(self) -> str:
        return f"{self.base}/model/manifest"

    def chunk(self, version: bytes, index: int) -> str:
        return f"{self.base}/model/{version.hex()}/chunk/{index}"

    def chunks(self, version: bytes) -> str:
        return f"{self.base}/model/{version.hex()}/chunk/+"

    def task(self, device: str) -> str:
        return f"{self.base}/device/{check_id('device', device)}/task"

    def update(self, device: str) -> str:
        return f"{self.base}/device/{check_id('device', device)}/update"

    def receipt(self, device: str) -> str:
        return f"{self.base}/device/{check_id('device', device)}/receipt"

    def presence(self, device: str) -> str:
        return f"{self.base}/device/{check_id('device', device)}/presence"

    @property
    def gateway_presence(self) -> str:
        """The running gateway's retained presence: a second gateway reads it and refuses to start."""
        return f"{self.base}/gateway/presence"

    def gateway_probe(self, probe_id: str) -> str:
        """Where a starting gateway's probe echoes itself, to know it has seen the retained presence."""
        return f"{self.base}/gateway/probe/{probe_id}"

    @property
    def all_gateway_probes(self) -> str:
        return f"{self.base}/gateway/probe/+"

    def claim(self, client_id: str) -> str:
        """Where a link claims its MQTT client id, to tell a second client with the same id (mqtt.py)."""
        if not client_id or any(c in client_id for c in "/+#"):
            raise SchemaError("client id", f"{client_id!r} cannot be a topic level")
        return f"{self.base}/client/{client_id}/claim"

    @property
    def all_chunks(self) -> str:
        """Every version's chunks: a filter for subscriptions and the broker's ACL."""
        return f"{self.base}/model/+/chunk/+"

    @property
    def all_tasks(self) -> str:
        return f"{self.base}/device/+/task"

    @property
    def all_updates(self) -> str:
        return f"{self.base}/device/+/update"

    @property
    def all_receipts(self) -> str:
        return f"{self.base}/device/+/receipt"

    @property
    def all_presence(self) -> str:
        return f"{self.base}/device/+/presence"

    def device_of(self, topic: str) -> str:
        """The device id in a per-device topic; refuses topics outside this federation."""
        parts = topic.split("/")
        if len(parts) != 6 or "/".join(parts[:3]) != self.base or parts[3] != "device":
            raise SchemaError("topic", f"{topic!r} is not a device topic of federation {self.federation!r}")
        return check_id("device", parts[4])
