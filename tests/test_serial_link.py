"""Serial frames and the stop-and-wait link over a real pty, opened on the host side with pyserial."""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Iterator

import pytest

from edge_runtime import wire

serial = pytest.importorskip("serial")

from firmware_bridge.framing import (  # noqa: E402
    FLAG_ACK,
    Frame,
    FrameError,
    FrameSplitter,
    decode_frame,
    encode_frame,
)
from firmware_bridge.link import MAX_HELD, LinkTimeout, SerialLink  # noqa: E402
from hil.pty_port import LineFaults, PtyPort  # noqa: E402

BAUD = 921600


@pytest.fixture
def pty_pair() -> Iterator[tuple[PtyPort, object]]:
    board = PtyPort(BAUD)
    host = serial.serial_for_url(board.path, baudrate=BAUD, timeout=0.05)
    yield board, host
    host.close()
    board.close()


def test_frames_round_trip_and_every_corruption_is_caught() -> None:
    frame = Frame(18, 200, 199, FLAG_ACK, bytes(range(256)) * 3)
    encoded = encode_frame(frame)
    assert encoded.count(0) == 1 and encoded.endswith(b"\x00")  # COBS: the delimiter is the only zero
    assert decode_frame(encoded[:-1]) == frame
    rng = random.Random(1)
    for _ in range(500):  # single bit flips anywhere: CRC-32 catches all of them
        damaged = bytearray(encoded[:-1])
        i = rng.randrange(len(damaged))
        damaged[i] ^= 1 << rng.randrange(8)
        if 0 in damaged:
            continue  # a flip to 0x00 splits the frame; the splitter handles that case
        with pytest.raises(FrameError):
            decode_frame(bytes(damaged))


def test_the_splitter_resynchronises_after_garbage_and_bounds_its_buffer() -> None:
    good = encode_frame(Frame(16, 1, 0, 0, b"hello"))
    splitter = FrameSplitter(max_encoded=64)

    def frames(data: bytes) -> list[bytes | None]:
        out: list[bytes | None] = []
        for piece in splitter.feed(data):
            try:
                out.append(decode_frame(piece).payload)
            except FrameError:
                out.append(None)  # dropped; the sender's timeout resends it
        return out

    # Garbage glued to a frame costs that frame; the next delimiter puts the receiver back in step.
    assert frames(b"\x17\x99garbage" + good[:4]) == []
    assert frames(good[4:] + good) == [None, b"hello"]
    # A long run without any delimiter is discarded, not buffered.
    assert frames(b"\x01" * 300) == [] and splitter.overflows == 1
    assert frames(b"\x00" + good) == [b"hello"]


def _run_exchange(host_link: SerialLink, board_link: SerialLink, count: int) -> tuple[list[bytes], list[bytes]]:
    rng = random.Random(7)
    sent = [os.urandom(rng.randrange(1, 900)) for _ in range(count)]
    got: list[bytes] = []

    def board_side() -> None:
        for _ in range(count):
            frame = board_link.receive(timeout=30)
            got.append(frame.payload)
            board_link.send(frame.type + 1, frame.payload[::-1])

    worker = threading.Thread(target=board_side)
    worker.start()
    replies = []
    for payload in sent:
        host_link.send(18, payload)
        replies.append(host_link.receive(timeout=30).payload)
    worker.join(30)
    assert got == sent
    return sent, replies


def test_messages_arrive_in_order_exactly_once_over_a_pty(pty_pair: tuple[PtyPort, object]) -> None:
    board, host = pty_pair
    host_link = SerialLink(host, BAUD).start()  # type: ignore[arg-type]
    board_link = SerialLink(board, BAUD).start()
    try:
        sent, replies = _run_exchange(host_link, board_link, 60)
        assert replies == [p[::-1] for p in sent]
        assert host_link.stats.bad_frames == 0 and board_link.stats.bad_frames == 0  # a clean line stays clean
    finally:
        host_link.close()
        board_link.close()


