"""The C reference board (firmware/) under QEMU: what only a firmware process can show.

The HIL suite itself runs against it with ``pytest tests/test_hil.py --hil-qemu mps2-an386``
(scripts/test.sh does); these tests add a power cut (QEMU stopped mid-transfer: the flash file is all
that survives) and a federation in which QEMU boards behind the bridge and Python devices train together
through Mosquitto and the gateway.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_runtime import wire
from edge_runtime.data.dataset import DataSplit
from edge_runtime.device_config import DataSection
from edge_runtime.local_training import load_local_data
from edge_runtime.member import MemberSettings
from edge_runtime.model.backends import default_backend
from edge_runtime.model.graph import Graph
from edge_runtime.model.info import quantize_input
from edge_runtime.model.reader import read_graph
from edge_runtime.model.writer import write_graph
from edge_runtime.train.build import build_model
from edge_runtime.train.evaluate import int8_metrics
from edge_runtime.transport.broker import MosquittoProcess
from edge_runtime.trust import MemberTrust
from edge_runtime.wire.serial import ErrorCode
from edge_runtime.wire.values import ValueCoding

serial = pytest.importorskip("serial")
pytestmark = pytest.mark.skipif(
    shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None,
    reason="needs qemu-system-arm and gcc-arm-none-eabi (apt; .ci/run installs them)",
)

from firmware_bridge.bridge import Bridge, PortSpec  # noqa: E402
from firmware_bridge.driver import BoardDriver  # noqa: E402
from firmware_bridge.errors import BoardRefused, BoardSilent  # noqa: E402
from firmware_bridge.framing import FLAG_START, Frame, encode_frame  # noqa: E402
from firmware_bridge.link import LinkError  # noqa: E402
from gateway.config import GatewayConfig  # noqa: E402
from gateway.service import Gateway, RoundSummary  # noqa: E402
from gateway.store import GatewayStore  # noqa: E402
from hil.qemu import QemuBoard, elf_path, start_board  # noqa: E402

from .federation import FED, WAIT, gateway_config, start_agents  # noqa: E402
from .helpers import fast_config  # noqa: E402

MACHINE = "mps2-an386"
ROUNDS = 10
BAR = 0.93  # the digits accuracy bar (tests/test_gateway.py)
BAUD = 115200


def board(tmp_path: Path, name: str, shard: str = "0/10") -> QemuBoard:
    data = load_local_data(DataSection(source="digits", shard=shard))
    return start_board(MACHINE, tmp_path / name, name, data, tmp_path / f"{name}.flash")


def test_a_power_cut_mid_transfer_keeps_what_reached_flash_and_the_model_survives_power_off(
    tmp_path: Path, digits_mlp: Graph, digits: DataSplit
) -> None:
    model = write_graph(digits_mlp)
    first = board(tmp_path, "qemu-a")
    acknowledged: list[int] = []

    def cut_power(done: int, total: int) -> None:
        acknowledged.append(done)
        if len(acknowledged) == 3:
            first.stop()  # QEMU ends: RAM is gone, only the flash file remains

    try:
        with BoardDriver(first.path, BAUD, answer_timeout=10) as driver:
            driver.hello()
            with pytest.raises((BoardSilent, LinkError, serial.SerialException)):  # the line went dead
                driver.send_model(model, progress=cut_power)
    finally:
        first.stop()
    assert 0 < acknowledged[2] < len(model)

    again = QemuBoard(MACHINE, first.image, first.flash_file).start()
    try:
        with BoardDriver(again.path, BAUD, answer_timeout=10) as driver:
            assert driver.hello().model_version is None
            report = driver.send_model(model)
            # Resumed from what the flash holds: more than nothing, at most the whole model (nothing was
            # committed: HELLO said no model). Not bounded by the acks seen at the cut: chunks in flight when
            # the power went were received and written while QEMU was being stopped.
            assert 0 < report.resumed_from[0] <= len(model)
            assert driver.status().model_version == hashlib.sha256(model).digest()
    finally:
        again.stop()

    powered = QemuBoard(MACHINE, first.image, first.flash_file).start()  # a cold boot from the flash file
    try:
        with BoardDriver(powered.path, BAUD, answer_timeout=10) as driver:
            assert driver.hello().model_version == hashlib.sha256(model).digest()
            x = quantize_input(digits_mlp, digits.test.x[:5])
            host = default_backend().load(model).run_batch(x)[0]
            for i in range(len(x)):
                assert driver.infer(x[i]).output.tolist() == host[i].reshape(-1).tolist()
    finally:
        powered.stop()


def test_the_c_boards_free_ram_is_what_the_linker_leaves_of_its_ram(tmp_path: Path) -> None:
    """STATUS's free RAM is HELLO's RAM less .data, .bss, the stack and the 256 bytes of reset reason outside
    every section: the figure `make -C firmware ram` prints (the board counted those 256 bytes as free)."""
    qemu = board(tmp_path, "qemu-ram")
    try:
        with BoardDriver(qemu.path, BAUD, answer_timeout=10) as driver:
            hello = driver.hello()
            free = driver.status().free_ram
    finally:
        qemu.stop()
    report = subprocess.run(
        [sys.executable, "tools/ram_report.py", str(elf_path(MACHINE))],
        cwd=Path(__file__).parent.parent / "firmware",
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    used = int(re.search(r"^RAM: ([\d,]+) B of", report, re.M).group(1).replace(",", ""))  # type: ignore[union-attr]
    assert hello.ram == 256 * 1024
    assert free == hello.ram - used - 256
    assert f"free: {free:,} B" in report


def test_the_c_board_refuses_what_it_cannot_do_with_the_specs_error_codes(tmp_path: Path, digits_mlp: Graph) -> None:
    model = write_graph(digits_mlp)
    version = hashlib.sha256(model).digest()
    task = wire.Task(task_id=b"refusals-task-01", round=1, base_version=version, epochs=1, learning_rate=0.05,
                     density=0.1, deadline=int(time.time()) + 300)  # fmt: skip
    qemu = board(tmp_path, "qemu-e")

    def refused(call: Callable[[], object]) -> ErrorCode:
        with pytest.raises(BoardRefused) as caught:
            call()
        return caught.value.code

    try:
        with BoardDriver(qemu.path, BAUD, answer_timeout=10) as driver:
            driver.hello()
            assert refused(lambda: driver.infer(np.zeros(64, np.int8))) == ErrorCode.NO_MODEL
            assert refused(lambda: driver.train(task)) == ErrorCode.NO_MODEL
            too_big = wire.ModelBegin(version, 600 * 1024)  # a flash slot is 480 KiB
            assert refused(lambda: driver._request(too_big, wire.ModelBegin)) == ErrorCode.NO_FLASH
            assert refused(lambda: driver._request(wire.ModelCommit(version), wire.Status)) == ErrorCode.BAD_OFFSET
            junk = bytes(range(256)) * 8  # hashes right, is no TFLite model
            assert refused(lambda: driver.send_model(junk)) == ErrorCode.MALFORMED
            result = wire.InferResult(np.zeros(1, np.int8))  # a message only a board sends
            assert refused(lambda: driver._request(result, wire.Status)) == ErrorCode.UNSUPPORTED
            driver.send_model(model)
            other = dataclasses.replace(task, base_version=hashlib.sha256(b"another model").digest())
            assert refused(lambda: driver.train(other)) == ErrorCode.NO_MODEL
            noisy = dataclasses.replace(task, clip=1.0, noise=0.5)  # local DP needs entropy the board lacks
            assert refused(lambda: driver.train(noisy)) == ErrorCode.UNSUPPORTED
            assert driver.status().last_error == ErrorCode.UNSUPPORTED
            assert driver.status().model_version == version  # none of it touched the installed model
    finally:
        qemu.stop()


def test_hostile_frames_and_small_frames_leave_the_c_board_answering_with_its_model_intact(
    tmp_path: Path, digits_mlp: Graph, digits: DataSplit
) -> None:
    """What the host-side fuzz harness (tests/test_firmware_fuzz.py) found, on the ARM build under QEMU: a frame
    with a good CRC and a payload past the board's buffer (zeros: one line byte each, so it fits the receive
    buffer) overran the message; a message with bytes after its map was taken; and with 64-byte frames agreed,
    an ERROR with a long detail and the answer to a second HELLO were never sent. A model with more outputs
    than the board's sample buffer was installed, and the evaluation before training wrote past that buffer."""
    model = write_graph(digits_mlp)
    version = hashlib.sha256(model).digest()
    wide = build_model("mlp", digits.train.x, [str(i) for i in range(300)], seed=0)
    wide_model = write_graph(dataclasses.replace(wide, metadata={}))  # no class names: labels used as they are
    qemu = board(tmp_path, "qemu-x")
    try:
        with BoardDriver(qemu.path, BAUD, answer_timeout=10) as driver:
            driver.hello()
            driver.send_model(model)
            oversized = Frame(type=wire.Status.TYPE, seq=0, ack=0, flags=FLAG_START, payload=bytes(4096 + 17))
            driver.port.write(encode_frame(oversized))
            driver.port.write(b"\x55" * 10_000 + b"\x00")  # longer than any frame: discarded to the delimiter
            assert driver.status().model_version == version

            driver.link.send(wire.Status.TYPE, wire.encode(wire.Status(state=0)) + b"\x00")
            with pytest.raises(BoardRefused) as trailing:
                driver._next(10)
            assert trailing.value.code == ErrorCode.MALFORMED

            driver.max_frame = 64
            assert driver.hello().max_frame == 64
            with pytest.raises(BoardRefused) as mismatch:  # its detail does not fit 64 bytes whole
                driver._transfer(b"12345678", hashlib.sha256(b"other bytes").digest(), [], None)
            assert mismatch.value.code == ErrorCode.HASH_MISMATCH
            driver.max_frame = 4096
            assert driver.hello().max_frame == 4096  # the answer is larger than the 64 bytes agreed before
            assert driver.status().model_version == version
            assert driver.infer(np.zeros(64, np.int8)).output.shape == (10,)

            # 300 class scores: more than the board's one-sample output buffer (256), which the evaluation
            # before training wrote past; refused at commit now, the old model kept
            with pytest.raises(BoardRefused) as wide:
                driver.send_model(wide_model)
            assert wide.value.code == ErrorCode.NO_MEMORY and "300" in wide.value.detail
            assert driver.status().model_version == version
    finally:
        qemu.stop()


