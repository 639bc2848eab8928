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
from gateway.rounds import WAITING_GRACE_S, Rounds
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
    tmp_path: Path,
    model: bytes,
    strategy: object,
    disk: DiskSpace | None = None,
    devices: tuple[str, ...] = ("a", "b"),
    tables: dict[str, dict[str, object]] | None = None,
    **rules: object,
) -> tuple[Rounds, FakeClock]:
    """``rules``: the [rounds] table's keys; ``tables``: any other table ([secagg], say)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "initial.tflite").write_bytes(model)
    config = GatewayConfig.from_mapping(
        {
            "gateway": {"federation": "t", "storage": str(tmp_path / "gw"), "model": str(tmp_path / "initial.tflite")},
            "rounds": {"min_devices": 2, "deadline": 60.0, **rules},
            **(tables or {}),
        },
        env={},
    )
    store = GatewayStore(config.storage / "gateway.db")
    clock = FakeClock()
    rc = config.rounds
    policy = RoundPolicy(rc, Eligibility(), TaskSettings.from_rounds(rc, 0.0), np.random.default_rng(0))
    publisher = Publisher(config, store, strategy)
    admission = AdmissionRules(rc.mode, rc.norm_bound, rc.max_staleness, rc.max_samples)
    rounds = Rounds(store, Registry(store), publisher, policy, admission, clock, disk=disk)
    for name in devices:
        born(rounds, name, seq=1)
    return rounds, clock


def born(
    rounds: Rounds, name: str, seq: int, samples: int = 50, model: bytes | None = None, data: bytes | None = None
) -> None:
    caps = wire.Capabilities(ram=1 << 20, backend="x", samples=samples, model_version=model, data=data)
    birth = wire.Presence(name, True, seq, 0, caps)
    rounds.registry.observe(birth, wire.encode(birth))


def fail(
    rounds: Rounds, device: str, task: wire.Task, reason: wire.FailureReason = wire.FailureReason.LABELS
) -> str | None:
    report = wire.TaskFailure(os.urandom(16), device, task.round, task.task_id, reason, "labels [7] not in 0..5")
    return rounds.report_failure(wire.decode(wire.encode(report), expect=wire.TaskFailure), device)


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


def test_a_close_that_dies_after_making_its_version_counts_that_version_once_toward_the_range_bound(
    tmp_path: Path, model: bytes
) -> None:
    """The activation-range bound compounds per version made since ranges were last taken: a close that made
    its version, then died writing the round (a disk error), and was retried must count one version, not two,
    or a liar's report could move a range one ``max_range_growth`` further than the bound allows."""
    clean, _ = make_rounds(tmp_path / "clean", model, FedAvgM(momentum=0.9), max_range_growth=2.0, report_every=5)
    rounds, _ = make_rounds(tmp_path / "failing", model, FedAvgM(momentum=0.9), max_range_growth=2.0, report_every=5)
    finish, attempts = rounds.store.finish_round, []

    def finish_failing_once(*args: object, **kwargs: object) -> None:
        attempts.append(args[0])
        if len(attempts) == 1:
            raise OSError(errno.EIO, "Input/output error")
        finish(*args, **kwargs)  # type: ignore[arg-type]

    rounds.store.finish_round = finish_failing_once  # type: ignore[method-assign]
    for r in (clean, rounds):
        for device, task in r.step().tasks:
            assert answer(r, device, task)
    expected = clean.step().ended
    assert expected is not None and clean.publisher.range_growth(3) == 2.0  # one version since
    assert rounds.step().ended is None and attempts == [1]  # the version was made, the close died writing it
    retried = rounds.step()
    assert retried.ended is not None and attempts == [1, 1]
    assert retried.ended.version == expected.version
    assert rounds.publisher.range_growth(3) == clean.publisher.range_growth(3)


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


