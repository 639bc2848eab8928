"""A federation for gateway tests: hand-driven devices, real agents, a held strategy, the broker's view.

Shared by tests/test_gateway.py (rounds through Mosquitto) and tests/test_gateway_faults.py (what a
field throws at a gateway). Every device here is a real MQTT client on the test's Mosquitto.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import numpy as np

from edge_runtime import wire
from edge_runtime.agent import DeviceAgent, LocalData
from edge_runtime.data.dataset import DataSplit
from edge_runtime.data.partition import device_share
from edge_runtime.device_config import DeviceConfig
from edge_runtime.model.backends.base import Backend
from edge_runtime.transport.broker import MosquittoProcess
from edge_runtime.transport.mqtt import BrokerConfig, MqttLink, Will
from edge_runtime.transport.topics import Topics
from gateway.strategies import RoundInput, Weights
from gateway.strategies.fedavg import FedAvg
from tests.helpers import INSECURE

FED = "gw-test"
TOPICS = Topics(FED)
WAIT = 60.0  # upper bounds for loopback delivery and training, never performance assertions


def gateway_config(broker: MosquittoProcess, storage: Path, model: Path, **rounds: object) -> dict[str, object]:
    return {
        "gateway": {"federation": FED, "storage": str(storage), "model": str(model), "connect_timeout": 20.0},
        "rounds": {"min_devices": 1, "deadline": 60.0, "report_every": 1, **rounds},
        "broker": {"url": broker.url, "backoff_base": 0.05, "backoff_cap": 0.5},
        "trust": INSECURE,  # signatures are tests/test_signatures.py's
    }


def start_agents(
    broker: MosquittoProcess,
    tmp: Path,
    digits: DataSplit,
    backend: Backend,
    n: int,
    scheme: str = "dirichlet:0.5",
    agent_class: type[DeviceAgent] = DeviceAgent,
    update_format: str = "cbor",
) -> list[DeviceAgent]:
    agents = []
    for i in range(n):
        own = device_share(digits.train, f"{i}/{n}", scheme, seed=0)
        held_out = max(1, len(own) // 5)
        data = LocalData(digits.train.subset(own[:-held_out]), digits.train.subset(own[-held_out:]))
        config = DeviceConfig.from_mapping(
            {
                "device": {"id": f"d{i:02d}", "federation": FED, "storage": str(tmp / f"d{i:02d}"),
                           "trainable_layers": 0},
                "broker": {"url": broker.url, "backoff_base": 0.05, "backoff_cap": 0.5},
                "trust": INSECURE,  # signatures are tests/test_signatures.py's
                "transport": {"resend_after": 2.0, "update_format": update_format},
            },
            env={},
        )  # fmt: skip
        agents.append(agent_class(config, data, backend).start())
    return agents


class ManualDevice:
    """A device the test drives by hand: announces itself, collects tasks and receipts, sends what it is told."""

    def __init__(
        self,
        broker: MosquittoProcess,
        name: str,
        answer_evaluations: bool = True,
        will: bool = False,
        changed: threading.Condition | None = None,
    ) -> None:
        self.name = name
        death = Will(TOPICS.presence(name), wire.encode(wire.Presence(name, False, 1, int(time.time()))))
        config = BrokerConfig(url=broker.url, backoff_base=0.05, backoff_cap=0.5)
        self.link = MqttLink(config, f"manual-{name}", will=death if will else None)
        self.tasks: list[wire.Task] = []
        self.receipts: list[wire.Receipt] = []
        self.changed = changed or threading.Condition()  # shared, a test can wait on several devices at once
        self.answer_evaluations = answer_evaluations
        self.link.subscribe(TOPICS.task(name), self._on_task)
        self.link.subscribe(TOPICS.receipt(name), self._on_receipt)
        self.link.start()
        assert self.link.wait_ready(WAIT)
        caps = wire.Capabilities(ram=1 << 28, backend="manual", samples=50)
        birth = wire.Presence(name, True, 1, int(time.time()), caps)
        assert self.link.publish(TOPICS.presence(name), wire.encode(birth), retain=True, timeout=WAIT)

    def _on_task(self, topic: str, payload: bytes) -> None:
        task = wire.decode(payload, expect=wire.Task)
        if task.evaluate_only and self.answer_evaluations:
            report = wire.Update(os.urandom(16), self.name, task.round, task.base_version, 10, [],
                                 metrics={"eval_accuracy": 0.5, "eval_loss": 1.0})  # fmt: skip
            self.link.publish(TOPICS.update(self.name), wire.encode(report))
        with self.changed:
            self.tasks.append(task)
            self.changed.notify_all()

    def _on_receipt(self, topic: str, payload: bytes) -> None:
        with self.changed:
            self.receipts.append(wire.decode(payload, expect=wire.Receipt))
            self.changed.notify_all()

    def wait(self, predicate: object, timeout: float = WAIT) -> bool:
        with self.changed:
            return self.changed.wait_for(predicate, timeout)  # type: ignore[arg-type]

    def send(self, payload: bytes) -> None:
        assert self.link.publish(TOPICS.update(self.name), payload, timeout=WAIT)

    def die(self) -> None:
        """Vanish without a DISCONNECT, as a board losing power does."""
        self.link._stopping.set()  # no reconnect
        sock = self.link._client.socket()
        assert isinstance(sock, socket.socket)
        sock.close()

    def stop(self) -> None:
        self.link.stop()


def small_update(name: str, task: wire.Task, sizes: dict[int, int], value: float = 0.01) -> wire.Update:
    tensor, numel = max(sizes.items(), key=lambda kv: kv[1])
    values = wire.CodedValues(wire.ValueCoding.FLOAT32, np.full(5, value, np.float32), 1.0)
    return wire.Update(
        os.urandom(16),
        name,
        task.round,
        task.base_version,
        40,
        [wire.TensorUpdate(tensor, numel, np.arange(5), values)],
    )


class HeldStrategy(FedAvg):
    """FedAvg whose first server step waits until the test lets it go: a round close that takes as long as needed."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def step(self, weights: Weights, round_input: RoundInput) -> Weights:
        if not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(WAIT), "the test never released the close"
        return super().step(weights, round_input)


def retained_manifest(broker: MosquittoProcess) -> wire.ModelManifest:
    """The manifest the broker holds now, read by a fresh client."""
    got: list[wire.ModelManifest] = []
    arrived = threading.Event()

    def on_manifest(topic: str, payload: bytes) -> None:
        got.append(wire.decode(payload, expect=wire.ModelManifest))
        arrived.set()

    reader = MqttLink(BrokerConfig(url=broker.url, backoff_base=0.05, backoff_cap=0.5), f"reader-{os.getpid()}")
    reader.subscribe(TOPICS.manifest, on_manifest)
    reader.start()
    try:
        assert arrived.wait(WAIT), "no retained manifest"
        return got[-1]
    finally:
        reader.stop()
