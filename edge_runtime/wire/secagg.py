"""The messages of secure aggregation (SecAgg+, docs/secagg.md): four requests from the gateway, four answers.

One session is one round's sum. The gateway's requests (setup, keys,
collect, unmask) go to each device on its task topic; the devices' answers
(advertise, shares, masked, reveal) come back on its update topic. Keys and
shares are X25519 public keys (32 bytes) and AES-GCM ciphertexts the
gateway relays but cannot read; a masked input is a packed vector of field
elements at the session's coordinates, in the order the setup lists them,
so no index travels from a device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np

from .cbor import dumps, loads
from .errors import SchemaError, ValueRejected
from .limits import Limits
from .schema import MapReader, f32, field_name, header

MSG_SECAGG_SETUP = 30
MSG_SECAGG_ADVERTISE = 31
MSG_SECAGG_KEYS = 32
MSG_SECAGG_SHARES = 33
MSG_SECAGG_COLLECT = 34
MSG_SECAGG_MASKED = 35
MSG_SECAGG_UNMASK = 36
MSG_SECAGG_REVEAL = 37

MAX_DEVICES = 1 << 16  # indices of one session
MAX_NEIGHBOURS = 1024
SHARE_BYTES = 32  # a value below 2^255 - 19
# A ciphertext holds the nonce (12), a CBOR array of two indices and two shares (at most 81) and the tag (16).
MAX_CIPHERTEXT = 256


def _index(r: MapReader, key: int) -> int:
    value = r.uint(key, MAX_DEVICES)
    if value == 0:
        raise ValueRejected(f"{r.path}.{field_name(key)}", "indices start at 1")
    return int(value)


def _pairs(r: MapReader, key: int, size: int | None, max_len: int) -> list[tuple[int, bytes]]:
    """[[index, bstr], ...] with indices 1..MAX_DEVICES, each at most once."""
    out: list[tuple[int, bytes]] = []
    seen: set[int] = set()
    for i, item in enumerate(r.array(key, MAX_NEIGHBOURS + 1)):
        where = f"{r.path}.{field_name(key)}[{i}]"
        if not isinstance(item, list) or len(item) != 2:
            raise SchemaError(where, "expected [index, bytes]")
        index, data = item
        if isinstance(index, bool) or not isinstance(index, int) or not 1 <= index <= MAX_DEVICES:
            raise SchemaError(where, f"index {index!r:.20} is not in 1..{MAX_DEVICES}")
        if not isinstance(data, bytes) or (size is not None and len(data) != size) or len(data) > max_len:
            raise SchemaError(where, f"expected {size or f'at most {max_len}'} bytes")
        if index in seen:
            raise ValueRejected(where, f"index {index} listed twice")
        seen.add(index)
        out.append((index, data))
    return out


def _indices(r: MapReader, key: int) -> list[int]:
    out = []
    for i, item in enumerate(r.array(key, MAX_NEIGHBOURS + 1)):
        if isinstance(item, bool) or not isinstance(item, int) or not 1 <= item <= MAX_DEVICES:
            raise SchemaError(f"{r.path}.{field_name(key)}[{i}]",
                              f"index {item!r:.20} is not in 1..{MAX_DEVICES}")  # fmt: skip
        out.append(item)
    if len(set(out)) != len(out):
        raise ValueRejected(f"{r.path}.{field_name(key)}", "an index listed twice")
    return out


@dataclass
class SecAggSetup:
    """Opens a session for one device: who it is in it, the graph, the threshold, the field, and the coordinates."""

    session: bytes  # 16 random bytes
    round: int
    index: int  # this device's index, 1..count
    count: int  # devices in the session
    degree: int  # neighbours per device in the Harary graph (rounded up to even)
    threshold: int  # shares needed to reconstruct a device's secret
    graph_seed: bytes  # 32 bytes: the permutation of the graph, announced before any key exists
    bits: int  # the field: the largest prime below 2^bits
    step: float  # quantisation step: a value x is sent as stochastic_round(x / step)
    clip: float  # L2 bound of the vector at the coordinates, before quantisation
    noise: float  # Skellam parameter mu of this device's noise share, in steps (0: none)
    coordinates: list[tuple[int, np.ndarray]]  # [(tensor index, sorted uint32 element indices)]
    deadline: int  # unix seconds: the session's last answer is due
    # The most steps one value may take, |x / step| clamped to it before rounding (the rest stays in the
    # device's residual): a step finer than clip / levels allows. 0: no clamp (the L2 clip bounds each value).
    levels: int = 0

    TYPE = MSG_SECAGG_SETUP

    class Key(IntEnum):
        SESSION = 2
        ROUND = 3
        INDEX = 4
        COUNT = 5
        DEGREE = 6
        THRESHOLD = 7
        GRAPH_SEED = 8
        BITS = 9
        STEP = 10
        CLIP = 11
        NOISE = 12
        COORDINATES = 13
        DEADLINE = 14
        LEVELS = 15

    @property
    def size(self) -> int:
        return sum(int(c.size) for _, c in self.coordinates)

    def to_cbor(self) -> dict[int, Any]:
        K = SecAggSetup.Key
        return header(MSG_SECAGG_SETUP) | {
            K.SESSION: self.session, K.ROUND: self.round, K.INDEX: self.index, K.COUNT: self.count,
            K.DEGREE: self.degree, K.THRESHOLD: self.threshold, K.GRAPH_SEED: self.graph_seed, K.BITS: self.bits,
            K.STEP: f32(self.step), K.CLIP: f32(self.clip), K.NOISE: f32(self.noise),
            K.COORDINATES: [[t, np.asarray(c, "<u4").tobytes()] for t, c in self.coordinates],
            K.DEADLINE: self.deadline,
        } | ({K.LEVELS: self.levels} if self.levels else {})  # fmt: skip

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> SecAggSetup:
        K = cls.Key
        count = r.uint(K.COUNT, MAX_DEVICES)
        index = r.uint(K.INDEX, MAX_DEVICES)
        if not 1 <= index <= count:
            raise ValueRejected(f"{r.path}.index", f"{index} is not in 1..{count}")
        threshold = r.uint(K.THRESHOLD, MAX_NEIGHBOURS + 1)
        if threshold < 1:
            raise ValueRejected(f"{r.path}.threshold", "at least 1")
        bits = r.uint(K.BITS, 32)
        if bits < 8:
            raise ValueRejected(f"{r.path}.bits", f"{bits} is not in 8..32")
        coordinates: list[tuple[int, np.ndarray]] = []
        total = 0
        for i, item in enumerate(r.array(K.COORDINATES, limits.max_tensors)):
            where = f"{r.path}.coordinates[{i}]"
            if not isinstance(item, list) or len(item) != 2 or not isinstance(item[1], bytes):
                raise SchemaError(where, "expected [tensor index, bytes of uint32 indices]")
            tensor, raw = item
            if isinstance(tensor, bool) or not isinstance(tensor, int) or not 0 <= tensor < 1 << 32:
                raise SchemaError(where, f"tensor {tensor!r:.20} is not an unsigned integer")
            if len(raw) % 4:
                raise SchemaError(where, f"{len(raw)} bytes are not whole uint32 indices")
            total += len(raw) // 4
            if total > limits.max_nnz:
                raise ValueRejected(where, f"more than {limits.max_nnz} coordinates")
            indices = np.frombuffer(raw, "<u4").astype(np.int64)
            if indices.size and (np.diff(indices) <= 0).any():
                raise ValueRejected(where, "indices are not strictly increasing")
            coordinates.append((tensor, indices))
        if len({t for t, _ in coordinates}) != len(coordinates):
            raise ValueRejected(f"{r.path}.coordinates", "a tensor listed twice")
        return cls(
            session=r.bytestring(K.SESSION, size=16),
            round=r.uint(K.ROUND, 2**32),
            index=index,
            count=count,
            degree=r.uint(K.DEGREE, MAX_NEIGHBOURS),
            threshold=threshold,
            graph_seed=r.bytestring(K.GRAPH_SEED, size=32),
            bits=bits,
            step=r.number(K.STEP, lo=1e-30, hi=1e30),
            clip=r.number(K.CLIP, lo=0.0, hi=1e6),
            noise=r.number(K.NOISE, lo=0.0, hi=1e12),
            coordinates=coordinates,
            deadline=r.uint(K.DEADLINE, 2**40),
            levels=r.uint(K.LEVELS, 2**31, default=0),
        )


@dataclass
class SecAggAdvertise:
    """A device's two public keys for the session: ``c`` encrypts shares to it, ``s`` agrees its pairwise masks."""

    session: bytes
    index: int
    c_public: bytes
    s_public: bytes

    TYPE = MSG_SECAGG_ADVERTISE

    class Key(IntEnum):
        SESSION = 2
        INDEX = 3
        C_PUBLIC = 4
        S_PUBLIC = 5

    def to_cbor(self) -> dict[int, Any]:
        K = SecAggAdvertise.Key
        return header(MSG_SECAGG_ADVERTISE) | {
            K.SESSION: self.session, K.INDEX: self.index, K.C_PUBLIC: self.c_public, K.S_PUBLIC: self.s_public
        }  # fmt: skip

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> SecAggAdvertise:
        K = cls.Key
        return cls(r.bytestring(K.SESSION, size=16), _index(r, K.INDEX), r.bytestring(K.C_PUBLIC, size=32),
                   r.bytestring(K.S_PUBLIC, size=32))  # fmt: skip


