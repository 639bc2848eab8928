"""Sliding-window geometry shared by the int8 reference and the trainer.

TFLite's SAME padding puts the smaller half before the data; getting this
wrong shifts every convolution by one pixel, so it lives in one place.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided


def output_size(size: int, filt: int, stride: int, dilation: int, padding: str) -> tuple[int, int]:
    """Output length and leading pad along one axis, as TFLite computes them."""
    effective = (filt - 1) * dilation + 1
    if padding == "SAME":
        out = (size + stride - 1) // stride
        total = max((out - 1) * stride + effective - size, 0)
        return out, total // 2
    if padding == "VALID":
        return (size - effective) // stride + 1, 0
    raise ValueError(f"padding {padding!r} is neither SAME nor VALID")


def patches(
    x: np.ndarray,
    filt: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    padding: str,
    pad_value: float = 0.0,
) -> np.ndarray:
    """View NHWC ``x`` as windows [N, OH, OW, FH, FW, C] (a strided view; copy before writing)."""
    n, h, w, c = x.shape
    oh, ph = output_size(h, filt[0], stride[0], dilation[0], padding)
    ow, pw = output_size(w, filt[1], stride[1], dilation[1], padding)
    need_h = (oh - 1) * stride[0] + (filt[0] - 1) * dilation[0] + 1
    need_w = (ow - 1) * stride[1] + (filt[1] - 1) * dilation[1] + 1
    padded = np.full((n, max(need_h, h + ph), max(need_w, w + pw), c), pad_value, dtype=x.dtype)
    padded[:, ph : ph + h, pw : pw + w, :] = x
    s = padded.strides
    return as_strided(
        padded,
        shape=(n, oh, ow, filt[0], filt[1], c),
        strides=(s[0], s[1] * stride[0], s[2] * stride[1], s[1] * dilation[0], s[2] * dilation[1], s[3]),
        writeable=False,
    )


def scatter_patches(
    grad_patches: np.ndarray,
    input_shape: tuple[int, int, int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    padding: str,
) -> np.ndarray:
    """Adjoint of :func:`patches`: sum window gradients back onto the input (col2im)."""
    n, h, w, c = input_shape
    _, oh, ow, fh, fw, _ = grad_patches.shape
    _, ph = output_size(h, fh, stride[0], dilation[0], padding)
    _, pw = output_size(w, fw, stride[1], dilation[1], padding)
    need_h = max((oh - 1) * stride[0] + (fh - 1) * dilation[0] + 1, h + ph)
    need_w = max((ow - 1) * stride[1] + (fw - 1) * dilation[1] + 1, w + pw)
    out = np.zeros((n, need_h, need_w, c), dtype=grad_patches.dtype)
    for i in range(fh):
        for j in range(fw):
            hi = i * dilation[0]
            wj = j * dilation[1]
            out[:, hi : hi + oh * stride[0] : stride[0], wj : wj + ow * stride[1] : stride[1], :] += grad_patches[
                :, :, :, i, j, :
            ]
    return out[:, ph : ph + h, pw : pw + w, :]


def valid_counts(
    shape: tuple[int, int, int, int], filt: tuple[int, int], stride: tuple[int, int], padding: str
) -> np.ndarray:
    """How many real (unpadded) inputs each pooling window covers: TFLite averages over these only."""
    ones = np.ones((1, shape[1], shape[2], 1), np.int64)
    return patches(ones, filt, stride, (1, 1), padding, 0).sum(axis=(3, 4, 5))[0]  # [OH, OW]
