"""FedProx (Li et al., 2020): FedAvg on the server; the proximal term mu lives in each device's training.

The gateway sends ``prox_mu`` in every task and the device trainer adds
mu/2 * ||w - w_base||^2 to its loss (edge_runtime.train.trainer).
"""

from __future__ import annotations

from .base import Strategy


class FedProx(Strategy):
    name = "fedprox"

    def __init__(self, mu: float = 0.01, server_lr: float = 1.0) -> None:
        super().__init__(server_lr)
        if mu < 0:
            raise ValueError(f"fedprox: mu must be >= 0, got {mu}")
        self.mu = mu