def test_a_noisy_line_costs_retransmissions_not_messages() -> None:
    board = PtyPort(BAUD, LineFaults(bit_error_rate=2e-4, drop_rate=1e-4, seed=3))
    host = serial.serial_for_url(board.path, baudrate=BAUD, timeout=0.05)
    host_link = SerialLink(host, BAUD, retries=30).start()  # type: ignore[arg-type]
    board_link = SerialLink(board, BAUD, retries=30).start()
    try:
        sent, replies = _run_exchange(host_link, board_link, 25)
        assert replies == [p[::-1] for p in sent]
        damaged = host_link.stats.bad_frames + board_link.stats.bad_frames
        resent = host_link.stats.retransmissions + board_link.stats.retransmissions
        assert damaged > 0 and resent > 0  # the faults happened, and were repaired
    finally:
        host_link.close()
        board_link.close()
        host.close()
        board.close()


def test_a_silent_board_gives_a_timeout_that_says_so(pty_pair: tuple[PtyPort, object]) -> None:
    _, host = pty_pair
    host_link = SerialLink(host, BAUD, retries=2).start()  # type: ignore[arg-type]
    try:
        with pytest.raises(LinkTimeout, match="no acknowledgement of frame 0 after 3 attempts"):
            host_link.send(16, b"anyone there?")
    finally:
        host_link.close()


def test_line_faults_fall_on_the_same_bytes_however_the_stream_is_split() -> None:
    """A seeded noisy line repeats: faults are placed by stream position, not by how reads happened to split."""
    stream = bytes(random.Random(5).randbytes(200_000))

    def through(splits: list[int], direction: str) -> tuple[bytes, int, int]:
        faults = LineFaults(bit_error_rate=1e-3, drop_rate=1e-4, seed=9)
        out, cursor = [], 0
        for size in splits:
            out.append(faults.apply(stream[cursor : cursor + size], direction))
            cursor += size
        return b"".join(out), faults.bits_flipped, faults.bytes_dropped

    whole = through([len(stream)], "to_board")
    rng = random.Random(1)
    ragged: list[int] = []
    while sum(ragged) < len(stream):
        ragged.append(min(rng.randint(1, 700), len(stream) - sum(ragged)))
    assert through(ragged, "to_board") == whole
    data, flips, dropped = whole
    assert 1_300 < flips < 1_900 and 8 < dropped < 35  # 1.6M bits at 1e-3, 200k bytes at 1e-4
    assert len(data) == len(stream) - dropped
    assert through([len(stream)], "to_host")[0] != data  # each direction has its own faults


def test_frames_nobody_reads_are_held_up_to_a_bound(pty_pair: tuple[PtyPort, object]) -> None:
    """A board that talks unasked (LOG frames in a loop) while the bridge waits for a task: every frame was kept
    until the next request, so the bridge's memory grew at line rate for as long as it waited. Past the bound a
    frame finds no free buffer: not acknowledged, so the board resends it and gives up, as on a lost frame."""
    board, host = pty_pair
    host_link = SerialLink(host, BAUD).start()  # type: ignore[arg-type]
    board_link = SerialLink(board, BAUD, retries=1).start()
    try:
        for i in range(MAX_HELD):
            board_link.send(wire.Log.TYPE, wire.encode(wire.Log(7, f"line {i}")))  # each acknowledged
        with pytest.raises(LinkTimeout):
            board_link.send(wire.Log.TYPE, wire.encode(wire.Log(7, "one too many")))
        assert host_link.stats.dropped >= 1  # seen (and resent) at least once, never taken
        held = host_link.pending()
        assert [wire.decode(f.payload, expect=wire.Log).text for f in held] == [f"line {i}" for i in range(MAX_HELD)]
        # Once read, there is room again: the same frame, sent again, is taken.
        board_link.send(wire.Log.TYPE, wire.encode(wire.Log(7, "after")))
        assert wire.decode(host_link.receive(timeout=30).payload, expect=wire.Log).text == "after"
    finally:
        host_link.close()
        board_link.close()
