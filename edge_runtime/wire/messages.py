"""Every message tinyfed sends besides the update: tasks, model distribution, presence, gateway state.

All are CBOR maps with small integer keys: key 0 is the message type, key 1
the schema version, the rest are the message's own (see docs/protocol.md).
Versions are sha256 digests (32 bytes); ids are 16 random bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import LimitExceeded, SchemaError, ValueRejected
from .limits import Limits
from .schema import MapReader, f32

MSG_TASK = 2
MSG_MANIFEST = 3
MSG_CHUNK = 4
MSG_PRESENCE = 5
MSG_GATEWAY_STATE = 6
MSG_RECEIPT = 7
MSG_FRAGMENT = 8
SCHEMA_VERSION = 1


def _header(kind: int) -> dict[int, Any]:
    return {0: kind, 1: SCHEMA_VERSION}


@dataclass
class Task:
    """Work for one device in one round. The deadline doubles as the MQTT message expiry."""

    task_id: bytes
    round: int
    base_version: bytes
    epochs: int
    learning_rate: float
    density: float  # fraction of entries to keep, (0, 1]
    deadline: int  # unix seconds
    batch_size: int = 32
    prox_mu: float = 0.0
    evaluate_only: bool = False
    value_coding: int = 2  # ValueCoding.INT8
    # Report the base model's evaluation and the activation ranges with the update. The gateway asks for
    # them every few rounds only: at 1% density they would otherwise be a third of every update's bytes.
    report: bool = True

    TYPE = MSG_TASK

    def to_cbor(self) -> dict[int, Any]:
        out = _header(MSG_TASK) | {
            2: self.task_id,
            3: self.round,
            4: self.base_version,
            5: self.epochs,
            6: f32(self.learning_rate),
            7: f32(self.density),
            8: self.deadline,
            9: self.batch_size,
            12: self.value_coding,
        }
        if self.prox_mu:
            out[10] = f32(self.prox_mu)
        if self.evaluate_only:
            out[11] = True
        if not self.report:
            out[13] = False
        return out

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> Task:
        return cls(
            task_id=r.bytestring(2, "task_id", size=16),
            round=r.uint(3, "round", 2**32),
            base_version=r.bytestring(4, "base_version", size=32),
            epochs=r.uint(5, "epochs", 1000),
            learning_rate=r.number(6, "learning_rate", lo=0.0, hi=100.0),
            density=r.number(7, "density", lo=1e-6, hi=1.0),
            deadline=r.uint(8, "deadline", 2**40),
            batch_size=r.uint(9, "batch_size", 65536, default=32),
            prox_mu=r.number(10, "prox_mu", default=0.0, lo=0.0, hi=1e6),
            evaluate_only=r.boolean(11, "evaluate_only", default=False),
            value_coding=r.uint(12, "value_coding", 3, default=2),
            report=r.boolean(13, "report", default=True),
        )


@dataclass
class TrainableTensor:
    tensor: int
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class ModelManifest:
    """Published retained: which model is current, how to fetch it, and what a device may update."""

    version: bytes
    size: int
    chunk_size: int
    chunk_count: int
    trainable: list[TrainableTensor]
    created: int = 0
    parent: bytes | None = None
    federation: str = ""

    TYPE = MSG_MANIFEST

    def spec(self) -> dict[int, int]:
        """tensor index -> element count: what an update is checked against."""
        return {t.tensor: t.numel for t in self.trainable}

    def to_cbor(self) -> dict[int, Any]:
        out = _header(MSG_MANIFEST) | {
            2: self.version,
            3: self.size,
            4: self.chunk_size,
            5: self.chunk_count,
            6: [[t.tensor, list(t.shape)] for t in self.trainable],
            7: self.created,
        }
        if self.parent is not None:
            out[8] = self.parent
        if self.federation:
            out[9] = self.federation
        return out

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> ModelManifest:
        size = r.uint(3, "size", 1 << 31)
        chunk_size = r.uint(4, "chunk_size", limits.max_chunk_bytes)
        chunk_count = r.uint(5, "chunk_count", 1 << 24)
        if chunk_size == 0 or chunk_count != -(-size // chunk_size):
            raise ValueRejected(
                f"{r.path}.chunk_count", f"{chunk_count} chunks of {chunk_size} bytes cannot hold {size}"
            )
        trainable = []
        for i, item in enumerate(r.array(6, "trainable", limits.max_tensors)):
            path = f"{r.path}.trainable[{i}]"
            if not isinstance(item, list) or len(item) != 2 or not isinstance(item[1], list) or len(item[1]) > 8:
                raise SchemaError(path, "expected [tensor, [dims...]] with at most 8 dims")
            vals = MapReader({0: item[0], **{k + 1: d for k, d in enumerate(item[1])}}, path)
            t = TrainableTensor(
                vals.uint(0, "tensor", 2**31),
                tuple(vals.uint(k + 1, f"shape[{k}]", 1 << 24) for k in range(len(item[1]))),
            )
            if t.numel > limits.max_numel:
                raise LimitExceeded(path, f"{t.numel} elements exceed {limits.max_numel}")
            trainable.append(t)
        return cls(
            version=r.bytestring(2, "version", size=32),
            size=size,
            chunk_size=chunk_size,
            chunk_count=chunk_count,
            trainable=trainable,
            created=r.uint(7, "created", 2**40, default=0),
            parent=r.bytestring(8, "parent", size=32, default=None),
            federation=r.text(9, "federation", limits.max_string, default=""),
        )


@dataclass
class ModelChunk:
    """One piece of a model. Its own sha256 lets a device refuse a damaged chunk before the whole hash."""

    version: bytes
    index: int
    data: bytes
    digest: bytes  # sha256(data)

    TYPE = MSG_CHUNK

    def to_cbor(self) -> dict[int, Any]:
        return _header(MSG_CHUNK) | {2: self.version, 3: self.index, 4: self.data, 5: self.digest}

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> ModelChunk:
        import hashlib

        chunk = cls(
            version=r.bytestring(2, "version", size=32),
            index=r.uint(3, "index", 1 << 24),
            data=r.bytestring(4, "data", max_len=limits.max_chunk_bytes),
            digest=r.bytestring(5, "digest", size=32),
        )
        if hashlib.sha256(chunk.data).digest() != chunk.digest:
            raise ValueRejected(f"{r.path}.data", f"chunk {chunk.index} does not match its sha256")
        return chunk


@dataclass
class Capabilities:
    ram: int = 0  # bytes
    backend: str = ""
    trainable_layers: int = 0
    samples: int = 0
    model_version: bytes | None = None
    firmware: str = ""
    arena: int = 0

    def to_cbor(self) -> dict[int, Any]:
        out: dict[int, Any] = {0: self.ram, 1: self.backend, 2: self.trainable_layers, 3: self.samples}
        if self.model_version is not None:
            out[4] = self.model_version
        if self.firmware:
            out[5] = self.firmware
        if self.arena:
            out[6] = self.arena
        return out

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> Capabilities:
        return cls(
            ram=r.uint(0, "ram", 1 << 40),
            backend=r.text(1, "backend", limits.max_string),
            trainable_layers=r.uint(2, "trainable_layers", 1024),
            samples=r.uint(3, "samples", 1 << 40),
            model_version=r.bytestring(4, "model_version", size=32, default=None),
            firmware=r.text(5, "firmware", limits.max_string, default=""),
            arena=r.uint(6, "arena", 1 << 32, default=0),
        )


@dataclass
class Presence:
    """Birth (retained, with capabilities) or death (the last will), in the manner of Sparkplug B."""

    device: str
    online: bool
    seq: int
    timestamp: int
    capabilities: Capabilities | None = None

    TYPE = MSG_PRESENCE

    def to_cbor(self) -> dict[int, Any]:
        out = _header(MSG_PRESENCE) | {2: self.device, 3: self.online, 4: self.seq, 6: self.timestamp}
        if self.capabilities is not None:
            out[5] = self.capabilities.to_cbor()
        return out

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> Presence:
        caps = r.submap(5, "capabilities", default=None)
        return cls(
            device=r.text(2, "device", limits.max_string),
            online=r.boolean(3, "online"),
            seq=r.uint(4, "seq", 2**63),
            timestamp=r.uint(6, "timestamp", 2**40),
            capabilities=None if caps is None else Capabilities.from_reader(caps, limits),
        )


PHASES = ("idle", "training", "aggregating", "publishing")


@dataclass
class GatewayState:
    federation: str
    round: int
    phase: int
    model_version: bytes
    selected: int = 0
    received: int = 0
    deadline: int = 0
    timestamp: int = 0

    TYPE = MSG_GATEWAY_STATE

    def to_cbor(self) -> dict[int, Any]:
        return _header(MSG_GATEWAY_STATE) | {
            2: self.federation,
            3: self.round,
            4: self.phase,
            5: self.model_version,
            6: self.selected,
            7: self.received,
            8: self.deadline,
            9: self.timestamp,
        }

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> GatewayState:
        return cls(
            federation=r.text(2, "federation", limits.max_string),
            round=r.uint(3, "round", 2**32),
            phase=r.uint(4, "phase", len(PHASES) - 1),
            model_version=r.bytestring(5, "model_version", size=32),
            selected=r.uint(6, "selected", 2**32, default=0),
            received=r.uint(7, "received", 2**32, default=0),
            deadline=r.uint(8, "deadline", 2**40, default=0),
            timestamp=r.uint(9, "timestamp", 2**40, default=0),
        )


@dataclass
class Receipt:
    """The receiver's word that updates arrived: the device may forget them.

    A broker's PUBACK does not make a message durable (Mosquitto acknowledges
    before it saves or forwards), so a device keeps every update until the
    gateway's receipt names it. ``refused`` carries the reason for updates
    that arrived but were not counted; the device must not resend those either.
    """

    received: list[bytes]
    refused: dict[bytes, str] = field(default_factory=dict)

    TYPE = MSG_RECEIPT

    def to_cbor(self) -> dict[int, Any]:
        out = _header(MSG_RECEIPT) | {2: list(self.received)}
        if self.refused:
            out[3] = [[k, v] for k, v in self.refused.items()]
        return out

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> Receipt:
        received = [
            MapReader({0: v}, f"{r.path}.received[{i}]").bytestring(0, "id", size=16)
            for i, v in enumerate(r.array(2, "received", limits.max_tensors))
        ]
        refused: dict[bytes, str] = {}
        for i, item in enumerate(r.array(3, "refused", limits.max_tensors, default=[])):
            path = f"{r.path}.refused[{i}]"
            if not isinstance(item, list) or len(item) != 2:
                raise SchemaError(path, "expected [id, reason]")
            pair = MapReader({0: item[0], 1: item[1]}, path)
            refused[pair.bytestring(0, "id", size=16)] = pair.text(1, "reason", 256)
        return cls(received, refused)


@dataclass
class Fragment:
    """One piece of a message bigger than the link's maximum payload (64 KiB by default).

    MQTT brokers and small devices cap a message's size, and a dense update of
    a large model passes that cap. The sender cuts the encoded message into
    fragments of one id; the receiver reassembles them in any order and
    checks the sha256 of the whole before decoding it as the message it was.
    The id is the message's own (an update's update id), so the receipt that
    names it covers every fragment.
    """

    message_id: bytes
    index: int
    count: int
    total_size: int
    digest: bytes  # sha256 of the whole message
    data: bytes

    TYPE = MSG_FRAGMENT

    def to_cbor(self) -> dict[int, Any]:
        return _header(MSG_FRAGMENT) | {
            2: self.message_id,
            3: self.index,
            4: self.count,
            5: self.total_size,
            6: self.digest,
            7: self.data,
        }

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> Fragment:
        total = r.uint(5, "total_size", limits.max_message_bytes)
        count = r.uint(4, "count", 1 << 16)
        index = r.uint(3, "index", 1 << 16)
        data = r.bytestring(7, "data", max_len=limits.max_chunk_bytes)
        if count == 0 or index >= count:
            raise ValueRejected(f"{r.path}.index", f"fragment {index} of {count}")
        if count > max(1, total) or len(data) > total:
            raise ValueRejected(f"{r.path}.count", f"{count} fragments or {len(data)} bytes do not fit {total} bytes")
        return cls(
            message_id=r.bytestring(2, "message_id", size=16),
            index=index,
            count=count,
            total_size=total,
            digest=r.bytestring(6, "digest", size=32),
            data=data,
        )
