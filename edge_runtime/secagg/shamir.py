"""Shamir secret sharing over a prime field: any ``threshold`` shares give the secret back, fewer give nothing.

SecAgg+ shares two secrets of each device (its self-mask seed and its
masking key) with its neighbours, so that the gateway can recover what it
needs about a device that dropped out, from any ``threshold`` of them, and
learns nothing from fewer. Small and written here because it is the
textbook construction (a random polynomial of degree threshold - 1 with the
secret at 0, Lagrange interpolation at 0), tested against its definition in
tests/test_secagg.py; the randomness comes from the OS's entropy.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence

# 2^255 - 19 (Curve25519's prime): a device draws its seed and its X25519 private key below it (``secret_bytes``),
# so each is one field element and a share takes 32 bytes.
SEED_PRIME = (1 << 255) - 19
SHARE_BYTES = 32  # a value below SEED_PRIME, big-endian


def split(
    secret: int, threshold: int, xs: Sequence[int], prime: int = SEED_PRIME,
    randbelow: Callable[[int], int] = secrets.randbelow,
) -> dict[int, int]:  # fmt: skip
    """Shares of ``secret`` at the points ``xs`` (distinct, nonzero mod prime): x -> f(x)."""
    if not 0 <= secret < prime:
        raise ValueError(f"secret outside the field of {prime.bit_length()} bits")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold {threshold} for {len(xs)} shares")
    if len({x % prime for x in xs}) != len(xs) or any(x % prime == 0 for x in xs):
        raise ValueError("share points must be distinct and nonzero")
    coefficients = [secret] + [randbelow(prime) for _ in range(threshold - 1)]
    return {x: _evaluate(coefficients, x, prime) for x in xs}


def reconstruct(shares: dict[int, int], prime: int = SEED_PRIME) -> int:
    """The polynomial's value at 0 through the given points (Lagrange). With ``threshold`` or more shares of one
    split, the secret; with fewer, a value that says nothing about it."""
    if not shares:
        raise ValueError("no shares")
    total = 0
    points = list(shares.items())
    for i, (xi, yi) in enumerate(points):
        numerator, denominator = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                numerator = numerator * (-xj) % prime
                denominator = denominator * (xi - xj) % prime
        if denominator == 0:
            raise ValueError(f"share point {xi} given twice")
        total = (total + yi * numerator * pow(denominator, -1, prime)) % prime
    return total


def _evaluate(coefficients: list[int], x: int, prime: int) -> int:
    value = 0
    for c in reversed(coefficients):
        value = (value * x + c) % prime
    return value


def to_bytes(value: int) -> bytes:
    return value.to_bytes(SHARE_BYTES, "big")


def from_bytes(data: bytes) -> int:
    value = int.from_bytes(data, "big")
    if len(data) != SHARE_BYTES or value >= SEED_PRIME:
        raise ValueError(f"a share is {SHARE_BYTES} bytes below 2^255 - 19")
    return value


def secret_bytes() -> bytes:
    """32 random bytes whose big-endian value is below SEED_PRIME (one draw in 2^250 is drawn again)."""
    while True:
        candidate = bytes([secrets.randbits(7)]) + secrets.token_bytes(31)
        if int.from_bytes(candidate, "big") < SEED_PRIME:
            return candidate
