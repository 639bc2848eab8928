"""Score a model the way a device runs it: int8, in a real interpreter."""

from __future__ import annotations

import numpy as np

from ..model.backends.base import Backend
from ..model.graph import Graph


def int8_predictions(backend: Backend, model: bytes, x_int8: np.ndarray) -> np.ndarray:
    session = backend.load(model)
    return session.run_batch(x_int8)[0].reshape(len(x_int8), -1)


def accuracy(pred_scores: np.ndarray, y: np.ndarray) -> float:
    return float((pred_scores.argmax(axis=1) == y).mean()) if len(y) else float("nan")


def int8_metrics(backend: Backend, model: bytes, graph: Graph, x_int8: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Accuracy and mean cross-entropy of the int8 model, from its dequantised output probabilities.

    The loss floors probabilities at half an output step: an int8 softmax
    rounds small probabilities to exactly zero, and log(0) would make one
    sample dominate the mean.
    """
    if len(y) == 0:
        return {"accuracy": float("nan"), "loss": float("nan")}
    q = graph.tensor(graph.outputs[0]).require_int8()
    scale, zero = float(q.scale[0]), int(q.zero_point[0])
    scores = int8_predictions(backend, model, x_int8)
    probs = (scores.astype(np.float32) - zero) * scale
    picked = np.maximum(probs[np.arange(len(y)), y], scale / 2)
    return {"accuracy": accuracy(scores, y), "loss": float(-np.log(picked).mean())}