class NoisyLine:
    """A pyserial port whose line flips one bit in about every ``every``-th byte, both ways, from a seeded generator:
    what the emulator's ``ber`` fault does to its pty, done on the host's side of the C board's."""

    def __init__(self, port: Any, every: int, seed: int) -> None:
        self._port = port
        self._rng = np.random.default_rng(seed)
        self._every = every
        self.flipped = 0

    def _damage(self, data: bytes) -> bytes:
        hits = np.flatnonzero(self._rng.random(len(data)) < 1 / self._every)
        if not hits.size:
            return data
        out = bytearray(data)
        for at in hits:
            out[at] ^= 1 << int(self._rng.integers(8))
        self.flipped += int(hits.size)
        return bytes(out)

    def write(self, data: bytes) -> int:
        self._port.write(self._damage(data))
        return len(data)

    def read(self, size: int = 1) -> bytes:
        return self._damage(self._port.read(size))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._port, name)


def test_bit_errors_both_ways_are_recovered_by_the_c_boards_link(tmp_path: Path, digits_mlp: Graph) -> None:
    model = write_graph(digits_mlp)
    qemu = board(tmp_path, "qemu-n")
    line = NoisyLine(serial.serial_for_url(qemu.path, baudrate=BAUD, timeout=0.05), every=3000, seed=5)
    try:
        with BoardDriver(qemu.path, BAUD, port=line, answer_timeout=10) as driver:
            driver.hello()
            report = driver.send_model(model)
            assert line.flipped > 0 and report.retransmissions > 0  # damaged frames were dropped and sent again
            assert driver.status().model_version == hashlib.sha256(model).digest()  # the board hashed every byte
    finally:
        qemu.stop()


