"""Trainable float32 mirrors of the int8 TFLite ops, with hand-written backward passes.

Each layer maps one-to-one onto a TFLite operator, so the tail trained here
is written back into the same graph positions. Forward passes fake-quantise
exactly where the int8 kernels round (weights per channel, bias on the
input x weight scale grid, outputs on their activation grid), which is what
keeps the float tail's accuracy and the deployed model's accuracy together.
No autograd framework: a device should not need one, and these few ops are
cheaper by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..model.quant import INT8_MAX, INT8_MIN, activation_bounds
from ..model.windows import patches, scatter_patches, valid_counts
from .fakequant import RangeStats, fake_quant_activation, fake_quant_weights

QParams = tuple[float, int]
SOFTMAX_Q: QParams = (1.0 / 256.0, -128)


@dataclass
class Layer:
    """Base: an op with an input quantisation, an output quantisation and a cache for backward."""

    opcode: str = ""
    in_q: QParams = (1.0, 0)
    stats: RangeStats | None = None
    cache: dict[str, Any] = field(default_factory=dict, repr=False)

    # Parameters a trainer updates (empty for parameter-free ops).
    def params(self) -> dict[str, np.ndarray]:
        return {}

    @property
    def out_q(self) -> QParams:
        """Output quantisation: from running statistics, or the input's for ops that keep it."""
        return self.stats.params() if self.stats is not None else self.in_q

    def forward(self, x: np.ndarray, training: bool, quantized: bool = True) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dy: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        raise NotImplementedError


def _activate(z: np.ndarray, activation: str) -> np.ndarray:
    if activation == "RELU":
        return np.maximum(z, 0.0)
    if activation == "RELU6":
        return np.clip(z, 0.0, 6.0)
    return z


def _activation_grad(z: np.ndarray, activation: str) -> np.ndarray | float:
    if activation == "RELU":
        return (z > 0).astype(np.float32)
    if activation == "RELU6":
        return ((z > 0) & (z < 6)).astype(np.float32)
    return 1.0


