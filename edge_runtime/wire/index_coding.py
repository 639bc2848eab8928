"""Position coding of a sparse tensor: the smallest of dense, bitmap, delta-varint and Golomb-Rice.

Positions are strictly increasing indices into the flattened tensor. The
coders work on *gaps*: g0 = i0, g_j = i_j - i_(j-1) - 1 (never negative).

- DENSE (0): no positions; every element is sent.
- BITMAP (1): numel bits, bit i = element i present, least significant bit first.
- DELTA_VARINT (2): each gap as unsigned LEB128.
- GOLOMB_RICE (3) with parameter k: every gap's quotient g >> k in unary
  (that many 1 bits, then a 0), all quotients first; then every gap's k low
  bits, most significant first; each part padded to a byte with zeros. Same
  bit count as interleaved Rice codes, but both parts decode as whole numpy
  arrays.

Rice is within a few percent of the entropy of geometric gaps (random
positions at a given density), so it usually wins below ~10% density;
bitmap wins when dense, varint for a handful of entries.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

from .errors import ValueRejected


class IndexCoding(IntEnum):
    DENSE = 0
    BITMAP = 1
    DELTA_VARINT = 2
    GOLOMB_RICE = 3


MAX_RICE_K = 30
MAX_VARINT_BYTES = 5  # gaps < 2**35, far above any tensor tinyfed accepts


def gaps(indices: np.ndarray) -> np.ndarray:
    idx = indices.astype(np.int64)
    return np.diff(idx, prepend=-1) - 1


def _from_gaps(g: np.ndarray) -> np.ndarray:
    return np.cumsum(g + 1) - 1


# -- varint ---------------------------------------------------------------------------
def varint_size(g: np.ndarray) -> int:
    bits = np.maximum(1, np.ceil(np.log2(g.astype(np.float64) + 1)))
    return int(np.ceil(bits / 7).sum()) if g.size else 0


def encode_varint(g: np.ndarray) -> bytes:
    g = g.astype(np.uint64)
    lengths = np.ones(g.size, np.int64)
    for b in range(1, MAX_VARINT_BYTES):
        lengths += g >= np.uint64(1 << (7 * b))
    out = np.zeros(int(lengths.sum()), np.uint8)
    starts = np.cumsum(lengths) - lengths
    for b in range(MAX_VARINT_BYTES):
        live = lengths > b
        byte = ((g[live] >> np.uint64(7 * b)) & np.uint64(0x7F)).astype(np.uint8)
        more = (lengths[live] > b + 1).astype(np.uint8) << 7
        out[starts[live] + b] = byte | more
    return out.tobytes()


def decode_varint(payload: bytes, nnz: int, field: str) -> np.ndarray:
    raw = np.frombuffer(payload, np.uint8)
    ends = np.flatnonzero((raw & 0x80) == 0)
    if len(ends) != nnz or (nnz and ends[-1] != len(raw) - 1) or (nnz == 0 and len(raw)):
        raise ValueRejected(field, f"varint payload holds {len(ends)} complete values, nnz is {nnz}")
    if nnz == 0:
        return np.zeros(0, np.int64)
    starts = np.concatenate(([0], ends[:-1] + 1))
    if (ends - starts + 1).max() > MAX_VARINT_BYTES:
        raise ValueRejected(field, f"a varint longer than {MAX_VARINT_BYTES} bytes")
    group = np.repeat(np.arange(nnz), ends - starts + 1)
    shift = (np.arange(len(raw)) - starts[group]) * 7
    parts = (raw & 0x7F).astype(np.int64) << shift
    return np.add.reduceat(parts, starts)


# -- Golomb-Rice ----------------------------------------------------------------------
def rice_size(g: np.ndarray, k: int) -> int:
    return -(-int((g >> k).sum() + g.size) // 8) + -(-g.size * k // 8)


def best_rice_k(g: np.ndarray) -> int:
    """The k that minimises the coded size (exact, over the plausible range around log2(mean gap))."""
    if g.size == 0:
        return 0
    guess = int(np.log2(max(float(g.mean()) * 0.69, 1.0)))
    candidates = range(max(0, guess - 2), min(MAX_RICE_K, guess + 3) + 1)
    return min(candidates, key=lambda k: rice_size(g, k))


def encode_rice(g: np.ndarray, k: int) -> bytes:
    q = (g >> k).astype(np.int64)
    unary = np.zeros(int(q.sum() + q.size), np.uint8)
    zero_at = np.cumsum(q + 1) - 1
    unary[:] = 1
    unary[zero_at] = 0
    if k:
        r = (g & ((1 << k) - 1)).astype(np.int64)
        bits = ((r[:, None] >> np.arange(k - 1, -1, -1)) & 1).astype(np.uint8).reshape(-1)
    else:
        bits = np.zeros(0, np.uint8)
    return np.packbits(unary).tobytes() + np.packbits(bits).tobytes()


def decode_rice(payload: bytes, nnz: int, k: int, field: str) -> np.ndarray:
    if not 0 <= k <= MAX_RICE_K:
        raise ValueRejected(field, f"Rice parameter {k} outside 0..{MAX_RICE_K}")
    rem_bytes = -(-nnz * k // 8)
    if rem_bytes > len(payload):
        raise ValueRejected(field, f"payload too short for {nnz} remainders of {k} bits")
    unary = np.unpackbits(np.frombuffer(payload[: len(payload) - rem_bytes], np.uint8))
    zeros = np.flatnonzero(unary == 0)
    if len(zeros) < nnz:
        raise ValueRejected(field, f"unary part ends after {len(zeros)} codes, nnz is {nnz}")
    last = zeros[nnz - 1] if nnz else -1
    if unary[last + 1 :].any() or len(unary) - (last + 1) >= 8:
        raise ValueRejected(field, "unary part has trailing bits beyond its padding")
    q = np.diff(zeros[:nnz], prepend=-1) - 1
    g = q.astype(np.int64) << k
    if k:
        bits = np.unpackbits(np.frombuffer(payload[len(payload) - rem_bytes :], np.uint8))
        if bits[nnz * k :].any():
            raise ValueRejected(field, "remainder padding bits are not zero")
        r = bits[: nnz * k].reshape(nnz, k).astype(np.int64) @ (1 << np.arange(k - 1, -1, -1, dtype=np.int64))
        g = g | r
    return g


# -- bitmap -----------------------------------------------------------------------------
def encode_bitmap(indices: np.ndarray, numel: int) -> bytes:
    mask = np.zeros(numel, np.uint8)
    mask[indices] = 1
    return np.packbits(mask, bitorder="little").tobytes()


def decode_bitmap(payload: bytes, numel: int, field: str) -> np.ndarray:
    if len(payload) != -(-numel // 8):
        raise ValueRejected(field, f"bitmap of {len(payload)} bytes for {numel} elements")
    bits = np.unpackbits(np.frombuffer(payload, np.uint8), bitorder="little")
    if bits[numel:].any():
        raise ValueRejected(field, "bitmap padding bits are not zero")
    return np.flatnonzero(bits[:numel]).astype(np.int64)


# -- choice -------------------------------------------------------------------------------
def choose(indices: np.ndarray, numel: int, value_bits: float) -> tuple[IndexCoding, int]:
    """The smallest coding for these positions (dense counts the extra values it must send)."""
    g = gaps(indices)
    k = best_rice_k(g)
    sizes = {
        IndexCoding.DENSE: (numel - indices.size) * value_bits / 8,
        IndexCoding.BITMAP: -(-numel // 8),
        IndexCoding.DELTA_VARINT: varint_size(g),
        IndexCoding.GOLOMB_RICE: rice_size(g, k) + 1,  # +1: the parameter itself
    }
    coding = min(sizes, key=lambda c: (sizes[c], c))
    return coding, k


def encode(indices: np.ndarray, numel: int, coding: IndexCoding, k: int) -> bytes:
    if coding == IndexCoding.DENSE:
        return b""
    if coding == IndexCoding.BITMAP:
        return encode_bitmap(indices, numel)
    if coding == IndexCoding.DELTA_VARINT:
        return encode_varint(gaps(indices))
    return encode_rice(gaps(indices), k)


def decode(payload: bytes, coding: int, nnz: int, numel: int, k: int, field: str) -> np.ndarray:
    """Positions from a payload, checked: exactly nnz of them, strictly increasing, inside [0, numel)."""
    if coding == IndexCoding.DENSE:
        if nnz != numel or payload:
            raise ValueRejected(field, f"dense coding needs nnz == numel ({nnz} != {numel}) and no positions")
        return np.arange(numel, dtype=np.int64)
    if coding == IndexCoding.BITMAP:
        idx = decode_bitmap(payload, numel, field)
        if idx.size != nnz:
            raise ValueRejected(field, f"bitmap marks {idx.size} elements, nnz is {nnz}")
        return idx
    if coding == IndexCoding.DELTA_VARINT:
        idx = _from_gaps(decode_varint(payload, nnz, field))
    elif coding == IndexCoding.GOLOMB_RICE:
        idx = _from_gaps(decode_rice(payload, nnz, k, field))
    else:
        raise ValueRejected(field, f"unknown index coding {coding}")
    if idx.size and (idx[-1] >= numel or idx[0] < 0):
        raise ValueRejected(field, f"position {int(idx[-1])} outside a tensor of {numel} elements")
    return idx


# -- many streams at once (the gateway's intake) -------------------------------------------
# One update carries a position stream and often a magnitude stream per tensor; decoding them one by one
# costs tens of numpy calls each, which is most of a sparse update's intake. These decode every stream of
# an update in one fixed set of whole-array operations. They accept exactly what decode_rice / decode_varint
# accept, stream by stream, and answer None for anything else: the caller then decodes stream by stream,
# which names the field at fault. They never raise on hostile input.
_U64 = np.uint64
_CONTINUATION = bytes(range(0x80, 0x100))  # bytes.translate deletes these: what remains ends a varint


def decode_rice_many(payloads: list[bytes], counts: list[int], ks: list[int]) -> np.ndarray | None:
    """The gaps of several Golomb-Rice payloads (layout above), concatenated; None if any is malformed.

    The per-stream checks are Python arithmetic on a handful of numbers; the codes are decoded across all
    streams at once. In a valid stream the last unary bit is a 0 (its last code's, or zero padding), so the
    quotient of every code is the run of 1 bits since the previous 0 bit of the concatenation, whichever
    stream that 0 belongs to: one subtraction over all of them, then the padding 0s are dropped."""
    unary_parts, rem_parts = [], []
    ub = [0]  # stream s's unary bits: [ub[s], ub[s + 1]) of the concatenation
    rem_bits = [0]  # ... and its remainder bits
    for p, n, k in zip(payloads, counts, ks, strict=True):
        if not 0 <= k <= MAX_RICE_K:
            return None
        rem = (n * k + 7) >> 3
        cut = len(p) - rem
        if cut < 0 or (n == 0 and cut):
            return None
        pad = rem * 8 - n * k
        if pad and p[-1] & ((1 << pad) - 1):
            return None  # remainder padding bits are not zero
        unary_parts.append(p[:cut])
        rem_parts.append(p[cut:])
        ub.append(ub[-1] + 8 * cut)
        rem_bits.append(rem_bits[-1] + 8 * rem)
    total = sum(counts)
    if not total:
        return np.zeros(0, np.int64)
    zeros = np.flatnonzero(np.unpackbits(np.frombuffer(b"".join(unary_parts), np.uint8)) == 0)
    zf = zeros.searchsorted(ub).tolist()
    live = [s for s, n in enumerate(counts) if n]
    for s in live:
        if zf[s + 1] - zf[s] < counts[s]:
            return None  # the unary part ends before its last code
    lasts = zeros[[zf[s] + counts[s] - 1 for s in live]].tolist()
    for s, last in zip(live, lasts, strict=True):
        tail = zf[s + 1] - zf[s] - counts[s]  # 0 bits after the last code: must be every bit left, fewer than 8
        if tail >= 8 or ub[s + 1] - last - 1 != tail:
            return None
    runs = zeros - np.concatenate(([-1], zeros[:-1]))  # quotient + 1 of every 0 bit
    if zf[-1] != total:  # some padding 0 bits to drop
        runs = np.concatenate([runs[zf[s] : zf[s] + counts[s]] for s in live])
    kk = np.repeat(np.array(ks, np.int64), counts)
    g = (runs - 1) << kk
    if not any(ks):
        return g
    # Remainders: k bits, most significant first, at bit rem_bits[s] + j * k of the concatenation, read through
    # an 8-byte window: element i of ``at_byte`` is the 8 bytes from byte i on, big-endian (a view, no copy).
    buf = np.frombuffer(b"".join(rem_parts) + bytes(8), np.uint8)
    at_byte = np.ndarray((buf.size - 7,), ">u8", buf, strides=(1,))
    first = [0]
    for n in counts[:-1]:
        first.append(first[-1] + n)
    base = np.array([rem_bits[s] - first[s] * ks[s] for s in range(len(ks))], np.int64)
    bit = (np.repeat(base, counts) + np.arange(total) * kk).astype(_U64)
    drop = np.repeat(np.array([63 - k for k in ks], _U64), counts)
    r = ((at_byte[bit >> _U64(3)] << (bit & _U64(7))) >> _U64(1)) >> drop
    return g | r.astype(np.int64)


def decode_varint_many(payloads: list[bytes], counts: list[int]) -> np.ndarray | None:
    """The gaps of several delta-varint payloads, concatenated; None if any is malformed."""
    for p, n in zip(payloads, counts, strict=True):
        # Exactly n complete values, the last byte ending one: no value spans two payloads.
        if (p[-1] & 0x80 if p else n) or len(p.translate(None, _CONTINUATION)) != n:
            return None
    total = sum(counts)
    if not total:
        return np.zeros(0, np.int64)
    raw = np.frombuffer(b"".join(payloads), np.uint8)
    ends = np.flatnonzero(raw < 0x80)
    starts = np.concatenate(([0], ends[:-1] + 1))
    sizes = ends - starts + 1
    if sizes.max() > MAX_VARINT_BYTES:
        return None
    if sizes.size == raw.size:  # every value one byte
        return raw.astype(np.int64)
    shift = (np.arange(raw.size) - np.repeat(starts, sizes)) * 7
    return np.add.reduceat((raw & 0x7F).astype(np.int64) << shift, starts)


def positions_many(g: np.ndarray, counts: list[int], numels: list[int]) -> np.ndarray | None:
    """Positions from the concatenated gaps of several tensors; None if any lands outside its tensor."""
    c = np.cumsum(g + 1)  # within one tensor, position j is c[j] - c[the tensor's first - 1] - 1
    first, at = [], 0
    for n in counts:
        first.append(at)
        at += n
    live = [s for s, n in enumerate(counts) if n]
    if not live:
        return c
    picks = c[[first[s] - 1 for s in live if first[s]] + [first[s] + counts[s] - 1 for s in live]].tolist()
    before = dict(zip([s for s in live if first[s]], picks, strict=False))
    offsets = [before.get(s, 0) + 1 for s in range(len(counts))]
    lasts = picks[len(before) :]
    for s, end in zip(live, lasts, strict=True):
        if end - offsets[s] >= numels[s]:
            return None
    return c - np.repeat(np.array(offsets, np.int64), counts)