def test_a_wrong_hash_is_refused_and_the_board_boots_its_old_model(
    tmp_path: Path, digits_mlp: Graph, digits: DataSplit
) -> None:
    model_a = write_graph(digits_mlp)
    model_b = write_graph(build_model("mlp", digits.train.x, digits.train.classes, seed=1))
    qemu = board(tmp_path, "qemu-h")
    try:
        with BoardDriver(qemu.path, BAUD, answer_timeout=10) as driver:
            driver.hello()
            driver.send_model(model_a)
            with pytest.raises(BoardRefused) as refused:
                driver._transfer(model_b, hashlib.sha256(model_b + b"!").digest(), [], None)  # other bytes
            assert refused.value.code == ErrorCode.HASH_MISMATCH
            assert driver.status().model_version == hashlib.sha256(model_a).digest()
    finally:
        qemu.stop()
    cold = QemuBoard(MACHINE, qemu.image, qemu.flash_file).start()
    try:
        with BoardDriver(cold.path, BAUD, answer_timeout=10) as driver:
            assert driver.hello().model_version == hashlib.sha256(model_a).digest()
    finally:
        cold.stop()


def test_an_update_larger_than_the_frame_arrives_in_fragments(tmp_path: Path, digits_mlp: Graph) -> None:
    """A dense float32 update of the head (1.3 KB) over 256-byte frames: FRAGMENTs the driver reassembles."""
    model = write_graph(digits_mlp)
    qemu = board(tmp_path, "qemu-f")
    try:
        with BoardDriver(qemu.path, BAUD, max_frame=256, answer_timeout=60) as driver:
            assert driver.hello().max_frame == 256
            driver.send_model(model)
            task = wire.Task(
                task_id=b"fragments-task-1", round=1, base_version=hashlib.sha256(model).digest(), epochs=1,
                learning_rate=0.05, density=1.0, deadline=int(time.time()) + 300, value_coding=int(ValueCoding.FLOAT32),
            )  # fmt: skip
            update, raw = driver.train(task)
            assert len(raw) > 4 * 256 and wire.encode(wire.decode(raw, expect=wire.Update)) == raw
            assert sum(t.nnz for t in update.tensors) == 32 * 10 + 10  # every entry of the head, as float32
            assert all(t.values.coding == ValueCoding.FLOAT32 for t in update.tensors)
    finally:
        qemu.stop()


