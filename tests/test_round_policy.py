"""Round policy and admission without a broker: a real in-memory store, a real registry, a fake clock.

Every rule of a round (selection, over-provisioning, close on target or at
the deadline, failure, reassignment of the dead, async concurrency and
expiry, the final evaluation) and every admission rule is exercised here
in milliseconds; tests/test_gateway.py keeps the wiring through Mosquitto.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edge_runtime import wire
from gateway.admission import DUPLICATE, AdmissionRules, Outcome, RoundView, admit
from gateway.aggregate import StreamingAggregate, update_norm
from gateway.claims import row_asks_for_report
from gateway.clock import FakeClock
from gateway.config import RoundsSection
from gateway.policy import OpenRound, Plan, PrivacyRules, RoundPolicy, TaskSettings
from gateway.registry import Eligibility, Registry
from gateway.store import GatewayStore, RoundRow

V0, V1, V2 = (bytes([i]) * 32 for i in range(3))
SIZES = {3: 20, 5: 4}


class Federation:
    """The round policy's world: a store, a registry of devices, a clock, and the service's bookkeeping."""

    def __init__(self, **rules: object) -> None:
        self.store = GatewayStore(":memory:")
        self.store.add_model(V0, None, None, "v0.tflite", "v0.npz", 100)  # type: ignore[arg-type]
        self.registry = Registry(self.store)
        self.clock = FakeClock()
        self.rules = RoundsSection(**{"min_devices": 1, "deadline": 60.0, **rules})  # type: ignore[arg-type]
        ids = (i.to_bytes(16, "big") for i in itertools.count(1))
        settings = TaskSettings.from_rounds(self.rules, prox_mu=0.0)
        self.policy = RoundPolicy(self.rules, Eligibility(), settings, np.random.default_rng(0), lambda: next(ids))
        self.open: OpenRound | None = None
        self.version = V0
        self.seq: dict[str, int] = {}

    def join(self, *names: str, samples: int = 50) -> None:
        for name in names:
            seq = self.seq.get(name, 0) + 1
            self.seq[name] = seq
            caps = wire.Capabilities(ram=1 << 20, backend="litert", samples=samples)
            birth = wire.Presence(name, True, seq, int(self.clock.now()), caps)
            self.registry.observe(birth, wire.encode(birth))

    def die(self, name: str) -> None:
        death = wire.Presence(name, False, self.seq[name], int(self.clock.now()))
        self.registry.observe(death, wire.encode(death))

    def plan(self) -> Plan:
        """One step, recorded the way the service records it."""
        plan = self.policy.plan(self.open, self.registry, self.store, self.version, self.clock.now())
        ended = [(r, d, k, "expired") for r, d, k in plan.expired]
        if self.open is not None:
            ended += [(self.open.number, d, "train", "reassigned") for d in plan.withdrawn]
        current = plan.open or (self.open.row if self.open else None)
        if current is not None and (plan.open or plan.tasks or ended):
            tasks = [(d, t.task_id) for d, t in plan.tasks]
            self.store.record_plan(plan.open, current.round, plan.kind, tasks, self.version, plan.deadline, ended)
        if plan.open is not None:
            self.open = OpenRound(plan.open, StreamingAggregate(SIZES))
        if self.open is not None:
            self.open.selected.update(d for d, _ in plan.tasks)
            self.open.replaced.update(plan.replaced)
            if plan.registry_seen is not None:
                self.open.registry_seen = plan.registry_seen
        return plan

    def deliver(self, device: str, task: wire.Task) -> None:
        assert self.open is not None
        update = make_update(device, task)
        self.store.accept(update.update_id, self.open.number, task.round, device, "train", 40, 40.0, task.base_version,
                          100, 96, wire.encode(update))  # fmt: skip
        self.open.aggregate.add(update)

    def close(self, new_version: bytes) -> None:
        assert self.open is not None
        self.store.finish_round(self.open.number, new_version, self.version, "m", "m", 1, {})  # type: ignore[arg-type]
        self.version = new_version
        self.open = None


def make_update(device: str, task: wire.Task, samples: int = 40, value: float = 0.01) -> wire.Update:
    values = wire.CodedValues(wire.ValueCoding.FLOAT32, np.full(5, value, np.float32), 1.0)
    return wire.Update(os.urandom(16), device, task.round, task.base_version, samples,
                       [wire.TensorUpdate(3, SIZES[3], np.arange(5), values)])  # fmt: skip


# -- synchronous rounds ---------------------------------------------------------------------------------------
def test_no_round_opens_below_min_devices_and_one_opens_when_enough_join() -> None:
    fed = Federation(min_devices=3)
    fed.join("a", "b", "x")
    fed.die("x")
    waiting = fed.plan()
    assert not waiting and waiting.waiting == (
        "no round opens: 2 eligible device(s), min_devices = 3 (not eligible: 1 offline)"
    )  # the operator is told why nothing happens
    fed.join("c")
    plan = fed.plan()
    assert plan.open is not None and plan.open.round == 1 and plan.open.target == 3
    assert sorted(d for d, _ in plan.tasks) == ["a", "b", "c"]
    assert all(t.round == 1 and t.base_version == V0 and t.deadline == int(fed.clock.now() + 60) for _, t in plan.tasks)
    assert {s["device"] for s in fed.store.selections(1, "sent")} == {"a", "b", "c"}  # recorded before sending


def test_the_registry_counts_who_is_online_through_births_deaths_and_expulsions() -> None:
    fed = Federation()
    fed.join("a", "b", "c")
    fed.join("a")  # a re-birth of a device online: still one
    assert fed.registry.online == 3
    fed.die("b")
    stale = wire.Presence("c", False, 99, 0)  # a death no birth carried: ignored
    fed.registry.observe(stale, wire.encode(stale))
    assert fed.registry.online == 2
    fed.registry.expel("a", "revoked")
    assert fed.registry.online == 1 == sum(r.online for r in fed.registry.all())
    fed.join("b")
    assert fed.registry.online == 2 == sum(r.online for r in fed.registry.all())


def test_a_fleet_still_announcing_itself_is_not_read_record_by_record_until_the_reason_is_said() -> None:
    """While fewer devices are online than min_devices, a plan (made after every birth) reads no record; the
    operator's reason is made from the records only when asked for."""
    fed = Federation(min_devices=5)
    fed.join("a", "b", "c")
    reads = []
    real = fed.registry.all
    fed.registry.all = lambda: reads.append(1) or real()  # type: ignore[method-assign]
    plan = fed.plan()
    assert not plan and plan.why_waiting is not None and not reads
    assert plan.waiting == "no round opens: 3 eligible device(s), min_devices = 5" and reads


