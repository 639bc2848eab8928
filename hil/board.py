"""The emulated board: the reference firmware of the serial protocol, in Python, behind a real pty.

It does what firmware on a microcontroller does, within the same limits:
one pool of RAM (default 256 KiB) out of which come the TFLite Micro tensor
arena and the buffers to train the last FULLY_CONNECTED layer; a flash
file with the model in two slots, the transfer progress and the
error-feedback residual; a serial line paced at its baud rate. It refuses
with an error code what does not fit instead of trying, and it resets,
browns out, drops bytes and runs slow when told to, so the host side can
be tested against each of those.

Resets are real as far as the firmware goes: everything in RAM (the
transfer in progress, the interpreter, the negotiated frame size, the
link's sequence numbers) is dropped, the firmware boots again from flash,
and announces the reset with a RESET message. The pty stays open, as a
USB-serial adapter does while the chip behind it reboots.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edge_runtime import __version__, wire
from edge_runtime.compress.compressor import Compressor
from edge_runtime.compress.feedback import ResidualStore
from edge_runtime.local_training import LocalData, held_out_metrics, task_training
from edge_runtime.model.backends.micro import ArenaTooSmallError, MicroBackend, MicroSession, arena_with_margin
from edge_runtime.model.errors import ModelError, ShapeMismatchError
from edge_runtime.model.graph import Graph
from edge_runtime.model.info import model_labels, quantize_input
from edge_runtime.model.reader import read_graph
from edge_runtime.model.schema import OPCODE_CODES
from edge_runtime.train.trainer import Trainer, cut_for_last_layers, weighted_layer_ops
from edge_runtime.transport.fragments import fragment
from edge_runtime.wire.serial import ErrorCode
from firmware_bridge.framing import MAX_FRAME_DEFAULT
from firmware_bridge.link import LinkError, SerialLink
from firmware_bridge.messages import SERIAL_LIMITS, read_message, send_message

from .faults import FaultPlan
from .flash import BrownOut, Flash, TransferProgress
from .memory import MemoryReport, system_bytes, training_buffers
from .pty_port import PtyPort

log = logging.getLogger(__name__)

# Kernels this firmware registers (TFLM's MicroMutableOpResolver): what tinyfed's models use.
SUPPORTED_OPS = (
    "FULLY_CONNECTED",
    "CONV_2D",
    "DEPTHWISE_CONV_2D",
    "MAX_POOL_2D",
    "AVERAGE_POOL_2D",
    "RESHAPE",
    "SOFTMAX",
    "RELU",
    "ADD",
    "MEAN",
    "QUANTIZE",
    "DEQUANTIZE",
)

RESET_REQUESTED, RESET_WATCHDOG, RESET_BROWN_OUT, RESET_POWER_ON = 0, 1, 2, 3
IDLE, RECEIVING, TRAINING, INFERRING = 0, 1, 2, 3


def parse_size(text: str) -> int:
    """``256k`` -> 262144, ``1m`` -> 1048576, ``4096`` -> 4096 (binary units, as datasheets mean them)."""
    units = {"k": 1 << 10, "m": 1 << 20}
    text = text.strip().lower().removesuffix("b")
    try:
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a size (for example 256k, 1m or 4096)") from exc


@dataclass
class BoardSpec:
    ram: int = 256 * 1024
    flash: int = 1 << 20
    baud: int = 115200
    max_frame: int = 4096  # the largest frame payload this firmware buffers
    board_id: str = "emu-0001"
    firmware: str = f"tinyfed-emu {__version__}"
    ops: tuple[str, ...] = SUPPORTED_OPS
    patch: bool = True  # declares and applies model patches (PATCH_BEGIN); False: whole models only

    @property
    def op_codes(self) -> list[int]:
        return sorted(OPCODE_CODES[name] for name in self.ops)


class _Reset(Exception):
    def __init__(self, reason: int) -> None:
        self.reason = reason


class _Refusal(Exception):
    def __init__(self, code: ErrorCode, detail: str) -> None:
        self.code = code
        self.detail = detail


def _cut_to_fit(message: Any, field_name: str, limit: int) -> Any:
    """``message`` with its text field shortened, whole characters at a time, until it encodes in ``limit``
    bytes (the text may end up empty)."""
    text: str = getattr(message, field_name)
    low, high = 0, len(text)  # the longest prefix that fits lies in [low, high]
    while low < high:
        mid = (low + high + 1) // 2
        if len(wire.encode(replace(message, **{field_name: text[:mid]}))) <= limit:
            low = mid
        else:
            high = mid - 1
    return replace(message, **{field_name: text[:low]})


class FlashResidualStore(ResidualStore):
    """The error-feedback residual in the flash scratch area (same format as a device's file)."""

    def __init__(self, flash: Flash) -> None:
        self.flash = flash

    def _read_raw(self) -> bytes | None:
        return self.flash.load_scratch()

    def _write_raw(self, data: bytes) -> None:
        self.flash.save_scratch(data)

    def _set_aside(self) -> str:
        return "left in flash until the next write"


@dataclass
class _Transfer:
    version: bytes
    size: int  # bytes this transfer carries: the model's, or the encoded patch's
    slot: int
    next_offset: int
    base: bytes | None = None  # a patch transfer: the version the patch applies to
    model_size: int = 0  # a patch transfer: bytes of the base and of the result
    at: int = 0  # where in the slot byte 0 of the transfer goes (a patch sits at the slot's end)


@dataclass
class _Ram:
    """Everything a reset wipes."""

    model: bytes | None = None
    graph: Graph | None = None
    session: Any = None
    arena: int = 0
    transfer: _Transfer | None = None
    state: int = IDLE
    last_error: int = 0
    booted: float = field(default_factory=time.monotonic)


class EmulatedBoard:
    """Start it, hand ``path`` to a host (``serial_for_url(board.path)``), stop it when done."""

    def __init__(
        self,
        flash_path: str | Path,
        spec: BoardSpec | None = None,
        data: LocalData | None = None,
        faults: FaultPlan | None = None,
    ) -> None:
        self.spec = spec or BoardSpec()
        self.faults = faults or FaultPlan()
        self.port = PtyPort(self.spec.baud, self.faults.line)
        self.flash = Flash(flash_path, self.spec.flash)
        self.data = data
        self.resets = 0
        self.reset_reasons: list[int] = []
        self.duplicates_seen = 0
        self.boot_versions: list[bytes | None] = []  # the model each boot came up with, oldest first
        # Bytes of MODEL_DATA written to flash, by transfer kind ("model", "patch"): the board's receive log.
        self.received: dict[str, int] = {"model": 0, "patch": 0}
        self.installs: list[tuple[str, bytes]] = []  # (kind, version) of each model committed, oldest first
        self.booted = threading.Event()  # set once the firmware serves requests (after each boot)
        self._ram = _Ram()
        self._link: SerialLink | None = None
        self._stop = threading.Event()
        self._hung = threading.Event()
        self._reset_request: int | None = None
        self._request_type = 0
        self._thread: threading.Thread | None = None

    # -- the host's view ----------------------------------------------------------------------------------
    @property
    def path(self) -> str:
        return self.port.path

    @property
    def model_version(self) -> bytes | None:
        record = self.flash.active()
        return None if record is None else record.sha256

    @property
    def link(self) -> SerialLink | None:
        return self._link

    def start(self) -> EmulatedBoard:
        self._thread = threading.Thread(target=self._run, name=f"board-{self.spec.board_id}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._hung.clear()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.port.close()

    def reset(self, reason: int = RESET_WATCHDOG) -> None:
        """Reset the chip from outside (the reset button, a watchdog): RAM is lost, flash is kept."""
        self._reset_request = reason

    def hang(self) -> None:
        """Stop answering anything (a hung or unplugged board) until :meth:`power_cycle`."""
        self.booted.clear()
        self._hung.set()

    def power_cycle(self) -> None:
        """Power comes back: the board boots from flash and announces itself."""
        self._hung.clear()
        self._reset_request = None

    # -- memory -------------------------------------------------------------------------------------------
    @property
    def budget(self) -> int:
        """The largest arena the firmware can offer: RAM less the stack and frame buffers."""
        return self.spec.ram - system_bytes(self.spec.max_frame)

    def memory_report(self, model: bytes | None = None, batch_size: int = 32, density: float = 0.01) -> MemoryReport:
        """RAM use for ``model`` (default: the installed one): arena, system, and a training task's buffers."""
        model = model if model is not None else self._ram.model
        if model is None:
            return MemoryReport(self.spec.ram, 0, system_bytes(self.spec.max_frame), {})
        graph = read_graph(model)
        arena = arena_with_margin(MicroBackend().measure_arena(model, graph))
        head = graph.operators[weighted_layer_ops(graph)[-1]]
        training: dict[str, int] = {}
        if head.opcode == "FULLY_CONNECTED":
            out_features, in_features = graph.tensor(head.inputs[1]).shape
            samples = len(self.data.train) if self.data is not None else 0
            training = training_buffers(in_features, out_features, samples, batch_size, density)
        return MemoryReport(self.spec.ram, arena, system_bytes(self.spec.max_frame), training)

    # -- firmware main loop -------------------------------------------------------------------------------
    def _run(self) -> None:
        reason = RESET_POWER_ON
        while not self._stop.is_set():
            self._boot(reason)
            outcome = self._serve()
            assert self._link is not None
            self._link.close()
            self.booted.clear()
            if outcome is None:
                return
            if outcome == -1:  # hung: nothing until power comes back
                while self._hung.is_set() and not self._stop.is_set():
                    time.sleep(0.05)
                outcome = RESET_POWER_ON
            self.resets += 1
            self.reset_reasons.append(outcome)
            reason = outcome

    def _boot(self, reason: int) -> None:
        self._ram = _Ram()
        self._reset_request = None
        self._load_installed()
        self._link = SerialLink(self.port, self.spec.baud, max_payload=MAX_FRAME_DEFAULT).start()
        self.booted.set()
        try:
            send_message(self._link, wire.Reset(reason))  # "I rebooted": the host handshakes again
        except LinkError:
            log.info("board %s: nobody acknowledged the reset notice", self.spec.board_id)

    def _load_installed(self) -> None:
        model = self.flash.model()
        self.boot_versions.append(None if model is None else hashlib.sha256(model).digest())
        if model is None:
            return
        try:
            self._install_in_ram(model)
        except (_Refusal, ModelError) as exc:
            log.warning("board %s: the model in flash does not run here: %s", self.spec.board_id, exc)

    def _serve(self) -> int | None:
        """Handle requests until the board resets (its reason), hangs (-1) or is stopped (None)."""
        link = self._link
        assert link is not None
        while not self._stop.is_set():
            if self._hung.is_set():
                return -1
            if self._reset_request is not None:
                return self._reset_request
            try:
                frame = link.receive(timeout=0.05)
            except LinkError:
                continue
            started = time.perf_counter()
            try:
                self._dispatch(frame)
            except _Reset as reset:
                return reset.reason
            except BrownOut as exc:
                log.info("board %s: %s", self.spec.board_id, exc)
                return RESET_BROWN_OUT
            except LinkError as exc:
                log.info("board %s: could not answer: %s", self.spec.board_id, exc)
            slow = self.faults.line.slow_clock
            if slow > 1:
                time.sleep((slow - 1) * (time.perf_counter() - started))
        return None

    def _dispatch(self, frame: Any) -> None:
        assert self._link is not None
        self._request_type = frame.type  # what an answer that does not fit the frame is refused as
        try:
            message = read_message(frame)
        except wire.WireError as exc:
            self._send_error(ErrorCode.MALFORMED, frame.type, str(exc))
            return
        handler = self._handlers.get(type(message))
        if handler is None:
            self._send_error(ErrorCode.UNSUPPORTED, frame.type, f"the board does not take message type {frame.type}")
            return
        try:
            handler(self, message)
        except _Refusal as refusal:
            self._send_error(refusal.code, frame.type, refusal.detail)
        except (_Reset, BrownOut, LinkError):
            raise
        except ShapeMismatchError as exc:
            self._send_error(ErrorCode.BAD_INPUT, frame.type, f"local data does not fit the model: {exc}")
        except Exception as exc:  # firmware keeps serving; the host learns what failed
            log.exception("board %s: message type %d failed", self.spec.board_id, frame.type)
            self._send_error(ErrorCode.INTERNAL, frame.type, f"{type(exc).__name__}: {exc}")
        finally:
            self._ram.state = IDLE

    def _send(self, message: Any) -> None:
        """Every request gets one answer within the agreed frame, as on the C board: an ERROR's or LOG's text
        is cut (at a character, so at a UTF-8 boundary) to fit, and any other answer that does not fit
        becomes an INTERNAL error that does."""
        link = self._link
        assert link is not None
        if len(wire.encode(message)) <= link.max_payload:
            send_message(link, message)
        elif isinstance(message, wire.Error):
            send_message(link, _cut_to_fit(message, "detail", link.max_payload))
        elif isinstance(message, wire.Log):
            send_message(link, _cut_to_fit(message, "text", link.max_payload))
        else:
            self._send_error(
                ErrorCode.INTERNAL,
                self._request_type,
                f"the answer (message type {message.TYPE}) exceeds the agreed frame of {link.max_payload} B",
            )

    def _send_error(self, code: ErrorCode, refused: int, detail: str) -> None:
        self._ram.last_error = int(code)
        self._send(wire.Error(code, refused, detail))

    def _log(self, level: int, text: str) -> None:
        self._send(wire.Log(level, text))

    # -- requests -----------------------------------------------------------------------------------------
    def _hello(self, hello: wire.Hello) -> None:
        assert self._link is not None
        # A HELLO starts the negotiation again: its answer (or ERROR) goes out within the default frame, as the
        # first one did, not within what an earlier host agreed (64 bytes would not hold it).
        self._link.max_payload = MAX_FRAME_DEFAULT
        agreed = min(hello.max_frame, self.spec.max_frame)
        if agreed < 64:
            raise _Refusal(ErrorCode.UNSUPPORTED, f"max_frame {hello.max_frame} is below 64 bytes")
        self._send(
            wire.Hello(
                ram=self.spec.ram,
                flash=self.spec.flash,
                arena=self.budget,
                firmware=self.spec.firmware,
                max_frame=agreed,
                model_version=self.model_version if self._ram.model is not None else None,
                ops=self.spec.op_codes,
                board_id=self.spec.board_id,
                samples=len(self.data.train) if self.data is not None else 0,
                patch=self.spec.patch,
            )
        )
        self._link.max_payload = agreed

    def _status(self, _request: wire.Status) -> None:
        self._send(self._status_now())

    def _status_now(self) -> wire.Status:
        ram = self._ram
        used = ram.arena + system_bytes(self.spec.max_frame)
        return wire.Status(
            state=ram.state,
            model_version=self.model_version if ram.model is not None else None,
            free_ram=max(0, self.spec.ram - used),
            last_error=ram.last_error,
            uptime_s=int(time.monotonic() - ram.booted),
        )

    def _resume_or_start(self, version: bytes, size: int, slot: int, *, patch: bool) -> int:
        """Where a transfer into ``slot`` resumes: the progress flash kept for this very transfer (a model's and a
        patch's records are told apart, so one never resumes the other), else 0 with a fresh record saved."""
        progress = self.flash.load_progress()
        if progress is not None and (progress.version, progress.size, progress.slot, progress.patch) == (
            version,
            size,
            slot,
            patch,
        ):
            return progress.written
        self.flash.save_progress(TransferProgress(version, size, 0, slot, patch=patch))
        return 0

    def _model_begin(self, begin: wire.ModelBegin) -> None:
        if begin.size > self.flash.slot_bytes:
            raise _Refusal(ErrorCode.NO_FLASH, f"model of {begin.size} B, flash slot of {self.flash.slot_bytes} B")
        if begin.version == self.model_version and self._ram.model is not None:
            self._ram.transfer = None
            self._send(wire.ModelBegin(begin.version, begin.size, begin.size))  # already running it
            return
        slot = self.flash.inactive_slot()
        resume = self._resume_or_start(begin.version, begin.size, slot, patch=False)
        self._ram.transfer = _Transfer(begin.version, begin.size, slot, resume)
        self._send(wire.ModelBegin(begin.version, begin.size, resume))

    def _model_data(self, data: wire.ModelData) -> None:
        transfer = self._ram.transfer
        if transfer is None:
            raise _Refusal(ErrorCode.BAD_OFFSET, "no transfer in progress: send MODEL_BEGIN first")
        if data.offset > transfer.next_offset:
            raise _Refusal(ErrorCode.BAD_OFFSET, f"data at offset {data.offset}, expected {transfer.next_offset}")
        end = data.offset + len(data.data)
        if end <= transfer.next_offset:
            self.duplicates_seen += 1
            return  # bytes already written (a resend after a lost acknowledgement, or after a reset): harmless
        if data.offset < transfer.next_offset:  # overlaps what is written: keep only the new tail
            data = wire.ModelData(transfer.next_offset, data.data[transfer.next_offset - data.offset :])
        if end > transfer.size:
            raise _Refusal(ErrorCode.NO_FLASH, f"data runs to byte {end} of a {transfer.size}-byte model")
        self._ram.state = RECEIVING
        reset_at = self.faults.reset_at_byte
        if reset_at is not None and data.offset <= reset_at < end:
            self.faults.reset_at_byte = None
            raise _Reset(RESET_WATCHDOG)
        if self.faults.brown_out_after is not None:
            self.flash.brown_out_at, self.faults.brown_out_after = self.faults.brown_out_after, None
        self.flash.write_slot(transfer.slot, transfer.at + data.offset, data.data)
        transfer.next_offset = end
        self.received["model" if transfer.base is None else "patch"] += len(data.data)
        self.flash.save_progress(
            TransferProgress(transfer.version, transfer.size, end, transfer.slot, transfer.base is not None)
        )

    def _model_commit(self, commit: wire.ModelCommit) -> None:
        transfer = self._ram.transfer
        if commit.version == self.model_version and self._ram.model is not None and transfer is None:
            self._send(self._status_now())
            return
        if transfer is None or transfer.version != commit.version:
            raise _Refusal(ErrorCode.BAD_OFFSET, "no transfer of this version in progress")
        if transfer.next_offset != transfer.size:
            raise _Refusal(ErrorCode.BAD_OFFSET, f"only {transfer.next_offset} of {transfer.size} bytes received")
        if transfer.base is not None:
            self._commit_patch(transfer)
            return
        model = self.flash.read_slot(transfer.slot, transfer.size)
        self._ram.transfer = None
        if hashlib.sha256(model).digest() != transfer.version:
            self.flash.clear_progress()  # the bytes are wrong: the next attempt starts from zero
            raise _Refusal(ErrorCode.HASH_MISMATCH, "the received bytes do not hash to the announced version")
        self._install_in_ram(model)  # refuses (NO_MEMORY, UNSUPPORTED) before anything is committed
        if self.faults.brown_out_commit is not None:
            self.flash.brown_out_at, self.faults.brown_out_commit = self.faults.brown_out_commit, None
        self.flash.commit(transfer.slot, transfer.size, transfer.version)  # BrownOut: the firmware reboots
        self.flash.clear_progress()
        self.installs.append(("model", transfer.version))
        self._log(6, f"model {transfer.version.hex()[:12]} installed, arena {self._ram.arena} B")
        self._send(self._status_now())

    # -- patch transfer -----------------------------------------------------------------------------------
    def _patch_begin(self, begin: wire.PatchBegin) -> None:
        """Start or resume a patch transfer. The patch goes to the end of the inactive slot, the result to its
        start, so a reset while the result is written leaves the whole patch in flash to apply again."""
        if not self.spec.patch:
            raise _Refusal(ErrorCode.UNSUPPORTED, "this firmware takes whole models only")
        if begin.version == self.model_version and self._ram.model is not None:
            self._ram.transfer = None
            self._send(replace(begin, resume_from=begin.size))  # already running the target
            return
        held = self.model_version if self._ram.model is not None else None
        if held != begin.base:
            raise _Refusal(
                ErrorCode.NO_PARENT,
                f"patch_begin.base: the patch is against {begin.base.hex()[:12]}, the board runs "
                f"{held.hex()[:12] if held else 'no model'}",
            )
        assert self._ram.model is not None
        if begin.model_size != len(self._ram.model):
            raise _Refusal(ErrorCode.BAD_PATCH, f"patch_begin.model_size: {begin.model_size} B, the model held "
                           f"has {len(self._ram.model)} B")  # fmt: skip
        if begin.size + begin.model_size > self.flash.slot_bytes:
            raise _Refusal(ErrorCode.NO_FLASH, f"patch_begin.size: a {begin.size}-byte patch and its "
                           f"{begin.model_size}-byte result exceed the {self.flash.slot_bytes}-byte slot")  # fmt: skip
        free = self._status_now().free_ram
        if begin.size + begin.model_size > free:  # this firmware decodes the patch and builds the result in RAM
            raise _Refusal(ErrorCode.NO_MEMORY, f"patch_begin.size: a {begin.size}-byte patch and its "
                           f"{begin.model_size}-byte result exceed the {free} B of free RAM")  # fmt: skip
        slot = self.flash.inactive_slot()
        resume = self._resume_or_start(begin.version, begin.size, slot, patch=True)
        at = self.flash.slot_bytes - begin.size
        self._ram.transfer = _Transfer(begin.version, begin.size, slot, resume, begin.base, begin.model_size, at)
        self._send(replace(begin, resume_from=resume))

    def _commit_patch(self, transfer: _Transfer) -> None:
        """Apply the patch in flash to the model held, into the inactive slot; switch only to a result that
        hashes to the version. Any refusal clears the progress (the next attempt starts from zero) and keeps
        the model in use."""
        assert transfer.base is not None
        self._ram.transfer = None
        try:
            held = self._ram.model
            if held is None or self.model_version != transfer.base:
                raise _Refusal(ErrorCode.NO_PARENT, f"patch_begin.base: the board no longer runs "
                               f"{transfer.base.hex()[:12]}")  # fmt: skip
            raw = self.flash.read_slot(transfer.slot, self.flash.slot_bytes)[transfer.at : transfer.at + transfer.size]
            try:
                patch = wire.decode(raw, SERIAL_LIMITS, expect=wire.ModelPatch)
            except wire.WireError as exc:  # named as the patch's, whatever layer of the decoding refused it
                detail = str(exc) if exc.field.startswith("modelpatch") else f"modelpatch: {exc}"
                raise _Refusal(ErrorCode.BAD_PATCH, detail) from exc
            for name, got, want in (
                ("modelpatch.base", patch.base, transfer.base),
                ("modelpatch.target", patch.target, transfer.version),
                ("modelpatch.size", patch.size, transfer.model_size),
            ):
                if got != want:
                    raise _Refusal(ErrorCode.BAD_PATCH, f"{name}: not the one PATCH_BEGIN announced")
            try:
                model = wire.apply_patch(held, patch)
            except wire.WireError as exc:
                code = ErrorCode.HASH_MISMATCH if exc.field == "modelpatch" else ErrorCode.BAD_PATCH
                raise _Refusal(code, str(exc)) from exc
        except _Refusal:
            self.flash.clear_progress()
            raise
        self._install_in_ram(model)  # refuses (NO_MEMORY, UNSUPPORTED) before anything is committed
        self.flash.write_slot(transfer.slot, 0, model)
        if self.faults.brown_out_commit is not None:
            self.flash.brown_out_at, self.faults.brown_out_commit = self.faults.brown_out_commit, None
        self.flash.commit(transfer.slot, len(model), transfer.version)  # BrownOut: the firmware reboots
        self.flash.clear_progress()
        self.installs.append(("patch", transfer.version))
        self._log(6, f"model {transfer.version.hex()[:12]} installed from a {transfer.size}-byte patch")
        self._send(self._status_now())

    def _install_in_ram(self, model: bytes) -> None:
        try:
            graph = read_graph(model)
            graph.check_int8()
        except ModelError as exc:
            raise _Refusal(ErrorCode.MALFORMED, f"not an int8 TFLite model: {exc}") from exc
        missing = sorted({op.opcode for op in graph.operators} - set(self.spec.ops))
        if missing:
            raise _Refusal(ErrorCode.UNSUPPORTED, f"firmware lacks the kernels {', '.join(missing)}")
        try:
            session = MicroBackend(arena_size=self.budget).load(model)
            assert isinstance(session, MicroSession)
        except ArenaTooSmallError as exc:
            raise _Refusal(ErrorCode.NO_MEMORY, f"{exc} (RAM {self.spec.ram} B less system)") from exc
        self._ram.model, self._ram.graph, self._ram.session = model, graph, session
        self._ram.arena = arena_with_margin(session.arena_recorded)  # what the model needs of the fixed pool

    def _infer(self, request: wire.Infer) -> None:
        ram = self._ram
        if ram.session is None:
            raise _Refusal(ErrorCode.NO_MODEL, "no model installed")
        shape = ram.session.input_shape(0)
        if request.input.size != int(np.prod(shape)):
            raise _Refusal(ErrorCode.BAD_INPUT, f"input of {request.input.size} values, the model takes {shape}")
        ram.state = INFERRING
        started = time.perf_counter()
        ram.session.set_input(request.input.reshape(shape).astype(np.int8))
        ram.session.invoke()
        output = ram.session.output(0)
        micros = int((time.perf_counter() - started) * 1e6)
        self._send(wire.InferResult(np.asarray(output).reshape(-1), micros))

    def _train(self, request: wire.Train) -> None:
        task = request.task
        ram = self._ram
        if ram.model is None or ram.graph is None:
            raise _Refusal(ErrorCode.NO_MODEL, "no model installed")
        if task.base_version != self.model_version:
            raise _Refusal(
                ErrorCode.NO_MODEL,
                f"the task is for model {task.base_version.hex()[:12]}, the board runs {self.model_version!r:.14}",
            )
        if self.data is None or len(self.data.train) == 0:
            raise _Refusal(ErrorCode.UNSUPPORTED, "this board holds no training data")
        report = self.memory_report(ram.model, task.batch_size, task.density)
        if not report.training:
            raise _Refusal(ErrorCode.UNSUPPORTED, "the model's last layer is not FULLY_CONNECTED")
        if not report.fits:
            raise _Refusal(
                ErrorCode.NO_MEMORY,
                f"training needs {report.total} B of the {report.ram} B RAM "
                f"(arena {report.arena}, training buffers {report.training_total})",
            )
        ram.state = TRAINING
        graph = ram.graph
        evaluation: dict[str, float] = {}
        if task.report or task.evaluate_only:
            evaluation = self._evaluate(ram.model, graph)
        tensors: list[wire.TensorUpdate] = []
        metrics = evaluation
        compressor = None
        compressed = None
        if not task.evaluate_only:
            training, compression = task_training(task, seed=task.round)
            trainer = Trainer(
                graph, cut=cut_for_last_layers(graph, 1), backend=MicroBackend(arena_size=self.budget), config=training
            )
            train = self.data.train
            result = trainer.fit(quantize_input(graph, train.x), model_labels(graph, train.y, train.classes))
            compressor = Compressor(compression, FlashResidualStore(self.flash))
            compressed = compressor.compress(trainer.delta_by_tensor())
            tensors = compressed.tensors
            if task.report:
                metrics = evaluation | {"train_loss": result.epochs[-1].loss}
        update = wire.Update(
            update_id=hashlib.sha256(task.task_id + self.spec.board_id.encode()).digest()[:16],
            device=self.spec.board_id,
            round=task.round,
            base_version=task.base_version,
            samples=len(self.data.evaluate if task.evaluate_only else self.data.train),
            tensors=tensors,
            metrics=metrics,
            # The task's clip and local noise were applied by the compressor, as on a Python device.
            below_clip=compressed.below_clip if compressed is not None and task.clip_bit else None,
        )
        assert self._link is not None
        for piece in fragment(update.update_id, wire.encode(update), self._link.max_payload):
            self._link.send(wire.peek_type(piece) or wire.Update.TYPE, piece)
        if compressor is not None and compressed is not None:
            compressor.commit(compressed)  # only now: the host has every byte of the update

    def _evaluate(self, model: bytes, graph: Graph) -> dict[str, float]:
        assert self.data is not None
        return held_out_metrics(MicroBackend(arena_size=self.budget), model, graph, self.data.evaluate)

    def _reset_request_message(self, request: wire.Reset) -> None:
        raise _Reset(RESET_REQUESTED)

    _handlers: ClassVar[dict[type, Any]] = {
        wire.Hello: _hello,
        wire.Status: _status,
        wire.ModelBegin: _model_begin,
        wire.ModelData: _model_data,
        wire.ModelCommit: _model_commit,
        wire.PatchBegin: _patch_begin,
        wire.Infer: _infer,
        wire.Train: _train,
        wire.Reset: _reset_request_message,
    }
