"""Who is in the federation: presence births and deaths, capabilities, last seen, model version, failures.

Birth and death carry the device's start counter (Sparkplug B's bdSeq): a
death counts only when its counter equals the latest birth's. An older one
is the will of an earlier connection that the broker delivered late; a
larger one belongs to no birth (a forged death cannot evict a device).

A device that reported it cannot do a task (its labels are not the
model's, its data vanished...) is not selected again until its birth
message changes: a restart (a new start counter) or new capabilities (its
sample count, say, after its data was fixed). A new model version alone
(devices re-announce themselves after each install) changes nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import time
from dataclasses import dataclass

from edge_runtime import wire
from edge_runtime.lograte import RateLimitedLog

from .store import GatewayStore

log = logging.getLogger(__name__)


EXPELLED = "expelled"  # the failure key of a device taken out by revocation (no birth has it: the next clears it)


@dataclass
class DeviceRecord:
    device: str
    online: bool
    seq: int
    last_seen: float
    capabilities: wire.Capabilities | None
    failure: str | None = None  # why its last task failed; not selected while set
    failure_key: str | None = None  # the birth it failed under: a different one clears the failure
    quarantined: str | None = None  # why the anomaly detector quarantined it (robustness/); not selected while set


def birth_key(seq: int, capabilities: wire.Capabilities | None) -> str:
    """What identifies a device's birth for failures: its start counter and capabilities, not its model."""
    if capabilities is None:
        return f"{seq}:-"
    caps = dataclasses.replace(capabilities, model_version=None)
    return f"{seq}:{hashlib.sha256(wire.encode(wire.Presence('', True, 0, 0, caps))).hexdigest()[:16]}"


@dataclass
class Eligibility:
    """What a device must offer to be given training work."""

    min_samples: int = 1
    min_ram: int = 0
    backends: tuple[str, ...] = ()  # empty: any

    def why_not(self, record: DeviceRecord) -> str | None:
        caps = record.capabilities
        if not record.online:
            return "offline"
        if record.failure is not None:
            return f"failed its last task ({record.failure}); selected again once its birth message changes"
        if record.quarantined is not None:
            return f"quarantined ({record.quarantined}); `tinyfed gateway release` puts it back"
        if caps is None:
            return "no capabilities announced"
        if caps.samples < self.min_samples:
            return f"{caps.samples} samples < {self.min_samples}"
        if caps.ram and caps.ram < self.min_ram:
            return f"{caps.ram} bytes of RAM < {self.min_ram}"
        if self.backends and caps.backend not in self.backends:
            return f"backend {caps.backend!r} not in {self.backends}"
        return None


