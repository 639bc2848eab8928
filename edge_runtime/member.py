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
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from . import wire
from .model_store import ModelStore
from .storage import atomic_write
from .transport.fetcher import ModelFetcher
from .transport.mqtt import BrokerConfig, MqttLink, Will
from .transport.outbox import Outbox, OutboxEntry
from .transport.sender import OutboxSender
from .transport.topics import Topics
from .wire.limits import Limits

log = logging.getLogger(__name__)
# A task is a few dozen bytes; anything near this size on the task topic is an attack or a bug.
TASK_LIMITS = Limits(max_message_bytes=4096, max_items=64)


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


class FederationMember(ABC):
    """Subclasses implement :meth:`handle`, :meth:`capabilities` and :meth:`validate_model`."""

    def __init__(self, settings: MemberSettings) -> None:
        self.settings = settings
        self.device_id = settings.device_id
        self.topics = Topics(settings.federation)
        storage = settings.storage
        storage.mkdir(parents=True, exist_ok=True)
        self.store = ModelStore(storage / "models")
        self.outbox = Outbox(storage / "outbox")
        self.seq = self._next_seq(storage / "presence_seq")
        self.refusals: Counter[str] = Counter()  # reason -> count, for status and tests
        self.done: deque[wire.Update] = deque(maxlen=100)  # updates stored in the outbox, newest last
        self._seen_tasks: set[bytes] = set()
        self._tasks: queue.Queue[wire.Task | None] = queue.Queue()
        self._model_changed = threading.Condition()
        self._worker: threading.Thread | None = None
        self.busy = threading.Event()

        self.link = MqttLink(
            settings.broker,
            client_id=f"tinyfed-{settings.federation}-{self.device_id}",
            will=Will(self.topics.presence(self.device_id), wire.encode(self._presence(False))),
        )
        self.sender = OutboxSender(
            self.link,
            self.outbox,
            self.topics.receipt(self.device_id),
            ack_timeout=settings.ack_timeout,
            resend_after=settings.resend_after,
            max_payload=settings.max_payload,
        )
        self.fetcher = ModelFetcher(
            self.link, self.topics, self.store, validate=self.validate_model, on_installed=self._on_installed
        )
        self.link.subscribe(self.topics.task(self.device_id), self._on_task)
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
        """Run one task to a stored update (via :meth:`store_update`); None when it cannot be done."""

    def on_model_installed(self, manifest: wire.ModelManifest) -> None:  # noqa: B027 - optional hook
        """Called on the fetcher's thread after a new model is installed; keep it short."""

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
        """Finish the task in hand (up to ``timeout``), announce death, disconnect."""
        self._tasks.put(None)
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
        self.link.publish(self.topics.presence(self.device_id), wire.encode(self._presence(True)), retain=True)

    def publish_death(self) -> None:
        """What the last will says, said now: the member (or the board behind it) is gone."""
        if self.link.connected.is_set():
            self.link.publish(
                self.topics.presence(self.device_id), wire.encode(self._presence(False)), retain=True, timeout=5.0
            )

    # -- model --------------------------------------------------------------------------------------------
    def _on_installed(self, manifest: wire.ModelManifest) -> None:
        with self._model_changed:
            self._model_changed.notify_all()
        self.on_model_installed(manifest)
        self.publish_birth()  # the gateway learns the new model version from the birth message

    def wait_for_model(self, version: bytes, deadline: float) -> bool:
        """Installs notify at once; the short poll covers a manifest that names the model we already have."""
        with self._model_changed:
            while True:
                manifest = self.fetcher.manifest
                if self.store.current_version == version and manifest is not None and manifest.version == version:
                    return True
                remaining = deadline - time.time()
                if remaining <= 0:
                    return False
                self._model_changed.wait(min(0.5, remaining))

    # -- tasks --------------------------------------------------------------------------------------------
    def refuse(self, reason: str, detail: str) -> None:
        self.refusals[reason] += 1
        log.warning("device %s refused %s", self.device_id, detail)

    def _on_task(self, topic: str, payload: bytes) -> None:
        try:
            task = wire.decode(payload, TASK_LIMITS, expect=wire.Task)
        except wire.WireError as exc:
            self.refuse(type(exc).__name__, f"a task of {len(payload)} bytes: {exc}")
            return
        if task.task_id in self._seen_tasks:
            log.info("task %s delivered again; already handled", task.task_id.hex()[:12])
            return
        if task.deadline <= time.time():
            self.refuse("expired", f"task for round {task.round}: its deadline passed")
            return
        self._seen_tasks.add(task.task_id)
        self._tasks.put(task)

    def _work(self) -> None:
        while True:
            task = self._tasks.get()
            if task is None:
                return
            self.busy.set()
            try:
                self.handle(task)
            except Exception:  # one bad task (or model) must not end the device's membership
                log.exception("device %s: task for round %d failed", self.device_id, task.round)
            finally:
                self.busy.clear()

    # -- updates ------------------------------------------------------------------------------------------
    def new_update(
        self,
        task: wire.Task,
        samples: int,
        tensors: list[wire.TensorUpdate],
        metrics: dict[str, float],
        ranges: dict[int | str, tuple[float, float]] | None = None,
    ) -> wire.Update:
        return wire.Update(
            update_id=os.urandom(16),
            device=self.device_id,
            round=task.round,
            base_version=task.base_version,
            samples=samples,
            tensors=tensors,
            metrics=metrics,
            activation_ranges=ranges or {},
        )

    def store_update(self, update: wire.Update, task: wire.Task) -> None:
        """Into the on-disk outbox, then sent; it stays there until the gateway's receipt names it."""
        kind = "evaluation" if task.evaluate_only else "update"
        entry = OutboxEntry(
            update.update_id,
            self.topics.update(self.device_id),
            wire.encode(update),
            expires=float(task.deadline),
            created=time.time(),
            label=f"{kind} round {task.round}",
        )
        self.sender.submit(entry)
        self.done.append(update)
        log.info(
            "device %s: %s for round %d stored (%d bytes, %d entries)",
            self.device_id,
            kind,
            task.round,
            len(entry.payload),
            sum(t.nnz for t in update.tensors),
        )
