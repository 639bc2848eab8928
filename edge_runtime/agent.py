"""The device agent: a board's whole part in a federation, from task to receipted update.

It follows the retained manifest and installs each new model atomically
(transport/fetcher.py, model_store.py), announces itself with a retained
birth message and leaves a last will, and works through its tasks one at a
time in its own thread, never in the MQTT network thread:

    task -> wait for the task's base model -> train the layers the manifest lists on local data
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

A task it cannot do (labels that are not the model's classes, samples that
do not fit its input, data that vanished, training that failed, a model
that never came or does not load) is reported to the gateway with a typed
reason (member.py, failures.py) rather than logged and left to expire.

What it trains is the gateway's to say: the manifest lists the trainable
tensors, and the device trains exactly those layers. A ``[device]
trainable_layers`` that disagrees is ignored, with a warning once per model.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import numpy as np

from . import __version__, wire
from .compress.compressor import CompressionConfig, Compressor
from .compress.feedback import ResidualStore
from .data.dataset import Dataset
from .device_config import DeviceConfig
from .failures import FailureReason, TaskFailed, failing_as
from .local_training import LocalData, LocalDataSource, load_local_data, manifest_layers, model_arrays, task_training
from .member import FederationMember, MemberSettings
from .model.backends import default_backend, get_backend
from .model.backends.base import Backend
from .model.errors import BackendUnavailableError, ModelError
from .model.graph import Graph
from .model.reader import read_graph
from .train.evaluate import int8_metrics
from .train.trainer import Trainer, cut_for_last_layers, weighted_layer_ops
from .trust import member_trust

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
            if config.device.backend != "auto":
                backend = get_backend(config.device.backend)
            else:
                try:  # the first interpreter that loads, not every one: each loaded costs MiBs of RSS
                    backend = default_backend()
                except BackendUnavailableError as exc:
                    raise ModelError("no interpreter backend installed: pip install 'tinyfed[litert]'") from exc
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
                update_format=config.transport.update_format,
                max_task_seconds=config.device.max_task_seconds,
                trust=member_trust(config.trust, config.source, f"device {config.device.id}"),
            )
        )
        self.compressor = Compressor(CompressionConfig(), ResidualStore(config.storage / "residual.npz"))
        try:
            from .secagg.participant import SecAggParticipant
        except ModuleNotFoundError:  # cryptography (the device extra): without it a secure task is reported failed
            log.warning("device %s: no cryptography; secure aggregation rounds cannot be joined", self.device_id)
        else:
            self.secagg = SecAggParticipant(self.device_id, self.topics, self.link, self.trust, config.storage,
                                            self.settings.ack_timeout, self.settings.max_payload)
        self._layers_warned: bytes | None = None  # the model version a trainable_layers warning was given for

    def capabilities(self) -> wire.Capabilities:
        return wire.Capabilities(
            ram=physical_ram(),
            backend=self.backend.name,
            trainable_layers=self.config.device.trainable_layers,
            samples=len(self.data.train),
            model_version=self.store.current_version,
            firmware=f"tinyfed {__version__}",
            data=self.data.digest,
            group=self.config.device.group,
        )

    def model_capacity(self) -> tuple[int, str] | None:
        if self.config.device.max_model_bytes:
            return self.config.device.max_model_bytes, "[device] max_model_bytes"
        ram = physical_ram()
        return (ram // 2, f"half of its {ram >> 20} MiB of RAM") if ram else None

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
        """Run one task to a stored update (none for a secure aggregation task: its input goes to the round's
        session); raises TaskFailed (reported to the gateway) when it cannot."""
        model, manifest = self.model_for(task)
        with failing_as(FailureReason.NO_MODEL):
            graph = read_graph(model)
        with failing_as(FailureReason.NO_DATA):
            data = self.task_data()
        started = time.perf_counter()
        # Federated evaluation: an update reports how the base model scores on the held-out share.
        evaluation = self._evaluate(model, graph, data.evaluate) if task.report or task.evaluate_only else {}
        if task.evaluate_only:
            update = self.new_update(task, len(data.evaluate), [], evaluation, {})
            self.store_update(update, task)
            return update
        if len(data.train) == 0:
            raise TaskFailed(FailureReason.NO_DATA, f"{data.train.name or 'the local data'}: no training samples")
        spec = manifest.spec()
        cut = cut_for_last_layers(graph, self._layers(graph, manifest))
        x, y = self._inputs(graph, data.train)
        train_config, compression = task_training(task, seed=self.config.device.seed * 100_003 + task.round)
        with failing_as(FailureReason.TRAINING):
            trainer = Trainer(graph, cut=cut, backend=self.backend, config=train_config)
            result = trainer.fit(x, y, progress=self.check_stop)
            deltas = {t: d for t, d in trainer.delta_by_tensor().items() if t in spec}
            missing = sorted(set(spec) - set(deltas))
            if missing:
                raise TaskFailed(FailureReason.OTHER, f"the manifest lists tensors {missing[:8]} that this model's "
                                 "trainable layers do not have")  # fmt: skip
            if task.secure:  # secure aggregation: the input goes to the round's session, nothing in the clear
                if self.secagg is None:
                    raise TaskFailed(FailureReason.OTHER, "secure aggregation needs cryptography: pip install "
                                     "'tinyfed[device]'")  # fmt: skip
                self.secagg.input_ready(task, deltas)
                log.info("device %s: round %d trained in %.2f s; its input waits for the secure aggregation",
                         self.device_id, task.round, time.perf_counter() - started)  # fmt: skip
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
        update = self.new_update(task, len(data.train), compressed.tensors, metrics, ranges)
        update.below_clip = compressed.below_clip if task.clip_bit else None  # adaptive clipping's one bit
        self.store_update(update, task)
        self.compressor.commit(compressed)  # only now: the update is safe on disk
        return update

    def task_data(self) -> LocalData:
        """The samples a task uses, read again when the file changed (it grew, or vanished): an error here is
        reported to the gateway as ``no_data`` unless it names another reason (labels, shape)."""
        self.refresh_data()
        return self.data

    def _layers(self, graph: Graph, manifest: wire.ModelManifest) -> int:
        """The weighted layers to train: as many as the manifest lists; a device.toml value that differs is ignored."""
        layers = manifest_layers(graph, manifest.spec())
        if layers == 0:
            raise TaskFailed(FailureReason.OTHER, f"the manifest of model {manifest.version.hex()[:12]} lists "
                             "none of the model's weighted layers as trainable")  # fmt: skip
        configured = min(self.config.device.trainable_layers, len(weighted_layer_ops(graph)))
        if configured and configured != layers and self._layers_warned != manifest.version:
            self._layers_warned = manifest.version
            log.warning(
                "device %s: [device] trainable_layers = %d in %s is ignored: the gateway's manifest lists the "
                "last %d weighted layer(s) of model %s as trainable, and that is what this device trains",
                self.device_id, configured, self.config.source, layers, manifest.version.hex()[:12],
            )  # fmt: skip
        return layers

    def _inputs(self, graph: Graph, data: Dataset) -> tuple[np.ndarray, np.ndarray]:
        """Samples as the model's int8 input and labels as its class indices, or the failure that says why not
        (model_arrays' errors name their reason, shape or labels, and the file)."""
        with failing_as(FailureReason.SHAPE):
            x, y = model_arrays(graph, data)
        with failing_as(FailureReason.LABELS):
            outputs = int(np.prod(graph.tensor(graph.outputs[0]).shape[1:]))
            if len(y) and int(y.max()) >= outputs:
                raise ModelError(f"{data.name or 'local data'}: labels reach class {int(y.max())}; the model has "
                                 f"{outputs} outputs")  # fmt: skip
        return x, y

    def _evaluate(self, model: bytes, graph: Graph, held_out: Dataset) -> dict[str, float]:
        """The base model's int8 accuracy and loss on the local held-out share (what local_training's
        held_out_metrics reports), with a shape or label problem reported as such."""
        if len(held_out) == 0:
            return {}
        x, y = self._inputs(graph, held_out)
        with failing_as(FailureReason.TRAINING):
            scores = int8_metrics(self.backend, model, graph, x, y)
        return {"eval_accuracy": scores["accuracy"], "eval_loss": scores["loss"], "eval_samples": float(len(held_out))}