def test_a_reset_mid_transfer_resumes_where_the_boards_flash_left_off(tmp_path: Path, digits_mlp: Graph) -> None:
    """The reset button (QEMU's system_reset) pressed during a transfer, as the emulator's reset-at fault does."""
    model = write_graph(digits_mlp)
    qemu = board(tmp_path, "qemu-r")
    pressed: list[int] = []

    def press_reset(done: int, total: int) -> None:
        if not pressed and done >= total // 2:
            pressed.append(done)
            qemu.reset()

    try:
        with BoardDriver(qemu.path, BAUD, answer_timeout=10) as driver:
            driver.hello()
            report = driver.send_model(model, progress=press_reset)
            assert report.resets == 1 and report.resumed_from[0] == 0
            assert 0 < report.resumed_from[1] <= pressed[0]  # what reached flash was kept and not sent again
            assert driver.status().model_version == hashlib.sha256(model).digest()
    finally:
        qemu.stop()


def test_qemu_boards_and_python_devices_train_together_through_the_bridge_and_the_gateway(
    broker: MosquittoProcess, tmp_path: Path, initial_model: Path, digits: DataSplit
) -> None:
    """Two C boards under QEMU (behind one bridge) and five Python devices (Dirichlet(0.5) shares) train the digits
    MLP from scratch with FedAvgM: the devices the whole model, the boards its last layer (what they can), and
    the federation reaches the digits accuracy bar."""
    backend = default_backend()
    settings = gateway_config(
        broker, tmp_path / "gw", initial_model, rounds=ROUNDS, min_devices=7, epochs=5, learning_rate=0.05,
        density=0.1, deadline=120.0,
    )  # fmt: skip
    settings["strategy"] = {"name": "fedavgm", "momentum": 0.8}
    gateway = Gateway(GatewayConfig.from_mapping(settings, env={}))
    accuracy: dict[int, float] = {}

    def score(summary: RoundSummary) -> None:
        graph = read_graph(gateway.model)
        x = quantize_input(graph, digits.test.x)
        accuracy[summary.round] = int8_metrics(backend, gateway.model, graph, x, digits.test.y)["accuracy"]

    start_graph = read_graph(initial_model.read_bytes())
    initial = int8_metrics(
        backend, initial_model.read_bytes(), start_graph, quantize_input(start_graph, digits.test.x), digits.test.y
    )["accuracy"]
    gateway.on_round_closed.append(score)
    boards = [board(tmp_path, f"qemu-{i}", f"{i}/10") for i in range(2)]
    member = MemberSettings(
        device_id="", federation=FED, storage=tmp_path / "bridge", broker=fast_config(broker, protocol="auto"),
        resend_after=5.0, trust=MemberTrust.insecure(),
    )  # fmt: skip
    bridge = Bridge([PortSpec(b.path) for b in boards], member, baud=BAUD, heartbeat=1.0).start()
    gateway.start()
    agents = start_agents(broker, tmp_path, digits, backend, 5)
    try:
        assert gateway.finished.wait(WAIT * 12), f"the federation did not finish: {accuracy}"
        assert {m.board_version for m in bridge.members.values()} == {gateway.version}  # streamed every model
    finally:
        for agent in agents:
            agent.stop(timeout=5)
        gateway.stop()
        bridge.stop()
        for b in boards:
            b.stop()
    store = GatewayStore(tmp_path / "gw" / "gateway.db")
    rows = [r for r in store.rounds() if r.mode == "sync"]
    assert [r.status for r in rows] == ["closed"] * ROUNDS
    assert all(store.round_counts(r.round)["train"] == 7 for r in rows)  # both boards and all five devices
    assert store.refusals() == []
    assert initial < 0.2 and max(accuracy.values()) >= BAR, f"int8 test accuracy by round {accuracy}"
