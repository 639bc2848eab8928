"""Serial frames: header, CBOR payload, CRC-32, COBS-encoded and delimited by 0x00.

On the line a frame is ``COBS(header | payload | crc32) 0x00``. COBS removes
every zero byte from the frame, so 0x00 only ever ends one, and a receiver
that lost its place (garbage, a dropped byte, a board reset mid-frame)
finds the next frame boundary at the next 0x00: resynchronisation costs at
most the frame in flight. The CRC-32 (IEEE 802.3, zlib's, little-endian on
the line) covers header and payload; a frame failing it is dropped and
the sender's timeout retransmits it.

Header, 5 bytes:

| byte | field | meaning |
|---|---|---|
| 0 | version | protocol version, 1 |
| 1 | type | the payload's message type (0 = no payload: a bare acknowledgement) |
| 2 | seq | sequence number of this frame, 0-255, wrapping (bare acks: 0) |
| 3 | ack | the last sequence number received in order from the other side |
| 4 | flags | bit 0: ack is valid; bit 1: session start (sequence numbers reset) |

COBS is the ``cobs`` package (a C extension, faster than Python could
be); CRC-32 is zlib's.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from cobs import cobs

from edge_runtime.errors import TinyfedError

PROTOCOL_VERSION = 1
HEADER = struct.Struct("<BBBBB")
CRC = struct.Struct("<I")
FLAG_ACK = 0x01
FLAG_START = 0x02
TYPE_ACK = 0
OVERHEAD = HEADER.size + CRC.size  # bytes around the payload before COBS
MAX_FRAME_DEFAULT = 1024  # payload bytes per frame until HELLO says otherwise


class FrameError(ValueError, TinyfedError):
    """A frame failed its CRC, its COBS decoding or its header; the message says which."""


@dataclass(frozen=True)
class Frame:
    type: int
    seq: int
    ack: int
    flags: int
    payload: bytes = b""

    @property
    def has_ack(self) -> bool:
        return bool(self.flags & FLAG_ACK)

    @property
    def starts_session(self) -> bool:
        return bool(self.flags & FLAG_START)


def encode_frame(frame: Frame) -> bytes:
    """The bytes on the line, delimiter included."""
    body = HEADER.pack(PROTOCOL_VERSION, frame.type, frame.seq & 0xFF, frame.ack & 0xFF, frame.flags) + frame.payload
    return cobs.encode(body + CRC.pack(zlib.crc32(body))) + b"\x00"


def decode_frame(encoded: bytes) -> Frame:
    """One frame's bytes between delimiters (without the 0x00)."""
    try:
        raw = cobs.decode(encoded)
    except cobs.DecodeError as exc:
        raise FrameError(f"COBS: {exc}") from exc
    if len(raw) < OVERHEAD:
        raise FrameError(f"{len(raw)} bytes is shorter than a frame's {OVERHEAD}")
    body, (crc,) = raw[: -CRC.size], CRC.unpack(raw[-CRC.size :])
    if zlib.crc32(body) != crc:
        raise FrameError("CRC-32 mismatch")
    version, kind, seq, ack, flags = HEADER.unpack(body[: HEADER.size])
    if version != PROTOCOL_VERSION:
        raise FrameError(f"protocol version {version}; this build speaks {PROTOCOL_VERSION}")
    return Frame(kind, seq, ack, flags, bytes(body[HEADER.size :]))


class FrameSplitter:
    """Cuts a byte stream into frames at 0x00; bounded, so garbage without delimiters cannot grow it."""

    def __init__(self, max_encoded: int) -> None:
        self.max_encoded = max_encoded
        self._buffer = bytearray()
        self._dropping = False  # inside an over-long run: discard up to the next delimiter
        self.overflows = 0

    def feed(self, data: bytes) -> list[bytes]:
        out = []
        *complete, rest = data.split(b"\x00")
        for part in complete:
            self._buffer += part
            if self._buffer and not self._dropping and len(self._buffer) <= self.max_encoded:
                out.append(bytes(self._buffer))
            self._buffer.clear()
            self._dropping = False
        if not self._dropping:
            self._buffer += rest
        if len(self._buffer) > self.max_encoded:
            self.overflows += 1
            self._buffer.clear()
            self._dropping = True
        return out


def max_encoded_size(max_payload: int) -> int:
    """Upper bound of a frame on the line (COBS adds one byte per 254, plus one; then the delimiter)."""
    raw = max_payload + OVERHEAD
    return raw + raw // 254 + 2
