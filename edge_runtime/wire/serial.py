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
from .messages import Task
from .schema import MapReader, header

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
MSG_PATCH_BEGIN = 27


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
    NO_PARENT = 11  # PATCH_BEGIN/MODEL_COMMIT of a patch: the board does not hold (or no longer holds) its base
    BAD_PATCH = 12  # MODEL_COMMIT of a patch: it does not decode or fit the base; the detail names the field


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
    patch: bool = False  # the board applies model patches (PATCH_BEGIN); a board without it gets whole models

    TYPE = MSG_HELLO

    class Key(IntEnum):
        RAM = 2
        FLASH = 3
        ARENA = 4
        FIRMWARE = 5
        PROTOCOL = 6
        MAX_FRAME = 7
        MODEL_VERSION = 8
        OPS = 9
        BOARD_ID = 10
        SAMPLES = 11
        PATCH = 12

    def to_cbor(self) -> dict[int, Any]:
        K = Hello.Key
        out = header(MSG_HELLO) | {
            K.RAM: self.ram,
            K.FLASH: self.flash,
            K.ARENA: self.arena,
            K.FIRMWARE: self.firmware,
            K.PROTOCOL: self.protocol,
            K.MAX_FRAME: self.max_frame,
            K.OPS: list(self.ops),
        }
        if self.model_version is not None:
            out[K.MODEL_VERSION] = self.model_version
        if self.board_id:
            out[K.BOARD_ID] = self.board_id
        if self.samples:
            out[K.SAMPLES] = self.samples
        if self.patch:
            out[K.PATCH] = True
        return out

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> Hello:
        K = cls.Key
        ops = r.array(K.OPS, 256, default=[])
        return cls(
            ram=r.uint(K.RAM, 1 << 40),
            flash=r.uint(K.FLASH, 1 << 40),
            arena=r.uint(K.ARENA, 1 << 40),
            firmware=r.text(K.FIRMWARE, limits.max_string),
            protocol=r.uint(K.PROTOCOL, 255),
            max_frame=r.uint(K.MAX_FRAME, 1 << 20),
            model_version=r.bytestring(K.MODEL_VERSION, size=32, default=None),
            ops=[MapReader({"op": o}, f"{r.path}.ops[{i}]").uint("op", 1024) for i, o in enumerate(ops)],
            board_id=r.text(K.BOARD_ID, 64, default=""),
            samples=r.uint(K.SAMPLES, 1 << 40, default=0),
            patch=r.boolean(K.PATCH, default=False),
        )


@dataclass
class ModelBegin:
    version: bytes
    size: int
    resume_from: int = 0  # bytes already acknowledged before a reset

    TYPE = MSG_MODEL_BEGIN

    class Key(IntEnum):
        VERSION = 2
        SIZE = 3
        RESUME_FROM = 4

    def to_cbor(self) -> dict[int, Any]:
        K = ModelBegin.Key
        return header(MSG_MODEL_BEGIN) | {K.VERSION: self.version, K.SIZE: self.size, K.RESUME_FROM: self.resume_from}

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> ModelBegin:
        K = cls.Key
        size = r.uint(K.SIZE, 1 << 31)
        return cls(r.bytestring(K.VERSION, size=32), size, r.uint(K.RESUME_FROM, size, default=0))


@dataclass
class PatchBegin:
    """Start (or resume) a patch transfer: ``size`` bytes of an encoded :class:`~edge_runtime.wire.ModelPatch`
    (the same message an MQTT device gets in its manifest, with its target) that turn the model ``base`` the
    board runs into ``version``, a ``model_size``-byte model. The bytes then go as MODEL_DATA (offsets into the
    patch) and MODEL_COMMIT(version) applies them. The board answers with ``resume_from``: the patch bytes it
    already holds."""

    version: bytes
    base: bytes
    size: int  # bytes of the encoded patch
    model_size: int  # bytes of the base and of the result
    resume_from: int = 0

    TYPE = MSG_PATCH_BEGIN

    class Key(IntEnum):
        VERSION = 2
        BASE = 3
        SIZE = 4
        MODEL_SIZE = 5
        RESUME_FROM = 6

    def to_cbor(self) -> dict[int, Any]:
        K = PatchBegin.Key
        return header(MSG_PATCH_BEGIN) | {
            K.VERSION: self.version,
            K.BASE: self.base,
            K.SIZE: self.size,
            K.MODEL_SIZE: self.model_size,
            K.RESUME_FROM: self.resume_from,
        }

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> PatchBegin:
        K = cls.Key
        # Bounded as MODEL_BEGIN's size is, not by the serial message limit: the patch lives in flash, and a board
        # with room for a patch above 64 KiB (the C board) echoes its size back to a bridge that must read it.
        size = r.uint(K.SIZE, 1 << 31)
        return cls(
            r.bytestring(K.VERSION, size=32),
            r.bytestring(K.BASE, size=32),
            size,
            r.uint(K.MODEL_SIZE, 1 << 31),
            r.uint(K.RESUME_FROM, size, default=0),
        )


