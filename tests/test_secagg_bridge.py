"""A board behind the serial bridge in a secure round (docs/secagg.md, "The serial bridge's boards").

One emulated board on a real pty behind the real bridge, and three Python device agents, in one SecAgg+
session through Mosquitto: the board trains and sends its delta over serial to the bridge (on its side of the
trust boundary), the bridge masks it at the announced coordinates and answers every step for it. The gateway
recovers exactly the sum of the four quantised inputs, and every message on the update topics is read back off
the broker: none is an update in the clear. The board's error-feedback residual is the bridge's, on disk per
board, and a restarted bridge takes it up again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_runtime import wire
from edge_runtime.agent import load_local_data
from edge_runtime.compress.feedback import ResidualStore
from edge_runtime.data.dataset import DataSplit
from edge_runtime.device_config import DataSection
from edge_runtime.member import MemberSettings
from edge_runtime.model.backends import default_backend
from edge_runtime.secagg.participant import REQUEST_LIMITS, SecAggParticipant
from edge_runtime.transport.broker import MosquittoProcess
from edge_runtime.transport.mqtt import BrokerConfig, MqttLink
from edge_runtime.trust import MemberTrust
from gateway.config import GatewayConfig
from gateway.service import Gateway
from gateway.store import GatewayStore

from .federation import FED, TOPICS, WAIT, gateway_config, start_agents
from .helpers import Recorder, fast_config, wait_for
from .test_secagg_federation import SECAGG, STEP, record_results

pytest.importorskip("serial")
pytest.importorskip("tflite_micro")

from firmware_bridge.bridge import Bridge, PortSpec
from hil.board import BoardSpec, EmulatedBoard

BAUD = 921600
BOARD = "mcu-0"


def record_input(participant: SecAggParticipant, name: str, seen: dict[tuple[int, str], np.ndarray]) -> None:
    """Keep each round's quantised input as the participant computed it: what the sum must equal."""
    original = participant.input_ready

    def ready(task: wire.Task, deltas: Any) -> None:
        original(task, deltas)
        seen[(task.round, name)] = participant.inputs[task.round][0].copy()

    participant.input_ready = ready  # type: ignore[method-assign]


def start_bridge(broker: MosquittoProcess, storage: Path, board: EmulatedBoard) -> Bridge:
    settings = MemberSettings(device_id="", federation=FED, storage=storage,
                              broker=fast_config(broker, protocol="auto"), resend_after=5.0,
                              trust=MemberTrust.insecure())  # fmt: skip
    bridge = Bridge([PortSpec(board.path, BOARD)], settings, baud=BAUD, heartbeat=0.5).start()
    wait_for(lambda: BOARD in bridge.members, WAIT, "the board to join through the bridge")
    return bridge


def test_a_board_behind_the_bridge_and_python_devices_are_summed_exactly_and_nothing_travels_in_the_clear(
    broker: MosquittoProcess, tmp_path: Path, initial_model: Path, digits: DataSplit
) -> None:
    settings = gateway_config(broker, tmp_path / "gw", initial_model, rounds=2, min_devices=4, deadline=90.0,
                              epochs=1, learning_rate=0.05, density=0.1)  # fmt: skip
    settings["gateway"]["trainable_layers"] = 1  # type: ignore[index]  # what the board trains
    settings["secagg"] = SECAGG | {"step_deadline": 20.0}
    gateway = Gateway(GatewayConfig.from_mapping(settings, env={}))
    results = record_results(gateway)

    # Everything the members publish on their update topics, read back off the broker.
    published: Recorder[Any] = Recorder()
    watcher = MqttLink(BrokerConfig(url=broker.url, backoff_base=0.05, backoff_cap=0.5), "watch-updates")
    watcher.subscribe(TOPICS.all_updates, lambda topic, p: published.append((TOPICS.device_of(topic), p)))
    watcher.start()
    assert watcher.wait_ready(WAIT)

    data = load_local_data(DataSection(source="digits", shard="0/4"))
    board = EmulatedBoard(tmp_path / "board.flash", BoardSpec(baud=BAUD, board_id=BOARD), data=data).start()
    inputs: dict[tuple[int, str], np.ndarray] = {}
    bridge = start_bridge(broker, tmp_path / "bridge", board)
    agents = []
    try:
        member = bridge.members[BOARD]
        assert member.secagg is not None
        record_input(member.secagg, BOARD, inputs)
        gateway.start()
        agents = start_agents(broker, tmp_path, digits, default_backend(), 3, scheme="iid")
        for agent in agents:
            record_input(agent.secagg, agent.device_id, inputs)
        assert gateway.finished.wait(WAIT * 4), "the secure federation with a board did not finish"
        residual = {t: v.copy() for t, v in member.secagg.sparse.residual.items()}
        answered = [step for _, step in member.secagg.answered]
    finally:
        for agent in agents:
            agent.stop(timeout=5)
        gateway.stop()
        bridge.stop()
        watcher.stop()

    store = GatewayStore(tmp_path / "gw" / "gateway.db")
    assert [r.status for r in store.rounds() if r.mode == "sync"] == ["closed", "closed"]
    assert store.refusals() == [] and store.failures() == []
    assert [out.round for out in results] == [1, 2]
    for out in results:
        assert out.result is not None, out.failure
        names = sorted(out.result.survivors)
        assert names == ["d00", "d01", "d02", BOARD]
        got = np.concatenate([values for _, (_, values) in sorted(out.result.sum.items())])
        expected = sum(inputs[(out.round, name)] for name in names)
        assert np.array_equal(np.rint(got / STEP).astype(np.int64), expected)
    assert answered == ["advertise", "shares", "masked", "reveal"] * 2
    assert all(not u.tensors for u in member.done) and member.secagg.refused == []  # evaluations only

    # What reached the broker from the board (and from everyone): secure aggregation answers, no update.
    kinds: dict[str, list[str]] = {}
    for device, payload in published.items:
        message = wire.decode(payload, REQUEST_LIMITS)
        assert not (isinstance(message, wire.Update) and message.tensors), f"{device} sent an update in the clear"
        kinds.setdefault(device, []).append(type(message).__name__)
    assert kinds[BOARD].count("SecAggMasked") == 2

    # The board's residual is the bridge's, on disk in the board's own folder, and a restarted bridge has it.
    path = tmp_path / "bridge" / BOARD / "secagg_residual.npz"
    on_disk = ResidualStore(path).load()
    assert sorted(on_disk) == sorted(residual) and residual
    assert all(np.array_equal(on_disk[t], residual[t]) for t in residual)
    assert any(np.abs(v).sum() > 0 for v in residual.values())  # the unsent part of the board's delta
    again = start_bridge(broker, tmp_path / "bridge", board)
    try:
        restored = again.members[BOARD].secagg.sparse.residual
        assert all(np.array_equal(restored[t], residual[t]) for t in residual)
    finally:
        again.stop()
        board.stop()


