"""What a new version changes on the devices: scales held still, and at most a budget of int8 weights moved.

A device holding version N is sent N+1 as a patch (edge_runtime/wire/patch.py), so what matters on the
downlink is how many bytes of the int8 model change. Re-quantising the master from scratch each round moves
every weight of a channel whose largest magnitude moved, since the channel's scale moves with it; here a
channel keeps the scale of the version devices hold while its weights still fit under it and it has not
grown more than ``1 / shrink`` times too coarse. A scale that must grow grows with ``headroom`` (25%), so the
next rounds fit under it too: each move re-codes the whole channel. Weights that outgrow their held scale by at
most ``saturate`` (``[gateway] downlink_saturate``, 0 by default) do not move it: their codes stay at +-127
and the master keeps their float values (the error feedback below); re-coding a whole channel for one weight
that grew a little was most of a patch (fl_digits: 3 to 7 of the output layer's 10 channels, and 1 to 4 of the
hidden layer's 32, re-fitted each round). What saturating costs (``tinyfed bench downlink``, plain MQTT, with
range reports asked while ranges move): HAR over 25 rounds ends at 0.901 with 0 and 0.894 with 25% (last five
rounds 0.898 and 0.883), for 4,552 B a device a round against 3,497; digits (3 seeds) at 0.955 with 0, 0.954
with 10% and 0.959 with 25%. On the report schedule alone 25% ended HAR at 0.778: stale ranges and saturated
codes together were what cost it.

With ``density`` set, a version moves at most that fraction of each weight tensor's int8 codes: the ones
whose master value is farthest from the code devices hold (rounded, those are the biggest steps), as STC's
server sparsifies what it sends. The master keeps its float weights, so what was not sent stays as the
distance between master and published model and is sent once it is among the largest: the server's error
feedback, with nothing extra stored. Biases (one int32 per channel, re-scaled whenever an input range moves)
and activation ranges always move in full.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_runtime.model.graph import Quantization
from edge_runtime.model.reader import read_graph
from edge_runtime.model.writer import write_graph

from .master import MasterModel

INT8_MAX = 127


@dataclass(frozen=True)
class DownlinkPolicy:
    density: float = 0.0  # fraction of each weight tensor's codes a version may move; 0: every one that moved
    shrink: float = 0.5  # a held scale may be at most this many times too coarse before it is re-fitted
    headroom: float = 0.25  # a scale that must grow grows this fraction beyond what the weights need
    saturate: float = 0.0  # weights may outgrow a held scale by this fraction (their codes saturate) before it moves

    def __post_init__(self) -> None:
        if not 0 <= self.density <= 1:
            raise ValueError(f"density {self.density} is not in [0, 1]")
        if not 0 < self.shrink <= 1 or self.headroom < 0 or self.saturate < 0:
            raise ValueError(f"shrink {self.shrink} must be in (0, 1], headroom {self.headroom} and saturate "
                             f"{self.saturate} >= 0")


def _channel_shape(ndim: int, axis: int) -> list[int]:
    shape = [1] * ndim
    shape[axis] = -1
    return shape


def held_scales(previous: np.ndarray, needed: np.ndarray, policy: DownlinkPolicy) -> tuple[np.ndarray, np.ndarray]:
    """Per channel: the scale to publish, and whether it is the previous one (held)."""
    held = (needed <= previous * (1 + policy.saturate)) & (needed >= policy.shrink * previous)
    grown = np.where(needed > previous, needed * (1 + policy.headroom), needed)
    return np.where(held, previous, grown).astype(np.float32), held


def sparsify(
    ideal: np.ndarray, previous: np.ndarray, movable: np.ndarray, budget: int
) -> np.ndarray:
    """Codes to publish: ``round(ideal)`` where it differs from ``previous`` and is among the ``budget`` largest
    moves (``movable`` entries only; the rest are forced), ``previous`` elsewhere."""
    target = np.clip(np.round(ideal), -INT8_MAX, INT8_MAX)
    moved = (target != previous) & movable
    if int(moved.sum()) > budget:
        distance = np.where(moved, np.abs(ideal - previous), -1.0).reshape(-1)
        keep = np.zeros(distance.size, bool)
        if budget > 0:
            keep[np.argpartition(distance, -budget)[-budget:]] = True
        target = np.where(moved & ~keep.reshape(moved.shape), previous, target)
    return target.astype(np.int8)


def publishable(previous: bytes, exported: bytes, master: MasterModel, policy: DownlinkPolicy) -> bytes:
    """``exported`` (the master freshly quantised) with each trainable layer's weight scales held where they
    fit and its codes moved within the budget, relative to ``previous`` (the version devices hold)."""
    before, graph = read_graph(previous), read_graph(exported)
    for tensor, (layer, kind) in master.slots.items():
        if kind != "weight":
            continue
        w_t, old = graph.tensor(tensor), before.tensor(tensor)
        if old.quant is None or w_t.quant is None or old.data is None or old.data.shape != layer.weight.shape:
            continue  # not a layout this can hold still: the export stands
        op = next(op for op in graph.operators if len(op.inputs) > 2 and op.inputs[1] == tensor)
        b_t = graph.tensor(op.inputs[2])
        if b_t.quant is None:
            continue
        needed = np.asarray(w_t.quant.scale, np.float64)
        scales, held = held_scales(np.asarray(old.quant.scale, np.float64), needed, policy)
        shape = _channel_shape(layer.weight.ndim, layer.channel_axis)
        ideal = layer.weight.astype(np.float64) / scales.astype(np.float64).reshape(shape)
        previous_codes = old.data.astype(np.float64)
        movable = np.broadcast_to(held.reshape(shape), layer.weight.shape)
        budget = int(np.ceil(policy.density * layer.weight.size)) if policy.density else layer.weight.size
        codes = sparsify(ideal, previous_codes, movable, budget)
        w_t.set_data(codes)
        w_t.quant = Quantization(scales, np.zeros(scales.size, np.int64), layer.channel_axis)
        bias_scale = layer.in_q[0] * scales.astype(np.float64)  # as the export computes it: held, it is unchanged
        bias = np.clip(np.round(layer.bias / bias_scale), -(2**31), 2**31 - 1).astype(np.int32)
        b_t.set_data(bias)
        b_t.quant = Quantization(bias_scale.astype(np.float32), np.zeros(scales.size, np.int64), 0)
    return write_graph(graph)

