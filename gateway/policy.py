"""Round policy: which devices get which task, and when a round closes, fails or is evaluated.

The shape is Flower's ``configure_fit`` without its polling: at any instant
the service asks ``RoundPolicy.plan`` what to do, given the open round, the
registry, a read-only view of the store, the current model version and
``now``; the policy answers with a ``Plan`` (a round to open, tasks to send,
tasks withdrawn, close, fail, finish) and the service carries it out: it
records the plan in the store, then sends the tasks. Nothing here writes,
sends or reads a clock, so every rule is tested with a fake clock and no
broker.

Synchronous mode: a round selects ``fraction`` of the eligible devices (at
least ``min_devices``), asks ``overprovision`` more, and closes when the
target has answered, or at its deadline with at least ``min_updates``;
a selected device that dies mid-round is replaced. Asynchronous mode keeps
``concurrency`` devices busy and aggregates every ``buffer_size`` updates
(FedBuff, Nguyen et al. 2022). After the configured number of rounds, every
eligible device is asked to evaluate the final model on its own held-out
data, once.

Under ``[privacy] mode = "central-dp"`` selection is the sampling the
accountant assumes: each eligible device is asked with probability q,
independently (Poisson sampling), nobody is asked in another's place (no
over-provisioning, no reassignment), and the round closes when every asked
device has answered or at its deadline, with whatever arrived: it never fails
for want of updates. Once the budget has no room for another round, training
ends as if the configured rounds were done. Under ``local-dp`` selection is
as usual, less the devices whose own budget has no room for another update.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from edge_runtime import wire

from .admission import RoundView
from .aggregate import StreamingAggregate
from .claims import asks_for_report, row_asks_for_report
from .config import RoundsSection
from .registry import Eligibility, Registry
from .store import RoundRow


@dataclass
class OpenRound:
    """The round being aggregated, in memory; its durable twin is the ``rounds`` row."""

    row: RoundRow
    aggregate: StreamingAggregate
    selected: set[str] = field(default_factory=set)
    replaced: set[str] = field(default_factory=set)  # devices whose task went to another (dead, or failed)
    failed: set[str] = field(default_factory=set)  # devices that reported they cannot do their task

    @property
    def maybe_all_answered(self) -> bool:
        """No task of the round can still be waiting: a cheap guard before asking the store to be sure."""
        return len(self.selected) - self.aggregate.count - len(self.failed) <= 0
    registry_seen: tuple[int, int] = (-1, -1)  # registry (departures, failures) when the round last looked

    @property
    def number(self) -> int:
        return self.row.round

    @property
    def view(self) -> RoundView:
        return RoundView(self.row.round, self.row.mode, self.row.base_version)


@dataclass
class Plan:
    """What the policy decided at one instant. Empty means: nothing to do until something changes."""

    open: RoundRow | None = None  # open this round first
    kind: str = "train"  # what the tasks ask: train | eval
    tasks: list[tuple[str, wire.Task]] = field(default_factory=list)  # (device, task): record, then send
    deadline: float = 0.0  # of the tasks
    withdrawn: list[str] = field(default_factory=list)  # devices of the open round that died before delivering
    replaced: list[str] = field(default_factory=list)  # devices whose work the plan's tasks take over
    expired: list[tuple[int, str, str]] = field(default_factory=list)  # (round, device, kind) past their deadline
    registry_seen: tuple[int, int] | None = None  # the registry's (departures, failures) this plan looked at
    close: bool = False  # aggregate the open round into a new model version
    fail: str | None = None  # end the open round without a new version, for this reason
    finish_evaluation: bool = False  # the final evaluation has its reports (or its deadline passed)
    finished: bool = False  # every configured round is done and the final model is evaluated
    # Why no round opens now (too few eligible devices): said, not acted on. A function, called only when the
    # reason is to be said: it reads every device's record, and a plan is made after every birth.
    why_waiting: Callable[[], str] | None = None

    @property
    def waiting(self) -> str | None:
        return self.why_waiting() if self.why_waiting is not None else None

    def __bool__(self) -> bool:
        return bool(
            self.open or self.tasks or self.withdrawn or self.expired or self.close or self.fail
            or self.finish_evaluation or self.finished
        )  # fmt: skip


class History(Protocol):
    """Read-only questions the policy asks of the store (``GatewayStore`` answers them)."""

    def last_round(self) -> int: ...

    def closed_training_rounds(self) -> int: ...

    def evaluated(self, version: bytes) -> bool: ...

    def round_counts(self, round_: int) -> dict[str, int]: ...

    def outstanding(self, round_: int, kind: str) -> int:
        """Tasks of the round that may still be answered."""
        ...

    def failed_devices(self, round_: int, kind: str) -> list[str]: ...

    def waiting_devices(self, round_: int | None = None, kind: str | None = None) -> list[tuple[int, str, str, float]]:
        """(round, device, kind, deadline) of every task sent and not yet answered."""
        ...


@dataclass(frozen=True)
class PrivacyRules:
    """The federation's privacy setting as selection and tasks need it (from ``[privacy]``)."""

    mode: str  # central-dp | local-dp
    sampling_rate: float  # central-dp: q
    clip: float  # the first round's clip (adaptive clipping moves it: PrivacyView.clip)
    noise_multiplier: float  # z: on the aggregate (central) or on each device (local)
    clip_bit: bool = False  # adaptive clipping: devices report whether they were within the clip

    @property
    def central(self) -> bool:
        return self.mode == "central-dp"


