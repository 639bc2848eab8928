"""Backend on ``ai-edge-litert``, the maintained successor of tflite-runtime (numpy 2).

The default resolver excludes the XNNPACK delegate: with it, int8 outputs
drift by 1-2 LSB from TFLite's reference kernels, which would make a device's
scores disagree with the gateway's and with a microcontroller's.
"""

from __future__ import annotations

from ..errors import BackendUnavailableError
from .base import Backend, Session
from .tflite_runtime import open_interpreter


class LitertBackend(Backend):
    name = "litert"

    def __init__(self, xnnpack: bool = False) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter, OpResolverType
        except ImportError as exc:
            raise BackendUnavailableError("ai-edge-litert is not installed: pip install 'tinyfed[litert]'") from exc
        self._factory = Interpreter
        self._resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES

    def load(self, model: bytes) -> Session:
        return open_interpreter(self._factory, model, self.name, experimental_op_resolver_type=self._resolver)
