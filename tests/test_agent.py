"""The device agent as a federation member, through a real Mosquitto: task in, receipted update out."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_runtime import wire
from edge_runtime.agent import DeviceAgent, LocalData
from edge_runtime.data.dataset import DataSplit
from edge_runtime.data.partition import device_share
from edge_runtime.device_config import DeviceConfig
from edge_runtime.model.backends.base import Backend
from edge_runtime.model.graph import Graph
from edge_runtime.model.info import quantize_input
from edge_runtime.model.reader import read_graph
from edge_runtime.model.writer import write_graph
from edge_runtime.task_log import AnsweredTasks
from edge_runtime.train.evaluate import int8_metrics
from edge_runtime.train.trainer import Trainer, cut_for_last_layers
from edge_runtime.transport.broker import MosquittoProcess
from edge_runtime.transport.chunking import make_manifest, publish_model
from edge_runtime.transport.fragments import Reassembler
from edge_runtime.transport.mqtt import MqttLink
from edge_runtime.transport.topics import Topics
from edge_runtime.wire.cbor import dumps
from tests.helpers import INSECURE, fast_config, log_line

FED = "agent-test"
TOPICS = Topics(FED)
WAIT = 30.0  # an upper bound for loopback delivery and a few epochs of training, never a performance assertion


class GatewayStandIn:
    """What issue 5's gateway does with updates, reduced to the contract: reassemble, decode, receipt."""

    def __init__(self, broker: MosquittoProcess, manifest: wire.ModelManifest) -> None:
        self.link = MqttLink(fast_config(broker), "gateway")
        self.manifest = manifest
        self.reassembler = Reassembler()
        self.raw: list[bytes] = []
        self.updates: list[wire.Update] = []
        self.fragments = 0
        self.presence: dict[str, wire.Presence] = {}
        self.changed = threading.Condition()
        self.link.subscribe(TOPICS.all_updates, self._on_update)
        self.link.subscribe(TOPICS.all_presence, self._on_presence)
        self.link.start()
        assert self.link.wait_ready(WAIT)

    def _on_update(self, topic: str, payload: bytes) -> None:
        whole = self.reassembler.feed(TOPICS.device_of(topic), payload)
        if whole is None:
            self.fragments += 1
            return
        # As the gateway reads it: CBOR or compact (the default; its device is the topic's, its base a prefix).
        device = TOPICS.device_of(topic)
        update = wire.decode(whole, expect=wire.Update, spec=self.manifest.spec(), device=device,
                             versions=[self.manifest.version])  # fmt: skip
        self.link.publish(TOPICS.receipt(device), wire.encode(wire.Receipt([update.update_id])))
        with self.changed:
            self.raw.append(whole)
            self.updates.append(update)
            self.changed.notify_all()

    def _on_presence(self, topic: str, payload: bytes) -> None:
        presence = wire.decode(payload, expect=wire.Presence)
        with self.changed:
            self.presence[presence.device] = presence
            self.changed.notify_all()

    def wait(self, predicate: object, timeout: float = WAIT) -> bool:
        with self.changed:
            return self.changed.wait_for(predicate, timeout)  # type: ignore[arg-type]

    def publish_model(self, model: bytes) -> None:
        publish_model(self.link, TOPICS, self.manifest, make_manifest(model, self.manifest.trainable, 4096)[1])

    def send_task(self, device: str, payload: bytes) -> None:
        assert self.link.publish(TOPICS.task(device), payload, timeout=WAIT)

    def stop(self) -> None:
        self.link.stop()


def trainable_spec(graph: Graph, layers: int = 1) -> list[wire.TrainableTensor]:
    trainer = Trainer(graph, cut=cut_for_last_layers(graph, layers))
    return [wire.TrainableTensor(t, shape) for t, shape in trainer.trainable_tensors().items()]


def agent_config(broker: MosquittoProcess, storage: Path, device: str = "dev-1", **transport: object) -> DeviceConfig:
    return DeviceConfig.from_mapping(
        {
            "device": {"id": device, "federation": FED, "storage": str(storage), "trainable_layers": 1},
            "broker": {"url": broker.url, "backoff_base": 0.05, "backoff_cap": 0.5},
            "trust": INSECURE,  # signatures are tests/test_signatures.py's
            "transport": {"resend_after": 5.0, **transport},
        },
        env={},
    )


def local_data(digits: DataSplit, shard: int = 0) -> LocalData:
    own = device_share(digits.train, f"{shard}/4", "iid", seed=0)
    return LocalData(digits.train.subset(own[:-40]), digits.train.subset(own[-40:]))


def task(model_version: bytes, round_: int = 1, **kwargs: object) -> wire.Task:
    fields: dict[str, object] = {
        "epochs": 2,
        "learning_rate": 0.05,
        "density": 0.05,
        "deadline": int(time.time()) + 120,
    }
    fields.update(kwargs)
    return wire.Task(os.urandom(16), round_, model_version, **fields)  # type: ignore[arg-type]