def test_too_few_eligible_devices_is_said_once_with_why_and_the_round_opens_when_one_joins(
    tmp_path: Path, model: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    rounds, clock = make_rounds(tmp_path, model, FedAvgM(momentum=0.9), devices=("a",))
    with caplog.at_level(logging.INFO, logger="gateway"):
        assert rounds.step().opened is None
        clock.advance(WAITING_GRACE_S - 1)
        assert rounds.step().opened is None
        assert "no round opens" not in caplog.text  # devices still joining at start are not a fault
        for _ in range(5):
            clock.advance(1)
            assert rounds.step().opened is None
        assert caplog.text.count("no round opens: 1 eligible device(s), min_devices = 2") == 1
        born(rounds, "b", seq=1)
        assert rounds.step().opened is not None
    assert "round 1 opens: enough eligible devices again" in caplog.text


def test_a_device_that_cannot_do_its_task_ends_its_wait_and_is_left_out_until_its_birth_changes(
    tmp_path: Path, model: bytes
) -> None:
    rounds, _ = make_rounds(tmp_path, model, FedAvgM(momentum=0.9), devices=("a", "b", "c"), min_devices=2)
    tasks = dict(rounds.step().tasks)
    assert sorted(tasks) == ["a", "b", "c"]
    assert fail(rounds, "c", tasks["c"]) is None
    for device in ("a", "b"):
        assert answer(rounds, device, tasks[device])
    closed = rounds.step()  # at once: nothing is left to wait for, the deadline is 60 s away
    assert closed.ended is not None and closed.ended.status == "closed" and closed.ended.accepted == 2
    assert rounds.store.task(1, "c", "train").status == "failed"  # type: ignore[union-attr]
    (row,) = rounds.store.failures()
    assert row["device"] == "c" and row["reason"] == int(wire.FailureReason.LABELS)
    assert rounds.store.devices()[2]["failure"] == "labels: labels [7] not in 0..5"

    second = rounds.step()
    assert second.opened is not None and sorted(d for d, _ in second.tasks) == ["a", "b"]
    why = rounds.policy.eligibility.why_not(rounds.registry.get("c"))  # type: ignore[arg-type]
    assert why is not None and why.startswith("failed its last task (labels")
    born(rounds, "c", seq=1, model=rounds.publisher.version)  # re-announced after installing the new model
    assert rounds.registry.get("c").failure is not None  # type: ignore[union-attr]
    born(rounds, "c", seq=1, samples=80)  # its data was fixed: another sample count
    assert rounds.registry.get("c").failure is None  # type: ignore[union-attr]
    assert rounds.store.devices()[2]["failure"] is None


def test_data_fixed_without_changing_its_row_count_is_a_new_birth(tmp_path: Path, model: bytes) -> None:
    rounds, _ = make_rounds(tmp_path, model, FedAvgM(momentum=0.9))
    born(rounds, "a", seq=1, data=b"L" * 16)
    tasks = dict(rounds.step().tasks)
    assert fail(rounds, "a", tasks["a"]) is None
    born(rounds, "a", seq=1, data=b"L" * 16)  # the same file, announced again
    assert rounds.registry.get("a").failure is not None  # type: ignore[union-attr]
    born(rounds, "a", seq=1, data=b"F" * 16)  # its labels were fixed: same rows, another digest
    assert rounds.registry.get("a").failure is None  # type: ignore[union-attr]


def test_a_failed_task_goes_to_a_spare_and_a_round_everyone_failed_ends_at_once(tmp_path: Path, model: bytes) -> None:
    rounds, _ = make_rounds(tmp_path, model, FedAvgM(momentum=0.9), devices=("a", "b", "c"), min_devices=2,
                            fraction=0.5)  # fmt: skip
    tasks = dict(rounds.step().tasks)
    spare = ({"a", "b", "c"} - set(tasks)).pop()
    first, second = sorted(tasks)
    assert fail(rounds, first, tasks[first]) is None
    handover = rounds.step()
    assert [d for d, _ in handover.tasks] == [spare]
    assert fail(rounds, second, tasks[second]) is None
    assert fail(rounds, spare, dict(handover.tasks)[spare], wire.FailureReason.NO_DATA) is None
    ended = rounds.step()
    assert ended.ended is not None and ended.ended.status == "failed"
    assert rounds.store.rounds()[0].note == "every selected device failed its task"


def test_failure_reports_are_checked_like_updates(tmp_path: Path, model: bytes) -> None:
    rounds, _ = make_rounds(tmp_path, model, FedAvgM(momentum=0.9))
    tasks = dict(rounds.step().tasks)
    report = wire.TaskFailure(os.urandom(16), "a", 1, tasks["a"].task_id, wire.FailureReason.SHAPE)
    assert rounds.report_failure(report, "b") == "device 'a' does not match its topic ('b')"
    forged = wire.TaskFailure(os.urandom(16), "b", 1, tasks["a"].task_id, wire.FailureReason.SHAPE)
    assert "has no task" in str(rounds.report_failure(forged, "b"))  # b cannot fail a's task for it
    assert rounds.report_failure(report, "a") is None
    assert rounds.report_failure(report, "a") is None  # a resend: taken once, receipted again
    again = wire.TaskFailure(os.urandom(16), "a", 1, tasks["a"].task_id, wire.FailureReason.SHAPE)
    assert "is already failed" in str(rounds.report_failure(again, "a"))
    assert len(rounds.store.failures()) == 1
    assert not answer(rounds, "a", tasks["a"])  # and its task cannot be answered after it failed it


def test_a_failure_mark_survives_a_gateway_restart(tmp_path: Path, model: bytes) -> None:
    rounds, _ = make_rounds(tmp_path, model, FedAvgM(momentum=0.9))
    tasks = dict(rounds.step().tasks)
    assert fail(rounds, "a", tasks["a"]) is None
    rounds.store.close()
    again = Registry(GatewayStore(tmp_path / "gw" / "gateway.db"))
    assert again.get("a").failure == "labels: labels [7] not in 0..5"  # type: ignore[union-attr]
    born_again = wire.Presence("a", True, 1, 0, wire.Capabilities(ram=1 << 20, backend="x", samples=50))
    again.observe(born_again, wire.encode(born_again))  # the same birth, retained, after the restart
    assert again.get("a").failure is not None  # type: ignore[union-attr]
