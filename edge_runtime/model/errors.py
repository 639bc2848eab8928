"""Typed errors for model handling.

Every error names the tensor, operator or file position at fault, so that an
operator reading a device log can tell *which* part of *which* model was bad
without a debugger.
"""

from __future__ import annotations

from ..errors import TinyfedError


class ModelError(TinyfedError):
    """Base class: anything wrong with a model file or its use."""


class CorruptModelError(ModelError):
    """The bytes are not a readable .tflite flatbuffer (truncated, wrong identifier, bad offsets)."""


class NotInt8Error(ModelError):
    """A tensor that must be int8-quantised is float or unquantised."""

    def __init__(self, tensor: str, detail: str) -> None:
        super().__init__(f"tensor {tensor!r}: {detail}")
        self.tensor = tensor


class UnsupportedOpError(ModelError):
    """An operator cannot be written, executed by the reference, or differentiated."""

    def __init__(self, op: str, index: int, detail: str) -> None:
        super().__init__(f"operator #{index} {op}: {detail}")
        self.op = op
        self.index = index


class ShapeMismatchError(ModelError):
    """An array does not fit the tensor it is meant for."""

    def __init__(self, tensor: str, expected: tuple[int, ...], got: tuple[int, ...]) -> None:
        super().__init__(f"tensor {tensor!r}: expected shape {expected}, got {got}")
        self.tensor = tensor
        self.expected = expected
        self.got = got


class BackendUnavailableError(ModelError):
    """The interpreter package for a backend is not installed or cannot load here."""
