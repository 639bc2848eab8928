"""Bounds every decoder enforces before it allocates. One object, passed explicitly, so a
gateway and a microcontroller bridge can run with different budgets."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_message_bytes: int = 4 * 1024 * 1024  # a dense float32 update of a 1M-parameter model fits
    max_depth: int = 8
    max_items: int = 100_000  # CBOR data items in one message (typed arrays count as one)
    max_string: int = 256  # text fields: ids, names
    max_tensors: int = 256  # tensors in one update / manifest
    max_nnz: int = 4 * 1024 * 1024  # entries in one tensor update
    max_numel: int = 64 * 1024 * 1024  # elements of one tensor
    max_chunk_bytes: int = 256 * 1024  # one model chunk's data
    max_metrics: int = 64


DEFAULT_LIMITS = Limits()
