"""FedTrimmedAvg (Yin et al., 2018): per coordinate, drop the largest and smallest ``beta`` share, average the rest.

Buffered (O(model x devices)), unweighted, like the published definition.
"""

from __future__ import annotations

import math

import numpy as np

from .base import RoundInput, Strategy, Weights, stack


class FedTrimmedAvg(Strategy):
    name = "fedtrimmedavg"
    buffered = True

    def __init__(self, beta: float = 0.1, server_lr: float = 1.0) -> None:
        super().__init__(server_lr)
        if not 0 <= beta < 0.5:
            raise ValueError(f"fedtrimmedavg: beta must be in [0, 0.5), got {beta}")
        self.beta = beta

    def aggregate(self, round_input: RoundInput) -> Weights:
        n = len(round_input.updates)
        if n == 0:
            return round_input.mean
        cut = math.floor(self.beta * n)
        out = {}
        for t, m in round_input.mean.items():
            ordered = np.sort(stack(round_input.updates, t, m.size), axis=0)
            out[t] = ordered[cut : n - cut].mean(axis=0)
        return out
