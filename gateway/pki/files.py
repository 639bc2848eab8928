"""Writing trust material: private files and directories, no silent overwrite, nothing lost.

Three ways a file is written, each for one kind of material:

- :func:`write_new` for keys and certificates: created exclusively (``O_EXCL``) with its mode from the first
  byte, so a key is never readable by others even for an instant, and an existing file is never replaced;
- :func:`replace_file` for the records provisioning keeps up to date (the device registry, the ACL, the
  CRL, ``federation.json``): a temporary file in the same directory, fsynced, then renamed over the old one,
  so a reader (the gateway, Mosquitto on SIGHUP) sees the old version or the new, never half of one;
- :func:`retire` moves material that is being replaced (``--force``) under ``retired/<time>/`` instead of
  deleting it: a CA or a device key replaced by mistake can still be recovered.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path

from edge_runtime.errors import TinyfedError

PRIVATE = 0o600  # keys, and archives that hold keys
PUBLIC = 0o644  # certificates, public keys, configuration without secrets
PRIVATE_DIR = 0o700


class ProvisionError(ValueError, TinyfedError):
    """Provisioning refused: existing material, an unknown device, a bad option; the message says which."""


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) with mode 0700; an existing directory is tightened to 0700."""
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    os.chmod(path, PRIVATE_DIR)
    return path


def write_new(path: Path, data: bytes, mode: int) -> Path:
    """Create ``path`` holding ``data`` with ``mode``; refuse if it exists (never overwritten silently)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError as exc:
        raise ProvisionError(f"{path} exists: refusing to overwrite it (use --force to retire it first)") from exc
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits away; give exactly these
        with os.fdopen(fd, "wb") as f:
            fd = -1
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    return path


def replace_file(path: Path, data: bytes, mode: int) -> Path:
    """Atomically replace (or create) ``path`` with ``data``; readers see the old file or the new one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def retire(root: Path, paths: list[Path], now: datetime) -> Path:
    """Move ``paths`` (inside ``root``) to ``root/retired/<UTC time>/``, keeping their place relative to root."""
    stamp = now.strftime("%Y%m%dT%H%M%S.%fZ")
    target = private_dir(root / "retired" / stamp)
    for path in paths:
        destination = target / path.relative_to(root)
        private_dir(destination.parent)
        shutil.move(str(path), str(destination))
    return target
