"""Every message tinyfed sends besides the update: tasks, model distribution, presence, gateway state,
receipts, fragments, and a device's report that it could not do a task.

All are CBOR maps with small integer keys: key 0 is the message type, key 1
the schema version (``schema.Header``), the rest are the message's own, each
listed once in its ``Key`` enum (see docs/protocol.md). Versions are sha256
digests (32 bytes); ids are 16 random bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from .errors import LimitExceeded, SchemaError, ValueRejected
from .limits import Limits
from .patch import MSG_MODEL_PATCH, ModelPatch
from .schema import SCHEMA_VERSION, Header, MapReader, f32, header

MSG_TASK = 2
MSG_MANIFEST = 3
MSG_CHUNK = 4
MSG_PRESENCE = 5
MSG_GATEWAY_STATE = 6
MSG_RECEIPT = 7
MSG_FRAGMENT = 8
MSG_TASK_FAILURE = 9


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
    # Differential privacy (docs/privacy.md). ``clip``: the L2 bound on the update the device sends, applied to
    # the delta plus its error-feedback residual before compression (0: no bound). ``noise``: local DP, the
    # device adds Gaussian noise of stddev noise x clip before sparsifying (0: none). ``clip_bit``: report
    # whether the update was within the bound (adaptive clipping; the gateway noises the sum of the bits).
    clip: float = 0.0
    noise: float = 0.0
    clip_bit: bool = False
    # Secure aggregation (docs/secagg.md): the round's sum is taken through a SecAgg+ session; the device sends
    # nothing of this task in the clear, and without the session's setup it reports the task failed instead.
    secure: bool = False

    TYPE = MSG_TASK

    class Key(IntEnum):
        TASK_ID = 2
        ROUND = 3
        BASE_VERSION = 4
        EPOCHS = 5
        LEARNING_RATE = 6
        DENSITY = 7
        DEADLINE = 8
        BATCH_SIZE = 9
        PROX_MU = 10
        EVALUATE_ONLY = 11
        VALUE_CODING = 12
        REPORT = 13
        CLIP = 14
        NOISE = 15
        CLIP_BIT = 16
        SECURE = 17

    def to_cbor(self) -> dict[int, Any]:
        K = Task.Key
        out = header(MSG_TASK) | {
            K.TASK_ID: self.task_id,
            K.ROUND: self.round,
            K.BASE_VERSION: self.base_version,
            K.EPOCHS: self.epochs,
            K.LEARNING_RATE: f32(self.learning_rate),
            K.DENSITY: f32(self.density),
            K.DEADLINE: self.deadline,
            K.BATCH_SIZE: self.batch_size,
            K.VALUE_CODING: self.value_coding,
        }
        if self.prox_mu:
            out[K.PROX_MU] = f32(self.prox_mu)
        if self.evaluate_only:
            out[K.EVALUATE_ONLY] = True
        if not self.report:
            out[K.REPORT] = False
        if self.clip:
            out[K.CLIP] = f32(self.clip)
        if self.noise:
            out[K.NOISE] = f32(self.noise)
        if self.clip_bit:
            out[K.CLIP_BIT] = True
        if self.secure:
            out[K.SECURE] = True
        return out

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> Task:
        K = cls.Key
        return cls(
            task_id=r.bytestring(K.TASK_ID, size=16),
            round=r.uint(K.ROUND, 2**32),
            base_version=r.bytestring(K.BASE_VERSION, size=32),
            epochs=r.uint(K.EPOCHS, 1000),
            learning_rate=r.number(K.LEARNING_RATE, lo=0.0, hi=100.0),
            density=r.number(K.DENSITY, lo=1e-6, hi=1.0),
            deadline=r.uint(K.DEADLINE, 2**40),
            batch_size=r.uint(K.BATCH_SIZE, 65536, default=32),
            prox_mu=r.number(K.PROX_MU, default=0.0, lo=0.0, hi=1e6),
            evaluate_only=r.boolean(K.EVALUATE_ONLY, default=False),
            value_coding=r.uint(K.VALUE_CODING, 3, default=2),
            report=r.boolean(K.REPORT, default=True),
            clip=r.number(K.CLIP, default=0.0, lo=0.0, hi=1e6),
            noise=r.number(K.NOISE, default=0.0, lo=0.0, hi=1e6),
            clip_bit=r.boolean(K.CLIP_BIT, default=False),
            secure=r.boolean(K.SECURE, default=False),
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
    """Published retained: which model is current, how to fetch it, and what a device may update.

    Signed by the gateway, it is the model's root of trust: the version is the sha256 of the whole
    model, and ``chunk_digests`` the sha256 of each chunk, so a chunk that is not the gateway's is
    refused on arrival (and fetched again) rather than spoiling the whole model at the end.
    """

    version: bytes
    size: int
    chunk_size: int
    chunk_count: int
    trainable: list[TrainableTensor]
    created: int = 0
    parent: bytes | None = None
    federation: str = ""
    chunk_digests: list[bytes] = field(default_factory=list)  # sha256 of each chunk; empty: not given
    # The version as a patch against ``parent`` (wire/patch.py): a device holding the parent applies it instead of
    # fetching chunks. Inside the manifest, so the gateway's one signature covers it.
    patch: ModelPatch | None = None

    TYPE = MSG_MANIFEST

    def spec(self) -> dict[int, int]:
        """tensor index -> element count: what an update is checked against."""
        return {t.tensor: t.numel for t in self.trainable}

    class Key(IntEnum):
        VERSION = 2
        SIZE = 3
        CHUNK_SIZE = 4
        CHUNK_COUNT = 5
        TRAINABLE = 6  # [[tensor index, [dims...]], ...]
        CREATED = 7
        PARENT = 8
        FEDERATION = 9
        CHUNK_DIGESTS = 10
        PATCH = 11

    def to_cbor(self) -> dict[int, Any]:
        K = ModelManifest.Key
        out = header(MSG_MANIFEST) | {
            K.VERSION: self.version,
            K.SIZE: self.size,
            K.CHUNK_SIZE: self.chunk_size,
            K.CHUNK_COUNT: self.chunk_count,
            K.TRAINABLE: [[t.tensor, list(t.shape)] for t in self.trainable],
            K.CREATED: self.created,
        }
        if self.parent is not None and self.patch is None:  # with a patch, its base is the parent
            out[K.PARENT] = self.parent
        if self.federation:
            out[K.FEDERATION] = self.federation
        if self.chunk_digests:
            out[K.CHUNK_DIGESTS] = list(self.chunk_digests)
        if self.patch is not None:
            if self.patch.base != self.parent or self.patch.target != self.version or self.patch.size != self.size:
                raise ValueError("a manifest's patch must go from its parent to its version")
            out[K.PATCH] = self.patch.to_cbor(embedded=True)
        return out

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> ModelManifest:
        K = cls.Key
        size = r.uint(K.SIZE, 1 << 31)
        chunk_size = r.uint(K.CHUNK_SIZE, limits.max_chunk_bytes)
        chunk_count = r.uint(K.CHUNK_COUNT, 1 << 24)
        if chunk_size == 0 or chunk_count != -(-size // chunk_size):
            raise ValueRejected(
                f"{r.path}.chunk_count", f"{chunk_count} chunks of {chunk_size} bytes cannot hold {size}"
            )
        trainable = []
        for i, item in enumerate(r.array(K.TRAINABLE, limits.max_tensors)):
            path = f"{r.path}.trainable[{i}]"
            if not isinstance(item, list) or len(item) != 2 or not isinstance(item[1], list) or len(item[1]) > 8:
                raise SchemaError(path, "expected [tensor, [dims...]] with at most 8 dims")
            vals = MapReader({"tensor": item[0], **{f"shape[{k}]": d for k, d in enumerate(item[1])}}, path)
            t = TrainableTensor(
                vals.uint("tensor", 2**31),
                tuple(vals.uint(f"shape[{k}]", 1 << 24) for k in range(len(item[1]))),
            )
            if t.numel > limits.max_numel:
                raise LimitExceeded(path, f"{t.numel} elements exceed {limits.max_numel}")
            trainable.append(t)
        digests = r.array(K.CHUNK_DIGESTS, limits.max_items, default=[])
        if digests and len(digests) != chunk_count:
            raise ValueRejected(f"{r.path}.chunk_digests", f"{len(digests)} digests for {chunk_count} chunks")
        chunk_digests = [
            MapReader({"digest": d}, f"{r.path}.chunk_digests[{i}]").bytestring("digest", size=32)
            for i, d in enumerate(digests)
        ]
        version = r.bytestring(K.VERSION, size=32)
        patch = _read_patch(r, limits, version, size)
        parent = r.bytestring(K.PARENT, size=32, default=None)
        if patch is not None and parent not in (None, patch.base):
            raise ValueRejected(f"{r.path}.parent", "not the base of the manifest's patch")
        return cls(
            version=version,
            size=size,
            chunk_size=chunk_size,
            chunk_count=chunk_count,
            trainable=trainable,
            created=r.uint(K.CREATED, 2**40, default=0),
            parent=patch.base if patch is not None else parent,
            federation=r.text(K.FEDERATION, limits.max_string, default=""),
            chunk_digests=chunk_digests,
            patch=patch,
        )


def _read_patch(r: MapReader, limits: Limits, version: bytes, size: int) -> ModelPatch | None:
    """A manifest's patch: a ModelPatch map whose target is the manifest's version; its base is the parent."""
    sub = r.submap(ModelManifest.Key.PATCH, default=None)
    if sub is None:
        return None
    kind = sub.uint(Header.TYPE, 255)
    if kind != MSG_MODEL_PATCH:
        raise SchemaError(f"{sub.path}.type", f"message type {kind} where a model patch ({MSG_MODEL_PATCH}) belongs")
    if sub.uint(Header.SCHEMA_VERSION, 255) != SCHEMA_VERSION:
        raise SchemaError(f"{sub.path}.schema_version", f"this build reads {SCHEMA_VERSION}")
    patch = ModelPatch.from_reader(sub, limits, target=version)
    if patch.size != size:
        raise ValueRejected(f"{sub.path}.size", f"a patch of a {patch.size}-byte model in a manifest of {size} bytes")
    return patch


@dataclass
class ModelChunk:
    """One piece of a model. Its own sha256 lets a device refuse a damaged chunk before the whole hash."""

    version: bytes
    index: int
    data: bytes
    digest: bytes  # sha256(data)

    TYPE = MSG_CHUNK

    class Key(IntEnum):
        VERSION = 2
        INDEX = 3
        DATA = 4
        DIGEST = 5

    def to_cbor(self) -> dict[int, Any]:
        K = ModelChunk.Key
        return header(MSG_CHUNK) | {
            K.VERSION: self.version,
            K.INDEX: self.index,
            K.DATA: self.data,
            K.DIGEST: self.digest,
        }

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> ModelChunk:
        import hashlib

        K = cls.Key
        chunk = cls(
            version=r.bytestring(K.VERSION, size=32),
            index=r.uint(K.INDEX, 1 << 24),
            data=r.bytestring(K.DATA, max_len=limits.max_chunk_bytes),
            digest=r.bytestring(K.DIGEST, size=32),
        )
        if hashlib.sha256(chunk.data).digest() != chunk.digest:
            raise ValueRejected(f"{r.path}.data", f"chunk {chunk.index} does not match its sha256")
        return chunk


GROUP_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,32}")


def check_group(value: str, where: str = "capabilities.group") -> str:
    """A group label is shown to operators and keyed in the store: short, plain, never a control character."""
    if not GROUP_PATTERN.fullmatch(value):
        raise SchemaError(where, f"{value!r:.60} is not 1-32 characters of letters, digits, '.', '_' or '-'")
    return value


def read_group(r: MapReader, key: int) -> str:
    value = r.text(key, 32, default=None)
    return "" if value is None else check_group(value)


@dataclass
class Capabilities:
    ram: int = 0  # bytes
    backend: str = ""
    trainable_layers: int = 0
    samples: int = 0
    model_version: bytes | None = None
    firmware: str = ""
    arena: int = 0
    # A digest of the local data (16 bytes): a device whose data changed (fixed labels, same row count) has a
    # new birth, so a gateway that left it out after a failed task selects it again.
    data: bytes | None = None
    # The device's group for per-group evaluation (a site, a hardware class): what it says, so bounded like any
    # network input (GROUP_PATTERN: 1-32 letters, digits, '.', '_', '-'); "" when it declares none.
    group: str = ""

    class Key(IntEnum):
        """Capabilities is a map inside a presence message: no type or version keys of its own."""

        RAM = 0
        BACKEND = 1
        TRAINABLE_LAYERS = 2
        SAMPLES = 3
        MODEL_VERSION = 4
        FIRMWARE = 5
        ARENA = 6
        DATA = 7
        GROUP = 8

    def to_cbor(self) -> dict[int, Any]:
        K = Capabilities.Key
        out: dict[int, Any] = {
            K.RAM: self.ram,
            K.BACKEND: self.backend,
            K.TRAINABLE_LAYERS: self.trainable_layers,
            K.SAMPLES: self.samples,
        }
        if self.model_version is not None:
            out[K.MODEL_VERSION] = self.model_version
        if self.firmware:
            out[K.FIRMWARE] = self.firmware
        if self.arena:
            out[K.ARENA] = self.arena
        if self.data is not None:
            out[K.DATA] = self.data
        if self.group:
            out[K.GROUP] = check_group(self.group)
        return out

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> Capabilities:
        K = cls.Key
        return cls(
            ram=r.uint(K.RAM, 1 << 40),
            backend=r.text(K.BACKEND, limits.max_string),
            trainable_layers=r.uint(K.TRAINABLE_LAYERS, 1024),
            samples=r.uint(K.SAMPLES, 1 << 40),
            model_version=r.bytestring(K.MODEL_VERSION, size=32, default=None),
            firmware=r.text(K.FIRMWARE, limits.max_string, default=""),
            arena=r.uint(K.ARENA, 1 << 32, default=0),
            data=r.bytestring(K.DATA, size=16, default=None),
            group=read_group(r, K.GROUP),
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

    class Key(IntEnum):
        DEVICE = 2
        ONLINE = 3
        SEQ = 4
        CAPABILITIES = 5
        TIMESTAMP = 6

    def to_cbor(self) -> dict[int, Any]:
        K = Presence.Key
        out = header(MSG_PRESENCE) | {
            K.DEVICE: self.device,
            K.ONLINE: self.online,
            K.SEQ: self.seq,
            K.TIMESTAMP: self.timestamp,
        }
        if self.capabilities is not None:
            out[K.CAPABILITIES] = self.capabilities.to_cbor()
        return out

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> Presence:
        K = cls.Key
        caps = r.submap(K.CAPABILITIES, default=None)
        return cls(
            device=r.text(K.DEVICE, limits.max_string),
            online=r.boolean(K.ONLINE),
            seq=r.uint(K.SEQ, 2**63),
            timestamp=r.uint(K.TIMESTAMP, 2**40),
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

    class Key(IntEnum):
        FEDERATION = 2
        ROUND = 3
        PHASE = 4  # an index into PHASES
        MODEL_VERSION = 5
        SELECTED = 6
        RECEIVED = 7
        DEADLINE = 8
        TIMESTAMP = 9

    def to_cbor(self) -> dict[int, Any]:
        K = GatewayState.Key
        return header(MSG_GATEWAY_STATE) | {
            K.FEDERATION: self.federation,
            K.ROUND: self.round,
            K.PHASE: self.phase,
            K.MODEL_VERSION: self.model_version,
            K.SELECTED: self.selected,
            K.RECEIVED: self.received,
            K.DEADLINE: self.deadline,
            K.TIMESTAMP: self.timestamp,
        }

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> GatewayState:
        K = cls.Key
        return cls(
            federation=r.text(K.FEDERATION, limits.max_string),
            round=r.uint(K.ROUND, 2**32),
            phase=r.uint(K.PHASE, len(PHASES) - 1),
            model_version=r.bytestring(K.MODEL_VERSION, size=32),
            selected=r.uint(K.SELECTED, 2**32, default=0),
            received=r.uint(K.RECEIVED, 2**32, default=0),
            deadline=r.uint(K.DEADLINE, 2**40, default=0),
            timestamp=r.uint(K.TIMESTAMP, 2**40, default=0),
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

    class Key(IntEnum):
        RECEIVED = 2  # [id, ...]
        REFUSED = 3  # [[id, reason], ...]

    def to_cbor(self) -> dict[int, Any]:
        K = Receipt.Key
        out = header(MSG_RECEIPT) | {K.RECEIVED: list(self.received)}
        if self.refused:
            out[K.REFUSED] = [[k, v] for k, v in self.refused.items()]
        return out

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> Receipt:
        K = cls.Key
        received = [
            MapReader({"id": v}, f"{r.path}.received[{i}]").bytestring("id", size=16)
            for i, v in enumerate(r.array(K.RECEIVED, limits.max_tensors))
        ]
        refused: dict[bytes, str] = {}
        for i, item in enumerate(r.array(K.REFUSED, limits.max_tensors, default=[])):
            path = f"{r.path}.refused[{i}]"
            if not isinstance(item, list) or len(item) != 2:
                raise SchemaError(path, "expected [id, reason]")
            pair = MapReader({"id": item[0], "reason": item[1]}, path)
            refused[pair.bytestring("id", size=16)] = pair.text("reason", 256)
        return cls(received, refused)


class FailureReason(IntEnum):
    """Why a device could not do a task. The gateway stops selecting it until its birth message changes."""

    OTHER = 0
    LABELS = 1  # its labels are not the model's classes
    SHAPE = 2  # its features do not fit the model's input
    NO_DATA = 3  # its data could not be read: missing, unreadable, empty
    TRAINING = 4  # training (or evaluation) failed
    NO_MODEL = 5  # the task's model could not be fetched, verified or loaded in time
    NO_MEMORY = 6  # not enough RAM for the task (a board)
    UNSUPPORTED = 7  # the model uses an operator the device lacks (a board)


@dataclass
class TaskFailure:
    """A device's word that it cannot do a task, so the round need not wait for it until its deadline.

    Sent on the device's update topic through its outbox (durable, receipted like an update: the report
    id takes the update id's place).
    """

    report_id: bytes
    device: str
    round: int
    task_id: bytes
    reason: FailureReason
    detail: str = ""  # for the operator; at most 256 characters

    TYPE = MSG_TASK_FAILURE

    class Key(IntEnum):
        REPORT_ID = 2
        DEVICE = 3
        ROUND = 4
        TASK_ID = 5
        REASON = 6
        DETAIL = 7

    def to_cbor(self) -> dict[int, Any]:
        K = TaskFailure.Key
        out = header(MSG_TASK_FAILURE) | {
            K.REPORT_ID: self.report_id,
            K.DEVICE: self.device,
            K.ROUND: self.round,
            K.TASK_ID: self.task_id,
            K.REASON: int(self.reason),
        }
        if self.detail:
            out[K.DETAIL] = self.detail[:256]
        return out

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> TaskFailure:
        K = cls.Key
        reason = r.uint(K.REASON, 255)
        if reason not in FailureReason._value2member_map_:
            raise ValueRejected(f"{r.path}.reason", f"unknown failure reason {reason}")
        return cls(
            report_id=r.bytestring(K.REPORT_ID, size=16),
            device=r.text(K.DEVICE, limits.max_string),
            round=r.uint(K.ROUND, 2**32),
            task_id=r.bytestring(K.TASK_ID, size=16),
            reason=FailureReason(reason),
            detail=r.text(K.DETAIL, 256, default=""),
        )


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

    class Key(IntEnum):
        MESSAGE_ID = 2
        INDEX = 3
        COUNT = 4
        TOTAL_SIZE = 5
        DIGEST = 6
        DATA = 7

    def to_cbor(self) -> dict[int, Any]:
        K = Fragment.Key
        return header(MSG_FRAGMENT) | {
            K.MESSAGE_ID: self.message_id,
            K.INDEX: self.index,
            K.COUNT: self.count,
            K.TOTAL_SIZE: self.total_size,
            K.DIGEST: self.digest,
            K.DATA: self.data,
        }

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> Fragment:
        K = cls.Key
        total = r.uint(K.TOTAL_SIZE, limits.max_message_bytes)
        count = r.uint(K.COUNT, 1 << 16)
        index = r.uint(K.INDEX, 1 << 16)
        data = r.bytestring(K.DATA, max_len=limits.max_chunk_bytes)
        if count == 0 or index >= count:
            raise ValueRejected(f"{r.path}.index", f"fragment {index} of {count}")
        if count > max(1, total) or len(data) > total:
            raise ValueRejected(f"{r.path}.count", f"{count} fragments or {len(data)} bytes do not fit {total} bytes")
        return cls(
            message_id=r.bytestring(K.MESSAGE_ID, size=16),
            index=index,
            count=count,
            total_size=total,
            digest=r.bytestring(K.DIGEST, size=32),
            data=data,
        )
