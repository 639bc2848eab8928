"""Backend on ``tflite-runtime`` (2.13/2.14): the classic Raspberry Pi wheel; needs numpy<2."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import BackendUnavailableError, CorruptModelError
from .base import Backend, Session


class TfliteSession(Session):
    def __init__(self, interpreter: Any, backend: str) -> None:
        self._it = interpreter
        self.backend = backend
        self._inputs = interpreter.get_input_details()
        self._outputs = interpreter.get_output_details()

    def input_shape(self, index: int = 0) -> tuple[int, ...]:
        return tuple(int(d) for d in self._inputs[index]["shape"])

    def input_dtype(self, index: int = 0) -> np.dtype[Any]:
        return np.dtype(self._inputs[index]["dtype"])

    def num_outputs(self) -> int:
        return len(self._outputs)

    def set_input(self, x: np.ndarray, index: int = 0) -> None:
        self._it.set_tensor(self._inputs[index]["index"], self.check_input(x, index))

    def invoke(self) -> None:
        self._it.invoke()

    def output(self, index: int = 0) -> np.ndarray:
        return np.asarray(self._it.get_tensor(self._outputs[index]["index"]))


def open_interpreter(factory: Any, model: bytes, backend: str, **kwargs: Any) -> TfliteSession:
    """Shared by the two TFLite (non-Micro) wheels, whose Python APIs are the same."""
    try:
        interpreter = factory(model_content=bytes(model), num_threads=1, **kwargs)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise CorruptModelError(f"{backend} refused the model: {exc}") from exc
    return TfliteSession(interpreter, backend)


class TfliteRuntimeBackend(Backend):
    name = "tflite-runtime"

    def __init__(self) -> None:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError as exc:
            raise BackendUnavailableError(
                "tflite-runtime is not installed: pip install 'tinyfed[tflite-runtime]'"
            ) from exc
        if int(np.__version__.split(".")[0]) >= 2:
            raise BackendUnavailableError(
                f"tflite-runtime is built against numpy 1.x; numpy {np.__version__} is installed "
                "(use an environment with numpy<2, or the 'litert' backend)"
            )
        self._factory = Interpreter

    def load(self, model: bytes) -> Session:
        return open_interpreter(self._factory, model, self.name)
