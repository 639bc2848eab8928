"""Score a model the way a device runs it: int8, in a real interpreter."""

from __future__ import annotations

import numpy as np

from ..model.backends.base import Backend


def int8_predictions(backend: Backend, model: bytes, x_int8: np.ndarray) -> np.ndarray:
    session = backend.load(model)
    return session.run_batch(x_int8)[0].reshape(len(x_int8), -1)


def accuracy(pred_scores: np.ndarray, y: np.ndarray) -> float:
    return float((pred_scores.argmax(axis=1) == y).mean()) if len(y) else float("nan")