@dataclass
class SecAggKeys:
    """The public keys of a device's neighbours that advertised: [(index, c_public, s_public)]."""

    session: bytes
    neighbours: list[tuple[int, bytes, bytes]]

    TYPE = MSG_SECAGG_KEYS

    class Key(IntEnum):
        SESSION = 2
        NEIGHBOURS = 3

    def to_cbor(self) -> dict[int, Any]:
        K = SecAggKeys.Key
        return header(MSG_SECAGG_KEYS) | {K.SESSION: self.session, K.NEIGHBOURS: [list(n) for n in self.neighbours]}

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> SecAggKeys:
        K = cls.Key
        out: list[tuple[int, bytes, bytes]] = []
        for i, item in enumerate(r.array(K.NEIGHBOURS, MAX_NEIGHBOURS + 1)):
            where = f"{r.path}.neighbours[{i}]"
            if not isinstance(item, list) or len(item) != 3:
                raise SchemaError(where, "expected [index, c public key, s public key]")
            index, c, s = item
            if isinstance(index, bool) or not isinstance(index, int) or not 1 <= index <= MAX_DEVICES:
                raise SchemaError(where, f"index {index!r:.20} is not in 1..{MAX_DEVICES}")
            if not (isinstance(c, bytes) and isinstance(s, bytes) and len(c) == len(s) == 32):
                raise SchemaError(where, "public keys are 32 bytes")
            out.append((index, c, s))
        if len({n[0] for n in out}) != len(out):
            raise ValueRejected(f"{r.path}.neighbours", "an index listed twice")
        return cls(r.bytestring(K.SESSION, size=16), out)


