"""The field the masked vectors live in, the PRG that expands a seed into masks, and the vector's bytes.

Values are integers modulo a prime just below 2^bits (bits <= 32, so sums of
two fit numpy's uint64). The gateway picks ``bits`` for a session so that
the sum of every device's quantised input and noise cannot wrap around; a
masked value then takes exactly ``bits`` bits on the wire, packed.
"""

from __future__ import annotations

from functools import cache

import numpy as np

MIN_BITS = 8
MAX_BITS = 32
_MR_BASES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)  # deterministic for n < 3.3e24


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    for p in _MR_BASES:
        if n % p == 0:
            return n == p
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in _MR_BASES:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


@cache
def prime_below(bits: int) -> int:
    """The largest prime below 2^bits: the session's field."""
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"field bits {bits} outside [{MIN_BITS}, {MAX_BITS}]")
    n = (1 << bits) - 1
    while not is_prime(n):
        n -= 1
    return n


def masks(seed: bytes, count: int, bits: int) -> np.ndarray:
    """``count`` field elements, uniform and independent, from a 32-byte seed: AES-256-CTR's keystream read as
    little-endian 32-bit words, cut to ``bits`` bits, the values at or above the prime rejected."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # here: see the package's docstring

    prime = prime_below(bits)
    cipher = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    out: list[np.ndarray] = []
    have = 0
    while have < count:
        want = count - have
        words = np.frombuffer(cipher.update(bytes(4 * (want + want // 64 + 16))), "<u4").astype(np.uint64)
        words &= np.uint64((1 << bits) - 1)
        kept = words[words < prime]
        out.append(kept)
        have += kept.size
    return np.concatenate(out)[:count] if out else np.zeros(0, np.uint64)


def to_field(values: np.ndarray, bits: int) -> np.ndarray:
    """Signed integers into the field (negative x as prime + x)."""
    return np.mod(values.astype(np.int64), prime_below(bits)).astype(np.uint64)


def from_field(values: np.ndarray, bits: int) -> np.ndarray:
    """The centred lift: field elements above prime / 2 are the negative integers."""
    prime = prime_below(bits)
    signed = values.astype(np.int64)
    return np.where(signed > prime // 2, signed - prime, signed)


def pack(values: np.ndarray, bits: int) -> bytes:
    """Field elements as a little-endian bit stream, ``bits`` each (the last byte zero-padded)."""
    v = values.astype(np.uint64)
    planes = (v[:, None] >> np.arange(bits, dtype=np.uint64)) & np.uint64(1)
    return np.packbits(planes.astype(np.uint8).ravel(), bitorder="little").tobytes()


def unpack(data: bytes, count: int, bits: int) -> np.ndarray:
    if len(data) != packed_size(count, bits):
        raise ValueError(f"{len(data)} bytes where {count} values of {bits} bits take {packed_size(count, bits)}")
    planes = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")[: count * bits].reshape(count, bits)
    values = (planes.astype(np.uint64) << np.arange(bits, dtype=np.uint64)).sum(axis=1, dtype=np.uint64)
    if count and int(values.max()) >= prime_below(bits):
        raise ValueError("a value at or above the field's prime")
    return values


def packed_size(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


def stochastic_round(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Round to an integer neighbour, up with probability equal to the fraction: unbiased, E[round(x)] = x."""
    floor = np.floor(x)
    return (floor + (rng.random(x.shape) < (x - floor))).astype(np.int64)


def skellam(mu: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """Skellam(mu) noise, Poisson(mu) - Poisson(mu): integer, symmetric, variance 2 mu; a sum of Skellams is one
    (Agarwal, Kairouz and Liu 2021), so each device adds its share and the sum carries the whole."""
    if mu <= 0:
        return np.zeros(size, np.int64)
    return (rng.poisson(mu, size) - rng.poisson(mu, size)).astype(np.int64)
