"""Secure aggregation through Mosquitto with the real gateway and real device agents (docs/secagg.md).

Each round's sum is one SecAgg+ session over the federation's task and update topics: the gateway sees
setups, keys, sealed shares, masked inputs and unmasking shares, never an update; the sum it recovers is
exactly the sum of the devices' quantised inputs; one dropout after masking is survived, two are not, and
the round that cannot be recovered fails, recorded, with nothing published.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_runtime import wire
from edge_runtime.agent import DeviceAgent, LocalData
from edge_runtime.data.dataset import DataSplit
from edge_runtime.data.partition import device_share
from edge_runtime.model.backends import default_backend
from edge_runtime.secagg.participant import SecAggParticipant
from edge_runtime.transport.broker import MosquittoProcess
from gateway.config import GatewayConfig
from gateway.secagg import plan
from gateway.secagg_round import Outgoing
from gateway.service import Gateway
from gateway.store import GatewayStore

from .federation import WAIT, gateway_config, retained_manifest, small_update, start_agents
from .helpers import wait_for

SECAGG = {"mode": "secagg", "coordinates": 0.1, "clip": 1.0, "step_deadline": 10.0}
STEP = plan(4, 1, clip=1.0).step  # the quantisation step of [secagg] clip 1.0 at its default input bits


def secure_gateway(
    broker: MosquittoProcess, tmp_path: Path, model: Path, rounds: int, deadline: float = 60.0, **secagg: object
) -> Gateway:
    settings = gateway_config(broker, tmp_path / "gw", model, rounds=rounds, min_devices=4, deadline=deadline,
                              epochs=1, learning_rate=0.05, density=0.1)  # fmt: skip
    settings["secagg"] = SECAGG | secagg
    return Gateway(GatewayConfig.from_mapping(settings, env={}))


def record_inputs(agents: list[DeviceAgent]) -> dict[tuple[int, str], np.ndarray]:
    """Each device's quantised input per round, as its participant computed it (what the sum must equal)."""
    seen: dict[tuple[int, str], np.ndarray] = {}
    for agent in agents:
        participant: SecAggParticipant = agent.secagg
        original = participant.input_ready

        def ready(task: wire.Task, deltas: Any, original: Any = original, name: str = agent.device_id,
                  participant: SecAggParticipant = participant) -> None:  # fmt: skip
            original(task, deltas)
            seen[(task.round, name)] = participant.inputs[task.round][0].copy()

        participant.input_ready = ready  # type: ignore[method-assign]
    return seen


def record_results(gateway: Gateway) -> list[Outgoing]:
    results: list[Outgoing] = []
    original = gateway.secure.tick

    def tick(now: float) -> Outgoing:
        out = original(now)
        if out.result is not None or out.failure is not None:
            results.append(out)
        return out

    gateway.secure.tick = tick
    return results


def test_rounds_close_on_the_exact_sum_of_the_devices_inputs_and_no_update_travels(
    broker: MosquittoProcess, tmp_path: Path, initial_model: Path, digits: DataSplit
) -> None:
    gateway = secure_gateway(broker, tmp_path, initial_model, rounds=2)
    results = record_results(gateway)
    initial = gateway.version
    gateway.start()
    agents = start_agents(broker, tmp_path, digits, default_backend(), 4, scheme="iid")
    inputs = record_inputs(agents)
    try:
        assert gateway.finished.wait(WAIT * 3), "the secure federation did not finish"
    finally:
        for agent in agents:
            agent.stop(timeout=5)
        gateway.stop()
    store = GatewayStore(tmp_path / "gw" / "gateway.db")
    rows = [r for r in store.rounds() if r.mode == "sync"]
    assert [r.status for r in rows] == ["closed", "closed"]
    assert store.refusals() == []
    assert gateway.version != initial
    assert [out.round for out in results] == [1, 2] and all(out.result is not None for out in results)
    for out in results:
        assert out.result is not None
        names = sorted(out.result.survivors)
        assert names == [a.device_id for a in agents]
        got = np.concatenate([values for _, (_, values) in sorted(out.result.sum.items())])
        expected = sum(inputs[(out.round, name)] for name in names)
        assert np.array_equal(np.rint(got / STEP).astype(np.int64), expected)
    for agent in agents:
        assert all(not u.tensors for u in agent.done), "a device sent a training update in the clear"
        steps = [step for _, step in agent.secagg.answered]
        assert steps == ["advertise", "shares", "masked", "reveal"] * 2
        assert agent.secagg.refused == []


def silent_at_unmask(agent: DeviceAgent) -> None:
    """The device sends its masked input, then is gone for the unmasking (its reveal never leaves)."""
    participant: SecAggParticipant = agent.secagg
    original = participant._handle

    def handle(message: Any) -> None:
        if not isinstance(message, wire.SecAggUnmask):
            original(message)

    participant._handle = handle  # type: ignore[method-assign]