def test_a_board_in_a_signed_federation_over_tls_answers_every_step_under_its_own_key(
    tmp_path: Path, initial_model: Path, digits: DataSplit
) -> None:
    """Provisioned (TLS, ACL, signatures on): the bridge answers for its board on the board's own topics, signed
    with the board's key from its bundle, and the gateway takes every answer (no refusal)."""
    from edge_runtime.agent import DeviceAgent, LocalData
    from edge_runtime.data.partition import device_share
    from tests.trust import FEDERATION, Secured, fast, installed, provisioned

    python, board_id = ["dev-a", "dev-b"], "mcu-a"
    secured = Secured.start(provisioned(tmp_path / "pki", [*python, board_id]), tmp_path / "broker")
    settings = secured.gateway_settings(tmp_path / "gw", initial_model, rounds=1, min_devices=3, deadline=90.0,
                                        epochs=1, density=0.1)  # fmt: skip
    settings["gateway"]["trainable_layers"] = 1  # type: ignore[index]
    settings["secagg"] = SECAGG | {"step_deadline": 20.0}
    gateway = Gateway(GatewayConfig.from_mapping(settings, env={}))
    assert gateway.trust.signed
    results = record_results(gateway)
    data = load_local_data(DataSection(source="digits", shard="0/3"))
    board = EmulatedBoard(tmp_path / "board.flash", BoardSpec(baud=BAUD, board_id=board_id), data=data).start()
    base = MemberSettings(device_id="", federation=FEDERATION, storage=tmp_path / "bridge",
                          broker=fast(BrokerConfig(url=secured.broker.url, protocol="5")), resend_after=5.0,
                          trust=MemberTrust.insecure())  # fmt: skip
    bridge = Bridge([PortSpec(board.path, board_id)], base, baud=BAUD, heartbeat=0.5,
                    bundles=installed(secured.layout, board_id).parent).start()  # fmt: skip
    shares = [device_share(digits.train, f"{i}/3", "iid", seed=0) for i in (1, 2)]
    agents = [DeviceAgent(secured.device_config(d), LocalData(digits.train.subset(own[:-40]),
                                                              digits.train.subset(own[-40:])), default_backend())
              for d, own in zip(python, shares, strict=True)]  # fmt: skip
    inputs: dict[tuple[int, str], np.ndarray] = {}
    try:
        wait_for(lambda: board_id in bridge.members, WAIT, "the board to join through the bridge")
        member = bridge.members[board_id]
        assert member.trust.signed and member.secagg is not None
        record_input(member.secagg, board_id, inputs)
        gateway.start()
        for agent in agents:
            record_input(agent.secagg, agent.device_id, inputs)
            agent.start()
        assert gateway.finished.wait(WAIT * 4), "the signed secure federation with a board did not finish"
        answered = [step for _, step in member.secagg.answered]
    finally:
        for agent in agents:
            agent.stop(timeout=5)
        gateway.stop()
        bridge.stop()
        board.stop()
        secured.close()
    out = results[0]
    assert out.result is not None, out.failure
    assert sorted(out.result.survivors) == sorted([*python, board_id])
    got = np.concatenate([values for _, (_, values) in sorted(out.result.sum.items())])
    expected = sum(inputs[(1, name)] for name in out.result.survivors)
    assert np.array_equal(np.rint(got / STEP).astype(np.int64), expected)
    assert answered == ["advertise", "shares", "masked", "reveal"] and member.secagg.refused == []
    assert GatewayStore(tmp_path / "gw" / "gateway.db").refusals() == []
