"""Quantise the kept values of one tensor into a wire value coding.

Deterministic rounding keeps replays exact; stochastic rounding is unbiased
(E[decoded] = value), which matters when error feedback is off.
"""

from __future__ import annotations

import numpy as np

from ..wire.values import CodedValues, ValueCoding

FLOAT16_MAX = 65504.0


def bfloat16_up(scale: float) -> float:
    """The smallest bfloat16 (a float32 whose low 16 bits are zero) >= a positive finite ``scale``.

    The compact update sends such a scale in 16 bits instead of 32; rounding
    up by at most 2**-8 keeps every code within -127..127.
    """
    word = int(np.array([scale], "<f4").view("<u4")[0])
    if word & 0xFFFF:
        word = (word | 0xFFFF) + 1
    return float(np.array([word], "<u4").view("<f4")[0])


def quantize_values(
    values: np.ndarray, coding: ValueCoding, stochastic: bool = False, rng: np.random.Generator | None = None
) -> CodedValues:
    v = values.astype(np.float32).reshape(-1)
    if coding == ValueCoding.INT8_RICE:  # the wire picks the entropy-coded layout by itself
        coding = ValueCoding.INT8
    if stochastic and rng is None:
        raise ValueError("stochastic rounding needs a random generator")
    if coding == ValueCoding.FLOAT32:
        return CodedValues(coding, v.copy())
    if coding == ValueCoding.FLOAT16:
        return CodedValues(coding, np.clip(v, -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16))
    peak = float(np.abs(v).max(initial=0.0))
    if coding == ValueCoding.INT8:
        scale = bfloat16_up(float(np.float32(peak / 127.0))) if peak > 0 else 1.0
        x = v / scale
        q = np.floor(x + rng.random(v.size)) if stochastic and rng is not None else np.round(x)
        return CodedValues(coding, np.clip(q, -127, 127).astype(np.int8), scale)
    if coding == ValueCoding.TERNARY:
        if v.size == 0 or peak == 0:
            return CodedValues(coding, np.zeros(v.size, np.int8), 1.0)
        if stochastic and rng is not None:
            # TernGrad: scale = max |v|, keep each sign with probability |v| / scale (unbiased).
            keep = rng.random(v.size) < np.abs(v) / peak
            return CodedValues(coding, (np.sign(v) * keep).astype(np.int8), bfloat16_up(float(np.float32(peak))))
        # Deterministic: every kept entry becomes +-scale with scale = mean |v| (least squares for signs).
        return CodedValues(coding, np.sign(v).astype(np.int8), bfloat16_up(float(np.float32(np.abs(v).mean()))))
    raise ValueError(f"unknown value coding {coding}")
