"""HIL: the board behind a real pty, through the pytest plugin's fixtures (``dut``, ``hil_board``).

Run against hardware with ``pytest tests/test_hil.py --hil-port /dev/ttyACM0``, or against the C
firmware under QEMU with ``--hil-qemu mps2-an386``: the tests marked ``hil_emulated`` (fault
injection, flash inspection; each says why) are then skipped with that reason, the rest run on the
board as they run here on the emulator.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import time
from pathlib import Path

import numpy as np
import pytest

from edge_runtime import wire
from edge_runtime.data.dataset import DataSplit
from edge_runtime.model.backends import default_backend
from edge_runtime.model.graph import Graph
from edge_runtime.model.info import quantize_input
from edge_runtime.model.schema import OPCODE_CODES
from edge_runtime.model.writer import write_graph
from edge_runtime.train.build import build_model
from edge_runtime.wire.serial import ErrorCode

pytest.importorskip("serial")
pytest.importorskip("cobs")

from firmware_bridge.driver import BoardDriver, chunk_capacity
from firmware_bridge.errors import BoardRefused
from hil.pytest_plugin import BoardOptions, HilTarget


@pytest.fixture(scope="module")
def model_a(digits_mlp: Graph) -> bytes:
    return write_graph(digits_mlp)


@pytest.fixture(scope="module")
def model_b(digits: DataSplit) -> bytes:
    return write_graph(build_model("mlp", digits.train.x, digits.train.classes, seed=1))


def sha(model: bytes) -> bytes:
    return hashlib.sha256(model).digest()


def emulated(hil_board: HilTarget):  # type: ignore[no-untyped-def]
    assert hil_board.emulated is not None
    return hil_board.emulated


def test_handshake_reports_the_boards_capabilities(dut: BoardDriver) -> None:
    hello = dut.board
    assert hello is not None and hello.protocol == 1
    assert hello.ram > 0 and hello.flash > 0 and 0 < hello.arena < hello.ram
    assert OPCODE_CODES["FULLY_CONNECTED"] in hello.ops
    assert hello.board_id and hello.firmware
    assert 64 <= hello.max_frame <= dut.max_frame
    assert dut.link.max_payload == hello.max_frame  # both ends use the agreed frame size from here on
    assert dut.status().state == 0


def test_a_model_transfer_installs_the_model_and_inference_equals_the_host_interpreter(
    dut: BoardDriver, model_a: bytes, digits: DataSplit, digits_mlp: Graph
) -> None:
    report = dut.send_model(model_a)
    assert report.size == len(model_a) and report.resets == 0
    assert dut.status().model_version == sha(model_a)
    x = quantize_input(digits_mlp, digits.test.x[:20])
    host = default_backend().load(model_a).run_batch(x)[0]
    for i in range(len(x)):
        np.testing.assert_array_equal(dut.infer(x[i]).output, host[i].reshape(-1))
    with pytest.raises(BoardRefused) as refused:
        dut.infer(np.zeros(7, np.int8))
    assert refused.value.code == ErrorCode.BAD_INPUT


@pytest.mark.hil_emulated(reason="injects a watchdog reset at a chosen byte and reads the board's reset log")
def test_a_reset_at_a_random_byte_resumes_where_the_board_left_off(
    dut: BoardDriver, hil_board: HilTarget, model_a: bytes
) -> None:
    board = emulated(hil_board)
    chunk = chunk_capacity(dut.link.max_payload)
    at = random.Random().randrange(chunk, len(model_a))  # past the first chunk, so there is something to keep
    board.faults.reset_at_byte = at
    report = dut.send_model(model_a)
    assert report.resets == 1 and board.reset_reasons == [1]  # watchdog
    # The chunk holding byte `at` was lost with the reset; every chunk before it was kept and not sent again. The
    # chunk starts at a multiple of the chunk size unless a resend under load halved the chunks before the reset.
    assert report.resumed_from[0] == 0 and len(report.resumed_from) == 2, f"reset at byte {at}"
    resumed = report.resumed_from[1]
    assert at - chunk < resumed <= at, f"reset at byte {at}, resumed from {resumed}"
    if report.retransmissions == 0:
        assert resumed == at - at % chunk, f"reset at byte {at}"
    assert board.model_version == sha(model_a)
    assert dut.status().model_version == sha(model_a)


@pytest.mark.hil_emulated(reason="injects a brown-out into the commit record's flash write")
def test_a_brown_out_during_the_commit_boots_the_last_good_model(
    dut: BoardDriver, hil_board: HilTarget, model_a: bytes, model_b: bytes
) -> None:
    board = emulated(hil_board)
    dut.send_model(model_a)
    board.faults.brown_out_commit = 20  # power lost 20 bytes into the commit record of model B
    report = dut.send_model(model_b)
    assert board.reset_reasons == [2]  # brown-out
    assert board.boot_versions == [None, sha(model_a)]  # the boot after the brown-out ran A, not a torn B
    assert report.resumed_from[-1] == len(model_b)  # B's bytes had all arrived: only the commit was repeated
    assert board.model_version == sha(model_b) and dut.status().model_version == sha(model_b)


@pytest.mark.hil_emulated(reason="injects a brown-out into a model data write")
def test_a_brown_out_during_a_data_write_loses_nothing_acknowledged(
    dut: BoardDriver, hil_board: HilTarget, model_a: bytes, model_b: bytes
) -> None:
    board = emulated(hil_board)
    dut.send_model(model_a)
    board.faults.brown_out_after = 5000
    report = dut.send_model(model_b)
    assert board.reset_reasons == [2] and report.resets == 1
    assert board.boot_versions == [None, sha(model_a)]
    assert board.model_version == sha(model_b)


@pytest.mark.hil_emulated(reason="reads the emulator's flash file to check the old model is kept")
def test_a_wrong_hash_is_refused_and_the_board_keeps_its_model(
    dut: BoardDriver, hil_board: HilTarget, model_a: bytes, model_b: bytes
) -> None:
    dut.send_model(model_a)
    with pytest.raises(BoardRefused) as refused:
        dut._transfer(model_b, sha(model_b + b"!"), [], None)  # announce one version, send other bytes
    assert refused.value.code == ErrorCode.HASH_MISMATCH
    assert dut.status().model_version == sha(model_a)
    assert emulated(hil_board).flash.model() == model_a


def test_under_64_byte_frames_an_errors_detail_is_cut_to_fit_and_a_second_hello_is_answered(
    dut: BoardDriver, model_a: bytes
) -> None:
    """docs/serial-protocol.md, HELLO: an ERROR's detail is cut to fit the agreed frame, and a HELLO is answered
    within the default 1024-byte frame whatever was agreed before (its answer does not fit 64 bytes)."""
    dut.send_model(model_a)
    dut.max_frame = 64
    assert dut.hello().max_frame == 64
    with pytest.raises(BoardRefused) as refused:  # the detail names sizes and does not fit 64 bytes whole
        dut._transfer(b"12345678", sha(b"other bytes"), [], None)
    assert refused.value.code == ErrorCode.HASH_MISMATCH
    error = wire.Error(ErrorCode.HASH_MISMATCH, wire.ModelCommit.TYPE, refused.value.detail)
    assert len(wire.encode(error)) <= 64
    dut.max_frame = 4096
    again = dut.hello()
    assert again.max_frame > 64 and len(wire.encode(again)) > 64
    assert dut.status().model_version == sha(model_a)


def test_an_answer_that_cannot_fit_the_frame_is_an_internal_error_and_data_past_the_size_is_no_flash(
    dut: BoardDriver, digits: DataSplit
) -> None:
    """docs/serial-protocol.md, Session: an answer other than ERROR or LOG that cannot fit the agreed frame is
    replaced by an INTERNAL error (100 int8 scores do not fit 64 bytes); error table: MODEL_DATA past the size
    MODEL_BEGIN announced is NO_FLASH."""
    # 8 inputs (the request fits 64 bytes), 100 outputs (the answer does not)
    wide = build_model("mlp", digits.train.x[:, :8], [str(i) for i in range(100)], seed=0)
    dut.send_model(write_graph(dataclasses.replace(wide, metadata={})))  # no class names: within C's bounds
    dut.max_frame = 64
    assert dut.hello().max_frame == 64
    with pytest.raises(BoardRefused) as refused:
        dut.infer(np.zeros(8, np.int8))
    assert refused.value.code == ErrorCode.INTERNAL and refused.value.refused_type == wire.Infer.TYPE
    assert refused.value.detail.startswith(f"the answer (message type {wire.InferResult.TYPE})")  # then cut to fit

    dut.max_frame = 4096
    dut.hello()
    dut._request(wire.ModelBegin(sha(b"8 bytes!"), 8), wire.ModelBegin)
    dut._in_data_phase = True
    dut._send(wire.ModelData(0, b"16 bytes, not 8!"))
    with pytest.raises(BoardRefused) as past:
        dut._next(30)
    assert past.value.code == ErrorCode.NO_FLASH and past.value.refused_type == wire.ModelData.TYPE


@pytest.mark.hil_emulated(reason="injects bit errors, dropped bytes and a slow clock on the emulated line")
@pytest.mark.parametrize(
    "faults",
    ["ber=1e-4,seed=1", "drop=2e-4,seed=2", "slow=3"],
    ids=["bit-errors", "dropped-bytes", "slow-clock"],
)
def test_each_line_fault_is_recovered_from(hil_board: HilTarget, tmp_path: Path, model_a: bytes, faults: str) -> None:
    from hil.faults import FaultPlan

    board = emulated(hil_board)
    board.port.faults = board.faults.line = FaultPlan.parse(faults).line
    with BoardDriver(hil_board.url, baud=hil_board.baud) as driver:
        driver.hello()
        report = driver.send_model(model_a)
        assert driver.status().model_version == sha(model_a)
        if "ber" in faults:
            assert board.port.faults.bits_flipped > 0 and report.retransmissions > 0
        if "drop" in faults:
            assert board.port.faults.bytes_dropped > 0 and report.retransmissions > 0
    assert board.flash.model() == model_a


@pytest.fixture
def task_for(model_a: bytes):  # type: ignore[no-untyped-def]
    def make(report: bool = True, density: float = 0.1) -> wire.Task:
        return wire.Task(
            task_id=hashlib.sha256(str(time.time_ns()).encode()).digest()[:16],
            round=1,
            base_version=sha(model_a),
            epochs=2,
            learning_rate=0.05,
            density=density,
            deadline=int(time.time()) + 120,
            report=report,
        )

    return make


def test_a_training_round_gives_an_update_the_gateway_accepts(dut: BoardDriver, model_a: bytes, task_for) -> None:  # type: ignore[no-untyped-def]
    from gateway.aggregate import StreamingAggregate
    from gateway.master import MasterModel

    dut.send_model(model_a)
    update, raw = dut.train(task_for())
    assert wire.encode(wire.decode(raw, expect=wire.Update)) == raw  # real CBOR bytes, as the bridge forwards them
    assert update.base_version == sha(model_a) and update.round == 1 and update.samples > 0
    assert {"eval_accuracy", "train_loss"} <= set(update.metrics)
    master = MasterModel(model_a, trainable_layers=1)
    head = {t.tensor for t in update.tensors}
    assert head and head <= set(master.sizes)  # entries of the last FULLY_CONNECTED layer only
    aggregate = StreamingAggregate(master.sizes)
    aggregate.add(update, 1.0)
    assert any(np.abs(v).sum() > 0 for v in aggregate.round_input().mean.values())


def test_a_board_clips_a_dp_tasks_update_through_its_residual_and_reports_the_bit(
    dut: BoardDriver, model_a: bytes, task_for
) -> None:  # type: ignore[no-untyped-def]
    """A board applies a task's clip as a Python device does (the shared compressor): to the delta plus the
    residual in its flash, before compression; what it sends is within the clip as the gateway measures it."""
    from dataclasses import replace

    from gateway.aggregate import update_norm

    dut.send_model(model_a)
    free, _ = dut.train(task_for(report=False))
    clip = float(np.float32(update_norm(free) / 4))
    task = replace(task_for(report=False), clip=clip, clip_bit=True)
    clipped, raw = dut.train(task)
    assert update_norm(wire.decode(raw, expect=wire.Update)) <= clip < update_norm(free)
    assert clipped.below_clip is False  # a quarter of what it sent unclipped: its delta plus residual was beyond it
    assert free.below_clip is None  # not asked: not sent


@pytest.mark.hil_emulated(reason="shrinks the emulated board's RAM to one byte short of the task")
def test_the_memory_report_and_refusals_of_what_does_not_fit(
    hil_board: HilTarget, dut: BoardDriver, model_a: bytes, task_for
) -> None:  # type: ignore[no-untyped-def]
    board = emulated(hil_board)
    dut.send_model(model_a)
    report = board.memory_report(batch_size=32, density=0.1)
    assert report.fits and report.arena > 0 and report.training["weights_f32"] == 4 * (32 * 10 + 10)
    assert report.total == report.arena + report.system + sum(report.training.values())
    board.spec.ram = report.total - 1  # one byte short: the board says so instead of trying
    with pytest.raises(BoardRefused) as refused:
        dut.train(task_for(density=0.1))
    assert refused.value.code == ErrorCode.NO_MEMORY and "training needs" in refused.value.detail


class TestRefusals:
    @pytest.fixture
    def hil_board_options(self) -> BoardOptions:
        return BoardOptions(ops=("FULLY_CONNECTED", "SOFTMAX"))  # a firmware built without convolutions

    @pytest.mark.hil_emulated(reason="builds a firmware without convolution kernels (BoardOptions.ops)")
    def test_a_model_with_kernels_the_firmware_lacks_is_refused(
        self, dut: BoardDriver, hil_board: HilTarget, model_a: bytes, sensor_windows: np.ndarray
    ) -> None:
        dut.send_model(model_a)
        cnn = write_graph(build_model("cnn1d", sensor_windows, [str(i) for i in range(6)], seed=0))
        with pytest.raises(BoardRefused) as refused:
            dut.send_model(cnn)
        assert refused.value.code == ErrorCode.UNSUPPORTED and "CONV_2D" in refused.value.detail
        assert dut.status().model_version == sha(model_a)


class TestSmallRam:
    @pytest.fixture
    def hil_board_options(self) -> BoardOptions:
        return BoardOptions(ram=16 * 1024, max_frame=1024)

    @pytest.mark.hil_emulated(reason="runs a 16 KiB RAM board (BoardOptions.ram)")
    def test_a_model_whose_arena_does_not_fit_is_refused(self, dut: BoardDriver, sensor_windows: np.ndarray) -> None:
        cnn = write_graph(build_model("cnn1d", sensor_windows, [str(i) for i in range(6)], seed=0))
        with pytest.raises(BoardRefused) as refused:
            dut.send_model(cnn)
        assert refused.value.code in (ErrorCode.NO_MEMORY, ErrorCode.NO_FLASH)
        assert dut.status().model_version is None
