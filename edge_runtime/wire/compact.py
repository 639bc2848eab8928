"""The compact update (type 10): the same ``Update``, in a bit-packed layout a microcontroller can write.

Why a second layout: at 1% density the CBOR update spends more on its
framing (a 79-byte header, ~24 B of keys and lengths per tensor) than on
positions and values, so a small model's update was 3x its entropy bound.
This layout drops what the receiver already knows and packs the rest into
one bit stream:

- the device id is the topic's (and, signed, the key's), so it is not sent;
- tensor sizes come from the model's spec (the manifest), so a tensor is its
  slot among the spec's tensors in index order, sent as a gap;
- the update id is 8 random bytes (as a 16-byte id: those, then 8 zeros);
- the base version is the first 4 bytes of its sha256, resolved by the
  receiver among the versions it knows.

Everything is integer arithmetic: Elias-gamma for counts, Golomb-Rice with
a per-tensor parameter for position gaps and for value magnitudes, raw bits
for a bitmap, signs and the scale. The byte layout and the bit stream are
specified in docs/protocol.md ("Compact update"); the encoder here and a C
encoder must agree bit for bit (tests/vectors/compact.json).

Decoding is vectorised (quotients and remainders of a tensor's Rice codes
are stored as separate runs, as in index_coding) and bounded: every length
is compared with the bits that are left before anything is allocated.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping
from typing import Any

import numpy as np

from ..errors import TinyfedError
from . import accel
from .cbor import dumps, loads
from .errors import LimitExceeded, SchemaError, ValueRejected
from .index_coding import best_rice_k, gaps
from .limits import Limits
from .schema import MapReader, f32
from .update import TensorUpdate, Update, read_activation_ranges
from .values import CodedValues, ValueCoding

MSG_UPDATE_COMPACT = 10
TYPE_BYTE = bytes([MSG_UPDATE_COMPACT])  # also CBOR's bare integer 10: never mistaken for a map message
ID_BYTES = 8
BASE_PREFIX_BYTES = 4
MAX_POSITION_K = 30
VALUE_K_BITS = 3  # value magnitudes are < 128: k <= 7
MAX_LEB128_BYTES = 5
MAX_GAMMA_ZEROS = 32
FIXED_HEADER = 1 + ID_BYTES + BASE_PREFIX_BYTES
VALUES_RICE, VALUES_TERNARY, VALUES_INT8 = 0, 1, 2  # a tensor's 2-bit value layout; 3 is refused


class CompactEncodingError(ValueError, TinyfedError):
    """This update cannot take the compact layout (float values, an id not of the compact form, a tensor off spec)."""


def new_update_id() -> bytes:
    """A 16-byte update id the compact layout can carry: 8 random bytes, then 8 zeros."""
    return os.urandom(ID_BYTES) + bytes(16 - ID_BYTES)


def slots(spec: Mapping[int, int]) -> dict[int, int]:
    """Tensor index -> slot: its rank among the spec's tensor indices, ascending."""
    return {t: i for i, t in enumerate(sorted(spec))}


# -- bit writing ----------------------------------------------------------------------------
def _uint_bits(value: int, width: int) -> np.ndarray:
    """``value`` as ``width`` bits, most significant first."""
    return ((value >> np.arange(width - 1, -1, -1, dtype=np.int64)) & 1).astype(np.uint8)


def _gamma(value: int) -> np.ndarray:
    """Elias gamma of value >= 1: (bit length - 1) zeros, then the value's bits."""
    width = value.bit_length()
    return np.concatenate((np.zeros(width - 1, np.uint8), _uint_bits(value, width)))


def _rice_runs(g: np.ndarray, k: int) -> list[np.ndarray]:
    """Every value's quotient in unary (ones closed by a zero), then every value's k low bits."""
    q = (g >> k).astype(np.int64)
    unary = np.ones(int(q.sum() + q.size), np.uint8)
    unary[np.cumsum(q + 1) - 1] = 0
    if not k:
        return [unary]
    r = (g & ((1 << k) - 1)).astype(np.int64)
    return [unary, ((r[:, None] >> np.arange(k - 1, -1, -1)) & 1).astype(np.uint8).reshape(-1)]


def _rice_bits(g: np.ndarray, k: int) -> int:
    return int((g >> k).sum()) + g.size * (1 + k)


