"""The gateway's notion of now, injected so that round deadlines can be tested without waiting for them.

Round policy and admission read time only through a ``Clock``; the service
passes ``SystemClock`` in production, tests pass a ``FakeClock`` they move
by hand, so a 120-second deadline passes in a microsecond and a test never
sleeps to see it.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (deadlines travel to devices as unix seconds)."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()


class FakeClock:
    """A clock that moves only when told to; safe to read from several threads."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError(f"a clock does not run backwards ({seconds} s)")
        with self._lock:
            self._now += seconds
            return self._now
