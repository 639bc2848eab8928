"""Log lines that senders' messages cause, at a bounded rate.

A gateway refuses what a sender gets wrong, and a bridge says what its boards log: one line per message made a
flood of messages a flood of lines. journald limits a service's lines as a whole (10,000 in 30 s by default),
so past that it dropped the service's other lines with the flood's, and what it kept took the place of the
journal's older history. Here the first ``burst`` lines of each ``window`` are said one by one; the rest are
counted, and said as one line when the next window begins (``where`` tells where each is kept, if anywhere).
The state is three numbers, whatever the senders choose to send.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable


class RateLimitedLog:
    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        where: str = "",
        burst: int = 20,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.what = what  # what the lines are about, plural: "refused messages"
        self.where = where  # where each is kept besides: "the store records each: tinyfed gateway status"
        self.burst = burst
        self.window = window
        self.clock = clock
        self._lock = threading.Lock()
        self._started: float | None = None  # when the current window began
        self._said = 0  # lines said one by one in it
        self._held = 0  # lines not said in it

    def log(self, level: int, msg: str, *args: object) -> None:
        """``logger.log(level, msg, *args)`` while the window has room; else counted for its summary."""
        if not self.logger.isEnabledFor(level):
            return
        now = self.clock()
        with self._lock:
            summary = None
            if self._started is None or now - self._started >= self.window:
                if self._held:
                    summary = self._held
                self._started, self._said, self._held = now, 0, 0
            say = self._said < self.burst
            if say:
                self._said += 1
            else:
                self._held += 1
            first_held = self._held == 1
        if summary is not None:
            where = f" ({self.where})" if self.where else ""
            self.logger.warning("%d more %s were not logged one by one in the %.0f s after the first %d%s", summary,
                                self.what, self.window, self.burst, where)  # fmt: skip
        if say:
            self.logger.log(level, msg, *args)
        elif first_held:
            self.logger.warning("more %s than %d in %.0f s: the rest are counted and said in one line",
                                self.what, self.burst, self.window)  # fmt: skip

    def warning(self, msg: str, *args: object) -> None:
        self.log(logging.WARNING, msg, *args)

    def info(self, msg: str, *args: object) -> None:
        self.log(logging.INFO, msg, *args)
