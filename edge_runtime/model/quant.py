"""Integer arithmetic of TFLite's int8 kernels, in numpy.

The trainer's fake-quantisation and the int8 reference both use these, so the
float tail and the deployed int8 model agree to the rounding. The fixed-point
requantisation mirrors TFLite's ``QuantizeMultiplier`` /
``MultiplyByQuantizedMultiplier`` (double rounding), which is what
tflite-runtime and TFLite Micro run.
"""

from __future__ import annotations

import math

import numpy as np

INT8_MIN = -128
INT8_MAX = 127


def quantize_multiplier(real: float) -> tuple[int, int]:
    """Express ``real`` as a Q31 multiplier and a power-of-two shift."""
    if real == 0.0:
        return 0, 0
    mantissa, shift = math.frexp(real)
    q = round(mantissa * (1 << 31))
    if q == (1 << 31):
        q //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return int(q), int(shift)


def _rounding_doubling_high_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = a.astype(np.int64) * b.astype(np.int64)
    nudge = np.where(ab >= 0, np.int64(1 << 30), np.int64(1 - (1 << 30)))
    total = ab + nudge
    # C integer division truncates toward zero.
    return np.where(total >= 0, total >> 31, -((-total) >> 31))


def _rounding_divide_by_pot(x: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0).astype(np.int64)
    return (x >> exponent) + (remainder > threshold).astype(np.int64)


def multiply_by_quantized_multiplier(acc: np.ndarray, multiplier: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Requantise int32 accumulators; ``multiplier``/``shift`` broadcast over the last axis."""
    acc64 = acc.astype(np.int64)
    left = np.maximum(shift, 0).astype(np.int64)
    right = np.maximum(-shift, 0).astype(np.int64)
    scaled = np.clip(acc64 * (np.int64(1) << left), -(2**31), 2**31 - 1)
    return _rounding_divide_by_pot(_rounding_doubling_high_mul(scaled, multiplier), right)


def multipliers(real_scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pairs = [quantize_multiplier(float(s)) for s in np.atleast_1d(real_scales)]
    return (np.array([p[0] for p in pairs], np.int64), np.array([p[1] for p in pairs], np.int64))


def affine_params(lo: float, hi: float) -> tuple[float, int]:
    """Asymmetric int8 scale and zero point covering [lo, hi] (always including 0, as TFLite does)."""
    lo = min(float(lo), 0.0)
    hi = max(float(hi), 0.0)
    if hi - lo < 1e-8:
        hi = lo + 1e-8
    scale = (hi - lo) / 255.0
    zero_point = round(INT8_MIN - lo / scale)
    return scale, int(np.clip(zero_point, INT8_MIN, INT8_MAX))


def quantize(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return np.clip(np.round(x / scale) + zero_point, INT8_MIN, INT8_MAX).astype(np.int8)


def dequantize(q: np.ndarray, scale: float | np.ndarray, zero_point: int | np.ndarray) -> np.ndarray:
    return ((q.astype(np.int32) - zero_point) * scale).astype(np.float32)


def activation_bounds(activation: str, scale: float, zero_point: int) -> tuple[int, int]:
    """Integer clamp a fused activation imposes on an int8 output, as TFLite computes it."""
    lo, hi = INT8_MIN, INT8_MAX
    if activation in ("RELU", "RELU6"):
        lo = max(lo, zero_point)
    if activation == "RELU6":
        hi = min(hi, zero_point + round(6.0 / scale))
    return lo, hi