@dataclass
class SecAggShares:
    """A device's encrypted shares, one ciphertext per neighbour: [(recipient index, ciphertext)]."""

    session: bytes
    index: int
    ciphertexts: list[tuple[int, bytes]]

    TYPE = MSG_SECAGG_SHARES

    class Key(IntEnum):
        SESSION = 2
        INDEX = 3
        CIPHERTEXTS = 4

    def to_cbor(self) -> dict[int, Any]:
        K = SecAggShares.Key
        return header(MSG_SECAGG_SHARES) | {
            K.SESSION: self.session, K.INDEX: self.index, K.CIPHERTEXTS: [list(c) for c in self.ciphertexts]
        }  # fmt: skip

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> SecAggShares:
        K = cls.Key
        return cls(r.bytestring(K.SESSION, size=16), _index(r, K.INDEX),
                   _pairs(r, K.CIPHERTEXTS, None, MAX_CIPHERTEXT))  # fmt: skip


@dataclass
class SecAggCollect:
    """The ciphertexts addressed to a device, [(sender index, ciphertext)]; asks for its masked input."""

    session: bytes
    ciphertexts: list[tuple[int, bytes]]

    TYPE = MSG_SECAGG_COLLECT

    class Key(IntEnum):
        SESSION = 2
        CIPHERTEXTS = 3

    def to_cbor(self) -> dict[int, Any]:
        K = SecAggCollect.Key
        ciphertexts = [list(c) for c in self.ciphertexts]
        return header(MSG_SECAGG_COLLECT) | {K.SESSION: self.session, K.CIPHERTEXTS: ciphertexts}

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> SecAggCollect:
        K = cls.Key
        return cls(r.bytestring(K.SESSION, size=16), _pairs(r, K.CIPHERTEXTS, None, MAX_CIPHERTEXT))


