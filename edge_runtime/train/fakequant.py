"""Fake quantisation with straight-through gradients, matching the int8 kernels.

Weights: symmetric per output channel, as TFLite's converter writes them.
Activations: asymmetric per tensor, with ranges tracked as exponential moving
averages; those running statistics are what the re-quantised model (and
later the gateway) calibrate from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..model.quant import INT8_MAX, INT8_MIN, affine_params


def fake_quant_weights(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Round ``w`` to its int8 grid per channel on ``axis``; returns (rounded, scales)."""
    moved = np.moveaxis(w, axis, 0)
    peak = np.abs(moved.reshape(moved.shape[0], -1)).max(axis=1)
    scales = (np.maximum(peak, 1e-8) / INT8_MAX).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    s = scales.reshape(shape)
    return (np.clip(np.round(w / s), -INT8_MAX, INT8_MAX) * s).astype(np.float32), scales


def fake_quant_activation(
    y: np.ndarray, scale: float, zero_point: int, lo: int = INT8_MIN, hi: int = INT8_MAX
) -> tuple[np.ndarray, np.ndarray]:
    """Round ``y`` onto the int8 grid; returns (rounded, mask where the gradient passes)."""
    q = np.round(y / scale) + zero_point
    inside = (q >= lo) & (q <= hi)
    return ((np.clip(q, lo, hi) - zero_point) * scale).astype(np.float32), inside


@dataclass
class RangeStats:
    """Running range of one activation tensor (float, before rounding)."""

    ema_min: float
    ema_max: float
    seen_min: float = float("inf")
    seen_max: float = float("-inf")
    batches: int = 0
    decay: float = 0.9

    def observe(self, y: np.ndarray) -> None:
        lo, hi = float(y.min()), float(y.max())
        self.seen_min = min(self.seen_min, lo)
        self.seen_max = max(self.seen_max, hi)
        d = self.decay
        self.ema_min = d * self.ema_min + (1 - d) * lo
        self.ema_max = d * self.ema_max + (1 - d) * hi
        self.batches += 1

    def params(self) -> tuple[float, int]:
        return affine_params(self.ema_min, self.ema_max)

    def as_dict(self) -> dict[str, float]:
        return {
            "ema_min": self.ema_min,
            "ema_max": self.ema_max,
            "seen_min": self.seen_min,
            "seen_max": self.seen_max,
            "batches": float(self.batches),
        }
