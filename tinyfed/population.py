"""A large population of in-process devices against the gateway's own round machinery, without a broker.

A thousand ``DeviceAgent``s (an MQTT connection, an outbox, an interpreter
each) do not fit two cores; device-level differential privacy needs that
many devices to mean something. So the ``fl_privacy`` and ``privacy_audit``
benchmarks run the population here, in one process:

- the gateway side is the real one: ``Rounds`` with its ``RoundPolicy``
  (Poisson sampling under central DP), admission, the SQLite store with the
  privacy ledger, the publisher's strategy step and re-quantisation, and
  ``PrivacyBudget``'s noise and accountant, on a fake clock;
- each device is what ``DeviceAgent.handle`` does with a task, minus MQTT:
  the real trainer on the device's share of the data, the real compressor
  with the task's clip (and local noise) and the device's own error-feedback
  residual kept across rounds, and the update encoded and decoded by the
  real wire codec before the gateway takes it.

What is left out is the transport (measured by ``round_scale`` and the
``fl_*`` benchmarks). With every layer trainable (``trainable_layers = 0``) a
device trains in numpy alone; with fewer, the frozen backbone runs in the
interpreter once per device (it never changes, so its features are kept)
and the tail trains in numpy, as on a device. The harness scores published
int8 models on the test split with an interpreter, as ``simulation.py`` does.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime import wire
from edge_runtime.compress.compressor import CompressionConfig, Compressor
from edge_runtime.data import partition
from edge_runtime.data.dataset import Dataset
from edge_runtime.data.sources import load_source
from edge_runtime.local_training import task_training
from edge_runtime.model.backends import default_backend
from edge_runtime.model.graph import Graph
from edge_runtime.model.info import model_labels, quantize_input
from edge_runtime.model.reader import read_graph
from edge_runtime.model.writer import write_graph
from edge_runtime.train.build import build_model
from edge_runtime.train.trainer import Trainer, cut_for_last_layers
from gateway.admission import AdmissionRules
from gateway.aggregate import update_norm
from gateway.clock import FakeClock
from gateway.config import GatewayConfig
from gateway.policy import RoundPolicy, TaskSettings
from gateway.privacy.accountant import LedgerEntry
from gateway.privacy.budget import PrivacyBudget
from gateway.publisher import Publisher
from gateway.registry import Eligibility, Registry
from gateway.robustness.detector import Detector
from gateway.robustness.persistence import at_bound_reference
from gateway.robustness.validation import from_config as validation_for
from gateway.rounds import Rounds
from gateway.store import Contribution, GatewayStore

from .simulation import score

log = logging.getLogger(__name__)


@dataclass
class Canaries:
    """One-run auditing's canaries (Steinke, Nasr and Jagielski 2023): ``count`` made-up examples, each put into
    one device's data with probability 1/2, independently; which ones went in is the auditor's secret."""

    count: int = 500
    device: int = 0  # the device that holds them
    seed: int = 1


@dataclass
class PopulationSpec:
    data: str = "digits"  # digits | har
    devices: int = 1000
    alpha: float = 0.0  # Dirichlet label skew; 0: an IID split
    natural: bool = False  # one device per natural group (HAR's subjects) instead; ``devices`` is then ignored
    rounds: int = 100
    epochs: int = 1
    learning_rate: float = 0.1
    batch_size: int = 16
    density: float = 0.1
    value_coding: int = 2
    strategy: dict[str, Any] = field(default_factory=lambda: {"name": "fedavgm", "momentum": 0.9})
    privacy: dict[str, Any] = field(default_factory=dict)  # a [privacy] table; empty: off
    fraction: float = 0.1  # selection without DP (under central DP the [privacy] sampling_rate decides)
    trainable_layers: int = 0  # the last N weighted layers train (0: all); the rest is a frozen backbone
    score_every: int = 1  # score the published model every N rounds (and after the last)
    seed: int = 0
    canaries: Canaries | None = None
    robustness: dict[str, Any] = field(default_factory=dict)  # a [robustness] table; empty: off
    norm_bound: float = 1000.0  # [rounds] norm_bound: larger updates are refused
    downlink_density: float = 0.0  # [gateway] downlink_density: the share of int8 codes a version may move (0: all)
    @property
    def arch(self) -> str:
        return "cnn1d" if self.data == "har" else "mlp"


@dataclass
class PopulationRound:
    round: int
    score: float  # the int8 model's accuracy on the test split
    participants: int  # updates the gateway took
    epsilon: float  # the accountant's, after this round (0 without DP)
    clip: float  # the round's clip (0 without DP)


@dataclass
class PopulationResult:
    spec: PopulationSpec
    rounds: list[PopulationRound]
    ledger: list[LedgerEntry]
    epsilon: float  # spent at the end (central: the federation's; local: the most exposed device's)
    initial_model: bytes
    final_model: bytes
    canary_x: np.ndarray | None = None  # the canaries as raw samples, their labels, and which went in
    canary_y: np.ndarray | None = None
    canary_in: np.ndarray | None = None
    stopped_by_budget: bool = False
    contributions: list[tuple[int, Contribution]] = field(default_factory=list)  # the detector's rows, newest first
    quarantined: dict[str, str] = field(default_factory=dict)  # device -> why, at the end


def make_canaries(test: Dataset, canaries: Canaries) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Real inputs no device trains on (from the test split) with a random wrong label each: in-distribution, so
    the model's activations stay in range, and mislabelled, so a model moves towards a canary's label only if it
    trained on it. Returns (x, y, included, the test indices used)."""
    if canaries.count > len(test):
        raise ValueError(f"{canaries.count} canaries asked, the test split has {len(test)} samples")
    rng = np.random.default_rng(canaries.seed)
    used = rng.permutation(len(test))[: canaries.count]
    wrong = rng.integers(1, len(test.classes), canaries.count)
    y = (test.y[used] + wrong) % len(test.classes)
    included = rng.random(canaries.count) < 0.5
    return test.x[used].astype(np.float32), y, included, used