@dataclass
class SecAggMasked:
    """A device's masked input: the setup's coordinates in order, ``bits`` bits per field element, packed."""

    session: bytes
    index: int
    values: bytes

    TYPE = MSG_SECAGG_MASKED

    class Key(IntEnum):
        SESSION = 2
        INDEX = 3
        VALUES = 4

    def to_cbor(self) -> dict[int, Any]:
        K = SecAggMasked.Key
        return header(MSG_SECAGG_MASKED) | {K.SESSION: self.session, K.INDEX: self.index, K.VALUES: self.values}

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> SecAggMasked:
        K = cls.Key
        return cls(r.bytestring(K.SESSION, size=16), _index(r, K.INDEX),
                   r.bytestring(K.VALUES, max_len=limits.max_message_bytes))  # fmt: skip


@dataclass
class SecAggUnmask:
    """Who sent a masked input (``survivors``: reveal their self-mask shares) and who did not (``dropped``: reveal
    their mask-key shares), among the device's neighbours. A device never answers for one index in both."""

    session: bytes
    survivors: list[int]
    dropped: list[int] = field(default_factory=list)

    TYPE = MSG_SECAGG_UNMASK

    class Key(IntEnum):
        SESSION = 2
        SURVIVORS = 3
        DROPPED = 4

    def to_cbor(self) -> dict[int, Any]:
        K = SecAggUnmask.Key
        return header(MSG_SECAGG_UNMASK) | {K.SESSION: self.session, K.SURVIVORS: list(self.survivors),
                                           K.DROPPED: list(self.dropped)}  # fmt: skip

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> SecAggUnmask:
        K = cls.Key
        return cls(r.bytestring(K.SESSION, size=16), _indices(r, K.SURVIVORS), _indices(r, K.DROPPED))


@dataclass
class SecAggReveal:
    """A device's shares for the unmasking: self-mask shares of survivors, mask-key shares of the dropped."""

    session: bytes
    index: int
    self_mask: list[tuple[int, bytes]]
    mask_key: list[tuple[int, bytes]] = field(default_factory=list)

    TYPE = MSG_SECAGG_REVEAL

    class Key(IntEnum):
        SESSION = 2
        INDEX = 3
        SELF_MASK = 4
        MASK_KEY = 5

    def to_cbor(self) -> dict[int, Any]:
        K = SecAggReveal.Key
        return header(MSG_SECAGG_REVEAL) | {
            K.SESSION: self.session, K.INDEX: self.index,
            K.SELF_MASK: [list(s) for s in self.self_mask], K.MASK_KEY: [list(s) for s in self.mask_key],
        }  # fmt: skip

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits) -> SecAggReveal:
        K = cls.Key
        self_mask = _pairs(r, K.SELF_MASK, SHARE_BYTES, SHARE_BYTES)
        return cls(r.bytestring(K.SESSION, size=16), _index(r, K.INDEX), self_mask,
                   _pairs(r, K.MASK_KEY, SHARE_BYTES, SHARE_BYTES))  # fmt: skip


SECAGG_MESSAGES = (SecAggSetup, SecAggAdvertise, SecAggKeys, SecAggShares, SecAggCollect, SecAggMasked,
                   SecAggUnmask, SecAggReveal)  # fmt: skip


def encode_share(sender: int, recipient: int, b_share: bytes, s_share: bytes) -> bytes:
    """The plaintext a device encrypts for one neighbour: who sends it to whom, and its two Shamir shares."""
    return dumps([sender, recipient, b_share, s_share])


def decode_share(data: bytes) -> tuple[int, int, bytes, bytes]:
    """The plaintext of a decrypted share, checked like any message (it comes from another device)."""
    value = loads(data, Limits(), "secagg share")
    if (not isinstance(value, list) or len(value) != 4 or not all(isinstance(v, int) for v in value[:2])
            or not all(isinstance(v, bytes) and len(v) == SHARE_BYTES for v in value[2:])):  # fmt: skip
        raise SchemaError("secagg share", "not [sender, recipient, 32-byte share, 32-byte share]")
    return value[0], value[1], value[2], value[3]
