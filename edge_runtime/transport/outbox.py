"""Store-and-forward on disk: an update made while the broker is away waits here, and survives reboots.

One file per message, written atomically, named by creation time so they are
sent in order. A message leaves the outbox when the receiver's receipt names
it, not at the broker's PUBACK: Mosquitto acknowledges before it saves or
forwards, so a broker killed at the wrong moment loses acknowledged messages
(measured: 4 of 30 in ``tests/test_transport.py`` before receipts). One whose
round expired is dropped with a log line. A message may therefore be sent
more than once; every update carries an id, so the gateway counts it once.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cbor2

from ..storage import atomic_write

log = logging.getLogger(__name__)
SUFFIX = ".msg"


@dataclass
class OutboxEntry:
    message_id: bytes
    topic: str
    payload: bytes
    expires: float  # unix seconds; after this the message is useless (its round is over)
    created: float = 0.0
    label: str = ""  # for log lines, e.g. "update round 7"


class Outbox:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        # Notified whenever entries leave, so whoever needs the outbox drained (a test, a clean
        # shutdown) waits for that instead of polling the directory.
        self._left = threading.Condition()

    def _notify(self) -> None:
        with self._left:
            self._left.notify_all()

    def wait_empty(self, timeout: float) -> bool:
        """Wait until every entry has left (receipted, acknowledged, expired); False if ``timeout`` passed first."""
        with self._left:
            return self._left.wait_for(lambda: len(self) == 0, timeout)

    def _path(self, entry: OutboxEntry) -> Path:
        return self.directory / f"{int(entry.created * 1e6):020d}-{entry.message_id.hex()}{SUFFIX}"

    def put(self, entry: OutboxEntry) -> None:
        entry.created = entry.created or time.time()
        record = {
            "id": entry.message_id,
            "topic": entry.topic,
            "payload": entry.payload,
            "expires": entry.expires,
            "created": entry.created,
            "label": entry.label,
        }
        atomic_write(self._path(entry), cbor2.dumps(record))

    def _load(self, path: Path) -> OutboxEntry | None:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None  # its receipt removed it between listing and reading
        try:
            r = cbor2.loads(raw)
            return OutboxEntry(
                bytes(r["id"]),
                str(r["topic"]),
                bytes(r["payload"]),
                float(r["expires"]),
                float(r["created"]),
                str(r.get("label", "")),
            )
        except (ValueError, KeyError, TypeError, cbor2.CBORDecodeError) as exc:
            aside = path.with_suffix(".corrupt")
            with contextlib.suppress(FileNotFoundError):
                path.replace(aside)
            log.error("outbox entry %s unreadable (%s); moved to %s", path.name, exc, aside.name)
            return None

    def pending(self, now: float | None = None) -> list[OutboxEntry]:
        """Entries still worth sending, oldest first; expired ones are removed and logged."""
        now = time.time() if now is None else now
        out = []
        left = False
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):
            entry = self._load(path)
            if entry is None:
                left = True  # set aside as corrupt, or removed by its receipt meanwhile
                continue
            if entry.expires <= now:
                path.unlink(missing_ok=True)
                log.warning(
                    "outbox: dropped expired %s (id %s, deadline passed %.0f s ago)",
                    entry.label or entry.topic,
                    entry.message_id.hex()[:12],
                    now - entry.expires,
                )
                left = True
                continue
            out.append(entry)
        if left:
            self._notify()
        return out

    def remove(self, entry: OutboxEntry) -> None:
        self._path(entry).unlink(missing_ok=True)
        self._notify()

    def remove_id(self, message_id: bytes) -> bool:
        """Forget the message with this id (its receipt came); False if it was not here."""
        found = False
        for path in self.directory.glob(f"*-{message_id.hex()}{SUFFIX}"):
            path.unlink(missing_ok=True)
            found = True
        if found:
            self._notify()
        return found

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob(f"*{SUFFIX}"))
