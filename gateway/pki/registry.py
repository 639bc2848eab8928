"""The gateway's registry of device signing keys: ``gateway/devices.json`` in the provisioning directory.

One JSON file, rewritten atomically (``files.replace_file``) by ``tinyfed provision device`` and
``revoke``, read by the gateway through :class:`RegistryWatcher`, which re-reads it whenever it has
changed: a revocation counts from the gateway's next look, with no restart and no round lost.

```json
{"format": 1, "federation": "home", "keys": [
  {"device": "pi-kitchen", "key": "<base64 of the 32 raw Ed25519 public bytes>", "key_id": "<hex, 8 bytes>",
   "tls_serial": "<hex>", "added": "2026-11-30T12:00:00Z", "revoked": null, "reason": null}]}
```

A device has at most one key that is not revoked. Revoked keys stay listed (with the time and the
reason), so a key that was ever revoked is known as revoked for good, also after the device is enrolled
again with a new key; the broker's CRL is made from the same entries. Nothing here needs ``cryptography``
except :meth:`DeviceKey.public_key`.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import threading
from collections import Counter
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_runtime.keys import key_id
from edge_runtime.transport.topics import check_id
from edge_runtime.wire.errors import SchemaError

from .files import PUBLIC, ProvisionError, replace_file

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

log = logging.getLogger(__name__)
FORMAT = 1


class RegistryError(ProvisionError):
    """devices.json is unreadable or malformed; the message names the file and the entry."""


@dataclass(frozen=True)
class DeviceKey:
    device: str
    key: bytes  # the 32 raw Ed25519 public bytes
    tls_serial: int  # the serial of the TLS certificate issued with this key: the CRL lists it once revoked
    added: str  # UTC, ISO 8601
    revoked: str | None = None  # UTC, ISO 8601; None while the key is valid
    reason: str | None = None

    @property
    def key_id(self) -> bytes:
        return key_id(self.key)

    @property
    def active(self) -> bool:
        return self.revoked is None

    def public_key(self) -> Ed25519PublicKey:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        return Ed25519PublicKey.from_public_bytes(self.key)

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "key": base64.b64encode(self.key).decode(),
            "key_id": self.key_id.hex(),
            "tls_serial": format(self.tls_serial, "x"),
            "added": self.added,
            "revoked": self.revoked,
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, entry: Any, where: str) -> DeviceKey:
        if not isinstance(entry, dict):
            raise RegistryError(f"{where}: expected an object")

        def text(name: str, optional: bool = False) -> str | None:
            value = entry.get(name)
            if value is None and optional:
                return None
            if not isinstance(value, str) or not value:
                raise RegistryError(f"{where} {name}: expected a string, got {value!r:.40}")
            return value

        device = text("device")
        assert device is not None
        try:
            check_id("device", device)
            key = base64.b64decode(text("key") or "", validate=True)
            serial = int(text("tls_serial") or "", 16)
        except (SchemaError, ValueError, binascii.Error) as exc:
            raise RegistryError(f"{where}: {exc}") from exc
        if len(key) != 32:
            raise RegistryError(f"{where} key: {len(key)} bytes, an Ed25519 public key is 32")
        added = text("added")
        assert added is not None
        found = cls(device, key, serial, added, text("revoked", True), text("reason", True))
        stated = entry.get("key_id")
        if stated is not None and stated != found.key_id.hex():
            raise RegistryError(f"{where} key_id: {stated!r} does not match the key ({found.key_id.hex()})")
        return found


@dataclass(frozen=True)
class Registry:
    federation: str
    keys: tuple[DeviceKey, ...] = ()

    # Looked up by device and by key id, built once per registry read. Every message the gateway opens asks
    # for its device's key, and a refused one for the key its envelope names (the sender's choice): a walk of
    # every key ever enrolled cost each message 0.3 ms at 10,000 keys, and each made-up key id 7.7 ms.
    @cached_property
    def _active(self) -> dict[str, DeviceKey]:
        return {k.device: k for k in self.keys if k.active}

    @cached_property
    def _by_kid(self) -> dict[bytes, DeviceKey]:
        found: dict[bytes, DeviceKey] = {}
        for k in self.keys:
            found.setdefault(k.key_id, k)  # the first entry with the id, as a walk would find it
        return found

    @cached_property
    def _enrolled(self) -> frozenset[str]:
        return frozenset(k.device for k in self.keys)

    @cached_property
    def _valid(self) -> tuple[str, ...]:
        return tuple(sorted(self._active))

    def active_key(self, device: str) -> DeviceKey | None:
        """The key ``device`` signs with now; None when it was never enrolled or is revoked."""
        return self._active.get(device)

    def find(self, kid: bytes) -> DeviceKey | None:
        """The entry for key id ``kid``, revoked or not: check :attr:`DeviceKey.active` and its ``device``."""
        return self._by_kid.get(kid)

    def enrolled(self, device: str) -> bool:
        """Whether ``device`` ever had a key here (revoked or not)."""
        return device in self._enrolled

    def devices(self) -> list[str]:
        """Enrolled devices that are not revoked, sorted."""
        return list(self._valid)

    def revoked(self) -> list[DeviceKey]:
        return [k for k in self.keys if not k.active]

    def add(self, entry: DeviceKey) -> Registry:
        if self.active_key(entry.device) is not None:
            raise RegistryError(f"device {entry.device} already has a valid key: revoke it first")
        if self.find(entry.key_id) is not None:
            raise RegistryError(f"key id {entry.key_id.hex()} is already registered")
        return replace(self, keys=(*self.keys, entry))

    def revoke(self, device: str, when: str, reason: str) -> tuple[Registry, DeviceKey]:
        current = self.active_key(device)
        if current is None:
            known = any(k.device == device for k in self.keys)
            raise RegistryError(
                f"device {device} is already revoked" if known else f"device {device} is not enrolled here"
            )
        revoked = replace(current, revoked=when, reason=reason)
        return replace(self, keys=tuple(revoked if k is current else k for k in self.keys)), revoked

    def to_bytes(self) -> bytes:
        data = {"format": FORMAT, "federation": self.federation, "keys": [k.to_json() for k in self.keys]}
        return (json.dumps(data, indent=2) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes, source: str) -> Registry:
        try:
            obj = json.loads(data)
        except ValueError as exc:
            raise RegistryError(f"{source}: not JSON: {exc}") from exc
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise RegistryError(f"{source}: not a tinyfed device registry of format {FORMAT}")
        federation, entries = obj.get("federation"), obj.get("keys")
        if not isinstance(federation, str) or not isinstance(entries, list):
            raise RegistryError(f"{source}: needs a federation (string) and keys (list)")
        keys = tuple(DeviceKey.from_json(e, f"{source} keys[{i}]") for i, e in enumerate(entries))
        active = Counter(k.device for k in keys if k.active)  # a count per device: list.count was quadratic
        twice = sorted(d for d, n in active.items() if n > 1)
        if twice:
            raise RegistryError(f"{source}: more than one valid key for {', '.join(twice)}")
        return cls(federation, keys)


def read_registry(path: Path) -> Registry:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RegistryError(f"{path}: cannot read the device registry: {exc.strerror or exc}") from exc
    return Registry.from_bytes(data, str(path))


def write_registry(path: Path, registry: Registry) -> None:
    replace_file(path, registry.to_bytes(), PUBLIC)


class RegistryWatcher:
    """The gateway's live view of devices.json: :meth:`current` re-reads the file when it has changed.

    A change is a new (inode, size, mtime): provisioning replaces the file by rename, so every write
    is a new inode and none is missed, however close together. A look is one ``stat``. If the file
    turns unreadable or malformed after a good read, the last good registry stays in force and the
    error is logged at every look until it is fixed: the federation keeps running on the keys it knew,
    and a revocation written by ``tinyfed provision`` (atomic) is never the cause.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        # The stamp before the read: a file replaced between the two is then seen as changed at the next look
        # (read first, a revocation written in between would carry the new stamp with the old keys, for good).
        self._seen: tuple[int, int, int] | None = self._stamp()
        self._registry = read_registry(self.path)  # a broken file at start is the caller's error to report
        self.reloads = 0

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def current(self) -> Registry:
        with self._lock:
            stamp = self._stamp()
            if stamp is not None and stamp != self._seen:
                try:
                    self._registry = read_registry(self.path)
                except RegistryError as exc:
                    log.error("keeping the device registry read before: %s", exc)
                else:
                    self._seen = stamp
                    self.reloads += 1
                    log.info("device registry %s reloaded: %d valid key(s)", self.path,
                             len(self._registry.devices()))  # fmt: skip
            elif stamp is None:
                log.error("device registry %s is gone; keeping the one read before", self.path)
            return self._registry
