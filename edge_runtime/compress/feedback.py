"""The error-feedback residual, persisted so that a reboot loses nothing that was not sent.

Ordering that keeps an update counted exactly once: the caller first stores
the encoded update durably (the outbox), then commits the residual computed
with it. A crash in between re-sends the stored update and recomputes
nothing; the residual still reflects the last update that was stored.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..storage import atomic_write

log = logging.getLogger(__name__)


class ResidualStore:
    """Residuals per tensor index, in one .npz file written atomically."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> dict[int, np.ndarray]:
        if not self.path.exists():
            return {}
        try:
            with np.load(self.path, allow_pickle=False) as data:
                out = {int(key.removeprefix("t")): data[key].astype(np.float32) for key in data.files}
        except (OSError, ValueError, KeyError) as exc:
            # A torn file cannot happen (atomic writes); a corrupted one can (flash wear). Keep it for
            # inspection, start from zero, and say so: the cost is one round's unsent remainder.
            aside = self.path.with_suffix(".corrupt")
            self.path.replace(aside)
            log.warning("residual file %s unreadable (%s); moved to %s, starting from zero", self.path, exc, aside)
            return {}
        for key, value in out.items():
            if not np.isfinite(value).all():
                log.warning("residual of tensor %d holds non-finite values; reset to zero", key)
                out[key] = np.zeros_like(value)
        return out

    def save(self, residual: dict[int, np.ndarray]) -> None:
        buffer = io.BytesIO()
        arrays: dict[str, Any] = {f"t{key}": value.astype(np.float32) for key, value in residual.items()}
        np.savez(buffer, **arrays)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, buffer.getvalue())