def test_one_dropout_after_masking_is_survived_and_two_fail_the_round_with_nothing_published(
    broker: MosquittoProcess, tmp_path: Path, initial_model: Path, digits: DataSplit
) -> None:
    """Four devices, a complete graph: each secret has 4 holders and threshold 3."""
    gateway = secure_gateway(broker, tmp_path, initial_model, rounds=2)
    results = record_results(gateway)
    gateway.start()
    agents = start_agents(broker, tmp_path, digits, default_backend(), 4, scheme="iid")
    inputs = record_inputs(agents)
    store = GatewayStore(tmp_path / "gw" / "gateway.db")
    try:
        silent_at_unmask(agents[0])
        wait_for(lambda: len(results) >= 1, WAIT * 3, "round 1's secure sum")
        first = results[0]
        assert first.result is not None, first.failure
        names = sorted(first.result.survivors)
        assert names == [a.device_id for a in agents]  # the silent device's input is in the sum all the same
        got = np.concatenate([values for _, (_, values) in sorted(first.result.sum.items())])
        expected = sum(inputs[(1, name)] for name in names)
        assert np.array_equal(np.rint(got / STEP).astype(np.int64), expected)
        wait_for(lambda: any(r.round == 1 and r.status == "closed" for r in store.rounds()), WAIT, "round 1 closed")
        version = next(r for r in store.rounds() if r.round == 1).new_version
        # The row is written before the gateway adopts the version: wait for the adoption, not just the row.
        wait_for(lambda: gateway.version == version, WAIT, "round 1's version adopted")
        silent_at_unmask(agents[1])
        wait_for(lambda: len(results) >= 2, WAIT * 3, "round 2's session to end")
        assert results[1].result is None and "self mask" in (results[1].failure or "")
        wait_for(lambda: any(r.round == 2 and r.status == "failed" for r in store.rounds()), WAIT, "round 2 failed")
        row = next(r for r in store.rounds() if r.round == 2)
        assert row.new_version is None and "2 shares of device d00's self mask, 3 needed" in (row.note or "")
        assert gateway.version == version and retained_manifest(broker).version == version  # nothing published
    finally:
        for agent in agents:
            agent.stop(timeout=5)
        gateway.stop()


def test_distributed_dp_noise_shares_are_summed_and_the_round_goes_into_the_ledger(
    broker: MosquittoProcess, tmp_path: Path, initial_model: Path, digits: DataSplit
) -> None:
    gateway = secure_gateway(broker, tmp_path, initial_model, rounds=1, noise_multiplier=0.5)
    results = record_results(gateway)
    gateway.start()
    agents = start_agents(broker, tmp_path, digits, default_backend(), 4, scheme="iid")
    inputs = record_inputs(agents)
    try:
        assert gateway.finished.wait(WAIT * 3), "the secure federation did not finish"
    finally:
        for agent in agents:
            agent.stop(timeout=5)
        gateway.stop()
    out = results[0]
    assert out.result is not None
    got = np.concatenate([values for _, (_, values) in sorted(out.result.sum.items())])
    expected = sum(inputs[(1, a.device_id)] for a in agents)  # each input carries its device's Skellam share
    assert np.array_equal(np.rint(got / STEP).astype(np.int64), expected)
    # The four noise shares add up to the noise planned for three (the threshold): a stddev of some 90 steps per
    # coordinate, against one or two for the clipped deltas themselves.
    fp = plan(4, len(expected), clip=1.0, noise_multiplier=0.5, min_survivors=3)
    assert 0.8 < float(np.std(expected)) / np.sqrt(2 * fp.noise * 4) < 1.25
    (entry,) = GatewayStore(tmp_path / "gw" / "gateway.db").ledger()
    assert entry.round == 1 and entry.mode == "distributed-dp" and entry.participants == 4
    assert entry.noise_multiplier == pytest.approx(0.5 * np.sqrt(4 / 3))  # noise sized for 3, summed over 4


def test_a_member_that_cannot_take_part_reports_its_task_failed_and_the_others_sum_without_it(
    broker: MosquittoProcess, tmp_path: Path, initial_model: Path, digits: DataSplit
) -> None:
    """A member without secure aggregation (no cryptography installed) sends nothing in the clear: it reports
    its task failed; the session goes on without it (it never advertised), and closes on the others' sum."""
    gateway = secure_gateway(broker, tmp_path, initial_model, rounds=1)
    results = record_results(gateway)
    gateway.start()
    agents = start_agents(broker, tmp_path, digits, default_backend(), 4, scheme="iid")
    agents[3].secagg = None
    inputs = record_inputs(agents[:3])
    try:
        wait_for(lambda: len(results) >= 1, WAIT * 3, "round 1's secure sum")
        wait_for(lambda: len(agents[3].failed) >= 1, WAIT, "the failure report of d03")
    finally:
        for agent in agents:
            agent.stop(timeout=5)
        gateway.stop()
    out = results[0]
    assert out.result is not None, out.failure
    assert sorted(out.result.survivors) == ["d00", "d01", "d02"] and out.result.dropped == ["d03"]
    got = np.concatenate([values for _, (_, values) in sorted(out.result.sum.items())])
    assert np.array_equal(np.rint(got / STEP).astype(np.int64), sum(inputs[(1, f"d0{i}")] for i in range(3)))
    assert "cannot take part in secure aggregation" in agents[3].failed[0].detail
    assert all(not u.tensors for a in agents for u in a.done)


