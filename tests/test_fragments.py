"""Fragmentation of oversize messages: exact reassembly in any order, and refusal of the inconsistent."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest

from edge_runtime import wire
from edge_runtime.transport.fragments import PARTIAL_OVERHEAD, Reassembler, fragment


def test_small_messages_pass_through_and_large_ones_reassemble_in_any_order() -> None:
    message_id = os.urandom(16)
    small = b"\xa2\x00\x07\x01\x01"
    assert fragment(message_id, small, 1024) == [small]
    payload = os.urandom(10_000)
    parts = fragment(message_id, payload, 1024)
    assert len(parts) > 9 and all(len(p) <= 1024 for p in parts)
    r = Reassembler()
    assert r.feed("dev", small) == small
    order = [3, 0, 0, *range(1, len(parts))]  # out of order, with a duplicate
    results = [r.feed("dev", parts[i]) for i in dict.fromkeys(order)]
    assert results[-1] == payload and all(x is None for x in results[:-1])
    assert r.pending == 0


def test_contradicting_fragments_and_a_wrong_digest_are_refused() -> None:
    message_id = os.urandom(16)
    a = fragment(message_id, os.urandom(5000), 1024)
    b = fragment(message_id, os.urandom(6000), 1024)
    r = Reassembler()
    r.feed("dev", a[0])
    with pytest.raises(wire.ValueRejected, match="disagrees"):
        r.feed("dev", b[1])
    piece = wire.decode(a[1], expect=wire.Fragment)
    forged = [a[0], wire.encode(wire.Fragment(message_id, 1, piece.count, piece.total_size, piece.digest, b"x" * 928))]
    forged += a[2:]
    with pytest.raises(wire.ValueRejected, match="sha256"):
        for part in forged:
            r.feed("dev", part)


def test_the_byte_budget_bounds_what_partial_messages_can_hold() -> None:
    r = Reassembler(budget_bytes=8000)
    r.feed("dev", fragment(os.urandom(16), os.urandom(5000), 1024)[0])
    with pytest.raises(wire.LimitExceeded, match="exceed the budget"):
        r.feed("other", fragment(os.urandom(16), os.urandom(5000), 1024)[0])
    # Fragments of different senders with the same id are different messages.
    payload = os.urandom(3000)
    same_id = os.urandom(16)
    r2 = Reassembler()
    for part in fragment(same_id, payload, 1024)[:-1]:
        r2.feed("a", part)
    assert r2.feed("b", fragment(same_id, payload, 1024)[-1]) is None
    assert r2.feed("a", fragment(same_id, payload, 1024)[-1]) == payload


def _tiny_first_fragment() -> bytes:
    """The first of 2 fragments of a 2-byte message: the least a sender can claim for a partial message."""
    return wire.encode(wire.Fragment(os.urandom(16), 0, 2, 2, os.urandom(32), b"x"))


class _CountingPartials(dict[Any, Any]):
    """The reassembler's partial messages, counting how many of them it reads."""

    examined = 0

    def items(self) -> Iterator[tuple[Any, Any]]:  # type: ignore[override]
        for item in super().items():
            self.examined += 1
            yield item


def test_a_flood_of_tiny_partial_messages_holds_a_bounded_number_of_them() -> None:
    """A partial message was charged only the size its fragment claims: first fragments of 2-byte messages
    fitted 33 million partial messages (gigabytes of bookkeeping) into the 64 MiB budget."""
    budget = 1 << 20
    r = Reassembler(budget_bytes=budget)
    refused = 0
    for _ in range(5000):
        try:
            r.feed("ghost", _tiny_first_fragment())
        except wire.LimitExceeded:
            refused += 1
    assert r.pending <= budget // PARTIAL_OVERHEAD and refused == 5000 - r.pending, (r.pending, refused)


def test_a_fragment_reads_only_the_partial_messages_that_expire(caplog: pytest.LogCaptureFixture) -> None:
    """Every fragment looked at every partial message for expiry: 3,000 first fragments a sender never completes
    made each later fragment of every device read 3,000 entries (2.8 ms a fragment at 10,000)."""
    now = [0.0]
    r = Reassembler(timeout=600.0, clock=lambda: now[0])
    partials = r._partials = _CountingPartials()
    for _ in range(3000):
        r.feed("ghost", _tiny_first_fragment())
    now[0] = 10.0
    payload = os.urandom(10_000)
    parts = fragment(os.urandom(16), payload, 1024)
    partials.examined = 0
    results = [r.feed("dev", part) for part in parts]
    assert results[-1] == payload and r.pending == 3000
    assert partials.examined <= len(parts), partials.examined  # the oldest, still in time, ends each look
    # Past the flood's timeout the next fragment drops all of it, said in one line.
    now[0] = 605.0
    partials.examined = 0
    with caplog.at_level(logging.WARNING, logger="edge_runtime.transport.fragments"):
        assert r.feed("dev", parts[0]) is None
    assert r.pending == 1 and partials.examined == 3000, (r.pending, partials.examined)  # the expired only
    dropped = [rec.getMessage() for rec in caplog.records if "dropped" in rec.getMessage()]
    assert len(dropped) == 1 and "2999 other" in dropped[0], dropped


def test_one_sender_holds_at_most_its_share_and_the_others_fragmented_messages_still_arrive() -> None:
    """One sender's first fragments could fill the whole budget, and every other device's fragmented message
    was then refused until they expired (10 minutes by default)."""
    r = Reassembler(budget_bytes=64_000, sender_bytes=16_000)
    refused = 0
    for _ in range(40):  # the ghost would fill the budget: 40 x (5,000 claimed + 1,024) is 241,000 bytes
        try:
            r.feed("ghost", fragment(os.urandom(16), os.urandom(5000), 1024)[0])
        except wire.LimitExceeded as exc:
            assert "ghost's incomplete messages" in str(exc) and "share of 16000" in str(exc)
            refused += 1
    assert r.pending == 2 and refused == 38, (r.pending, refused)  # 16,000 // 6,024
    for device in ("a", "b", "c"):  # each its own share, the budget still free for them
        payload = os.urandom(9000)
        results = [r.feed(device, part) for part in fragment(os.urandom(16), payload, 1024)]
        assert results[-1] == payload
    # A completed message gives its share back: the ghost may start another.
    payload = os.urandom(5000)
    parts = fragment(os.urandom(16), payload, 1024)
    r2 = Reassembler(budget_bytes=64_000, sender_bytes=7_000)
    assert [r2.feed("ghost", part) for part in parts][-1] == payload
    assert [r2.feed("ghost", part) for part in fragment(os.urandom(16), payload, 1024)][-1] == payload


def test_the_default_share_is_two_of_the_largest_messages_or_the_whole_budget() -> None:
    limits = wire.DEFAULT_LIMITS
    largest = limits.max_message_bytes

    def claim_largest() -> bytes:  # the first fragment of a message as large as the limits allow
        return wire.encode(wire.Fragment(os.urandom(16), 0, 70, largest, os.urandom(32), b"x"))

    r = Reassembler()  # the gateway's: 64 MiB
    for _ in range(16):  # sixteen claims would take the whole budget
        try:
            r.feed("ghost", claim_largest())
        except wire.LimitExceeded as exc:
            assert "ghost's incomplete messages" in str(exc)
    assert r.pending == 2  # two of the largest messages
    assert r.feed("honest", claim_largest()) is None and r.pending == 3  # the budget is still the others'
    assert Reassembler(budget_bytes=1 << 20).sender_bytes == 1 << 20