def test_fraction_and_overprovision_decide_how_many_are_asked_and_how_many_close_the_round() -> None:
    fed = Federation(min_devices=2, fraction=0.5, overprovision=0.5)
    fed.join(*(f"d{i}" for i in range(10)))
    plan = fed.plan()
    assert plan.open is not None and plan.open.target == 5
    assert len(plan.tasks) == 8  # ceil(5 * 1.5)
    for device, task in plan.tasks[:4]:
        fed.deliver(device, task)
    assert not fed.plan().close
    fed.deliver(*plan.tasks[4])
    assert fed.plan().close  # the target, not every asked device


def test_a_round_closes_at_its_deadline_with_min_updates_and_fails_without() -> None:
    fed = Federation(min_devices=2, min_updates=2, deadline=30.0)
    fed.join("a", "b", "c")
    tasks = fed.plan().tasks
    fed.deliver(*tasks[0])
    fed.clock.advance(29.9)
    assert not fed.plan()
    fed.clock.advance(0.1)
    assert fed.plan().fail == "deadline passed with too few updates"
    fed.deliver(*tasks[1])
    assert fed.plan().close


def test_a_dead_device_is_replaced_by_a_spare_in_the_same_round_once() -> None:
    fed = Federation(min_devices=2, fraction=0.5)
    fed.join("a", "b", "c", "d")
    first = fed.plan()
    chosen = [d for d, _ in first.tasks]
    spares = sorted({"a", "b", "c", "d"} - set(chosen))
    fed.die(chosen[0])
    plan = fed.plan()
    assert plan.withdrawn == [chosen[0]]
    assert len(plan.tasks) == 1 and plan.tasks[0][0] in spares
    assert plan.tasks[0][1].round == 1 and plan.tasks[0][1].deadline == first.tasks[0][1].deadline
    assert fed.store.task(1, chosen[0], "train").status == "reassigned"  # type: ignore[union-attr]
    assert not fed.plan()  # nobody else left: no rescan, nothing to do


