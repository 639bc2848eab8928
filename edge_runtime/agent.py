"""The device agent: a board's whole part in a federation, from task to receipted update.

It follows the retained manifest and installs each new model atomically
(transport/fetcher.py, model_store.py), announces itself with a retained
birth message and leaves a last will, and works through its tasks one at a
time in its own thread, never in the MQTT network thread:

    task -> wait for the task's base model -> train the tail on local data
         -> delta = trained - base for the manifest's trainable tensors
         -> compress with error feedback -> encode -> outbox (on disk) -> publish
         -> forget it when the gateway's receipt names it

The update is stored in the outbox before the error-feedback residual is
committed, so a crash in between can at worst send a little mass twice,
never lose it. Every update reports the base model's int8 accuracy and
loss on the local held-out share (``eval_accuracy``, ``eval_loss``,
``eval_samples``): federated evaluation at no extra round trip. An
evaluation task sends only that, in an update without tensors.
Raw samples never leave this process.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__, wire
from .compress.compressor import CompressionConfig, Compressor
from .compress.feedback import ResidualStore
from .data.dataset import Dataset
from .data.partition import device_share, select_group
from .data.sources import load_source
from .device_config import DataSection, DeviceConfig
from .model.backends import available_backends, get_backend
from .model.backends.base import Backend
from .model.errors import ModelError
from .model.graph import Graph
from .model.info import model_labels, quantize_input
from .model.reader import read_graph
from .model_store import ModelStore
from .storage import atomic_write
from .train.evaluate import int8_metrics
from .train.trainer import TrainConfig, Trainer, cut_for_last_layers
from .transport.fetcher import ModelFetcher
from .transport.mqtt import MqttLink, Will
from .transport.outbox import Outbox, OutboxEntry
from .transport.sender import OutboxSender
from .transport.topics import Topics
from .wire.limits import Limits
from .wire.values import ValueCoding

log = logging.getLogger(__name__)
# A task is a few dozen bytes; anything near this size on the task topic is an attack or a bug.
TASK_LIMITS = Limits(max_message_bytes=4096, max_items=64)


@dataclass
class LocalData:
    train: Dataset
    evaluate: Dataset


def load_local_data(section: DataSection) -> LocalData:
    """This device's samples: a natural group, a shard of a partition, or the whole source."""
    split = load_source(section.source, seed=section.seed)
    if section.group is not None:
        train, held_out = select_group(split.train, split.test, section.group, section.holdout, seed=section.seed)
        return LocalData(train, held_out)
    if section.shard is not None:
        own = device_share(split.train, section.shard, section.partition, section.seed)
        own = np.random.default_rng(section.seed).permutation(own)
        n_eval = round(len(own) * section.holdout)
        name = f"{split.train.name} shard {section.shard}"
        evaluate = split.train.subset(own[:n_eval], f"{name} held out") if n_eval else split.test
        return LocalData(split.train.subset(own[n_eval:], name), evaluate)
    return LocalData(split.train, split.test)


def physical_ram() -> int:
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError):
        return 0


