"""Model metadata tinyfed keeps inside the .tflite (a ``tinyfed`` metadata buffer, JSON).

A device must feed a model exactly the input the model was built for. The
per-feature normalisation and the class names travel inside the model file,
so a model version and its preprocessing can never drift apart.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from ..data.errors import LabelError, ShapeError
from .errors import ModelError
from .graph import Graph
from .quant import quantize

METADATA_KEY = "tinyfed"


@dataclass
class ModelInfo:
    architecture: str = "custom"
    input_mean: list[float] = field(default_factory=list)
    input_std: list[float] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    dataset: str = ""

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_graph(cls, graph: Graph) -> ModelInfo:
        blob = graph.metadata.get(METADATA_KEY)
        if blob is None:
            return cls()
        try:
            data = json.loads(blob)
            return cls(**data)
        except (ValueError, TypeError) as exc:
            raise ModelError(f"metadata {METADATA_KEY!r} is not valid tinyfed JSON: {exc}") from exc

    def attach(self, graph: Graph) -> None:
        graph.metadata[METADATA_KEY] = self.to_bytes()


def normalise(info: ModelInfo, x: np.ndarray, where: str = "data") -> np.ndarray:
    """Apply the model's per-feature (last axis) normalisation; identity when it has none."""
    if not info.input_mean:
        return x.astype(np.float32)
    mean = np.asarray(info.input_mean, np.float32)
    std = np.asarray(info.input_std, np.float32)
    if mean.shape[0] != x.shape[-1]:
        raise ShapeError(
            f"{where}: samples end in {x.shape[-1]} values (shape {list(x.shape[1:])}), "
            f"the model normalises {mean.shape[0]} features (channels)"
        )
    return ((x - mean) / std).astype(np.float32)


def quantize_input(graph: Graph, x: np.ndarray, where: str = "data") -> np.ndarray:
    """Raw float samples [N, ...] -> the int8 model input, via normalisation and input quantisation.

    Samples of the right size in another layout (a flat CSV row for a
    [steps, channels] window) are reshaped in C order; ``where`` names the
    file in the ShapeError raised for samples that do not fit.
    """
    info = ModelInfo.from_graph(graph)
    t = graph.tensor(graph.inputs[0])
    q = t.require_int8()
    if x.ndim < 2 or x.shape[1:] != t.shape[1:]:
        size = int(np.prod(t.shape[1:]))
        got = int(np.prod(x.shape[1:])) if x.ndim >= 2 else 1
        if got != size:
            raise ShapeError(
                f"{where}: samples of {got} values (shape {list(x.shape[1:])}), the model's input "
                f"{t.name!r} takes {size} (shape {list(t.shape[1:])})",
                t.name,
                t.shape,
                (-1, *x.shape[1:]),
            )
        x = x.reshape((x.shape[0], *t.shape[1:]))
    z = normalise(info, x, where)
    return quantize(z, float(q.scale[0]), int(q.zero_point[0]))


def model_labels(graph: Graph, y: np.ndarray, classes: list[str], where: str = "local labels") -> np.ndarray:
    """Local labels (indices into ``classes``) as the model's class indices, matched by class name.

    A device's own file may hold only some classes, and a loader numbers the
    ones it sees from 0; training on those numbers would teach the model
    wrong classes. Models without class names take labels as they are.
    ``where`` names the file and column in the LabelError raised for labels
    the model does not know.
    """
    names = ModelInfo.from_graph(graph).classes
    if not names:
        return y
    index = {name: i for i, name in enumerate(names)}
    missing = sorted({classes[c] for c in np.unique(y)} - set(index))
    if missing:
        raise LabelError(f"{where}: labels {missing[:5]} are not classes of the model (it knows {names[:10]})")
    lookup = np.array([index.get(name, -1) for name in classes], np.int64)
    return lookup[y]