@dataclass
class Weighted(Layer):
    """Shared forward/backward scaffolding of FULLY_CONNECTED, CONV_2D and DEPTHWISE_CONV_2D."""

    weight: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    bias: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    activation: str = "NONE"
    channel_axis: int = 0

    def params(self) -> dict[str, np.ndarray]:
        return {"weight": self.weight, "bias": self.bias}

    def quantized_params(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The weights and bias as the int8 model will hold them, dequantised; plus weight scales."""
        w_fq, scales = fake_quant_weights(self.weight, self.channel_axis)
        bias_scale = self.in_q[0] * scales.astype(np.float64)
        b_fq = (np.round(self.bias / bias_scale) * bias_scale).astype(np.float32)
        return w_fq, b_fq, scales

    def _linear(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _linear_backward(self, dz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Returns (dx, dweight) for the cached input and weights."""
        raise NotImplementedError

    def forward(self, x: np.ndarray, training: bool, quantized: bool = True) -> np.ndarray:
        if quantized:
            w, b, _ = self.quantized_params()
        else:
            w, b = self.weight, self.bias
        self.cache["w"] = w
        z = self._linear(x, w) + b
        a = _activate(z, self.activation)
        if training and self.stats is not None:
            self.stats.observe(a)
        self.cache["z"] = z
        if not quantized or self.stats is None:
            self.cache["mask"] = None
            return a
        scale, zp = self.out_q
        lo, hi = activation_bounds(self.activation, scale, zp)
        y, mask = fake_quant_activation(a, scale, zp, lo, hi)
        self.cache["mask"] = mask
        return y

    def backward(self, dy: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        mask = self.cache["mask"]
        da = dy if mask is None else dy * mask
        dz = (da * _activation_grad(self.cache["z"], self.activation)).astype(da.dtype, copy=False)
        dx, dw = self._linear_backward(dz)
        db = dz.reshape(-1, dz.shape[-1]).sum(axis=0)
        return dx, {"weight": dw, "bias": db}


@dataclass
class FullyConnected(Weighted):
    """weight [out, in], as TFLite stores it."""

    opcode: str = "FULLY_CONNECTED"

    def _linear(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        flat = x.reshape(x.shape[0], -1)
        self.cache["x"] = flat
        self.cache["x_shape"] = x.shape
        return flat @ w.T

    def _linear_backward(self, dz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dw = dz.T @ self.cache["x"]
        dx = (dz @ self.cache["w"]).reshape(self.cache["x_shape"])
        return dx, dw


@dataclass
class Conv2D(Weighted):
    """weight [out, kh, kw, in]; NHWC activations. A Conv1D is this with kh = 1."""

    opcode: str = "CONV_2D"
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    padding: str = "SAME"

    def _linear(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        cols = patches(x, w.shape[1:3], self.stride, self.dilation, self.padding, 0.0)
        n, oh, ow = cols.shape[:3]
        flat = np.ascontiguousarray(cols).reshape(n * oh * ow, -1)
        self.cache["cols"] = flat
        self.cache["x_shape"] = x.shape
        self.cache["cols_shape"] = cols.shape
        return (flat @ w.reshape(w.shape[0], -1).T).reshape(n, oh, ow, w.shape[0])

    def _linear_backward(self, dz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w = self.cache["w"]
        dz2 = dz.reshape(-1, w.shape[0])
        dw = (dz2.T @ self.cache["cols"]).reshape(w.shape)
        dcols = (dz2 @ w.reshape(w.shape[0], -1)).reshape(self.cache["cols_shape"])
        dx = scatter_patches(dcols, self.cache["x_shape"], self.stride, self.dilation, self.padding)
        return dx, dw


@dataclass
class DepthwiseConv2D(Weighted):
    """weight [1, kh, kw, channels x multiplier]; output channel k reads input channel k // m."""

    opcode: str = "DEPTHWISE_CONV_2D"
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    padding: str = "SAME"
    multiplier: int = 1
    channel_axis: int = 3

    def _linear(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        cols = patches(x, w.shape[1:3], self.stride, self.dilation, self.padding, 0.0)
        cols = np.repeat(cols, self.multiplier, axis=-1) if self.multiplier > 1 else np.ascontiguousarray(cols)
        self.cache["cols"] = cols
        self.cache["x_shape"] = x.shape
        return np.einsum("nhwijc,ijc->nhwc", cols, w[0], optimize=True)

    def _linear_backward(self, dz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w = self.cache["w"]
        cols = self.cache["cols"]
        dw = np.einsum("nhwijc,nhwc->ijc", cols, dz, optimize=True)[None]
        dcols = np.einsum("nhwc,ijc->nhwijc", dz, w[0], optimize=True)
        if self.multiplier > 1:
            n, oh, ow, fh, fw, cm = dcols.shape
            dcols = dcols.reshape(n, oh, ow, fh, fw, cm // self.multiplier, self.multiplier).sum(-1)
        dx = scatter_patches(dcols, self.cache["x_shape"], self.stride, self.dilation, self.padding)
        return dx, dw


@dataclass
class Pool2D(Layer):
    """AVERAGE_POOL_2D or MAX_POOL_2D; int8 pooling keeps the input's quantisation."""

    opcode: str = "AVERAGE_POOL_2D"
    filter: tuple[int, int] = (1, 2)
    stride: tuple[int, int] = (1, 2)
    padding: str = "VALID"
    activation: str = "NONE"

    def forward(self, x: np.ndarray, training: bool, quantized: bool = True) -> np.ndarray:
        self.cache["x_shape"] = x.shape
        if self.opcode == "MAX_POOL_2D":
            win = patches(x, self.filter, self.stride, (1, 1), self.padding, -np.inf)
            n, oh, ow, fh, fw, c = win.shape
            flat = win.reshape(n, oh, ow, fh * fw, c)
            arg = flat.argmax(axis=3)
            self.cache["arg"] = arg
            y = np.take_along_axis(flat, arg[:, :, :, None, :], axis=3)[:, :, :, 0, :]
        else:
            win = patches(x, self.filter, self.stride, (1, 1), self.padding, 0.0)
            count = valid_counts(x.shape, self.filter, self.stride, self.padding)[None, :, :, None]
            self.cache["count"] = count
            y = win.sum(axis=(3, 4)) / count
            if quantized:  # the int8 kernel rounds the mean onto the (shared) grid
                scale, zp = self.in_q
                y, _ = fake_quant_activation(y, scale, zp)
        return _activate(y, self.activation).astype(x.dtype, copy=False)

    def backward(self, dy: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        n, h, w, c = self.cache["x_shape"]
        fh, fw = self.filter
        if self.opcode == "MAX_POOL_2D":
            arg = self.cache["arg"]
            oh, ow = dy.shape[1:3]
            grad = np.zeros((n, oh, ow, fh * fw, c), dy.dtype)
            np.put_along_axis(grad, arg[:, :, :, None, :], dy[:, :, :, None, :], axis=3)
            grad = grad.reshape(n, oh, ow, fh, fw, c)
        else:
            share = (dy / self.cache["count"]).astype(dy.dtype, copy=False)
            grad = np.broadcast_to(share[:, :, :, None, None, :], (*dy.shape[:3], fh, fw, c))
        return scatter_patches(grad, (n, h, w, c), self.stride, (1, 1), self.padding), {}


@dataclass
class Reshape(Layer):
    opcode: str = "RESHAPE"
    out_shape: tuple[int, ...] = ()

    def forward(self, x: np.ndarray, training: bool, quantized: bool = True) -> np.ndarray:
        self.cache["x_shape"] = x.shape
        return x.reshape((x.shape[0], *self.out_shape[1:]))

    def backward(self, dy: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return dy.reshape(self.cache["x_shape"]), {}


@dataclass
class Softmax(Layer):
    """Softmax; trained jointly with cross-entropy (its gradient is p - onehot)."""

    opcode: str = "SOFTMAX"
    beta: float = 1.0

    @property
    def out_q(self) -> QParams:
        return SOFTMAX_Q

    def forward(self, x: np.ndarray, training: bool, quantized: bool = True) -> np.ndarray:
        logits = x * self.beta
        logits = logits - logits.max(axis=-1, keepdims=True)
        e = np.exp(logits)
        p = (e / e.sum(axis=-1, keepdims=True)).astype(x.dtype, copy=False)
        self.cache["p"] = p
        return p

    def backward_cross_entropy(self, labels: np.ndarray) -> np.ndarray:
        p = self.cache["p"]
        grad = p.copy()
        grad[np.arange(len(labels)), labels] -= 1.0
        return (grad * self.beta / len(labels)).astype(p.dtype, copy=False)

    def backward(self, dy: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        p = self.cache["p"]
        dot = (dy * p).sum(axis=-1, keepdims=True)
        return (p * (dy - dot) * self.beta).astype(p.dtype, copy=False), {}


__all__ = [
    "INT8_MAX",
    "INT8_MIN",
    "SOFTMAX_Q",
    "Conv2D",
    "DepthwiseConv2D",
    "FullyConnected",
    "Layer",
    "Pool2D",
    "Reshape",
    "Softmax",
    "Weighted",
]
