"""A federation's rounds without a broker: the real store on disk, the real publisher, a fake clock.

``gateway.rounds.Rounds`` is everything between a message arriving and one
leaving; these tests drive it directly with real encoded updates against a
real int8 model, so closing a round makes a real new version.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from edge_runtime import wire
from edge_runtime.model.graph import Graph
from edge_runtime.model.writer import write_graph
from gateway.admission import AdmissionRules
from gateway.aggregate import update_norm
from gateway.clock import FakeClock
from gateway.config import GatewayConfig
from gateway.disk import DiskSpace, Usage
from gateway.policy import RoundPolicy, TaskSettings
from gateway.publisher import Publisher
from gateway.registry import Eligibility, Registry
from gateway.rounds import Rounds
from gateway.store import GatewayStore
from gateway.strategies import RoundInput, Weights
from gateway.strategies.fedavgm import FedAvgM


class FailingOnce(FedAvgM):
    """FedAvgM whose first server step dies after moving its state, as a failing disk kills a close."""

    def __init__(self) -> None:
        super().__init__(momentum=0.9)
        self.failures = 1

    def step(self, weights: Weights, round_input: RoundInput) -> Weights:
        out = super().step(weights, round_input)
        if self.failures:
            self.failures -= 1
            raise OSError(errno.EIO, "Input/output error")
        return out


def make_rounds(
    tmp_path: Path, model: bytes, strategy: object, disk: DiskSpace | None = None, **rules: object
) -> tuple[Rounds, FakeClock]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "initial.tflite").write_bytes(model)
    config = GatewayConfig.from_mapping(
        {
            "gateway": {"federation": "t", "storage": str(tmp_path / "gw"), "model": str(tmp_path / "initial.tflite")},
            "rounds": {"min_devices": 2, "deadline": 60.0, **rules},
        },
        env={},
    )
    store = GatewayStore(config.storage / "gateway.db")
    clock = FakeClock()
    rc = config.rounds
    policy = RoundPolicy(rc, Eligibility(), TaskSettings.from_rounds(rc, 0.0), np.random.default_rng(0))
    publisher = Publisher(config, store, strategy)
    admission = AdmissionRules(rc.mode, rc.norm_bound, 5)
    rounds = Rounds(store, Registry(store), publisher, policy, admission, clock, disk=disk)
    for seq, name in enumerate(("a", "b")):
        birth = wire.Presence(name, True, seq + 1, 0, wire.Capabilities(ram=1 << 20, backend="x", samples=50))
        rounds.registry.observe(birth, wire.encode(birth))
    return rounds, clock


def answer(rounds: Rounds, device: str, task: wire.Task, value: float = 0.01) -> bool:
    tensor, numel = max(rounds.sizes.items(), key=lambda kv: kv[1])
    values = wire.CodedValues(wire.ValueCoding.FLOAT32, np.full(8, value, np.float32), 1.0)
    update = wire.Update(os.urandom(16), device, task.round, task.base_version, 40,
                         [wire.TensorUpdate(tensor, numel, np.arange(8) * 3, values)])  # fmt: skip
    raw = wire.encode(update)
    decoded = wire.decode(raw, expect=wire.Update, spec=dict(rounds.sizes))
    return rounds.intake(decoded, raw, device, update_norm(decoded)).accepted


@pytest.fixture
def model(digits_mlp: Graph) -> bytes:
    return write_graph(digits_mlp)


def test_a_round_opens_collects_closes_into_a_new_version_and_the_next_opens_on_it(
    tmp_path: Path, model: bytes
) -> None:
    rounds, clock = make_rounds(tmp_path, model, FedAvgM(momentum=0.9))
    first = rounds.step()
    assert first.opened is not None and sorted(d for d, _ in first.tasks) == ["a", "b"]
    v0 = rounds.publisher.version
    for device, task in first.tasks:
        assert answer(rounds, device, task)
    closed = rounds.step()
    assert closed.ended is not None and closed.ended.status == "closed" and closed.ended.accepted == 2
    assert rounds.publisher.version == closed.ended.version != v0
    assert closed.ended.version is not None
    written = tmp_path / "gw" / "models" / f"{closed.ended.version.hex()}.tflite"
    assert written.read_bytes() == rounds.publisher.model
    second = rounds.step()
    assert second.opened is not None and second.opened.round == 2
    assert all(t.base_version == rounds.publisher.version for _, t in second.tasks)
    clock.advance(61)  # nobody answers round 2
    failed = rounds.step()
    assert failed.ended is not None and failed.ended.status == "failed"


def test_a_close_that_fails_is_retried_without_detaching_twice_and_without_double_counting_the_strategy(
    tmp_path: Path, model: bytes
) -> None:
    clean, _ = make_rounds(tmp_path / "clean", model, FedAvgM(momentum=0.9))
    failing_strategy = FailingOnce()
    rounds, _ = make_rounds(tmp_path / "failing", model, failing_strategy)
    for r in (clean, rounds):
        for device, task in r.step().tasks:
            assert answer(r, device, task)
    expected = clean.step().ended
    assert expected is not None

    assert rounds.step().ended is None  # the close died
    assert rounds.open_round is None and rounds.store.open_round_row() is not None  # detached, still open on disk
    device = rounds.store.selections(1)[0]["device"]
    late = wire.Task(os.urandom(16), 1, rounds.publisher.version, 1, 0.05, 0.01, 0)
    assert not answer(rounds, device, late)  # "round 1 is closing": nothing is added to what is closing
    retried = rounds.step()
    assert retried.ended is not None and retried.ended.accepted == 2
    # Momentum was taken back after the failure, so the retried close made exactly the clean version.
    assert retried.ended.version == expected.version
    assert [r.status for r in rounds.store.rounds()] == ["closed"]


def test_below_the_free_space_floor_no_round_opens_it_is_said_once_and_rounds_resume_with_room(
    tmp_path: Path, model: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    free = [10 * 2**20]
    disk = DiskSpace(tmp_path, min_free_mb=64, usage=lambda _: Usage(2**30, 2**30 - free[0], free[0]))
    rounds, _ = make_rounds(tmp_path, model, FedAvgM(momentum=0.9), disk=disk)
    with caplog.at_level(logging.WARNING, logger="gateway"):
        for _ in range(5):
            assert rounds.step().opened is None
    assert caplog.text.count("below [gateway] min_free_mb = 64: no new round opens") == 1
    assert rounds.paused is not None and rounds.store.last_round() == 0
    free[0] = 100 * 2**20
    assert rounds.step().opened is not None
    assert rounds.paused is None
