"""Secure aggregation when the broker or the gateway goes away mid-session (docs/secagg.md, "Dropouts").

A device's answers go through an outbox of their own: an answer made while Mosquitto is down reaches the
gateway once it is back, within the round, and the device is in the sum, not a dropout. A gateway restarted
mid-session fails the open secure round as it starts (recorded, nothing published): the session's secrets were
in the stopped process's memory, and waiting for its deadline would only waste the round's time.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime import wire
from edge_runtime.agent import DeviceAgent
from edge_runtime.data.dataset import DataSplit
from edge_runtime.model.backends import default_backend
from edge_runtime.secagg.participant import SecAggParticipant
from edge_runtime.transport.broker import MosquittoProcess
from gateway.service import Gateway
from gateway.store import GatewayStore

from .federation import WAIT, retained_manifest, start_agents
from .helpers import wait_for
from .test_secagg_federation import STEP, record_inputs, record_results, secure_gateway


def held_at_collect(agent: DeviceAgent) -> tuple[threading.Event, threading.Event]:
    """The device stops before masking its input until the test lets it go: (holding, release)."""
    participant: SecAggParticipant = agent.secagg
    original = participant._handle
    holding, release = threading.Event(), threading.Event()

    def handle(message: Any) -> None:
        if isinstance(message, wire.SecAggCollect):
            holding.set()
            assert release.wait(WAIT * 2), "the test never let the device mask its input"
        original(message)

    participant._handle = handle  # type: ignore[method-assign]
    return holding, release


def test_an_answer_made_while_the_broker_is_down_reaches_the_gateway_after_it_restarts(
    broker: MosquittoProcess, tmp_path: Path, initial_model: Path, digits: DataSplit
) -> None:
    gateway = secure_gateway(broker, tmp_path, initial_model, rounds=1)
    results = record_results(gateway)
    gateway.start()
    agents = start_agents(broker, tmp_path, digits, default_backend(), 4, scheme="iid")
    inputs = record_inputs(agents)
    late = agents[0]
    holding, release = held_at_collect(late)
    try:
        assert holding.wait(WAIT * 2), "d00 was never asked for its masked input"
        broker.stop()  # SIGTERM: Mosquitto saves its sessions and exits
        assert gateway.offline.wait(WAIT), "the gateway did not notice the broker was gone"
        wait_for(lambda: not late.link.connected.is_set(), WAIT, "d00 to lose the broker")
        release.set()
        wait_for(lambda: (1, "masked") in late.secagg.answered, WAIT, "d00 to make its masked input")
        assert len(late.secagg.outbox) == 1  # kept on disk while the broker is away, not lost
        broker.start()  # the same port, the same state directory
        assert gateway.finished.wait(WAIT * 3), "the round did not end after the broker came back"
        assert late.secagg.outbox.wait_empty(WAIT)
    finally:
        release.set()
        for agent in agents:
            agent.stop(timeout=5)
        gateway.stop()
    out = results[0]
    assert out.result is not None, out.failure
    assert sorted(out.result.survivors) == ["d00", "d01", "d02", "d03"] and out.result.dropped == []
    got = np.concatenate([values for _, (_, values) in sorted(out.result.sum.items())])
    expected = sum(inputs[(1, a.device_id)] for a in agents)
    assert np.array_equal(np.rint(got / STEP).astype(np.int64), expected)
    row = next(r for r in GatewayStore(tmp_path / "gw" / "gateway.db").rounds() if r.round == 1)
    assert row.status == "closed"


def test_a_gateway_restarted_mid_session_fails_the_open_secure_round_as_it_starts(
    broker: MosquittoProcess, tmp_path: Path, initial_model: Path, digits: DataSplit
) -> None:
    gateway = secure_gateway(broker, tmp_path, initial_model, rounds=1)
    initial = gateway.version
    gateway.start()
    agents = start_agents(broker, tmp_path, digits, default_backend(), 4, scheme="iid")
    holding, release = held_at_collect(agents[0])  # the session cannot finish before the restart
    again = None
    try:
        assert holding.wait(WAIT * 2), "the session never reached its collect step"
        assert gateway.open_round is not None and gateway.open_round.number == 1
        deadline = gateway.open_round.row.deadline
        gateway.stop()
        again = Gateway(gateway.config)  # the same storage: it finds round 1 open
        again.start()
        # Failed by start() itself, before any deadline: the row says why, and nothing was published.
        row = next(r for r in again.store.rounds() if r.round == 1)
        assert (row.mode, row.status) == ("sync", "failed")
        assert "restarted mid-session" in (row.note or "")
        assert row.closed is not None and row.closed < deadline and row.new_version is None
        assert again.version == initial and retained_manifest(broker).version == initial
        assert again.open_round is None or again.open_round.number != 1
    finally:
        release.set()
        for agent in agents:
            agent.stop(timeout=5)
        if again is not None:
            again.stop()
        else:
            gateway.stop()
