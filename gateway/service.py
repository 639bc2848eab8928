"""The gateway: runs the federation's rounds over MQTT, from selection to a published model version.

Threads and locks: paho's network thread delivers updates and presence;
it validates, commits to SQLite, folds into the open round's aggregate and
queues the receipt, but never waits for the broker. A round thread does
everything that waits (publishing tasks and model chunks, closing rounds).
``_lock`` guards the round state for a few instructions at a time and is
never held across a paho call: outgoing messages are collected under it and
published after it is released.

Synchronous mode: a round selects ``fraction`` of the eligible devices (at
least ``min_devices``), asks ``overprovision`` more, and closes when the
target has answered, or at its deadline with at least ``min_updates``;
a selected device that dies mid-round is replaced. Asynchronous mode keeps
``concurrency`` devices busy and aggregates every ``buffer_size`` updates
(FedBuff, Nguyen et al. 2022), weighting each by (1 + staleness)^-1/2 and
refusing those more than ``max_staleness`` versions behind.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_runtime import wire
from edge_runtime.storage import atomic_write
from edge_runtime.transport.chunking import make_manifest, publish_model
from edge_runtime.transport.fragments import Reassembler
from edge_runtime.transport.mqtt import MqttLink
from edge_runtime.transport.topics import Topics
from edge_runtime.wire.cbor import loads

from .aggregate import StreamingAggregate, update_norm
from .config import GatewayConfig
from .master import MasterModel
from .registry import Eligibility, Registry
from .store import GatewayStore, RoundRow

log = logging.getLogger(__name__)
DUPLICATE = "duplicate of an update already counted"
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
class OpenRound:
    row: RoundRow
    aggregate: StreamingAggregate
    selected: set[str] = field(default_factory=set)
    departures_seen: int = -1  # the registry's departure count when the round last looked for dead devices

    @property
    def number(self) -> int:
        return self.row.round


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
    def __init__(self, config: GatewayConfig, link: MqttLink | None = None) -> None:
        self.config = config
        rc = config.rounds
        self.topics = Topics(config.gateway.federation)
        self.models_dir = config.storage / "models"
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.store = GatewayStore(config.storage / "gateway.db")
        self.registry = Registry(self.store)
        self.rule = Eligibility(min_samples=rc.min_samples, min_ram=rc.min_ram)
        self.strategy = config.make_strategy()
        self.prox_mu = float(getattr(self.strategy, "mu", 0.0))
        self.master, self.model = self._load_or_init_model()
        self.version = hashlib.sha256(self.model).digest()
        self.sizes = self.master.sizes
        self.spec = dict(self.sizes)
        self.dense_bytes = 4 * sum(self.sizes.values())
        self.manifest, self.chunks = self._manifest(self.model, None)
        self.rng = np.random.default_rng(rc.seed + self.store.last_round())
        self.link = link or MqttLink(config.broker, client_id=f"tinyfed-gateway-{config.gateway.federation}")
        self.reassembler = Reassembler()
        self.on_round_closed: list[Callable[[RoundSummary], None]] = []
        self.finished = threading.Event()
        self._lock = threading.RLock()
        self._open: OpenRound | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending_out: Outgoing = []
        self.final_metrics: dict[str, float] = {}
        self._retired: list[tuple[bytes, int]] = []  # versions whose chunks are retained, with chunk counts
        self.link.subscribe(self.topics.all_updates, self._on_update)
        self.link.subscribe(self.topics.all_presence, self._on_presence)
        if self.strategy.buffered:
            log.info(
                "strategy %s keeps every update of a round: about %.1f MB per device",
                self.strategy.name,
                8 * sum(self.sizes.values()) / 1e6,
            )

    # -- models ---------------------------------------------------------------------------------------------
    def _paths(self, version: bytes) -> tuple[Path, Path, Path]:
        stem = self.models_dir / version.hex()
        return stem.with_suffix(".tflite"), stem.with_suffix(".master.npz"), stem.with_suffix(".strategy.npz")

    def _load_or_init_model(self) -> tuple[MasterModel, bytes]:
        layers = self.config.gateway.trainable_layers
        current = self.store.current_version
        if current is not None:
            model_path, master_path, strategy_path = self._paths(current)
            model = model_path.read_bytes()
            master = MasterModel(model, layers)
            master.load(master_path)
            if strategy_path.exists():
                with np.load(strategy_path, allow_pickle=False) as data:
                    self.strategy.load_state({k: data[k] for k in data.files})
            log.info("resuming at model %s", current.hex()[:12])
            return master, model
        if not self.config.gateway.model:
            raise ValueError(f"{self.config.source} [gateway] model: no initial model given and the store has none")
        model = Path(self.config.gateway.model).read_bytes()
        master = MasterModel(model, layers)
        version = hashlib.sha256(model).digest()
        model_path, master_path, _ = self._paths(version)
        atomic_write(model_path, model)
        master.save(master_path)
        self.store.add_model(version, None, None, model_path, master_path, len(model))
        log.info("initial model %s (%d bytes)", version.hex()[:12], len(model))
        return master, model

    def _manifest(self, model: bytes, parent: bytes | None) -> tuple[wire.ModelManifest, list[wire.ModelChunk]]:
        return make_manifest(
            model, self.master.trainable, self.config.gateway.chunk_size, parent, self.config.gateway.federation
        )

    def _publish_model(self) -> None:
        publish_model(self.link, self.topics, self.manifest, self.chunks)
        # Keep the retained chunks of the current and the previous version; clear older ones.
        self._retired.append((self.manifest.version, self.manifest.chunk_count))
        while len(self._retired) > 2:
            old, count = self._retired.pop(0)
            for i in range(count):
                self.link.publish(self.topics.chunk(old, i), b"", retain=True)  # empty retained = cleared

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
            int(time.time()),
        )
        self.link.publish(self.topics.state, wire.encode(state), retain=True)

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> Gateway:
        self._resume()  # before the first message can arrive: updates queued for us belong to this round
        self.link.start()
        self.link.require_connected(self.config.gateway.connect_timeout)
        self.link.wait_ready(self.config.gateway.connect_timeout)
        self._publish_model()
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

    def _resume(self) -> None:
        """Rebuild the open round's aggregate from the updates committed before a crash or stop."""
        row = self.store.open_round_row()
        if row is None:
            return
        if row.base_version != self.version and row.mode == "sync":
            self.store.end_round(row.round, "failed", note="base model is no longer current")
            return
        aggregate = self._new_aggregate()
        for stored in self.store.round_updates(row.round, "train"):
            update = wire.decode(stored.payload, expect=wire.Update, spec=self.spec)
            aggregate.add(update, stored.weight / max(1, update.samples))
        selected = {s["device"] for s in self.store.selections(row.round) if s["kind"] == "train"}
        with self._lock:
            self._open = OpenRound(row, aggregate, selected)
        log.info("resumed round %d with %d accepted update(s)", row.round, aggregate.count)

    def _new_aggregate(self) -> StreamingAggregate:
        clip = self.config.rounds.clip_norm or None
        return StreamingAggregate(self.sizes, keep_updates=self.strategy.buffered, clip_norm=clip)

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
        outgoing: Outgoing = []
        with self._lock:
            reason, kind, weight_factor = self._judge(update, device, norm)
            if reason is None:
                assert self._open is not None
                open_round = self._open
                first = self.store.accept(
                    update.update_id,
                    open_round.number,
                    update.round,
                    device,
                    kind,
                    update.samples,
                    update.samples * weight_factor,
                    update.base_version,
                    len(whole),
                    self.dense_bytes if kind == "train" else 0,
                    whole,
                )
                if first:
                    if kind == "train":
                        open_round.aggregate.add(update, weight_factor, norm)
                    self._wake.set()
                outgoing.append(self._receipt(device, update.update_id, None))
            elif reason == DUPLICATE:
                # A resend whose receipt was lost, or a replay: recorded, counted never, receipted as received.
                self.store.refuse(update.update_id, device, update.round, reason, len(whole))
                log.info("update %s of %s arrived again; not counted twice", update.update_id.hex()[:12], device)
                outgoing.append(self._receipt(device, update.update_id, None))
            else:
                self.store.refuse(update.update_id, device, update.round, reason, len(whole))
                log.warning("refused update %s of %s: %s", update.update_id.hex()[:12], device, reason)
                outgoing.append(self._receipt(device, update.update_id, reason))
        self._send(outgoing)

    def _refuse(self, update_id: bytes | None, device: str, round_: int | None, reason: str, nbytes: int) -> None:
        self.store.refuse(update_id, device, round_, reason, nbytes)
        log.warning("refused a message from %s: %s", device, reason)

    def _receipt(self, device: str, update_id: bytes, reason: str | None) -> tuple[str, bytes, bool, int | None]:
        receipt = wire.Receipt([update_id]) if reason is None else wire.Receipt([], {update_id: reason[:256]})
        return self.topics.receipt(device), wire.encode(receipt), False, None

    def _judge(self, update: wire.Update, device: str, norm: float) -> tuple[str | None, str, float]:
        """(refusal reason or None, kind, weight factor). Called under the lock."""
        kind = "train" if update.tensors else "eval"
        if update.device != device:
            return f"device {update.device!r} does not match its topic ({device!r})", kind, 1.0
        known = self.store.known_update(update.update_id)
        if known == "accepted":
            return DUPLICATE, kind, 1.0
        if known is not None:
            return f"replay of update id {update.update_id.hex()[:12]} (first refused: {known})", kind, 1.0
        open_round = self._open
        if open_round is None:
            return "no round is open", kind, 1.0
        if kind == "eval":
            if update.base_version != open_round.row.base_version:
                return f"evaluation of {update.base_version.hex()[:12]}, not of the current model", kind, 1.0
            return None, kind, 1.0  # evaluation reports are stored; they carry no delta
        if open_round.row.mode == "eval":
            return "training updates are not taken while the final model is evaluated", kind, 1.0
        if update.samples == 0:
            return "zero samples: nothing to weight the update by", kind, 1.0
        if not math.isfinite(norm) or norm > self.config.rounds.norm_bound:
            return f"update norm {norm:.4g} exceeds the bound {self.config.rounds.norm_bound:g}", kind, 1.0
        has_task = self.store.selection_status(update.round, device, "train") == "sent"
        if self.config.rounds.mode == "sync":
            if update.round != open_round.number:
                return f"round {update.round} is not the open round {open_round.number}", kind, 1.0
            if update.base_version != open_round.row.base_version:
                return (
                    f"base version {update.base_version.hex()[:12]} is not the round's "
                    f"{open_round.row.base_version.hex()[:12]}",
                    kind,
                    1.0,
                )
            if not has_task:
                return f"{device} has no open task in round {update.round}", kind, 1.0
            return None, kind, 1.0
        base_seq = self.store.model_seq(update.base_version)
        current_seq = self.store.model_seq(self.version)
        if base_seq is None or current_seq is None:
            return f"base version {update.base_version.hex()[:12]} is unknown", kind, 1.0
        staleness = current_seq - base_seq
        if staleness > self.config.rounds.max_staleness:
            return f"{staleness} versions stale (max {self.config.rounds.max_staleness})", kind, 1.0
        if not has_task:
            return f"{device} has no open task from round {update.round}", kind, 1.0
        return None, kind, (1.0 + max(0, staleness)) ** -0.5

    def _send(self, outgoing: Outgoing) -> None:
        for topic, payload, retain, expiry in outgoing:
            self.link.publish(topic, payload, retain=retain, expiry=expiry)

    # -- the round thread -----------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            try:
                self.tick()
            except Exception:  # the federation outlives a bad round; the log says what happened
                log.exception("round step failed")

    def tick(self) -> None:
        evaluating = self._open is not None and self._open.row.mode == "eval"
        if self.config.rounds.mode == "async" and not evaluating:
            self._tick_async()
        else:
            self._tick_sync()

    def _rounds_done(self) -> bool:
        """True once the configured rounds have closed and the final model has been evaluated."""
        limit = self.config.rounds.rounds
        rounds = self.store.rounds(limit=1_000_000)
        closed = sum(1 for r in rounds if r.status == "closed" and r.mode != "eval")
        if not limit or closed < limit:
            return False
        if not any(r.mode == "eval" and r.base_version == self.version for r in rounds):
            self._open_evaluation()
            return True
        self.finished.set()
        return True

    def _open_evaluation(self) -> None:
        """Ask every eligible device to score the final model on its held-out data. Called under the lock."""
        eligible = sorted(r.device for r in self.registry.eligible(self.rule))
        now = time.time()
        number = self.store.last_round() + 1
        row = RoundRow(number, self.version, "open", "eval", now, now + self.config.rounds.deadline, len(eligible))
        self.store.open_round(row)
        self._open = OpenRound(row, self._new_aggregate())
        outgoing: Outgoing = []
        tasks: list[tuple[str, bytes]] = []
        for device in eligible:
            task = self._task(number, row.deadline)
            task.evaluate_only = True
            tasks.append((device, task.task_id))
            self._open.selected.add(device)
            outgoing.append((self.topics.task(device), wire.encode(task), False, max(1, int(row.deadline - now))))
        self.store.add_selections(number, "eval", tasks, self.version, row.deadline)  # recorded before any is sent
        self._pending_out.extend(outgoing)
        log.info("final model %s: evaluation asked of %d devices", self.version.hex()[:12], len(eligible))

    def _finish_evaluation(self, open_round: OpenRound) -> None:
        """Sample-weighted metrics of the evaluation reports. Called under the lock."""
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
        self._open = None
        self.final_metrics = metrics
        log.info("final evaluation: %s", {k: round(v, 4) for k, v in metrics.items()})

    def _task(self, round_: int, deadline: float) -> wire.Task:
        rc = self.config.rounds
        return wire.Task(
            os.urandom(16),
            round_,
            self.version,
            rc.epochs,
            rc.learning_rate,
            rc.density,
            int(deadline),
            rc.batch_size,
            self.prox_mu,
            value_coding=rc.value_coding,
            report=(round_ - 1) % rc.report_every == 0,
        )

    def _assign(self, open_round: OpenRound, devices: list[str], deadline: float) -> Outgoing:
        outgoing: Outgoing = []
        tasks: list[tuple[str, bytes]] = []
        expiry = max(1, int(deadline - time.time()))
        for device in devices:
            task = self._task(open_round.number, deadline)
            tasks.append((device, task.task_id))
            open_round.selected.add(device)
            outgoing.append((self.topics.task(device), wire.encode(task), False, expiry))
        if tasks:
            self.store.add_selections(open_round.number, "train", tasks, self.version, deadline)  # before any is sent
        return outgoing

    def _tick_sync(self) -> None:
        rc = self.config.rounds
        outgoing: Outgoing = []
        close = fail = False
        with self._lock:
            open_round = self._open
            now = time.time()
            if open_round is None:
                if self._rounds_done():
                    return
                eligible = sorted(r.device for r in self.registry.eligible(self.rule))
                if len(eligible) < rc.min_devices:
                    return
                target = max(rc.min_devices, math.ceil(rc.fraction * len(eligible)))
                ask = min(len(eligible), math.ceil(target * (1 + rc.overprovision)))
                chosen = sorted(self.rng.choice(eligible, size=ask, replace=False).tolist())
                row = RoundRow(
                    self.store.last_round() + 1, self.version, "open", "sync", now, now + rc.deadline, target
                )
                self.store.open_round(row)
                self._open = OpenRound(row, self._new_aggregate())
                outgoing = self._assign(self._open, chosen, row.deadline)
                log.info("round %d: asked %d of %d eligible devices (target %d)", row.round, ask, len(eligible), target)
            elif open_round.row.mode == "eval":
                reports = self.store.round_counts(open_round.number)["eval"]  # a count, not every payload, per tick
                if reports >= open_round.row.target or now >= open_round.row.deadline:
                    self._finish_evaluation(open_round)
            else:
                accepted = open_round.aggregate.count
                if accepted >= open_round.row.target or (now >= open_round.row.deadline and accepted >= rc.min_updates):
                    close = True
                elif now >= open_round.row.deadline:
                    fail = True
                else:
                    outgoing = self._reassign(open_round)
            outgoing += self._pending_out
            self._pending_out.clear()
        self._send(outgoing)
        if outgoing and self._open is not None and self._open.aggregate.count == 0:
            self._publish_state(1)
        if close:
            self._close()
        elif fail:
            self._fail("deadline passed with too few updates")

    def _reassign(self, open_round: OpenRound) -> Outgoing:
        """Replace selected devices that died before delivering. Called under the lock.

        Ticks come with every accepted update; scanning the round's selections each time made a
        1,000-device round quadratic, so the scan runs only after some device has gone offline.
        """
        departures = self.registry.departures
        if departures == open_round.departures_seen:
            return []
        open_round.departures_seen = departures
        waiting = {s["device"] for s in self.store.selections(open_round.number, "sent") if s["kind"] == "train"}
        dead = [d for d in sorted(waiting) if (r := self.registry.get(d)) is not None and not r.online]
        if not dead:
            return []
        spare = sorted(r.device for r in self.registry.eligible(self.rule) if r.device not in open_round.selected)
        replacements = self.rng.permutation(spare)[: len(dead)].tolist() if spare else []
        for device in dead:
            self.store.set_selection_status(open_round.number, device, "train", "reassigned")
        if replacements:
            log.info("round %d: %s died; reassigned to %s", open_round.number, dead, replacements)
        return self._assign(open_round, replacements, open_round.row.deadline)

    def _tick_async(self) -> None:
        rc = self.config.rounds
        outgoing: Outgoing = []
        close = False
        with self._lock:
            now = time.time()
            if self._open is None:
                if self._rounds_done():
                    return
                self._open_async_round(now)
            open_round = self._open
            assert open_round is not None
            if open_round.aggregate.count >= rc.buffer_size:
                close = True
            else:
                for s in self.store.selections(status="sent"):
                    if s["deadline"] < now:
                        self.store.set_selection_status(s["round"], s["device"], s["kind"], "expired")
                busy = {s["device"] for s in self.store.selections(status="sent")}
                idle = sorted(r.device for r in self.registry.eligible(self.rule) if r.device not in busy)
                free = rc.concurrency - len(busy)
                if free > 0 and idle:
                    chosen = self.rng.permutation(idle)[:free].tolist()
                    outgoing = self._assign(open_round, chosen, now + rc.deadline)
        self._send(outgoing)
        if close:
            self._close()

    def _open_async_round(self, now: float) -> None:
        """The next aggregation buffer. Called under the lock."""
        rc = self.config.rounds
        number = self.store.last_round() + 1
        row = RoundRow(number, self.version, "open", "async", now, now + rc.deadline, rc.buffer_size)
        self.store.open_round(row)
        self._open = OpenRound(row, self._new_aggregate())

    def _close(self) -> None:
        with self._lock:
            open_round = self._open
            if open_round is None:
                return
            started = open_round.row.started
            round_input = open_round.aggregate.round_input()
            new_weights = self.strategy.step(self.master.weights(), round_input)
            self.master.set_weights(new_weights)
            self.master.set_activation_ranges(open_round.aggregate.activation_ranges())
            model = self.master.export()
            version = hashlib.sha256(model).digest()
            model_path, master_path, strategy_path = self._paths(version)
            atomic_write(model_path, model)
            self.master.save(master_path)
            buf = io.BytesIO()
            np.savez(buf, **self.strategy.state())
            atomic_write(strategy_path, buf.getvalue())
            metrics = open_round.aggregate.metrics()
            counts = self.store.round_counts(open_round.number)
            metrics.update(
                accepted=float(open_round.aggregate.count),
                uplink_bytes=float(counts["uplink_bytes"]),
                dense_bytes=float(counts["dense_bytes"]),
                seconds=time.time() - started,
            )
            self.store.finish_round(
                open_round.number, version, open_round.row.base_version, model_path, master_path, len(model), metrics
            )
            parent = self.version
            self.model, self.version = model, version
            self.manifest, self.chunks = self._manifest(model, parent)
            self._open = None
            if self.config.rounds.mode == "async" and not self._rounds_done():
                # Updates keep arriving while a version is made: the next buffer must already be open.
                self._open_async_round(time.time())
            summary = RoundSummary(
                open_round.number,
                "closed",
                version,
                open_round.aggregate.count,
                counts["refused"],
                counts["uplink_bytes"],
                counts["dense_bytes"],
                metrics["seconds"],
                metrics,
            )
        log.info(
            "round %d closed: %d updates, model %s, %d uplink bytes (dense float32: %d)",
            summary.round,
            summary.accepted,
            version.hex()[:12],
            summary.uplink_bytes,
            summary.dense_bytes,
        )
        self._publish_model()
        self._publish_state(0)
        for listener in list(self.on_round_closed):
            listener(summary)
        self._wake.set()

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
                counts["uplink_bytes"], counts["dense_bytes"], time.time() - open_round.row.started, {},
            )  # fmt: skip
        log.warning("round %d failed: %s", open_round.number, note)
        self._publish_state(0)
        for listener in list(self.on_round_closed):
            listener(summary)

    # -- operator actions -----------------------------------------------------------------------------------
    @property
    def open_round(self) -> OpenRound | None:
        return self._open
