"""Two malicious agents in a small federation through a real Mosquitto: flagged, quarantined, and the model holds.

The detector as the byzantine benchmark runs it: per-round scores, each device's history against the
federation's (on by default), reliability weights and clipping to the round's median norm; for the backdoor,
also the hub's validation set (the benchmark's ``detector_val``), whose dormant share catches the trigger."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from edge_runtime import wire
from edge_runtime.agent import DeviceAgent, LocalData
from edge_runtime.data.dataset import Dataset, DataSplit
from edge_runtime.device_config import DeviceConfig
from edge_runtime.model.backends import Backend, default_backend
from edge_runtime.model.info import quantize_input
from edge_runtime.model.reader import read_graph
from edge_runtime.train.evaluate import int8_metrics
from edge_runtime.transport.broker import MosquittoProcess
from gateway.config import GatewayConfig
from gateway.service import Gateway, RoundSummary
from gateway.store import GatewayStore

from .federation import start_agents

MALICIOUS = ("d06", "d07")
ROUNDS = 8
HIGH = 16.0  # digits' maximum pixel value: the trigger's


class SignFlipAgent(DeviceAgent):
    """A real agent that trains honestly and sends the negation of what it learned (when it is one of MALICIOUS)."""

    def new_update(
        self,
        task: wire.Task,
        samples: int,
        tensors: list[wire.TensorUpdate],
        metrics: dict[str, float],
        ranges: dict[int | str, tuple[float, float]] | None = None,
    ) -> wire.Update:
        if self.device_id in MALICIOUS and tensors:
            tensors = [replace(t, values=wire.CodedValues(wire.ValueCoding.FLOAT32,
                                                          -t.values.decode().astype(np.float32), 1.0))
                       for t in tensors]  # fmt: skip
        return super().new_update(task, samples, tensors, metrics, ranges)


class BackdoorAgent(DeviceAgent):
    """A real agent that trains on its data plus a copy of every sample carrying bench/byzantine.py's trigger
    (the first pixels at the data's maximum: pixels clean digits leave at zero), labelled with the target class
    (when it is one of MALICIOUS)."""

    def __init__(self, config: DeviceConfig, data: LocalData | None = None, backend: Backend | None = None) -> None:
        if data is not None and config.device.id in MALICIOUS:
            data = LocalData(poisoned(data.train), data.evaluate)
        super().__init__(config, data, backend)


def poisoned(train: Dataset) -> Dataset:
    from bench.byzantine import TARGET, trigger

    x = np.concatenate([train.x, trigger(train.x, HIGH)])
    y = np.concatenate([train.y, np.full(len(train.y), TARGET, train.y.dtype)])
    return Dataset(x, y, train.classes)


def federate(
    broker: MosquittoProcess, tmp_path: Path, initial_model: Path, digits: DataSplit,
    agent_class: type[DeviceAgent], **robustness: object,
) -> tuple[GatewayStore, dict[int, float], bytes]:
    """Eight agents (IID digits), two of them MALICIOUS, for ROUNDS rounds; the store, accuracy per round, the
    final model."""
    backend = default_backend()
    settings = {
        "gateway": {"federation": "gw-test", "storage": str(tmp_path / "gw"), "model": str(initial_model),
                    "connect_timeout": 20.0},
        "rounds": {"rounds": ROUNDS, "min_devices": 4, "deadline": 120.0, "epochs": 2, "learning_rate": 0.05,
                   "density": 0.05, "report_every": 1000},
        "strategy": {"name": "fedavgm", "momentum": 0.5},
        "robustness": {"detect": True, "reliability_weights": True, "clip_to_median": 1.0, **robustness},
        "broker": {"url": broker.url, "backoff_base": 0.05, "backoff_cap": 0.5},
        "trust": {"mode": "insecure"},
    }  # fmt: skip
    gateway = Gateway(GatewayConfig.from_mapping(settings, env={}))
    accuracy: dict[int, float] = {}

    def score(summary: RoundSummary) -> None:
        graph = read_graph(gateway.model)
        x = quantize_input(graph, digits.test.x)
        accuracy[summary.round] = int8_metrics(backend, gateway.model, graph, x, digits.test.y)["accuracy"]

    gateway.on_round_closed.append(score)
    gateway.start()
    agents = start_agents(broker, tmp_path, digits, backend, 8, scheme="iid", agent_class=agent_class)
    try:
        assert gateway.finished.wait(600), f"federation did not finish: {accuracy}"  # the six carry on
    finally:
        for agent in agents:
            agent.stop(timeout=5)
        gateway.stop()
    return GatewayStore(tmp_path / "gw" / "gateway.db"), accuracy, gateway.model


def assert_quarantined_and_gone(store: GatewayStore) -> None:
    """Both malicious agents quarantined and no honest one; neither selected in the last round."""
    assert set(store.quarantined()) == set(MALICIOUS), store.quarantined()
    training = [r for r in store.rounds() if r.mode == "sync"]
    assert {c.device for _, c in store.contributions(training[-1].round)}.isdisjoint(MALICIOUS)


def assert_status_shows_quarantine(tmp_path: Path, robustness: str = "", shown: str = "") -> None:
    toml = tmp_path / "gateway.toml"
    storage = tmp_path / "gw"
    toml.write_text(f'[gateway]\nstorage = "{storage}"\n[robustness]\ndetect = true\n{robustness}'
                    '[trust]\nmode = "insecure"\n')  # fmt: skip
    status = subprocess.run([sys.executable, "-m", "tinyfed", "gateway", "status", "--config", str(toml)],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert status.returncode == 0, status.stderr
    for device in MALICIOUS:
        assert f"QUARANTINED {device}" in status.stdout
    assert shown in status.stdout, status.stdout


def test_two_sign_flipping_agents_are_flagged_quarantined_and_the_accuracy_holds(
    broker: MosquittoProcess, tmp_path: Path, initial_model: Path, digits: DataSplit
) -> None:
    store, accuracy, _ = federate(broker, tmp_path, initial_model, digits, SignFlipAgent)
    try:
        assert_quarantined_and_gone(store)
        judged = store.contributions(limit=10_000)
        for device in MALICIOUS:
            own = [c for _, c in judged if c.device == device]
            assert own and all(not c.counted for c in own), own  # flagged from their first update: never counted
            assert all("cosine" in c.reason for c in own if c.flagged)
            # by their third round their history points away from the federation's too
            assert any("point away from the federation's" in c.reason for c in own), [c.reason for c in own]
        honest = [c for _, c in judged if c.device not in MALICIOUS]
        assert honest and all(c.counted and not c.flagged for c in honest)
        assert any("clipped to" in c.reason for c in honest)  # the larger half of each round, scaled to its median
    finally:
        store.close()
    assert accuracy[max(accuracy)] >= 0.85, accuracy  # the honest six's model, unharmed
    assert_status_shows_quarantine(tmp_path)


def test_two_backdoor_agents_are_flagged_by_the_dormant_share_quarantined_and_the_trigger_fails(
    broker: MosquittoProcess, tmp_path: Path, initial_model: Path, digits: DataSplit
) -> None:
    """The hub keeps 300 clean training samples; the trigger's pixels are zero on all of them, so the weights
    they feed are dormant, and the attackers' updates put their mass there from the first round."""
    hub = np.random.default_rng(0).permutation(len(digits.train))[:300]
    np.savez(tmp_path / "hub.npz", x=digits.train.x[hub], y=digits.train.y[hub])
    assert float(digits.train.x.max()) == HIGH
    store, accuracy, model = federate(broker, tmp_path, initial_model, digits, BackdoorAgent,
                                      validation=str(tmp_path / "hub.npz"))  # fmt: skip
    try:
        assert_quarantined_and_gone(store)
        judged = store.contributions(limit=10_000)
        for device in MALICIOUS:
            own = sorted(((r, c) for r, c in judged if c.device == device), key=lambda rc: rc[0])
            assert own and all(not c.counted for _, c in own), own  # flagged from their first update: never counted
            assert "validation data never drives" in own[0][1].reason, own[0]
        honest = [c for _, c in judged if c.device not in MALICIOUS]
        assert honest and not any("never drives" in c.reason for c in honest)
    finally:
        store.close()
    assert accuracy[max(accuracy)] >= 0.85, accuracy
    from bench.byzantine import TARGET, trigger

    graph = read_graph(model)
    others = digits.test.y != TARGET
    x = quantize_input(graph, trigger(digits.test.x[others], HIGH))
    target = np.full(int(others.sum()), TARGET, digits.test.y.dtype)
    success = int8_metrics(default_backend(), model, graph, x, target)["accuracy"]
    assert success < 0.5, success  # the trigger does not turn other digits into the target class
    hub_line = f'validation = "{tmp_path / "hub.npz"}"\n'
    assert_status_shows_quarantine(tmp_path, hub_line, "dormant share > 0.05")
