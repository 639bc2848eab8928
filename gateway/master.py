"""The float master weights of the trainable tail, and the int8 .tflite versions made from them.

Devices train against the int8 model, so their deltas are relative to its
dequantised weights; the gateway adds the aggregate to float weights it
keeps itself. Re-quantising the master each round (rather than adding
deltas to int8 weights) means rounding error never accumulates across
rounds. Activation ranges are recalibrated from the median of the ranges
devices report, so a layer whose outputs grow does not saturate. All of it
is numpy: the gateway never needs an interpreter.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime import wire
from edge_runtime.model.graph import Graph
from edge_runtime.model.reader import read_graph
from edge_runtime.model.writer import write_graph
from edge_runtime.train.fakequant import RangeStats
from edge_runtime.train.layers import Weighted
from edge_runtime.train.tail import Tail
from edge_runtime.train.trainer import cut_for_last_layers

from .claims import limited_range
from .strategies.base import Weights


class MasterModel:
    def __init__(self, model: bytes, trainable_layers: int) -> None:
        self.graph: Graph = read_graph(model)
        self.graph.check_int8()
        self.cut = cut_for_last_layers(self.graph, trainable_layers)
        self.tail = Tail.from_graph(self.graph, self.cut)
        # tensor index -> (layer, "weight" | "bias"): what the manifest lets devices update
        self.slots: dict[int, tuple[Weighted, str]] = {}
        self.output_names: dict[str, Weighted] = {}
        self.output_tensors: dict[int, Weighted] = {}
        for i, layer in self.tail.trainable():
            op = self.graph.operators[self.cut + i]
            self.slots[op.inputs[1]] = (layer, "weight")
            self.slots[op.inputs[2]] = (layer, "bias")
            self.output_names[self.graph.tensor(op.outputs[0]).name] = layer
            self.output_tensors[op.outputs[0]] = layer
        # Every key a device may name a layer's output by (its tensor index or name) -> the index.
        self.range_keys: dict[int | str, int] = {i: i for i in self.output_tensors}
        self.range_keys |= {self.graph.tensor(i).name: i for i in self.output_tensors}
        # The largest factor by which the last adopted reports moved a layer's range (its width, either way):
        # ranges still moving far are asked for again in the next round (publisher.py ``ranges_due``).
        self.ranges_moved = 1.0
        # Each layer's weight norm when ranges were last taken (``range_drift``); none yet: the model's own.
        self.norms_at_ranges = self.weight_norms()

    @property
    def trainable(self) -> list[wire.TrainableTensor]:
        return [wire.TrainableTensor(t, tuple(getattr(layer, kind).shape)) for t, (layer, kind) in self.slots.items()]

    @property
    def sizes(self) -> dict[int, int]:
        return {t: int(getattr(layer, kind).size) for t, (layer, kind) in self.slots.items()}

    def weights(self) -> Weights:
        return {t: getattr(layer, kind).astype(np.float64).reshape(-1) for t, (layer, kind) in self.slots.items()}

    def set_weights(self, weights: Weights) -> None:
        for t, value in weights.items():
            layer, kind = self.slots[t]
            current = getattr(layer, kind)
            if not np.isfinite(value).all():
                raise ValueError(f"master weights of tensor {t} are not finite; refusing to publish them")
            setattr(layer, kind, np.asarray(value, np.float32).reshape(current.shape))

    def set_activation_ranges(
        self, ranges: Mapping[int | str, tuple[float, float]], max_growth: float | None = None
    ) -> int:
        """Adopt the devices' ranges (by output tensor index or name), each side moved by at most a factor
        ``max_growth`` from the current one (None: as given, for ranges this gateway saved itself); returns how
        many layers took one. Records in ``ranges_moved`` how far the widest move went."""
        taken = 0
        before = {id(layer): layer.stats for layer in self.output_names.values()}  # moves are measured from here
        for key, (lo, hi) in ranges.items():
            layer = self.output_tensors.get(key) if isinstance(key, int) else self.output_names.get(key)
            if layer is None or not np.isfinite([lo, hi]).all() or hi <= lo:
                continue
            then = before[id(layer)]  # a layer named twice is bounded from its range before, not its first move
            if max_growth is not None and then is not None:
                lo, hi = limited_range((lo, hi), (then.ema_min, then.ema_max), max_growth)
            layer.stats = RangeStats(ema_min=min(lo, 0.0), ema_max=max(hi, 0.0))
            taken += 1
        self.ranges_moved = 1.0
        for layer in self.output_names.values():
            old, new = before[id(layer)], layer.stats
            if new is None:
                continue
            if old is None:
                self.ranges_moved = math.inf
                continue
            width_then, width_now = max(old.ema_max - old.ema_min, 1e-12), max(new.ema_max - new.ema_min, 1e-12)
            self.ranges_moved = max(self.ranges_moved, width_now / width_then, width_then / width_now)
        if taken and max_growth is not None:
            self.norms_at_ranges = self.weight_norms()
        return taken

    def weight_norms(self) -> dict[str, float]:
        return {name: float(np.linalg.norm(layer.weight)) for name, layer in self.output_names.items()}

    def range_drift(self) -> float:
        """How far the weights alone may have moved the layers' output ranges since ranges were last taken:
        the largest, over layers in order, of the product of weight-norm ratios up to it (an output scales
        with every weight before it), either way. The gateway sees weights every round but activations
        only in reports: HAR's ranges settled by round 3, then its weights grew, the ranges went stale, and
        accuracy fell from 0.78 to 0.44 until the next report (round 11) brought it to 0.82."""
        growth, drift = 1.0, 1.0
        for name, norm in self.weight_norms().items():
            then = self.norms_at_ranges.get(name, 0.0)
            if then > 0 and norm > 0:
                growth *= norm / then
                drift = max(drift, growth, 1 / growth)
        return drift

    def export(self) -> bytes:
        graph = self.graph.copy()
        self.tail.export_into(graph, self.cut)
        return write_graph(graph)

    # -- persistence: exact float weights and ranges per version ---------------------------------
    def save(self, path: Path) -> None:
        buf = io.BytesIO()
        ranges = {
            f"range.{name}": np.array([layer.stats.ema_min, layer.stats.ema_max])
            for name, layer in self.output_names.items()
            if layer.stats is not None
        }
        arrays: dict[str, Any] = {f"w.{t}": w for t, w in self.weights().items()} | ranges
        arrays["ranges_moved"] = np.array(self.ranges_moved)
        arrays |= {f"norm_at_ranges.{name}": np.array(norm) for name, norm in self.norms_at_ranges.items()}
        np.savez(buf, **arrays)
        from edge_runtime.storage import atomic_write

        atomic_write(path, buf.getvalue())

    def load(self, path: Path) -> None:
        with np.load(path, allow_pickle=False) as data:
            self.set_weights({int(k[2:]): data[k] for k in data.files if k.startswith("w.")})
            self.set_activation_ranges(
                {k[6:]: (float(data[k][0]), float(data[k][1])) for k in data.files if k.startswith("range.")}
            )
            self.ranges_moved = float(data["ranges_moved"]) if "ranges_moved" in data.files else 1.0
            kept = {k[15:]: float(data[k]) for k in data.files if k.startswith("norm_at_ranges.")}
            self.norms_at_ranges = kept or self.weight_norms()

    @classmethod
    def from_file(cls, path: Path, trainable_layers: int) -> MasterModel:
        return cls(Path(path).read_bytes(), trainable_layers)
