"""Payloads of the serial protocol between the bridge and a microcontroller (types 16 and up).

Framing (COBS, CRC-32, sequence numbers, acknowledgements) belongs to the
bridge; these are the CBOR bodies inside the frames, kept here so the
bridge, the emulated board and a C implementation share one definition.
A board's UPDATE is the same :class:`~edge_runtime.wire.update.Update` a
Python device sends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np

from .cbor import typed_array
from .limits import Limits
from .messages import SCHEMA_VERSION, Task
from .schema import MapReader

MSG_HELLO = 16
MSG_MODEL_BEGIN = 17
MSG_MODEL_DATA = 18
MSG_MODEL_COMMIT = 19
MSG_TRAIN = 20
MSG_INFER = 21
MSG_INFER_RESULT = 22
MSG_STATUS = 23
MSG_RESET = 24
MSG_LOG = 25
MSG_ERROR = 26


class ErrorCode(IntEnum):
    """Why a board refused a request; sent in ERROR with the refused message type."""

    OK = 0
    MALFORMED = 1  # payload did not decode
    UNSUPPORTED = 2  # message type or op the firmware lacks
    NO_MEMORY = 3  # model or task does not fit RAM / arena
    NO_FLASH = 4  # model does not fit flash
    BAD_OFFSET = 5  # MODEL_DATA not at the expected offset
    HASH_MISMATCH = 6  # MODEL_COMMIT: data does not match the announced sha256
    NO_MODEL = 7  # TRAIN/INFER before a model is installed
    BUSY = 8  # a transfer or training is already running
    BAD_INPUT = 9  # INFER input has the wrong size
    INTERNAL = 10


def _h(kind: int) -> dict[int, Any]:
    return {0: kind, 1: SCHEMA_VERSION}


@dataclass
class Hello:
    ram: int
    flash: int
    arena: int
    firmware: str
    protocol: int = 1
    max_frame: int = 1024
    model_version: bytes | None = None
    ops: list[int] = field(default_factory=list)  # TFLite builtin operator codes the firmware runs
    board_id: str = ""  # a unique id burnt into the chip (serial number); the bridge's device id
    samples: int = 0  # local training samples the board holds (the gateway weighs and selects by it)

    TYPE = MSG_HELLO

    def to_cbor(self) -> dict[int, Any]:
        out = _h(MSG_HELLO) | {
            2: self.ram,
            3: self.flash,
            4: self.arena,
            5: self.firmware,
            6: self.protocol,
            7: self.max_frame,
            9: list(self.ops),
        }
        if self.model_version is not None:
            out[8] = self.model_version
        if self.board_id:
            out[10] = self.board_id
        if self.samples:
            out[11] = self.samples
        return out

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> Hello:
        ops = r.array(9, "ops", 256, default=[])
        return cls(
            ram=r.uint(2, "ram", 1 << 40),
            flash=r.uint(3, "flash", 1 << 40),
            arena=r.uint(4, "arena", 1 << 40),
            firmware=r.text(5, "firmware", limits.max_string),
            protocol=r.uint(6, "protocol", 255),
            max_frame=r.uint(7, "max_frame", 1 << 20),
            model_version=r.bytestring(8, "model_version", size=32, default=None),
            ops=[MapReader({0: o}, f"{r.path}.ops[{i}]").uint(0, "op", 1024) for i, o in enumerate(ops)],
            board_id=r.text(10, "board_id", 64, default=""),
            samples=r.uint(11, "samples", 1 << 40, default=0),
        )


@dataclass
class ModelBegin:
    version: bytes
    size: int
    resume_from: int = 0  # bytes already acknowledged before a reset

    TYPE = MSG_MODEL_BEGIN

    def to_cbor(self) -> dict[int, Any]:
        return _h(MSG_MODEL_BEGIN) | {2: self.version, 3: self.size, 4: self.resume_from}

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> ModelBegin:
        size = r.uint(3, "size", 1 << 31)
        return cls(r.bytestring(2, "version", size=32), size, r.uint(4, "resume_from", size, default=0))


@dataclass
class ModelData:
    offset: int
    data: bytes

    TYPE = MSG_MODEL_DATA

    def to_cbor(self) -> dict[int, Any]:
        return _h(MSG_MODEL_DATA) | {2: self.offset, 3: self.data}

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> ModelData:
        return cls(r.uint(2, "offset", 1 << 31), r.bytestring(3, "data", max_len=limits.max_chunk_bytes))


@dataclass
class ModelCommit:
    version: bytes

    TYPE = MSG_MODEL_COMMIT

    def to_cbor(self) -> dict[int, Any]:
        return _h(MSG_MODEL_COMMIT) | {2: self.version}

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> ModelCommit:
        return cls(r.bytestring(2, "version", size=32))


@dataclass
class Train:
    task: Task

    TYPE = MSG_TRAIN

    def to_cbor(self) -> dict[int, Any]:
        return _h(MSG_TRAIN) | {2: self.task.to_cbor()}

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> Train:
        return cls(Task.from_reader(r.submap(2, "task"), limits))


@dataclass
class Infer:
    input: np.ndarray  # int8, the model's input tensor flattened

    TYPE = MSG_INFER

    def to_cbor(self) -> dict[int, Any]:
        return _h(MSG_INFER) | {2: typed_array(self.input.astype(np.int8))}

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> Infer:
        return cls(r.typed(2, "input", ("int8",), limits.max_chunk_bytes))


@dataclass
class InferResult:
    output: np.ndarray
    micros: int = 0

    TYPE = MSG_INFER_RESULT

    def to_cbor(self) -> dict[int, Any]:
        return _h(MSG_INFER_RESULT) | {2: typed_array(self.output.astype(np.int8)), 3: self.micros}

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> InferResult:
        return cls(r.typed(2, "output", ("int8",), limits.max_chunk_bytes), r.uint(3, "micros", 1 << 40, default=0))


@dataclass
class Status:
    state: int  # 0 idle, 1 receiving model, 2 training, 3 inferring
    model_version: bytes | None = None
    free_ram: int = 0
    last_error: int = 0
    uptime_s: int = 0

    TYPE = MSG_STATUS

    def to_cbor(self) -> dict[int, Any]:
        out = _h(MSG_STATUS) | {2: self.state, 4: self.free_ram, 5: self.last_error, 6: self.uptime_s}
        if self.model_version is not None:
            out[3] = self.model_version
        return out

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> Status:
        return cls(
            r.uint(2, "state", 255),
            r.bytestring(3, "model_version", size=32, default=None),
            r.uint(4, "free_ram", 1 << 40, default=0),
            r.uint(5, "last_error", 255, default=0),
            r.uint(6, "uptime_s", 1 << 40, default=0),
        )


@dataclass
class Reset:
    reason: int = 0  # 0 requested, 1 watchdog, 2 brown-out, 3 power-on

    TYPE = MSG_RESET

    def to_cbor(self) -> dict[int, Any]:
        return _h(MSG_RESET) | {2: self.reason}

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> Reset:
        return cls(r.uint(2, "reason", 255, default=0))


@dataclass
class Log:
    level: int  # syslog severities: 3 error, 4 warning, 6 info, 7 debug
    text: str

    TYPE = MSG_LOG

    def to_cbor(self) -> dict[int, Any]:
        return _h(MSG_LOG) | {2: self.level, 3: self.text}

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> Log:
        return cls(r.uint(2, "level", 7), r.text(3, "text", 1024))


@dataclass
class Error:
    code: ErrorCode
    refused_type: int = 0
    detail: str = ""

    TYPE = MSG_ERROR

    def to_cbor(self) -> dict[int, Any]:
        return _h(MSG_ERROR) | {2: int(self.code), 3: self.refused_type, 4: self.detail}

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> Error:
        return cls(
            ErrorCode(r.uint(2, "code", max(ErrorCode))),
            r.uint(3, "refused_type", 255, default=0),
            r.text(4, "detail", 1024, default=""),
        )
