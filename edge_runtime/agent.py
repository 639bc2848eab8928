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
import threading
import time

from . import __version__, wire
from .compress.compressor import CompressionConfig, Compressor
from .compress.feedback import ResidualStore
from .device_config import DeviceConfig
from .local_training import (
    LocalData,
    LocalDataSource,
    held_out_metrics,
    load_local_data,
    model_arrays,
    task_training,
)
from .member import FederationMember, MemberSettings
from .model.backends import available_backends, get_backend
from .model.backends.base import Backend
from .model.errors import ModelError
from .model.graph import Graph
from .model.reader import read_graph
from .train.trainer import Trainer, cut_for_last_layers

__all__ = ["DeviceAgent", "LocalData", "load_local_data"]  # the last two moved to local_training; kept here for callers

log = logging.getLogger(__name__)


def physical_ram() -> int:
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError):
        return 0


class DeviceAgent(FederationMember):
    """A Python device: the member's MQTT side plus training on local data with an interpreter."""

    def __init__(self, config: DeviceConfig, data: LocalData | None = None, backend: Backend | None = None) -> None:
        self.config = config
        if backend is None:
            names = available_backends() if config.device.backend == "auto" else [config.device.backend]
            if not names:
                raise ModelError("no interpreter backend installed: pip install 'tinyfed[litert]'")
            backend = get_backend(names[0])
        self.backend = backend
        # Data given by the caller is fixed; data from [data] is re-read when its file changes (refresh_data).
        self.data_source: LocalDataSource | None = None
        if data is None:
            self.data_source = LocalDataSource(config.data)
            data = self.data_source.current()
        self.data = data
        self._data_lock = threading.Lock()
        super().__init__(
            MemberSettings(
                device_id=config.device.id,
                federation=config.device.federation,
                storage=config.storage,
                broker=config.broker,
                ack_timeout=config.transport.ack_timeout,
                resend_after=config.transport.resend_after,
                max_payload=config.transport.max_payload,
            )
        )
        self.compressor = Compressor(CompressionConfig(), ResidualStore(config.storage / "residual.npz"))

    def capabilities(self) -> wire.Capabilities:
        return wire.Capabilities(
            ram=physical_ram(),
            backend=self.backend.name,
            trainable_layers=self.config.device.trainable_layers,
            samples=len(self.data.train),
            model_version=self.store.current_version,
            firmware=f"tinyfed {__version__}",
        )

    def validate_model(self, model: bytes) -> None:
        read_graph(model).check_int8()
        self.backend.load(model)

    def refresh_data(self, idle_only: bool = False) -> bool:
        """Take up the data file's new contents, if it changed; a new birth announces the new sample count.

        Called at the start of each task, and (``idle_only``) from ``device run``'s main loop, which must
        not swap the data under a running task: the worker sets ``busy`` before it calls :meth:`handle`,
        and the check happens under the lock that task's own refresh takes. Raises DataError when the
        file cannot be read (the last good data stays).
        """
        source = self.data_source
        if source is None:
            return False
        with self._data_lock:
            if idle_only and (self.busy.is_set() or not source.changed()):
                return False
            data = source.current()  # unchanged: the same object, or the same DataError as the last look
            changed, self.data = data is not self.data, data
        if changed and self.link.connected.is_set():
            self.publish_birth()
        return changed

    def handle(self, task: wire.Task) -> wire.Update | None:
        """Run one task to a stored update; None when it cannot be done before its deadline."""
        self.refresh_data()
        if not self.wait_for_model(task.base_version, task.deadline):
            self.refuse(
                "no_model", f"task for round {task.round}: model {task.base_version.hex()[:12]} not here in time"
            )
            return None
        model = self.store.current()
        manifest = self.fetcher.manifest
        if model is None or manifest is None or manifest.version != task.base_version:
            self.refuse("no_model", f"task for round {task.round}: its base model is no longer current")
            return None
        graph = read_graph(model)
        started = time.perf_counter()
        # Federated evaluation: an update reports how the base model scores on the held-out share.
        evaluation = self._evaluate(model, graph) if task.report or task.evaluate_only else {}
        if task.evaluate_only:
            update = self.new_update(task, len(self.data.evaluate), [], evaluation, {})
            self.store_update(update, task)
            return update
        cut = cut_for_last_layers(graph, self.config.device.trainable_layers)
        train_config, compression = task_training(task, seed=self.config.device.seed * 100_003 + task.round)
        trainer = Trainer(graph, cut=cut, backend=self.backend, config=train_config)
        x, y = model_arrays(graph, self.data.train)
        result = trainer.fit(x, y)
        spec = manifest.spec()
        deltas = {t: d for t, d in trainer.delta_by_tensor().items() if t in spec}
        if not deltas:
            self.refuse("no_overlap", f"task for round {task.round}: nothing this device trains is in the manifest")
            return None
        self.compressor.config = compression
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
        update = self.new_update(task, len(self.data.train), compressed.tensors, metrics, ranges)
        self.store_update(update, task)
        self.compressor.commit(compressed)  # only now: the update is safe on disk
        return update

    def _evaluate(self, model: bytes, graph: Graph) -> dict[str, float]:
        return held_out_metrics(self.backend, model, graph, self.data.evaluate)
