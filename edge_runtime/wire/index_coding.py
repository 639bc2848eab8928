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