class DeviceAgent:
    def __init__(self, config: DeviceConfig, data: LocalData | None = None, backend: Backend | None = None) -> None:
        self.config = config
        self.device_id = config.device.id
        self.topics = Topics(config.device.federation)
        storage = config.storage
        storage.mkdir(parents=True, exist_ok=True)
        if backend is None:
            names = available_backends() if config.device.backend == "auto" else [config.device.backend]
            if not names:
                raise ModelError("no interpreter backend installed: pip install 'tinyfed[litert]'")
            backend = get_backend(names[0])
        self.backend = backend
        self.data = data if data is not None else load_local_data(config.data)
        self.store = ModelStore(storage / "models")
        self.outbox = Outbox(storage / "outbox")
        self.compressor = Compressor(CompressionConfig(), ResidualStore(storage / "residual.npz"))
        self.seq = self._next_seq(storage / "presence_seq")
        self.refusals: Counter[str] = Counter()  # reason -> count, for status and tests
        self.done: deque[wire.Update] = deque(maxlen=100)  # updates stored in the outbox, newest last
        self._seen_tasks: set[bytes] = set()
        self._tasks: queue.Queue[wire.Task | None] = queue.Queue()
        self._model_changed = threading.Condition()
        self._worker: threading.Thread | None = None
        self.busy = threading.Event()

        death = wire.Presence(self.device_id, False, self.seq, int(time.time()))
        self.link = MqttLink(
            config.broker,
            client_id=f"tinyfed-{config.device.federation}-{self.device_id}",
            will=Will(self.topics.presence(self.device_id), wire.encode(death)),
        )
        self.sender = OutboxSender(
            self.link,
            self.outbox,
            self.topics.receipt(self.device_id),
            ack_timeout=config.transport.ack_timeout,
            resend_after=config.transport.resend_after,
            max_payload=config.transport.max_payload,
        )
        self.fetcher = ModelFetcher(
            self.link, self.topics, self.store, validate=self._validate, on_installed=self._on_installed
        )
        self.link.subscribe(self.topics.task(self.device_id), self._on_task)
        self.link.on_connect_hooks.append(self._publish_birth)

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

    def start(self) -> DeviceAgent:
        self._worker = threading.Thread(target=self._work, name=f"agent-{self.device_id}", daemon=True)
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
        death = wire.Presence(self.device_id, False, self.seq, int(time.time()))
        if self.link.connected.is_set():
            self.link.publish(self.topics.presence(self.device_id), wire.encode(death), retain=True, timeout=5.0)
        self.link.stop()
        log.info("device %s stopped; %d update(s) wait in the outbox", self.device_id, len(self.outbox))

    # -- presence -----------------------------------------------------------------------------------------
    def capabilities(self) -> wire.Capabilities:
        return wire.Capabilities(
            ram=physical_ram(),
            backend=self.backend.name,
            trainable_layers=self.config.device.trainable_layers,
            samples=len(self.data.train),
            model_version=self.store.current_version,
            firmware=f"tinyfed {__version__}",
        )

    def _publish_birth(self) -> None:
        birth = wire.Presence(self.device_id, True, self.seq, int(time.time()), self.capabilities())
        self.link.publish(self.topics.presence(self.device_id), wire.encode(birth), retain=True)

    # -- model --------------------------------------------------------------------------------------------
    def _validate(self, model: bytes) -> None:
        read_graph(model).check_int8()
        self.backend.load(model)

    def _on_installed(self, manifest: wire.ModelManifest) -> None:
        with self._model_changed:
            self._model_changed.notify_all()
        self._publish_birth()  # the gateway learns the new model version from the birth message

    def _wait_for_model(self, version: bytes, deadline: float) -> bool:
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
    def _refuse(self, reason: str, detail: str) -> None:
        self.refusals[reason] += 1
        log.warning("device %s refused %s", self.device_id, detail)

    def _on_task(self, topic: str, payload: bytes) -> None:
        try:
            task = wire.decode(payload, TASK_LIMITS, expect=wire.Task)
        except wire.WireError as exc:
            self._refuse(type(exc).__name__, f"a task of {len(payload)} bytes: {exc}")
            return
        if task.task_id in self._seen_tasks:
            log.info("task %s delivered again; already handled", task.task_id.hex()[:12])
            return
        if task.deadline <= time.time():
            self._refuse("expired", f"task for round {task.round}: its deadline passed")
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

    def handle(self, task: wire.Task) -> wire.Update | None:
        """Run one task to a stored update; None when it cannot be done before its deadline."""
        if not self._wait_for_model(task.base_version, task.deadline):
            self._refuse(
                "no_model", f"task for round {task.round}: model {task.base_version.hex()[:12]} not here in time"
            )
            return None
        model = self.store.current()
        manifest = self.fetcher.manifest
        if model is None or manifest is None or manifest.version != task.base_version:
            self._refuse("no_model", f"task for round {task.round}: its base model is no longer current")
            return None
        graph = read_graph(model)
        started = time.perf_counter()
        # Federated evaluation: an update reports how the base model scores on the held-out share.
        evaluation = self._evaluate(model, graph) if task.report or task.evaluate_only else {}
        if task.evaluate_only:
            update = self._update(task, len(self.data.evaluate), [], evaluation, {})
            self._store(update, task)
            return update
        cut = cut_for_last_layers(graph, self.config.device.trainable_layers)
        train_config = TrainConfig(
            epochs=task.epochs,
            batch_size=task.batch_size,
            learning_rate=task.learning_rate,
            prox_mu=task.prox_mu,
            seed=self.config.device.seed * 100_003 + task.round,
        )
        trainer = Trainer(graph, cut=cut, backend=self.backend, config=train_config)
        x = quantize_input(graph, self.data.train.x)
        result = trainer.fit(x, model_labels(graph, self.data.train.y, self.data.train.classes))
        spec = manifest.spec()
        deltas = {t: d for t, d in trainer.delta_by_tensor().items() if t in spec}
        if not deltas:
            self._refuse("no_overlap", f"task for round {task.round}: nothing this device trains is in the manifest")
            return None
        self.compressor.config = CompressionConfig(
            density=task.density, value_coding=ValueCoding(task.value_coding), seed=train_config.seed
        )
        compressed = self.compressor.compress(deltas)
        last = result.epochs[-1]
        # Every byte here is sent each round: at 1% density a metric costs 6% of an update. Metrics ride
        # along only when the task asks for a report; accuracy and time go to the log.
        metrics = evaluation | {"train_loss": last.loss} if task.report else {}
        log.info(
            "device %s: round %d trained in %.2f s, loss %.4f, accuracy %.4f",
            self.device_id,
            task.round,
            time.perf_counter() - started,
            last.loss,
            last.accuracy,
        )
        index = {t.name: i for i, t in enumerate(graph.tensors)}
        ranges: dict[int | str, tuple[float, float]] = {}
        if task.report:
            ranges = {
                index[name]: (s["ema_min"], s["ema_max"])
                for name, s in trainer.activation_stats().items()
                if s["batches"] > 0
            }
        update = self._update(task, len(self.data.train), compressed.tensors, metrics, ranges)
        self._store(update, task)
        self.compressor.commit(compressed)  # only now: the update is safe on disk
        return update

    def _evaluate(self, model: bytes, graph: Graph) -> dict[str, float]:
        ev = self.data.evaluate
        if len(ev) == 0:
            return {}
        x = quantize_input(graph, ev.x)
        scores = int8_metrics(self.backend, model, graph, x, model_labels(graph, ev.y, ev.classes))
        return {"eval_accuracy": scores["accuracy"], "eval_loss": scores["loss"], "eval_samples": float(len(ev))}

    def _update(
        self,
        task: wire.Task,
        samples: int,
        tensors: list[wire.TensorUpdate],
        metrics: dict[str, float],
        ranges: dict[int | str, tuple[float, float]],
    ) -> wire.Update:
        return wire.Update(
            update_id=os.urandom(16),
            device=self.device_id,
            round=task.round,
            base_version=task.base_version,
            samples=samples,
            tensors=tensors,
            metrics=metrics,
            activation_ranges=ranges,
        )

    def _store(self, update: wire.Update, task: wire.Task) -> None:
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
