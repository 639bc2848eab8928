"""Interpreter backends behind one interface; each imports its wheel only when asked for."""

from __future__ import annotations

from ..errors import BackendUnavailableError
from .base import Backend, Session, with_taps

BACKEND_NAMES = ("litert", "tflite-runtime", "micro")


def get_backend(name: str) -> Backend:
    """Instantiate a backend by name; raises BackendUnavailableError saying what to install."""
    if name == "litert":
        from .litert import LitertBackend

        return LitertBackend()
    if name == "tflite-runtime":
        from .tflite_runtime import TfliteRuntimeBackend

        return TfliteRuntimeBackend()
    if name == "micro":
        from .micro import MicroBackend

        return MicroBackend()
    raise BackendUnavailableError(f"unknown backend {name!r}; known: {', '.join(BACKEND_NAMES)}")


def available_backends() -> list[str]:
    """Names of the backends that load in this environment."""
    found = []
    for name in BACKEND_NAMES:
        try:
            get_backend(name)
        except BackendUnavailableError:
            continue
        found.append(name)
    return found


def default_backend() -> Backend:
    for name in BACKEND_NAMES:
        try:
            return get_backend(name)
        except BackendUnavailableError:
            continue
    raise BackendUnavailableError(
        "no interpreter backend installed: pip install 'tinyfed[litert]' (or tflite-runtime, micro)"
    )


__all__ = ["BACKEND_NAMES", "Backend", "Session", "available_backends", "default_backend", "get_backend", "with_taps"]
