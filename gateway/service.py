"""The gateway service: moves messages between MQTT and the parts that decide.

It owns no rule of its own. ``admission.admit`` judges each update,
``policy.RoundPolicy`` plans each step of a round, ``publisher.Publisher``
makes and publishes model versions, ``store.GatewayStore`` keeps it all
durable; this module wires them to the broker and to two threads.

Threads and the lock: paho's network thread delivers updates and presence;
it decodes and measures an update without the lock, then judges, commits
(SQLite) and folds it under ``_lock`` and queues the receipt. The round
thread plans under the lock, records the plan, and sends the tasks after
releasing it. Closing a round is the heavy step (strategy, export, hashes,
fsyncs): the round is detached under the lock, so updates for the next
asynchronous buffer are taken meanwhile, and the version is made without
it. No paho call is ever made under the lock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_runtime import wire
from edge_runtime.transport.fragments import Reassembler
from edge_runtime.transport.mqtt import MqttLink
from edge_runtime.transport.topics import Topics
from edge_runtime.wire.cbor import loads

from .admission import AdmissionRules, admit
from .aggregate import StreamingAggregate, update_norm
from .clock import Clock, SystemClock
from .config import GatewayConfig
from .master import MasterModel
from .policy import OpenRound, Plan, RoundPolicy, TaskSettings
from .publisher import NewVersion, Publisher
from .registry import Eligibility, Registry
from .store import GatewayStore, RoundRow

log = logging.getLogger(__name__)
Outgoing = list[tuple[str, bytes, bool, int | None]]  # topic, payload, retain, expiry seconds


def readable_update_id(data: bytes) -> bytes | None:
    """The update id of a message that failed validation, when its CBOR is sound enough to hold one."""
    try:
        obj = loads(data, wire.DEFAULT_LIMITS)
    except wire.WireError:
        return None
    if isinstance(obj, dict) and obj.get(0) == wire.Update.TYPE:
        candidate = obj.get(2)
        if isinstance(candidate, bytes) and len(candidate) == 16:
            return candidate
    return None


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


class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        link: MqttLink | None = None,
        *,
        clock: Clock | None = None,
        strategy: Any = None,
    ) -> None:
        self.config = config
        rc = config.rounds
        self.clock = clock or SystemClock()
        self.topics = Topics(config.gateway.federation)
        self.store = GatewayStore(config.storage / "gateway.db")
        self.registry = Registry(self.store)
        self.strategy = strategy if strategy is not None else config.make_strategy()
        self.publisher = Publisher(config, self.store, self.strategy)
        self.sizes = self.publisher.sizes
        self.spec = dict(self.sizes)
        self.dense_bytes = 4 * sum(self.sizes.values())
        prox_mu = float(getattr(self.strategy, "mu", 0.0))
        self.policy = RoundPolicy(
            rc,
            Eligibility(min_samples=rc.min_samples, min_ram=rc.min_ram),
            TaskSettings.from_rounds(rc, prox_mu),
            np.random.default_rng(rc.seed + self.store.last_round()),
        )
        self.admission = AdmissionRules(rc.mode, rc.norm_bound, rc.max_staleness)
        self.link = link or MqttLink(config.broker, client_id=f"tinyfed-gateway-{config.gateway.federation}")
        self.reassembler = Reassembler()
        self.on_round_closed: list[Callable[[RoundSummary], None]] = []
        self.finished = threading.Event()
        self.final_metrics: dict[str, float] = {}
        self._lock = threading.Lock()
        self._open: OpenRound | None = None
        self._closing: OpenRound | None = None  # detached for aggregation; its close is retried until it lands
        self._close_error = ""  # the last close failure, logged once, not at every retry
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.link.subscribe(self.topics.all_updates, self._on_update)
        self.link.subscribe(self.topics.all_presence, self._on_presence)
        if self.strategy.buffered:
            log.info(
                "strategy %s keeps every update of a round: about %.1f MB per device",
                self.strategy.name,
                8 * sum(self.sizes.values()) / 1e6,
            )

    # -- what callers read ----------------------------------------------------------------------------------
    @property
    def model(self) -> bytes:
        return self.publisher.model

    @property
    def version(self) -> bytes:
        return self.publisher.version

    @property
    def master(self) -> MasterModel:
        return self.publisher.master

    @property
    def open_round(self) -> OpenRound | None:
        return self._open

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> Gateway:
        self._resume()  # before the first message can arrive: updates queued for us belong to this round
        self.link.start()
        self.link.require_connected(self.config.gateway.connect_timeout)
        self.link.wait_ready(self.config.gateway.connect_timeout)
        self.publisher.publish(self.link, self.topics)
        self._publish_state(0)
        self._thread = threading.Thread(target=self._run, name="gateway-rounds", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.link.stop()
        self.store.close()

    def _new_aggregate(self) -> StreamingAggregate:
        clip = self.config.rounds.clip_norm or None
        return StreamingAggregate(self.sizes, keep_updates=self.strategy.buffered, clip_norm=clip)

    def _rebuild(self, row: RoundRow) -> OpenRound:
        """A round's aggregate from the updates committed before a crash or stop."""
        aggregate = self._new_aggregate()
        for stored in self.store.round_updates(row.round, "train"):
            update = wire.decode(stored.payload, expect=wire.Update, spec=self.spec)
            aggregate.add(update, stored.weight / max(1, update.samples))
        kind = "eval" if row.mode == "eval" else "train"
        selected = {d for _, d, k, _ in self.store.waiting_devices(row.round) if k == kind}
        selected |= {u.device for u in self.store.round_updates(row.round, kind)}
        return OpenRound(row, aggregate, selected)

    def _resume(self) -> None:
        rows = self.store.open_round_rows()
        for older in rows[:-1]:
            # Only a crash while an async buffer was aggregated leaves two open: finish that close first.
            self._closing = self._rebuild(older)
            log.info("finishing the close of round %d, interrupted by a stop", older.round)
            self._complete_close()
        if not rows:
            return
        row = rows[-1]
        if row.base_version != self.version and row.mode == "sync":
            self.store.end_round(row.round, "failed", note="base model is no longer current")
            return
        self._open = self._rebuild(row)
        log.info("resumed round %d with %d accepted update(s)", row.round, self._open.aggregate.count)

    # -- incoming -------------------------------------------------------------------------------------------
    def _on_presence(self, topic: str, payload: bytes) -> None:
        if not payload:
            return  # a cleared retained message
        try:
            presence = wire.decode(payload, expect=wire.Presence)
            device = self.topics.device_of(topic)
        except wire.WireError as exc:
            log.warning("refused a presence message on %s: %s", topic, exc)
            return
        if presence.device != device:
            log.warning("refused a presence for %r on the topic of %r", presence.device, device)
            return
        _, died = self.registry.observe(presence, payload)
        if died or presence.online:
            self._wake.set()

    def _on_update(self, topic: str, payload: bytes) -> None:
        try:
            device = self.topics.device_of(topic)
        except wire.WireError as exc:
            log.warning("ignored a message on %s: %s", topic, exc)
            return
        try:
            whole = self.reassembler.feed(device, payload)
        except wire.WireError as exc:
            self._refuse(None, device, None, f"fragment: {exc}", len(payload))
            return
        if whole is None:
            return
        try:
            update = wire.decode(whole, expect=wire.Update, spec=self.spec)
        except wire.WireError as exc:
            update_id = readable_update_id(whole)
            why = f"{type(exc).__name__}: {exc}"
            self._refuse(update_id, device, None, why, len(whole))
            if update_id is not None:  # tell the device, so it stops resending what will never be taken
                self._send([self._receipt(device, update_id, why)])
            return
        norm = update_norm(update)  # outside the lock: the norm bound, and clipping's scale
        with self._lock:
            open_round = self._open
            view = open_round.view if open_round else None
            closing = self._closing.number if self._closing else None
            verdict = admit(update, device, norm, view, self.version, self.store, self.admission, closing)
            if verdict.accepted:
                assert open_round is not None
                first = self.store.accept(
                    update.update_id, open_round.number, update.round, device, verdict.kind, update.samples,
                    update.samples * verdict.weight_factor, update.base_version, len(whole),
                    self.dense_bytes if verdict.kind == "train" else 0, whole,
                )  # fmt: skip
                if first:
                    if verdict.kind == "train":
                        open_round.aggregate.add(update, verdict.weight_factor, norm)
                    self._wake.set()
            else:
                # A duplicate is a resend whose receipt was lost, or a replay: recorded, counted never.
                self.store.refuse(update.update_id, device, update.round, verdict.reason, len(whole))
        if verdict.receipt_reason is not None:
            log.warning("refused update %s of %s: %s", update.update_id.hex()[:12], device, verdict.reason)
        elif not verdict.accepted:
            log.info("update %s of %s arrived again; not counted twice", update.update_id.hex()[:12], device)
        self._send([self._receipt(device, update.update_id, verdict.receipt_reason)])

    def _refuse(self, update_id: bytes | None, device: str, round_: int | None, reason: str, nbytes: int) -> None:
        self.store.refuse(update_id, device, round_, reason, nbytes)
        log.warning("refused a message from %s: %s", device, reason)

    def _receipt(self, device: str, update_id: bytes, reason: str | None) -> tuple[str, bytes, bool, int | None]:
        receipt = wire.Receipt([update_id]) if reason is None else wire.Receipt([], {update_id: reason[:256]})
        return self.topics.receipt(device), wire.encode(receipt), False, None

    def _send(self, outgoing: Outgoing) -> None:
        for topic, payload, retain, expiry in outgoing:
            self.link.publish(topic, payload, retain=retain, expiry=expiry)

    def _publish_state(self, phase: int) -> None:
        open_round = self._open
        state = wire.GatewayState(
            self.config.gateway.federation,
            open_round.number if open_round else self.store.last_round(),
            phase,
            self.version,
            len(open_round.selected) if open_round else 0,
            open_round.aggregate.count if open_round else 0,
            int(open_round.row.deadline) if open_round else 0,
            int(self.clock.now()),
        )
        self.link.publish(self.topics.state, wire.encode(state), retain=True)

    # -- the round thread -----------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            try:
                self.step()
            except Exception:  # the federation outlives a bad round; the log says what happened
                log.exception("round step failed")

    def step(self) -> Plan | None:
        """One step of the round: finish a pending close, else plan, record, send and act on the plan."""
        if self._closing is not None:
            self._close()
            return None
        with self._lock:
            now = self.clock.now()
            plan = self.policy.plan(self._open, self.registry, self.store, self.version, now)
            outgoing = self._record(plan, now)
        self._send(outgoing)
        if plan.open is not None:
            self._publish_state(1)
        if plan.close:
            self._close()
        elif plan.fail:
            self._fail(plan.fail)
        elif plan.finish_evaluation:
            self._finish_evaluation()
        elif plan.finished:
            self.finished.set()
        return plan

    def _record(self, plan: Plan, now: float) -> Outgoing:
        """Make a plan durable, then hand back its tasks as messages. Called under the lock."""
        if not (plan.open or plan.tasks or plan.withdrawn or plan.expired):
            if plan.departures_seen is not None and self._open is not None:
                self._open.departures_seen = plan.departures_seen
            return []
        ended = [(r, d, k, "expired") for r, d, k in plan.expired]
        if plan.withdrawn:
            assert self._open is not None
            ended += [(self._open.number, d, "train", "reassigned") for d in plan.withdrawn]
        current = plan.open or (self._open.row if self._open else None)
        assert current is not None, "a plan with tasks always has a round"
        tasks = [(device, task.task_id) for device, task in plan.tasks]
        self.store.record_plan(plan.open, current.round, plan.kind, tasks, self.version, plan.deadline, ended)
        if plan.open is not None:
            self._open = OpenRound(plan.open, self._new_aggregate())
            if plan.open.mode == "sync":
                log.info("round %d: asked %d devices (target %d)", plan.open.round, len(tasks), plan.open.target)
            elif plan.open.mode == "eval":
                log.info("final model %s: evaluation asked of %d devices", self.version.hex()[:12], len(tasks))
        assert self._open is not None
        self._open.selected.update(device for device, _ in plan.tasks)
        if plan.departures_seen is not None:
            self._open.departures_seen = plan.departures_seen
        if plan.withdrawn:
            log.info("round %d: %s died; reassigned to %s", current.round, plan.withdrawn, [d for d, _ in tasks])
        expiry = max(1, int(plan.deadline - now))
        return [(self.topics.task(device), wire.encode(task), False, expiry) for device, task in plan.tasks]

    def _close(self) -> None:
        """Detach the open round under the lock, make its version without it, adopt the version under it."""
        with self._lock:
            if self._closing is None:
                if self._open is None:
                    return
                self._closing, self._open = self._open, None
                if self.config.rounds.mode == "async":
                    # Updates keep arriving while a version is made: the next buffer must already be open.
                    row = self.policy.next_buffer(self.store, self.version, self.clock.now(), self._closing.number)
                    if row is not None:
                        self.store.record_plan(row, row.round, "train", [], self.version, row.deadline, [])
                        self._open = OpenRound(row, self._new_aggregate())
        try:
            summary, new = self._complete_close()
        except Exception as exc:  # a full disk, say: the round stays detached and its close is retried
            self.publisher.reload()
            if str(exc) != self._close_error:
                log.exception("closing round %d failed; retrying", self._closing.number if self._closing else -1)
                self._close_error = str(exc)
            return
        self._close_error = ""
        log.info(
            "round %d closed: %d updates, model %s, %d uplink bytes (dense float32: %d)",
            summary.round, summary.accepted, new.version.hex()[:12], summary.uplink_bytes, summary.dense_bytes,
        )  # fmt: skip
        self.publisher.publish(self.link, self.topics)
        self._publish_state(0)
        self._notify(summary)
        self._wake.set()

    def _complete_close(self) -> tuple[RoundSummary, NewVersion]:
        """The heavy part of a close, on the round thread without the lock; adopts the version at the end."""
        closing = self._closing
        assert closing is not None
        new = self.publisher.make_version(closing.aggregate)
        metrics = closing.aggregate.metrics()
        counts = self.store.round_counts(closing.number)
        metrics.update(
            accepted=float(closing.aggregate.count),
            uplink_bytes=float(counts["uplink_bytes"]),
            dense_bytes=float(counts["dense_bytes"]),
            seconds=self.clock.now() - closing.row.started,
        )
        files = new.files
        self.store.finish_round(
            closing.number, new.version, closing.row.base_version, files.model, files.master, len(new.model), metrics
        )
        with self._lock:
            self.publisher.adopt(new)
            self._closing = None
        summary = RoundSummary(
            closing.number, "closed", new.version, closing.aggregate.count, counts["refused"],
            counts["uplink_bytes"], counts["dense_bytes"], metrics["seconds"], metrics,
        )  # fmt: skip
        return summary, new

    def _fail(self, note: str) -> None:
        with self._lock:
            open_round = self._open
            if open_round is None:
                return
            self.store.end_round(open_round.number, "failed", note=note)
            self._open = None
        counts = self.store.round_counts(open_round.number)
        summary = RoundSummary(
            open_round.number, "failed", None, open_round.aggregate.count, counts["refused"],
            counts["uplink_bytes"], counts["dense_bytes"], self.clock.now() - open_round.row.started, {},
        )  # fmt: skip
        log.warning("round %d failed: %s", open_round.number, note)
        self._publish_state(0)
        self._notify(summary)

    def _finish_evaluation(self) -> None:
        """Sample-weighted metrics of the devices' reports on the final model."""
        with self._lock:
            open_round = self._open
            if open_round is None:
                return
            self._open = None
        sums: dict[str, float] = {}
        weight = 0.0
        for stored in self.store.round_updates(open_round.number, "eval"):
            update = wire.decode(stored.payload, expect=wire.Update)
            weight += update.samples
            for k, v in update.metrics.items():
                sums[k] = sums.get(k, 0.0) + update.samples * v
        metrics = {k: v / weight for k, v in sums.items()} if weight else {}
        metrics["reports"] = float(self.store.round_counts(open_round.number)["eval"])
        self.store.set_metrics(open_round.number, metrics)
        self.store.end_round(open_round.number, "closed", note="evaluation of the final model")
        self.final_metrics = metrics
        log.info("final evaluation: %s", {k: round(v, 4) for k, v in metrics.items()})
        self._wake.set()

    def _notify(self, summary: RoundSummary) -> None:
        for listener in list(self.on_round_closed):
            listener(summary)
