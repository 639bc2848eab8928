"""Patch weights, biases and their quantisation inside an existing .tflite, in place.

A converter-made model may hold operators, signatures or metadata that
:mod:`writer` does not reproduce. Patching writes through numpy views into a
copy of the file's bytes, at the same byte lengths, so everything else in the
file survives untouched. The price: a tensor keeps its element count and the
number of its scales (per-tensor stays per-tensor).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tflite

from .errors import ModelError, ShapeMismatchError, UnsupportedOpError
from .graph import TENSOR_TYPES
from .quant import INT8_MAX
from .reader import read_graph
from .schema import OPCODE_NAMES


class ModelPatcher:
    """Writable views into one model's bytes; ``bytes()`` gives the patched file."""

    def __init__(self, model: bytes) -> None:
        read_graph(model)  # validates the whole file before we write into it
        self._raw = bytearray(model)
        self._model = tflite.Model.GetRootAsModel(self._raw, 0)
        self._sg = self._model.Subgraphs(0)
        self._names = {self._sg.Tensors(i).Name().decode(): i for i in range(self._sg.TensorsLength())}
        buffer_users: dict[int, list[str]] = {}
        for name, i in self._names.items():
            b = self._sg.Tensors(i).Buffer()
            if b > 0:
                buffer_users.setdefault(b, []).append(name)
        self._shared = {n for users in buffer_users.values() if len(users) > 1 for n in users}

    def __bytes__(self) -> bytes:
        return bytes(self._raw)

    def _tensor(self, name: str) -> Any:
        if name not in self._names:
            raise ModelError(f"no tensor named {name!r} in the model")
        return self._sg.Tensors(self._names[name])

    def data_view(self, name: str) -> np.ndarray:
        """A writable view of tensor ``name``'s constant data (refuses shared buffers)."""
        t = self._tensor(name)
        if name in self._shared:
            raise ModelError(f"tensor {name!r} shares its buffer with another tensor; patching it would change both")
        buf = self._model.Buffers(t.Buffer())
        if t.Buffer() == 0 or buf.DataLength() == 0:
            raise ModelError(f"tensor {name!r} has no constant data to patch")
        dtype = TENSOR_TYPES[t.Type()]
        shape = tuple(int(d) for d in t.ShapeAsNumpy())
        raw = buf.DataAsNumpy()
        return raw.view(dtype).reshape(shape)

    def scale_view(self, name: str) -> np.ndarray:
        q = self._tensor(name).Quantization()
        if q is None or q.ScaleLength() == 0:
            raise ModelError(f"tensor {name!r} has no quantisation scales")
        return np.asarray(q.ScaleAsNumpy())

    def zero_point_view(self, name: str) -> np.ndarray:
        q = self._tensor(name).Quantization()
        if q is None or q.ZeroPointLength() == 0:
            raise ModelError(f"tensor {name!r} has no zero points")
        return np.asarray(q.ZeroPointAsNumpy())

    def set_data(self, name: str, array: np.ndarray) -> None:
        view = self.data_view(name)
        if array.shape != view.shape:
            raise ShapeMismatchError(name, view.shape, array.shape)
        view[...] = array.astype(view.dtype)

    def set_activation_quant(self, name: str, scale: float, zero_point: int) -> None:
        self.scale_view(name)[...] = scale
        self.zero_point_view(name)[...] = zero_point

    def set_layer(self, op_index: int, weight: np.ndarray, bias: np.ndarray) -> None:
        """Quantise float ``weight``/``bias`` into FULLY_CONNECTED/CONV_2D/DEPTHWISE op ``op_index``.

        Weight scales follow the file's layout (per channel or per tensor);
        bias scales are input_scale x weight_scale exactly, as the kernels assume.
        """
        op = self._sg.Operators(op_index)
        code = self._model.OperatorCodes(op.OpcodeIndex())
        opcode = OPCODE_NAMES.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "?")
        if opcode not in ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D"):
            raise UnsupportedOpError(opcode, op_index, "has no weights to patch")
        names = [self._sg.Tensors(int(i)).Name().decode() for i in op.InputsAsNumpy()]
        w_name, b_name = names[1], names[2] if len(names) > 2 else None
        w_view = self.data_view(w_name)
        if weight.shape != w_view.shape:
            raise ShapeMismatchError(w_name, w_view.shape, weight.shape)
        axis = 3 if opcode == "DEPTHWISE_CONV_2D" else 0
        w_scales = self.scale_view(w_name)
        moved = np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)
        if w_scales.size == 1:
            new_scales = np.array([max(np.abs(weight).max(), 1e-8) / INT8_MAX], np.float32)
        else:
            new_scales = (np.maximum(np.abs(moved).max(axis=1), 1e-8) / INT8_MAX).astype(np.float32)
        shape = [1] * weight.ndim
        shape[axis] = -1
        w_scales[...] = new_scales
        w_view[...] = np.clip(
            np.round(weight / new_scales.reshape(shape) if new_scales.size > 1 else weight / new_scales[0]),
            -INT8_MAX,
            INT8_MAX,
        ).astype(np.int8)
        if b_name is None:
            return
        in_name = names[0]
        in_scale = float(self.scale_view(in_name)[0])
        per_channel = np.broadcast_to(new_scales, (weight.shape[axis],)).astype(np.float64)
        b_scales = self.scale_view(b_name)
        bias_scale = in_scale * per_channel
        if b_scales.size == 1:
            if per_channel.size > 1 and not np.allclose(per_channel, per_channel[0]):
                raise ModelError(f"bias {b_name!r} has one scale but weights are per channel")
            b_scales[...] = bias_scale[0]
        else:
            b_scales[...] = bias_scale
        self.set_data(b_name, np.clip(np.round(bias / bias_scale), -(2**31), 2**31 - 1).astype(np.int32))