def test_a_device_that_dies_after_delivering_is_not_replaced() -> None:
    fed = Federation(min_devices=2)
    fed.join("a", "b", "c")
    tasks = fed.plan().tasks
    fed.deliver(*tasks[0])
    fed.die(tasks[0][0])
    plan = fed.plan()
    assert plan.withdrawn == [] and plan.tasks == []
    assert plan.registry_seen == (fed.registry.departures, fed.registry.failures)


def test_selection_is_deterministic_for_a_seed() -> None:
    picks = []
    for _ in range(2):
        fed = Federation(min_devices=1, fraction=0.3)
        fed.join(*(f"d{i:02d}" for i in range(20)))
        picks.append([d for d, _ in fed.plan().tasks])
    assert picks[0] == picks[1] and len(picks[0]) == 6


def test_after_the_configured_rounds_every_eligible_device_evaluates_the_final_model_once() -> None:
    fed = Federation(rounds=1, min_devices=2, report_every=1)
    fed.join("a", "b")
    for device, task in fed.plan().tasks:
        fed.deliver(device, task)
    assert fed.plan().close
    fed.close(V1)
    plan = fed.plan()
    assert plan.open is not None and plan.open.mode == "eval" and plan.kind == "eval"
    assert all(t.evaluate_only and t.base_version == V1 for _, t in plan.tasks)
    assert fed.store.task(2, "a", "eval") is not None
    assert not fed.plan().finish_evaluation  # no report yet, deadline ahead
    fed.clock.advance(61)
    assert fed.plan().finish_evaluation
    fed.store.end_round(2, "closed")
    fed.open = None
    assert fed.plan().finished


# -- asynchronous rounds --------------------------------------------------------------------------------------
def test_async_keeps_concurrency_devices_busy_and_closes_each_full_buffer() -> None:
    fed = Federation(mode="async", concurrency=2, buffer_size=2, deadline=10.0)
    fed.join("a", "b", "c")
    plan = fed.plan()
    assert plan.open is not None and plan.open.mode == "async" and len(plan.tasks) == 2
    assert not fed.plan().tasks  # both slots busy
    device, task = plan.tasks[0]
    fed.deliver(device, task)
    refill = fed.plan()
    assert len(refill.tasks) == 1 and refill.tasks[0][0] != plan.tasks[1][0]  # never the still-busy one
    fed.deliver(*plan.tasks[1])
    assert fed.plan().close


def test_async_expires_overdue_tasks_and_frees_their_slots() -> None:
    fed = Federation(mode="async", concurrency=1, buffer_size=5, deadline=10.0)
    fed.join("a")
    first = fed.plan().tasks
    assert len(first) == 1
    fed.clock.advance(9.5)
    assert not fed.plan()  # still within its deadline: the one slot stays taken
    fed.clock.advance(1.0)
    plan = fed.plan()
    assert plan.expired == [(1, "a", "train")]
    assert [d for d, _ in plan.tasks] == ["a"]  # the freed slot goes to the idle device, with a new task
    (row,) = fed.store.selections(1)
    assert row["status"] == "sent" and row["task_id"] == plan.tasks[0][1].task_id != first[0][1].task_id


def test_the_next_async_buffer_opens_while_one_closes_unless_the_rounds_are_done() -> None:
    fed = Federation(mode="async", rounds=2, buffer_size=1)
    fed.join("a")
    fed.plan()
    assert fed.open is not None
    row = fed.policy.next_buffer(fed.store, fed.version, fed.clock.now(), closing=1)
    assert row is not None and row.round == 2
    fed.close(V1)
    assert fed.policy.next_buffer(fed.store, fed.version, fed.clock.now(), closing=2) is None  # that was the last


# -- admission ------------------------------------------------------------------------------------------------
SYNC = AdmissionRules("sync", norm_bound=10.0, max_staleness=2)


@pytest.fixture
def sync_round() -> tuple[Federation, wire.Task]:
    fed = Federation(min_devices=1)
    fed.join("a", "b")
    plan = fed.plan()
    return fed, dict(plan.tasks)["a"]


