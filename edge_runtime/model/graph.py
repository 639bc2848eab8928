"""In-memory form of a single-subgraph int8 TFLite model.

The flatbuffer is the unit of deployment; this form is what tinyfed edits:
plain dataclasses holding numpy arrays, so the trainer, the builder and the
(future) gateway publisher can change weights, quantisation and structure and
hand the result to :mod:`edge_runtime.model.writer`.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ModelError, NotInt8Error, ShapeMismatchError

# TFLite TensorType codes we meet in int8 models.
TENSOR_TYPES: dict[int, np.dtype[Any]] = {
    0: np.dtype(np.float32),
    1: np.dtype(np.float16),
    2: np.dtype(np.int32),
    3: np.dtype(np.uint8),
    4: np.dtype(np.int64),
    6: np.dtype(np.bool_),
    7: np.dtype(np.int16),
    9: np.dtype(np.int8),
}
TYPE_CODES: dict[np.dtype[Any], int] = {v: k for k, v in TENSOR_TYPES.items()}


@dataclass
class Quantization:
    """Affine quantisation: real = scale * (q - zero_point), per tensor or per channel on ``axis``."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int = 0

    @property
    def per_channel(self) -> bool:
        return self.scale.size > 1

    @classmethod
    def single(cls, scale: float, zero_point: int) -> Quantization:
        return cls(np.array([scale], np.float32), np.array([zero_point], np.int64))


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    quant: Quantization | None = None
    data: np.ndarray | None = None  # constant tensors (weights, biases, shapes) only

    @property
    def is_constant(self) -> bool:
        return self.data is not None

    def require_int8(self) -> Quantization:
        """Return the quantisation of an int8 activation tensor, or say why it has none."""
        if self.dtype != np.int8:
            raise NotInt8Error(self.name, f"dtype is {self.dtype}, int8 required")
        if self.quant is None or self.quant.scale.size == 0:
            raise NotInt8Error(self.name, "int8 tensor carries no quantisation parameters")
        return self.quant

    def set_data(self, array: np.ndarray) -> None:
        """Replace constant data, refusing a shape or dtype that does not fit the tensor."""
        if tuple(array.shape) != self.shape:
            raise ShapeMismatchError(self.name, self.shape, tuple(array.shape))
        if array.dtype != self.dtype:
            raise ModelError(f"tensor {self.name!r}: dtype {array.dtype} given, {self.dtype} expected")
        self.data = np.ascontiguousarray(array)


@dataclass
class Operator:
    opcode: str  # BuiltinOperator name, e.g. "FULLY_CONNECTED"
    inputs: list[int]  # tensor indices, -1 for an omitted optional input
    outputs: list[int]
    options: dict[str, Any] = field(default_factory=dict)
    version: int = 1


@dataclass
class Graph:
    """One subgraph plus the model-level metadata tinyfed keeps with it."""

    tensors: list[Tensor]
    operators: list[Operator]
    inputs: list[int]
    outputs: list[int]
    name: str = "main"
    description: str = "tinyfed"
    metadata: dict[str, bytes] = field(default_factory=dict)

    def tensor(self, index: int) -> Tensor:
        if not 0 <= index < len(self.tensors):
            raise ModelError(f"tensor index {index} out of range (model has {len(self.tensors)})")
        return self.tensors[index]

    def add_tensor(self, tensor: Tensor) -> int:
        self.tensors.append(tensor)
        return len(self.tensors) - 1

    def copy(self) -> Graph:
        return copy.deepcopy(self)

    def check_int8(self) -> None:
        """Refuse a float model: every activation must be int8 with quantisation."""
        for index in {*self.inputs, *self.outputs}:
            self.tensor(index).require_int8()
        for op in self.operators:
            for index in op.outputs:
                t = self.tensors[index]
                if not t.is_constant:
                    t.require_int8()


def model_version(model_bytes: bytes) -> str:
    """A model version is the sha256 of its exact bytes: what a device verifies after download."""
    return hashlib.sha256(model_bytes).hexdigest()
