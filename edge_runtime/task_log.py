"""The tasks this member has answered, kept on disk until their deadlines pass.

A task stays valid until its deadline (up to a day ahead), and the broker
delivers it again after a restart (a persistent session, a retained or
replayed message). Without this record a restarted device would train it
again and send a second update: wasted work for everyone, and under local
DP a second noisy release of the same data that the gateway's ledger
never counts, since it refuses the duplicate only after the broker has
carried it. A task is written here before its answer (update or failure
report) goes into the outbox: a crash in between leaves a task unanswered,
never answered twice.

One line per task, ``<task id hex> <deadline>``, appended and fsync'd; lines
whose deadline has passed are dropped when the file is read at start.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from .storage import atomic_write

log = logging.getLogger(__name__)


class AnsweredTasks:
    def __init__(self, path: Path, now: float | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._ids: dict[bytes, float] = {}
        now = time.time() if now is None else now
        stale = 0
        if path.exists():
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                try:
                    hex_id, deadline = line.split()
                    task_id, until = bytes.fromhex(hex_id), float(deadline)
                except ValueError:
                    log.warning("%s line %d is not '<task id> <deadline>'; skipped", path, number)
                    stale += 1
                    continue
                if until > now:
                    self._ids[task_id] = until
                else:
                    stale += 1
        if stale:
            atomic_write(path, "".join(f"{t.hex()} {d}\n" for t, d in self._ids.items()).encode())

    def __contains__(self, task_id: bytes) -> bool:
        with self._lock:
            return task_id in self._ids

    def add(self, task_id: bytes, deadline: float) -> None:
        """Durable before it returns: the answer may be sent once this has."""
        with self._lock:
            if task_id in self._ids:
                return
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, f"{task_id.hex()} {deadline}\n".encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            self._ids[task_id] = deadline
