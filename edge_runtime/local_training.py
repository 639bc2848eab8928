"""What a member that trains on its own samples needs, without MQTT.

Its share of the data (re-read when the user's file changes), the training
and compression a task asks for, and the held-out metrics an update
reports. The Python device (``agent.py``) and the emulated board (``hil``)
both use these; keeping them apart from the agent keeps paho out of a
board emulator's install.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import wire
from .compress.compressor import CompressionConfig
from .data.dataset import DataError, Dataset
from .data.partition import device_share, hold_out, select_group
from .data.sources import load_source, source_file
from .device_config import DataSection
from .model.backends.base import Backend
from .model.graph import Graph
from .model.info import model_labels, quantize_input
from .train.evaluate import int8_metrics
from .train.trainer import TrainConfig, weighted_layer_ops
from .wire.values import ValueCoding

log = logging.getLogger(__name__)


@dataclass
class LocalData:
    train: Dataset
    evaluate: Dataset

    @functools.cached_property
    def digest(self) -> bytes:
        """16 bytes that change when the samples or labels do: announced in the birth (``Capabilities.data``)."""
        h = hashlib.sha256()
        for part in (self.train, self.evaluate):
            h.update(np.ascontiguousarray(part.x).tobytes())
            h.update(np.asarray(part.y).tobytes())
            h.update("\0".join(map(str, part.classes)).encode())
        return h.digest()[:16]


def load_local_data(section: DataSection) -> LocalData:
    """This device's samples: a natural group, a shard of a partition, or the whole source.

    ``holdout`` applies to each: that share of the device's samples is kept
    for evaluation. With ``holdout = 0`` the device trains on all of them
    and evaluates on the source's own test part (HAR, UCR, an npz with
    ``X_test``), or not at all when the source has none (a CSV file).
    """
    split = load_source(section.source, seed=section.seed, label_column=section.label_column)
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
    train, evaluate = hold_out(split.train, section.holdout, section.seed, split.test)
    if len(train) == 0:
        raise DataError(f"{train.where}: no training samples")
    return LocalData(train, evaluate)


FileStamp = tuple[int, int, int]  # mtime (ns), size, inode: a rename into place changes the inode


class LocalDataSource:
    """A device's data as its ``[data]`` table describes it, read again when the user's file changes.

    The file (a ``.csv`` or ``.npz`` source; named sets never change) is
    looked at with one ``stat`` before each task and when the device is
    idle; when its size, modification time or inode differ from the last
    read, it is read again whole. The stamp is taken before reading, so a
    write that lands during a read is picked up by the next look. A read
    that fails (the file vanished, a row is malformed) keeps the last good
    data but is remembered with the file's stamp: until the file changes
    again, :meth:`current` raises that DataError without reading, so every
    task reports it and an idle device does not re-read a broken file.
    """

    def __init__(self, section: DataSection) -> None:
        self.section = section
        self.path: Path | None = source_file(section.source)
        self.reads = 0  # times the source was read successfully (the first load included)
        self._lock = threading.Lock()
        self._stamp: FileStamp | None = None
        self._data: LocalData | None = None
        self._failed: tuple[FileStamp | None, DataError] | None = None

    def _look(self) -> FileStamp | None:
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def changed(self) -> bool:
        """Whether the file differs from what was last read or last failed to read (one stat, no read)."""
        if self._data is None:
            return True
        if self.path is None:
            return False
        stamp = self._look()
        return stamp != self._stamp and (self._failed is None or stamp != self._failed[0])

    def current(self) -> LocalData:
        """The data as the file holds it now; raises DataError (the last good data kept) when it cannot be read."""
        with self._lock:
            stamp = self._look()
            if self._data is not None and (self.path is None or stamp == self._stamp):
                return self._data
            if self._failed is not None and self._failed[0] == stamp:
                raise self._failed[1]
            try:
                data = load_local_data(self.section)
            except DataError as exc:
                self._failed = (stamp, exc)
                raise
            if self._data is not None:
                log.info("%s changed: %d training samples (were %d), %d held out", self.path, len(data.train),
                         len(self._data.train), len(data.evaluate))  # fmt: skip
            self._data, self._stamp, self._failed = data, stamp, None
            self.reads += 1
            return data


def model_arrays(graph: Graph, ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Samples as the model takes them: int8 inputs and the model's class indices.

    Raises ShapeError or LabelError naming the file (and the label column or key).
    """
    return quantize_input(graph, ds.x, ds.where), model_labels(graph, ds.y, ds.classes, ds.labels_at)


def task_training(task: wire.Task, seed: int) -> tuple[TrainConfig, CompressionConfig]:
    """How a task says to train and compress: one mapping for every member (Python device, emulated board)."""
    training = TrainConfig(
        epochs=task.epochs,
        batch_size=task.batch_size,
        learning_rate=task.learning_rate,
        prox_mu=task.prox_mu,
        seed=seed,
    )
    # A task's clip and local noise are its privacy (docs/privacy.md): the compressor applies them, before
    # sparsification, for every member alike.
    compression = CompressionConfig(
        density=task.density, value_coding=ValueCoding(task.value_coding), seed=seed, clip=task.clip, noise=task.noise
    )
    return training, compression


def held_out_metrics(backend: Backend, model: bytes, graph: Graph, held_out: Dataset) -> dict[str, float]:
    """The metrics an update reports: the base model's int8 accuracy and loss on the local held-out share."""
    if len(held_out) == 0:
        return {}
    x, y = model_arrays(graph, held_out)
    scores = int8_metrics(backend, model, graph, x, y)
    return {"eval_accuracy": scores["accuracy"], "eval_loss": scores["loss"], "eval_samples": float(len(held_out))}


def manifest_layers(graph: Graph, spec: Mapping[int, int]) -> int:
    """How many of the model's last weighted layers the gateway's manifest lists as trainable.

    The manifest is the one source of truth for what devices train: the gateway folds only the
    tensors it lists, and its dense-size figures count them. A device trains from the earliest
    weighted layer whose weight is listed; 0 when the manifest lists none of the model's layers.
    """
    weighted = weighted_layer_ops(graph)
    listed = [n for n, i in enumerate(weighted) if graph.operators[i].inputs[1] in spec]
    return len(weighted) - listed[0] if listed else 0
