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
    """Residuals per tensor index, as one .npz, written atomically to a file.

    Where the bytes live is three small methods (``_read_raw``, ``_write_raw``, ``_set_aside``), so an
    emulated board keeps the same format in its flash scratch area.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _read_raw(self) -> bytes | None:
        return self.path.read_bytes() if self.path.exists() else None

    def _write_raw(self, data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, data)

    def _set_aside(self) -> str:
        aside = self.path.with_suffix(".corrupt")
        self.path.replace(aside)
        return f"moved to {aside}"

    def load(self) -> dict[int, np.ndarray]:
        raw = self._read_raw()
        if not raw:
            return {}
        try:
            with np.load(io.BytesIO(raw), allow_pickle=False) as data:
                out = {int(key.removeprefix("t")): data[key].astype(np.float32) for key in data.files}
        except (OSError, ValueError, KeyError) as exc:
            # A torn write cannot happen (atomic writes, CRC'd flash); a corrupted one can (flash wear). Keep
            # it for inspection where possible, start from zero, and say so: the cost is one round's remainder.
            log.warning("residual unreadable (%s); %s, starting from zero", exc, self._set_aside())
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
        self._write_raw(buffer.getvalue())
