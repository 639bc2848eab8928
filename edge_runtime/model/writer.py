"""Serialise a :class:`Graph` back into a .tflite flatbuffer.

Built on the ``flatbuffers`` builder and the ``tflite`` schema package's
builder functions, so the gateway can publish models without any interpreter
installed. Constant buffers are 16-byte aligned (TFLite Micro and XNNPACK
read weights in place and want aligned data).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flatbuffers
import numpy as np
import tflite

from .errors import UnsupportedOpError
from .graph import TYPE_CODES, Graph, Operator, Quantization
from .schema import ACTIVATION_CODES, INT8_OP_VERSIONS, OPCODE_CODES, PADDING_CODES

Builder = Any  # flatbuffers.Builder is untyped
NO_OPTIONS = {"QUANTIZE", "DEQUANTIZE", "EXPAND_DIMS", "RELU", "RELU6", "LOGISTIC", "TANH"}


def _aligned_bytes(b: Builder, payload: bytes, alignment: int = 16) -> int:
    b.StartVector(1, len(payload), alignment)
    b.head = b.head - len(payload)
    b.Bytes[b.head : b.head + len(payload)] = payload
    return int(b.EndVector())


def _int_vector(b: Builder, values: list[int] | tuple[int, ...], dtype: type = np.int32) -> int:
    return int(b.CreateNumpyVector(np.asarray(values, dtype)))


def _activation(op: Operator) -> int:
    name = op.options.get("activation", "NONE")
    if name not in ACTIVATION_CODES:
        raise UnsupportedOpError(op.opcode, -1, f"fused activation {name!r} unknown")
    return ACTIVATION_CODES[name]


def _fc(b: Builder, op: Operator) -> tuple[int, int]:
    tflite.FullyConnectedOptionsStart(b)
    tflite.FullyConnectedOptionsAddFusedActivationFunction(b, _activation(op))
    tflite.FullyConnectedOptionsAddKeepNumDims(b, bool(op.options.get("keep_num_dims", False)))
    return tflite.BuiltinOptions.FullyConnectedOptions, int(tflite.FullyConnectedOptionsEnd(b))


def _conv(b: Builder, op: Operator) -> tuple[int, int]:
    sh, sw = op.options.get("stride", (1, 1))
    dh, dw = op.options.get("dilation", (1, 1))
    tflite.Conv2DOptionsStart(b)
    tflite.Conv2DOptionsAddPadding(b, PADDING_CODES[op.options.get("padding", "VALID")])
    tflite.Conv2DOptionsAddStrideH(b, sh)
    tflite.Conv2DOptionsAddStrideW(b, sw)
    tflite.Conv2DOptionsAddDilationHFactor(b, dh)
    tflite.Conv2DOptionsAddDilationWFactor(b, dw)
    tflite.Conv2DOptionsAddFusedActivationFunction(b, _activation(op))
    return tflite.BuiltinOptions.Conv2DOptions, int(tflite.Conv2DOptionsEnd(b))


def _depthwise(b: Builder, op: Operator) -> tuple[int, int]:
    sh, sw = op.options.get("stride", (1, 1))
    dh, dw = op.options.get("dilation", (1, 1))
    tflite.DepthwiseConv2DOptionsStart(b)
    tflite.DepthwiseConv2DOptionsAddPadding(b, PADDING_CODES[op.options.get("padding", "VALID")])
    tflite.DepthwiseConv2DOptionsAddStrideH(b, sh)
    tflite.DepthwiseConv2DOptionsAddStrideW(b, sw)
    tflite.DepthwiseConv2DOptionsAddDilationHFactor(b, dh)
    tflite.DepthwiseConv2DOptionsAddDilationWFactor(b, dw)
    tflite.DepthwiseConv2DOptionsAddDepthMultiplier(b, int(op.options.get("depth_multiplier", 1)))
    tflite.DepthwiseConv2DOptionsAddFusedActivationFunction(b, _activation(op))
    return tflite.BuiltinOptions.DepthwiseConv2DOptions, int(tflite.DepthwiseConv2DOptionsEnd(b))


def _pool(b: Builder, op: Operator) -> tuple[int, int]:
    sh, sw = op.options.get("stride", (1, 1))
    fh, fw = op.options["filter"]
    tflite.Pool2DOptionsStart(b)
    tflite.Pool2DOptionsAddPadding(b, PADDING_CODES[op.options.get("padding", "VALID")])
    tflite.Pool2DOptionsAddStrideH(b, sh)
    tflite.Pool2DOptionsAddStrideW(b, sw)
    tflite.Pool2DOptionsAddFilterHeight(b, fh)
    tflite.Pool2DOptionsAddFilterWidth(b, fw)
    tflite.Pool2DOptionsAddFusedActivationFunction(b, _activation(op))
    return tflite.BuiltinOptions.Pool2DOptions, int(tflite.Pool2DOptionsEnd(b))


def _reshape(b: Builder, op: Operator) -> tuple[int, int]:
    shape = _int_vector(b, op.options.get("new_shape", []))
    tflite.ReshapeOptionsStart(b)
    tflite.ReshapeOptionsAddNewShape(b, shape)
    return tflite.BuiltinOptions.ReshapeOptions, int(tflite.ReshapeOptionsEnd(b))


def _softmax(b: Builder, op: Operator) -> tuple[int, int]:
    tflite.SoftmaxOptionsStart(b)
    tflite.SoftmaxOptionsAddBeta(b, float(op.options.get("beta", 1.0)))
    return tflite.BuiltinOptions.SoftmaxOptions, int(tflite.SoftmaxOptionsEnd(b))


def _mean(b: Builder, op: Operator) -> tuple[int, int]:
    tflite.ReducerOptionsStart(b)
    tflite.ReducerOptionsAddKeepDims(b, bool(op.options.get("keep_dims", False)))
    return tflite.BuiltinOptions.ReducerOptions, int(tflite.ReducerOptionsEnd(b))


def _add(b: Builder, op: Operator) -> tuple[int, int]:
    tflite.AddOptionsStart(b)
    tflite.AddOptionsAddFusedActivationFunction(b, _activation(op))
    return tflite.BuiltinOptions.AddOptions, int(tflite.AddOptionsEnd(b))


OPTION_WRITERS: dict[str, Callable[[Builder, Operator], tuple[int, int]]] = {
    "FULLY_CONNECTED": _fc,
    "CONV_2D": _conv,
    "DEPTHWISE_CONV_2D": _depthwise,
    "AVERAGE_POOL_2D": _pool,
    "MAX_POOL_2D": _pool,
    "RESHAPE": _reshape,
    "SOFTMAX": _softmax,
    "MEAN": _mean,
    "ADD": _add,
}
WRITABLE_OPS = frozenset(OPTION_WRITERS) | NO_OPTIONS


def _quantization(b: Builder, q: Quantization) -> int:
    scale = b.CreateNumpyVector(q.scale.astype(np.float32))
    zp = b.CreateNumpyVector(q.zero_point.astype(np.int64))
    tflite.QuantizationParametersStart(b)
    tflite.QuantizationParametersAddScale(b, scale)
    tflite.QuantizationParametersAddZeroPoint(b, zp)
    tflite.QuantizationParametersAddQuantizedDimension(b, q.axis)
    return int(tflite.QuantizationParametersEnd(b))


def _offsets_vector(b: Builder, offsets: list[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return int(b.EndVector())


def write_graph(graph: Graph) -> bytes:
    """Serialise ``graph``; refuses operators whose options it cannot write (naming them)."""
    for i, op in enumerate(graph.operators):
        if op.opcode not in WRITABLE_OPS or op.options.get("_unparsed"):
            raise UnsupportedOpError(op.opcode, i, "tinyfed cannot write this operator's options")

    b = flatbuffers.Builder(4096)
    # Buffer 0 is the empty sentinel the schema reserves.
    payloads: list[bytes | None] = [None]
    tensor_buffer: list[int] = []
    for t in graph.tensors:
        if t.data is None:
            tensor_buffer.append(0)
        else:
            tensor_buffer.append(len(payloads))
            payloads.append(np.ascontiguousarray(t.data, dtype=t.dtype).tobytes())
    metadata_buffer: dict[str, int] = {}
    for meta_key, blob in graph.metadata.items():
        metadata_buffer[meta_key] = len(payloads)
        payloads.append(blob)

    buffer_offsets = []
    for payload in payloads:
        data = _aligned_bytes(b, payload) if payload else None
        tflite.BufferStart(b)
        if data is not None:
            tflite.BufferAddData(b, data)
        buffer_offsets.append(int(tflite.BufferEnd(b)))

    tensor_offsets = []
    for t, buffer_index in zip(graph.tensors, tensor_buffer, strict=True):
        name = b.CreateString(t.name)
        shape = _int_vector(b, t.shape)
        quant = _quantization(b, t.quant) if t.quant is not None else None
        tflite.TensorStart(b)
        tflite.TensorAddShape(b, shape)
        tflite.TensorAddType(b, TYPE_CODES[t.dtype])
        tflite.TensorAddBuffer(b, buffer_index)
        tflite.TensorAddName(b, name)
        if quant is not None:
            tflite.TensorAddQuantization(b, quant)
        tensor_offsets.append(int(tflite.TensorEnd(b)))

    opcode_index: dict[tuple[str, int], int] = {}
    op_offsets = []
    for op in graph.operators:
        version = max(op.version, INT8_OP_VERSIONS.get(op.opcode, 1))
        key = (op.opcode, version)
        opcode_index.setdefault(key, len(opcode_index))
        inputs = _int_vector(b, op.inputs)
        outputs = _int_vector(b, op.outputs)
        writer = OPTION_WRITERS.get(op.opcode)
        options = writer(b, op) if writer else None
        tflite.OperatorStart(b)
        tflite.OperatorAddOpcodeIndex(b, opcode_index[key])
        tflite.OperatorAddInputs(b, inputs)
        tflite.OperatorAddOutputs(b, outputs)
        if options is not None:
            tflite.OperatorAddBuiltinOptionsType(b, options[0])
            tflite.OperatorAddBuiltinOptions(b, options[1])
        op_offsets.append(int(tflite.OperatorEnd(b)))

    code_offsets = []
    for (opcode, version), _ in sorted(opcode_index.items(), key=lambda kv: kv[1]):
        code = OPCODE_CODES[opcode]
        tflite.OperatorCodeStart(b)
        tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
        tflite.OperatorCodeAddBuiltinCode(b, code)
        tflite.OperatorCodeAddVersion(b, version)
        code_offsets.append(int(tflite.OperatorCodeEnd(b)))

    tensors_vec = _offsets_vector(b, tensor_offsets)
    ops_vec = _offsets_vector(b, op_offsets)
    inputs_vec = _int_vector(b, graph.inputs)
    outputs_vec = _int_vector(b, graph.outputs)
    sg_name = b.CreateString(graph.name)
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, tensors_vec)
    tflite.SubGraphAddInputs(b, inputs_vec)
    tflite.SubGraphAddOutputs(b, outputs_vec)
    tflite.SubGraphAddOperators(b, ops_vec)
    tflite.SubGraphAddName(b, sg_name)
    subgraph = int(tflite.SubGraphEnd(b))

    meta_offsets = []
    for meta_key, index in metadata_buffer.items():
        name = b.CreateString(meta_key)
        tflite.MetadataStart(b)
        tflite.MetadataAddName(b, name)
        tflite.MetadataAddBuffer(b, index)
        meta_offsets.append(int(tflite.MetadataEnd(b)))

    codes_vec = _offsets_vector(b, code_offsets)
    subgraphs_vec = _offsets_vector(b, [subgraph])
    buffers_vec = _offsets_vector(b, buffer_offsets)
    meta_vec = _offsets_vector(b, meta_offsets) if meta_offsets else None
    description = b.CreateString(graph.description)
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, 3)
    tflite.ModelAddOperatorCodes(b, codes_vec)
    tflite.ModelAddSubgraphs(b, subgraphs_vec)
    tflite.ModelAddDescription(b, description)
    tflite.ModelAddBuffers(b, buffers_vec)
    if meta_vec is not None:
        tflite.ModelAddMetadata(b, meta_vec)
    root = tflite.ModelEnd(b)
    b.Finish(root, file_identifier=b"TFL3")
    return bytes(b.Output())
