"""The serial bridge end to end: emulated boards on real ptys, a real Mosquitto, the real gateway."""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.agent import load_local_data
from edge_runtime.device_config import DataSection
from edge_runtime.failures import FailureReason
from edge_runtime.member import MemberSettings
from edge_runtime.model.graph import Graph
from edge_runtime.model.writer import write_graph
from edge_runtime.model_store import ModelStore
from edge_runtime.train.build import build_model
from edge_runtime.transport.broker import MosquittoProcess
from edge_runtime.transport.mqtt import BrokerConfig
from edge_runtime.transport.topics import Topics
from edge_runtime.trust import MemberTrust
from edge_runtime.wire.serial import MSG_HELLO, MSG_MODEL_DATA
from tests.helpers import INSECURE, fast_config, watch_presence

pytest.importorskip("serial")
pytest.importorskip("tflite_micro")

from firmware_bridge.bridge import Bridge, PortSpec
from firmware_bridge.driver import BoardDriver
from firmware_bridge.framing import decode_frame
from firmware_bridge.member import BoardMember
from gateway.config import GatewayConfig
from gateway.service import Gateway
from gateway.store import GatewayStore
from hil.board import BoardSpec, EmulatedBoard

BAUD = 921600
FED = "bridge-test"
WAIT = 90.0  # upper bounds for loopback delivery, never performance assertions


def make_board(tmp_path: Path, name: str, shard: str) -> EmulatedBoard:
    data = load_local_data(DataSection(source="digits", shard=shard))
    return EmulatedBoard(tmp_path / f"{name}.flash", BoardSpec(baud=BAUD, board_id=name), data=data).start()


