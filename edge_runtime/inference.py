"""The trained model in use: raw samples in, class names and probabilities out, on any installed interpreter.

A model tinyfed writes carries its input normalisation and class names
(``edge_runtime.model.info``), so using it needs nothing but the file::

    from edge_runtime.inference import Predictor

    predictor = Predictor("model.tflite")          # the first installed backend; or backend="micro", ...
    predictor.classes                               # ['WALKING', ..., 'LAYING']
    labels = predictor.predict(windows)             # [N] class names, windows as raw floats [N, 128, 9]
    probs = predictor.predict_proba(windows)        # [N, classes] float32, rows sum to about 1

Samples are raw readings, exactly as the device's data file holds them:
the predictor normalises them with the model's stored mean and standard
deviation and quantises them to the model's int8 input, as training did.
One sample (without the batch axis, in any layout of the right size: a
window [128, 9] or its flat row of 1,152 values) or a batch [N, ...]; a
flat row is reshaped to the model's input in C order (a CSV row of a
window holds it step by step). A sample of
the wrong size raises :class:`~edge_runtime.data.errors.ShapeError`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .model.backends import default_backend, get_backend
from .model.backends.base import Backend
from .model.errors import ModelError
from .model.graph import model_version
from .model.info import ModelInfo, quantize_input
from .model.reader import read_graph


def read_model(path: str | Path) -> bytes:
    """A model file's bytes; a missing or unreadable file is a ModelError naming it."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise ModelError(f"{path}: no such model file") from exc
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the model file: {exc.strerror or exc}") from exc


class Predictor:
    """One loaded model; ``predict`` and ``predict_proba`` take raw samples."""

    def __init__(self, model: str | Path | bytes, backend: str | Backend = "auto") -> None:
        self.source = "<bytes>" if isinstance(model, bytes) else str(model)
        self.model = model if isinstance(model, bytes) else read_model(model)
        self.graph = read_graph(self.model)
        self.graph.check_int8()
        self.version = model_version(self.model)
        self.info = ModelInfo.from_graph(self.graph)
        if isinstance(backend, Backend):
            self.backend = backend
        else:
            self.backend = default_backend() if backend == "auto" else get_backend(backend)
        self.session = self.backend.load(self.model)
        out = self.graph.tensor(self.graph.outputs[0])
        self._out_quant = out.require_int8()
        outputs = int(np.prod(out.shape[1:]))
        self.classes: list[str] = list(self.info.classes) or [str(i) for i in range(outputs)]
        if len(self.classes) != outputs:
            raise ModelError(f"{self.source}: names {len(self.classes)} classes for {outputs} outputs")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample's shape, without the batch axis: ``(64,)`` for the digits MLP, ``(128, 9)`` for HAR."""
        return tuple(int(v) for v in self.graph.tensor(self.graph.inputs[0]).shape[1:])

    def _batch(self, x: np.ndarray) -> np.ndarray:
        """A batch: ``x`` itself, or ``x`` as one sample when it holds one sample's values in any layout."""
        x = np.asarray(x, np.float32)
        size = int(np.prod(self.input_shape))
        if x.size == size and (x.ndim == 1 or int(np.prod(x.shape[1:])) != size):
            return x.reshape((1, *self.input_shape))
        return x

    def predict_proba(self, x: np.ndarray, where: str = "samples") -> np.ndarray:
        """Class probabilities [N, classes] (the int8 softmax, dequantised); ``where`` names x in errors."""
        batch = quantize_input(self.graph, self._batch(x), where)
        scores = self.session.run_batch(batch)[0].reshape(len(batch), -1)
        q = self._out_quant
        return ((scores.astype(np.float32) - int(q.zero_point[0])) * float(q.scale[0])).astype(np.float32)

    def predict_index(self, x: np.ndarray, where: str = "samples") -> np.ndarray:
        """The most probable class of each sample, as its index in :attr:`classes`."""
        return self.predict_proba(x, where).argmax(axis=1)

    def predict(self, x: np.ndarray, where: str = "samples") -> np.ndarray:
        """The most probable class of each sample, by name: an array of [N] strings."""
        return np.array(self.classes, dtype=str)[self.predict_index(x, where)]
