"""The sparse model update: what a device (or a bridged board, or a child gateway) sends upward."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np

from . import index_coding
from .cbor import typed_array
from .errors import LimitExceeded, SchemaError, ValueRejected
from .index_coding import IndexCoding
from .limits import Limits
from .schema import MapReader, f32, header
from .values import (
    BITS_PER_VALUE,
    CodedValues,
    ValueCoding,
    pack_int8_rice,
    pack_ternary,
    plan_int8_rice,
    unpack_int8_rice,
    unpack_ternary,
)

MSG_UPDATE = 1


@dataclass
class TensorUpdate:
    """Kept entries of one tensor: flat positions (strictly increasing) and their coded values."""

    tensor: int  # tensor index in the model graph
    numel: int
    indices: np.ndarray
    values: CodedValues

    @property
    def nnz(self) -> int:
        return int(self.indices.size)

    class Key(IntEnum):
        """A tensor update is a map inside an update: no type or version keys of its own."""

        TENSOR = 0
        NUMEL = 1
        INDEX_CODING = 2
        POSITIONS = 3  # absent for dense
        RICE_K = 4  # Golomb-Rice positions only
        NNZ = 5
        VALUE_CODING = 6
        SCALE = 7  # int8, ternary, int8-rice
        VALUES = 8
        VALUE_K = 9  # int8-rice only
        VALUE_BASE = 10  # int8-rice only

    def dense(self) -> np.ndarray:
        """The delta this entry stands for, as a flat float32 array of ``numel`` elements."""
        out = np.zeros(self.numel, np.float32)
        out[self.indices] = self.values.decode()
        return out

    def to_cbor(self) -> dict[int, Any]:
        coding, k = index_coding.choose(self.indices, self.numel, BITS_PER_VALUE[self.values.coding])
        codes = self.values.codes
        indices = self.indices
        if coding == IndexCoding.DENSE:
            # Dense sends every element: zeros fill the positions not kept.
            full = np.zeros(self.numel, codes.dtype)
            full[indices] = codes
            codes, indices = full, np.arange(self.numel)
        K = TensorUpdate.Key
        out: dict[int, Any] = {
            K.TENSOR: self.tensor,
            K.NUMEL: self.numel,
            K.INDEX_CODING: int(coding),
            K.NNZ: int(indices.size),
            K.VALUE_CODING: int(self.values.coding),
        }
        if coding != IndexCoding.DENSE:
            out[K.POSITIONS] = index_coding.encode(indices, self.numel, coding, k)
        if coding == IndexCoding.GOLOMB_RICE:
            out[K.RICE_K] = k
        if self.values.coding in (ValueCoding.INT8, ValueCoding.TERNARY):
            out[K.SCALE] = f32(self.values.scale)
        rice_bytes, vk, base = (
            plan_int8_rice(codes) if self.values.coding == ValueCoding.INT8 and codes.size else (codes.size, 0, 0)
        )
        if self.values.coding == ValueCoding.TERNARY:
            out[K.VALUES] = typed_array(pack_ternary(codes))
        elif rice_bytes < codes.size:
            out[K.VALUE_CODING] = int(ValueCoding.INT8_RICE)
            out[K.VALUES] = pack_int8_rice(codes, vk, base)
            out[K.VALUE_K] = vk
            out[K.VALUE_BASE] = base
        else:
            dtype = {ValueCoding.FLOAT32: np.float32, ValueCoding.FLOAT16: np.float16, ValueCoding.INT8: np.int8}
            out[K.VALUES] = typed_array(codes.astype(dtype[self.values.coding]))
        return out

    @classmethod
    def from_cbor(cls, obj: Any, path: str, limits: Limits, spec: Mapping[int, int] | None) -> TensorUpdate:
        K = cls.Key
        r = MapReader(obj, path)
        tensor = r.uint(K.TENSOR, 2**31)
        numel = r.uint(K.NUMEL, limits.max_numel)
        if spec is not None:
            if tensor not in spec:
                raise ValueRejected(f"{path}.tensor", f"tensor {tensor} is not trainable in this model")
            if spec[tensor] != numel:
                raise ValueRejected(
                    f"{path}.numel", f"tensor {tensor} has {spec[tensor]} elements, update says {numel}"
                )
        nnz = r.uint(K.NNZ, min(limits.max_nnz, numel))
        coding = r.uint(K.INDEX_CODING, max(IndexCoding))
        k = r.uint(K.RICE_K, index_coding.MAX_RICE_K, default=0)
        positions = r.bytestring(K.POSITIONS, max_len=limits.max_message_bytes, default=b"")
        indices = index_coding.decode(positions, coding, nnz, numel, k, f"{path}.positions")
        value_coding = ValueCoding(r.uint(K.VALUE_CODING, max(ValueCoding)))
        scale = 1.0
        if value_coding in (ValueCoding.INT8, ValueCoding.TERNARY, ValueCoding.INT8_RICE):
            scale = r.number(K.SCALE, lo=0.0)
        if value_coding == ValueCoding.INT8_RICE:
            payload = r.bytestring(K.VALUES, max_len=limits.max_message_bytes)
            vk = r.uint(K.VALUE_K, index_coding.MAX_RICE_K)
            base = r.uint(K.VALUE_BASE, 127)
            codes = unpack_int8_rice(payload, nnz, vk, base, f"{path}.values")
            value_coding = ValueCoding.INT8  # a wire layout, not a different kind of value
        elif value_coding == ValueCoding.TERNARY:
            packed = r.typed(K.VALUES, ("uint8",), -(-nnz // 4))
            codes = unpack_ternary(packed, nnz, f"{path}.values")
        else:
            dtype = {ValueCoding.FLOAT32: "float32", ValueCoding.FLOAT16: "float16", ValueCoding.INT8: "int8"}
            codes = r.typed(K.VALUES, (dtype[value_coding],), nnz)
        if codes.size != nnz:
            raise ValueRejected(f"{path}.values", f"{codes.size} values for nnz {nnz}")
        if value_coding == ValueCoding.INT8 and (codes == -128).any():
            raise ValueRejected(f"{path}.values", "int8 code -128 is outside the symmetric range")
        if codes.dtype.kind == "f" and not np.isfinite(codes).all():
            raise ValueRejected(f"{path}.values", "non-finite value")
        return cls(tensor, numel, indices, CodedValues(value_coding, codes, scale))


@dataclass
class Update:
    update_id: bytes  # 16 random bytes: a resend is recognised, never counted twice
    device: str
    round: int
    base_version: bytes  # sha256 of the model the delta was computed against
    samples: int
    tensors: list[TensorUpdate]
    metrics: dict[str, float] = field(default_factory=dict)
    # Activation [min, max] per tensor: keyed by tensor index (2 bytes on the wire) or, as older builds did, by name.
    activation_ranges: dict[int | str, tuple[float, float]] = field(default_factory=dict)
    created: int = 0  # unix seconds
    # Adaptive clipping: whether the delta (with its residual) was within the task's clip before clipping.
    # None: the task did not ask. One bit, which the gateway only ever adds up with noise.
    below_clip: bool | None = None

    TYPE = MSG_UPDATE

    class Key(IntEnum):
        UPDATE_ID = 2
        DEVICE = 3
        ROUND = 4
        BASE_VERSION = 5
        SAMPLES = 6
        TENSORS = 7
        METRICS = 8
        ACTIVATION_RANGES = 9
        CREATED = 10
        BELOW_CLIP = 11

    def to_cbor(self) -> dict[int, Any]:
        K = Update.Key
        out = header(MSG_UPDATE) | {
            K.UPDATE_ID: self.update_id,
            K.DEVICE: self.device,
            K.ROUND: self.round,
            K.BASE_VERSION: self.base_version,
            K.SAMPLES: self.samples,
            K.TENSORS: [t.to_cbor() for t in self.tensors],
        }
        if self.metrics:
            out[K.METRICS] = {k: f32(v) for k, v in self.metrics.items()}
        if self.activation_ranges:
            out[K.ACTIVATION_RANGES] = {k: [f32(lo), f32(hi)] for k, (lo, hi) in self.activation_ranges.items()}
        if self.created:
            out[K.CREATED] = self.created
        if self.below_clip is not None:
            out[K.BELOW_CLIP] = self.below_clip
        return out

    @classmethod
    def from_reader(cls, r: MapReader, limits: Limits, spec: Mapping[int, int] | None = None) -> Update:
        K = cls.Key
        tensors_raw = r.array(K.TENSORS, limits.max_tensors)
        tensors = [TensorUpdate.from_cbor(t, f"{r.path}.tensors[{i}]", limits, spec) for i, t in enumerate(tensors_raw)]
        seen = [t.tensor for t in tensors]
        if len(set(seen)) != len(seen):
            raise ValueRejected(f"{r.path}.tensors", "a tensor appears twice")
        total = sum(t.nnz for t in tensors)
        if total > limits.max_nnz:
            raise LimitExceeded(f"{r.path}.tensors", f"{total} entries in all exceed {limits.max_nnz}")
        ranges = read_activation_ranges(r, limits)
        return cls(
            update_id=r.bytestring(K.UPDATE_ID, size=16),
            device=r.text(K.DEVICE, limits.max_string),
            round=r.uint(K.ROUND, 2**32),
            base_version=r.bytestring(K.BASE_VERSION, size=32),
            samples=r.uint(K.SAMPLES, 2**32),
            tensors=tensors,
            metrics=r.float_map(K.METRICS, limits.max_metrics, limits.max_string),
            activation_ranges=ranges,
            created=r.uint(K.CREATED, 2**40, default=0),
            below_clip=r.boolean(K.BELOW_CLIP, default=None),
        )


def read_activation_ranges(r: MapReader, limits: Limits) -> dict[int | str, tuple[float, float]]:
    """Key 9 of an update (CBOR or the compact layout's extras): tensor index or name -> checked [min, max]."""
    K = Update.Key
    ranges: dict[int | str, tuple[float, float]] = {}
    if r.has(K.ACTIVATION_RANGES):
        stats = r.obj[K.ACTIVATION_RANGES]
        if not isinstance(stats, dict) or len(stats) > limits.max_tensors:
            raise SchemaError(f"{r.path}.activation_ranges", "expected a bounded map of name -> [min, max]")
        for name, pair in stats.items():
            field_path = f"{r.path}.activation_ranges[{name!r:.40}]"
            if isinstance(name, bool) or not (
                (isinstance(name, int) and 0 <= name < 2**31)
                or (isinstance(name, str) and len(name.encode()) <= limits.max_string)
            ):
                raise SchemaError(field_path, "key is neither a tensor index nor short text")
            if not isinstance(pair, list) or len(pair) != 2:
                raise SchemaError(field_path, "expected [min, max]")
            lo, hi = (MapReader({"value": v}, field_path).number("value") for v in pair)
            if lo > hi:
                raise ValueRejected(field_path, f"min {lo} > max {hi}")
            ranges[name] = (lo, hi)
    return ranges