def judge(fed: Federation, update: wire.Update, device: str = "a", rules: AdmissionRules = SYNC) -> str:
    view = fed.open.view if fed.open else None
    verdict = admit(update, device, update_norm(update), view, fed.version, fed.store, rules)
    if verdict.outcome is Outcome.ACCEPT:
        return "accept"
    return verdict.reason


def test_admission_accepts_the_answer_to_an_open_task(sync_round: tuple[Federation, wire.Task]) -> None:
    fed, task = sync_round
    assert judge(fed, make_update("a", task)) == "accept"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"device": "b"}, "does not match its topic"),
        ({"round": 7}, "round 7 is not the open round 1"),
        ({"base_version": V2}, "is not the round's"),
        ({"samples": 0}, "zero samples"),
    ],
)
def test_admission_refuses_an_update_that_does_not_answer_its_task(
    sync_round: tuple[Federation, wire.Task], change: dict[str, object], reason: str
) -> None:
    fed, task = sync_round
    assert reason in judge(fed, replace(make_update("a", task), **change))  # type: ignore[arg-type]


def test_admission_refuses_a_norm_beyond_the_bound_and_a_non_finite_one(
    sync_round: tuple[Federation, wire.Task],
) -> None:
    fed, task = sync_round
    assert "exceeds the bound 10" in judge(fed, make_update("a", task, value=100.0))
    update = make_update("a", task)
    assert "exceeds the bound" in admit(update, "a", float("nan"), fed.open.view, V0, fed.store, SYNC).reason  # type: ignore[union-attr]


def test_admission_refuses_a_device_without_a_task_and_one_whose_task_expired() -> None:
    fed = Federation(min_devices=2, fraction=0.5)
    fed.join("a", "b", "c", "d")
    tasks = dict(fed.plan().tasks)
    outsider = next(d for d in "abcd" if d not in tasks)
    some_task = next(iter(tasks.values()))
    assert f"{outsider} has no open task in round 1" in judge(fed, make_update(outsider, some_task), outsider)
    late = next(iter(tasks))
    fed.store.set_selection_status(1, late, "train", "expired")
    assert f"{late} has no open task in round 1" in judge(fed, make_update(late, tasks[late]), late)


def test_a_device_that_looked_dead_and_was_replaced_still_counts_when_its_update_arrives() -> None:
    """A broker restart makes every device look dead for a moment; the work they stored meanwhile is real."""
    fed = Federation(min_devices=2, fraction=0.5)
    fed.join("a", "b", "c", "d")
    tasks = dict(fed.plan().tasks)
    victim = next(iter(tasks))
    fed.die(victim)
    assert fed.plan().withdrawn == [victim]
    fed.join(victim)  # back after the restart, its update from the outbox on its way
    assert judge(fed, make_update(victim, tasks[victim]), victim) == "accept"


def test_admission_tells_a_duplicate_from_a_replay_of_a_refused_id(sync_round: tuple[Federation, wire.Task]) -> None:
    fed, task = sync_round
    update = make_update("a", task)
    fed.store.accept(update.update_id, 1, 1, "a", "train", 40, 40.0, V0, 100, 96, b"x")
    verdict = admit(update, "a", 0.1, fed.open.view, V0, fed.store, SYNC)  # type: ignore[union-attr]
    assert verdict.outcome is Outcome.DUPLICATE and verdict.reason == DUPLICATE and verdict.receipt_reason is None
    refused = make_update("a", task)
    fed.store.refuse(refused.update_id, "a", 1, "NaN values", 100)
    assert "replay of update id" in judge(fed, refused) and "NaN values" in judge(fed, refused)


def test_admission_without_an_open_round_says_whether_the_round_is_closing() -> None:
    fed = Federation()
    fed.join("a")
    task = dict(fed.plan().tasks)["a"]
    update = make_update("a", task)
    assert admit(update, "a", 0.1, None, V0, fed.store, SYNC, closing=1).reason.startswith("round 1 is closing")
    assert admit(update, "a", 0.1, None, V0, fed.store, SYNC).reason == "no round is open"