class CorruptOnce:
    """A pyserial port that flips one bit in the first frame of type ``kind`` the host writes: damage on the line.

    Picked by type, not by position: the host's bare acknowledgements fall between its requests wherever the
    board's replies happen to arrive, so "the third frame" was sometimes an acknowledgement, which nobody resends.
    """

    def __init__(self, port: Any, kind: int) -> None:
        self._port = port
        self._kind = kind
        self.corrupted = False

    def write(self, data: bytes) -> int:
        if not self.corrupted and decode_frame(data[:-1]).type == self._kind:
            damaged = bytearray(data)
            damaged[len(damaged) // 2] ^= 0x10
            if 0 not in damaged[:-1]:
                data, self.corrupted = bytes(damaged), True
        return int(self._port.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._port, name)


def test_a_corrupted_frame_is_resent_and_a_reset_mid_transfer_resumes(tmp_path: Path, digits_mlp: Graph) -> None:
    import serial

    model = write_graph(digits_mlp)
    board = make_board(tmp_path, "b1", "0/10")
    port = CorruptOnce(serial.serial_for_url(board.path, baudrate=BAUD, timeout=0.05), MSG_MODEL_DATA)
    try:
        with BoardDriver(board.path, baud=BAUD, port=port) as driver:
            driver.hello()
            halfway = threading.Event()

            def progress(done: int, total: int) -> None:
                if done >= total // 2 and not halfway.is_set():
                    halfway.set()
                    board.reset()  # the reset button, pressed with half the model on the board

            report = driver.send_model(model, progress=progress)
            assert port.corrupted and board.link is not None
            assert report.retransmissions >= 1  # the damaged frame went again; CRC-32 kept it off the flash
            assert report.resets == 1 and report.resumed_from[0] == 0
            assert 0 < report.resumed_from[1] < len(model)  # from the board's last written chunk, not from zero
            assert board.model_version == hashlib.sha256(model).digest()
            assert driver.status().model_version == board.model_version
            assert board.flash.model() == model
    finally:
        board.stop()


def test_boards_train_a_round_through_the_gateway_and_a_silent_board_is_reported_dead(
    broker: MosquittoProcess, tmp_path: Path, digits_mlp: Graph
) -> None:
    model_path = tmp_path / "initial.tflite"
    model_path.write_bytes(write_graph(digits_mlp))
    config = GatewayConfig.from_mapping(
        {
            "gateway": {"federation": FED, "storage": str(tmp_path / "gw"), "model": str(model_path),
                        "trainable_layers": 1},
            "rounds": {"rounds": 2, "min_devices": 2, "deadline": 120.0, "report_every": 1, "density": 0.2},
            "broker": {"url": broker.url, "backoff_base": 0.05, "backoff_cap": 0.5},
            "trust": INSECURE,  # signatures are tests/test_signatures.py's
        },
        env={},
    )  # fmt: skip
    boards = [make_board(tmp_path, f"mcu-{i}", f"{i}/10") for i in range(2)]
    settings = MemberSettings(
        device_id="",
        federation=FED,
        storage=tmp_path / "bridge",
        broker=fast_config(broker, protocol="auto"),
        resend_after=5.0,
        trust=MemberTrust.insecure(),
    )
    watcher, presence = watch_presence(broker, Topics(FED).presence("mcu-1"), "watch-mcu-1")
    bridge = Bridge([PortSpec(b.path) for b in boards], settings, baud=BAUD, heartbeat=0.5).start()
    gateway = Gateway(config).start()
    try:
        assert gateway.finished.wait(WAIT * 3), "the federation of two boards did not finish"
        store = GatewayStore(tmp_path / "gw" / "gateway.db")
        rounds = [r for r in store.rounds() if r.mode == "sync"]
        assert [r.status for r in rounds] == ["closed", "closed"]
        assert all(store.round_counts(r.round)["train"] == 2 for r in rounds)  # both boards' updates, every round
        assert store.refusals() == []
        assert {m.board_version for m in bridge.members.values()} == {gateway.version}  # streamed the new model
        assert all(b.model_version == gateway.version for b in boards)

        # A board that hangs is announced dead on MQTT; powered again, it is announced alive.
        presence.wait_until(lambda got: got and got[-1].online, WAIT, "mcu-1's birth message")
        boards[1].hang()
        presence.wait_until(lambda got: not got[-1].online, WAIT, "the silent board to be reported dead")
        assert not bridge.members["mcu-1"].alive
        boards[1].power_cycle()
        presence.wait_until(lambda got: got[-1].online, WAIT, "the board to be announced alive again")
        assert bridge.members["mcu-1"].alive
    finally:
        gateway.stop()
        bridge.stop()
        watcher.stop()
        for board in boards:
            board.stop()


class InstallsWhileRead(ModelStore):
    """A model store into which the fetcher's thread installs ``newer`` just after the bridge's first read of it."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.newer: bytes | None = None

    def _install_once(self) -> None:
        newer, self.newer = self.newer, None
        if newer is not None:
            self.install(newer, hashlib.sha256(newer).digest())

    @property
    def current_version(self) -> bytes | None:
        version = super().current_version
        self._install_once()
        return version

    def current(self) -> bytes | None:
        model = super().current()
        self._install_once()
        return model

    def get(self, version: bytes) -> bytes | None:
        model = super().get(version)
        self._install_once()
        return model


def test_a_model_installed_while_the_bridge_reads_it_is_not_recorded_as_on_the_board(
    tmp_path: Path, digits_mlp: Graph
) -> None:
    """The bridge reads the installed model while the fetcher's thread may install the next one. Reading the
    model and then its version apart paired the old bytes with the new version: the board kept the old model, the
    bridge recorded the new one as on the board, and the next task for it was refused (NO_MODEL) and set aside
    without a transfer, so its round waited for its deadline."""
    old = write_graph(digits_mlp)
    digits = load_local_data(DataSection(source="digits", shard="0/10"))
    new = write_graph(build_model("mlp", digits.train.x, digits.train.classes, seed=1))
    assert new != old
    board = make_board(tmp_path, "mcu-0", "0/10")
    settings = MemberSettings(device_id="mcu-0", federation=FED, storage=tmp_path / "bridge",
                              broker=BrokerConfig(url="mqtt://127.0.0.1:1"), trust=MemberTrust.insecure())  # fmt: skip
    driver = BoardDriver(board.path, baud=BAUD)
    try:
        driver.hello()
        member = BoardMember(driver, settings)  # never started: nothing of it goes to a broker
        store = InstallsWhileRead(settings.storage / "models")
        store.install(old, hashlib.sha256(old).digest())
        store.newer = new
        member.store = store
        with member._line:
            member._bring_board_to_current_model()
        assert member.board_version == board.model_version  # what the bridge records is what the board holds
        with member._line:
            member._bring_board_to_current_model()  # the next heartbeat brings it to the version installed since
        assert member.board_version == board.model_version == hashlib.sha256(new).digest()
    finally:
        driver.close()
        board.stop()


def test_a_board_that_refuses_its_task_is_reported_and_the_round_closes_without_it(
    broker: MosquittoProcess, tmp_path: Path, digits_mlp: Graph
) -> None:
    model = write_graph(digits_mlp)
    model_path = tmp_path / "initial.tflite"
    model_path.write_bytes(model)
    config = GatewayConfig.from_mapping(
        {
            "gateway": {"federation": FED, "storage": str(tmp_path / "gw"), "model": str(model_path),
                        "trainable_layers": 1},
            "rounds": {"rounds": 1, "min_devices": 2, "deadline": 600.0, "density": 0.2},
            "broker": {"url": broker.url, "backoff_base": 0.05, "backoff_cap": 0.5},
            "trust": INSECURE,  # signatures are tests/test_signatures.py's
        },
        env={},
    )  # fmt: skip
    data = load_local_data(DataSection(source="digits", shard="1/10"))
    probe = EmulatedBoard(tmp_path / "probe.flash", BoardSpec(board_id="probe"), data=data)
    need = probe.memory_report(model, config.rounds.batch_size, config.rounds.density)
    short = BoardSpec(baud=BAUD, board_id="mcu-small", ram=need.total - 1)  # loads the model, cannot train it
    boards = [make_board(tmp_path, "mcu-ok", "0/10"), EmulatedBoard(tmp_path / "s.flash", short, data=data).start()]
    settings = MemberSettings(device_id="", federation=FED, storage=tmp_path / "bridge",
                              broker=fast_config(broker, protocol="auto"), resend_after=5.0,
                              trust=MemberTrust.insecure())  # fmt: skip
    bridge = Bridge([PortSpec(b.path) for b in boards], settings, baud=BAUD, heartbeat=0.5).start()
    gateway = Gateway(config).start()
    try:
        assert gateway.finished.wait(WAIT * 3), "the round did not end"
        store = GatewayStore(tmp_path / "gw" / "gateway.db")
        failure = store.failures()[0]
        assert (failure["device"], failure["round"]) == ("mcu-small", 1)
        assert failure["reason"] == int(FailureReason.NO_MEMORY) and "training needs" in failure["detail"]
        round1 = next(r for r in store.rounds() if r.round == 1)
        assert round1.status == "closed" and round1.closed is not None and round1.closed < round1.deadline
        assert [u.device for u in store.round_updates(1, "train")] == ["mcu-ok"]
        store.close()
    finally:
        gateway.stop()
        bridge.stop()
        for board in boards:
            board.stop()


class Chatty(EmulatedBoard):
    """A board that logs a burst of lines before it answers each HELLO: firmware with a log call in a loop."""

    lines = 300

    def _dispatch(self, frame: Any) -> None:
        if frame.type == MSG_HELLO:
            for i in range(self.lines):
                self._log(6, f"tick {i}")
        super()._dispatch(frame)


def test_a_board_that_logs_in_a_loop_is_heard_at_a_bounded_rate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The driver said every LOG line a board sent, at the board's level: a board logging in a loop through a
    long request put hundreds of lines a second into the bridge's journal, crowding out the bridge's own."""
    board = Chatty(tmp_path / "chatty.flash", BoardSpec(baud=BAUD, board_id="chatty")).start()
    try:
        caplog.set_level(logging.INFO, logger="firmware_bridge.driver")
        with BoardDriver(board.path, baud=BAUD) as driver:
            driver.hello()
            assert [m.text for m in driver.logs][-1] == f"tick {Chatty.lines - 1}"  # every line was read
            assert len(driver.logs) == 200  # the last 200 kept
    finally:
        board.stop()
    said = [r.getMessage() for r in caplog.records if r.name == "firmware_bridge.driver"]
    said = [line for line in said if board.path in line]
    assert len(said) < Chatty.lines // 10, len(said)  # it was one line per board line
    assert said[:2] == [f"board {board.path}: tick 0", f"board {board.path}: tick 1"] and "tick" not in said[-1]
