"""A federation member's MQTT side: presence, model following, task intake and the outbox.

A Python device (:class:`~edge_runtime.agent.DeviceAgent`) and a
microcontroller behind the serial bridge (``firmware_bridge.member``) take
part in a federation the same way: the same topics, a retained birth
message with a last will, the retained manifest followed into an atomic
model store, tasks decoded under tight limits and worked through one at a
time on the member's own thread (never paho's), and updates kept in an
on-disk outbox until the gateway's receipt names them. Only what a task
*does* differs, so that is the one method a subclass writes
(:meth:`handle`), with :meth:`capabilities` and :meth:`validate_model`.

A task that cannot be done is reported (``wire.TaskFailure``, through the
outbox like an update), so the gateway's round does not wait for it: the
reason comes from ``failures.failure_reason``. No task holds the member's
one thread: a newer task replaces the older ones not yet begun and ends a
wait for a model or a training run at its next batch, as a stop does.

Trust (``edge_runtime.trust``, docs/security.md): in signed mode every
update, failure report and presence message (the last will included) is
signed with the member's key where it is encoded, and a manifest, task or
receipt counts only when the gateway's pinned key signed it; anything else
is refused, counted in ``refusals`` and logged. A task is also refused when
its deadline has passed or lies further ahead than ``max_task_seconds``,
and a model larger than :meth:`FederationMember.model_capacity` is refused
from its manifest, before a byte of it is fetched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from . import wire
from .errors import TinyfedError
from .failures import TaskAbandoned, TaskFailed, describe, failure_reason
from .model_store import ModelStore
from .storage import atomic_write
from .task_log import AnsweredTasks
from .transport.fetcher import ModelFetcher
from .transport.mqtt import BrokerConfig, MqttLink, Will
from .transport.outbox import Outbox, OutboxEntry
from .transport.sender import OutboxSender
from .transport.topics import Topics, member_client_id
from .trust import MemberTrust
from .wire.limits import Limits

log = logging.getLogger(__name__)
# A task is a few dozen bytes; anything near this size on the task topic is an attack or a bug.
TASK_LIMITS = Limits(max_message_bytes=4096, max_items=64)
# A failure report stays in the outbox this long past its task's deadline: one made at the deadline (a model
# that never came) must still reach the gateway's record, which keeps a device out until its birth changes.
REPORT_GRACE = 120.0


@dataclass
class MemberSettings:
    """What the MQTT side needs to know; a device reads it from device.toml, the bridge from its options."""

    device_id: str
    federation: str
    storage: Path
    broker: BrokerConfig
    ack_timeout: float = 10.0  # seconds to wait for the broker's PUBACK
    resend_after: float = 30.0  # seconds without a receipt before an update is sent again
    max_payload: int = 65536  # larger updates travel as fragments
    update_format: str = "cbor"  # or "compact" (wire.encode_compact): devices whose gateway reads it
    max_task_seconds: float = 86400.0  # a task whose deadline lies further ahead is refused
    # What it signs with and whose signatures it believes: no default, so a caller says which (trust.py).
    trust: MemberTrust = field(kw_only=True)


class FederationMember(ABC):
    """Subclasses implement :meth:`handle`, :meth:`capabilities` and :meth:`validate_model`."""

    def __init__(self, settings: MemberSettings) -> None:
        self.settings = settings
        self.device_id = settings.device_id
        self.trust = settings.trust
        self.topics = Topics(settings.federation)
        storage = settings.storage
        storage.mkdir(parents=True, exist_ok=True)
        self.store = ModelStore(storage / "models")
        self.outbox = Outbox(storage / "outbox")
        self.seq = self._next_seq(storage / "presence_seq")
        self.refusals: Counter[str] = Counter()  # reason -> count, for status and tests
        self.done: deque[wire.Update] = deque(maxlen=100)  # updates stored in the outbox, newest last
        self.failed: deque[wire.TaskFailure] = deque(maxlen=100)  # failure reports stored in the outbox
        self._seen_tasks: set[bytes] = set()
        self.answered = AnsweredTasks(storage / "answered_tasks")  # survives a restart: never answer a task twice
        # Tasks not yet begun, and everything the worker waits on (a task, a model, a refused model, a stop):
        # one condition, so a wait for a model wakes as soon as a newer task or a stop makes it pointless.
        self._pending: deque[wire.Task] = deque()
        self._current: wire.Task | None = None  # the task being worked on
        self._changed = threading.Condition()
        self._shutdown = threading.Event()
        self._worker: threading.Thread | None = None
        self.busy = threading.Event()

        client_id = member_client_id(settings.federation, self.device_id)
        self.link = MqttLink(
            settings.broker,
            client_id=client_id,
            # Fixed at CONNECT for the life of the process, so signed now; its seq is this start's (Sparkplug).
            will=Will(self.topics.presence(self.device_id), self.trust.seal(wire.encode(self._presence(False)))),
            claim_topic=self.topics.claim(client_id),
            conflict_hint=(
                f"another device of federation {settings.federation!r} uses the device id {self.device_id!r} "
                "(a copied SD card or configuration, or two boards given the same id): give each its own id"
            ),
        )
        self.sender = OutboxSender(
            self.link,
            self.outbox,
            self.topics.receipt(self.device_id),
            ack_timeout=settings.ack_timeout,
            resend_after=settings.resend_after,
            max_payload=settings.max_payload,
            open_receipt=lambda payload: self.trust.decode(payload, expect=wire.Receipt),
        )
        self.fetcher = ModelFetcher(
            self.link,
            self.topics,
            self.store,
            validate=self.validate_model,
            on_installed=self._on_installed,
            on_refused=lambda manifest, why: self._wake(),
            open_manifest=lambda payload: self.trust.decode(payload, expect=wire.ModelManifest),
            capacity=self.model_capacity,
        )
        self.secagg: Any = None  # a SecAggParticipant, for members that take part in secure aggregation
        self._born = False  # our last word on our presence: a birth (True) or a death
        self._birth_had_model = False  # whether our last birth named a model version
        self.link.subscribe(self.topics.task(self.device_id), self._on_task)
        self.link.subscribe(self.topics.presence(self.device_id), self._on_own_presence)
        self.link.on_connect_hooks.append(self.publish_birth)

    # -- what a subclass provides -------------------------------------------------------------------------
    @abstractmethod
    def capabilities(self) -> wire.Capabilities:
        """What the birth message announces: RAM, backend, samples, trainable layers."""

    @abstractmethod
    def validate_model(self, model: bytes) -> None:
        """Raise if this member cannot run ``model``; the fetcher then keeps the last good one."""

    @abstractmethod
    def handle(self, task: wire.Task) -> wire.Update | None:
        """Run one task to a stored update (via :meth:`store_update`).

        Raise when it cannot be done: the error becomes the gateway's failure report
        (``TaskFailed`` with its reason, or any error mapped by ``failures.failure_reason``);
        ``TaskAbandoned`` when there is nothing to report (stopping, or the gateway moved on).
        """

    def on_model_installed(self, manifest: wire.ModelManifest) -> None:  # noqa: B027 - optional hook
        """Called on the fetcher's thread after a new model is installed; keep it short."""

    def model_capacity(self) -> tuple[int, str] | None:
        """The largest model this member takes, and what bounds it; None: no bound. A manifest announcing a
        larger model is refused before anything is fetched (its tasks then fail as ``no_memory``)."""
        return None

    # -- lifecycle ----------------------------------------------------------------------------------------
    @staticmethod
    def _next_seq(path: Path) -> int:
        """Birth/death sequence (Sparkplug's bdSeq): a death older than the latest birth is ignored."""
        try:
            seq = int(path.read_text().strip()) + 1
        except (OSError, ValueError):
            seq = 1
        atomic_write(path, str(seq).encode())
        return seq

    def start(self) -> Self:
        self._worker = threading.Thread(target=self._work, name=f"member-{self.device_id}", daemon=True)
        self._worker.start()
        self.link.start()
        self.sender.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Abandon the task in hand (a wait for a model at once, training at its next batch), announce death,
        disconnect. Nothing half-done is stored: an update enters the outbox whole or not at all."""
        self._shutdown.set()
        self._wake()
        if self.secagg is not None:
            self.secagg.stop()
        if self._worker is not None:
            self._worker.join(timeout)
        self.sender.stop()
        self.publish_death()
        self.link.stop()
        log.info("device %s stopped; %d update(s) wait in the outbox", self.device_id, len(self.outbox))

    # -- presence -----------------------------------------------------------------------------------------
    def _presence(self, alive: bool) -> wire.Presence:
        return wire.Presence(self.device_id, alive, self.seq, int(time.time()), self.capabilities() if alive else None)

    def publish_birth(self) -> None:
        self._born = True
        presence = self._presence(True)
        self._birth_had_model = presence.capabilities is not None and presence.capabilities.model_version is not None
        birth = self.trust.seal(wire.encode(presence))
        self.link.publish(self.topics.presence(self.device_id), birth, retain=True)

    def publish_death(self) -> None:
        """What the last will says, said now: the member (or the board behind it) is gone."""
        self._born = False
        if self.link.connected.is_set():
            death = self.trust.seal(wire.encode(self._presence(False)))
            self.link.publish(self.topics.presence(self.device_id), death, retain=True, timeout=5.0)

    def _on_own_presence(self, topic: str, payload: bytes) -> None:
        """A death on our topic while we live is a last will with our id: our own, from before a reconnect, or
        that of another client with our id that stopped, which the broker may deliver after our birth. Either
        way the birth is said again, or the gateway would take a live member for dead."""
        if not payload or not self._born or self._shutdown.is_set():
            return
        try:
            presence = wire.decode(payload, expect=wire.Presence)
        except wire.WireError:
            return
        if not presence.online:
            self.publish_birth()

    # -- model --------------------------------------------------------------------------------------------
    def _wake(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _on_installed(self, manifest: wire.ModelManifest) -> None:
        self._wake()
        self.on_model_installed(manifest)
        # A birth costs more uplink than an update: said again only when a member that had no model got one (the
        # gateway shows that it is ready), not for each new version; later births (reconnects) name the current.
        if not self._birth_had_model:
            self.publish_birth()

    def check_stop(self, *progress: object) -> None:
        """Raise TaskAbandoned once the member is stopping, or a task of a later round has arrived: a training
        progress callback, called every batch."""
        if self._shutdown.is_set():
            raise TaskAbandoned("the member is stopping")
        with self._changed:
            current, later = self._current, max((t.round for t in self._pending), default=None)
        if current is not None and later is not None and later > current.round:
            raise TaskAbandoned(f"the task for round {later} replaces it")

    def model_for(self, task: wire.Task) -> tuple[bytes, wire.ModelManifest]:
        """The task's base model and its manifest, once installed.

        Waits for it, but never past what makes the wait pointless: the model failed to install here
        (TaskFailed, NO_MODEL), the deadline passed (likewise), a newer task arrived or the federation
        published another version (TaskAbandoned: the gateway moved on), or the member is stopping.
        Installs and new tasks notify at once; the short poll covers a manifest naming the model we have.
        """
        version = task.base_version
        short = version.hex()[:12]
        said = False
        with self._changed:
            while True:
                self.check_stop()
                manifest = self.fetcher.manifest
                installed = self.store.current_version == version
                if installed and manifest is not None and manifest.version == version:
                    model = self.store.current()
                    if model is not None and self.store.current_version == version:
                        return model, manifest
                refused = self.fetcher.failed.get(version)
                if refused is not None:
                    raise TaskFailed(failure_reason(refused, wire.FailureReason.NO_MODEL),
                                     f"model {short} does not install here: {describe(refused)}")  # fmt: skip
                if self._pending:
                    raise TaskAbandoned(f"a newer task arrived while model {short} was awaited")
                announced = self.fetcher.announced
                if announced is not None and announced.version != version and not installed:
                    newer = announced.version.hex()[:12]
                    raise TaskAbandoned(f"model {short} is no longer the federation's ({newer} is)")
                remaining = task.deadline - time.time()
                if remaining <= 0:
                    raise TaskFailed(wire.FailureReason.NO_MODEL, f"model {short} did not arrive before the deadline")
                if not said:
                    said = True
                    log.info("device %s: task for round %d waits for model %s", self.device_id, task.round, short)
                self._changed.wait(min(0.5, remaining))

    # -- tasks --------------------------------------------------------------------------------------------
    def refuse(self, reason: str, detail: str) -> None:
        self.refusals[reason] += 1
        log.warning("device %s refused %s", self.device_id, detail)

    def _on_task(self, topic: str, payload: bytes) -> None:
        """Only the gateway's tasks (signed mode), with a deadline ahead but not too far; a task of a later round
        replaces those not yet begun, and one older than a task already taken is refused."""
        if self.secagg is not None and self.secagg.offer(payload):
            return  # a secure aggregation request (edge_runtime/secagg/participant.py)
        try:
            task = self.trust.decode(payload, TASK_LIMITS, expect=wire.Task)
        except wire.WireError as exc:
            unreadable = isinstance(exc, wire.MalformedCBOR | wire.MessageTooLarge)
            kind = "signature" if exc.field.startswith("envelope") and not unreadable else type(exc).__name__
            self.refuse(kind, f"a task of {len(payload)} bytes: {exc}")
            return
        if task.task_id in self._seen_tasks or task.task_id in self.answered:
            log.info("task %s delivered again; already handled", task.task_id.hex()[:12])
            return
        now = time.time()
        if task.deadline <= now:
            self.refuse("expired", f"task for round {task.round}: its deadline passed")
            return
        if task.deadline > now + self.settings.max_task_seconds:
            self.refuse("deadline", f"task for round {task.round}: its deadline is {task.deadline - now:.0f} s "
                        f"away, beyond the {self.settings.max_task_seconds:.0f} s this member accepts")  # fmt: skip
            return
        with self._changed:
            taken = [t.round for t in self._pending] + ([self._current.round] if self._current else [])
            newest = max(taken, default=None)
            replaced = [t for t in self._pending if t.round < task.round]
            if newest is None or task.round >= newest:
                self._pending = deque(t for t in self._pending if t.round >= task.round)
                self._pending.append(task)
                self._seen_tasks.add(task.task_id)
                self._changed.notify_all()
        if newest is not None and task.round < newest:
            self.refuse("superseded", f"task for round {task.round}: older than the task for round {newest}")
            return
        log.info("device %s: task %s for round %d on model %s", self.device_id, task.task_id.hex()[:12], task.round,
                 task.base_version.hex()[:12])  # fmt: skip
        for old in replaced:
            log.info("device %s: the task for round %d is replaced by the one for round %d", self.device_id,
                     old.round, task.round)  # fmt: skip

    def _next_task(self) -> wire.Task | None:
        with self._changed:
            self._current = None
            self._changed.wait_for(lambda: self._pending or self._shutdown.is_set())
            if self._shutdown.is_set():
                return None
            self._current = self._pending.popleft()
            return self._current

    def _work(self) -> None:
        while (task := self._next_task()) is not None:
            self.busy.set()
            try:
                if task.secure and self.secagg is None:
                    # Nothing of a secure round's task may leave in the clear: said to the gateway instead.
                    raise TaskFailed(wire.FailureReason.OTHER, "this member cannot take part in secure aggregation "
                                     "(no cryptography installed)")  # fmt: skip
                self.handle(task)
            except TaskAbandoned as why:
                log.info("device %s: task for round %d set aside: %s", self.device_id, task.round, why)
            except Exception as exc:  # one bad task (or model) must not end the device's membership
                self._fail(task, exc)
            finally:
                self.busy.clear()
        with self._changed:
            self._current = None

    def _fail(self, task: wire.Task, exc: Exception) -> None:
        reason = failure_reason(exc, wire.FailureReason.TRAINING)
        if isinstance(exc, TinyfedError | OSError | ValueError):
            log.warning("device %s cannot do its task for round %d (%s): %s", self.device_id, task.round,
                        reason.name.lower(), exc)  # fmt: skip
        else:  # not an error tinyfed names: the traceback is the only clue
            log.exception("device %s: task for round %d failed", self.device_id, task.round)
        try:
            self.report_failure(task, reason, describe(exc))
        except Exception:  # the outbox cannot take it (a full disk): the round waits for its deadline instead
            log.exception("device %s: the failure report for round %d could not be stored", self.device_id,
                          task.round)  # fmt: skip

    def report_failure(self, task: wire.Task, reason: wire.FailureReason, detail: str) -> wire.TaskFailure:
        """Tell the gateway this task will not be done, through the outbox: durable, resent until receipted."""
        failure = wire.TaskFailure(os.urandom(16), self.device_id, task.round, task.task_id, reason, detail[:256])
        entry = OutboxEntry(
            failure.report_id,
            self.topics.update(self.device_id),
            self.trust.seal(wire.encode(failure)),
            expires=max(float(task.deadline), time.time()) + REPORT_GRACE,
            created=time.time(),
            label=f"failure report round {task.round}",
        )
        self.answered.add(task.task_id, float(task.deadline))
        self.sender.submit(entry)
        self.failed.append(failure)
        return failure

    # -- updates ------------------------------------------------------------------------------------------
    def new_update(
        self,
        task: wire.Task,
        samples: int,
        tensors: list[wire.TensorUpdate],
        metrics: dict[str, float],
        ranges: dict[int | str, tuple[float, float]] | None = None,
    ) -> wire.Update:
        compact = self.settings.update_format == "compact"
        return wire.Update(
            update_id=wire.new_update_id() if compact else os.urandom(16),
            device=self.device_id,
            round=task.round,
            base_version=task.base_version,
            samples=samples,
            tensors=tensors,
            metrics=metrics,
            activation_ranges=ranges or {},
        )

    def _encode_update(self, update: wire.Update) -> bytes:
        """The compact layout when configured and possible (int8/ternary values, the base's manifest at hand),
        else the CBOR update: a task is never lost to a layout."""
        manifest = self.fetcher.manifest
        usable = manifest is not None and (manifest.version == update.base_version or not update.tensors)
        if self.settings.update_format == "compact" and manifest is not None and usable:
            with contextlib.suppress(wire.CompactEncodingError):
                return wire.encode_compact(update, manifest.spec())
        return wire.encode(update)

    def store_update(self, update: wire.Update, task: wire.Task) -> None:
        """Into the on-disk outbox, then sent; it stays there until the gateway's receipt names it."""
        kind = "evaluation" if task.evaluate_only else "update"
        entry = OutboxEntry(
            update.update_id,
            self.topics.update(self.device_id),
            self.trust.seal(self._encode_update(update)),
            expires=float(task.deadline),
            created=time.time(),
            label=f"{kind} round {task.round}",
        )
        self.answered.add(task.task_id, float(task.deadline))  # before the answer exists: never answered twice
        self.done.append(update)  # before it can reach the gateway: whoever sees it arrive finds it here
        try:
            self.sender.submit(entry)
        except BaseException:
            self.done.pop()
            raise
        log.info(
            "device %s: %s for round %d stored (%d bytes, %d entries)",
            self.device_id,
            kind,
            task.round,
            len(entry.payload),
            sum(t.nnz for t in update.tensors),
        )