def test_evaluation_reports_count_only_against_an_evaluation_task_of_the_current_model() -> None:
    fed = Federation(rounds=1)
    fed.join("a", "b")
    for device, task in fed.plan().tasks:
        fed.deliver(device, task)
    fed.close(V1)
    tasks = dict(fed.plan().tasks)
    report = wire.Update(os.urandom(16), "a", tasks["a"].round, V1, 10, [], metrics={"eval_accuracy": 0.5})
    assert judge(fed, report) == "accept"
    assert "not of the current model" in judge(fed, replace(report, base_version=V0))
    fed.join("ghost")  # joined after the evaluation was asked: no task, no say
    ghost = replace(report, device="ghost", update_id=os.urandom(16))
    assert "no open evaluation task" in judge(fed, ghost, "ghost")
    assert "not taken while the final model is evaluated" in judge(fed, make_update("a", tasks["a"]))


def test_async_admission_weighs_staleness_and_refuses_a_claimed_newer_base() -> None:
    fed = Federation(mode="async", concurrency=2, buffer_size=1)
    rules = AdmissionRules("async", norm_bound=10.0, max_staleness=1)
    fed.join("a", "b")
    tasks = dict(fed.plan().tasks)
    fed.store.add_model(V1, V0, 1, "v1", "v1", 1)  # type: ignore[arg-type]
    fed.version = V1  # one version later, a's task is one behind
    update = make_update("a", tasks["a"])
    verdict = admit(update, "a", update_norm(update), fed.open.view, V1, fed.store, rules)  # type: ignore[union-attr]
    assert verdict.accepted and verdict.weight_factor == pytest.approx(2**-0.5)
    claimed = replace(make_update("a", tasks["a"]), base_version=V1)  # a lie: its task was on V0
    assert "is not its task's" in judge(fed, claimed, rules=rules)
    fed.store.add_model(V2, V1, 2, "v2", "v2", 1)  # type: ignore[arg-type]
    fed.version = V2
    assert "2 versions stale (max 1)" in judge(fed, make_update("b", tasks["b"]), "b", rules=rules)
    unknown = replace(make_update("b", tasks["b"]), base_version=bytes([9]) * 32)
    assert "is unknown" in judge(fed, unknown, "b", rules=rules)


def test_round_rows_written_by_a_plan_are_what_the_store_reads_back() -> None:
    fed = Federation()
    fed.join("a")
    plan = fed.plan()
    assert plan.open is not None
    back = fed.store.open_round_row()
    assert back == RoundRow(1, V0, "open", "sync", plan.open.started, plan.open.deadline, 1, report=True)
    assert RoundView(1, "sync", V0) == fed.open.view  # type: ignore[union-attr]


def test_a_store_from_before_rounds_recorded_their_reports_gains_the_column_and_its_rows_follow_the_schedule(
    tmp_path: Path,
) -> None:
    """Rows an older gateway wrote say nothing of reports: they asked on the report_every schedule."""
    path = tmp_path / "gateway.db"
    GatewayStore(path).close()
    with sqlite3.connect(path) as db:  # the store as a gateway before the column wrote it
        db.execute("ALTER TABLE rounds DROP COLUMN report")
        for number in (1, 2):
            db.execute("INSERT INTO rounds (round, base_version, status, mode, started, deadline, target) "
                       "VALUES (?, ?, 'closed', 'sync', 0, 1, 2)", (number, V0.hex()))  # fmt: skip
    db.close()
    store = GatewayStore(path)
    rows = store.rounds()
    assert [row.report for row in rows] == [None, None]
    assert [row_asks_for_report(row, report_every=5) for row in rows] == [True, False]


@pytest.mark.parametrize(("mode", "asks"), [("local-dp", [False, False]), ("central-dp", [True, False])])
def test_dp_rounds_ask_for_reports_only_as_their_tasks_do_and_never_off_the_schedule(
    mode: str, asks: list[bool]
) -> None:
    """No DP round takes ranges, so none asks while ranges move; a local-DP task never asks (nothing leaves a
    device without noise), and its row says so."""
    fed = Federation(report_every=5)
    fed.policy.privacy = PrivacyRules(mode, 1.0, 0.5, 1.0)
    fed.policy.ranges_due = lambda: True
    fed.join("a")
    rows, tasks = [], []
    for _ in range(2):
        plan = fed.plan()
        assert plan.open is not None
        rows.append(plan.open.report)
        tasks.append(all(t.report for _, t in plan.tasks))
        fed.store.end_round(plan.open.round, "closed")
        fed.open = None
    assert rows == asks and tasks == asks
