"""A device's models on disk: install atomically, keep the last good version, roll back.

Layout: ``<dir>/<version hex>.tflite`` per version and a ``current`` file
naming the active one (written atomically). A new model becomes current only
after its sha256 matches and a validator (loading it in the device's
interpreter) accepts it; until then, and if it fails, the old one stays.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

from .model.errors import ModelError
from .storage import atomic_write

log = logging.getLogger(__name__)
Validator = Callable[[bytes], None]  # raises ModelError (or any Exception) when the model is unusable


class ModelStore:
    def __init__(self, directory: str | Path, keep: int = 3) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.keep = keep

    def _path(self, version: bytes) -> Path:
        return self.directory / f"{version.hex()}.tflite"

    @property
    def current_version(self) -> bytes | None:
        pointer = self.directory / "current"
        if not pointer.exists():
            return None
        text = pointer.read_text().strip()
        try:
            return bytes.fromhex(text)
        except ValueError:
            log.error("model pointer %s is damaged (%r); no current model", pointer, text[:70])
            return None

    def current(self) -> bytes | None:
        version = self.current_version
        if version is None:
            return None
        data = self._path(version).read_bytes() if self._path(version).exists() else None
        if data is None or hashlib.sha256(data).digest() != version:
            log.error("stored model %s is missing or damaged", version.hex()[:12])
            return None
        return data

    def get(self, version: bytes) -> bytes | None:
        """A stored version's bytes (the current one or one kept before it), or None when it is gone or damaged:
        the bridge patches a board from the version it runs."""
        try:
            data = self._path(version).read_bytes()
        except FileNotFoundError:  # never stored, or pruned by the fetcher's thread since
            return None
        return data if hashlib.sha256(data).digest() == version else None

    def install(self, model: bytes, expected_version: bytes, validate: Validator | None = None) -> None:
        """Make ``model`` current, or raise and leave the current model untouched."""
        if hashlib.sha256(model).digest() != expected_version:
            raise ModelError(f"model does not hash to its version {expected_version.hex()[:12]}; not installed")
        if validate is not None:
            try:
                validate(model)
            except Exception as exc:
                raise ModelError(
                    f"model {expected_version.hex()[:12]} failed to load ({exc}); keeping the current one"
                ) from exc
        atomic_write(self._path(expected_version), model)
        previous = self.current_version
        if previous is not None and previous != expected_version:
            atomic_write(self.directory / "previous", previous.hex().encode())
        atomic_write(self.directory / "current", expected_version.hex().encode())
        self._prune()
        log.info("installed model %s", expected_version.hex()[:12])

    def rollback(self) -> bytes:
        """Make the previous version current again; returns its version."""
        pointer = self.directory / "previous"
        if not pointer.exists():
            raise ModelError("no previous model to roll back to")
        version = bytes.fromhex(pointer.read_text().strip())
        if not self._path(version).exists():
            raise ModelError(f"previous model {version.hex()[:12]} is no longer stored")
        atomic_write(self.directory / "current", version.hex().encode())
        log.warning("rolled back to model %s", version.hex()[:12])
        return version

    def _prune(self) -> None:
        protected = {v for v in (self.current_version,) if v is not None}
        previous = self.directory / "previous"
        if previous.exists():
            protected.add(bytes.fromhex(previous.read_text().strip()))
        files = sorted(self.directory.glob("*.tflite"), key=lambda p: p.stat().st_mtime, reverse=True)
        for path in files[self.keep :]:
            try:
                version = bytes.fromhex(path.stem)
            except ValueError:
                continue  # not one of ours: leave it alone
            if version not in protected:
                path.unlink(missing_ok=True)
