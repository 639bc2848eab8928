"""A numpy int8 executor of the same integer math the TFLite kernels run.

It is the yardstick of the conformance suite (every interpreter must agree
with it within 1 LSB) and lets a gateway score a model without any
interpreter installed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .errors import ShapeMismatchError, UnsupportedOpError
from .graph import Graph, Operator
from .quant import activation_bounds, multipliers, multiply_by_quantized_multiplier, quantize
from .windows import patches, valid_counts


def _scalar_q(graph: Graph, index: int) -> tuple[float, int]:
    q = graph.tensor(index).require_int8()
    return float(q.scale[0]), int(q.zero_point[0])


def _requantize(graph: Graph, op: Operator, acc: np.ndarray, weight_scales: np.ndarray) -> np.ndarray:
    in_scale, _ = _scalar_q(graph, op.inputs[0])
    out_scale, out_zp = _scalar_q(graph, op.outputs[0])
    real = in_scale * weight_scales.astype(np.float64) / out_scale
    mult, shift = multipliers(real)
    if mult.size == 1:
        mult = np.broadcast_to(mult, acc.shape[-1:])
        shift = np.broadcast_to(shift, acc.shape[-1:])
    out = multiply_by_quantized_multiplier(acc, mult, shift) + out_zp
    lo, hi = activation_bounds(op.options.get("activation", "NONE"), out_scale, out_zp)
    return np.clip(out, lo, hi).astype(np.int8)


def _bias(graph: Graph, op: Operator, channels: int) -> np.ndarray:
    if len(op.inputs) > 2 and op.inputs[2] >= 0:
        data = graph.tensor(op.inputs[2]).data
        if data is not None:
            return data.astype(np.int64)
    return np.zeros(channels, np.int64)


def _fully_connected(graph: Graph, op: Operator, x: np.ndarray) -> np.ndarray:
    w_t = graph.tensor(op.inputs[1])
    assert w_t.data is not None and w_t.quant is not None
    _, in_zp = _scalar_q(graph, op.inputs[0])
    w = w_t.data.astype(np.int64)
    flat = x.reshape(-1, w.shape[1]).astype(np.int64) - in_zp
    acc = flat @ w.T + _bias(graph, op, w.shape[0])
    return _requantize(graph, op, acc, w_t.quant.scale)


def _conv(graph: Graph, op: Operator, x: np.ndarray) -> np.ndarray:
    w_t = graph.tensor(op.inputs[1])
    assert w_t.data is not None and w_t.quant is not None
    _, in_zp = _scalar_q(graph, op.inputs[0])
    w = w_t.data.astype(np.int64)  # [O, KH, KW, I]
    o = op.options
    cols = patches(x.astype(np.int64) - in_zp, w.shape[1:3], o["stride"], o["dilation"], o["padding"], 0)
    acc = np.einsum("nhwijc,oijc->nhwo", cols, w, optimize=True) + _bias(graph, op, w.shape[0])
    return _requantize(graph, op, acc, w_t.quant.scale)


def _depthwise(graph: Graph, op: Operator, x: np.ndarray) -> np.ndarray:
    w_t = graph.tensor(op.inputs[1])
    assert w_t.data is not None and w_t.quant is not None
    _, in_zp = _scalar_q(graph, op.inputs[0])
    w = w_t.data.astype(np.int64)[0]  # [KH, KW, C*M]
    o = op.options
    mult = int(o.get("depth_multiplier", 1))
    cols = patches(x.astype(np.int64) - in_zp, w.shape[0:2], o["stride"], o["dilation"], o["padding"], 0)
    cols = np.repeat(cols, mult, axis=-1)  # output channel k reads input channel k // mult
    acc = np.einsum("nhwijc,ijc->nhwc", cols, w, optimize=True) + _bias(graph, op, w.shape[-1])
    return _requantize(graph, op, acc, w_t.quant.scale)


def _pool(graph: Graph, op: Operator, x: np.ndarray) -> np.ndarray:
    o = op.options
    _, zp = _scalar_q(graph, op.outputs[0])
    scale, _ = _scalar_q(graph, op.outputs[0])
    lo, hi = activation_bounds(o.get("activation", "NONE"), scale, zp)
    if op.opcode == "MAX_POOL_2D":
        win = patches(x.astype(np.int64), o["filter"], o["stride"], (1, 1), o["padding"], -(2**31))
        out = win.max(axis=(3, 4))
    else:
        win = patches(x.astype(np.int64), o["filter"], o["stride"], (1, 1), o["padding"], 0)
        total = win.sum(axis=(3, 4))
        count = valid_counts(x.shape, o["filter"], o["stride"], o["padding"])[None, :, :, None]
        # C division truncates; TFLite rounds half away from zero before it.
        num = np.where(total > 0, total + count // 2, total - count // 2)
        out = np.sign(num) * (np.abs(num) // count)
    return np.clip(out, lo, hi).astype(np.int8)


def _softmax(graph: Graph, op: Operator, x: np.ndarray) -> np.ndarray:
    in_scale, in_zp = _scalar_q(graph, op.inputs[0])
    out_scale, out_zp = _scalar_q(graph, op.outputs[0])
    logits = (x.astype(np.float64) - in_zp) * in_scale * op.options.get("beta", 1.0)
    logits -= logits.max(axis=-1, keepdims=True)
    e = np.exp(logits)
    return quantize(e / e.sum(axis=-1, keepdims=True), out_scale, out_zp)


def _reshape(graph: Graph, op: Operator, x: np.ndarray) -> np.ndarray:
    out_shape = graph.tensor(op.outputs[0]).shape
    return x.reshape((x.shape[0], *out_shape[1:]))


KERNELS: dict[str, Callable[[Graph, Operator, np.ndarray], np.ndarray]] = {
    "FULLY_CONNECTED": _fully_connected,
    "CONV_2D": _conv,
    "DEPTHWISE_CONV_2D": _depthwise,
    "AVERAGE_POOL_2D": _pool,
    "MAX_POOL_2D": _pool,
    "SOFTMAX": _softmax,
    "RESHAPE": _reshape,
    "EXPAND_DIMS": _reshape,
}


def run_reference(graph: Graph, x: np.ndarray, taps: tuple[int, ...] = ()) -> list[np.ndarray]:
    """Run a batch ``x`` (int8, leading batch axis) through ``graph``; returns outputs then taps."""
    in_t = graph.tensor(graph.inputs[0])
    if tuple(x.shape[1:]) != in_t.shape[1:]:
        raise ShapeMismatchError(in_t.name, in_t.shape, tuple(x.shape))
    values: dict[int, np.ndarray] = {graph.inputs[0]: x.astype(np.int8)}
    for i, op in enumerate(graph.operators):
        kernel = KERNELS.get(op.opcode)
        if kernel is None:
            raise UnsupportedOpError(op.opcode, i, "the int8 reference has no kernel for it")
        values[op.outputs[0]] = kernel(graph, op, values[op.inputs[0]])
    return [values[i] for i in (*graph.outputs, *taps)]
