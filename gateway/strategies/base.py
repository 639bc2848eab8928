"""What every aggregation strategy is: one server step from the round's updates to new master weights.

Weights and deltas are dicts of tensor index -> flat float64 arrays (the
manifest's trainable tensors). A *streaming* strategy sees only the
sample-weighted mean of the round's deltas, which the gateway folds update by
update in O(model) memory. A *buffered* strategy (the robust statistics:
median, trimmed mean, Krum) needs every update; the gateway then keeps each
accepted delta densely, O(model x devices) memory, and says so at start.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

Weights = dict[int, np.ndarray]


@dataclass
class ClientDelta:
    device: str
    samples: int
    delta: Weights


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


def stack(updates: list[ClientDelta], tensor: int, size: int) -> np.ndarray:
    """[devices, size] matrix of one tensor's deltas (a device that did not send it contributes zeros)."""
    out = np.zeros((len(updates), size), np.float64)
    for i, u in enumerate(updates):
        if tensor in u.delta:
            out[i] = u.delta[tensor]
    return out
