"""What a member that trains on its own samples needs, without MQTT.

Its share of the data, the training and compression a task asks for, and
the held-out metrics an update reports. The Python device (``agent.py``)
and the emulated board (``hil``) both use these; keeping them apart from
the agent keeps paho out of a board emulator's install.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from . import wire
from .compress.compressor import CompressionConfig
from .data.dataset import Dataset
from .data.partition import device_share, select_group
from .data.sources import load_source
from .device_config import DataSection
from .model.backends.base import Backend
from .model.graph import Graph
from .model.info import model_labels, quantize_input
from .train.evaluate import int8_metrics
from .train.trainer import TrainConfig, weighted_layer_ops
from .wire.values import ValueCoding


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


def task_training(task: wire.Task, seed: int) -> tuple[TrainConfig, CompressionConfig]:
    """How a task says to train and compress: one mapping for every member (Python device, emulated board)."""
    training = TrainConfig(
        epochs=task.epochs,
        batch_size=task.batch_size,
        learning_rate=task.learning_rate,
        prox_mu=task.prox_mu,
        seed=seed,
    )
    return training, CompressionConfig(density=task.density, value_coding=ValueCoding(task.value_coding), seed=seed)


def held_out_metrics(backend: Backend, model: bytes, graph: Graph, held_out: Dataset) -> dict[str, float]:
    """The metrics an update reports: the base model's int8 accuracy and loss on the local held-out share."""
    if len(held_out) == 0:
        return {}
    x = quantize_input(graph, held_out.x)
    scores = int8_metrics(backend, model, graph, x, model_labels(graph, held_out.y, held_out.classes))
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