@dataclass(frozen=True)
class PrivacyView:
    """What the ledger says now: the next round's clip, and whose budget has room for more."""

    clip: float
    exhausted: bool = False  # central-dp: one more round would take the accountant past the budget
    spent_devices: frozenset[str] = frozenset()  # local-dp: devices one more update would take past theirs


@dataclass(frozen=True)
class TaskSettings:
    """What every training task carries besides its round and deadline."""

    epochs: int
    learning_rate: float
    density: float
    batch_size: int
    prox_mu: float
    value_coding: int
    report_every: int

    @classmethod
    def from_rounds(cls, rounds: RoundsSection, prox_mu: float) -> TaskSettings:
        return cls(rounds.epochs, rounds.learning_rate, rounds.density, rounds.batch_size, prox_mu,
                   rounds.value_coding, rounds.report_every)  # fmt: skip


class RoundPolicy:
    def __init__(
        self,
        rules: RoundsSection,
        eligibility: Eligibility,
        task_settings: TaskSettings,
        rng: np.random.Generator,
        new_id: Callable[[], bytes] = lambda: os.urandom(16),
        privacy: PrivacyRules | None = None,
    ) -> None:
        self.rules = rules
        self.eligibility = eligibility
        self.task_settings = task_settings
        self.rng = rng  # under DP, seeded from the OS's entropy: a sample nobody can predict (service.py)
        self.new_id = new_id  # task ids must be unique: devices drop a task id they have seen
        self.privacy = privacy
        # The publisher's word that the current version's activation ranges are still moving (rounds.py wires
        # it): the next training round asks for reports whatever the report_every schedule says, recorded in its
        # row, since rounds.py takes ranges only from a round that asked.
        self.ranges_due: Callable[[], bool] = lambda: False
        self.view: PrivacyView | None = None  # set before each plan when privacy is on (rounds.py)
        # [rounds] interval: no sync training round opens before this (the last one's opening + interval); the
        # service sets it from the store at start, so a restart keeps the schedule.
        self.next_open_at = 0.0

    # -- the one entry point ------------------------------------------------------------------------------
    def plan(
        self, open_round: OpenRound | None, registry: Registry, history: History, version: bytes, now: float
    ) -> Plan:
        if open_round is None:
            progress = self._progress(history, version)
            if progress == "finished":
                return Plan(finished=True)
            if progress == "evaluate":
                return self._open_evaluation(registry, history, version, now)
            if self.rules.mode == "async":
                row = self.next_buffer(history, version, now)
                if row is None:  # unreachable while rounds remain; kept so a plan never opens nothing
                    return Plan()
                plan = self._keep_busy(row, registry, history, version, now)
                plan.open = row
                return plan
            if now < self.next_open_at:
                return Plan()  # [rounds] interval: the next round is not due yet
            plan = self._open_sync(registry, history, version, now)
            if plan.open is not None and self.rules.interval:
                self.next_open_at = plan.open.started + self.rules.interval
            return plan
        if open_round.row.mode == "eval":
            row = open_round.row
            reports = history.round_counts(open_round.number)["eval"]
            done = reports + len(open_round.failed) >= row.target or now >= row.deadline
            return Plan(finish_evaluation=done)
        if self.rules.mode == "async":
            if open_round.aggregate.count >= self.rules.buffer_size:
                return Plan(close=True)
            return self._keep_busy(open_round.row, registry, history, version, now)
        return self._sync_step(open_round, registry, history, version, now)

    def next_buffer(self, history: History, version: bytes, now: float, closing: int = 0) -> RoundRow | None:
        """The asynchronous round to open (at once, while ``closing`` is aggregated), unless rounds are done."""
        limit = self.rules.rounds
        if limit and history.closed_training_rounds() + (1 if closing else 0) >= limit:
            return None
        number = max(history.last_round(), closing) + 1
        row = RoundRow(number, version, "open", "async", now, now + self.rules.deadline, self.rules.buffer_size)
        return self._reporting(self._private_row(row, 0))

    # -- steps ----------------------------------------------------------------------------------------------
    def _progress(self, history: History, version: bytes) -> str | None:
        """None while rounds remain; 'evaluate' when the final model awaits evaluation; else 'finished'.

        A central- or distributed-DP budget with no room for another round ends training as the last configured
        round does.
        Under local DP nothing is evaluated: the reports would leave the devices without noise."""
        limit = self.rules.rounds
        # central-dp and distributed-dp (secure aggregation, whose rules are not the policy's) set ``exhausted``.
        spent = self.view is not None and self.view.exhausted
        if not spent and (not limit or history.closed_training_rounds() < limit):
            return None
        if self.privacy is not None and not self.privacy.central:
            return "finished"
        return "finished" if history.evaluated(version) else "evaluate"

    def _eligible(self, registry: Registry, exclude: set[str] | frozenset[str] = frozenset()) -> list[str]:
        if self.privacy is not None and self.view is not None and self.view.spent_devices:
            exclude = set(exclude) | self.view.spent_devices
        return sorted(r.device for r in registry.eligible(self.eligibility) if r.device not in exclude)

    def _why_waiting(self, registry: Registry, eligible: int) -> str:
        """The operator's answer to "why does nothing happen": how many devices are short, and why the others
        cannot be asked (offline, revoked, failed their last task, too small...), most common reason first."""
        reasons: dict[str, int] = {}
        for record in registry.all():
            why = self.eligibility.why_not(record)
            if why is not None:
                key = "failed their last task" if why.startswith("failed its last task") else why
                reasons[key] = reasons.get(key, 0) + 1
        others = ", ".join(f"{n} {why}" for why, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))
        return (f"no round opens: {eligible} eligible device(s), min_devices = {self.rules.min_devices}"
                + (f" (not eligible: {others})" if others else ""))  # fmt: skip

    def _task(self, number: int, version: bytes, deadline: float, evaluate: bool, row: RoundRow | None) -> wire.Task:
        """One task; a DP round's tasks carry the clip and noise the round opened with (its row), never the
        configuration's current ones: a restart with other settings must not hand out tasks the ledger would
        account at the round's."""
        s = self.task_settings
        p = self.privacy
        every = s.report_every
        report = row_asks_for_report(row, every) if row is not None else asks_for_report(number, every)
        if p is not None and not evaluate and row is not None and row.privacy != "off":
            central = row.privacy == "central-dp"
            # Local DP: nothing leaves a device without noise, so no reports; central: the gateway is trusted
            # with the devices' metrics, but activation ranges would go into the published model (not taken).
            report = report and central
            return wire.Task(
                self.new_id(), number, version, s.epochs, s.learning_rate, s.density, int(deadline), s.batch_size,
                s.prox_mu, value_coding=s.value_coding, report=report, clip=row.clip,
                noise=0.0 if central else row.noise, clip_bit=p.clip_bit and central,
            )  # fmt: skip
        return wire.Task(
            self.new_id(), number, version, s.epochs, s.learning_rate, s.density, int(deadline), s.batch_size,
            s.prox_mu, evaluate_only=evaluate, value_coding=s.value_coding, report=report,
        )  # fmt: skip

    def _tasks(
        self, devices: list[str], number: int, version: bytes, deadline: float, evaluate: bool = False,
        row: RoundRow | None = None,
    ) -> list[tuple[str, wire.Task]]:
        return [(device, self._task(number, version, deadline, evaluate, row)) for device in devices]

    def _reporting(self, row: RoundRow) -> RoundRow:
        """A training round's row with whether its tasks ask for reports: on the schedule, or while ranges move
        (not in a DP round, which takes no ranges)."""
        if row.privacy == "local-dp":  # nothing leaves a device without noise: its tasks never ask (_task)
            row.report = False
            return row
        due = row.privacy == "off" and self.ranges_due()
        row.report = asks_for_report(row.round, self.task_settings.report_every) or due
        return row

    def _private_row(self, row: RoundRow, population: int) -> RoundRow:
        """A training round's row with the privacy it opens under (mode, population, clip, accounted noise)."""
        p = self.privacy
        if p is None:
            return row
        clip = self.view.clip if self.view is not None and p.central else p.clip
        clip = float(np.float32(clip))  # as the task carries it: the device and the gateway clip to the same bound
        row.privacy, row.population, row.clip, row.noise = p.mode, population, clip, p.noise_multiplier
        row.sampling_rate = p.sampling_rate if p.central else 1.0
        return row

    def _open_sync(self, registry: Registry, history: History, version: bytes, now: float) -> Plan:
        rules = self.rules
        if registry.online < rules.min_devices:  # O(1): no need to look at every record to know it is too few
            return Plan(why_waiting=lambda: self._why_waiting(registry, len(self._eligible(registry))))
        eligible = self._eligible(registry)
        if len(eligible) < rules.min_devices:
            return Plan(why_waiting=lambda: self._why_waiting(registry, len(eligible)))
        if self.privacy is not None and self.privacy.central:
            return self._open_sampled(eligible, history, version, now)
        target = max(rules.min_devices, math.ceil(rules.fraction * len(eligible)))
        ask = min(len(eligible), math.ceil(target * (1 + rules.overprovision)))
        chosen = sorted(self.rng.choice(eligible, size=ask, replace=False).tolist())
        row = RoundRow(history.last_round() + 1, version, "open", "sync", now, now + rules.deadline, target)
        row = self._reporting(self._private_row(row, len(eligible)))
        return Plan(open=row, tasks=self._tasks(chosen, row.round, version, row.deadline, row=row),
                    deadline=row.deadline)  # fmt: skip

    def _open_sampled(self, eligible: list[str], history: History, version: bytes, now: float) -> Plan:
        """Central DP: Poisson sampling, each eligible device asked with probability q, independently; every
        device asked is waited for (the target), and none is asked in another's place."""
        assert self.privacy is not None
        draws = self.rng.random(len(eligible))
        chosen = [d for d, u in zip(eligible, draws, strict=True) if u < self.privacy.sampling_rate]
        row = RoundRow(history.last_round() + 1, version, "open", "sync", now, now + self.rules.deadline, len(chosen))
        row = self._reporting(self._private_row(row, len(eligible)))
        return Plan(open=row, tasks=self._tasks(chosen, row.round, version, row.deadline, row=row),
                    deadline=row.deadline)  # fmt: skip

    def _sync_step(
        self, open_round: OpenRound, registry: Registry, history: History, version: bytes, now: float
    ) -> Plan:
        rules, row = self.rules, open_round.row
        accepted = open_round.aggregate.count
        if row.privacy == "central-dp":
            # Every asked device answered (an update, a failure) or the deadline passed: close with what came.
            answered = open_round.maybe_all_answered and not history.outstanding(row.round, "train")
            return Plan(close=now >= row.deadline or answered)
        if accepted >= row.target or (now >= row.deadline and accepted >= rules.min_updates):
            return Plan(close=True)
        if now >= row.deadline:
            return Plan(fail="deadline passed with too few updates")
        plan = self._reassign(open_round, registry, history, version)
        if (
            not plan.tasks
            and not plan.withdrawn
            and open_round.maybe_all_answered
            and not history.outstanding(row.round, "train")
        ):
            # Every task is answered: delivered, or failed with no spare to take it. Waiting is pointless.
            if accepted >= rules.min_updates:
                return Plan(close=True, registry_seen=plan.registry_seen)
            return Plan(fail="every selected device failed its task", registry_seen=plan.registry_seen)
        return plan

    def _reassign(self, open_round: OpenRound, registry: Registry, history: History, version: bytes) -> Plan:
        """Give the tasks of selected devices that died before delivering, or failed, to spare devices.

        Plans come with every accepted update; scanning the round's tasks each time made a 1,000-device
        round quadratic, so the scan runs only after some device has gone offline or reported a failure.
        """
        seen = (registry.departures, registry.failures)
        if seen == open_round.registry_seen:
            return Plan()
        waiting = [d for _, d, _, _ in history.waiting_devices(open_round.number, "train")]
        dead = [d for d in sorted(waiting) if (r := registry.get(d)) is not None and not r.online]
        failed = [d for d in history.failed_devices(open_round.number, "train") if d not in open_round.replaced]
        if not dead and not failed:
            return Plan(registry_seen=seen)
        spare = self._eligible(registry, exclude=open_round.selected)
        replacements = self.rng.permutation(spare)[: len(dead) + len(failed)].tolist() if spare else []
        deadline = open_round.row.deadline
        return Plan(
            tasks=self._tasks(replacements, open_round.number, version, deadline, row=open_round.row),
            deadline=deadline,
            withdrawn=dead,
            replaced=dead + failed,
            registry_seen=seen,
        )

    def _keep_busy(self, row: RoundRow, registry: Registry, history: History, version: bytes, now: float) -> Plan:
        """Async: expire overdue tasks and hand new ones to idle devices, up to ``concurrency`` at once."""
        waiting = history.waiting_devices(kind="train")
        expired = [(r, d, k) for r, d, k, deadline in waiting if deadline < now]
        busy = {d for _, d, _, deadline in waiting if deadline >= now}
        idle = self._eligible(registry, exclude=busy)
        free = self.rules.concurrency - len(busy)
        chosen = self.rng.permutation(idle)[:free].tolist() if free > 0 and idle else []
        deadline = now + self.rules.deadline
        return Plan(tasks=self._tasks(chosen, row.round, version, deadline, row=row), deadline=deadline,
                    expired=expired)  # fmt: skip

    def _open_evaluation(self, registry: Registry, history: History, version: bytes, now: float) -> Plan:
        eligible = self._eligible(registry)
        deadline = now + self.rules.deadline
        row = RoundRow(history.last_round() + 1, version, "open", "eval", now, deadline, len(eligible))
        row.privacy = self.privacy.mode if self.privacy is not None else "off"
        return Plan(open=row, kind="eval", tasks=self._tasks(eligible, row.round, version, deadline, evaluate=True),
                    deadline=deadline)  # fmt: skip
