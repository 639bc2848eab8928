"""Top-k / threshold sparsification with error feedback, and its inverse for the gateway.

With a clip bound (differential privacy, docs/privacy.md) the delta plus its
residual is clipped to that L2 norm *before* anything is selected, so error
feedback can never push what is sent past the bound: the residual only holds
what a clipped vector did not send. What is sent is then at most the bound as
the gateway measures it (decoded, float64), quantisation included: a value
coding that rounds upward is scaled back under the bound before it leaves,
and the difference stays in the residual. With local noise, Gaussian noise of
stddev ``noise x clip`` from the OS's entropy is added to every entry of the
clipped vector before sparsification, and the residual keeps the clean
clipped entries that were not sent (never the noise).
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from ..wire.update import TensorUpdate
from ..wire.values import CodedValues, ValueCoding
from .feedback import ResidualStore
from .quantize import quantize_values

log = logging.getLogger(__name__)


class Selection(StrEnum):
    TOPK = "topk"  # the largest |entries| of each tensor, density x numel of them
    GLOBAL_TOPK = "global_topk"  # the largest |entries| over all tensors together
    THRESHOLD = "threshold"  # every entry with |value| >= threshold


@dataclass
class CompressionConfig:
    density: float = 0.01
    # Global top-k lets small tensors (biases) send nothing until their residual earns a place, instead
    # of paying ~20 bytes of per-tensor framing every round for one forced entry.
    selection: Selection = Selection.GLOBAL_TOPK
    threshold: float = 0.0
    value_coding: ValueCoding = ValueCoding.INT8
    stochastic: bool = False
    error_feedback: bool = True
    seed: int = 0
    clip: float = 0.0  # L2 bound on the delta plus residual, and on what is sent (0: none)
    noise: float = 0.0  # local DP: Gaussian noise stddev as a multiple of ``clip`` (0: none)

    def __post_init__(self) -> None:
        if not 0 < self.density <= 1:
            raise ValueError(f"density must be in (0, 1], got {self.density}")
        if self.clip < 0 or self.noise < 0 or (self.noise > 0 and self.clip <= 0):
            raise ValueError(f"clip {self.clip} and noise {self.noise} must be >= 0, and noise needs a clip")
        if self.selection == Selection.THRESHOLD and self.threshold <= 0:
            raise ValueError("threshold selection needs threshold > 0")


@dataclass
class CompressionResult:
    tensors: list[TensorUpdate]
    residual: dict[int, np.ndarray] = field(default_factory=dict)  # commit after the update is stored
    norm: float = 0.0  # L2 norm of delta plus residual, before any clipping
    below_clip: bool | None = None  # with a clip: whether ``norm`` was within it (adaptive clipping's bit)


def sent_norm(tensors: Iterable[TensorUpdate]) -> float:
    """The L2 norm of an update as the gateway measures it: decoded values, summed in float64."""
    total = 0.0
    for t in tensors:
        values = t.values.decode().astype(np.float64)
        total += float(values @ values)
    return math.sqrt(total)


def _shrink(values: CodedValues, factor: float) -> CodedValues:
    """The same entries scaled by ``factor`` < 1: a scaled scale, or scaled float values."""
    if values.coding in (ValueCoding.INT8, ValueCoding.TERNARY):
        return CodedValues(values.coding, values.codes, float(np.float32(values.scale * factor)))
    return CodedValues(values.coding, (values.codes.astype(np.float64) * factor).astype(values.codes.dtype))


def within_bound(tensors: list[TensorUpdate], bound: float) -> list[TensorUpdate]:
    """``tensors`` scaled so that :func:`sent_norm` is at most ``bound`` (rounding can push it a hair over)."""
    for _ in range(8):
        norm = sent_norm(tensors)
        if norm <= bound:
            return tensors
        factor = bound / norm * (1 - 1e-6)
        tensors = [TensorUpdate(t.tensor, t.numel, t.indices, _shrink(t.values, factor)) for t in tensors]
    raise ArithmeticError(f"could not bring an update of norm {sent_norm(tensors)} under {bound}")


def _top_k(magnitude: np.ndarray, k: int) -> np.ndarray:
    k = min(max(k, 0), magnitude.size)
    if k == 0:
        return np.zeros(0, np.int64)
    if k == magnitude.size:
        return np.arange(magnitude.size, dtype=np.int64)
    return np.sort(np.argpartition(magnitude, magnitude.size - k)[magnitude.size - k :]).astype(np.int64)


class Compressor:
    """Turns dense deltas into sparse, quantised tensor updates; remembers what it did not send."""

    def __init__(self, config: CompressionConfig, store: ResidualStore | None = None) -> None:
        self.config = config
        self.store = store
        self.residual: dict[int, np.ndarray] = store.load() if store is not None else {}
        self.rng = np.random.default_rng(config.seed)

    def compress(self, deltas: Mapping[int, np.ndarray]) -> CompressionResult:
        """``deltas``: tensor index -> trained minus base (any shape). Nothing is persisted here."""
        cfg = self.config
        acc: dict[int, np.ndarray] = {}
        for tensor, delta in deltas.items():
            flat = np.asarray(delta, np.float32).reshape(-1)
            if not np.isfinite(flat).all():
                raise ValueError(f"delta of tensor {tensor} holds non-finite values; refusing to send it")
            previous = self.residual.get(tensor)
            if cfg.error_feedback and previous is not None:
                if previous.size == flat.size:
                    flat = flat + previous
                else:
                    log.warning(
                        "residual of tensor %d has %d elements, delta %d; dropped", tensor, previous.size, flat.size
                    )
            acc[tensor] = flat
        norm = math.sqrt(sum(float(v.astype(np.float64) @ v.astype(np.float64)) for v in acc.values()))
        below = None
        if cfg.clip > 0:
            below = norm <= cfg.clip
            if not below:
                acc = {t: (v.astype(np.float64) * (cfg.clip / norm)).astype(np.float32) for t, v in acc.items()}
        sent = acc
        if cfg.noise > 0:
            noise_rng = np.random.default_rng(secrets.randbits(128))  # never the task's seed: the gateway knows it
            scale = cfg.noise * cfg.clip
            sent = {t: v + noise_rng.normal(0.0, scale, v.size).astype(np.float32) for t, v in acc.items()}
        chosen = self._select(sent)
        tensors: list[TensorUpdate] = []
        for tensor, flat in sent.items():
            idx = chosen[tensor]
            coded = quantize_values(flat[idx], cfg.value_coding, cfg.stochastic, self.rng)
            if idx.size:  # an empty tensor entry would only cost framing
                tensors.append(TensorUpdate(tensor, flat.size, idx, coded))
        if cfg.clip > 0 and cfg.noise == 0:
            tensors = within_bound(tensors, cfg.clip)
        residual: dict[int, np.ndarray] = {}
        if cfg.error_feedback:
            by_tensor = {t.tensor: t for t in tensors}
            for tensor, flat in acc.items():
                remainder = flat.copy()
                kept = by_tensor.get(tensor)
                if kept is not None and cfg.noise > 0:
                    remainder[kept.indices] = 0.0  # sent, with noise: the noise is never fed back
                elif kept is not None:
                    remainder[kept.indices] -= kept.values.decode()  # quantisation error is fed back too
                residual[tensor] = remainder
        return CompressionResult(tensors, residual, norm, below)

    def _select(self, acc: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
        cfg = self.config
        if cfg.selection == Selection.THRESHOLD:
            return {t: np.flatnonzero(np.abs(v) >= cfg.threshold).astype(np.int64) for t, v in acc.items()}
        if cfg.selection == Selection.TOPK:
            return {t: _top_k(np.abs(v), max(1, round(cfg.density * v.size))) for t, v in acc.items()}
        keys = list(acc)
        if not keys:
            return {}
        magnitudes = np.concatenate([np.abs(acc[t]) for t in keys])
        picked = _top_k(magnitudes, max(1, round(cfg.density * magnitudes.size)))
        bounds = np.cumsum([0] + [acc[t].size for t in keys])
        return {
            t: picked[(picked >= lo) & (picked < hi)] - lo
            for t, lo, hi in zip(keys, bounds[:-1], bounds[1:], strict=True)
        }

    def commit(self, result: CompressionResult) -> None:
        """Adopt (and persist) the residual of an update that has been stored or delivered."""
        if not self.config.error_feedback:
            return
        self.residual = result.residual
        if self.store is not None:
            self.store.save(self.residual)


def decompress(
    tensors: Iterable[TensorUpdate], shapes: Mapping[int, tuple[int, ...]] | None = None
) -> dict[int, np.ndarray]:
    """Dense float32 deltas per tensor index (reshaped when ``shapes`` is given)."""
    out: dict[int, np.ndarray] = {}
    for t in tensors:
        dense = t.dense()
        out[t.tensor] = dense.reshape(shapes[t.tensor]) if shapes is not None and t.tensor in shapes else dense
    return out
