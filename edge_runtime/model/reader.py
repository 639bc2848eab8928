"""Read a .tflite flatbuffer into a :class:`~edge_runtime.model.graph.Graph`.

Input is treated as untrusted: a device may be handed a truncated download or
a wrong file, and must say so rather than crash the interpreter later.
"""

from __future__ import annotations

import struct

import numpy as np
import tflite

from .errors import CorruptModelError, ModelError
from .graph import TENSOR_TYPES, Graph, Operator, Quantization, Tensor
from .schema import OPCODE_NAMES, parse_options

FILE_IDENTIFIER = b"TFL3"


def _check_header(data: bytes) -> None:
    if len(data) < 8:
        raise CorruptModelError(f"model is {len(data)} bytes; a .tflite file has at least 8")
    if data[4:8] != FILE_IDENTIFIER:
        raise CorruptModelError(f"bytes 4..8 are {data[4:8]!r}, not the TFLite identifier {FILE_IDENTIFIER!r}")
    (root,) = struct.unpack_from("<I", data, 0)
    if root + 4 > len(data):
        raise CorruptModelError(f"root table offset {root} lies past the end ({len(data)} bytes)")


def _quantization(t: tflite.Tensor) -> Quantization | None:
    q = t.Quantization()
    if q is None or q.ScaleLength() == 0:
        return None
    scale = q.ScaleAsNumpy().astype(np.float32)
    zp = q.ZeroPointAsNumpy() if q.ZeroPointLength() else np.zeros(scale.size, np.int64)
    return Quantization(scale.copy(), np.asarray(zp, np.int64).copy(), int(q.QuantizedDimension()))


def read_graph(data: bytes | bytearray, subgraph: int = 0) -> Graph:
    """Parse ``data`` (the whole file) into a Graph of subgraph ``subgraph``."""
    raw = bytes(data)
    _check_header(raw)
    try:
        return _read(raw, subgraph)
    except ModelError:
        raise
    except Exception as exc:  # flatbuffer accessors fail with struct/index/value errors
        raise CorruptModelError(f"model flatbuffer unreadable ({type(exc).__name__}: {exc})") from exc


def _buffer_bytes(raw: bytes, model: tflite.Model, index: int) -> bytes | None:
    if index <= 0 or index >= model.BuffersLength():
        return None
    buf = model.Buffers(index)
    if buf.Offset() > 1:  # large-model layout: data appended after the flatbuffer
        start, size = buf.Offset(), buf.Size()
        if start + size > len(raw):
            raise CorruptModelError(f"buffer {index} points past the end of the file")
        return raw[start : start + size]
    if buf.DataLength() == 0:
        return None
    return buf.DataAsNumpy().tobytes()


def _read(raw: bytes, subgraph: int) -> Graph:
    model = tflite.Model.GetRootAsModel(raw, 0)
    if model.SubgraphsLength() <= subgraph:
        raise CorruptModelError(f"model has {model.SubgraphsLength()} subgraphs, #{subgraph} asked")
    sg = model.Subgraphs(subgraph)
    tensors: list[Tensor] = []
    for i in range(sg.TensorsLength()):
        t = sg.Tensors(i)
        name = t.Name().decode("utf-8", "replace") if t.Name() else f"tensor_{i}"
        code = t.Type()
        if code not in TENSOR_TYPES:
            raise ModelError(f"tensor {name!r}: tensor type code {code} is not supported")
        dtype = TENSOR_TYPES[code]
        shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
        payload = _buffer_bytes(raw, model, t.Buffer())
        array = None
        if payload is not None:
            count = int(np.prod(shape)) if shape else 1
            if len(payload) != count * dtype.itemsize:
                raise CorruptModelError(
                    f"tensor {name!r}: buffer holds {len(payload)} bytes, shape {shape} "
                    f"of {dtype} needs {count * dtype.itemsize}"
                )
            array = np.frombuffer(payload, dtype).reshape(shape).copy()
        tensors.append(Tensor(name, shape, dtype, _quantization(t), array))

    operators: list[Operator] = []
    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        code_table = model.OperatorCodes(op.OpcodeIndex())
        code = max(code_table.BuiltinCode(), code_table.DeprecatedBuiltinCode())
        name = OPCODE_NAMES.get(code, f"UNKNOWN_{code}")
        if name == "CUSTOM":
            name = "CUSTOM:" + (code_table.CustomCode() or b"?").decode("utf-8", "replace")
        inputs = [int(v) for v in op.InputsAsNumpy()] if op.InputsLength() else []
        outputs = [int(v) for v in op.OutputsAsNumpy()] if op.OutputsLength() else []
        for index in (*inputs, *outputs):
            if index >= len(tensors) or index < -1:
                raise CorruptModelError(f"operator #{i} {name} names tensor {index}, model has {len(tensors)}")
        operators.append(Operator(name, inputs, outputs, parse_options(name, op), code_table.Version()))

    metadata: dict[str, bytes] = {}
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        key = (entry.Name() or b"").decode("utf-8", "replace")
        payload = _buffer_bytes(raw, model, entry.Buffer())
        if key and payload is not None:
            metadata[key] = payload

    graph = Graph(
        tensors=tensors,
        operators=operators,
        inputs=[int(v) for v in sg.InputsAsNumpy()] if sg.InputsLength() else [],
        outputs=[int(v) for v in sg.OutputsAsNumpy()] if sg.OutputsLength() else [],
        name=(sg.Name() or b"main").decode("utf-8", "replace"),
        description=(model.Description() or b"").decode("utf-8", "replace"),
        metadata=metadata,
    )
    return graph


def read_file(path: str) -> Graph:
    with open(path, "rb") as fh:
        return read_graph(fh.read())