class SimulatedDevice:
    """A device's share of the data and its error-feedback residual; answers a task as the agent does."""

    def __init__(self, name: str, data: Dataset, seed: int) -> None:
        self.name = name
        self.data = data
        self.seed = seed
        self.compressor = Compressor(CompressionConfig())  # the residual lives in memory, across rounds
        self._features: np.ndarray | None = None  # the frozen backbone's output on this device's samples

    def answer(self, task: wire.Task, graph: Graph, spec: dict[int, int], layers: int, backend: Any) -> bytes:
        y = model_labels(graph, self.data.y, self.data.classes)
        training, compression = task_training(task, seed=self.seed * 100_003 + task.round)
        trainer = Trainer(graph, cut_for_last_layers(graph, layers), backend, training)
        if self._features is None or trainer.cut == 0:
            self._features = trainer.features(quantize_input(graph, self.data.x))
        trainer.fit_features(self._features, y.astype(np.int64))
        self.compressor.config = compression
        compressed = self.compressor.compress({t: d for t, d in trainer.delta_by_tensor().items() if t in spec})
        bit = compressed.below_clip if task.clip_bit else None
        update = wire.Update(os.urandom(16), self.name, task.round, task.base_version, len(self.data),
                             compressed.tensors, below_clip=bit)  # fmt: skip
        self.compressor.commit(compressed)
        return wire.encode(update)


def _shares(spec: PopulationSpec, train: Dataset) -> dict[int, np.ndarray]:
    if spec.natural:
        return partition.natural(train)
    if spec.alpha > 0:
        return partition.dirichlet(train, spec.devices, spec.alpha, seed=spec.seed, min_size=1)
    return partition.iid(train, spec.devices, seed=spec.seed)


def run_population(
    spec: PopulationSpec,
    on_round: Callable[[PopulationRound], None] | None = None,
    workdir: Path | None = None,
    make_device: Callable[[str, Dataset, int], SimulatedDevice] = SimulatedDevice,
) -> PopulationResult:
    """Rounds until the configured number closed or the privacy budget stops them (the final evaluation round,
    which asks every device, is not run: each published model is scored on the test split instead)."""
    backend = default_backend()
    split = load_source(spec.data, seed=spec.seed)
    graph = build_model(spec.arch, split.train.x, split.train.classes, seed=spec.seed)
    initial = write_graph(graph)
    shares = _shares(spec, split.train)
    devices = [make_device(f"sim-{i:05d}", split.train.subset(index, f"sim-{i:05d}"), spec.seed * 7919 + i)
               for i, index in sorted(shares.items())]  # fmt: skip
    canary_x = canary_y = canary_in = None
    test = split.test
    if spec.canaries is not None:
        canary_x, canary_y, canary_in, used = make_canaries(split.test, spec.canaries)
        test = split.test.subset(np.setdiff1d(np.arange(len(split.test)), used), "test less the canaries")
        own = devices[spec.canaries.device]
        data = own.data
        own.data = Dataset(np.concatenate([data.x, canary_x[canary_in]]), np.concatenate([data.y, canary_y[canary_in]]),
                           data.classes, name=data.name)  # fmt: skip
    # /dev/shm where there is one: a thousand devices' births and every update are fsync'd commits.
    base = workdir or (Path("/dev/shm") if Path("/dev/shm").is_dir() else None)
    with tempfile.TemporaryDirectory(dir=base) as tmp_text:
        tmp = Path(tmp_text)
        (tmp / "initial.tflite").write_bytes(initial)
        privacy = dict(spec.privacy)
        config = GatewayConfig.from_mapping(
            {
                "gateway": {"federation": "population", "storage": str(tmp / "gw"),
                            "model": str(tmp / "initial.tflite"), "min_free_mb": 0.0,
                            "trainable_layers": spec.trainable_layers, "downlink_density": spec.downlink_density},
                "rounds": {"rounds": spec.rounds, "min_devices": 1, "deadline": 3600.0, "epochs": spec.epochs,
                           "learning_rate": spec.learning_rate, "batch_size": spec.batch_size, "density": spec.density,
                           "value_coding": spec.value_coding, "report_every": 1_000_000, "seed": spec.seed,
                           "norm_bound": spec.norm_bound,
                           "fraction": 1.0 if privacy.get("mode", "off") == "central-dp" else spec.fraction},
                "strategy": dict(spec.strategy),
                "privacy": privacy,
                "robustness": dict(spec.robustness),
            },
            env={},
        )  # fmt: skip
        result = _run(config, spec, devices, backend, test, initial, on_round)
    result.canary_x, result.canary_y, result.canary_in = canary_x, canary_y, canary_in
    return result


