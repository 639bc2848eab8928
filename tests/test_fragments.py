"""Fragmentation of oversize messages: exact reassembly in any order, and refusal of the inconsistent."""

from __future__ import annotations

import os

import pytest

from edge_runtime import wire
from edge_runtime.transport.fragments import Reassembler, fragment


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
    with pytest.raises(wire.LimitExceeded, match="budget"):
        r.feed("dev", fragment(os.urandom(16), os.urandom(5000), 1024)[0])
    # Fragments of different senders with the same id are different messages.
    payload = os.urandom(3000)
    same_id = os.urandom(16)
    r2 = Reassembler()
    for part in fragment(same_id, payload, 1024)[:-1]:
        r2.feed("a", part)
    assert r2.feed("b", fragment(same_id, payload, 1024)[-1]) is None
    assert r2.feed("a", fragment(same_id, payload, 1024)[-1]) == payload
