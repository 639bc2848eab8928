"""Secure aggregation (SecAgg+) that keeps sparse uplink: the shared math and the device's side.

``shamir`` (secret sharing), ``crypto`` (X25519, HKDF, AES-GCM from
``cryptography``), ``field`` (the prime field, the mask PRG, packing,
stochastic rounding, Skellam noise), ``graph`` (the sparse neighbour graph),
``sparse`` (a device's input at the announced coordinates, with error
feedback) and ``device`` (the device's state machine). The gateway's side
is ``gateway/secagg.py``; the protocol is docs/secagg.md.

``cryptography`` (about 8 MiB resident: its Rust extension and OpenSSL) is
imported only when a session is made or a mask drawn: a device joins
secure rounds without holding it while it waits for plain ones. So
``DeviceSession`` and ``check_threshold`` load ``device`` on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import SecAggFailed, SecAggRefused
from .sparse import SparseInput

if TYPE_CHECKING:
    from .device import DeviceSession, check_threshold


def __getattr__(name: str) -> Any:
    if name in ("DeviceSession", "check_threshold"):
        from . import device

        return getattr(device, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DeviceSession", "SecAggFailed", "SecAggRefused", "SparseInput", "check_threshold"]
