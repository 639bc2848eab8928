"""Patch transfers on the serial line (docs/serial-protocol.md, "Patch transfer"): the board behind a real pty.

The patch is the MQTT devices' own (wire/patch.py); the board applies it to the model it runs into its other
slot and switches only to a result that hashes to the target. A board without the base, a patch that does not
verify, or one that does not declare the capability gets the whole model; a hostile patch is refused naming its
field, and the board keeps its model. The tests run on the C board under QEMU too (``--hil-qemu mps2-an386``),
which applies patches the same way; what only the emulator shows (its receive log and flash, an injected reset,
a board without the capability) is checked there alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_runtime import wire
from edge_runtime.data.dataset import DataSplit
from edge_runtime.model.backends import default_backend
from edge_runtime.model.graph import Graph
from edge_runtime.model.info import quantize_input
from edge_runtime.model.writer import write_graph
from edge_runtime.train.build import build_model
from edge_runtime.wire.serial import ErrorCode
from tests.test_patches import moved

pytest.importorskip("serial")
pytest.importorskip("cobs")

import serial

from firmware_bridge.driver import BoardDriver, chunk_capacity
from firmware_bridge.errors import BoardRefused
from hil.pytest_plugin import BoardOptions, HilTarget


def sha(model: bytes) -> bytes:
    return hashlib.sha256(model).digest()


@pytest.fixture(scope="module")
def model_a(digits_mlp: Graph) -> bytes:
    return write_graph(digits_mlp)


@pytest.fixture(scope="module")
def model_b(model_a: bytes) -> bytes:
    """The next version as a round makes it: 40 int8 weights of the last layer moved by one step."""
    return moved(model_a, 11)


def patch_of(base: bytes, target: bytes) -> wire.ModelPatch:
    patch = wire.make_patch(base, target)
    assert patch is not None
    return patch


def emulated(hil_board: HilTarget):  # type: ignore[no-untyped-def]
    assert hil_board.emulated is not None
    return hil_board.emulated


def test_a_board_gets_the_next_version_as_a_patch_if_it_declares_them_and_whole_if_not(
    dut: BoardDriver, model_a: bytes, model_b: bytes, digits: DataSplit, digits_mlp: Graph
) -> None:
    """On every board: one that declares patches gets the patch, one that does not gets the whole model."""
    dut.send_model(model_a)
    report = dut.update_model(model_b, patch_of(model_a, model_b))
    assert dut.board is not None
    assert report.kind == ("patch" if dut.board.patch else "model") and report.fallback == ""
    assert dut.status().model_version == sha(model_b)
    x = quantize_input(digits_mlp, digits.test.x[:10])
    host = default_backend().load(model_b).run_batch(x)[0]
    for i in range(len(x)):
        np.testing.assert_array_equal(dut.infer(x[i]).output, host[i].reshape(-1))


def test_a_patch_puts_a_fraction_of_the_model_on_the_line(
    dut: BoardDriver, hil_board: HilTarget, model_a: bytes, model_b: bytes
) -> None:
    whole = dut.send_model(model_a)
    patch = patch_of(model_a, model_b)
    report = dut.update_model(model_b, patch)
    assert dut.board is not None and dut.board.patch, "this board declares no patches"
    assert report.kind == "patch" and report.payload_bytes == len(wire.encode(patch))
    assert report.line_bytes * 20 < whole.line_bytes  # frames, acknowledged once each: a 20th of the model's
    assert dut.status().model_version == sha(model_b)
    # already running it: the patch's base is no longer the board's, so the whole model's transfer resumes at its end
    assert dut.update_model(model_b, patch).resumed_from == [len(model_b)]
    board = hil_board.emulated
    if board is not None:  # the emulator's receive log: the patch's bytes reached its flash, not the model's
        assert board.received == {"model": len(model_a), "patch": report.payload_bytes}
        assert board.installs == [("model", sha(model_a)), ("patch", sha(model_b))]
        assert board.flash.model() == model_b


@pytest.mark.hil_emulated(reason="injects a watchdog reset at a byte of the patch")
def test_a_reset_mid_patch_resumes_where_the_board_left_off(
    hil_board: HilTarget, model_a: bytes, model_b: bytes
) -> None:
    board = emulated(hil_board)
    with BoardDriver(hil_board.url, baud=hil_board.baud, max_frame=96, answer_timeout=60.0) as driver:
        driver.hello()
        driver.send_model(model_a)
        patch = patch_of(model_a, model_b)
        size = len(wire.encode(patch))
        chunk = chunk_capacity(driver.link.max_payload)
        assert size > 2 * chunk  # the patch goes in three chunks or more at these frames
        board.faults.reset_at_byte = chunk + 5  # in the second chunk
        report = driver.send_patch(patch)
        assert report.resets == 1 and board.reset_reasons == [1]
        assert report.resumed_from == [0, chunk]  # the first chunk was kept and not sent again
        assert board.received["patch"] == size
        assert board.installs[-1] == ("patch", sha(model_b)) and board.flash.model() == model_b
        assert driver.status().model_version == sha(model_b)


def test_the_reset_button_pressed_mid_patch_resumes_where_the_boards_flash_left_off(
    hil_board: HilTarget, model_a: bytes, digits: DataSplit
) -> None:
    """On the emulator and on the C board under QEMU (``system_reset``): half a patch in small frames, a reset."""
    target = write_graph(build_model("mlp", digits.train.x, digits.train.classes, seed=1))  # most bytes differ
    patch = patch_of(model_a, target)
    pressed: list[int] = []

    def press_reset(done: int, total: int) -> None:
        if not pressed and done >= total // 2:
            pressed.append(driver.sent_through)  # the furthest byte on the line: what QEMU's flash may hold at most
            if hil_board.emulated is not None:
                hil_board.emulated.reset()
            elif hil_board.qemu is not None:
                hil_board.qemu.reset()
            else:
                pytest.skip("a real board's reset button is not in reach of the test")

    with BoardDriver(hil_board.url, baud=hil_board.baud, max_frame=96, answer_timeout=60.0) as driver:
        driver.hello()
        driver.send_model(model_a)
        assert len(wire.encode(patch)) > 8 * chunk_capacity(driver.link.max_payload)  # many chunks to keep
        report = driver.send_patch(patch, progress=press_reset)
        assert report.kind == "patch" and report.resets == 1 and report.resumed_from[0] == 0
        # What reached flash was kept and not sent again. The emulator takes the button up after the request in
        # hand (a chunk past the one acknowledged may be written first); QEMU resets at once, so nothing the host
        # sent after the press reaches flash. The bound is what the host had sent, not what was acknowledged
        # (``done``): after a late acknowledgement the board may hold a longer version of the last chunk than
        # the shortened resend that was acknowledged (test_a_late_acknowledgement_at_the_reset_button below).
        assert 0 < report.resumed_from[1] < len(wire.encode(patch))
        if hil_board.qemu is not None:
            assert report.resumed_from[1] <= pressed[0]
        assert driver.status().model_version == sha(target)


def test_a_late_acknowledgement_at_the_reset_button_bounds_the_resume_by_what_the_host_sent(
    hil_board: HilTarget, model_a: bytes, digits: DataSplit
) -> None:
    """On the C board under QEMU: the chunk that crosses half the patch is acknowledged late (QEMU paused, as a
    loaded machine delays it at random), so the host resends it shorter; the board takes the first, longer
    version. The reset button then may find more in flash than the host counts as acknowledged (the board
    acknowledges a frame before it writes it to flash, so whether the longer copy is written before the button
    depends on the board), never more than the host sent; the transfer resumes from there and installs."""
    qemu = hil_board.qemu
    if qemu is None:
        pytest.skip("pauses QEMU's CPU to delay an acknowledgement")
    target = write_graph(build_model("mlp", digits.train.x, digits.train.classes, seed=1))
    patch = patch_of(model_a, target)
    writes: list[bytes] = []
    late = threading.Event()
    pressed: list[tuple[int, int]] = []
    sender = threading.get_ident()  # the driver's frames are written by this thread; acknowledgements by the link's

    class Port:
        """The pty as the driver writes it: while QEMU is paused, the second frame the driver writes is the
        resend (the link's reader thread may acknowledge a board frame already in the pty meanwhile: not counted)."""

        def __init__(self, port: Any) -> None:
            self.port = port

        def __getattr__(self, name: str) -> Any:
            return getattr(self.port, name)

        def write(self, data: bytes) -> int | None:
            written = self.port.write(data)
            if late.is_set() and qemu is not None and threading.get_ident() == sender:
                writes.append(data)
                if len(writes) == 2:  # the first version, then the shorter resend: let the board read both
                    late.clear()
                    qemu.resume()
            return written

    def progress(done: int, total: int) -> None:
        if not late.is_set() and not writes and done + chunk_capacity(driver.link.max_payload) >= total // 2:
            qemu.pause()  # the next chunk, which crosses half the patch, is acknowledged late
            late.set()
        elif writes and not pressed:  # that chunk's acknowledgement: press the button at once
            pressed.append((done, driver.sent_through))
            qemu.reset()

    port = Port(serial.serial_for_url(hil_board.url, baudrate=hil_board.baud, timeout=0.05, write_timeout=10))
    with BoardDriver(hil_board.url, baud=hil_board.baud, max_frame=96, answer_timeout=60.0, port=port) as driver:
        # Only the paused chunk is acknowledged late: a loaded machine's own late acknowledgements would shrink
        # the chunks first, and a chunk already at the shortest is resent no shorter (nothing here to test).
        driver.link.processing_allowance = 2.0
        driver.hello()
        driver.send_model(model_a)
        report = driver.send_patch(patch, progress=progress)
        assert len(writes) == 2 and report.kind == "patch" and report.resets == 1
        done, sent = pressed[0]
        assert done < sent  # the resend was shorter: the board may hold more than the host counts acknowledged
        assert report.resumed_from[0] == 0 and 0 < report.resumed_from[1] <= sent
        assert driver.status().model_version == sha(target)


def test_a_board_missing_the_parent_refuses_the_patch_and_gets_the_whole_model(
    dut: BoardDriver, hil_board: HilTarget, model_a: bytes, model_b: bytes
) -> None:
    dut.send_model(model_a)
    other = moved(model_a, 12)  # a version this board never had
    patch = patch_of(other, model_b)
    with pytest.raises(BoardRefused) as refused:
        dut.send_patch(patch)
    assert refused.value.code == ErrorCode.NO_PARENT and "patch_begin.base" in refused.value.detail
    report = dut.update_model(model_b, patch)  # the bridge does not offer a patch against a base the board lacks
    assert report.kind == "model" and report.fallback == "" and report.payload_bytes == len(model_b)
    assert dut.status().model_version == sha(model_b)
    board = hil_board.emulated
    if board is not None:
        assert board.received["patch"] == 0 and board.installs[-1] == ("model", sha(model_b))


def test_a_patch_whose_result_does_not_verify_is_refused_and_the_whole_model_follows(
    dut: BoardDriver, hil_board: HilTarget, model_a: bytes, model_b: bytes
) -> None:
    board = hil_board.emulated
    dut.send_model(model_a)
    good = patch_of(model_a, model_b)
    other = patch_of(model_a, moved(model_a, 13))
    assert other.count == good.count
    corrupted = dataclasses.replace(good, positions=other.positions, position_k=other.position_k)
    with pytest.raises(BoardRefused) as refused:
        dut.send_patch(corrupted)
    assert refused.value.code == ErrorCode.HASH_MISMATCH and "does not hash to" in refused.value.detail
    assert dut.status().model_version == sha(model_a)  # old model kept
    if board is not None:
        assert board.flash.model() == model_a
    report = dut.update_model(model_b, corrupted)
    assert report.kind == "model" and "HASH_MISMATCH" in report.fallback
    assert dut.status().model_version == sha(model_b)
    if board is not None:
        assert board.installs[-1] == ("model", sha(model_b)) and board.flash.model() == model_b


def far_positions(model: bytes) -> dict[str, object]:
    """One changed offset just past the end of ``model``."""
    far = patch_of(b"\0" * (len(model) + 10), b"\0" * len(model) + b"\1" + b"\0" * 9)
    return {"count": 1, "positions": far.positions, "position_k": far.position_k, "deltas": far.deltas,
            "delta_k": far.delta_k}  # fmt: skip


@pytest.mark.parametrize(
    ("hostile", "field"),
    [
        ("offset past the model", "modelpatch.positions"),
        ("count above the model's bytes", "modelpatch.count"),
        ("truncated positions", "modelpatch.positions"),
        ("truncated deltas", "modelpatch.deltas"),
        ("truncated encoding", "modelpatch:"),
    ],
)
def test_a_hostile_patch_is_refused_naming_its_field_and_the_board_keeps_its_model(
    dut: BoardDriver, hil_board: HilTarget, model_a: bytes, model_b: bytes, hostile: str, field: str
) -> None:
    board = hil_board.emulated
    dut.send_model(model_a)
    good = patch_of(model_a, model_b)
    if hostile == "offset past the model":
        patch = dataclasses.replace(good, **far_positions(model_a))  # type: ignore[arg-type]
    elif hostile == "count above the model's bytes":
        patch = dataclasses.replace(good, count=len(model_a) + 1)
    elif hostile == "truncated positions":
        patch = dataclasses.replace(good, positions=good.positions[: len(good.positions) // 2])
    else:
        patch = dataclasses.replace(good, deltas=good.deltas[: len(good.deltas) // 2])
    payload = wire.encode(patch)
    if hostile == "truncated encoding":
        payload = payload[:-7]  # the CBOR ends inside the deltas' byte string
    begin = wire.PatchBegin(good.target, good.base, len(payload), good.size)
    with pytest.raises(BoardRefused) as refused:
        dut._stream(begin, payload, good.target, [], None)
    assert refused.value.code == ErrorCode.BAD_PATCH
    assert field in refused.value.detail.lower(), refused.value.detail
    assert dut.status().model_version == sha(model_a)  # the model in use is kept
    if board is not None:
        assert board.flash.model() == model_a and board.flash.load_progress() is None
    # Refused, the progress was cleared: the next patch starts from zero, and a good one installs.
    assert dut.send_patch(good).resumed_from == [0] and dut.status().model_version == sha(model_b)


class TestABoardWithoutTheCapability:
    @pytest.fixture
    def hil_board_options(self) -> BoardOptions:
        return BoardOptions(extra={"patch": False})

    @pytest.mark.hil_emulated(reason="makes an emulated board that declares no patches")
    def test_it_declares_none_and_gets_whole_models(
        self, dut: BoardDriver, hil_board: HilTarget, model_a: bytes, model_b: bytes, tmp_path: Path
    ) -> None:
        board = emulated(hil_board)
        assert dut.board is not None and not dut.board.patch
        dut.send_model(model_a)
        report = dut.update_model(model_b, patch_of(model_a, model_b))
        assert report.kind == "model" and report.fallback == ""
        assert board.received == {"model": len(model_a) + len(model_b), "patch": 0}
        with pytest.raises(BoardRefused) as refused:  # asked anyway, it refuses the message
            dut.send_patch(patch_of(model_b, model_a))
        assert refused.value.code == ErrorCode.UNSUPPORTED
        assert dut.status().model_version == sha(model_b)


def test_a_patch_begin_above_the_serial_message_limit_is_read_back() -> None:
    """The C board takes a patch as large as its slot and echoes PATCH_BEGIN's size: the bridge must read that
    echo rather than fail the board as a protocol error (a patch above 64 KiB, the serial message limit)."""
    from firmware_bridge.messages import SERIAL_LIMITS

    begin = wire.PatchBegin(b"\x01" * 32, b"\x02" * 32, 70_000, 140_000, resume_from=65_536)
    decoded = wire.decode(wire.encode(begin), SERIAL_LIMITS)
    assert decoded == begin
    with pytest.raises(wire.WireError, match="resume"):
        wire.decode(wire.encode(dataclasses.replace(begin, resume_from=70_001)), SERIAL_LIMITS)
