"""Backward passes checked against finite differences of the forward pass (float, no rounding)."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.train.layers import Conv2D, DepthwiseConv2D, FullyConnected, Layer, Pool2D, Reshape, Softmax

RNG = np.random.default_rng(0)


def _numeric_grad(f, x: np.ndarray, eps: float = 1e-3) -> np.ndarray:
    g = np.zeros_like(x, dtype=np.float64)
    flat = x.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        hi = f()
        flat[i] = old - eps
        lo = f()
        flat[i] = old
        g.reshape(-1)[i] = (hi - lo) / (2 * eps)
    return g


def _check(layer: Layer, x: np.ndarray) -> None:
    x = x.astype(np.float64)
    y = layer.forward(x, training=False, quantized=False)
    probe = RNG.normal(size=y.shape)

    def loss() -> float:
        return float((layer.forward(x, training=False, quantized=False) * probe).sum())

    layer.forward(x, training=False, quantized=False)
    dx, grads = layer.backward(probe)
    np.testing.assert_allclose(dx, _numeric_grad(loss, x), rtol=1e-4, atol=1e-5)
    for name, value in layer.params().items():
        np.testing.assert_allclose(
            grads[name], _numeric_grad(loss, value), rtol=1e-4, atol=1e-5, err_msg=f"{layer.opcode} d{name}"
        )


def _w(*shape: int) -> np.ndarray:
    return RNG.normal(0, 0.5, shape)


@pytest.mark.parametrize("activation", ["NONE", "RELU", "RELU6"])
def test_fully_connected(activation: str) -> None:
    _check(FullyConnected(weight=_w(4, 6), bias=_w(4), activation=activation), RNG.normal(0, 3, (3, 6)))


@pytest.mark.parametrize(
    ("stride", "dilation", "padding"), [((1, 1), (1, 1), "SAME"), ((1, 2), (1, 1), "SAME"), ((2, 1), (1, 2), "VALID")]
)
def test_conv2d(stride: tuple[int, int], dilation: tuple[int, int], padding: str) -> None:
    layer = Conv2D(
        weight=_w(3, 2, 3, 2), bias=_w(3), activation="RELU", stride=stride, dilation=dilation, padding=padding
    )
    _check(layer, RNG.normal(size=(2, 5, 7, 2)))


@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise(multiplier: int) -> None:
    layer = DepthwiseConv2D(
        weight=_w(1, 2, 3, 3 * multiplier),
        bias=_w(3 * multiplier),
        multiplier=multiplier,
        stride=(1, 2),
        padding="SAME",
    )
    _check(layer, RNG.normal(size=(2, 4, 6, 3)))


@pytest.mark.parametrize("opcode", ["AVERAGE_POOL_2D", "MAX_POOL_2D"])
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_pooling(opcode: str, padding: str) -> None:
    # Distinct values 0.01 apart: max pooling is not differentiable at ties, which a random draw can hit.
    x = (RNG.permutation(2 * 4 * 7 * 3) * 0.01 - 0.8).reshape(2, 4, 7, 3)
    _check(Pool2D(opcode=opcode, filter=(2, 3), stride=(1, 2), padding=padding), x)


def test_reshape() -> None:
    _check(Reshape(out_shape=(1, 12)), RNG.normal(size=(2, 1, 4, 3)))


def test_softmax_and_cross_entropy() -> None:
    layer = Softmax(beta=1.5)
    _check(layer, RNG.normal(size=(3, 5)))
    x = RNG.normal(size=(4, 5))
    labels = np.array([0, 3, 1, 4])

    def ce() -> float:
        p = layer.forward(x, training=False, quantized=False)
        return float(-np.log(p[np.arange(4), labels]).mean())

    layer.forward(x, training=False, quantized=False)
    np.testing.assert_allclose(layer.backward_cross_entropy(labels), _numeric_grad(ce, x), rtol=1e-3, atol=1e-5)


def test_fake_quant_blocks_gradient_outside_the_activation_range() -> None:
    layer = FullyConnected(weight=np.eye(2, dtype=np.float32), bias=np.zeros(2, np.float32))
    from edge_runtime.train.fakequant import RangeStats

    layer.stats = RangeStats(ema_min=-1.0, ema_max=1.0)
    layer.in_q = (0.01, 0)
    y = layer.forward(np.array([[0.5, 5.0]], np.float32), training=False)
    assert y[0, 1] == pytest.approx(1.0, abs=0.01)  # clamped to the int8 range
    dx, _ = layer.backward(np.ones((1, 2), np.float32))
    assert dx[0, 0] == pytest.approx(1.0) and dx[0, 1] == 0.0
