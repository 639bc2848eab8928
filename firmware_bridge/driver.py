"""The host driver: one board on one serial port, as method calls with typed errors.

The port is opened with pyserial's ``serial_for_url``, so ``/dev/ttyACM0``,
``socket://host:port``, ``rfc2217://host:port`` and the emulator's pty are
one code path. Each request waits for its answer; what the board sends on
its own meanwhile (LOG lines, a RESET notice after a reboot) is kept in
:attr:`BoardDriver.logs` or raised as :class:`BoardReset`, so a caller
never mistakes a rebooted board for one that carried on.

A model transfer survives resets: the board keeps the bytes it wrote and
their count in flash, answers MODEL_BEGIN with the offset to resume from,
and the driver carries on from there after each reset (up to
``max_resets``). Chunks shrink when frames need resending (a noisy line
loses long frames far more often than short ones) and grow back while the
line is clean.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_runtime import __version__, wire
from edge_runtime.lograte import RateLimitedLog
from edge_runtime.transport.fragments import Reassembler

from .errors import BoardGarbage, BoardRefused, BoardReset, BoardSilent, ProtocolError
from .framing import MAX_FRAME_DEFAULT
from .link import LinkError, LinkTimeout, SerialLink
from .messages import SERIAL_LIMITS, read_message

log = logging.getLogger(__name__)
MIN_CHUNK = 32


@dataclass
class TransferReport:
    size: int
    seconds: float
    resumed_from: list[int]  # the offsets the board reported at each (re)start of the transfer
    resets: int
    frames: int
    retransmissions: int
    line_bytes: int  # bytes the host put on the line for this transfer, frames and resends included
    kind: str = "model"  # "model": the whole model went; "patch": only the patch did
    payload_bytes: int = 0  # bytes the transfer carried (the model's, or the encoded patch's)
    fallback: str = ""  # a patch the board refused (why), after which the whole model went

    @property
    def bytes_per_second(self) -> float:
        return self.size / self.seconds if self.seconds else 0.0


def chunk_capacity(max_payload: int) -> int:
    """Model bytes one MODEL_DATA frame carries: the CBOR map, offset and byte-string header take the rest."""
    return max_payload - 24


class BoardDriver:
    def __init__(
        self,
        url: str,
        baud: int = 115200,
        max_frame: int = 4096,
        answer_timeout: float = 30.0,
        retries: int = 8,
        port: Any = None,
    ) -> None:
        """Open ``url`` (or use an already open pyserial ``port``). Call :meth:`hello` next."""
        if port is None:
            import serial  # pyserial: imported here so the module loads without it for docs and typing

            try:
                port = serial.serial_for_url(url, baudrate=baud, timeout=0.05, write_timeout=10)
            except (serial.SerialException, ValueError) as exc:
                raise BoardSilent(f"cannot open serial port {url!r}: {exc}") from exc
        self.url = url
        self.port = port
        self.baud = baud
        self.max_frame = max_frame
        self.answer_timeout = answer_timeout
        self.link = SerialLink(port, baud, max_payload=MAX_FRAME_DEFAULT, retries=retries).start()
        self.board: wire.Hello | None = None
        self.logs: deque[wire.Log] = deque(maxlen=200)
        # A board's own lines, at a bounded rate: one that logs in a loop through a long request (TRAIN) put
        # hundreds of lines a second into the bridge's journal, crowding out the bridge's own.
        self._board_said = RateLimitedLog(log, f"lines of board {url}", "the driver keeps the last 200: logs")
        self.resets_seen = 0
        # The end of the furthest payload byte a MODEL_DATA of the current transfer attempt carried, in any of
        # its versions: what the board can hold of it at most. The offset a transfer reports (``progress``) is
        # what the board holds at least; the two differ after a shortened resend (see :meth:`_stream`).
        self.sent_through = 0
        self._in_data_phase = False
        self._greeting = False
        # One board's line, one sender: its share of the budget is the whole of it.
        self._reassembler = Reassembler(SERIAL_LIMITS, budget_bytes=1 << 20, timeout=120.0, sender_bytes=1 << 20)

    def close(self) -> None:
        self.link.close()
        close = getattr(self.port, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> BoardDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- request / answer -------------------------------------------------------------------------------
    def _send(self, message: Any, on_retry: Callable[[int], bytes | None] | None = None) -> None:
        try:
            self.link.send(message.TYPE, wire.encode(message), on_retry=on_retry)
        except LinkTimeout as exc:
            raise self._silence(str(exc)) from exc
        except LinkError as exc:
            raise BoardSilent(f"{self.url}: {exc}") from exc

    def _silence(self, what: str) -> BoardSilent | BoardGarbage:
        stats = self.link.stats
        if stats.bad_frames and not stats.frames_received:
            return BoardGarbage(
                f"{self.url}: {stats.bad_frames} frames failed their checks and none arrived intact; "
                f"is the baud rate {self.baud} right, and is this a tinyfed board?"
            )
        return BoardSilent(f"{self.url}: {what}")

    def _next(self, timeout: float) -> Any:
        """The next message that is not a LOG; a RESET notice is raised."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._silence(f"no answer within {timeout:.0f} s")
            try:
                frame = self.link.receive(timeout=remaining)
            except LinkTimeout as exc:
                raise self._silence(f"no answer within {timeout:.0f} s") from exc
            except LinkError as exc:
                raise BoardSilent(f"{self.url}: {exc}") from exc
            try:
                message = read_message(frame)
            except wire.WireError as exc:
                raise ProtocolError(f"{self.url}: the board sent a message that does not decode: {exc}") from exc
            if isinstance(message, wire.Log):
                self.logs.append(message)
                self._board_said.log(_LEVELS.get(message.level, logging.INFO), "board %s: %s", self.url, message.text)
                continue
            if isinstance(message, wire.Reset):
                self.resets_seen += 1
                self.board = None
                raise BoardReset(message.reason)
            if isinstance(message, wire.Error):
                if self._stale(message):
                    continue
                raise BoardRefused(message.code, message.refused_type, message.detail)
            return message

    def _stale(self, error: wire.Error) -> bool:
        """An ERROR during the handshake, or about a model chunk outside the data phase, answers a request
        resent across a reset (the board takes it up after rebooting, before our HELLO): what it refers to
        has been started again since, so it is logged and dropped."""
        if self._greeting or (error.refused_type == wire.ModelData.TYPE and not self._in_data_phase):
            log.debug("%s: stale error about a model chunk: %s", self.url, error.detail)
            return True
        return False

    def _request(self, message: Any, expect: type, timeout: float | None = None) -> Any:
        self._check_pending()
        self._send(message)
        answer = self._next(timeout or self.answer_timeout)
        while isinstance(answer, wire.Hello) and expect is not wire.Hello:
            answer = self._next(timeout or self.answer_timeout)  # a late answer to a repeated handshake
        if not isinstance(answer, expect):
            raise ProtocolError(f"{self.url}: asked {type(message).__name__}, got {type(answer).__name__}")
        return answer

    def _check_pending(self) -> None:
        """Raise what arrived unasked since the last request: an ERROR about a MODEL_DATA, a RESET notice."""
        for frame in self.link.pending():
            try:
                message = read_message(frame)
            except wire.WireError:
                continue
            if isinstance(message, wire.Log):
                self.logs.append(message)
            elif isinstance(message, wire.Reset):
                self.resets_seen += 1
                self.board = None
                raise BoardReset(message.reason)
            elif isinstance(message, wire.Error) and not self._stale(message):
                raise BoardRefused(message.code, message.refused_type, message.detail)

    # -- session ------------------------------------------------------------------------------------------
    def hello(self, timeout: float | None = None) -> wire.Hello:
        """Handshake: agree on the frame size, learn the board's capabilities. Call again after a reset."""
        for frame in self.link.pending():  # a reboot notice or stale answers from before: done with
            if frame.type == wire.Reset.TYPE:
                self.resets_seen += 1
        request = wire.Hello(
            ram=0, flash=0, arena=0, firmware=f"tinyfed-bridge {__version__}", max_frame=self.max_frame
        )
        self.link.max_payload = MAX_FRAME_DEFAULT
        self._greeting = True
        try:
            answer = self._greet(request, timeout)
        finally:
            self._greeting = False
        if answer.protocol != 1:
            raise ProtocolError(f"{self.url}: the board speaks serial protocol {answer.protocol}; this host speaks 1")
        self.link.max_payload = answer.max_frame
        self.board = answer
        return answer

    def _greet(self, request: wire.Hello, timeout: float | None) -> wire.Hello:
        deadline = time.monotonic() + (timeout or self.answer_timeout)
        resend = True
        while True:
            if resend:
                self._send(request)
                resend = False
            remaining = deadline - time.monotonic()
            try:
                answer = self._next(max(0.1, remaining))
            except BoardReset:
                # A reboot notice: usually the one sent at power-on, before our HELLO arrived, so the answer is
                # still coming. If the board rebooted after taking the HELLO, no answer comes: ask again then.
                try:
                    answer = self._next(min(2.0, max(0.1, deadline - time.monotonic())))
                except BoardSilent:
                    if time.monotonic() >= deadline:
                        raise
                    resend = True
                    continue
                except BoardReset:
                    resend = True
                    continue
            if isinstance(answer, wire.Hello):
                return answer

    def status(self) -> wire.Status:
        answer: wire.Status = self._request(wire.Status(state=0), wire.Status)
        return answer

    def reset(self) -> wire.Hello:
        """Reset the board, wait for its reboot notice, and handshake again."""
        self._send(wire.Reset(0))
        try:
            self._next(self.answer_timeout)
        except BoardReset:
            return self.hello()
        raise ProtocolError(f"{self.url}: the board answered RESET without rebooting")

    def infer(self, x: np.ndarray) -> wire.InferResult:
        result: wire.InferResult = self._request(wire.Infer(np.asarray(x, dtype=np.int8).reshape(-1)), wire.InferResult)
        return result

    def train(self, task: wire.Task, timeout: float | None = None) -> tuple[wire.Update, bytes]:
        """Relay a task; returns the board's update and its exact bytes (reassembled when fragmented)."""
        self._check_pending()
        self._send(wire.Train(task))
        deadline = time.monotonic() + (timeout or max(self.answer_timeout, task.deadline - time.time()))
        while True:
            remaining = deadline - time.monotonic()
            answer = self._next(max(0.1, remaining))
            if isinstance(answer, wire.Fragment):
                whole = self._reassembler.feed(self.url, wire.encode(answer))
                if whole is None:
                    continue
                update = wire.decode(whole, expect=wire.Update)
                return update, whole
            if isinstance(answer, wire.Update):
                return answer, wire.encode(answer)
            raise ProtocolError(f"{self.url}: asked TRAIN, got {type(answer).__name__}")

    # -- model transfer -------------------------------------------------------------------------------------
    def send_model(
        self, model: bytes, max_resets: int = 5, progress: Callable[[int, int], None] | None = None
    ) -> TransferReport:
        """Install ``model`` on the board: resumable, verified by sha256 on the board before it switches."""
        version = hashlib.sha256(model).digest()
        return self._resumable(wire.ModelBegin(version, len(model)), model, version, max_resets, progress, "model")

    def send_patch(
        self,
        patch: wire.ModelPatch,
        max_resets: int = 5,
        progress: Callable[[int, int], None] | None = None,
    ) -> TransferReport:
        """Install ``patch.target`` by sending only ``patch`` (its wire encoding, as an MQTT device gets it):
        resumable as a model transfer is; the board applies it to the model it runs into its other slot and
        switches only if the result hashes to the target. Raises BoardRefused (NO_PARENT, BAD_PATCH,
        HASH_MISMATCH, ...) when the board cannot: :meth:`update_model` then sends the whole model."""
        encoded, begin = self._patch_request(patch)
        return self._resumable(begin, encoded, patch.target, max_resets, progress, "patch")

    @staticmethod
    def _patch_request(patch: wire.ModelPatch) -> tuple[bytes, wire.PatchBegin]:
        encoded = wire.encode(patch)
        return encoded, wire.PatchBegin(patch.target, patch.base, len(encoded), patch.size, resume_from=0)

    def update_model(
        self,
        model: bytes,
        patch: wire.ModelPatch | None = None,
        max_resets: int = 5,
        progress: Callable[[int, int], None] | None = None,
    ) -> TransferReport:
        """Bring the board to ``model``: as ``patch`` when one is given and the board declares patches in HELLO
        (the caller picks a patch against the version the board runs); the whole model otherwise, or when the
        board refuses the patch (it lacks the base, the patch does not decode or verify)."""
        version = hashlib.sha256(model).digest()
        board = self.board
        usable = (
            patch is not None
            and board is not None
            and board.patch
            and patch.target == version
            and patch.base == board.model_version
            and patch.size == len(model)
            # a patch no smaller than the model it makes saves nothing on the line
            and len(self._patch_request(patch)[0]) < len(model)
            # PATCH_BEGIN holds two sha256s: at the smallest frames (64 B) it does not fit, and the model goes whole
            and len(wire.encode(self._patch_request(patch)[1])) <= self.link.max_payload
        )
        if not usable or patch is None:
            return self.send_model(model, max_resets, progress)
        try:
            return self.send_patch(patch, max_resets, progress)
        except BoardRefused as exc:
            if exc.code not in PATCH_FALLBACK:
                raise
            log.info("%s: patch to %s refused (%s); sending the whole model", self.url, version.hex()[:12], exc)
            if self.board is None:
                self.hello()
            report = self.send_model(model, max_resets, progress)
            report.fallback = str(exc)
            return report

    def _resumable(
        self,
        begin: wire.ModelBegin | wire.PatchBegin,
        payload: bytes,
        version: bytes,
        max_resets: int,
        progress: Callable[[int, int], None] | None,
        kind: str,
    ) -> TransferReport:
        stats = self.link.stats
        frames0, resends0, bytes0 = stats.frames_sent, stats.retransmissions, stats.bytes_sent
        started = time.perf_counter()
        resumed: list[int] = []
        resets = 0
        while True:
            try:
                if self.board is None:
                    self.hello()
                self._stream(begin, payload, version, resumed, progress)
                break
            except BoardReset as exc:
                resets += 1
                log.info("%s: %s during the %s transfer; resuming", self.url, exc, kind)
                if resets > max_resets:
                    raise
        if self.board is not None:
            self.board.model_version = version  # what HELLO would say now
        return TransferReport(
            size=len(payload),
            seconds=time.perf_counter() - started,
            resumed_from=resumed,
            resets=resets,
            frames=stats.frames_sent - frames0,
            retransmissions=stats.retransmissions - resends0,
            line_bytes=stats.bytes_sent - bytes0,
            kind=kind,
            payload_bytes=len(payload),
        )

    def _transfer(
        self, model: bytes, version: bytes, resumed: list[int], progress: Callable[[int, int], None] | None
    ) -> None:
        """One attempt at a whole-model transfer announced as ``version`` (tests announce a wrong one)."""
        self._stream(wire.ModelBegin(version, len(model)), model, version, resumed, progress)

    def _stream(
        self,
        request: wire.ModelBegin | wire.PatchBegin,
        payload: bytes,
        version: bytes,
        resumed: list[int],
        progress: Callable[[int, int], None] | None,
    ) -> None:
        """One attempt: BEGIN (the board says where to resume), MODEL_DATA from there, MODEL_COMMIT."""
        begin = self._request(request, type(request))
        offset = begin.resume_from
        resumed.append(offset)
        capacity = chunk_capacity(self.link.max_payload)
        chunk, clean = capacity, 0

        def shorter(attempt: int) -> bytes:
            """A resend of the same chunk, half as long: long frames are what a noisy line loses."""
            nonlocal chunk
            chunk = max(MIN_CHUNK, chunk // 2)
            return wire.encode(wire.ModelData(offset, payload[offset : offset + chunk]))

        self.sent_through = offset
        self._in_data_phase = True
        try:
            while offset < len(payload):
                self._check_pending()
                self.sent_through = max(self.sent_through, min(len(payload), offset + chunk))  # resends are shorter
                self._send(wire.ModelData(offset, payload[offset : offset + chunk]), on_retry=shorter)
                # The board holds at least this much: ``chunk`` is the length of the last version sent, and the
                # acknowledgement names the frame, not the version the board took (the first to reach it, which
                # after a late acknowledgement is a longer one: docs/serial-protocol.md, "Link"). The next chunk
                # starts here; the bytes of it the board already has, it skips.
                offset = min(len(payload), offset + chunk)
                if progress is not None:
                    progress(offset, len(payload))
                if self.link.last_attempts > 1:
                    clean = 0
                else:
                    clean += 1
                    if clean >= 4 and chunk < capacity:  # the line has been clean a while: longer frames again
                        chunk, clean = min(capacity, chunk * 2), 0
        finally:
            self._in_data_phase = False
        status = self._request(wire.ModelCommit(version), wire.Status)
        if status.model_version != version:
            raise ProtocolError(f"{self.url}: the board committed but reports model {status.model_version!r}")


# A patch refused for these reasons is answered by sending the whole model: the board lacks the base or the
# capability, the patch did not decode or verify, or the patch and its result do not fit the board.
PATCH_FALLBACK = frozenset(
    {
        wire.ErrorCode.NO_PARENT,
        wire.ErrorCode.BAD_PATCH,
        wire.ErrorCode.HASH_MISMATCH,
        wire.ErrorCode.UNSUPPORTED,
        wire.ErrorCode.NO_FLASH,
        wire.ErrorCode.NO_MEMORY,
        wire.ErrorCode.MALFORMED,
    }
)


_LEVELS = {3: logging.ERROR, 4: logging.WARNING, 6: logging.INFO, 7: logging.DEBUG}