@dataclass
class ModelData:
    offset: int
    data: bytes

    TYPE = MSG_MODEL_DATA

    class Key(IntEnum):
        OFFSET = 2
        DATA = 3

    def to_cbor(self) -> dict[int, Any]:
        K = ModelData.Key
        return header(MSG_MODEL_DATA) | {K.OFFSET: self.offset, K.DATA: self.data}

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> ModelData:
        K = cls.Key
        return cls(r.uint(K.OFFSET, 1 << 31), r.bytestring(K.DATA, max_len=limits.max_chunk_bytes))


@dataclass
class ModelCommit:
    version: bytes

    TYPE = MSG_MODEL_COMMIT

    class Key(IntEnum):
        VERSION = 2

    def to_cbor(self) -> dict[int, Any]:
        return header(MSG_MODEL_COMMIT) | {ModelCommit.Key.VERSION: self.version}

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> ModelCommit:
        return cls(r.bytestring(cls.Key.VERSION, size=32))


@dataclass
class Train:
    task: Task

    TYPE = MSG_TRAIN

    class Key(IntEnum):
        TASK = 2  # the task's own map, type and version keys included

    def to_cbor(self) -> dict[int, Any]:
        return header(MSG_TRAIN) | {Train.Key.TASK: self.task.to_cbor()}

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> Train:
        return cls(Task.from_reader(r.submap(cls.Key.TASK), limits))


@dataclass
class Infer:
    input: np.ndarray  # int8, the model's input tensor flattened

    TYPE = MSG_INFER

    class Key(IntEnum):
        INPUT = 2

    def to_cbor(self) -> dict[int, Any]:
        return header(MSG_INFER) | {Infer.Key.INPUT: typed_array(self.input.astype(np.int8))}

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> Infer:
        return cls(r.typed(cls.Key.INPUT, ("int8",), limits.max_chunk_bytes))


@dataclass
class InferResult:
    output: np.ndarray
    micros: int = 0

    TYPE = MSG_INFER_RESULT

    class Key(IntEnum):
        OUTPUT = 2
        MICROS = 3

    def to_cbor(self) -> dict[int, Any]:
        K = InferResult.Key
        return header(MSG_INFER_RESULT) | {K.OUTPUT: typed_array(self.output.astype(np.int8)), K.MICROS: self.micros}

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> InferResult:
        K = cls.Key
        return cls(r.typed(K.OUTPUT, ("int8",), limits.max_chunk_bytes), r.uint(K.MICROS, 1 << 40, default=0))


@dataclass
class Status:
    state: int  # 0 idle, 1 receiving model, 2 training, 3 inferring
    model_version: bytes | None = None
    free_ram: int = 0
    last_error: int = 0
    uptime_s: int = 0

    TYPE = MSG_STATUS

    class Key(IntEnum):
        STATE = 2
        MODEL_VERSION = 3
        FREE_RAM = 4
        LAST_ERROR = 5
        UPTIME_S = 6

    def to_cbor(self) -> dict[int, Any]:
        K = Status.Key
        out = header(MSG_STATUS) | {
            K.STATE: self.state,
            K.FREE_RAM: self.free_ram,
            K.LAST_ERROR: self.last_error,
            K.UPTIME_S: self.uptime_s,
        }
        if self.model_version is not None:
            out[K.MODEL_VERSION] = self.model_version
        return out

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> Status:
        K = cls.Key
        return cls(
            r.uint(K.STATE, 255),
            r.bytestring(K.MODEL_VERSION, size=32, default=None),
            r.uint(K.FREE_RAM, 1 << 40, default=0),
            r.uint(K.LAST_ERROR, 255, default=0),
            r.uint(K.UPTIME_S, 1 << 40, default=0),
        )


@dataclass
class Reset:
    reason: int = 0  # 0 requested, 1 watchdog, 2 brown-out, 3 power-on

    TYPE = MSG_RESET

    class Key(IntEnum):
        REASON = 2

    def to_cbor(self) -> dict[int, Any]:
        return header(MSG_RESET) | {Reset.Key.REASON: self.reason}

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> Reset:
        return cls(r.uint(cls.Key.REASON, 255, default=0))


@dataclass
class Log:
    level: int  # syslog severities: 3 error, 4 warning, 6 info, 7 debug
    text: str

    TYPE = MSG_LOG

    class Key(IntEnum):
        LEVEL = 2
        TEXT = 3

    def to_cbor(self) -> dict[int, Any]:
        K = Log.Key
        return header(MSG_LOG) | {K.LEVEL: self.level, K.TEXT: self.text}

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> Log:
        K = cls.Key
        return cls(r.uint(K.LEVEL, 7), r.text(K.TEXT, 1024))


@dataclass
class Error:
    code: ErrorCode
    refused_type: int = 0
    detail: str = ""

    TYPE = MSG_ERROR

    class Key(IntEnum):
        CODE = 2
        REFUSED_TYPE = 3
        DETAIL = 4

    def to_cbor(self) -> dict[int, Any]:
        K = Error.Key
        return header(MSG_ERROR) | {K.CODE: int(self.code), K.REFUSED_TYPE: self.refused_type, K.DETAIL: self.detail}

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> Error:
        K = cls.Key
        return cls(
            ErrorCode(r.uint(K.CODE, max(ErrorCode))),
            r.uint(K.REFUSED_TYPE, 255, default=0),
            r.text(K.DETAIL, 1024, default=""),
        )