def test_a_signed_federation_over_tls_runs_its_secure_rounds_with_every_message_signed(
    tmp_path: Path, initial_model: Path, digits: DataSplit
) -> None:
    """Provisioned (TLS, ACL, signatures on): the requests and answers travel on the topics the ACL already
    grants, signed by the gateway and by each device, and the round closes on the secure sum."""
    from tests.trust import Secured, provisioned

    devices = ["dev-a", "dev-b", "dev-c"]
    secured = Secured.start(provisioned(tmp_path / "pki", devices), tmp_path / "broker")
    settings = secured.gateway_settings(tmp_path / "gw", initial_model, rounds=1, min_devices=3, deadline=60.0,
                                        epochs=1, density=0.1)  # fmt: skip
    settings["secagg"] = SECAGG
    gateway = Gateway(GatewayConfig.from_mapping(settings, env={}))
    assert gateway.trust.signed
    results = record_results(gateway)
    shares = [device_share(digits.train, f"{i}/3", "iid", seed=0) for i in range(3)]
    agents = [DeviceAgent(secured.device_config(d), LocalData(digits.train.subset(own[:-40]),
                                                              digits.train.subset(own[-40:])), default_backend())
              for d, own in zip(devices, shares, strict=True)]  # fmt: skip
    try:
        gateway.start()
        for agent in agents:
            assert agent.trust.signed
            agent.start()
        assert gateway.finished.wait(WAIT * 3), "the signed secure federation did not finish"
    finally:
        for agent in agents:
            agent.stop(timeout=5)
        gateway.stop()
        secured.close()
    assert results[0].result is not None and sorted(results[0].result.survivors) == devices
    assert GatewayStore(tmp_path / "gw" / "gateway.db").refusals() == []
    for agent in agents:
        assert [step for _, step in agent.secagg.answered] == ["advertise", "shares", "masked", "reveal"]
        assert not agent.refusals and agent.secagg.refused == []


def test_a_training_update_in_the_clear_is_refused_in_a_secure_federation(
    broker: MosquittoProcess, tmp_path: Path, initial_model: Path
) -> None:
    """A device that ignores the session and sends a plain update (old firmware, a bug) gets a receipt refusing
    it; nothing of it enters the round."""
    from edge_runtime.transport.mqtt import BrokerConfig, MqttLink
    from tests.federation import TOPICS
    from tests.helpers import Recorder

    settings = gateway_config(broker, tmp_path / "gw", initial_model, rounds=1, min_devices=3, deadline=60.0)
    settings["secagg"] = SECAGG
    gateway = Gateway(GatewayConfig.from_mapping(settings, env={})).start()
    links, tasks, receipts = [], Recorder[wire.Task](), Recorder[wire.Receipt]()

    def on_task(topic: str, payload: bytes) -> None:
        message = wire.decode(payload)
        if isinstance(message, wire.Task):
            tasks.append(message)

    try:
        for name in ("p0", "p1", "p2"):
            link = MqttLink(BrokerConfig(url=broker.url, backoff_base=0.05, backoff_cap=0.5), f"plain-{name}")
            link.subscribe(TOPICS.task(name), on_task)
            link.subscribe(TOPICS.receipt(name), lambda _, p: receipts.append(wire.decode(p, expect=wire.Receipt)))
            links.append(link)
            link.start()
            assert link.wait_ready(WAIT)
            birth = wire.Presence(name, True, 1, 0, wire.Capabilities(ram=1 << 28, backend="plain", samples=50))
            assert link.publish(TOPICS.presence(name), wire.encode(birth), retain=True, timeout=WAIT)
        tasks.wait_until(lambda got: len(got) >= 3, WAIT, "three secure tasks")
        task = tasks.items[0]
        assert task.secure
        update = small_update("p0", task, gateway.sizes)
        assert links[0].publish(TOPICS.update("p0"), wire.encode(update), timeout=WAIT)
        receipts.wait_until(lambda got: len(got) >= 1, WAIT, "the receipt of the plain update")
        assert receipts.items[0].refused == {update.update_id: "secure aggregation: a training update in the clear "
                                                               "is refused"}  # fmt: skip
        assert gateway.open_round is not None and gateway.open_round.aggregate.count == 0
    finally:
        for link in links:
            link.stop()
        gateway.stop()
