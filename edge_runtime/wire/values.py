"""Value coding of a sparse tensor's kept entries.

- FLOAT32 (0), FLOAT16 (1): RFC 8746 typed arrays, no scale.
- INT8 (2): one per-tensor float scale; int8 codes in -127..127 (value = scale x code).
- TERNARY (3): one scale; codes in {-1, 0, +1} packed four per byte, two bits each, first
  value in the least significant bits: 0b00 = 0, 0b01 = +1, 0b10 = -1 (0b11 is refused).
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


BITS_PER_VALUE = {ValueCoding.FLOAT32: 32, ValueCoding.FLOAT16: 16, ValueCoding.INT8: 8, ValueCoding.TERNARY: 2}


@dataclass
class CodedValues:
    """Values as they travel: codes (dtype per coding) and the scale that turns codes into floats."""

    coding: ValueCoding
    codes: np.ndarray
    scale: float = 1.0

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
