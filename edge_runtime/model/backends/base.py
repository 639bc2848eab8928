"""The one interface every interpreter backend implements.

A backend turns model bytes into a :class:`Session`. Sessions run one sample
at a time, as a device does; :meth:`Session.run_batch` loops for callers that
hold many samples. The cut activation is read through an extra model output
added by a structural edit (see :func:`with_taps`), never through
``experimental_preserve_all_tensors``, which returns wrong data on some
runtimes and bloats the TFLM arena.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np

from ..errors import ShapeMismatchError
from ..graph import Graph
from ..writer import write_graph


class Session(abc.ABC):
    """A loaded model: set input, invoke, read outputs."""

    backend: str = "?"

    @abc.abstractmethod
    def input_shape(self, index: int = 0) -> tuple[int, ...]: ...

    @abc.abstractmethod
    def input_dtype(self, index: int = 0) -> np.dtype[Any]: ...

    @abc.abstractmethod
    def num_outputs(self) -> int: ...

    @abc.abstractmethod
    def set_input(self, x: np.ndarray, index: int = 0) -> None: ...

    @abc.abstractmethod
    def invoke(self) -> None: ...

    @abc.abstractmethod
    def output(self, index: int = 0) -> np.ndarray: ...

    @property
    def arena_bytes(self) -> int | None:
        """Bytes of tensor arena the interpreter uses, where it reports one (TFLite Micro)."""
        return None

    def check_input(self, x: np.ndarray, index: int = 0) -> np.ndarray:
        """``x`` in the input's shape and dtype; a shape that does not fit raises ShapeMismatchError."""
        shape = self.input_shape(index)
        dtype = self.input_dtype(index)
        if tuple(x.shape) != shape:
            if x.size == int(np.prod(shape)) and tuple(x.shape) == shape[1:]:
                return x.reshape(shape).astype(dtype)
            raise ShapeMismatchError(f"input {index}", shape, tuple(x.shape))
        return x.astype(dtype, copy=False)

    def run_batch(self, x: np.ndarray) -> list[np.ndarray]:
        """Run every sample of ``x`` (leading batch axis); returns each output stacked."""
        per_output: list[list[np.ndarray]] = [[] for _ in range(self.num_outputs())]
        for sample in x:
            self.set_input(sample[None, ...])
            self.invoke()
            for k in range(len(per_output)):
                per_output[k].append(self.output(k)[0].copy())
        return [np.stack(v) for v in per_output]


class Backend(abc.ABC):
    name: str = "?"

    @abc.abstractmethod
    def load(self, model: bytes) -> Session:
        """Load model bytes (any int8 .tflite); raises a ModelError subclass on bad input."""

    def load_graph(self, graph: Graph, taps: tuple[int, ...] = ()) -> Session:
        """Load ``graph``, exposing the tensors ``taps`` as extra outputs after the real ones."""
        return self.load(write_graph(with_taps(graph, taps)))


def with_taps(graph: Graph, taps: tuple[int, ...]) -> Graph:
    """A copy of ``graph`` whose outputs also include ``taps`` (a structural edit, bytes unchanged otherwise)."""
    if not taps:
        return graph
    edited = graph.copy()
    edited.outputs = [*graph.outputs, *[t for t in taps if t not in graph.outputs]]
    return edited
