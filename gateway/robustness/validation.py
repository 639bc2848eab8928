"""The loss change an update causes on a small validation set the operator keeps on the hub (optional).

The gateway runs no interpreter (DESIGN.md section 1), so this works only where the master model's trainable
tail is the whole model (``[gateway] trainable_layers = 0``, the default): the tail's float layers run in numpy
on the dequantised int8 inputs, as on a device. Cost: one forward pass over the validation set per update at
each close (O(n x validation x model)), and the set itself in memory: keep it small (a few hundred samples).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_runtime.config import ConfigError, setting
from edge_runtime.model.info import quantize_input
from edge_runtime.model.quant import dequantize

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
        if self.master.cut != 0:
            raise ConfigError(f"{where}: the loss-change score needs [gateway] trainable_layers = 0 (the gateway "
                              "runs no interpreter for a frozen backbone)")  # fmt: skip
        graph = self.master.graph
        q = graph.tensor(graph.inputs[0]).require_int8()
        self.features = dequantize(quantize_input(graph, x, where), float(q.scale[0]), int(q.zero_point[0]))
        self.y = y

    def loss(self, weights: Weights) -> float:
        self.master.set_weights(weights)
        probs = self.master.tail.forward(self.features, training=False)
        picked = probs[np.arange(len(self.y)), np.clip(self.y, 0, probs.shape[1] - 1)]
        return float(-np.log(np.maximum(picked, 1e-7)).mean())

    def changes(self, base: Weights, updates: list[ClientDelta]) -> list[float]:
        """Per update, loss(base + its delta) - loss(base), in the order given."""
        before = self.loss(base)
        out = []
        for u in updates:
            moved = {t: w.copy() for t, w in base.items()}
            for t, (idx, values) in u.entries.items():
                if t in moved:
                    moved[t][idx] += values
            out.append(self.loss(moved) - before)
        return out
