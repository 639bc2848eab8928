"""Build an int8 model from scratch: architecture + data -> calibrated .tflite graph."""

from __future__ import annotations

import numpy as np

from ..model.graph import Graph
from ..model.info import ModelInfo, normalise
from ..model.quant import affine_params, dequantize, quantize
from .architectures import build_tail

CALIBRATION_SAMPLES = 2048


def build_model(
    arch: str,
    x: np.ndarray,
    classes: list[str],
    seed: int = 0,
    dataset: str = "",
) -> Graph:
    """A freshly initialised int8 model of ``arch`` for samples like ``x`` (raw floats).

    Normalisation statistics come from ``x`` and are stored in the model;
    the input range uses the 0.05/99.95 percentiles so one outlier window
    does not waste the int8 grid of every other sample.
    """
    flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
    std = flat.std(axis=0)
    info = ModelInfo(
        architecture=arch,
        input_mean=[float(v) for v in flat.mean(axis=0)],
        input_std=[float(v) if v > 1e-6 else 1.0 for v in std],
        classes=list(classes),
        dataset=dataset,
    )
    z = normalise(info, x)
    lo, hi = np.percentile(z, [0.05, 99.95])
    scale, zp = affine_params(float(lo), float(hi))
    tail = build_tail(arch, tuple(x.shape[1:]), len(classes), seed=seed)
    tail.input_q = (scale, zp)
    rng = np.random.default_rng(seed)
    sample = z[rng.permutation(len(z))[:CALIBRATION_SAMPLES]]
    tail.calibrate(dequantize(quantize(sample, scale, zp), scale, zp))
    graph = tail.to_graph((1, *x.shape[1:]), name=f"tinyfed {arch}")
    info.attach(graph)
    return graph
