"""Free space under the gateway's storage: below a floor, no new round is opened until space returns.

A round writes every accepted update (its bytes), a new model version
(three files) and its rows; a disk that fills mid-round makes SQLite and
the version files fail. Checking the floor before a round opens, and
before a failed close is retried, keeps the gateway from failing at every
step: it says why once, waits, and carries on with its store intact when
space is freed. ``gateway status`` applies the same check.
"""

from __future__ import annotations

import errno
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from edge_runtime.errors import TinyfedError


class Usage(NamedTuple):
    total: int
    used: int
    free: int


class DiskSpace:
    def __init__(
        self, path: Path, min_free_mb: float, usage: Callable[[Path], Usage] = shutil.disk_usage  # type: ignore[assignment]
    ) -> None:
        self.path = path
        self.min_free = int(min_free_mb * 2**20)
        self.usage = usage

    def free(self) -> int:
        return int(self.usage(self.path).free)

    def shortage(self) -> str | None:
        """Why no round may open now, or None when there is room."""
        free = self.free()
        if free >= self.min_free:
            return None
        return (
            f"storage {self.path} has {free / 2**20:.1f} MiB free, below [gateway] min_free_mb = "
            f"{self.min_free / 2**20:g}: no new round opens until space is freed"
        )


class OutOfSpace(OSError, TinyfedError):
    """A write to the gateway's storage failed for want of space; nothing was counted, nothing is lost."""

    def __init__(self, what: str, cause: BaseException) -> None:
        super().__init__(errno.ENOSPC, f"{what}: out of space ({cause})")


def is_out_of_space(exc: BaseException) -> bool:
    """SQLite's 'database or disk is full' or the OS's ENOSPC/EDQUOT, wherever they surfaced."""
    if isinstance(exc, sqlite3.OperationalError):
        return "full" in str(exc).lower()
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
