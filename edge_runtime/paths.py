"""Files and folders a user names (options, configuration keys), checked before any work depends on them.

A training run that ends with "[Errno 2] No such file or directory:
'/data/.m.tflite.x81k'" has lost its result and named a temporary file the
user never chose. These checks run first, and their errors name the option
or key (``what``: ``--out``, ``gateway.toml [gateway] storage``), the path as
the user wrote it, and what is wrong with it in words.

``os.access`` answers for the real user, including a read-only file system
(EROFS); a root process passes it everywhere else, so writes still report
their own failure through :func:`write_file`.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from .config import ConfigError
from .storage import atomic_write


def _reason(exc: OSError) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.EROFS:
        return "read-only file system"
    if exc.errno == errno.ENOSPC:
        return "no space left on the device"
    return exc.strerror or str(exc)


def _folder_problem(folder: Path) -> str | None:
    """Why no file can be created in ``folder``, or None when one can."""
    if not folder.exists():
        return f"folder {folder} does not exist"
    if not folder.is_dir():
        return f"{folder} is a file, not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"folder {folder} is not writable" + (" (read-only file system)" if _read_only(folder) else "")
    return None


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_output_file(path: Path, what: str) -> None:
    """``path`` can be written as a file: its folder exists and is writable, and it is not a folder itself."""
    if path.is_dir():
        raise ConfigError(f"{what} {path}: is a folder; name a file inside it")
    problem = _folder_problem(path.parent)
    if problem is not None:
        raise ConfigError(f"{what} {path}: {problem}")
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{what} {path}: the file exists and is not writable")


def write_file(path: Path, data: bytes, what: str) -> None:
    """:func:`atomic_write` whose failure names ``what`` and ``path``, never the temporary file beside it."""
    check_output_file(path, what)
    try:
        atomic_write(path, data)
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot write it: {_reason(exc)}") from exc


def check_storage_dir(path: Path, what: str) -> Path:
    """A folder tinyfed keeps state in: created if missing (with its parents), and writable.

    Returns ``path``. A file where the folder should be, a parent that is a
    file, or a folder this user cannot write are errors naming ``what``.
    """
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path}: is a file, not a folder")
    if not path.exists():
        for parent in path.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise ConfigError(f"{what} {path}: {parent} is a file, not a folder")
                break
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{what} {path}: cannot create the folder: {_reason(exc)}") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        suffix = " (read-only file system)" if _read_only(path) else ""
        raise ConfigError(f"{what} {path}: the folder is not writable{suffix}")
    return path


def check_input_file(path: Path, what: str) -> None:
    """``path`` is a readable file (not missing, not a folder)."""
    if not path.exists():
        folder = path.parent
        hint = "" if folder.is_dir() else f" (folder {folder} does not exist either)"
        raise ConfigError(f"{what} {path}: no such file{hint}")
    if path.is_dir():
        raise ConfigError(f"{what} {path}: is a folder, not a file")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{what} {path}: not readable (permission denied)")
