"""The adaptive server optimisers of Reddi et al., 2021 ("Adaptive Federated Optimization"), Algorithm 2.

    m <- beta1 m + (1 - beta1) delta
    v <- (per optimiser, see the subclasses)
    w <- w + lr m / (sqrt(v) + tau)

with v starting at tau^2 and no bias correction, as published. The three
optimisers differ only in the second-moment update, so they share this
class; each lives in its own module (fedadam.py, fedyogi.py, fedadagrad.py).
"""

from __future__ import annotations

import numpy as np

from .base import RoundInput, Strategy, Weights, flat_state, unflat_state


class FedOpt(Strategy):
    name = "fedopt"

    def __init__(self, server_lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> None:
        super().__init__(server_lr)
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1 and tau > 0):
            raise ValueError(f"{self.name}: need 0 <= beta1, beta2 < 1 and tau > 0")
        self.beta1, self.beta2, self.tau = beta1, beta2, tau
        self.m: Weights = {}
        self.v: Weights = {}

    def second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def step(self, weights: Weights, round_input: RoundInput) -> Weights:
        delta = self.aggregate(round_input)
        out = {}
        for t, w in weights.items():
            d = np.asarray(delta.get(t, np.zeros_like(w)), np.float64)
            m = self.beta1 * self.m.get(t, np.zeros_like(w)) + (1 - self.beta1) * d
            v = self.second_moment(self.v.get(t, np.full_like(w, self.tau**2)), d * d)
            self.m[t], self.v[t] = m, v
            out[t] = w + self.server_lr * m / (np.sqrt(v) + self.tau)
        return out

    def state(self) -> dict[str, np.ndarray]:
        return flat_state("m", self.m) | flat_state("v", self.v)

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.m, self.v = unflat_state("m", state), unflat_state("v", state)