class Registry:
    def __init__(self, store: GatewayStore) -> None:
        self.store = store
        self._devices: dict[str, DeviceRecord] = {}
        self._lock = threading.Lock()
        self.departures = 0  # devices seen going offline since start: tells rounds when to look for the dead
        self.failures = 0  # task failures reported since start: tells rounds when to look for replacements
        self._online = 0  # kept as births and deaths arrive: what a plan asks before it looks at every record
        # A sender's to repeat as often as it likes: said at a bounded rate.
        self.said = RateLimitedLog(log, "ignored births and deaths")
        self._quarantined: set[str] = set()  # the names set_quarantined was last given: no other record has one
        for row in store.devices():
            caps = None
            if row["capabilities"]:
                caps = wire.decode(row["capabilities"], expect=wire.Presence).capabilities
            # After a gateway restart nobody is known to be online until their retained birth arrives again.
            self._devices[row["device"]] = DeviceRecord(
                row["device"], False, row["seq"], row["last_seen"], caps, row["failure"], row["failure_key"]
            )

    def observe(self, presence: wire.Presence, raw: bytes) -> tuple[DeviceRecord, bool]:
        """Apply a birth or death; returns the record and whether the device just went offline."""
        with self._lock:
            record = self._devices.get(presence.device)
            if presence.online and record is not None and presence.seq < record.seq:
                self.said.info("ignored a stale birth of %s (seq %d < %d)", presence.device, presence.seq,
                               record.seq)  # fmt: skip
                return record, False
            if not presence.online and (record is None or presence.seq != record.seq):
                # Sparkplug's rule: a death is the will of the connection whose birth carried the same counter.
                # An older one is a late will of an earlier connection; a larger one was never born, so it
                # cannot evict the device (nor create a record for one that never announced itself).
                self.said.info("ignored a death of %s with seq %d (its birth has %s)", presence.device,
                               presence.seq, record.seq if record else "none")  # fmt: skip
                return record or DeviceRecord(presence.device, False, presence.seq, time.time(), None), False
            was_online = record is not None and record.online
            caps = presence.capabilities if presence.online else (record.capabilities if record else None)
            failure, key = (record.failure, record.failure_key) if record else (None, None)
            if failure is not None and presence.online and birth_key(presence.seq, caps) != key:
                log.info("%s announced a new birth: it may be selected again (it had failed: %s)", presence.device,
                         failure)  # fmt: skip
                failure = key = None
            record = DeviceRecord(presence.device, presence.online, presence.seq, time.time(), caps, failure, key,
                                  record.quarantined if record else None)  # fmt: skip
            self._devices[presence.device] = record
            if was_online and not presence.online:
                self.departures += 1
            self._online += int(presence.online) - int(was_online)
        self.store.save_device(
            presence.device, presence.online, presence.seq, raw if presence.online else None, failure, key
        )
        return record, was_online and not presence.online

    def expel(self, device: str, why: str) -> bool:
        """Take a device for gone now (its key was revoked): offline, so rounds replace it as they replace the
        dead, and out in the store too, so ``gateway status`` says why rather than showing it online until its
        will (which it signs with the revoked key, so it is refused) never comes. Its births are refused from
        now on (their signatures); a new enrolment under the same id is a new birth, which clears this.
        True if it was online."""
        with self._lock:
            record = self._devices.get(device)
            if record is None or record.failure_key == EXPELLED:
                return False
            self._devices[device] = dataclasses.replace(record, online=False, failure=why, failure_key=EXPELLED)
            if record.online:
                self.departures += 1
                self._online -= 1
        self.store.expel_device(device, why, EXPELLED)
        log.warning("%s is out of the federation: %s", device, why)
        return record.online

    def birth_key(self, device: str) -> str:
        with self._lock:
            record = self._devices.get(device)
            return birth_key(record.seq, record.capabilities) if record else birth_key(-1, None)

    def mark_failed(self, device: str, why: str, key: str) -> None:
        """Not selected until a birth other than ``key`` arrives (the failure is already in the store)."""
        with self._lock:
            record = self._devices.get(device)
            if record is not None:
                self._devices[device] = dataclasses.replace(record, failure=why, failure_key=key)
            self.failures += 1

    def set_quarantined(self, quarantined: dict[str, str]) -> None:
        """Exactly these devices are quarantined (device -> why); the others are not. Asked at every step: only
        the devices quarantined now or at the last call are looked at, not every device ever seen."""
        with self._lock:
            for name in self._quarantined | quarantined.keys():
                record = self._devices.get(name)
                why = quarantined.get(name)
                if record is not None and record.quarantined != why:
                    self._devices[name] = dataclasses.replace(record, quarantined=why)
            self._quarantined = set(quarantined)  # one not yet seen gets its reason once it is

    @property
    def online(self) -> int:
        """How many devices are online now: at most this many are eligible. O(1), where ``eligible`` reads every
        record: a fleet of 10,000 announcing itself asks before each birth whether a round may open."""
        return self._online

    def get(self, device: str) -> DeviceRecord | None:
        with self._lock:
            return self._devices.get(device)

    def all(self) -> list[DeviceRecord]:
        with self._lock:
            return list(self._devices.values())

    def eligible(self, rule: Eligibility) -> list[DeviceRecord]:
        return [r for r in self.all() if rule.why_not(r) is None]
