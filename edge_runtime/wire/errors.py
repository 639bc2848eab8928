"""Typed refusals for wire input. Every one names the field path at fault (``update.tensors[2].indices``)."""

from __future__ import annotations

from ..errors import TinyfedError


class WireError(ValueError, TinyfedError):
    """Base: a message was refused. ``field`` is the path of the offending field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class MessageTooLarge(WireError):
    """The encoded message exceeds the configured maximum before any decoding."""


class MalformedCBOR(WireError):
    """Not well-formed CBOR, or CBOR that tinyfed never produces (indefinite lengths, foreign tags)."""


class LimitExceeded(WireError):
    """A count, length, depth or nnz beyond the configured bound."""


class SchemaError(WireError):
    """Well-formed CBOR that does not follow the message schema (missing key, wrong type, bad version)."""


class ValueRejected(WireError):
    """Schema-valid but semantically refused: non-finite value, index out of range, shape mismatch."""
