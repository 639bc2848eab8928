"""What every aggregation strategy is: one server step from the round's updates to new master weights.

Weights and deltas are dicts of tensor index -> flat float64 arrays (the
manifest's trainable tensors). A *streaming* strategy sees only the
sample-weighted mean of the round's deltas, which the gateway folds update by
update in O(model) memory. A *buffered* strategy (the robust statistics:
median, trimmed mean, Krum) needs every update; the gateway then keeps each
accepted delta *sparse*, as it arrived (its kept indices and values: 12 bytes
per kept entry, O(density x model x devices)), never densified one by one.

The robust statistics work on the union of the coordinates the round's
updates sent (``union``): an [updates x union] matrix, O(devices x union)
memory, where union <= min(model, devices x density x model). A coordinate
an update did not send is *absent*, not zero: see ``robust_columns``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

Weights = dict[int, np.ndarray]


@dataclass
class ClientDelta:
    """One device's delta, sparse: per tensor, its strictly increasing indices and their values."""

    device: str
    samples: int
    entries: dict[int, tuple[np.ndarray, np.ndarray]]
    weight: float = 1.0  # what it weighed in the round's running sums (aggregate.py), to take it out again

    @classmethod
    def from_dense(cls, device: str, samples: int, delta: Weights) -> ClientDelta:
        """Every coordinate sent (a dense update)."""
        return cls(device, samples, {t: (np.arange(v.size), np.asarray(v, np.float64)) for t, v in delta.items()})

    def dense(self, tensor: int, size: int) -> np.ndarray:
        out = np.zeros(size, np.float64)
        if tensor in self.entries:
            idx, values = self.entries[tensor]
            out[idx] = values
        return out

    @property
    def nnz(self) -> int:
        return sum(int(idx.size) for idx, _ in self.entries.values())


@dataclass
class RoundInput:
    mean: Weights  # sample-weighted mean delta over the accepted updates (zeros where nobody sent)
    updates: list[ClientDelta] = field(default_factory=list)  # only filled for buffered strategies


class Strategy:
    """Base: FedAvg's server step (add the aggregate), no state."""

    name: ClassVar[str] = "base"
    buffered: ClassVar[bool] = False

    def __init__(self, server_lr: float = 1.0) -> None:
        if server_lr <= 0:
            raise ValueError(f"{self.name}: server_lr must be > 0, got {server_lr}")
        self.server_lr = server_lr

    def aggregate(self, round_input: RoundInput) -> Weights:
        """The round's aggregate delta; streaming strategies use the weighted mean."""
        return round_input.mean

    def step(self, weights: Weights, round_input: RoundInput) -> Weights:
        aggregate = self.aggregate(round_input)
        return {t: w + self.server_lr * aggregate.get(t, 0.0) for t, w in weights.items()}

    # Server-side optimiser state survives gateway restarts through these.
    def state(self) -> dict[str, np.ndarray]:
        return {}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        return None


def flat_state(prefix: str, values: Weights) -> dict[str, np.ndarray]:
    return {f"{prefix}.{t}": v for t, v in values.items()}


def unflat_state(prefix: str, state: dict[str, np.ndarray]) -> Weights:
    start = prefix + "."
    return {int(k[len(start) :]): np.asarray(v, np.float64) for k, v in state.items() if k.startswith(start)}


@dataclass
class Union:
    """One tensor's round on the union of its sent coordinates: ``values[i, j]`` is update i's value at
    ``index[j]`` where ``sent[i, j]``, else 0."""

    index: np.ndarray  # [U] coordinates some update sent, increasing
    values: np.ndarray  # [n, U]
    sent: np.ndarray  # [n, U] bool


def union(updates: list[ClientDelta], tensor: int) -> Union:
    """The [updates x union] view of one tensor: O(n x U) memory, never O(n x model) unless all is sent."""
    parts = [u.entries[tensor][0] for u in updates if tensor in u.entries]
    index = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
    values = np.zeros((len(updates), index.size), np.float64)
    sent = np.zeros((len(updates), index.size), bool)
    for i, u in enumerate(updates):
        if tensor in u.entries:
            idx, v = u.entries[tensor]
            pos = np.searchsorted(index, idx)
            values[i, pos] = v
            sent[i, pos] = True
    return Union(index, values, sent)


def trimmed_columns(values: np.ndarray, sent: np.ndarray, cut: int | np.ndarray) -> np.ndarray:
    """Per column, the mean of the sent values less the ``cut`` smallest and ``cut`` largest (per column when
    ``cut`` is an array; a column needs k > 2 cut)."""
    k = sent.sum(axis=0)
    ordered = np.sort(np.where(sent, values, np.inf), axis=0)  # absent last
    rank = np.arange(values.shape[0])[:, None]
    keep = (rank >= cut) & (rank < k - cut)
    keep &= np.isfinite(ordered)
    count = keep.sum(axis=0)
    total = np.where(keep, ordered, 0.0).sum(axis=0)
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0)


def robust_columns(u: Union, n: int, least: int, beta: float | None = None) -> np.ndarray:
    """The robust statistic per union coordinate, the rule for absent coordinates made explicit.

    A coordinate sent by k of the n updates:
    - k > 2 ``least`` (enough senders that ``least`` liars among them are outvoted): the statistic over the k
      senders only, times k / n. The median; or (``beta``) the mean less max(least, floor(beta k)) at each end,
      the published trimming applied to the coordinate's senders. The factor is how FedAvg treats an absent
      coordinate (as zero in a mean over n), so on honest updates the step has FedAvg's scale, and an update
      that sent a coordinate few others sent moves it by at most its value / n.
    - otherwise: the dense statistic with absent as zero (the published definitions over n updates), which for a
      rarely sent coordinate is 0 or close to it: too few senders to tell a liar apart, so no step.
    On dense updates (every update sends everything: k = n) the trimmed mean is exactly the published one when
    floor(beta n) >= least, and the median always is.
    """
    k = u.sent.sum(axis=0)
    if beta is None:
        sparse = np.nanmedian(np.where(u.sent, u.values, np.nan), axis=0) if u.index.size else np.zeros(0)
    else:
        sparse = trimmed_columns(u.values, u.sent, np.maximum(least, np.floor(beta * k)).astype(np.int64))
    sparse = sparse * k / n
    enough = k > 2 * least
    if enough.all():
        return sparse
    if beta is None:
        dense = np.median(u.values, axis=0) if n else np.zeros(u.index.size)
    else:
        dense = trimmed_columns(u.values, np.ones_like(u.sent), max(least, math.floor(beta * n)))
    return np.where(enough, sparse, dense)


def scatter(size: int, index: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = np.zeros(size, np.float64)
    out[index] = values
    return out
