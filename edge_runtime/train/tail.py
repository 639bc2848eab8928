"""The trainable tail of a model: graph operators from the cut point on, as float layers.

``Tail.from_graph`` lifts int8 tensors into float32 shadow weights;
``Tail.export_into`` re-quantises them (weights per channel, biases on the
input x weight scale, activations from the running statistics) and writes
them back at the same graph positions, so the backbone is untouched.
"""

from __future__ import annotations

import itertools

import numpy as np

from ..model.errors import ModelError, UnsupportedOpError
from ..model.graph import Graph, Operator, Quantization, Tensor
from ..model.quant import INT8_MAX, INT8_MIN
from .fakequant import RangeStats
from .layers import (
    SOFTMAX_Q,
    Conv2D,
    DepthwiseConv2D,
    FullyConnected,
    Layer,
    Pool2D,
    QParams,
    Reshape,
    Softmax,
    Weighted,
)

TRAINABLE_OPS = (
    "FULLY_CONNECTED",
    "CONV_2D",
    "DEPTHWISE_CONV_2D",
    "AVERAGE_POOL_2D",
    "MAX_POOL_2D",
    "RESHAPE",
    "SOFTMAX",
)
ACTIVATIONS = ("NONE", "RELU", "RELU6")


def _qparams(q: Quantization) -> QParams:
    return float(q.scale[0]), int(q.zero_point[0])


def _stats_from(q: QParams) -> RangeStats:
    scale, zp = q
    return RangeStats(ema_min=(INT8_MIN - zp) * scale, ema_max=(INT8_MAX - zp) * scale)


def _dequantized_weights(graph: Graph, op: Operator, index: int, axis: int) -> tuple[np.ndarray, np.ndarray]:
    w_t = graph.tensor(op.inputs[1])
    if w_t.data is None or w_t.quant is None:
        raise UnsupportedOpError(op.opcode, index, f"weights {w_t.name!r} are not constant int8 data")
    if w_t.dtype != np.int8:
        raise UnsupportedOpError(op.opcode, index, f"weights {w_t.name!r} are {w_t.dtype}, int8 required")
    shape = [1] * w_t.data.ndim
    shape[axis] = -1
    scales = w_t.quant.scale.astype(np.float64)
    w = w_t.data.astype(np.float64) * (scales.reshape(shape) if scales.size > 1 else scales[0])
    if len(op.inputs) < 3 or op.inputs[2] < 0:
        raise UnsupportedOpError(op.opcode, index, "has no bias tensor; tinyfed trains biases")
    b_t = graph.tensor(op.inputs[2])
    if b_t.data is None:
        raise UnsupportedOpError(op.opcode, index, f"bias {b_t.name!r} is not constant")
    in_scale = _qparams(graph.tensor(op.inputs[0]).require_int8())[0]
    per_channel = scales if scales.size > 1 else np.full(w.shape[axis], scales[0])
    b = b_t.data.astype(np.float64) * in_scale * per_channel
    return w.astype(np.float32), b.astype(np.float32)


def layer_from_op(graph: Graph, op: Operator, index: int) -> Layer:
    """Build the float layer mirroring graph operator ``index``; refuses what has no backward pass."""
    if op.opcode not in TRAINABLE_OPS:
        raise UnsupportedOpError(op.opcode, index, "the trainer has no backward pass for it; move the cut after it")
    activation = op.options.get("activation", "NONE")
    if activation not in ACTIVATIONS:
        raise UnsupportedOpError(op.opcode, index, f"fused activation {activation} is not differentiable here")
    out_q = _qparams(graph.tensor(op.outputs[0]).require_int8())
    o = op.options
    layer: Layer
    if op.opcode == "FULLY_CONNECTED":
        w, b = _dequantized_weights(graph, op, index, 0)
        layer = FullyConnected(weight=w, bias=b, activation=activation, stats=_stats_from(out_q))
    elif op.opcode in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        depthwise = op.opcode == "DEPTHWISE_CONV_2D"
        w, b = _dequantized_weights(graph, op, index, 3 if depthwise else 0)
        common = dict(
            weight=w,
            bias=b,
            activation=activation,
            stats=_stats_from(out_q),
            stride=o["stride"],
            dilation=o["dilation"],
            padding=o["padding"],
        )
        if depthwise:
            layer = DepthwiseConv2D(**common, multiplier=int(o.get("depth_multiplier", 1)))  # type: ignore[arg-type]
        else:
            layer = Conv2D(**common)  # type: ignore[arg-type]
    elif op.opcode in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
        layer = Pool2D(
            opcode=op.opcode, filter=o["filter"], stride=o["stride"], padding=o["padding"], activation=activation
        )
    elif op.opcode == "RESHAPE":
        layer = Reshape(out_shape=graph.tensor(op.outputs[0]).shape)
    else:
        layer = Softmax(beta=float(o.get("beta", 1.0)))
    return layer


