"""Value coding of a sparse tensor's kept entries.

- FLOAT32 (0), FLOAT16 (1): RFC 8746 typed arrays, no scale.
- INT8 (2): one per-tensor float scale; int8 codes in -127..127 (value = scale x code).
- TERNARY (3): one scale; codes in {-1, 0, +1} packed four per byte, two bits each, first
  value in the least significant bits: 0b00 = 0, 0b01 = +1, 0b10 = -1 (0b11 is refused).
- INT8_RICE (4): the same int8 codes, entropy-coded: a byte string holding one sign bit per
  value (1 = negative, least significant bit first, padded to a byte), then the Golomb-Rice
  code (index_coding's layout, parameter k) of |code| - base for every value; ``base`` is
  the smallest magnitude kept. Top-k magnitudes crowd just above the cut, so this costs
  about 5-6 bits per value instead of 8. The encoder picks it only when it is smaller, and
  it decodes to INT8 codes: callers never see the difference.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from .errors import ValueRejected


class ValueCoding(IntEnum):
    FLOAT32 = 0
    FLOAT16 = 1
    INT8 = 2
    TERNARY = 3
    INT8_RICE = 4  # wire-only layout of INT8 codes


BITS_PER_VALUE = {
    ValueCoding.FLOAT32: 32,
    ValueCoding.FLOAT16: 16,
    ValueCoding.INT8: 8,
    ValueCoding.TERNARY: 2,
    ValueCoding.INT8_RICE: 6,
}


@dataclass
class CodedValues:
    """Values as they travel: codes (dtype per coding) and the scale that turns codes into floats."""

    coding: ValueCoding
    codes: np.ndarray
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.coding == ValueCoding.INT8_RICE:  # a wire layout of INT8 codes, not a value kind
            self.coding = ValueCoding.INT8
        # Refuse codes that encoding would silently cast (floats under an integer coding, and the reverse).
        integer = self.coding in (ValueCoding.INT8, ValueCoding.TERNARY)
        if integer != (self.codes.dtype.kind in "iu"):
            raise TypeError(
                f"{self.coding.name} values need {'integer' if integer else 'float'} codes, got {self.codes.dtype}"
            )
        if integer and self.codes.size:
            lo, hi = (-127, 127) if self.coding == ValueCoding.INT8 else (-1, 1)
            if int(self.codes.min()) < lo or int(self.codes.max()) > hi:
                raise ValueError(f"{self.coding.name} codes must lie in {lo}..{hi}")

    @classmethod
    def checked(cls, coding: ValueCoding, codes: np.ndarray, scale: float) -> CodedValues:
        """Codes a decoder has already checked for a whole update at once (dtype and range): the per-tensor
        checks of ``__post_init__`` would repeat that work, a few numpy calls per tensor, on the intake's path."""
        out = cls.__new__(cls)
        out.coding, out.codes, out.scale = coding, codes, scale
        return out

    def __len__(self) -> int:
        return int(self.codes.size)

    def decode(self) -> np.ndarray:
        """The float32 values these codes stand for."""
        if self.coding in (ValueCoding.FLOAT32, ValueCoding.FLOAT16):
            return self.codes.astype(np.float32)
        return (self.codes.astype(np.float32) * np.float32(self.scale)).astype(np.float32)


def pack_ternary(codes: np.ndarray) -> np.ndarray:
    two_bit = np.where(codes > 0, 1, np.where(codes < 0, 2, 0)).astype(np.uint8)
    padded = np.zeros(-(-two_bit.size // 4) * 4, np.uint8)
    padded[: two_bit.size] = two_bit
    quads = padded.reshape(-1, 4)
    return (quads[:, 0] | quads[:, 1] << 2 | quads[:, 2] << 4 | quads[:, 3] << 6).astype(np.uint8)


def unpack_ternary(packed: np.ndarray, count: int, field: str) -> np.ndarray:
    if packed.size != -(-count // 4):
        raise ValueRejected(field, f"{packed.size} bytes cannot hold exactly {count} ternary values")
    two_bit = ((packed[:, None] >> np.array([0, 2, 4, 6], np.uint8)) & 3).reshape(-1)
    if (two_bit == 3).any():
        raise ValueRejected(field, "ternary code 0b11 is not a value")
    if two_bit[count:].any():
        raise ValueRejected(field, "ternary padding is not zero")
    two_bit = two_bit[:count]
    return np.where(two_bit == 1, 1, np.where(two_bit == 2, -1, 0)).astype(np.int8)


def plan_int8_rice(codes: np.ndarray) -> tuple[int, int, int]:
    """(encoded bytes including the k and base keys, k, base) of the INT8_RICE layout, without encoding."""
    from .index_coding import best_rice_k, rice_size

    magnitude = np.abs(codes.astype(np.int64))
    base = int(magnitude.min()) if magnitude.size else 0
    k = best_rice_k(magnitude - base)
    return -(-codes.size // 8) + rice_size(magnitude - base, k) + 3, k, base


def pack_int8_rice(codes: np.ndarray, k: int, base: int) -> bytes:
    """Sign bits, then Rice(k) of |code| - base; see INT8_RICE above."""
    from .index_coding import encode_rice

    signs = np.packbits((codes < 0).astype(np.uint8), bitorder="little").tobytes()
    return signs + encode_rice(np.abs(codes.astype(np.int64)) - base, k)


def unpack_int8_rice(payload: bytes, count: int, k: int, base: int, field: str) -> np.ndarray:
    from .index_coding import decode_rice

    sign_bytes = -(-count // 8)
    if len(payload) < sign_bytes:
        raise ValueRejected(field, f"{len(payload)} bytes cannot hold {count} sign bits")
    signs = np.unpackbits(np.frombuffer(payload[:sign_bytes], np.uint8), bitorder="little")
    if signs[count:].any():
        raise ValueRejected(field, "sign padding bits are not zero")
    magnitude = decode_rice(payload[sign_bytes:], count, k, field) + base
    if magnitude.size and magnitude.max() > 127:
        raise ValueRejected(field, f"magnitude {int(magnitude.max())} exceeds 127")
    return np.where(signs[:count] == 1, -magnitude, magnitude).astype(np.int8)


def apply_signs_many(signs: list[bytes], counts: list[int], magnitudes: np.ndarray) -> np.ndarray | None:
    """INT8_RICE codes of several tensors at once: each one's sign bytes and count, and all their magnitudes
    (|code| - base already added back), concatenated; None when any is not what unpack_int8_rice accepts (the
    caller then decodes one by one, which names the field)."""
    for part, n in zip(signs, counts, strict=True):
        if len(part) != (n + 7) >> 3 or (n & 7 and part[-1] >> (n & 7)):
            return None  # padding bits after the last sign are not zero
    if magnitudes.size and magnitudes.max() > 127:
        return None
    bits = np.unpackbits(np.frombuffer(b"".join(signs), np.uint8), bitorder="little")
    if bits.size != magnitudes.size:  # some tensor's signs end inside a byte: keep the first n bits of each
        at, keep = 0, []
        for part, n in zip(signs, counts, strict=True):
            keep.append(bits[at : at + n])
            at += 8 * len(part)
        bits = np.concatenate(keep) if keep else bits[:0]
    codes = magnitudes.astype(np.int8)
    return np.negative(codes, out=codes, where=bits.view(bool))
