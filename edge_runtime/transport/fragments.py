"""Messages above the link's maximum payload: cut into fragments, reassembled and verified by sha256.

The sender side is a pure function; the receiving side buffers partial
messages under a byte budget and a time limit, so a peer that sends the
first fragment of a thousand messages and never the rest cannot exhaust
the gateway's memory; and under a share of that budget per sender, so it
cannot take the whole budget from the others either.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .. import wire
from ..wire.limits import DEFAULT_LIMITS, Limits

log = logging.getLogger(__name__)
DEFAULT_MAX_PAYLOAD = 64 * 1024
FRAGMENT_OVERHEAD = 96  # CBOR framing of a Fragment besides its data: 16-byte id, 32-byte digest, counts
# What a partial message costs the budget besides its bytes: its bookkeeping (the first fragment, its id and
# digest, the dict entries) is several hundred bytes of memory whatever total size the fragment claims. Charged
# only by its claimed size, a message of 2 bytes in 2 fragments cost 2 bytes: one sender's first fragments of
# tiny messages fitted 33 million partials into the 64 MiB budget, gigabytes of memory.
PARTIAL_OVERHEAD = 1024


def fragment(message_id: bytes, payload: bytes, max_payload: int = DEFAULT_MAX_PAYLOAD) -> list[bytes]:
    """``[payload]`` when it fits; otherwise encoded Fragments, each at most ``max_payload`` bytes."""
    if len(payload) <= max_payload:
        return [payload]
    piece = max_payload - FRAGMENT_OVERHEAD
    if piece <= 0:
        raise ValueError(f"max_payload {max_payload} leaves no room for data after {FRAGMENT_OVERHEAD} bytes")
    digest = hashlib.sha256(payload).digest()
    count = -(-len(payload) // piece)
    return [
        wire.encode(wire.Fragment(message_id, i, count, len(payload), digest, payload[i * piece : (i + 1) * piece]))
        for i in range(count)
    ]


@dataclass
class _Partial:
    first: wire.Fragment
    started: float
    pieces: dict[int, bytes] = field(default_factory=dict)
    size: int = 0

    @property
    def charge(self) -> int:
        """What it holds of the byte budget: its claimed size and its bookkeeping."""
        return self.first.total_size + PARTIAL_OVERHEAD


class Reassembler:
    """Collects fragments by (sender, message id); returns the whole message once complete and verified.

    ``feed`` raises WireError for a fragment that is malformed or contradicts
    the others of its message (the partial message is then dropped).
    """

    def __init__(
        self,
        limits: Limits = DEFAULT_LIMITS,
        budget_bytes: int = 64 << 20,
        timeout: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        sender_bytes: int | None = None,
    ) -> None:
        """``sender_bytes``: what one sender's partial messages may hold of the budget together; by default two
        messages of the largest size the limits allow (a message and its resend under a new id), or the whole
        budget if that is less. Without it, one sender's first fragments could fill the budget while the
        others' fragmented messages were refused, for as long as its partials lived (``timeout``)."""
        self.limits = limits
        self.budget_bytes = budget_bytes
        default_share = 2 * (limits.max_message_bytes + PARTIAL_OVERHEAD)
        self.sender_bytes = min(budget_bytes, default_share if sender_bytes is None else sender_bytes)
        self.timeout = timeout
        self.clock = clock
        # In the order they started (a dict keeps insertion order): the oldest, the first to expire, come first.
        self._partials: dict[tuple[str, bytes], _Partial] = {}
        self._buffered = 0
        self._by_sender: dict[str, int] = {}  # what each sender's partial messages hold of the budget
        self._lock = threading.Lock()

    def feed(self, sender: str, payload: bytes) -> bytes | None:
        """A whole message's bytes (non-fragments pass straight through), or None while pieces are missing."""
        if wire.peek_type(payload) != wire.Fragment.TYPE:
            return payload
        piece = wire.decode(payload, self.limits, expect=wire.Fragment)
        key = (sender, piece.message_id)
        with self._lock:
            self._expire()
            partial = self._partials.get(key)
            if partial is None:
                partial = _Partial(piece, self.clock())
                held = self._by_sender.get(sender, 0)
                if held + partial.charge > self.sender_bytes:
                    raise wire.LimitExceeded(
                        "fragment",
                        f"{sender}'s incomplete messages already hold {held} bytes; {partial.charge} more (the "
                        f"message's {piece.total_size} bytes and {PARTIAL_OVERHEAD} of bookkeeping) exceed one "
                        f"sender's share of {self.sender_bytes}",
                    )
                if self._buffered + partial.charge > self.budget_bytes:
                    raise wire.LimitExceeded(
                        "fragment",
                        f"{self._buffered} bytes already buffered; {partial.charge} more (the message's "
                        f"{piece.total_size} bytes and {PARTIAL_OVERHEAD} of bookkeeping) exceed the budget",
                    )
                self._partials[key] = partial
                self._buffered += partial.charge
                self._by_sender[sender] = held + partial.charge
            first = partial.first
            if (piece.count, piece.total_size, piece.digest) != (first.count, first.total_size, first.digest):
                self._drop(key)
                raise wire.ValueRejected("fragment", f"fragment {piece.index} disagrees with the others of its message")
            if piece.index not in partial.pieces:
                partial.pieces[piece.index] = piece.data
                partial.size += len(piece.data)
            if len(partial.pieces) < first.count:
                return None
            self._drop(key)
        whole = b"".join(partial.pieces[i] for i in range(first.count))
        if len(whole) != first.total_size or hashlib.sha256(whole).digest() != first.digest:
            raise wire.ValueRejected("fragment", f"reassembled {len(whole)} bytes do not match the message's sha256")
        return whole

    def _drop(self, key: tuple[str, bytes]) -> None:
        partial = self._partials.pop(key, None)
        if partial is not None:
            self._buffered -= partial.charge
            left = self._by_sender[key[0]] - partial.charge
            if left:
                self._by_sender[key[0]] = left
            else:
                del self._by_sender[key[0]]

    def _expire(self) -> None:
        """Drop the partial messages older than the timeout. They are the first in ``_partials`` (started order),
        so the look stops at the first one still in time: every fragment used to read every partial message,
        which made a flood of first fragments cost each later fragment, an honest device's too, milliseconds
        (2.8 ms at 10,000 partials). One line says what was dropped, not one per message: a flood's expiry
        would be thousands of lines."""
        now = self.clock()
        expired = []
        for key, partial in self._partials.items():
            if now - partial.started <= self.timeout:
                break
            expired.append((key, partial))
        if not expired:
            return
        for key, _ in expired:
            self._drop(key)
        (sender, message_id), partial = expired[0]
        more = f" and {len(expired) - 1} other incomplete message(s)" if len(expired) > 1 else ""
        log.warning(
            "dropped message %s from %s%s: %d of %d fragments after %.0f s",
            message_id.hex()[:12],
            sender,
            more,
            len(partial.pieces),
            partial.first.count,
            self.timeout,
        )

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._partials)
