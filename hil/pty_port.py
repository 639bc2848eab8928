"""The emulated board's end of a pseudo-terminal pair, paced at a baud rate, with faults on demand.

``os.openpty()`` gives a real tty: the host opens its path with pyserial
exactly as it opens ``/dev/ttyACM0``. A pty moves bytes as fast as memory,
so the board side paces both directions as a UART would: what it sends
leaves in slices of a few milliseconds' line time, and what it receives
is handed to the firmware no sooner than the last of those bytes would
have arrived at the baud rate. A transfer therefore takes as long as it
would on the wire, and a throughput measured over the pty means something.

Faults act on what the board sends and receives: a bit error rate flips
bits, ``drop_rate`` loses bytes, ``slow_clock`` stretches the board's
byte times and its processing (a board whose clock runs slow answers late).
"""

from __future__ import annotations

import contextlib
import os
import select
import termios
import threading
import time
import tty
from dataclasses import dataclass, field

import numpy as np


class _FaultStream:
    """Where faults fall in one direction's byte stream: at absolute positions drawn from the seed.

    Positions are gaps drawn from a geometric distribution and counted in
    bits (flips) or bytes (drops) from the start of the stream, so the same
    seed damages the same bytes however reads and writes happen to split
    the stream: a noisy-line run repeats, and figures compare across versions.
    """

    def __init__(self, bit_error_rate: float, drop_rate: float, seed: tuple[int, int]) -> None:
        self._flips = np.random.default_rng([*seed, 0])
        self._drops = np.random.default_rng([*seed, 1])
        self._ber = bit_error_rate
        self._drop = drop_rate
        self._offset = 0  # bytes of this direction seen so far
        self._next_flip = self._gap(self._flips, bit_error_rate) - 1  # absolute bit index
        self._next_drop = self._gap(self._drops, drop_rate) - 1  # absolute byte index

    @staticmethod
    def _gap(rng: np.random.Generator, rate: float) -> int:
        return int(rng.geometric(rate)) if rate else 1 << 62

    def apply(self, arr: np.ndarray) -> tuple[np.ndarray, int, int]:
        """Damage ``arr`` (this direction's next bytes) in place; returns what survives, bits flipped, bytes dropped."""
        start, end = self._offset, self._offset + arr.size
        self._offset = end
        flips = 0
        while self._next_flip < end * 8:
            bit = self._next_flip - start * 8
            arr[bit // 8] ^= np.uint8(1 << (bit % 8))
            flips += 1
            self._next_flip += self._gap(self._flips, self._ber)
        dropped: list[int] = []
        while self._next_drop < end:
            dropped.append(self._next_drop - start)
            self._next_drop += self._gap(self._drops, self._drop)
        if dropped:
            arr = np.delete(arr, dropped)
        return arr, flips, len(dropped)


@dataclass
class LineFaults:
    bit_error_rate: float = 0.0
    drop_rate: float = 0.0  # probability that a byte vanishes
    slow_clock: float = 1.0  # > 1: the board runs this many times slower (its bytes and its work take longer)
    seed: int = 0
    bits_flipped: int = field(default=0, init=False)
    bytes_dropped: int = field(default=0, init=False)
    _streams: dict[str, _FaultStream] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("bit_error_rate", "drop_rate"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if self.slow_clock < 1.0:
            raise ValueError(f"slow_clock must be >= 1 (a factor of slowness), got {self.slow_clock}")
        for index, direction in enumerate(("to_host", "to_board")):
            self._streams[direction] = _FaultStream(self.bit_error_rate, self.drop_rate, (self.seed, index))

    @property
    def active(self) -> bool:
        return bool(self.bit_error_rate or self.drop_rate)

    def apply(self, data: bytes, direction: str = "to_host") -> bytes:
        """The bytes as the other side sees them; ``direction`` is ``to_host`` or ``to_board``."""
        if not self.active or not data:
            return data
        arr, flips, dropped = self._streams[direction].apply(np.frombuffer(data, dtype=np.uint8).copy())
        self.bits_flipped += flips
        self.bytes_dropped += dropped
        return arr.tobytes()


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
        self._rx_free_at = 0.0  # when the last byte handed to the firmware finished arriving
        self.bytes_written = 0
        self.bytes_read = 0

    def line_seconds(self, nbytes: int) -> float:
        return nbytes * 10 / self.baud * self.faults.slow_clock

    @property
    def slice_bytes(self) -> int:
        return max(1, self.baud // 10 // 200)  # 5 ms of line time

    def write(self, data: bytes) -> int:
        data = self.faults.apply(data, "to_host")
        step = self.slice_bytes
        due = time.perf_counter()  # an absolute schedule, so sleep overshoot does not add up over a frame
        for start in range(0, len(data), step):
            if self._closed.is_set():
                raise OSError("pty closed")
            piece = data[start : start + step]
            view = memoryview(piece)
            while view:
                written = os.write(self.master, view)
                view = view[written:]
            self.bytes_written += len(piece)
            due += self.line_seconds(len(piece))
            remaining = due - time.perf_counter()
            if remaining > 0:
                time.sleep(remaining)
        return len(data)

    def read(self, size: int = 1) -> bytes:
        """At most ``size`` bytes, returned when they would have finished arriving on the wire."""
        if self._closed.is_set():
            raise OSError("pty closed")
        ready, _, _ = select.select([self.master], [], [], self.timeout)
        if not ready:
            return b""
        try:
            data = os.read(self.master, min(size, self.slice_bytes))
        except OSError:
            return b""
        now = time.perf_counter()
        # Bytes that follow on closely continue the stream (a sleep's overshoot is not idle line time);
        # after a real gap the line was idle and they start arriving now.
        continuing = now - self._rx_free_at < self.line_seconds(self.slice_bytes)
        self._rx_free_at = (self._rx_free_at if continuing else now) + self.line_seconds(len(data))
        if self._rx_free_at > now:
            time.sleep(self._rx_free_at - now)
        self.bytes_read += len(data)
        return self.faults.apply(data, "to_board")

    def close(self) -> None:
        self._closed.set()
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)