def _placeholder(graph: Graph, name: str, shape: tuple[int, ...], dtype: type) -> int:
    """A zero constant the export then fills with quantised values."""
    return graph.add_tensor(Tensor(name, shape, np.dtype(dtype), data=np.zeros(shape, dtype)))


class Tail:
    """A chain of float layers between an int8 input (the cut) and a softmax."""

    def __init__(self, layers: list[Layer], input_q: QParams) -> None:
        if not layers or not isinstance(layers[-1], Softmax):
            raise ModelError("the trainable tail must end in SOFTMAX (trained with cross-entropy)")
        self.layers = layers
        self.input_q = input_q

    @classmethod
    def from_graph(cls, graph: Graph, cut: int) -> Tail:
        """Lift operators ``cut..end`` of ``graph``; they must form a chain ending in the model output."""
        if not 0 <= cut < len(graph.operators):
            raise ModelError(f"cut {cut} outside the model's {len(graph.operators)} operators")
        ops = graph.operators[cut:]
        for i, (prev, nxt) in enumerate(itertools.pairwise(ops)):
            if nxt.inputs[0] != prev.outputs[0]:
                raise UnsupportedOpError(
                    nxt.opcode, cut + i + 1, "does not consume the previous operator's output (tail must be a chain)"
                )
        if ops[-1].outputs[0] not in graph.outputs:
            raise ModelError("the tail's last operator does not produce a model output")
        input_q = _qparams(graph.tensor(ops[0].inputs[0]).require_int8())
        layers = [layer_from_op(graph, op, cut + i) for i, op in enumerate(ops)]
        return cls(layers, input_q)

    # -- forward/backward -------------------------------------------------
    def _propagate_quant(self) -> None:
        q = self.input_q
        for layer in self.layers:
            layer.in_q = q
            q = layer.out_q

    def forward(self, x: np.ndarray, training: bool = False, quantized: bool = True) -> np.ndarray:
        q = self.input_q
        for layer in self.layers:
            layer.in_q = q  # ranges move while training: each layer reads the current grid
            x = layer.forward(x, training, quantized)
            q = layer.out_q
        return x

    def backward(self, labels: np.ndarray) -> list[dict[str, np.ndarray]]:
        """Cross-entropy gradients for every layer (the softmax output against ``labels``)."""
        head = self.layers[-1]
        assert isinstance(head, Softmax)
        grad = head.backward_cross_entropy(labels)
        grads: list[dict[str, np.ndarray]] = [{}]
        for layer in reversed(self.layers[:-1]):
            grad, g = layer.backward(grad)
            grads.append(g)
        grads.reverse()
        return grads

    def calibrate(self, x: np.ndarray, batch: int = 256) -> None:
        """Set activation ranges from a float pass over ``x`` (what a converter's calibration does)."""
        lows: dict[int, float] = {}
        highs: dict[int, float] = {}
        self._propagate_quant()
        for start in range(0, len(x), batch):
            h = x[start : start + batch]
            for i, layer in enumerate(self.layers):
                h = layer.forward(h, training=False, quantized=False)
                if isinstance(layer, Weighted):
                    lows[i] = min(lows.get(i, 0.0), float(h.min()))
                    highs[i] = max(highs.get(i, 0.0), float(h.max()))
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Weighted):
                layer.stats = RangeStats(ema_min=lows[i], ema_max=highs[i])
        self._propagate_quant()

    # -- export -------------------------------------------------------------
    def export_into(self, graph: Graph, cut: int) -> None:
        """Re-quantise the layers into operators ``cut..end`` of ``graph`` (shapes unchanged)."""
        self._propagate_quant()
        for layer, op in zip(self.layers, graph.operators[cut:], strict=True):
            out = graph.tensor(op.outputs[0])
            if isinstance(layer, Weighted):
                _, _, scales = layer.quantized_params()
                shape = [1] * layer.weight.ndim
                shape[layer.channel_axis] = -1
                wq = np.clip(np.round(layer.weight / scales.reshape(shape)), -INT8_MAX, INT8_MAX)
                w_t = graph.tensor(op.inputs[1])
                w_t.set_data(wq.astype(np.int8))
                w_t.quant = Quantization(scales.astype(np.float32), np.zeros(scales.size, np.int64), layer.channel_axis)
                bias_scale = layer.in_q[0] * scales.astype(np.float64)
                bq = np.clip(np.round(layer.bias / bias_scale), -(2**31), 2**31 - 1).astype(np.int32)
                b_t = graph.tensor(op.inputs[2])
                b_t.set_data(bq)
                b_t.quant = Quantization(bias_scale.astype(np.float32), np.zeros(scales.size, np.int64), 0)
            q = SOFTMAX_Q if isinstance(layer, Softmax) else layer.out_q
            out.quant = Quantization.single(q[0], q[1])

    def to_graph(self, input_shape: tuple[int, ...], name: str = "tinyfed") -> Graph:
        """A whole new int8 graph of these layers (the builder's path; shapes from a dry run)."""
        self._propagate_quant()
        graph = Graph(tensors=[], operators=[], inputs=[], outputs=[], description=name)
        x_index = graph.add_tensor(
            Tensor("input", tuple(input_shape), np.dtype(np.int8), Quantization.single(*self.input_q))
        )
        graph.inputs = [x_index]
        probe = np.zeros((1, *input_shape[1:]), np.float32)
        for n, layer in enumerate(self.layers):
            probe = layer.forward(probe, training=False, quantized=False)
            out_shape = (input_shape[0], *probe.shape[1:])
            out_index = graph.add_tensor(Tensor(f"{layer.opcode.lower()}_{n}", out_shape, np.dtype(np.int8)))
            inputs = [x_index]
            options: dict[str, object] = {}
            if isinstance(layer, Weighted):
                prefix = f"{layer.opcode.lower()}_{n}"
                w_idx = _placeholder(graph, f"{prefix}/weights", layer.weight.shape, np.int8)
                b_idx = _placeholder(graph, f"{prefix}/bias", layer.bias.shape, np.int32)
                inputs += [w_idx, b_idx]
                options["activation"] = layer.activation
            if isinstance(layer, Conv2D | DepthwiseConv2D):
                options.update(stride=layer.stride, dilation=layer.dilation, padding=layer.padding)
            if isinstance(layer, DepthwiseConv2D):
                options["depth_multiplier"] = layer.multiplier
            if isinstance(layer, Pool2D):
                options.update(
                    filter=layer.filter, stride=layer.stride, padding=layer.padding, activation=layer.activation
                )
            if isinstance(layer, Reshape):
                options["new_shape"] = list(out_shape)
            if isinstance(layer, Softmax):
                options["beta"] = layer.beta
            graph.operators.append(Operator(layer.opcode, inputs, [out_index], options))
            x_index = out_index
        graph.outputs = [x_index]
        self.export_into(graph, 0)
        return graph

    # -- parameters ---------------------------------------------------------
    def trainable(self) -> list[tuple[int, Weighted]]:
        return [(i, layer) for i, layer in enumerate(self.layers) if isinstance(layer, Weighted)]