def _run(
    config: GatewayConfig,
    spec: PopulationSpec,
    devices: list[SimulatedDevice],
    backend: Any,
    test: Dataset,
    initial: bytes,
    on_round: Callable[[PopulationRound], None] | None,
) -> PopulationResult:
    rc = config.rounds
    store = GatewayStore(config.storage / "gateway.db")
    strategy = config.make_strategy()
    budget = PrivacyBudget(config.privacy, store) if config.privacy.on else None
    policy = RoundPolicy(
        rc, Eligibility(), TaskSettings.from_rounds(rc, float(getattr(strategy, "mu", 0.0))),
        np.random.default_rng(spec.seed + 1), privacy=budget.rules if budget is not None else None,
    )  # fmt: skip
    publisher = Publisher(config, store, strategy)
    admission = AdmissionRules(rc.mode, rc.norm_bound, rc.max_staleness, rc.max_samples)
    validation = validation_for(config, initial) if config.robustness.detect else None
    bound = at_bound_reference(rc.norm_bound, rc.clip_norm)
    detector = Detector(config.robustness, store, validation, bound) if config.robustness.detect else None
    rounds = Rounds(store, Registry(store), publisher, policy, admission, FakeClock(), rc.clip_norm or None,
                    None, budget, detector)  # fmt: skip
    by_name = {d.name: d for d in devices}
    for device in devices:
        caps = wire.Capabilities(ram=1 << 28, backend="numpy", samples=len(device.data))
        birth = wire.Presence(device.name, True, 1, 0, caps)
        rounds.registry.observe(birth, wire.encode(birth))
    clock = rounds.clock
    assert isinstance(clock, FakeClock)
    records: list[PopulationRound] = []
    stopped_by_budget = False
    try:
        while True:
            step = rounds.step()
            if step.opened is not None and step.opened.mode == "eval":
                stopped_by_budget = bool(policy.view and policy.view.exhausted)
                break
            idle = step.opened is None and not step.tasks and step.ended is None
            if step.finished or (idle and rounds.open_round is None):
                stopped_by_budget = bool(policy.view and policy.view.exhausted)
                break
            if idle:  # a round waits for an answer that will not come (a refused update): its deadline passes
                clock.advance(rc.deadline + 1)
            graph, spec_sizes = read_graph(publisher.model), dict(rounds.sizes)  # read once: trainers copy it
            for name, task in step.tasks:
                raw = by_name[name].answer(task, graph, spec_sizes, spec.trainable_layers, backend)
                update = wire.decode(raw, expect=wire.Update, spec=spec_sizes)
                rounds.intake(update, raw, name, update_norm(update))
            if step.ended is not None and step.ended.version is not None:
                ledger = store.ledger()
                epsilon = budget.epsilon() if budget is not None else 0.0
                entry = ledger[-1] if ledger and ledger[-1].round == step.ended.round else None
                due = step.ended.round % spec.score_every == 0 or step.ended.round >= spec.rounds
                accuracy = score(backend, publisher.model, test, "accuracy") if due else float("nan")
                record = PopulationRound(step.ended.round, accuracy, step.ended.accepted, epsilon,
                                         entry.clip if entry else 0.0)  # fmt: skip
                records.append(record)
                if on_round is not None:
                    on_round(record)
        ledger = store.ledger()
        epsilon = budget.epsilon() if budget is not None else 0.0
        final = publisher.model
        if records and np.isnan(records[-1].score):  # stopped by the budget between two scored rounds
            records[-1].score = score(backend, final, test, "accuracy")
        contributions, quarantined = store.contributions(limit=1 << 30), store.quarantined()
    finally:
        store.close()
    return PopulationResult(spec, records, ledger, epsilon, initial, final, stopped_by_budget=stopped_by_budget,
                            contributions=contributions, quarantined=quarantined)  # fmt: skip
