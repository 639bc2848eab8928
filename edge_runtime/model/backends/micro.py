"""Backend on ``tflite-micro``: the microcontroller interpreter, with a fixed tensor arena.

An arena even a few bytes too small makes TFLite Micro's Python wrapper
segfault rather than raise. So a model is first opened with a generous
arena, the recording allocator's report is read, and the model is reopened
with the measured size plus a margin; a caller that fixes the arena (an
emulated board with a RAM budget) gets :class:`ArenaTooSmallError` before
anything runs.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError, CorruptModelError, ModelError
from ..graph import Graph
from ..reader import read_graph
from .base import Backend, Session


def arena_with_margin(recorded: int) -> int:
    """Arena to configure for a model whose recording allocator reported ``recorded`` bytes.

    The report leaves out alignment slack and some prepare-time allocations:
    on the digits MLP 2,640 reported bytes failed with +256 and worked with
    +512. A 1 KiB + 1/8 margin covers every model tinyfed builds, and a board
    that cannot afford it learns so from ArenaTooSmallError, not a crash.
    """
    return recorded + 1024 + recorded // 8


_REPORT_PREFIX = b"[RecordingMicroAllocator]"
_TOTAL = re.compile(rb"Arena allocation total (\d+) bytes")


class ArenaTooSmallError(ModelError):
    """The model needs more tensor arena than the board offers."""

    def __init__(self, needed: int, offered: int) -> None:
        super().__init__(f"model needs a {needed}-byte tensor arena, {offered} bytes offered")
        self.needed = needed
        self.offered = offered


# File descriptors 1 and 2 belong to the whole process: two threads capturing
# at once (two emulated boards behind one bridge) would each save the other's
# temporary file as "the original" and leave the process writing into a
# deleted file. One capture at a time.
_NATIVE_OUTPUT = threading.Lock()


@contextlib.contextmanager
def _captured_native_output() -> Iterator[list[bytes]]:
    """Collect what C code writes to stdout/stderr (TFLM reports allocations there)."""
    sink: list[bytes] = []
    sys.stdout.flush()
    sys.stderr.flush()
    with _NATIVE_OUTPUT, tempfile.TemporaryFile() as tmp:
        saved = os.dup(1), os.dup(2)
        os.dup2(tmp.fileno(), 1)
        os.dup2(tmp.fileno(), 2)
        try:
            yield sink
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            tmp.seek(0)
            sink.append(tmp.read())


def _pass_on_foreign_lines(captured: bytes) -> None:
    """Write back to stderr what other code printed while the report was captured, so no log line is lost."""
    foreign = [line for line in captured.splitlines(keepends=True) if not line.startswith(_REPORT_PREFIX)]
    if foreign:
        os.write(2, b"".join(foreign))


def _generous_arena_for(graph: Graph, model_size: int) -> int:
    activations = sum(int(np.prod(t.shape)) * t.dtype.itemsize for t in graph.tensors if t.data is None and t.shape)
    return 32 * 1024 + 4 * activations + model_size


class MicroSession(Session):
    backend = "micro"

    def __init__(self, interpreter: Any, arena_used: int, arena_size: int, outputs: int) -> None:
        self._it = interpreter
        self._outputs = outputs
        self._arena_used = arena_used
        self.arena_size = arena_size
        # Input details are asked for on every set_input; TFLM builds a fresh dict each call, so keep them.
        self._inputs: dict[int, tuple[tuple[int, ...], np.dtype[Any]]] = {}

    @property
    def arena_bytes(self) -> int:
        """The arena configured for this model (recorded use plus margin): what a board must hold."""
        return self.arena_size

    @property
    def arena_recorded(self) -> int:
        """What TFLM's recording allocator reported the model allocating."""
        return self._arena_used

    def _input(self, index: int) -> tuple[tuple[int, ...], np.dtype[Any]]:
        if index not in self._inputs:
            details = self._it.get_input_details(index)
            self._inputs[index] = (tuple(int(d) for d in details["shape"]), np.dtype(details["dtype"]))
        return self._inputs[index]

    def input_shape(self, index: int = 0) -> tuple[int, ...]:
        return self._input(index)[0]

    def input_dtype(self, index: int = 0) -> np.dtype[Any]:
        return self._input(index)[1]

    def num_outputs(self) -> int:
        return self._outputs

    def set_input(self, x: np.ndarray, index: int = 0) -> None:
        self._it.set_input(self.check_input(x, index), index)

    def invoke(self) -> None:
        self._it.invoke()

    def output(self, index: int = 0) -> np.ndarray:
        return np.asarray(self._it.get_output(index))


class MicroBackend(Backend):
    name = "micro"

    def __init__(self, arena_size: int | None = None) -> None:
        """``arena_size`` fixes the arena (a board's budget); None sizes it to the model."""
        try:
            from tflite_micro.python.tflite_micro import runtime
        except ImportError as exc:
            raise BackendUnavailableError("tflite-micro is not installed: pip install 'tinyfed[micro]'") from exc
        self._runtime = runtime
        self.arena_size = arena_size

    def measure_arena(self, model: bytes, graph: Graph | None = None) -> int:
        """Bytes of arena the model allocates, read from TFLM's recording allocator."""
        graph = graph if graph is not None else read_graph(model)
        it = self._open(model, _generous_arena_for(graph, len(model)))
        with _captured_native_output() as out:
            it.print_allocations()
        captured = b"".join(out)
        _pass_on_foreign_lines(captured)
        match = _TOTAL.search(captured)
        if match is None:
            raise CorruptModelError("TFLite Micro did not report its arena allocation")
        return int(match.group(1))

    def _open(self, model: bytes, arena: int) -> Any:
        try:
            return self._runtime.Interpreter.from_bytes(bytes(model), arena_size=arena)
        except (RuntimeError, ValueError) as exc:
            raise CorruptModelError(f"TFLite Micro refused the model: {exc}") from exc

    def load(self, model: bytes) -> Session:
        graph = read_graph(model)
        needed = self.measure_arena(model, graph)
        wanted = arena_with_margin(needed)
        arena = wanted if self.arena_size is None else self.arena_size
        if arena < wanted:
            raise ArenaTooSmallError(wanted, arena)
        return MicroSession(self._open(model, arena), needed, arena, len(graph.outputs))
