"""Model architectures tinyfed can build from scratch (no TensorFlow): an MLP and a 1D-CNN.

Both are built as float layers with seeded He initialisation, calibrated on
data, and exported as int8 graphs. The 1D-CNN is a 2D network of height 1,
which is how TFLite itself represents Conv1D; a leading RESHAPE turns the
device's [1, steps, channels] window into NHWC without changing quantisation.
"""

from __future__ import annotations

import numpy as np

from .layers import Conv2D, FullyConnected, Layer, Pool2D, Reshape, Softmax
from .tail import Tail


def _he(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def mlp(inputs: int, classes: int, hidden: tuple[int, ...] = (64, 32), seed: int = 0) -> list[Layer]:
    rng = np.random.default_rng(seed)
    layers: list[Layer] = []
    width = inputs
    for units in hidden:
        layers.append(
            FullyConnected(weight=_he(rng, (units, width), width), bias=np.zeros(units, np.float32), activation="RELU")
        )
        width = units
    layers.append(FullyConnected(weight=_he(rng, (classes, width), width) * 0.5, bias=np.zeros(classes, np.float32)))
    layers.append(Softmax())
    return layers


def cnn1d(
    steps: int,
    channels: int,
    classes: int,
    filters: tuple[int, ...] = (32, 64, 64),
    kernel: int = 5,
    seed: int = 0,
) -> list[Layer]:
    """Conv blocks (conv + ReLU, max-pool by 2 between blocks), global average pool, dense, softmax."""
    rng = np.random.default_rng(seed)
    layers: list[Layer] = [Reshape(out_shape=(1, 1, steps, channels))]
    width, length = channels, steps
    for n, f in enumerate(filters):
        layers.append(
            Conv2D(
                weight=_he(rng, (f, 1, kernel, width), kernel * width),
                bias=np.zeros(f, np.float32),
                activation="RELU",
                stride=(1, 1),
                padding="SAME",
            )
        )
        width = f
        if n < len(filters) - 1:
            layers.append(Pool2D(opcode="MAX_POOL_2D", filter=(1, 2), stride=(1, 2), padding="VALID"))
            length //= 2
    layers.append(Pool2D(opcode="AVERAGE_POOL_2D", filter=(1, length), stride=(1, length), padding="VALID"))
    layers.append(Reshape(out_shape=(1, width)))
    layers.append(FullyConnected(weight=_he(rng, (classes, width), width) * 0.5, bias=np.zeros(classes, np.float32)))
    layers.append(Softmax())
    return layers


ARCHITECTURES = ("mlp", "cnn1d")


def build_tail(arch: str, sample_shape: tuple[int, ...], classes: int, seed: int = 0) -> Tail:
    """A float tail of ``arch`` for inputs of ``sample_shape`` (without the batch axis)."""
    if arch == "mlp":
        layers = mlp(int(np.prod(sample_shape)), classes, seed=seed)
    elif arch == "cnn1d":
        if len(sample_shape) != 2:
            raise ValueError(f"cnn1d needs [steps, channels] samples, got shape {sample_shape}")
        layers = cnn1d(sample_shape[0], sample_shape[1], classes, seed=seed)
    else:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    return Tail(layers, (1.0, 0))