def _leb128(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _scale_bits(scale: float) -> list[np.ndarray]:
    """0 + bfloat16 when the float32 scale's low 16 bits are zero (the compressor rounds to that), else 1 + float32."""
    word = int(np.array([scale], "<f4").view("<u4")[0])
    if word & 0xFFFF == 0:
        return [np.zeros(1, np.uint8), _uint_bits(word >> 16, 16)]
    return [np.ones(1, np.uint8), _uint_bits(word, 32)]


def _tensor_bits(t: TensorUpdate, gap: int) -> list[np.ndarray]:
    out = [_gamma(gap + 1), _gamma(t.nnz)]
    if t.nnz < t.numel:  # every element kept: no positions at all
        g = gaps(t.indices)
        k = min(best_rice_k(g), MAX_POSITION_K)
        if _rice_bits(g, k) + 5 <= t.numel:
            out += [np.zeros(1, np.uint8), _uint_bits(k, 5), *_rice_runs(g, k)]
        else:
            mask = np.zeros(t.numel, np.uint8)
            mask[t.indices] = 1
            out += [np.ones(1, np.uint8), mask]
    codes = t.values.codes.astype(np.int64)
    if t.values.coding == ValueCoding.TERNARY:
        out += [_uint_bits(VALUES_TERNARY, 2), *_scale_bits(t.values.scale)]
        two_bit = np.where(codes > 0, 1, np.where(codes < 0, 2, 0))
        out.append(((two_bit[:, None] >> np.array([1, 0])) & 1).astype(np.uint8).reshape(-1))
        return out
    magnitude = np.abs(codes)
    base = int(magnitude.min())
    vk = min(best_rice_k(magnitude - base), (1 << VALUE_K_BITS) - 1)
    if 7 + VALUE_K_BITS + _rice_bits(magnitude - base, vk) + t.nnz < 8 * t.nnz:
        out += [_uint_bits(VALUES_RICE, 2), *_scale_bits(t.values.scale)]
        out += [_uint_bits(base, 7), _uint_bits(vk, VALUE_K_BITS), (codes < 0).astype(np.uint8)]
        out += _rice_runs(magnitude - base, vk)
    else:
        out += [_uint_bits(VALUES_INT8, 2), *_scale_bits(t.values.scale)]
        out.append(np.unpackbits(codes.astype(np.int8).view(np.uint8)))
    return out


def encode(update: Update, spec: Mapping[int, int]) -> bytes:
    """The compact bytes of ``update``; ``spec`` is the model's tensor index -> element count (its manifest)."""
    if len(update.update_id) != 16 or any(update.update_id[ID_BYTES:]):
        raise CompactEncodingError("a compact update id is 8 random bytes then 8 zeros (compact.new_update_id)")
    if len(update.base_version) != 32:
        raise CompactEncodingError("the base version must be a 32-byte sha256")
    order = slots(spec)
    bits: list[np.ndarray] = []
    extras = bool(update.metrics or update.activation_ranges or update.created)
    bits.append(np.array([extras], np.uint8))
    clip = [0, 0] if update.below_clip is None else [1, int(update.below_clip)]
    bits.append(np.array(clip, np.uint8))
    tensors = sorted(update.tensors, key=lambda t: t.tensor)
    bits.append(_gamma(len(tensors) + 1))
    previous = -1
    for t in tensors:
        if t.tensor not in order or spec[t.tensor] != t.numel:
            raise CompactEncodingError(f"tensor {t.tensor} of {t.numel} elements is not in the model's spec")
        if t.values.coding not in (ValueCoding.INT8, ValueCoding.TERNARY) or not t.nnz:
            raise CompactEncodingError(f"tensor {t.tensor}: compact updates carry int8 or ternary values, nnz >= 1")
        bits += _tensor_bits(t, order[t.tensor] - previous - 1)
        previous = order[t.tensor]
    body = np.packbits(np.concatenate(bits)).tobytes()
    head = TYPE_BYTE + update.update_id[:ID_BYTES] + update.base_version[:BASE_PREFIX_BYTES]
    head += _leb128(update.round) + _leb128(update.samples)
    tail = b""
    if extras:
        ex: dict[int, Any] = {}
        if update.metrics:
            ex[Update.Key.METRICS] = {k: f32(v) for k, v in update.metrics.items()}
        if update.activation_ranges:
            ranges = update.activation_ranges.items()
            ex[Update.Key.ACTIVATION_RANGES] = {k: [f32(lo), f32(hi)] for k, (lo, hi) in ranges}
        if update.created:
            ex[Update.Key.CREATED] = update.created
        tail = dumps(ex)
    return head + body + tail


# -- bit reading ------------------------------------------------------------------------------
class _Bits:
    """A cursor over the body's bits; every read checks what is left and names the field it fails in."""

    def __init__(self, data: bytes) -> None:
        self.bits = np.unpackbits(np.frombuffer(data, np.uint8))
        self.number = int.from_bytes(data, "big")  # small fields read by shifting: no numpy call per field
        self.pos = 0
        self._ones: np.ndarray | None = None
        self._zeros: np.ndarray | None = None
        self.field = "update"

    def need(self, count: int) -> None:
        if count < 0 or self.pos + count > self.bits.size:
            raise ValueRejected(self.field, f"needs {count} more bits, {self.bits.size - self.pos} are left")

    def uint(self, width: int) -> int:
        self.need(width)
        self.pos += width
        return (self.number >> (self.bits.size - self.pos)) & ((1 << width) - 1)

    def run(self, count: int) -> np.ndarray:
        self.need(count)
        chunk = self.bits[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def gamma(self) -> int:
        if self._ones is None:
            self._ones = np.flatnonzero(self.bits)
        at = int(np.searchsorted(self._ones, self.pos))
        if at == self._ones.size:
            raise ValueRejected(self.field, "an Elias-gamma count runs past the end")
        zeros = int(self._ones[at]) - self.pos
        if zeros > MAX_GAMMA_ZEROS:
            raise LimitExceeded(self.field, f"an Elias-gamma count of {zeros + 1} bits")
        self.pos += zeros
        return self.uint(zeros + 1)

    def rice(self, count: int, k: int) -> np.ndarray:
        """``count`` Rice codes stored as a unary run and then a remainder run."""
        if self._zeros is None:
            self._zeros = np.flatnonzero(self.bits == 0)
        at = int(np.searchsorted(self._zeros, self.pos))
        if at + count > self._zeros.size:
            raise ValueRejected(self.field, f"the unary run ends before {count} codes")
        ends = self._zeros[at : at + count].astype(np.int64)
        g = np.empty(count, np.int64)  # quotients: zeros between consecutive ends (np.diff's prepend is slow)
        if count:
            g[0] = ends[0] - self.pos
            np.subtract(ends[1:], ends[:-1] + 1, out=g[1:])
            self.pos = int(ends[-1]) + 1
        g <<= k
        if k:  # k <= 30: remainders fit int32, half the memory of int64 per bit of a (bounded) message
            r = self.run(count * k).reshape(count, k).astype(np.int32)
            g |= r @ (1 << np.arange(k - 1, -1, -1, dtype=np.int32))
        return g

    def scale(self) -> float:
        wide = self.uint(1)
        word = self.uint(32) if wide else self.uint(16) << 16
        value = float(np.array([word], "<u4").view("<f4")[0])
        if not np.isfinite(value) or value < 0:
            raise ValueRejected(self.field, f"scale {value} is not a finite number >= 0")
        return value


def _read_leb128(data: bytes, at: int, field: str, maximum: int) -> tuple[int, int]:
    value = 0
    for i in range(MAX_LEB128_BYTES):
        if at + i >= len(data):
            raise ValueRejected(field, "truncated")
        byte = data[at + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if value > maximum:
                raise LimitExceeded(field, f"{value} exceeds the bound {maximum}")
            return value, at + i + 1
    raise LimitExceeded(field, f"longer than {MAX_LEB128_BYTES} bytes")


def _read_tensor(b: _Bits, tensor: int, numel: int, limits: Limits) -> TensorUpdate:
    nnz = b.gamma()
    if nnz > min(numel, limits.max_nnz):
        raise LimitExceeded(f"{b.field}.nnz", f"{nnz} entries in a tensor of {numel} (bound {limits.max_nnz})")
    if nnz == numel:
        indices = np.arange(numel, dtype=np.int64)
    elif b.uint(1):  # bitmap
        indices = np.flatnonzero(b.run(numel)).astype(np.int64)
        if indices.size != nnz:
            raise ValueRejected(f"{b.field}.positions", f"bitmap marks {indices.size} elements, nnz is {nnz}")
    else:
        k = b.uint(5)
        if k > MAX_POSITION_K:
            raise ValueRejected(f"{b.field}.positions", f"Rice parameter {k} outside 0..{MAX_POSITION_K}")
        g = b.rice(nnz, k)
        if g.size and int(g.max()) >= numel:
            raise ValueRejected(f"{b.field}.positions", f"a gap of {int(g.max())} in a tensor of {numel}")
        indices = np.cumsum(g + 1) - 1
        if indices.size and indices[-1] >= numel:
            raise ValueRejected(f"{b.field}.positions", f"position {int(indices[-1])} outside {numel} elements")
    layout = b.uint(2)
    if layout > VALUES_INT8:
        raise ValueRejected(f"{b.field}.values", f"value layout {layout} is not 0 (Rice), 1 (ternary) or 2 (int8)")
    scale = b.scale()
    if layout == VALUES_TERNARY:
        pairs = b.run(2 * nnz).reshape(nnz, 2)
        two_bit = pairs[:, 0] * 2 + pairs[:, 1]
        if (two_bit == 3).any():
            raise ValueRejected(f"{b.field}.values", "ternary code 0b11 is not a value")
        codes = np.where(two_bit == 1, 1, np.where(two_bit == 2, -1, 0)).astype(np.int8)
        return TensorUpdate(tensor, numel, indices, CodedValues(ValueCoding.TERNARY, codes, scale))
    if layout == VALUES_INT8:
        codes = np.packbits(b.run(8 * nnz)).view(np.int8)
        if (codes == -128).any():
            raise ValueRejected(f"{b.field}.values", "int8 code -128 is outside the symmetric range")
        return TensorUpdate(tensor, numel, indices, CodedValues(ValueCoding.INT8, codes, scale))
    base = b.uint(7)
    vk = b.uint(VALUE_K_BITS)
    negative = b.run(nnz).astype(bool)
    magnitude = b.rice(nnz, vk) + base
    if magnitude.size and int(magnitude.max()) > 127:
        raise ValueRejected(f"{b.field}.values", f"magnitude {int(magnitude.max())} exceeds 127")
    codes = np.where(negative, -magnitude, magnitude).astype(np.int8)
    return TensorUpdate(tensor, numel, indices, CodedValues(ValueCoding.INT8, codes, scale))


# extras, clip sent, clip value, tensors, bits read, and (when the C path read it) Update.entries()
_Body = tuple[int, int, int, list[TensorUpdate], int, tuple[np.ndarray, np.ndarray] | None]


def _read_body(body: bytes, spec: Mapping[int, int] | None, limits: Limits) -> _Body:
    """The bit stream after the round and samples: flags, tensors, padding; every fault named."""
    b = _Bits(body)
    extras = b.uint(1)
    clip_sent, clip_value = b.uint(1), b.uint(1)
    if not clip_sent and clip_value:
        raise ValueRejected("update.below_clip", "value bit set without its presence bit")
    b.field = "update.tensors"
    count = b.gamma() - 1
    if count > limits.max_tensors:
        raise LimitExceeded("update.tensors", f"{count} tensors exceed {limits.max_tensors}")
    if count and spec is None:
        raise SchemaError("update.tensors", "a compact update's tensors are read against the model's spec; none given")
    order = sorted(spec) if spec is not None else []
    tensors: list[TensorUpdate] = []
    slot = -1
    total = 0
    for i in range(count):
        b.field = f"update.tensors[{i}]"
        slot += b.gamma()
        if slot >= len(order):
            raise ValueRejected(f"{b.field}.tensor", f"slot {slot}; the model has {len(order)} trainable tensors")
        tensor = order[slot]
        numel = spec[tensor] if spec is not None else 0
        if numel > limits.max_numel:
            raise LimitExceeded(f"{b.field}.numel", f"{numel} exceeds {limits.max_numel}")
        t = _read_tensor(b, tensor, numel, limits)
        total += t.nnz
        if total > limits.max_nnz:
            raise LimitExceeded("update.tensors", f"{total} entries in all exceed {limits.max_nnz}")
        tensors.append(t)
    b.field = "update"
    if b.bits[b.pos : (b.pos + 7) // 8 * 8].any():
        raise ValueRejected("update", "padding bits after the bit stream are not zero")
    return extras, clip_sent, clip_value, tensors, b.pos, None


def _read_body_native(native: Any, body: bytes, spec: Mapping[int, int], limits: Limits) -> _Body | None:
    """The same through the C path (accel.py): one pass over the bits; None for anything it does not take,
    which ``_read_body`` then refuses by name."""
    if not accel.takes(limits):
        return None
    order = sorted(spec)
    numels = [int(spec[t]) for t in order]  # numpy integers would be handed back every time
    out = native.decode_compact(body, numels, limits.max_nnz, limits.max_tensors, limits.max_numel)
    if out is None:
        return None
    extras, clip_sent, clip_value, bits_read, heads, positions, codes, values_f32 = out
    idx, codes = np.frombuffer(positions, np.int64), np.frombuffer(codes, np.int8)
    tensors, at = [], 0
    for slot, nnz, ternary, scale in heads:
        tensor = order[slot]
        values = CodedValues.checked(ValueCoding.TERNARY if ternary else ValueCoding.INT8, codes[at : at + nnz], scale)
        tensors.append(TensorUpdate(tensor, spec[tensor], idx[at : at + nnz], values))
        at += nnz
    return extras, clip_sent, clip_value, tensors, bits_read, (idx, np.frombuffer(values_f32, np.float32))


def decode(
    data: bytes,
    limits: Limits,
    spec: Mapping[int, int] | None,
    device: str,
    versions: Collection[bytes] | Callable[[bytes], bytes | None],
) -> Update:
    """A compact update as an ``Update``: its device is ``device`` (the topic's), its base version the one of
    ``versions`` with the sent prefix (or the bare 4-byte prefix when none has it: the gateway refuses it as
    unknown), its tensors read against ``spec`` (required when it holds any). ``versions`` may instead be a
    function from the prefix to the one version it names (None: none, or more than one)."""
    if len(data) > limits.max_message_bytes:
        raise LimitExceeded("update", f"{len(data)} bytes exceed {limits.max_message_bytes}")
    if len(data) < FIXED_HEADER + 2 or data[:1] != TYPE_BYTE:
        raise SchemaError("update", "not a compact update (type byte 10, id, base prefix, round, samples)")
    update_id = bytes(data[1 : 1 + ID_BYTES]) + bytes(16 - ID_BYTES)
    prefix = bytes(data[1 + ID_BYTES : FIXED_HEADER])
    if callable(versions):
        found = versions(prefix)
        matches = {found} if found is not None and found[:BASE_PREFIX_BYTES] == prefix else set()
    else:
        matches = {v for v in versions if v[:BASE_PREFIX_BYTES] == prefix}
    if len(matches) > 1:
        raise ValueRejected("update.base_version", f"prefix {prefix.hex()} matches {len(matches)} known versions")
    base_version = matches.pop() if matches else prefix
    round_, at = _read_leb128(data, FIXED_HEADER, "update.round", 2**32)
    samples, at = _read_leb128(data, at, "update.samples", 2**32)
    body = bytes(data[at:])
    native = accel.native
    read = None if native is None or spec is None else _read_body_native(native, body, spec, limits)
    extras, clip_sent, clip_value, tensors, bits_read, entries = read or _read_body(body, spec, limits)
    body_end = at + (bits_read + 7) // 8
    metrics: dict[str, float] = {}
    ranges: dict[int | str, tuple[float, float]] = {}
    created = 0
    if extras:
        r = MapReader(loads(bytes(data[body_end:]), limits, "update.extras"), "update")
        unknown = set(r.obj) - {Update.Key.METRICS, Update.Key.ACTIVATION_RANGES, Update.Key.CREATED}
        if unknown or not r.obj:
            raise SchemaError("update.extras", f"keys {sorted(map(str, unknown))} are not metrics, ranges or created")
        metrics = r.float_map(Update.Key.METRICS, limits.max_metrics, limits.max_string)
        ranges = read_activation_ranges(r, limits)
        created = r.uint(Update.Key.CREATED, 2**40, default=0)
    elif body_end != len(data):
        raise ValueRejected("update", f"{len(data) - body_end} bytes after the bit stream")
    update = Update(
        update_id=update_id,
        device=device,
        round=round_,
        base_version=base_version,
        samples=samples,
        tensors=tensors,
        metrics=metrics,
        activation_ranges=ranges,
        created=created,
        below_clip=bool(clip_value) if clip_sent else None,
    )
    update._entries = entries  # None: computed from the tensors when first asked
    return update
