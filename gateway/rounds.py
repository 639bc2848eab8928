"""The round lifecycle: the open round in memory, each update taken into it, each step of the policy carried out.

This is everything the gateway does between a message arriving and a
message leaving, without MQTT: ``intake`` judges an update (admission),
commits it and folds it into the open round's aggregate; ``step`` asks the
round policy what to do now, records that in the store, and carries it out
(open, close into a new version, fail, finish the final evaluation),
returning what the service must send. With a fake clock and an in-memory or
temporary store, a whole federation's rounds run here without a broker.

Group commit (store.py): ``intake`` stages an update's row in the store's
open batch and keeps it ``Pending``; ``settle`` commits the batch with one
fsync and only then folds each committed update into the open round and
releases its receipt (``released``). A failed commit loses the batch
whole: nothing of it was folded or receipted, so its devices resend it.
The open round's aggregate therefore holds exactly the committed updates:
a round is settled before it is detached (a close counts everything staged
for it), under the lock that intake takes. ``max_batch`` 1 (the default) settles in each intake;
the service raises it, sets ``idle_commit`` (an update that finds the intake idle is due at once, so
batches form only while updates queue up) and ``on_commit_due``: a due batch is then committed by the
service's committer thread (``flush``), which waits for the fsync without the lock, so paho's thread
goes on judging and staging the next batch meanwhile.

Threads and the lock: ``intake`` runs on paho's network thread, ``step`` on
the round thread. ``_lock`` guards the open round for a few operations at a
time. Closing is the heavy step (strategy, export, hashes, fsyncs): the
round is detached under the lock, so the next asynchronous buffer takes
updates while its version is made without the lock.

Differential privacy (``privacy``, docs/privacy.md): before each plan the
budget hands the policy its view (the round's clip, whether another round
fits); a DP round's aggregate weighs every update 1 and takes no activation
ranges; its close releases the budget's noised mean and writes the round's
ledger entry in the transaction that closes it.

The anomaly detector (``detector``, robustness/, docs/robustness.md): an
update weighs its device's reliability when asked; at a close (never of a DP
round) the detector judges the round's kept sparse updates, the flagged and
quarantined ones leave the sums before the strategy steps, and the verdict
and the reliabilities it moved are written in the transaction that closes
the round. Before each plan the registry learns who is quarantined.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge_runtime import wire

from .admission import ANSWERABLE, AdmissionRules, Outcome, Verdict, admit
from .aggregate import StreamingAggregate
from .claims import bounded_metrics, row_asks_for_report
from .clock import Clock
from .disk import DiskSpace, OutOfSpace, is_out_of_space
from .groups import group_metrics
from .policy import OpenRound, Plan, RoundPolicy
from .privacy.accountant import LedgerEntry
from .privacy.budget import PrivacyBudget
from .publisher import Publisher
from .registry import Registry
from .robustness.detector import Detector, Judgement
from .store import Contribution, GatewayStore, RoundRow

log = logging.getLogger(__name__)
ASKED_REMEMBERED = 64  # earlier rounds whose asking for reports async intake keeps at hand (more are re-read)
WAITING_GRACE_S = 30.0  # how long too few eligible devices may last before the log says why no round opens


def evaluation_report(update: wire.Update, samples: int) -> wire.Update:
    """What is kept of an evaluation report: its ids, round, base, bounded samples and bounded metrics."""
    return wire.Update(update.update_id, update.device, update.round, update.base_version, samples, [],
                       metrics=bounded_metrics(update.metrics, samples))  # fmt: skip


@dataclass
class RoundSummary:
    """What a closed round did; passed to ``on_round_closed`` listeners (the demo prints it)."""

    round: int
    status: str
    version: bytes | None
    accepted: int
    refused: int
    uplink_bytes: int
    dense_bytes: int
    seconds: float
    metrics: dict[str, float]


@dataclass
class Pending:
    """A message judged and staged, waiting for its batch's commit: then folded (an accepted training update),
    and its receipt (device, id, refusal or None) released."""

    receipt: tuple[str, bytes, str | None] | None  # None: a refused message whose id was not readable gets none
    round: int = 0
    fold: tuple[wire.Update, float, float, int, bool] | None = None  # update, weight factor, norm, samples, ranges
    refused: str = ""  # a message refused before it was judged (``Rounds.refuse``): the device it came from

    def duplicate(self) -> None:
        """Its id turned out known when its batch was written: receipted as received, folded never."""
        self.fold = None

    def describe(self) -> str:
        """How a log line names it when its batch is lost."""
        if self.receipt is None:
            return f"the refusal of a message of {self.refused}"
        device, message_id, _ = self.receipt
        return f"{'the refusal of message' if self.refused else 'update'} {message_id.hex()[:12]} of {device}"


@dataclass
class Settled:
    """What settling the batch released: receipts to send, how many updates were counted, what was lost."""

    receipts: list[tuple[str, bytes, str | None]] = field(default_factory=list)
    counted: int = 0
    lost: list[Pending] = field(default_factory=list)
    error: BaseException | None = None  # why the lost were lost (a full disk)

    def __iadd__(self, other: Settled) -> Settled:
        self.receipts += other.receipts
        self.counted += other.counted
        self.lost += other.lost
        self.error = other.error or self.error
        return self


@dataclass
class Step:
    """What one step did, for the service to announce: tasks to send, and what changed."""

    tasks: list[tuple[str, wire.Task]] = field(default_factory=list)
    expiry: int = 0  # seconds the tasks stay deliverable (their deadline)
    opened: RoundRow | None = None
    ended: RoundSummary | None = None  # a round closed (with a new version) or failed
    evaluated: dict[str, float] | None = None  # the final evaluation's metrics
    finished: bool = False


class Rounds:
    def __init__(
        self,
        store: GatewayStore,
        registry: Registry,
        publisher: Publisher,
        policy: RoundPolicy,
        admission: AdmissionRules,
        clock: Clock,
        clip_norm: float | None = None,
        disk: DiskSpace | None = None,
        privacy: PrivacyBudget | None = None,
        detector: Detector | None = None,
    ) -> None:
        self.store = store
        self.detector = detector  # [robustness] detect: anomaly scores, reliability, quarantine
        self.registry = registry
        self.publisher = publisher
        self.policy = policy
        policy.ranges_due = lambda: publisher.ranges_due
        self.admission = admission
        self.clock = clock
        self.clip_norm = clip_norm
        self.disk = disk
        self.privacy = privacy
        self.paused: str | None = None  # why rounds stand still (low disk space), said once
        self._full_at: int | None = None  # free bytes when a write last failed for want of space
        self.sizes = publisher.sizes
        self.spec = dict(self.sizes)
        self.dense_bytes = 4 * sum(self.sizes.values())
        self._lock = threading.Lock()
        self._open: OpenRound | None = None
        self._closing: OpenRound | None = None  # detached for aggregation; its close is retried until it lands
        self._close_error = ""  # the last close failure, logged once, not at every retry
        self._waiting: str | None = None  # why no round opens, as last logged (once per change)
        self._waiting_since: float | None = None  # when the current shortage of eligible devices began
        self._waiting_said = 0.0  # when the shortage was last said (10,000 births change its count 10,000 times)
        self._secure_ledger: LedgerEntry | None = None  # a secure round's distributed-DP event, for its close
        self._asked: dict[int, bool] = {}  # earlier rounds: whether their tasks asked for reports (_takes_ranges)
        self.max_batch = 1  # messages staged before intake itself settles (group commit; the service raises it)
        # Group commit helps only a busy intake: one that was idle this long before an update commits it at once
        # (no one would share the fsync, and its receipt goes out with no hand-over to another thread).
        self.idle_commit: float | None = None
        self._intake_done: float | None = None  # when the last intake returned (None: none yet since start)
        self.keep_receipts = False  # the service sends receipts: settling keeps them for ``released``
        self._released = Settled()  # settled, not yet taken by the service (``released``)
        # Called (under the lock: it must only signal) when settling released receipts, so the service sends them
        # now rather than after the step that settled (a close then makes a version for seconds).
        self.on_settled: Callable[[], None] | None = None
        # Called (under the lock: it must only signal) when a batch is due (full, or the intake was idle): the
        # service's committer commits it off the MQTT thread. None: the intake commits it itself.
        self.on_commit_due: Callable[[], None] | None = None

    @property
    def open_round(self) -> OpenRound | None:
        return self._open

    @property
    def mode(self) -> str:
        return self.admission.mode

    def _new_aggregate(self, row: RoundRow) -> StreamingAggregate:
        if row.privacy != "off" and row.mode != "eval":
            # Every update weighs 1; central DP clips again to the round's clip (a device may lie about its own).
            clip = row.clip if row.privacy == "central-dp" else None
            return StreamingAggregate(self.sizes, clip_norm=clip, uniform=True)
        strategy: Any = self.publisher.strategy
        keep = strategy.buffered or self.detector is not None  # kept sparse: the detector scores each update
        return StreamingAggregate(self.sizes, keep_updates=keep, clip_norm=self.clip_norm,
                                  range_keys=self.publisher.master.range_keys)  # fmt: skip

    def _takes_ranges(self, row: RoundRow, task_round: int) -> bool:
        """Whether an update's activation ranges count: only if its task asked for them (a liar's unasked report
        would be the median of a round where the honest devices report none), and never in a DP round, where
        they would go into the published model around the noise."""
        return row.privacy == "off" and self._asked_for_report(row, task_round)

    def _asked_for_report(self, row: RoundRow, task_round: int) -> bool:
        """As the task's round recorded when it opened: the open round's row, or (an async update from an
        earlier buffer's task) that round's stored row, remembered for the updates after it."""
        report_every = self.policy.rules.report_every
        if task_round == row.round:
            return row_asks_for_report(row, report_every)
        asked = self._asked.get(task_round)
        if asked is None:
            earlier = self.store.round_row(task_round)
            asked = earlier is not None and row_asks_for_report(earlier, report_every)
            if len(self._asked) >= ASKED_REMEMBERED:
                del self._asked[min(self._asked)]
            self._asked[task_round] = asked
        return asked

    # -- start ----------------------------------------------------------------------------------------------
    def _rebuild(self, row: RoundRow) -> OpenRound:
        """A round's aggregate from the updates committed before a crash or stop."""
        aggregate = self._new_aggregate(row)
        kind = "eval" if row.mode == "eval" else "train"
        delivered = self.store.round_updates(row.round, kind)
        for stored in delivered if kind == "train" else ():
            update = wire.decode(stored.payload, expect=wire.Update, spec=self.spec, device=stored.device)
            aggregate.add(update, stored.weight / max(1, stored.samples), samples=stored.samples,
                          take_ranges=self._takes_ranges(row, update.round))  # fmt: skip
        tasks = self.store.round_tasks(row.round, kind)
        failed = {d for d, status in tasks.items() if status == "failed"}
        return OpenRound(row, aggregate, set(tasks), failed=failed)

    def resume(self) -> RoundSummary | None:
        """Take up the rounds a crash or stop left open; returns the summary of a close it had to finish."""
        rows = self.store.open_round_rows()
        finished = None
        for older in rows[:-1]:
            # Only a crash while an async buffer was aggregated leaves two open: finish that close first.
            log.info("finishing the close of round %d, interrupted by a stop", older.round)
            self._closing = self._rebuild(older)
            finished = self._complete_close()
        if not rows:
            return finished
        row = rows[-1]
        if row.base_version != self.publisher.version and row.mode == "sync":
            self.store.end_round(row.round, "failed", note="base model is no longer current")
            return finished
        self._open = self._rebuild(row)
        log.info("resumed round %d with %d accepted update(s)", row.round, self._open.aggregate.count)
        return finished

    def pause(self, seconds: float) -> None:
        """Deadlines stand still while the gateway cannot hear the devices: move them on by the time it could not."""
        with self._lock:
            open_round = self._open
            if open_round is not None:
                open_round.row.deadline += seconds
            self.store.extend_deadlines(open_round.number if open_round else None, seconds)
        log.info("round deadlines moved %.1f s later: the broker was out of reach that long", seconds)

    # -- intake (paho's thread) -----------------------------------------------------------------------------
    def intake(self, update: wire.Update, raw: bytes, device: str, norm: float) -> Verdict:
        """Judge and stage one decoded update; it is folded, and its receipt released, once its batch commits
        (here when ``max_batch`` messages are staged). The verdict says what the device's receipt will say.
        Raises OutOfSpace when it could not be staged, or (``max_batch`` 1) its own commit failed for want of it."""
        done, quiet = self._intake_done, self.idle_commit
        idle = done is not None and quiet is not None and time.monotonic() - done >= quiet
        record = self.registry.get(device)
        declared = record.capabilities.samples if record is not None and record.capabilities is not None else None
        with self._lock:
            open_round = self._open
            closing = self._closing.number if self._closing else None
            view = open_round.view if open_round else None
            verdict = admit(update, device, norm, view, self.publisher.version, self.store, self.admission, closing,
                            declared)  # fmt: skip
            if verdict.outcome is Outcome.IN_FLIGHT:  # its first copy's commit answers it: nothing staged
                return verdict
            if self.detector is not None and verdict.accepted and open_round and open_round.row.privacy == "off":
                reliability = self.detector.weight(device)  # stored with the update: a rebuild weighs it alike
                verdict = dataclasses.replace(verdict, weight_factor=verdict.weight_factor * reliability)
            pending = Pending((device, update.update_id, verdict.receipt_reason))
            try:
                if verdict.accepted:
                    assert open_round is not None
                    train = verdict.kind == "train"
                    pending.round = open_round.number
                    if train:
                        take_ranges = self._takes_ranges(open_round.row, update.round)
                        pending.fold = (update, verdict.weight_factor, norm, verdict.samples, take_ranges)
                    # Training updates are kept as received (the exact bytes rebuild the aggregate after a crash,
                    # one per task); an evaluation report only as its decoded, bounded fields.
                    stored = raw if train else wire.encode(evaluation_report(update, verdict.samples))
                    first = self.store.accept(
                        update.update_id, open_round.number, update.round, device, verdict.kind, verdict.samples,
                        verdict.samples * verdict.weight_factor, update.base_version, len(raw),
                        self.dense_bytes if train else 0, stored, batch=pending, on_duplicate=pending.duplicate,
                    )  # fmt: skip
                    if not first:
                        pending.fold = None
                else:
                    # A duplicate is a resend whose receipt was lost, or a replay: recorded, counted never.
                    self.store.refuse(update.update_id, device, update.round, verdict.reason, len(raw), batch=pending)
            except Exception as exc:
                if is_out_of_space(exc):  # not staged: no receipt, so the device keeps it and resends
                    self._note_full()
                    raise OutOfSpace(f"update {update.update_id.hex()[:12]} of {device}", exc) from exc
                raise
            self._commit_if_due(pending, idle)
            self._intake_done = time.monotonic()
        return verdict

    def refuse(self, message_id: bytes | None, device: str, reason: str, nbytes: int, receipt: bool) -> None:
        """Record a message refused before it could be judged (unreadable, not the device's signature, off the
        protocol) in the group commit's open batch, and, when ``receipt`` and its id is readable, release its
        receipt after that commit. Such messages are what a hostile sender makes at will: each used to be a
        transaction of its own on the MQTT thread, which first committed the open batch early (an fsync a
        message, two while updates were staged), so a flood of them set the pace of every honest device's
        intake. Raises OutOfSpace when it could not be recorded (or, ``max_batch`` 1, its commit failed for want
        of space)."""
        answer = (device, message_id, reason) if receipt and message_id is not None else None
        pending = Pending(answer, refused=device)
        with self._lock:
            try:
                self.store.refuse(message_id, device, None, reason, nbytes, batch=pending)
            except Exception as exc:
                if is_out_of_space(exc):  # not recorded, nor receipted: a device that resends it is judged again
                    self._note_full()
                    raise OutOfSpace(pending.describe(), exc) from exc
                raise
            self._commit_if_due(pending, idle=False)  # never at once: it waits for the batch an update would

    def _commit_if_due(self, pending: Pending, idle: bool) -> None:
        """After staging ``pending``: commit when the batch is full or the intake was idle, by the service's
        committer when there is one, else here (``max_batch`` 1: then a commit that lost it raises). Under the lock."""
        due = self.store.staged >= self.max_batch or idle
        if due and self.on_commit_due is not None:
            self.on_commit_due()  # the service's committer commits it, while this thread goes on
        elif due:
            settled = self._settle()
            if self.max_batch == 1 and any(p is pending for p in settled.lost):
                self._released.lost = [p for p in self._released.lost if p is not pending]  # said by raising
                error = settled.error or RuntimeError("commit failed")
                if is_out_of_space(error):
                    raise OutOfSpace(pending.describe(), error) from error
                raise error

    def _settle(self) -> Settled:
        """Commit the open batch, fold what it committed, keep its receipts for ``released``. Under the lock."""
        return self._absorb(*self.store.commit_batch())

    def _absorb(self, done: Sequence[object], lost: Sequence[object]) -> Settled:
        """Fold what a commit made durable, keep its receipts for ``released``. Under the lock."""
        error = self.store.batch_error if lost else None
        settled = Settled(lost=[p for p in lost if isinstance(p, Pending)], error=error)
        open_round = self._open
        for item in done:
            if not isinstance(item, Pending):
                continue
            if item.receipt is not None:
                settled.receipts.append(item.receipt)
            if item.fold is None:
                continue
            if open_round is None or open_round.number != item.round:  # cannot happen: every detach settles first
                log.error("%s committed after its round %d was detached: counted at the next restart",
                          item.describe(), item.round)  # fmt: skip
                continue
            open_round.aggregate.add(*item.fold)
            settled.counted += 1
        if settled.lost:
            if settled.error is not None and is_out_of_space(settled.error):
                self._note_full()
            log.debug("a batch of %d message(s) was not committed: %s", len(settled.lost), settled.error)
        if self.keep_receipts:
            self._released += settled
            if self.on_settled is not None and (settled.receipts or settled.lost):
                self.on_settled()
        return settled

    def flush(self) -> Settled:
        """Settle the open batch now (the service's committer) and hand over everything released so far. The
        commit's fsync is waited for without the lock: the intake stages the next batch meanwhile. Whoever holds
        the lock next folds what it committed (a close that detaches the round first takes it with its own)."""
        self.store.commit_pending()
        with self._lock:
            self._absorb(*self.store.take_settled())
            out, self._released = self._released, Settled()
            return out

    def released(self) -> Settled:
        """What settling released since the last call (the caller sends the receipts); safe from any thread."""
        with self._lock:
            out, self._released = self._released, Settled()
            return out

    def report_failure(self, failure: wire.TaskFailure, device: str) -> str | None:
        """Record a device's failed task; None when taken (or taken before), else why it is refused."""
        with self._lock:
            if failure.device != device:
                return f"device {failure.device!r} does not match its topic ({device!r})"
            if self.store.known_failure(failure.report_id):
                return None  # a resend whose receipt was lost
            for kind in ("train", "eval"):
                task = self.store.task(failure.round, device, kind)
                if task is not None and task.task_id == failure.task_id:
                    break
            else:
                return f"{device} has no task {failure.task_id.hex()[:12]} in round {failure.round}"
            if task.status not in ANSWERABLE:
                return f"task {failure.task_id.hex()[:12]} of {device} is already {task.status}"
            why = failure.reason.name.lower().replace("_", " ") + (f": {failure.detail}" if failure.detail else "")
            key = self.registry.birth_key(device)
            try:
                self.store.record_failure(failure.report_id, device, failure.round, failure.task_id, kind,
                                          int(failure.reason), failure.detail, why, key)  # fmt: skip
            except Exception as exc:
                if is_out_of_space(exc):
                    self._note_full()
                    raise OutOfSpace(f"the task failure of {device}", exc) from exc
                raise
            self.registry.mark_failed(device, why, key)
            if self._open is not None and self._open.number == failure.round:
                self._open.failed.add(device)
        log.warning("%s cannot do its task in round %d (%s); not selected until its birth changes", device,
                    failure.round, why)  # fmt: skip
        return None

    def drop(self, device: str, why: str) -> bool:
        """A device that may no longer answer (its key was revoked): its open task counts as failed, so the
        round gives it to a spare device or closes without it. Keeping it out is the registry's (``expel``)."""
        with self._lock:
            open_round = self._open
            if open_round is None:
                return False
            kind = "eval" if open_round.row.mode == "eval" else "train"
            task = self.store.task(open_round.number, device, kind)
            if task is None or task.status not in ANSWERABLE:
                return False
            self.store.set_selection_status(open_round.number, device, kind, "failed")
            open_round.failed.add(device)
            number = open_round.number
        log.warning("%s: its task in round %d is dropped (%s)", device, number, why)
        return True

    # -- steps (the round thread) ---------------------------------------------------------------------------
    def _note_full(self) -> None:
        """A write failed for want of space: wait until some is freed, even above the configured floor."""
        self._full_at = self.disk.free() if self.disk else 0

    def _room(self) -> bool:
        """Whether storage has room for a round; says so once when it has not, and once when it has again."""
        shortage = self.disk.shortage() if self.disk else None
        if shortage is None and self._full_at is not None:
            free = self.disk.free() if self.disk else 0
            if free <= self._full_at:
                shortage = f"storage filled up with {free / 2**20:.1f} MiB free: waiting for space to be freed"
            else:
                self._full_at = None
        if shortage is not None:
            if self.paused is None:
                log.warning("%s", shortage)
            self.paused = shortage
            return False
        if self.paused is not None:
            log.info("storage has room again: rounds resume")
            self.paused = None
        return True

    def step(self) -> Step:
        """Finish a pending close, else plan, record and carry out one step of the round policy.

        Nothing happens while storage is below its floor: no round opens, a failed close is not retried,
        and an open round waits (its deadline is judged when space returns).
        """
        if not self._room():
            return Step()
        if self._closing is not None:
            return self._close()
        try:
            if self.detector is not None:
                self.registry.set_quarantined(self.detector.quarantined())
            if self.privacy is not None:
                self.policy.view = self.privacy.view()  # the ledger changes only at a close: cached till then
            with self._lock:
                now = self.clock.now()
                if self._open is not None and self.store.unsettled and now >= self._open.row.deadline:
                    self._settle()  # a deadline judges the updates in hand: the staged ones too
                plan = self.policy.plan(self._open, self.registry, self.store, self.publisher.version, now)
                step = self._record(plan, now)
        except Exception as exc:  # the plan was not recorded, so none of its tasks goes out
            if not is_out_of_space(exc):
                raise
            self._note_full()
            return Step()
        self._say_why_waiting(plan)
        if plan.close:
            return self._close()
        if plan.fail:
            step.ended = self._fail(plan.fail)
        elif plan.finish_evaluation:
            step.evaluated = self._finish_evaluation()
        step.finished = plan.finished
        return step

    def _say_why_waiting(self, plan: Plan) -> None:
        """Too few eligible devices: said once it has lasted WAITING_GRACE_S, and again only when the reason
        changes, at most once per WAITING_GRACE_S; a federation whose devices are still joining, one by one, is
        not stuck and is not warned of."""
        if plan.why_waiting is None:
            if plan.open is not None:
                if self._waiting is not None:
                    log.info("round %d opens: enough eligible devices again", plan.open.round)
                self._waiting = self._waiting_since = None
            return
        now = self.clock.now()
        if self._waiting_since is None:
            self._waiting_since = now
        said_lately = self._waiting is not None and now - self._waiting_said < WAITING_GRACE_S
        if now - self._waiting_since >= WAITING_GRACE_S and not said_lately:
            waiting = plan.why_waiting()  # read every device's record: only when it may be said
            if waiting != self._waiting:
                log.warning("%s", waiting)
                self._waiting, self._waiting_said = waiting, now

    def _record(self, plan: Plan, now: float) -> Step:
        """Make a plan durable before any of its tasks is sent. Called under the lock."""
        if plan.registry_seen is not None and self._open is not None:
            self._open.registry_seen = plan.registry_seen
        if not (plan.open or plan.tasks or plan.withdrawn or plan.expired):
            return Step()
        ended = [(r, d, k, "expired") for r, d, k in plan.expired]
        if plan.withdrawn:
            assert self._open is not None
            ended += [(self._open.number, d, "train", "reassigned") for d in plan.withdrawn]
        current = plan.open or (self._open.row if self._open else None)
        assert current is not None, "a plan with tasks always has a round"
        ids = [(device, task.task_id) for device, task in plan.tasks]
        version = self.publisher.version
        local = current.noise if current.privacy == "local-dp" else 0.0
        self.store.record_plan(plan.open, current.round, plan.kind, ids, version, plan.deadline, ended, local)
        if local and plan.kind == "train" and self.privacy is not None:  # as recorded: each task spends budget
            self.privacy.gave([device for device, _ in ids], local)
        if plan.open is not None:
            self._open = OpenRound(plan.open, self._new_aggregate(plan.open))
            if plan.open.mode == "sync":
                log.info("round %d: asked %d devices (target %d)", plan.open.round, len(ids), plan.open.target)
            elif plan.open.mode == "eval":
                log.info("final model %s: evaluation asked of %d devices", version.hex()[:12], len(ids))
        assert self._open is not None
        self._open.selected.update(device for device, _ in plan.tasks)
        self._open.replaced.update(plan.replaced)
        if plan.replaced:
            log.info("round %d: %s died or failed; their tasks went to %s", current.round, plan.replaced,
                     [d for d, _ in ids])  # fmt: skip
        return Step(tasks=plan.tasks, expiry=max(1, int(plan.deadline - now)), opened=plan.open)

    def _close(self) -> Step:
        """Detach the open round under the lock, make its version without it; retried until it lands."""
        with self._lock:
            if self._closing is None:
                if self._open is None:
                    return Step()
                self._settle()  # the round is closed with every update committed for it, and no other
                self._closing, self._open = self._open, None
                if self.mode == "async":
                    # Updates keep arriving while a version is made: the next buffer must already be open.
                    version, now = self.publisher.version, self.clock.now()
                    row = self.policy.next_buffer(self.store, version, now, self._closing.number)
                    if row is not None:
                        self.store.record_plan(row, row.round, "train", [], version, row.deadline, [])
                        self._open = OpenRound(row, self._new_aggregate(row))
        try:
            summary = self._complete_close()
        except Exception as exc:  # a full disk, say: the round stays detached and its close is retried
            self.publisher.reload()
            if str(exc) != self._close_error:  # said once, not at every retry
                number = self._closing.number if self._closing else -1
                if is_out_of_space(exc):
                    self._note_full()
                    log.warning("closing round %d ran out of space (%s); retried when there is room", number, exc)
                else:
                    log.exception("closing round %d failed; retrying", number)
                self._close_error = str(exc)
            return Step()
        self._close_error = ""
        log.debug(  # the service's listeners say it once (gateway run's line); DEBUG keeps the detail
            "round %d closed: %d updates, model %s, %d uplink bytes (dense float32: %d)",
            summary.round, summary.accepted, self.publisher.version.hex()[:12], summary.uplink_bytes,
            summary.dense_bytes,
        )  # fmt: skip
        return Step(ended=summary)

    def _complete_close(self) -> RoundSummary:
        """The heavy part of a close, without the lock; adopts the new version at the end."""
        closing = self._closing
        assert closing is not None
        release, ledger = None, None
        if closing.row.privacy != "off":
            now_mode = self.privacy.settings.mode if self.privacy is not None else "off"
            if now_mode != closing.row.privacy:  # the round's mode decides its release, or nothing is released
                raise RuntimeError(f"round {closing.number} opened under {closing.row.privacy}, and [privacy] mode is "
                                   f"now {now_mode}: set it back to close the round with the noise and ledger entry "
                                   "it opened with")  # fmt: skip
            assert self.privacy is not None
            release, ledger = self.privacy.close(closing.row, closing.aggregate, len(closing.selected))
        if ledger is None and self._secure_ledger is not None and self._secure_ledger.round == closing.number:
            ledger = self._secure_ledger
        judged = None
        if self.detector is not None and closing.row.privacy == "off":
            judged = self.detector.judge(closing.number, closing.aggregate, self.publisher.master.weights)
        asked = self._takes_ranges(closing.row, closing.number)
        new = self.publisher.make_version(closing.aggregate, release, asked_for_ranges=asked)
        contributions = self._contributions(judged, closing.aggregate)
        metrics = closing.aggregate.metrics()
        counts = self.store.round_counts(closing.number)
        if judged is not None:
            metrics.update(flagged=float(sum(c.flagged for c in judged.contributions)),
                           excluded=float(len(judged.excluded)))  # fmt: skip
        metrics.update(
            accepted=float(closing.aggregate.count),
            uplink_bytes=float(counts["uplink_bytes"]),
            dense_bytes=float(counts["dense_bytes"]),
            seconds=self.clock.now() - closing.row.started,
        )
        self.store.finish_round(
            closing.number, new.version, closing.row.base_version, new.files.model, new.files.master, len(new.model),
            metrics, ledger, contributions, judged.reliabilities if judged else None,
        )  # fmt: skip
        if judged is not None and self.detector is not None:
            self.detector.closed(judged)
        with self._lock:
            self.publisher.adopt(new)
            self._closing = None
        if self.privacy is not None:
            self.privacy.invalidate()
        return RoundSummary(
            closing.number, "closed", new.version, closing.aggregate.count, counts["refused"],
            counts["uplink_bytes"], counts["dense_bytes"], metrics["seconds"], metrics,
        )  # fmt: skip

    def _contributions(self, judged: Judgement | None, aggregate: StreamingAggregate) -> list[Contribution] | None:
        """The rows kept of a closing round's updates: the detector's verdict, and which ones Krum picked."""
        chosen = getattr(self.publisher.strategy, "chosen", None)
        if judged is None:
            if chosen is None or not aggregate.updates:
                return None
            return [Contribution(u.device, chosen=u.device in chosen) for u in aggregate.updates]
        if chosen is not None:
            for c in judged.contributions:
                c.chosen = c.device in chosen and c.counted
        return judged.contributions

    def _detach(self) -> OpenRound | None:
        with self._lock:
            self._settle()
            open_round, self._open = self._open, None
            return open_round

    # -- secure aggregation (gateway/secagg_round.py) ---------------------------------------------------------
    def secure_close(
        self, number: int, sums: dict[int, tuple[Any, Any]], count: int, ledger: LedgerEntry | None = None
    ) -> Step:
        """Close round ``number`` on a secure aggregation session's sum (tensor -> (indices, values) over ``count``
        devices): its only input, weighed as ``count`` updates of one sample each. ``ledger``: the round's
        distributed-DP event, written in the transaction that closes it."""
        with self._lock:
            open_round = self._open
            if open_round is None or open_round.number != number:
                return Step()
            self._secure_ledger = ledger
            aggregate = open_round.aggregate
            for tensor, (indices, values) in sums.items():
                aggregate.sums[tensor][indices] += values
            aggregate.weight += count
            aggregate.count += count
        return self._close()

    def secure_fail(self, number: int, note: str) -> Step:
        """Fail round ``number``: its session cannot recover the sum. Recorded; no version is made."""
        if self._open is None or self._open.number != number:
            return Step()
        return Step(ended=self._fail(note))

    def _fail(self, note: str) -> RoundSummary | None:
        open_round = self._detach()
        if open_round is None:
            return None
        self.store.end_round(open_round.number, "failed", note=note)
        counts = self.store.round_counts(open_round.number)
        log.warning("round %d failed: %s", open_round.number, note)
        return RoundSummary(
            open_round.number, "failed", None, open_round.aggregate.count, counts["refused"],
            counts["uplink_bytes"], counts["dense_bytes"], self.clock.now() - open_round.row.started, {},
        )  # fmt: skip

    def _finish_evaluation(self) -> dict[str, float] | None:
        """Sample-weighted metrics of the devices' reports on the final model."""
        open_round = self._detach()
        if open_round is None:
            return None
        sums: dict[str, float] = {}
        weight = 0.0
        by_group: dict[str, list[tuple[int, dict[str, float]]]] = {}
        for stored in self.store.round_updates(open_round.number, "eval"):
            update = wire.decode(stored.payload, expect=wire.Update)
            weight += stored.samples
            bounded = bounded_metrics(update.metrics, stored.samples)
            for k, v in bounded.items():
                sums[k] = sums.get(k, 0.0) + stored.samples * v
            record = self.registry.get(stored.device)
            group = record.capabilities.group if record is not None and record.capabilities is not None else ""
            by_group.setdefault(group or "-", []).append((stored.samples, bounded))
        metrics = {k: v / weight for k, v in sums.items()} if weight else {}
        metrics["reports"] = float(self.store.round_counts(open_round.number)["eval"])
        if len(by_group) > 1 or "-" not in by_group:  # some device declared a group: the breakdown (groups.py)
            metrics |= group_metrics(by_group)
        self.store.set_metrics(open_round.number, metrics)
        self.store.end_round(open_round.number, "closed", note="evaluation of the final model")
        log.info("final evaluation: %s", {k: round(v, 4) for k, v in metrics.items()})
        return metrics
