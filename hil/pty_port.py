"""The emulated board's end of a pseudo-terminal pair, paced at a baud rate, with faults on demand.

``os.openpty()`` gives a real tty: the host opens its path with pyserial
exactly as it opens ``/dev/ttyACM0``. The board side writes in slices of
a few milliseconds' worth of bytes and sleeps for their line time, so a
transfer takes as long as it would on a UART at that rate (a pty itself
moves bytes as fast as memory). Faults act on what the board *sends and
receives*: a bit error rate flips bits, ``drop_rate`` loses bytes.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import termios
import threading
import time
import tty
from dataclasses import dataclass, field


@dataclass
class LineFaults:
    bit_error_rate: float = 0.0
    drop_rate: float = 0.0  # probability that a byte vanishes
    slow_clock: float = 1.0  # > 1: the board runs this many times slower (its bytes take longer)
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    def apply(self, data: bytes) -> bytes:
        if not (self.bit_error_rate or self.drop_rate):
            return data
        out = bytearray()
        for byte in data:
            if self.drop_rate and self.rng.random() < self.drop_rate:
                continue
            if self.bit_error_rate:
                for bit in range(8):
                    if self.rng.random() < self.bit_error_rate:
                        byte ^= 1 << bit
            out.append(byte)
        return bytes(out)


class PtyPort:
    """The board's side. ``path`` is what a host opens (``serial_for_url(path)``)."""

    def __init__(self, baud: int = 115200, faults: LineFaults | None = None) -> None:
        self.master, self._slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self._slave)
        attrs = termios.tcgetattr(self._slave)
        attrs[3] &= ~termios.ECHO
        termios.tcsetattr(self._slave, termios.TCSANOW, attrs)
        self.path = os.ttyname(self._slave)
        self.baud = baud
        self.faults = faults or LineFaults()
        self.timeout = 0.05
        self._closed = threading.Event()
        self.bytes_written = 0

    def line_seconds(self, nbytes: int) -> float:
        return nbytes * 10 / self.baud * self.faults.slow_clock

    def write(self, data: bytes) -> int:
        data = self.faults.apply(data)
        slice_bytes = max(1, self.baud // 10 // 200)  # 5 ms of line time per slice
        for start in range(0, len(data), slice_bytes):
            piece = data[start : start + slice_bytes]
            begun = time.perf_counter()
            view = memoryview(piece)
            while view:
                written = os.write(self.master, view)
                view = view[written:]
            self.bytes_written += len(piece)
            remaining = self.line_seconds(len(piece)) - (time.perf_counter() - begun)
            if remaining > 0:
                time.sleep(remaining)
        return len(data)

    def read(self, size: int = 1) -> bytes:
        if self._closed.is_set():
            raise OSError("pty closed")
        ready, _, _ = select.select([self.master], [], [], self.timeout)
        if not ready:
            return b""
        try:
            data = os.read(self.master, size)
        except OSError:
            return b""
        return self.faults.apply(data)

    def close(self) -> None:
        self._closed.set()
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)
