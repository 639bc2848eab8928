"""A model version as a patch against the version a device holds: the bytes that changed, sparse-coded.

Two versions exported from the same graph with the quantisation scales held
still differ only where an int8 weight moved, in a changed bias, scale or
zero point: a few percent of the file. The patch names those byte offsets
(their gaps, Golomb-Rice coded as an update's positions are) and each byte's
change ((new - old) mod 256 read as a signed byte, zigzag-mapped, Rice coded:
int8 weights mostly move by one step). A patch never resizes the model: a
version whose layout changed travels whole.

Applying one needs only the base bytes, integer arithmetic and sha256, so a
board can do it in place: the result must hash to ``target`` (the new
version), or it is thrown away and the whole model fetched. Every count,
offset and length is checked against the base before a byte is written.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np

from .errors import LimitExceeded, SchemaError, ValueRejected
from .index_coding import best_rice_k, decode_rice, encode_rice, gaps
from .limits import Limits
from .schema import MapReader, header

MSG_MODEL_PATCH = 11  # 10 is the compact update's first byte (compact.py)
MAX_DELTA_K = 7  # a zigzagged byte change is below 256: k above 7 never helps


@dataclass
class ModelPatch:
    """The bytes of ``target`` that differ from ``base`` (both sha256 versions of equally long models)."""

    base: bytes
    target: bytes
    size: int  # bytes in the base and in the result
    count: int  # bytes changed
    position_k: int
    positions: bytes  # Rice-coded gaps between changed offsets
    delta_k: int
    deltas: bytes  # Rice-coded zigzagged byte changes

    TYPE = MSG_MODEL_PATCH

    class Key(IntEnum):
        BASE = 2
        TARGET = 3
        SIZE = 4
        COUNT = 5
        POSITION_K = 6
        POSITIONS = 7
        DELTA_K = 8
        DELTAS = 9

    def to_cbor(self, embedded: bool = False) -> dict[int, Any]:
        """``embedded``: inside a manifest, whose version is the target (not repeated)."""
        K = ModelPatch.Key
        target = {} if embedded else {K.TARGET: self.target}
        return header(MSG_MODEL_PATCH) | target | {
            K.BASE: self.base,
            K.SIZE: self.size,
            K.COUNT: self.count,
            K.POSITION_K: self.position_k,
            K.POSITIONS: self.positions,
            K.DELTA_K: self.delta_k,
            K.DELTAS: self.deltas,
        }

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits, target: bytes | None = None) -> ModelPatch:
        """``target`` given: embedded in a manifest, whose version it is; the key must be absent."""
        K = cls.Key
        if target is not None and r.has(K.TARGET):
            raise SchemaError(f"{r.path}.target", "a manifest's patch takes its target from the manifest's version")
        size = r.uint(K.SIZE, 1 << 31)
        count = r.uint(K.COUNT, 1 << 31)
        if count > size:
            raise ValueRejected(f"{r.path}.count", f"{count} changed bytes in a {size}-byte model")
        if count > limits.max_nnz:
            raise LimitExceeded(f"{r.path}.count", f"{count} changed bytes exceed {limits.max_nnz}")
        return cls(
            base=r.bytestring(K.BASE, size=32),
            target=target if target is not None else r.bytestring(K.TARGET, size=32),
            size=size,
            count=count,
            position_k=r.uint(K.POSITION_K, 30),
            positions=r.bytestring(K.POSITIONS, max_len=limits.max_message_bytes),
            delta_k=r.uint(K.DELTA_K, MAX_DELTA_K),
            deltas=r.bytestring(K.DELTAS, max_len=limits.max_message_bytes),
        )

    @property
    def encoded_bytes(self) -> int:
        return len(self.positions) + len(self.deltas)


def _zigzag(d: np.ndarray) -> np.ndarray:
    d = d.astype(np.int64)
    return np.where(d >= 0, 2 * d, -2 * d - 1)


def _unzigzag(z: np.ndarray) -> np.ndarray:
    return np.where(z & 1, -(z >> 1) - 1, z >> 1)


def make_patch(base: bytes, target: bytes) -> ModelPatch | None:
    """The patch that turns ``base`` into ``target``; None when they differ in length (the layout moved)."""
    if len(base) != len(target):
        return None
    old = np.frombuffer(base, np.uint8)
    new = np.frombuffer(target, np.uint8)
    where = np.flatnonzero(old != new)
    change = (new[where].astype(np.int16) - old[where].astype(np.int16)).astype(np.int8)  # mod 256, signed
    g, z = gaps(where), _zigzag(change)
    pk = best_rice_k(g)
    dk = min(best_rice_k(z), MAX_DELTA_K)
    return ModelPatch(
        hashlib.sha256(base).digest(), hashlib.sha256(target).digest(), len(base), int(where.size),
        pk, encode_rice(g, pk), dk, encode_rice(z, dk),
    )  # fmt: skip


def apply_patch(base: bytes, patch: ModelPatch) -> bytes:
    """``base`` with ``patch`` applied, verified against the patch's target; raises ValueRejected naming the
    field when the patch does not belong to ``base``, does not decode, or its result does not verify."""
    if len(base) != patch.size:
        raise ValueRejected("modelpatch.size", f"patch for a {patch.size}-byte model; this one has {len(base)} bytes")
    if hashlib.sha256(base).digest() != patch.base:
        raise ValueRejected("modelpatch.base", f"patch against {patch.base.hex()[:12]}, not the model held")
    g = decode_rice(patch.positions, patch.count, patch.position_k, "modelpatch.positions")
    where = np.cumsum(g + 1) - 1
    if where.size and int(where[-1]) >= patch.size:
        raise ValueRejected("modelpatch.positions", f"offset {int(where[-1])} beyond the {patch.size}-byte model")
    z = decode_rice(patch.deltas, patch.count, patch.delta_k, "modelpatch.deltas")
    if z.size and int(z.max()) > 255:
        raise ValueRejected("modelpatch.deltas", f"change {int(z.max())} is not a zigzagged byte")
    out = np.frombuffer(base, np.uint8).copy()
    out[where] = (out[where].astype(np.int16) + _unzigzag(z)).astype(np.uint8)  # mod 256
    result = out.tobytes()
    if hashlib.sha256(result).digest() != patch.target:
        raise ValueRejected("modelpatch", f"patched model does not hash to {patch.target.hex()[:12]}")
    return result
