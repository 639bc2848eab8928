"""Serial messages on top of the link: one CBOR message from ``edge_runtime.wire`` per frame.

Both ends (the host driver and the emulated board) send and read through
these two functions, so the frame's type byte and the payload's CBOR type
can never disagree.
"""

from __future__ import annotations

from typing import Any

from edge_runtime import wire
from edge_runtime.wire.limits import Limits

from .framing import Frame
from .link import SerialLink

# A board reads with these bounds: one message is at most one frame (64 KiB is the largest frame
# HELLO can agree on), and a board never holds more than a few dozen items per message.
SERIAL_LIMITS = Limits(max_message_bytes=64 * 1024, max_items=4096, max_chunk_bytes=64 * 1024)


def send_message(link: SerialLink, message: Any) -> None:
    link.send(message.TYPE, wire.encode(message))


def read_message(frame: Frame, limits: Limits = SERIAL_LIMITS) -> Any:
    """The frame's payload decoded; raises ``wire.WireError`` with the reason when it does not decode."""
    message = wire.decode(frame.payload, limits)
    kind = getattr(message, "TYPE", None)
    if kind is not None and kind != frame.type:
        raise wire.SchemaError("frame", f"type {frame.type} carries a message of type {kind}")
    return message
