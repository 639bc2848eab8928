"""What a small validation set the operator keeps on the hub (optional) says about each update.

Two scores: the loss change the update causes on the set, and its *dormant share*: the share of its squared
mass on weights that the set's clean data never drives (a weight whose input, a feature or a hidden unit, is
exactly zero on every validation sample under the round's base model). Clean training data moves such a weight
only where a device's data activates what the hub's never does; a backdoor trigger written into inputs that
clean data leaves at zero (an unused pixel, a silent channel) moves it first: the attacker's update puts 9-13%
of its mass there in the first round, honest non-IID devices at most 3% (digits, docs/robustness.md).

The tail's float layers run in numpy on the dequantised int8 inputs of the tail, as on a device. With a frozen
backbone (``[gateway] trainable_layers`` > 0, HAR's case) those inputs are the backbone's output at the cut: the
gateway runs no interpreter (DESIGN.md section 1), but its numpy int8 executor (edge_runtime/model/reference.py,
the conformance suite's yardstick, within 1 LSB of every interpreter) runs the backbone over the set once, at
start (it is frozen: its output on the set never changes). Cost of that: one int8 pass over the set, and the
features kept (set x cut width floats; 300 x 64 for HAR). Cost per close: one forward pass of the tail over
the set per update (O(n x validation x tail)), and the set itself in memory: keep it small (a few hundred).
The dormant share costs one more forward pass per close (the base model's, which marks the dormant weights: a
boolean per trainable weight, kept until the next close) and O(nnz) per update.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_runtime.config import ConfigError, setting
from edge_runtime.model.errors import ModelError
from edge_runtime.model.info import quantize_input
from edge_runtime.model.quant import dequantize
from edge_runtime.model.reference import run_reference
from edge_runtime.train.layers import Conv2D, FullyConnected
from edge_runtime.train.split import backbone_graph

from ..config import GatewayConfig
from ..master import MasterModel
from ..strategies.base import ClientDelta, Weights


def load_validation(path: Path, where: str) -> tuple[np.ndarray, np.ndarray]:
    """An .npz with arrays ``x`` (raw samples, as the devices' data) and ``y`` (integer labels)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if "x" not in data.files or "y" not in data.files:
                raise ConfigError(f"{where} {path}: needs arrays 'x' and 'y', has {', '.join(data.files) or 'none'}")
            x, y = np.asarray(data["x"], np.float32), np.asarray(data["y"])
    except (OSError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{where} {path}: not a readable .npz ({exc})") from exc
    if len(x) != len(y) or len(y) == 0 or y.dtype.kind not in "iu":
        raise ConfigError(f"{where} {path}: {len(x)} samples and {len(y)} integer labels needed, alike and > 0")
    return x, y.astype(np.int64)


def from_config(config: GatewayConfig, model: bytes) -> ValidationLoss | None:
    """The scorer ``[robustness] validation`` asks for, or None."""
    path = config.robustness.validation
    if not path:
        return None
    where = setting(config.source, "robustness", "validation")
    x, y = load_validation(Path(path), where)
    return ValidationLoss(model, config.gateway.trainable_layers, x, y, where)


class ValidationLoss:
    def __init__(self, model: bytes, trainable_layers: int, x: np.ndarray, y: np.ndarray, where: str) -> None:
        self.master = MasterModel(model, trainable_layers)
        graph, cut = self.master.graph, self.master.cut
        x_int8 = quantize_input(graph, x, where)
        if cut > 0:  # the frozen backbone, once: its output at the cut is the tail's input for every round
            try:
                x_int8 = run_reference(backbone_graph(graph, cut), x_int8)[0]
            except ModelError as exc:
                raise ConfigError(f"{where}: the gateway's int8 executor cannot run the backbone ({exc})") from exc
        q = graph.tensor(graph.operators[cut].inputs[0]).require_int8()
        self.features = dequantize(x_int8, float(q.scale[0]), int(q.zero_point[0]))
        self.y = y

    def loss(self, weights: Weights) -> float:
        self.master.set_weights(weights)
        probs = self.master.tail.forward(self.features, training=False)
        picked = probs[np.arange(len(self.y)), np.clip(self.y, 0, probs.shape[1] - 1)]
        return float(-np.log(np.maximum(picked, 1e-7)).mean())

    def changes(self, base: Weights, updates: list[ClientDelta], step: float = 1.0) -> list[float]:
        """Per update, loss(base + step x its delta) - loss(base), in the order given. A step below 1 measures
        where the update points rather than how far one device's whole local step overshoots: the aggregate
        moves by a fraction of each update, and a whole step of a device with few classes raises the loss on
        the classes it lacks (honest non-IID devices were flagged so at step 1, docs/robustness.md)."""
        before = self.loss(base)
        out = []
        for u in updates:
            moved = {t: w.copy() for t, w in base.items()}
            for t, (idx, values) in u.entries.items():
                if t in moved:
                    moved[t][idx] += step * values
            out.append(self.loss(moved) - before)
        return out

    def dormant(self, base: Weights) -> dict[int, np.ndarray]:
        """Per weight tensor of a fully connected or convolution layer, a boolean per coordinate: True where the
        weight's input is zero on every validation sample under ``base`` (one forward pass). A depthwise
        convolution's weights and every bias are never dormant."""
        self.master.set_weights(base)
        self.master.tail.forward(self.features, training=False)
        out = {}
        for t, (layer, kind) in self.master.slots.items():
            if kind != "weight" or not isinstance(layer, FullyConnected | Conv2D):
                continue
            inputs = layer.cache["x"] if isinstance(layer, FullyConnected) else layer.cache["cols"]
            silent = ~np.any(inputs != 0, axis=0)  # per column of the weight's [out, inner] matrix
            out[t] = np.tile(silent, layer.weight.shape[0])
        return out


def dormant_shares(masks: dict[int, np.ndarray], updates: list[ClientDelta]) -> list[float]:
    """Per update, the share of its squared mass on dormant coordinates (0 for an empty update): O(its nnz)."""
    out = []
    for u in updates:
        total = 0.0
        dormant = 0.0
        for t, (idx, values) in u.entries.items():
            sq = values * values
            total += float(sq.sum())
            if t in masks:
                dormant += float(sq[masks[t][idx]].sum())
        out.append(dormant / total if total > 0 else 0.0)
    return out
