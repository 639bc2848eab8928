"""Reliable, ordered messages over a serial byte stream: one frame in flight, acknowledged or resent.

Stop-and-wait ARQ with piggybacked acknowledgements. One outstanding
frame keeps the board's side to a single frame buffer (RAM is what a
microcontroller lacks), and on a USB-serial line the acknowledgement
returns in about a millisecond, so a 1 KiB frame at 115200 baud (90 ms on
the wire) keeps the line about 98% busy. The retransmission timeout is
derived from the baud rate: twice the time of a full frame and its
acknowledgement, plus a fixed allowance for the other side to process it.

The port is anything with pyserial's ``read``/``write`` (``serial_for_url``
gives the same object for ``/dev/ttyACM0``, ``socket://``, ``rfc2217://``
and a pty), read by one thread that splits frames, checks them and
answers acknowledgements.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from edge_runtime.errors import TinyfedError

from .framing import (
    FLAG_ACK,
    FLAG_START,
    MAX_FRAME_DEFAULT,
    OVERHEAD,
    TYPE_ACK,
    Frame,
    FrameError,
    FrameSplitter,
    decode_frame,
    encode_frame,
    max_encoded_size,
)

log = logging.getLogger(__name__)
MAX_NUDGES = 64  # resends prompted by the peer's repeated acknowledgement, per frame, before giving up
# Frames delivered and not yet taken, at most. A request's answer is taken as it arrives, so more wait only
# while the other side talks unasked (LOG frames) and this side does not read: a bridge between tasks, for
# as long as it waits for one. Unbounded, a board logging in a loop grew the bridge's memory at line rate.
# Past it a frame finds no free buffer (docs/serial-protocol.md): neither delivered nor acknowledged, so the
# other side resends it, and gives up on it as it would on a lost one.
MAX_HELD = 256


class Port(Protocol):
    def read(self, size: int = 1) -> bytes: ...
    def write(self, data: bytes) -> int | None: ...


def _read_available(port: Port) -> bytes:
    """What has arrived, without waiting for a full buffer.

    pyserial's ``read(n)`` blocks until ``n`` bytes or its timeout, which
    would add the whole timeout to every acknowledgement; so read one byte
    (returns as soon as one is there), then whatever else is waiting.
    Ports without ``in_waiting`` (the emulator's end) return what they have.
    """
    waiting = getattr(port, "in_waiting", None)
    if waiting is None:
        return port.read(4096)
    data = port.read(1)
    if data:
        more = int(getattr(port, "in_waiting", 0))
        if more:
            data += port.read(more)
    return data


class LinkError(RuntimeError, TinyfedError):
    """The other side stopped answering, or the link was closed."""


class LinkTimeout(LinkError):
    pass


@dataclass
class LinkStats:
    frames_sent: int = 0
    retransmissions: int = 0
    frames_received: int = 0
    bad_frames: int = 0  # CRC, COBS or header failures: the line is noisy or out of step
    duplicates: int = 0
    bytes_sent: int = 0
    naks_sent: int = 0  # repeated acknowledgements sent on a damaged frame
    dropped: int = 0  # frames that found no free buffer (MAX_HELD others unread): not acknowledged, so resent


class SerialLink:
    def __init__(
        self,
        port: Port,
        baud: int = 115200,
        max_payload: int = MAX_FRAME_DEFAULT,
        retries: int = 8,
        processing_allowance: float = 0.05,
        max_held: int = MAX_HELD,
    ) -> None:
        self.port = port
        self.baud = baud
        self.max_payload = max_payload
        self.retries = retries
        self.processing_allowance = processing_allowance
        self.stats = LinkStats()
        self._splitter = FrameSplitter(max_encoded_size(max(max_payload, 64 * 1024)))
        self._send_seq = 0
        self._session_started = False  # the first frame this link sends carries the session-start flag
        self._expect_seq: int | None = None  # None after a (re)start: the next frame sets the sequence
        self._last_delivered: int | None = None
        self._last_was_start = False  # the last delivered frame opened the peer's session
        self._nudged = False  # a bare acknowledgement of an older frame arrived: the peer saw a damaged one
        self.last_attempts = 0  # attempts the last send needed (1 = no retransmission): a line-quality signal
        self._acked = threading.Condition()
        self._acked_seq: int | None = None
        self._inbox: queue.Queue[Frame] = queue.Queue(max_held)
        self._write_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._closed = threading.Event()
        self._reader: threading.Thread | None = None

    # -- timing -------------------------------------------------------------------------------------------
    def line_seconds(self, nbytes: int) -> float:
        """Time ``nbytes`` take on the wire: 10 bits each (8N1)."""
        return nbytes * 10 / self.baud

    def rto_for(self, frame_bytes: int) -> float:
        """Retransmission timeout for a frame of ``frame_bytes`` on the line: twice its round trip plus
        the other side's time to look at it. Derived per frame, so a short frame on a noisy line is
        resent after milliseconds, not after the time a full one would take."""
        return 2 * self.line_seconds(frame_bytes + max_encoded_size(0)) + self.processing_allowance

    @property
    def rto(self) -> float:
        """The timeout for a full frame."""
        return self.rto_for(max_encoded_size(self.max_payload))

    # -- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> SerialLink:
        self._reader = threading.Thread(target=self._read_loop, name="serial-link-reader", daemon=True)
        self._reader.start()
        return self

    def close(self) -> None:
        self._closed.set()
        if self._reader is not None:
            self._reader.join(timeout=2)

    # -- sending ------------------------------------------------------------------------------------------
    def _write(self, frame: Frame) -> int:
        data = encode_frame(frame)
        with self._write_lock:
            self.port.write(data)
        self.stats.bytes_sent += len(data)
        return len(data)

    def _ack_field(self) -> tuple[int, int]:
        if self._last_delivered is None:
            return 0, 0
        return self._last_delivered, FLAG_ACK

    def send(
        self,
        kind: int,
        payload: bytes,
        start_session: bool = False,
        on_retry: Callable[[int], bytes | None] | None = None,
    ) -> bytes:
        """Deliver one message; returns the payload the other side acknowledged, raises LinkTimeout otherwise.

        The first frame a link sends opens its session (flag bit 1, sequence 0), so the other side
        takes up the numbering whatever it expected before; ``start_session`` forces that again.
        ``on_retry(attempt)`` may return a different (shorter) payload for the resend: the receiver
        delivers whichever version of the frame reaches it first, so the message must mean the
        same thing in every version (a model chunk that starts at the same offset).
        """
        if len(payload) > self.max_payload:
            raise ValueError(f"payload of {len(payload)} bytes exceeds the frame maximum {self.max_payload}")
        with self._send_lock:
            start = start_session or not self._session_started
            if start:
                self._send_seq = 0
            seq = self._send_seq
            attempt = timeouts = nudges = 0
            while timeouts <= self.retries and nudges <= MAX_NUDGES:
                if self._closed.is_set():
                    raise LinkError("link closed")
                if attempt and on_retry is not None:
                    payload = on_retry(attempt) or payload
                ack, flags = self._ack_field()
                flags |= FLAG_START if start else 0
                with self._acked:
                    self._nudged = False
                frame_bytes = self._write(Frame(kind, seq, ack, flags, payload))
                sent_at = time.monotonic()
                earliest_nak = sent_at + self.line_seconds(frame_bytes)
                deadline = sent_at + self.rto_for(frame_bytes) * (1 + timeouts)
                self.stats.frames_sent += 1
                if attempt:
                    self.stats.retransmissions += 1
                attempt += 1
                with self._acked:
                    while True:
                        self._acked.wait_for(
                            lambda: self._acked_seq == seq or self._closed.is_set() or self._nudged,
                            max(0.0, deadline - time.monotonic()),
                        )
                        if self._closed.is_set():
                            raise LinkError("link closed")
                        if self._acked_seq == seq:
                            self._acked_seq = None
                            self._send_seq = (seq + 1) & 0xFF
                            self._session_started = True
                            self.last_attempts = attempt
                            return payload
                        if self._nudged and time.monotonic() >= earliest_nak:
                            nudges += 1  # the other side got a damaged frame: resend now, not at the timeout
                            break
                        self._nudged = False  # too early to be about this frame: an old acknowledgement
                        if time.monotonic() >= deadline:
                            timeouts += 1
                            break
            raise LinkTimeout(
                f"no acknowledgement of frame {seq} after {attempt} attempts "
                f"(timeout {self.rto_for(max_encoded_size(len(payload))) * 1000:.0f} ms, growing by that much "
                "per attempt)"
            )

    # -- receiving ----------------------------------------------------------------------------------------
    def receive(self, timeout: float | None = None) -> Frame:
        try:
            return self._inbox.get(timeout=timeout)
        except queue.Empty as exc:
            if self._closed.is_set():
                raise LinkError("link closed") from exc
            raise LinkTimeout(f"no message within {timeout} s") from exc

    def pending(self) -> list[Frame]:
        """Messages already received, without waiting (an ERROR or RESET that arrived mid-transfer)."""
        out = []
        while True:
            try:
                out.append(self._inbox.get_nowait())
            except queue.Empty:
                return out

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def _read_loop(self) -> None:
        while not self._closed.is_set():
            try:
                data = _read_available(self.port)
            except Exception as exc:  # a port that vanished (USB unplugged, pty closed)
                if not self._closed.is_set():
                    log.warning("serial port read failed: %s", exc)
                self._closed.set()
                with self._acked:
                    self._acked.notify_all()
                return
            if not data:
                continue
            damaged = False
            for encoded in self._splitter.feed(data):
                try:
                    frame = decode_frame(encoded)
                except FrameError:
                    self.stats.bad_frames += 1
                    damaged = True
                    continue
                self._on_frame(frame)
            if damaged and self._last_delivered is not None:
                # A negative acknowledgement in all but name: repeating the last acknowledgement tells the
                # sender its frame did not arrive intact, so it resends at once instead of at its timeout.
                self.stats.naks_sent += 1
                self._write(Frame(TYPE_ACK, 0, *self._ack_field()))

    def _on_frame(self, frame: Frame) -> None:
        if frame.has_ack:
            with self._acked:
                self._acked_seq = frame.ack
                if frame.type == TYPE_ACK and frame.ack != self._send_seq:
                    self._nudged = True
                self._acked.notify_all()
        if frame.type == TYPE_ACK:
            return
        self.stats.frames_received += 1
        resent_start = frame.starts_session and self._last_was_start and frame.seq == self._last_delivered
        if frame.starts_session and not resent_start:
            self._expect_seq = frame.seq  # the other side (re)started: take up its numbering
        if self._expect_seq is None or frame.seq == self._expect_seq:
            # None: this side just (re)started and takes the first frame it hears as in order. At worst that
            # is a resend of a message delivered before the reset, which the session layer answers as stale.
            if self._inbox.full():
                self._no_room()
                return  # not acknowledged: the other side resends it, as if it was lost
            self._last_delivered = frame.seq
            self._last_was_start = frame.starts_session
            self._expect_seq = (frame.seq + 1) & 0xFF
            self._inbox.put_nowait(frame)  # only this thread puts: there is room
        else:
            self.stats.duplicates += 1  # a resend whose acknowledgement was lost: acknowledge it again
        ack, flags = self._ack_field()
        self._write(Frame(TYPE_ACK, 0, ack, flags))


    def _no_room(self) -> None:
        self.stats.dropped += 1
        if self.stats.dropped == 1 or self.stats.dropped % 10_000 == 0:  # a board that talks on is said rarely
            log.warning("%d frame(s) not taken: %d others wait unread (the other side talks unasked)",
                        self.stats.dropped, self._inbox.maxsize)  # fmt: skip


def payload_capacity(max_payload: int) -> int:
    """Model bytes one MODEL_DATA frame can carry (CBOR framing of the message takes the rest)."""
    return max_payload - 24 - OVERHEAD