@pytest.fixture
def federation(
    broker: MosquittoProcess, tmp_path: Path, digits: DataSplit, digits_mlp: Graph, backend: Backend
) -> Iterator[tuple[GatewayStandIn, DeviceAgent, bytes]]:
    model = write_graph(digits_mlp)
    manifest, chunks = make_manifest(model, trainable_spec(digits_mlp), 4096, federation=FED)
    gateway = GatewayStandIn(broker, manifest)
    publish_model(gateway.link, TOPICS, manifest, chunks)
    agent = DeviceAgent(agent_config(broker, tmp_path / "dev-1"), local_data(digits), backend).start()
    try:
        assert gateway.wait(
            lambda: (
                (p := gateway.presence.get("dev-1")) is not None
                and p.online
                and p.capabilities is not None
                and p.capabilities.model_version == manifest.version
            )
        ), "no birth message naming the installed model"
        yield gateway, agent, model
    finally:
        agent.stop(timeout=5)
        gateway.stop()


def test_device_trains_and_delivers_its_update_byte_exact(
    federation: tuple[GatewayStandIn, DeviceAgent, bytes],
) -> None:
    gateway, agent, model = federation
    version = gateway.manifest.version
    birth = gateway.presence["dev-1"]
    assert birth.capabilities is not None and birth.capabilities.samples == len(agent.data.train)
    assert birth.capabilities.backend == agent.backend.name

    gateway.send_task("dev-1", wire.encode(task(version, round_=1, density=0.1)))
    assert gateway.wait(lambda: len(gateway.updates) == 1)
    sent = agent.done[-1]
    # Byte-exact in the default layout (compact), and only after the gateway's spec check.
    assert gateway.raw[0] == wire.encode_compact(sent, gateway.manifest.spec())
    update = gateway.updates[0]
    assert (update.device, update.round, update.base_version) == ("dev-1", 1, version)
    assert update.samples == len(agent.data.train)
    spec = gateway.manifest.spec()
    assert {t.tensor for t in update.tensors} <= set(spec)
    kept = sum(t.nnz for t in update.tensors)
    assert kept == round(0.1 * sum(spec.values()))  # global top-k at the task's density
    assert update.metrics["train_loss"] > 0
    assert (
        set(update.activation_ranges)
        == {  # keyed by the outputs of the trained layers: the gateway recalibrates
            op.outputs[0] for op in read_graph(model).operators if op.opcode == "FULLY_CONNECTED"
        }
        & {op.outputs[0] for op in read_graph(model).operators[cut_for_last_layers(read_graph(model), 1) :]}
    )
    # The receipt empties the outbox; the error-feedback residual holds what was not sent.
    assert agent.outbox.wait_empty(WAIT), "the gateway's receipt did not empty the device's outbox"
    residual = agent.compressor.residual
    assert set(residual) == {t.tensor for t in gateway.manifest.trainable} and any(
        np.abs(r).sum() > 0 for r in residual.values()
    )

    # A quiet task (the gateway asks for reports every few rounds only) sends the delta alone.
    gateway.send_task("dev-1", wire.encode(task(version, round_=2, report=False)))
    assert gateway.wait(lambda: len(gateway.updates) == 2)
    quiet = gateway.updates[1]
    assert quiet.metrics == {} and quiet.activation_ranges == {}

    gateway.send_task("dev-1", wire.encode(task(version, round_=1, evaluate_only=True)))
    assert gateway.wait(lambda: len(gateway.updates) == 3)
    evaluation = gateway.updates[2]
    assert evaluation.tensors == [] and evaluation.samples == len(agent.data.evaluate)
    graph = read_graph(model)
    expected = int8_metrics(
        agent.backend, model, graph, quantize_input(graph, agent.data.evaluate.x), agent.data.evaluate.y
    )
    assert evaluation.metrics["eval_accuracy"] == pytest.approx(expected["accuracy"], abs=1e-6)
    assert evaluation.metrics["eval_loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert update.metrics["eval_accuracy"] == evaluation.metrics["eval_accuracy"]  # training reports it too


def test_a_task_answered_before_a_restart_is_not_answered_again_when_the_broker_delivers_it_again(
    federation: tuple[GatewayStandIn, DeviceAgent, bytes], broker: MosquittoProcess, tmp_path: Path,
    digits: DataSplit, backend: Backend, caplog: pytest.LogCaptureFixture,
) -> None:
    """A task stays valid until its deadline; a second update for it would be wasted work, and under local DP a
    second noisy release of the same data that no ledger counts."""
    gateway, agent, _ = federation
    version = gateway.manifest.version
    first = wire.encode(task(version, round_=1))
    gateway.send_task("dev-1", first)
    assert gateway.wait(lambda: len(gateway.updates) == 1)
    assert agent.outbox.wait_empty(WAIT)
    agent.stop(timeout=5)
    seq = gateway.presence["dev-1"].seq
    again = DeviceAgent(agent_config(broker, tmp_path / "dev-1"), local_data(digits), backend).start()
    try:
        assert gateway.wait(lambda: (p := gateway.presence["dev-1"]).online and p.seq > seq), "no new birth"
        with caplog.at_level(logging.INFO, logger="edge_runtime.member"), log_line(
            "edge_runtime.member", "delivered again; already handled"
        ) as replay:
            gateway.send_task("dev-1", first)  # the broker (or whoever replays it) delivers it again
            assert replay.wait(WAIT), "the restarted device did not recognise the task it had answered"
        gateway.send_task("dev-1", wire.encode(task(version, round_=2)))
        assert gateway.wait(lambda: len(gateway.updates) == 2)
        assert [u.round for u in gateway.updates] == [1, 2]  # round 1 answered once, across the restart
    finally:
        again.stop(timeout=5)


def test_hostile_payloads_on_the_device_topics_are_refused_and_logged(
    federation: tuple[GatewayStandIn, DeviceAgent, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    gateway, agent, _ = federation
    version = gateway.manifest.version
    caplog.set_level(logging.WARNING)
    wrong_schema = dict(wire.Task(bytes(16), 1, version, 1, 0.1, 0.1, int(time.time()) + 60).to_cbor())
    wrong_schema[5] = "two"  # epochs as text

    hostile = {
        "MalformedCBOR": b"\xff\x00garbage",
        "MessageTooLarge": wire.encode(wire.Receipt([os.urandom(16) for _ in range(400)])),
        "SchemaError": wire.encode(wire.Receipt([os.urandom(16)])),  # a receipt where a task belongs
        "expired": wire.encode(task(version, deadline=int(time.time()) - 5)),
    }
    for payload in hostile.values():
        gateway.send_task("dev-1", payload)
    gateway.send_task("dev-1", dumps(wrong_schema))
    # Garbage on the other topics the device listens to: the manifest and its receipts.
    gateway.link.publish(TOPICS.receipt("dev-1"), b"\x82\x01", timeout=WAIT)
    good = task(version, round_=2)
    gateway.send_task("dev-1", wire.encode(good))
    gateway.send_task("dev-1", wire.encode(good))  # a redelivered task is handled once
    assert gateway.wait(lambda: any(u.round == 2 for u in gateway.updates)), "the device stopped after hostile input"
    # A later round's task would replace round 2's had it come sooner; now, once its update is in, everything
    # before it was handled.
    gateway.send_task("dev-1", wire.encode(task(version, round_=3)))
    assert gateway.wait(lambda: any(u.round == 3 for u in gateway.updates)), "the device stopped after hostile input"
    assert [u.round for u in agent.done].count(2) == 1  # the redelivered task was not trained again
    assert sorted({u.update_id: u.round for u in gateway.updates}.values()) == [2, 3]  # by id: QoS 1 may repeat
    for reason in hostile:
        assert agent.refusals[reason] >= 1, reason
    assert agent.refusals["SchemaError"] == 2  # wrong message type and wrong field type
    text = caplog.text
    assert "task.epochs" in text and "Receipt where Task was expected" in text and "refused a receipt" in text
    assert agent.link.connected.is_set()


def test_an_update_above_the_payload_limit_travels_as_fragments(
    broker: MosquittoProcess, tmp_path: Path, digits: DataSplit, digits_mlp: Graph, backend: Backend
) -> None:
    model = write_graph(digits_mlp)
    spec = trainable_spec(digits_mlp, layers=2)
    manifest, chunks = make_manifest(model, spec, 4096, federation=FED)
    gateway = GatewayStandIn(broker, manifest)
    config = agent_config(broker, tmp_path / "dev-2", device="dev-2", max_payload=2048)
    config.device.trainable_layers = 2
    agent = DeviceAgent(config, local_data(digits, 1), backend).start()
    try:
        publish_model(gateway.link, TOPICS, manifest, chunks)
        assert gateway.wait(
            lambda: (
                (p := gateway.presence.get("dev-2")) is not None
                and p.capabilities is not None
                and p.capabilities.model_version == manifest.version
            )
        )
        dense = task(manifest.version, density=1.0, value_coding=int(wire.ValueCoding.FLOAT32), epochs=1)
        gateway.send_task("dev-2", wire.encode(dense))
        assert gateway.wait(lambda: len(gateway.updates) == 1)
        payload = wire.encode(agent.done[-1])
        assert len(payload) > 4 * 2048 and gateway.fragments >= len(payload) // 2048
        assert gateway.raw[0] == payload
        assert sum(t.nnz for t in gateway.updates[0].tensors) == sum(t.numel for t in spec)
    finally:
        agent.stop(timeout=5)
        gateway.stop()


def test_the_gateways_manifest_decides_what_a_device_trains_and_a_config_that_disagrees_is_ignored(
    broker: MosquittoProcess,
    tmp_path: Path,
    digits: DataSplit,
    digits_mlp: Graph,
    backend: Backend,
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = write_graph(digits_mlp)
    spec = trainable_spec(digits_mlp, layers=2)  # the gateway asks for the last two layers
    manifest, chunks = make_manifest(model, spec, 4096, federation=FED)
    gateway = GatewayStandIn(broker, manifest)
    config = agent_config(broker, tmp_path / "dev-3", device="dev-3")  # says trainable_layers = 1
    assert config.device.trainable_layers == 1
    agent = DeviceAgent(config, local_data(digits, 2), backend).start()
    caplog.set_level(logging.WARNING, logger="edge_runtime.agent")
    try:
        publish_model(gateway.link, TOPICS, manifest, chunks)
        assert gateway.wait(lambda: (p := gateway.presence.get("dev-3")) is not None and p.capabilities is not None
                            and p.capabilities.model_version == manifest.version), "no birth naming the model"
        dense = {"density": 1.0, "value_coding": int(wire.ValueCoding.FLOAT32), "epochs": 1}
        for round_ in (1, 2):
            gateway.send_task("dev-3", wire.encode(task(manifest.version, round_=round_, **dense)))
            assert gateway.wait(lambda r=round_: any(u.round == r for u in gateway.updates))  # type: ignore[misc]
        # Every tensor the manifest lists was trained and sent, not the one layer device.toml names.
        for update in gateway.updates:
            assert {t.tensor: t.nnz for t in update.tensors} == {t.tensor: int(np.prod(t.shape)) for t in spec}
        warnings = [r.getMessage() for r in caplog.records if "trainable_layers" in r.getMessage()]
        assert len(warnings) == 1, warnings  # once per model version, not every round
        assert "trainable_layers = 1" in warnings[0] and "is ignored" in warnings[0]
        assert "last 2 weighted layer(s)" in warnings[0]
    finally:
        agent.stop(timeout=5)
        gateway.stop()


def test_a_device_without_a_trainable_layers_setting_trains_the_whole_manifest_quietly(
    broker: MosquittoProcess,
    tmp_path: Path,
    digits: DataSplit,
    digits_mlp: Graph,
    backend: Backend,
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = write_graph(digits_mlp)
    spec = trainable_spec(digits_mlp, layers=0)  # every weighted layer
    manifest, chunks = make_manifest(model, spec, 4096, federation=FED)
    gateway = GatewayStandIn(broker, manifest)
    config = DeviceConfig.from_mapping(
        {
            "device": {"id": "dev-4", "federation": FED, "storage": str(tmp_path / "dev-4")},
            "broker": {"url": broker.url, "backoff_base": 0.05, "backoff_cap": 0.5},
            "trust": INSECURE,  # signatures are tests/test_signatures.py's
        },
        env={},
    )
    agent = DeviceAgent(config, local_data(digits, 3), backend).start()
    caplog.set_level(logging.WARNING, logger="edge_runtime.agent")
    try:
        publish_model(gateway.link, TOPICS, manifest, chunks)
        assert gateway.wait(lambda: (p := gateway.presence.get("dev-4")) is not None and p.capabilities is not None
                            and p.capabilities.model_version == manifest.version), "no birth naming the model"
        dense = {"density": 1.0, "value_coding": int(wire.ValueCoding.FLOAT32), "epochs": 1}
        gateway.send_task("dev-4", wire.encode(task(manifest.version, **dense)))
        assert gateway.wait(lambda: len(gateway.updates) == 1)
        assert {t.tensor for t in gateway.updates[0].tensors} == {t.tensor for t in spec}
        assert sum(t.nnz for t in gateway.updates[0].tensors) == sum(int(np.prod(t.shape)) for t in spec)
        assert not [r for r in caplog.records if "trainable_layers" in r.getMessage()]
    finally:
        agent.stop(timeout=5)
        gateway.stop()


def test_answered_tasks_outlive_a_restart_until_their_deadline_and_a_torn_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "answered_tasks"
    log = AnsweredTasks(path, now=1000.0)
    log.add(b"\x01" * 16, 1500.0)
    log.add(b"\x02" * 16, 2500.0)
    with path.open("a") as torn:
        torn.write("0303")  # a crash mid-line
    later = AnsweredTasks(path, now=2000.0)
    assert b"\x01" * 16 not in later and b"\x02" * 16 in later  # past its deadline: forgotten
    assert path.read_text() == "02" * 16 + " 2500.0\n"  # rewritten without the stale and torn lines
