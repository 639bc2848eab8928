"""Stopping a long-running command (device, gateway, bridge, emulated board) cleanly on SIGTERM or Ctrl-C.

Each of those commands waits on an event rather than dying in a signal
handler, so it can finish the task in hand, publish its death message
and leave its stores consistent before it exits.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

log = logging.getLogger(__name__)


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT (installed in the main thread); the command waits on it, then stops."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop
