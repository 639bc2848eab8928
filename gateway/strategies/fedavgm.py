"""FedAvgM (Hsu et al., 2019): server momentum, v <- beta v + delta; w <- w + lr v."""

from __future__ import annotations

import numpy as np

from .base import RoundInput, Strategy, Weights, flat_state, unflat_state


class FedAvgM(Strategy):
    name = "fedavgm"

    def __init__(self, server_lr: float = 1.0, momentum: float = 0.9) -> None:
        super().__init__(server_lr)
        if not 0 <= momentum < 1:
            raise ValueError(f"fedavgm: momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self.velocity: Weights = {}

    def step(self, weights: Weights, round_input: RoundInput) -> Weights:
        delta = self.aggregate(round_input)
        out = {}
        for t, w in weights.items():
            v = self.momentum * self.velocity.get(t, np.zeros_like(w)) + delta.get(t, 0.0)
            self.velocity[t] = v
            out[t] = w + self.server_lr * v
        return out

    def state(self) -> dict[str, np.ndarray]:
        return flat_state("velocity", self.velocity)

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.velocity = unflat_state("velocity", state)
