"""The sparse model update: what a device (or a bridged board, or a child gateway) sends upward."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from functools import lru_cache
from typing import Any

import cbor2
import numpy as np

from . import accel, index_coding
from .cbor import TAG_FOR_DTYPE, typed_array
from .errors import LimitExceeded, SchemaError, ValueRejected
from .index_coding import IndexCoding
from .limits import Limits
from .schema import MapReader, f32, header
from .values import (
    BITS_PER_VALUE,
    CodedValues,
    ValueCoding,
    apply_signs_many,
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

    def __post_init__(self) -> None:
        # All kept entries, tensor after tensor: (positions within each tensor, float32 values), as the batched
        # decoder produced them or as ``entries`` first computed them; then per layout, the flat positions. An
        # update is not changed once decoded, so each is computed at most once. Not fields: not the message.
        self._entries: tuple[np.ndarray, np.ndarray] | None = None
        self._flat: tuple[TensorLayout, np.ndarray] | None = None

    def entries(self) -> tuple[np.ndarray, np.ndarray]:
        """(positions within their tensors, float32 values) of every kept entry, tensor after tensor."""
        if self._entries is None:
            if not self.tensors:
                self._entries = (np.zeros(0, np.int64), np.zeros(0, np.float32))
            else:
                self._entries = (
                    np.concatenate([np.asarray(t.indices, np.int64) for t in self.tensors]),
                    np.concatenate([t.values.decode() for t in self.tensors]),
                )
        return self._entries

    def flat(self, layout: TensorLayout) -> tuple[np.ndarray, np.ndarray]:
        """(positions in ``layout``'s flat vector, float32 values): the whole update as one sparse vector.

        An entry outside its tensor (possible only for an update built in memory, never for a decoded one) or a
        tensor the layout does not know raises, as indexing a per-tensor buffer would."""
        local, values = self.entries()
        if self._flat is None or self._flat[0] is not layout:
            offsets = [layout.offset[t.tensor] for t in self.tensors]  # KeyError: not a tensor of this model
            nnz = [t.nnz for t in self.tensors]
            for t in self.tensors:
                if t.nnz and not 0 <= int(t.indices[0]) <= int(t.indices[-1]) < layout.size[t.tensor]:
                    raise IndexError(f"tensor {t.tensor}: an entry outside its {layout.size[t.tensor]} elements")
            self._flat = (layout, local + np.repeat(np.array(offsets, np.int64), nnz))
        return self._flat[1], values

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
    def from_reader(
        cls, r: MapReader, limits: Limits, spec: Mapping[int, int] | None = None, fast: bool = True
    ) -> Update:
        """``fast``: decode the tensors' streams all at once (``_read_tensors_batched``); it
        accepts and yields exactly what the tensor-by-tensor decoder does, and falls back to it for anything
        else, so a refusal always names its field. ``fast=False`` is that decoder alone (tests, benchmarks)."""
        K = cls.Key
        tensors_raw = r.array(K.TENSORS, limits.max_tensors)
        batched = _read_tensors_batched(tensors_raw, limits, spec) if fast else None
        if batched is None:  # refused or unusual: one tensor at a time, which names the field at fault
            tensors = [
                TensorUpdate.from_cbor(t, f"{r.path}.tensors[{i}]", limits, spec) for i, t in enumerate(tensors_raw)
            ]
        else:
            tensors = batched[0]
        seen = [t.tensor for t in tensors]
        if len(set(seen)) != len(seen):
            raise ValueRejected(f"{r.path}.tensors", "a tensor appears twice")
        total = sum(t.nnz for t in tensors)
        if total > limits.max_nnz:
            raise LimitExceeded(f"{r.path}.tensors", f"{total} entries in all exceed {limits.max_nnz}")
        ranges = read_activation_ranges(r, limits)
        update = cls(
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
        if batched is not None:
            update._entries = batched[1]
        return update


@dataclass(frozen=True, eq=False)
class TensorLayout:
    """Where each trainable tensor lives in one flat vector of the whole model: one per spec, cached."""

    offset: dict[int, int]
    size: dict[int, int]
    total: int


@lru_cache(maxsize=64)
def _layout(items: tuple[tuple[int, int], ...]) -> TensorLayout:
    offset, at = {}, 0
    for tensor, numel in items:
        offset[tensor] = at
        at += numel
    return TensorLayout(offset, dict(items), at)


def layout_for(spec: Mapping[int, int]) -> TensorLayout:
    """The flat layout of a model's trainable tensors (tensor -> element count), in the spec's order."""
    return _layout(tuple(spec.items()))


_INT8_TAG = TAG_FOR_DTYPE["int8"]


# One tensor's streams as the batched decoders take them, checked:
# (numel, nnz, index coding, k, positions, value coding, value bytes, value k, value base, scale).
_Streams = tuple[int, int, int, int, bytes, int, bytes, int, int, float]
_Decoded = tuple[np.ndarray, np.ndarray, np.ndarray]  # positions within each tensor, int8 codes, float32 values


def _read_tensors_batched(
    raw: list[Any], limits: Limits, spec: Mapping[int, int] | None
) -> tuple[list[TensorUpdate], tuple[np.ndarray, np.ndarray]] | None:
    """Every tensor of an update decoded at once, with the same checks as ``TensorUpdate.from_cbor``; None
    for anything it does not take (then the caller decodes one by one).

    Takes the layouts devices send: Golomb-Rice or delta-varint positions, int8 values raw or Rice coded.
    The streams are decoded by the C path when it is built (accel.py, ``_cwire.c``: one pass over the bytes),
    else by one fixed set of numpy operations; both take exactly the same updates. Returns the tensors and,
    tensor after tensor, (positions within each tensor, float32 values)."""
    K = TensorUpdate.Key
    ids: list[int] = []
    streams: list[_Streams] = []
    max_bytes = limits.max_message_bytes
    for obj in raw:
        if type(obj) is not dict:
            return None
        get: Any = obj.get  # values of any type: each is checked below
        tensor, numel, nnz = get(K.TENSOR), get(K.NUMEL), get(K.NNZ)
        coding, k, positions = get(K.INDEX_CODING), get(K.RICE_K, 0), get(K.POSITIONS, b"")
        value_coding, scale, values = get(K.VALUE_CODING), get(K.SCALE), get(K.VALUES)
        if not (
            type(tensor) is int
            and type(numel) is int
            and type(nnz) is int
            and type(k) is int
            and type(coding) is int
            and type(value_coding) is int
            and type(positions) is bytes
            and type(scale) in (float, int)
            and 0 <= tensor <= 2**31
            and (spec is None or spec.get(tensor) == numel)
            and numel <= limits.max_numel
            and 0 <= nnz <= min(limits.max_nnz, numel)
            and 0 <= k <= index_coding.MAX_RICE_K
            and len(positions) <= max_bytes
            and 0.0 <= scale < np.inf
            and coding in (IndexCoding.GOLOMB_RICE, IndexCoding.DELTA_VARINT)
        ):
            return None
        if value_coding == ValueCoding.INT8_RICE:
            vk, base = get(K.VALUE_K), get(K.VALUE_BASE)
            if not (
                type(values) is bytes
                and type(vk) is int
                and type(base) is int
                and -(-nnz // 8) <= len(values) <= max_bytes
                and 0 <= vk <= index_coding.MAX_RICE_K
                and 0 <= base <= 127
            ):
                return None
        elif value_coding == ValueCoding.INT8:
            if not (type(values) is cbor2.CBORTag and values.tag == _INT8_TAG and type(values.value) is bytes):
                return None
            values, vk, base = values.value, 0, 0
            if len(values) != nnz:
                return None
        else:
            return None
        ids.append(tensor)
        streams.append((numel, nnz, coding, k, positions, value_coding, values, vk, base, float(scale)))
    if sum(s[1] for s in streams) > limits.max_nnz:
        return None  # from_reader refuses it by name
    native = accel.native
    decoded = _decode_streams_numpy(streams) if native is None else _decode_streams_native(native, streams, limits)
    if decoded is None:
        return None
    idx, codes, values_f32 = decoded
    tensors, at = [], 0
    for tensor, (numel, nnz, *_, scale) in zip(ids, streams, strict=True):
        values = CodedValues.checked(ValueCoding.INT8, codes[at : at + nnz], scale)
        tensors.append(TensorUpdate(tensor, numel, idx[at : at + nnz], values))
        at += nnz
    return tensors, (idx, values_f32)


def _decode_streams_native(native: Any, streams: list[_Streams], limits: Limits) -> _Decoded | None:
    """The streams through the C path (one pass over the bytes); None for anything it does not take, which the
    caller then decodes tensor by tensor, naming the fault. Limits it cannot count in go to numpy instead."""
    if not accel.takes(limits):
        return _decode_streams_numpy(streams)
    out = native.decode_tensors(streams, limits.max_nnz)
    if out is None:
        return None
    idx, codes, values = out
    return np.frombuffer(idx, np.int64), np.frombuffer(codes, np.int8), np.frombuffer(values, np.float32)


def _decode_streams_numpy(streams: list[_Streams]) -> _Decoded | None:
    """The streams of every tensor in one fixed set of whole-array numpy operations (index_coding's and
    values' ``*_many``): about sixty numpy calls an update, whatever its size."""
    rice = [s[4] for s in streams if s[2] == IndexCoding.GOLOMB_RICE]
    rice_n = [s[1] for s in streams if s[2] == IndexCoding.GOLOMB_RICE]
    rice_k = [s[3] for s in streams if s[2] == IndexCoding.GOLOMB_RICE]
    varint = [s[4] for s in streams if s[2] == IndexCoding.DELTA_VARINT]
    varint_n = [s[1] for s in streams if s[2] == IndexCoding.DELTA_VARINT]
    from_rice = [s[5] == ValueCoding.INT8_RICE for s in streams]
    # INT8_RICE: each payload's sign part and its Rice part of |code| - base.
    signs = [s[6][: (s[1] + 7) >> 3] for s in streams if s[5] == ValueCoding.INT8_RICE]
    mags = [s[6][(s[1] + 7) >> 3 :] for s in streams if s[5] == ValueCoding.INT8_RICE]
    mag_n = [s[1] for s in streams if s[5] == ValueCoding.INT8_RICE]
    mag_k = [s[7] for s in streams if s[5] == ValueCoding.INT8_RICE]
    bases = [s[8] for s in streams if s[5] == ValueCoding.INT8_RICE]
    plain = [s[6] for s in streams if s[5] == ValueCoding.INT8]  # raw int8 codes
    g_rice = index_coding.decode_rice_many(rice + mags, rice_n + mag_n, rice_k + mag_k)
    g_varint = index_coding.decode_varint_many(varint, varint_n)
    if g_rice is None or g_varint is None:
        return None
    counts = [s[1] for s in streams]
    # Positions, tensor after tensor (the two codings interleave in the update's order).
    if not varint or not rice:
        gaps = g_rice[: len(g_rice) - sum(mag_n)] if rice else g_varint
    else:
        parts, at_rice, at_varint = [], 0, 0
        for s in streams:
            nnz = s[1]
            if s[2] == IndexCoding.GOLOMB_RICE:
                parts.append(g_rice[at_rice : at_rice + nnz])
                at_rice += nnz
            else:
                parts.append(g_varint[at_varint : at_varint + nnz])
                at_varint += nnz
        gaps = np.concatenate(parts)
    idx = index_coding.positions_many(gaps, counts, [s[0] for s in streams])
    if idx is None:
        return None
    # Values: Rice-coded magnitudes with their signs, and raw int8 codes, again in the update's order.
    coded: np.ndarray | None = np.zeros(0, np.int8)
    if mags:
        magnitudes = g_rice[len(g_rice) - sum(mag_n) :] + np.repeat(np.array(bases, np.int64), mag_n)
        coded = apply_signs_many(signs, mag_n, magnitudes)
    raw_codes = np.frombuffer(b"".join(plain), np.int8)
    if coded is None or (raw_codes.size and raw_codes.min() == -128):
        return None
    if not plain or not mags:
        codes = coded if mags else raw_codes
    else:
        parts, at_coded, at_raw = [], 0, 0
        for s, rice_coded in zip(streams, from_rice, strict=True):
            nnz = s[1]
            if rice_coded:
                parts.append(coded[at_coded : at_coded + nnz])
                at_coded += nnz
            else:
                parts.append(raw_codes[at_raw : at_raw + nnz])
                at_raw += nnz
        codes = np.concatenate(parts)
    values_f32 = codes.astype(np.float32) * np.repeat(np.array([s[9] for s in streams], np.float32), counts)
    return idx, codes, values_f32


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
