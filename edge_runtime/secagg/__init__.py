"""Secure aggregation (SecAgg+) that keeps sparse uplink: the shared math and the device's side.

``shamir`` (secret sharing), ``crypto`` (X25519, HKDF, AES-GCM from
``cryptography``), ``field`` (the prime field, the mask PRG, packing,
stochastic rounding, Skellam noise), ``graph`` (the sparse neighbour graph),
``sparse`` (a device's input at the announced coordinates, with error
feedback) and ``device`` (the device's state machine). The gateway's side
is ``gateway/secagg.py``; the protocol is docs/secagg.md.
"""

from .device import DeviceSession, check_threshold
from .errors import SecAggFailed, SecAggRefused
from .sparse import SparseInput

__all__ = ["DeviceSession", "SecAggFailed", "SecAggRefused", "SparseInput", "check_threshold"]
